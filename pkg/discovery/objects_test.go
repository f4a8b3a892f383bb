package discovery

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Builders for the Kubernetes objects the tests feed in. Options mutate the object so
// each test states only what matters to it.

func service(ns, name string, opts ...func(*corev1.Service)) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name: "http", Port: 80, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
	for _, o := range opts {
		o(svc)
	}
	return svc
}

func meshed(svc *corev1.Service) {
	if svc.Labels == nil {
		svc.Labels = map[string]string{}
	}
	svc.Labels[mesh.MeshedLabel] = mesh.MeshedValue
}

func withAnnotations(kv ...string) func(*corev1.Service) {
	return func(svc *corev1.Service) {
		if svc.Annotations == nil {
			svc.Annotations = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			svc.Annotations[kv[i]] = kv[i+1]
		}
	}
}

func withSelector(sel map[string]string) func(*corev1.Service) {
	return func(svc *corev1.Service) { svc.Spec.Selector = sel }
}

func withPorts(ports ...corev1.ServicePort) func(*corev1.Service) {
	return func(svc *corev1.Service) { svc.Spec.Ports = ports }
}

func endpointSlice(ns, name, svc string, family discoveryv1.AddressType, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:       ns,
			Name:            name,
			ResourceVersion: "1",
			Labels:          map[string]string{discoveryv1.LabelServiceName: svc},
		},
		AddressType: family,
		Endpoints:   eps,
	}
}

// endpoint is a ready endpoint of the pod; pod "" leaves targetRef unset.
func endpoint(ip, pod string, opts ...func(*discoveryv1.Endpoint)) discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{Addresses: []string{ip}}
	if pod != "" {
		ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Name: pod}
	}
	for _, o := range opts {
		o(&ep)
	}
	return ep
}

func ptr[T any](v T) *T { return &v }

func conditions(ready, serving, terminating *bool) func(*discoveryv1.Endpoint) {
	return func(ep *discoveryv1.Endpoint) {
		ep.Conditions = discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}
	}
}

func pod(ns, name, ip string, lbls map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, ResourceVersion: "1", Labels: lbls},
		Status:     corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning},
	}
}

// withFamilies sets spec.ipFamilies, primary first.
func withFamilies(fams ...corev1.IPFamily) func(*corev1.Service) {
	return func(svc *corev1.Service) { svc.Spec.IPFamilies = fams }
}

// externalName makes the Service an ExternalName alias of host, as the API server
// stores one: no cluster IP, no IP families.
func externalName(host string) func(*corev1.Service) {
	return func(svc *corev1.Service) {
		svc.Spec.Type = corev1.ServiceTypeExternalName
		svc.Spec.ExternalName = host
	}
}

// headless gives the Service clusterIP None.
func headless(svc *corev1.Service) { svc.Spec.ClusterIP = corev1.ClusterIPNone }

// withContainerPorts gives the pod one container with the given name=port pairs (TCP).
func withContainerPorts(p *corev1.Pod, kv ...any) *corev1.Pod {
	c := corev1.Container{Name: "c"}
	for i := 0; i+1 < len(kv); i += 2 {
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: kv[i].(string), ContainerPort: int32(kv[i+1].(int)), Protocol: corev1.ProtocolTCP})
	}
	p.Spec.Containers = append(p.Spec.Containers, c)
	return p
}
