package discovery

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// The informers' transforms (https://pkg.go.dev/k8s.io/client-go/tools/cache#TransformFunc)
// keep in the cache what discovery reads and drop the rest before it is stored, so that a
// cluster's Pods, Services and EndpointSlices cost bearkong what it uses of them, not
// their full size: a Pod's spec and managedFields are most of its bytes, and bearkong
// reads a few of its fields. Each transform keeps, beside what build and the handlers
// read, what the informer and the Events need: name, namespace, UID and resourceVersion.
// A tombstone (cache.DeletedFinalStateUnknown) passes as it is: what it holds was
// transformed on the way in. client-go calls a transform once per object, before the
// object is stored or handed to a handler, and lets it modify the object it is given.
//
// Whoever reads a new field of one of these objects must keep it here too: the unit
// tests compare a snapshot built from transformed objects with one built from the
// originals.

// keepPod is the Pod informer's transform. It keeps what build reads of a pod: its
// labels (Service selectors), spec.serviceAccountName (the pod's identity),
// status.podIP and podIPs (the proxy's address) and the named container ports (named
// targetPorts), each container reduced to its name and ports.
func keepPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: keptMeta(&p.ObjectMeta),
		Spec:       corev1.PodSpec{ServiceAccountName: p.Spec.ServiceAccountName},
		Status:     corev1.PodStatus{PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	out.Labels = p.Labels
	for _, c := range p.Spec.Containers {
		if len(c.Ports) == 0 {
			continue // nothing a targetPort could name
		}
		kc := corev1.Container{Name: c.Name, Ports: make([]corev1.ContainerPort, len(c.Ports))}
		for i, cp := range c.Ports {
			kc.Ports[i] = corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol}
		}
		out.Spec.Containers = append(out.Spec.Containers, kc)
	}
	return out, nil
}

// keepService is the Service informer's transform. It keeps the labels (the meshed
// label), the mesh-* annotations (policy; any other annotation, such as kubectl's
// last-applied configuration, can be large and changes nothing) and the spec; it drops
// managedFields, status and the other metadata.
func keepService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil
	}
	out := &corev1.Service{ObjectMeta: keptMeta(&svc.ObjectMeta), Spec: svc.Spec}
	out.Labels = svc.Labels
	for k, v := range svc.Annotations {
		if strings.HasPrefix(k, mesh.AnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out, nil
}

// keepEndpointSlice is the EndpointSlice informer's transform. bearkong reads most of a
// slice (its service-name label, address type, endpoints and their conditions and
// targetRefs), so it drops what it never reads: managedFields, annotations (the endpoint
// controller's last-change-trigger-time), owner references, and per endpoint the
// topology fields (node name, zone, hints).
func keepEndpointSlice(obj any) (any, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	out := &discoveryv1.EndpointSlice{
		ObjectMeta:  keptMeta(&sl.ObjectMeta),
		AddressType: sl.AddressType,
		Ports:       sl.Ports,
	}
	out.Labels = sl.Labels
	for _, ep := range sl.Endpoints {
		out.Endpoints = append(out.Endpoints, discoveryv1.Endpoint{Addresses: ep.Addresses, Conditions: ep.Conditions, TargetRef: ep.TargetRef})
	}
	return out, nil
}

// keptMeta is the metadata every transform keeps: the object's name and what the
// informer (resourceVersion, to tell an update from a resync) and Events (UID) need.
func keptMeta(m *metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Namespace: m.Namespace, UID: m.UID, ResourceVersion: m.ResourceVersion}
}
