package discovery

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// The objects below look like what the API server returns: the metadata its field
// managers and controllers write, and the fields of a real Pod that bearkong never reads.

const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

func managed() []metav1.ManagedFieldsEntry {
	return []metav1.ManagedFieldsEntry{{
		Manager: "kubectl-client-side-apply", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		FieldsType: "FieldsV1", FieldsV1: &metav1.FieldsV1{Raw: []byte(`{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{}}`)},
	}}
}

// apiMeta fills what the API server and controllers add to an object's metadata.
func apiMeta(m *metav1.ObjectMeta, uid string) {
	m.UID = types.UID(uid)
	m.Generation = 3
	m.CreationTimestamp = metav1.NewTime(time.Date(2026, 12, 1, 6, 0, 0, 0, time.UTC))
	m.ManagedFields = managed()
	m.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "rs", UID: "rs-uid"}}
	m.Finalizers = []string{"example.com/keep"}
	if m.Annotations == nil {
		m.Annotations = map[string]string{}
	}
	m.Annotations[lastApplied] = `{"apiVersion":"v1","kind":"Thing","metadata":{"name":"` + m.Name + `"}}`
}

// fullPod is a pod as a Deployment and the kubelet leave it: several containers with
// images, env, resources and probes, volumes, tolerations and a full status.
func fullPod(ns, name, ip, sa string, lbls map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := pod(ns, name, ip, lbls)
	apiMeta(&p.ObjectMeta, "uid-"+name)
	if ip != "" {
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}, {IP: "fd00::" + name[len(name)-1:]}}
	}
	p.Status.HostIP = "192.0.2.1"
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Ready: true, Image: "app:v1", ImageID: "sha256:abc"}}
	p.Spec = corev1.PodSpec{
		ServiceAccountName: sa,
		NodeName:           "node-1",
		Volumes:            []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		Tolerations:        []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists}},
		InitContainers:     []corev1.Container{{Name: "init", Image: "init:v1", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 1111}}}},
		Containers: []corev1.Container{
			{
				Name: "envoy", Image: "envoy:v1.36", Args: []string{"-c", "/etc/envoy.yaml"},
				Ports: []corev1.ContainerPort{{Name: "inbound", ContainerPort: 8000, Protocol: corev1.ProtocolTCP}},
			},
			{
				Name: "app", Image: "app:v1",
				Env:   []corev1.EnvVar{{Name: "LISTEN_ADDR", Value: "0.0.0.0:9090"}},
				Ports: ports,
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
				},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/health", Port: intstr.FromInt32(9090)}}},
			},
			{Name: "debug", Image: "netshoot:v1"},
		},
	}
	return p
}

func fullService(ns, name string, opts ...func(*corev1.Service)) *corev1.Service {
	svc := service(ns, name, opts...)
	apiMeta(&svc.ObjectMeta, "uid-"+name)
	svc.Spec.ClusterIP = "10.96.0.10"
	svc.Spec.SessionAffinity = corev1.ServiceAffinityNone
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.1"}}
	return svc
}

func fullSlice(ns, name, svc string, family discoveryv1.AddressType, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	sl := endpointSlice(ns, name, svc, family, eps...)
	apiMeta(&sl.ObjectMeta, "uid-"+name)
	sl.Labels[discoveryv1.LabelManagedBy] = "endpointslice-controller.k8s.io"
	sl.Annotations["endpoints.kubernetes.io/last-change-trigger-time"] = "2026-12-01T06:00:00Z"
	port, proto := int32(9090), corev1.ProtocolTCP
	sl.Ports = []discoveryv1.EndpointPort{{Name: ptr("http"), Port: &port, Protocol: &proto}}
	for i := range sl.Endpoints {
		sl.Endpoints[i].NodeName = ptr("node-1")
		sl.Endpoints[i].Zone = ptr("zone-a")
		sl.Endpoints[i].Hints = &discoveryv1.EndpointHints{ForZones: []discoveryv1.ForZone{{Name: "zone-a"}}}
		if sl.Endpoints[i].TargetRef != nil {
			sl.Endpoints[i].TargetRef.Namespace = ns
			sl.Endpoints[i].TargetRef.UID = types.UID("uid-" + sl.Endpoints[i].TargetRef.Name)
		}
	}
	return sl
}

// transformCluster is a mesh that exercises every field build reads: selectors, named
// targetPorts (in the second container, by protocol), ServiceAccounts (through the
// pods behind a selector-less Service's hand-made slice too), mesh annotations (valid and
// not), dual-stack pods, terminating endpoints, an FQDN slice, an ExternalName Service
// and Services that are not meshed.
func transformCluster() []runtime.Object {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	named := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: tcp}
	dns := corev1.ServicePort{Name: "dns", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: udp}
	return []runtime.Object{
		fullService("a", "app-1", meshed, withPorts(named, dns), withAnnotations(mesh.AnnotationTimeout, "2s", "mesh-retries", "banana")),
		fullPod("a", "app-1-0", "10.0.0.1", "web", map[string]string{"app": "app-1", "pod-template-hash": "x"},
			corev1.ContainerPort{Name: "web", ContainerPort: 9090, Protocol: tcp}, corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: udp}),
		fullPod("a", "app-1-1", "10.0.0.2", "", map[string]string{"app": "app-1"},
			corev1.ContainerPort{Name: "web", ContainerPort: 9091}),
		fullSlice("a", "app-1-x", "app-1", discoveryv1.AddressTypeIPv4,
			endpoint("10.0.0.1", "app-1-0"),
			endpoint("10.0.0.2", "app-1-1", conditions(ptr(false), ptr(true), ptr(true)))),
		fullSlice("a", "app-1-f", "app-1", discoveryv1.AddressTypeFQDN, endpoint("app.example.com", "")),

		fullService("a", "manual", meshed, withSelector(nil)),
		fullSlice("a", "manual-x", "manual", discoveryv1.AddressTypeIPv4, endpoint("10.0.0.9", "other-0")),
		fullPod("a", "other-0", "10.0.0.9", "other", map[string]string{"app": "other"}),

		fullService("b", "app-2", meshed, withAnnotations(mesh.AnnotationMTLS, "PERMISSIVE")),
		fullPod("b", "app-2-0", "10.0.1.1", "app-2", map[string]string{"app": "app-2"}),
		fullSlice("b", "app-2-x", "app-2", discoveryv1.AddressTypeIPv4, endpoint("10.0.1.1", "app-2-0")),
		fullService("b", "alias", meshed, externalName("example.com")),

		fullService("b", "plain", withSelector(map[string]string{"app": "app-2"})),
		fullPod("b", "lonely-0", "10.0.1.9", "", map[string]string{"app": "lonely"}),
	}
}

func transformed(t *testing.T, objs []runtime.Object) []runtime.Object {
	t.Helper()
	out := make([]runtime.Object, 0, len(objs))
	for _, o := range objs {
		var got any
		var err error
		switch o.(type) {
		case *corev1.Pod:
			got, err = keepPod(o)
		case *corev1.Service:
			got, err = keepService(o)
		case *discoveryv1.EndpointSlice:
			got, err = keepEndpointSlice(o)
		default:
			t.Fatalf("unexpected %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, got.(runtime.Object))
	}
	return out
}

// buildAll builds with every option build has that reads objects (Namespaces included),
// so that a field the transforms drop and build reads shows up as a difference.
func buildAll(t *testing.T, objs []runtime.Object) *mesh.Snapshot {
	t.Helper()
	newIndexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, slices, pods, nss := newIndexer(), newIndexer(), newIndexer(), newIndexer()
	for _, o := range objs {
		var err error
		switch o.(type) {
		case *corev1.Service:
			err = svcs.Add(o)
		case *discoveryv1.EndpointSlice:
			err = slices.Add(o)
		case *corev1.Pod:
			err = pods.Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := nss.Add(namespace("b", mesh.AnnotationMTLS, "DISABLE")); err != nil {
		t.Fatal(err)
	}
	snap, _, err := build(corelisters.NewServiceLister(svcs), discoverylisters.NewEndpointSliceLister(slices), corelisters.NewPodLister(pods), nil,
		&buildOptions{namespaces: corelisters.NewNamespaceLister(nss)})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return snap
}

// TestTransformsKeepWhatBuildReads builds the same cluster from the objects as the API
// server returns them and from what the transforms keep of them: the snapshots must be
// equal in every field, diagnostics included.
func TestTransformsKeepWhatBuildReads(t *testing.T) {
	objs := transformCluster()
	want := buildAll(t, objs)
	got := buildAll(t, transformed(t, objs))
	if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
		t.Fatalf("snapshot from transformed objects differs (-originals +transformed):\n%s", diff)
	}
	// The cluster does exercise what it claims to, so that the comparison means something.
	for _, check := range []struct {
		what string
		ok   bool
	}{
		{"a named targetPort resolved in the second container", hasProxy(got, "a/app-1-0") && len(got.Service("a", "app-1").Ports) == 2},
		{"ServiceAccounts from the pods", len(got.Service("a", "app-1").ServiceAccounts) == 1 && len(got.Service("a", "manual").ServiceAccounts) == 1},
		{"the proxy's IP", hasProxy(got, "b/app-2-0") && got.Proxies["b/app-2-0"].IP == "10.0.1.1"},
		{"the proxy's ServiceAccount", hasProxy(got, "a/app-1-0") && got.Proxies["a/app-1-0"].ServiceAccount == "web"},
		{"mesh annotations", got.Service("a", "app-1").Annotations[mesh.AnnotationTimeout] == "2s"},
		{"diagnostics", len(got.Diagnostics) > 0},
	} {
		if !check.ok {
			t.Errorf("the test cluster should exercise %s; snapshot:\n%s", check.what, describe(got))
		}
	}
}

func hasProxy(s *mesh.Snapshot, key string) bool { return s.Proxies[key] != nil }

// TestTransforms pins what each transform keeps, field by field.
func TestTransforms(t *testing.T) {
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	p := fullPod("a", "app-1-0", "10.0.0.1", "web", map[string]string{"app": "app-1"},
		corev1.ContainerPort{Name: "web", ContainerPort: 9090, Protocol: tcp, HostPort: 80}, corev1.ContainerPort{ContainerPort: 5353, Protocol: udp})
	svc := fullService("a", "app-1", meshed, withAnnotations(mesh.AnnotationTimeout, "2s"))
	bare := fullService("a", "bare")
	delete(bare.Annotations, lastApplied)
	sl := fullSlice("a", "app-1-x", "app-1", discoveryv1.AddressTypeIPv4,
		endpoint("10.0.0.1", "app-1-0", conditions(ptr(true), nil, nil)))
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Namespace: "a", Name: name, UID: types.UID("uid-" + name), ResourceVersion: "1"}
	}
	port, proto := int32(9090), corev1.ProtocolTCP
	tomb := cache.DeletedFinalStateUnknown{Key: "a/app-1-0", Obj: p}

	tests := []struct {
		name      string
		transform cache.TransformFunc
		in        any
		want      any
	}{
		{
			name:      "pod",
			transform: keepPod,
			in:        p,
			want: &corev1.Pod{
				ObjectMeta: func() metav1.ObjectMeta {
					m := meta("app-1-0")
					m.Labels = map[string]string{"app": "app-1"}
					return m
				}(),
				Spec: corev1.PodSpec{
					ServiceAccountName: "web",
					Containers: []corev1.Container{
						{Name: "envoy", Ports: []corev1.ContainerPort{{Name: "inbound", ContainerPort: 8000, Protocol: tcp}}},
						{Name: "app", Ports: []corev1.ContainerPort{{Name: "web", ContainerPort: 9090, Protocol: tcp}, {ContainerPort: 5353, Protocol: udp}}},
					},
				},
				Status: corev1.PodStatus{PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::0"}}},
			},
		},
		{
			name:      "service: mesh annotations only",
			transform: keepService,
			in:        svc,
			want: &corev1.Service{
				ObjectMeta: func() metav1.ObjectMeta {
					m := meta("app-1")
					m.Labels = map[string]string{mesh.MeshedLabel: mesh.MeshedValue}
					m.Annotations = map[string]string{mesh.AnnotationTimeout: "2s"}
					return m
				}(),
				Spec: svc.Spec,
			},
		},
		{
			name:      "service without annotations",
			transform: keepService,
			in:        bare,
			want:      &corev1.Service{ObjectMeta: meta("bare"), Spec: bare.Spec},
		},
		{
			name:      "endpointslice",
			transform: keepEndpointSlice,
			in:        sl,
			want: &discoveryv1.EndpointSlice{
				ObjectMeta: func() metav1.ObjectMeta {
					m := meta("app-1-x")
					m.Labels = map[string]string{discoveryv1.LabelServiceName: "app-1", discoveryv1.LabelManagedBy: "endpointslice-controller.k8s.io"}
					return m
				}(),
				AddressType: discoveryv1.AddressTypeIPv4,
				Endpoints: []discoveryv1.Endpoint{{
					Addresses:  []string{"10.0.0.1"},
					Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
					TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "a", Name: "app-1-0", UID: "uid-app-1-0"},
				}},
				Ports: []discoveryv1.EndpointPort{{Name: ptr("http"), Port: &port, Protocol: &proto}},
			},
		},
		{name: "pod tombstone passes", transform: keepPod, in: tomb, want: tomb},
		{name: "service tombstone passes", transform: keepService, in: tomb, want: tomb},
		{name: "endpointslice tombstone passes", transform: keepEndpointSlice, in: tomb, want: tomb},
		{name: "another type passes", transform: keepPod, in: svc, want: svc},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.transform(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}
