package discovery

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// buildFrom builds a snapshot from objects placed straight into lister caches, so the
// snapshot rules can be tested without informers or timing.
func buildFrom(t *testing.T, objs ...runtime.Object) *mesh.Snapshot {
	t.Helper()
	newIndexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, slices, pods := newIndexer(), newIndexer(), newIndexer()
	for _, o := range objs {
		var err error
		switch o.(type) {
		case *corev1.Service:
			err = svcs.Add(o)
		case *discoveryv1.EndpointSlice:
			err = slices.Add(o)
		case *corev1.Pod:
			err = pods.Add(o)
		default:
			t.Fatalf("unexpected object %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	snap, _, err := build(corelisters.NewServiceLister(svcs), discoverylisters.NewEndpointSliceLister(slices), corelisters.NewPodLister(pods), nil, nil, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return snap
}

// snapshotCmp compares the model; policy and diagnostics have tests of their own
// (TestPolicyAndDiagnostics here, and pkg/mesh).
var snapshotCmp = []cmp.Option{
	cmpopts.IgnoreFields(mesh.Snapshot{}, "ChangedAt", "Diagnostics"),
	cmpopts.IgnoreFields(mesh.Service{}, "Policy"),
	cmpopts.EquateEmpty(),
}

func httpPort() []mesh.ServicePort {
	return []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "9090", Protocol: "TCP"}}
}

func TestBuild(t *testing.T) {
	ipv4, ipv6 := discoveryv1.AddressTypeIPv4, discoveryv1.AddressTypeIPv6
	tests := []struct {
		name string
		objs []runtime.Object
		want *mesh.Snapshot
	}{
		{
			name: "empty cluster",
			want: &mesh.Snapshot{},
		},
		{
			name: "meshed and unmeshed services",
			objs: []runtime.Object{
				service("b", "app-2", meshed),
				service("a", "app-1", meshed),
				service("a", "plain"),
				service("a", "wrong-value", func(s *corev1.Service) { s.Labels = map[string]string{mesh.MeshedLabel: "disabled"} }),
				endpointSlice("a", "plain-x", "plain", ipv4, endpoint("10.0.0.9", "plain-0")),
				pod("a", "plain-0", "10.0.0.9", map[string]string{"app": "plain"}),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{
				{Namespace: "a", Name: "app-1", Ports: httpPort()},
				{Namespace: "b", Name: "app-2", Ports: httpPort()},
			}},
		},
		{
			name: "only mesh annotations are kept",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withAnnotations(
					"mesh-timeout", "2s",
					"mesh-retries", "3",
					"kubectl.kubernetes.io/last-applied-configuration", "{}",
					"team", "bears",
				)),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Annotations: map[string]string{"mesh-timeout": "2s", "mesh-retries": "3"},
			}}},
		},
		{
			name: "ports keep their order and targetPort as written",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withPorts(
					corev1.ServicePort{Name: "web", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP},
					corev1.ServicePort{Name: "grpc", Port: 81, TargetPort: intstr.FromInt32(8000), Protocol: corev1.ProtocolTCP},
					corev1.ServicePort{Name: "plain", Port: 82},
				)),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1",
				Ports: []mesh.ServicePort{
					{Name: "web", Port: 80, TargetPort: "http", Protocol: "TCP"},
					{Name: "grpc", Port: 81, TargetPort: "8000", Protocol: "TCP"},
					{Name: "plain", Port: 82, TargetPort: ""},
				},
			}}},
		},
		{
			name: "endpoint conditions",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withSelector(nil)),
				endpointSlice("a", "app-1-x", "app-1", ipv4,
					endpoint("10.0.0.1", "ready-nil"),
					endpoint("10.0.0.2", "ready-true", conditions(ptr(true), ptr(true), ptr(false))),
					endpoint("10.0.0.3", "serving-not-ready", conditions(ptr(false), ptr(true), ptr(false))),
					endpoint("10.0.0.4", "terminating", conditions(ptr(false), ptr(true), ptr(true))),
					endpoint("10.0.0.5", "not-ready", conditions(ptr(false), ptr(false), nil)),
				),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "10.0.0.1", Pod: "ready-nil"}, {IP: "10.0.0.2", Pod: "ready-true"}},
			}}},
		},
		{
			name: "several slices, both families, deduplicated and sorted by address",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withSelector(nil)),
				endpointSlice("a", "app-1-b", "app-1", ipv4,
					endpoint("10.0.0.10", "p10"),
					endpoint("10.0.0.9", "p9"),
				),
				endpointSlice("a", "app-1-a", "app-1", ipv4,
					endpoint("10.0.0.9", ""), // same address, pod unknown: the named one wins
					endpoint("10.0.0.2", "p2"),
				),
				endpointSlice("a", "app-1-c", "app-1", ipv6, endpoint("fd00::1", "p2")),
				endpointSlice("a", "app-1-d", "app-1", discoveryv1.AddressTypeFQDN, endpoint("app.example.com", "")),
				// Not this Service's: another Service's slice, and a same-named Service in another namespace.
				endpointSlice("a", "other-x", "other", ipv4, endpoint("10.0.0.50", "o")),
				endpointSlice("b", "app-1-x", "app-1", ipv4, endpoint("10.0.0.60", "b")),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{
					{IP: "10.0.0.2", Pod: "p2"},
					{IP: "10.0.0.9", Pod: "p9"},
					{IP: "10.0.0.10", Pod: "p10"},
					{IP: "fd00::1", Pod: "p2"},
				},
			}}},
		},
		{
			name: "targetRef that is not a pod leaves Pod empty",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withSelector(nil)),
				endpointSlice("a", "app-1-x", "app-1", ipv4, endpoint("10.0.0.1", "", func(ep *discoveryv1.Endpoint) {
					ep.TargetRef = &corev1.ObjectReference{Kind: "Node", Name: "n1"}
				})),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "10.0.0.1"}},
			}}},
		},
		{
			name: "proxies: a pod selected by two services, unselected and unmeshed pods left out",
			objs: []runtime.Object{
				service("a", "web", meshed, withSelector(map[string]string{"tier": "front"})),
				service("a", "app-1", meshed),
				service("a", "no-selector", meshed, withSelector(nil)),
				service("a", "plain", withSelector(map[string]string{"app": "plain"})),
				service("b", "app-1", meshed), // same selector, other namespace
				pod("a", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1", "tier": "front"}),
				pod("a", "app-1-1", "10.0.0.2", map[string]string{"app": "app-1"}),
				pod("a", "lonely", "10.0.0.3", map[string]string{"app": "lonely"}),
				pod("a", "plain-0", "10.0.0.4", map[string]string{"app": "plain"}),
				pod("b", "app-1-0", "", map[string]string{"app": "app-1"}), // not scheduled yet: no IP
			},
			want: &mesh.Snapshot{
				Services: []*mesh.Service{
					{Namespace: "a", Name: "app-1", Ports: httpPort()},
					{Namespace: "a", Name: "no-selector", Ports: httpPort()},
					{Namespace: "a", Name: "web", Ports: httpPort()},
					{Namespace: "b", Name: "app-1", Ports: httpPort()},
				},
				Proxies: map[string]*mesh.Proxy{
					"a/app-1-0": {Namespace: "a", Name: "app-1-0", IP: "10.0.0.1", Services: []string{"a/app-1", "a/web"}},
					"a/app-1-1": {Namespace: "a", Name: "app-1-1", IP: "10.0.0.2", Services: []string{"a/app-1"}},
					"b/app-1-0": {Namespace: "b", Name: "app-1-0", Services: []string{"b/app-1"}},
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := buildFrom(t, tt.objs...)
			if diff := cmp.Diff(tt.want, got, snapshotCmp...); diff != "" {
				t.Errorf("snapshot mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildDoesNotShareCacheObjects(t *testing.T) {
	svc := service("a", "app-1", meshed, withAnnotations("mesh-timeout", "2s"))
	snap := buildFrom(t, svc)
	snap.Services[0].Annotations["mesh-timeout"] = "changed"
	if svc.Annotations["mesh-timeout"] != "2s" {
		t.Fatal("the snapshot shares its annotation map with the informer cache")
	}
}

func TestSameMeaning(t *testing.T) {
	base := func() *mesh.Snapshot {
		return &mesh.Snapshot{
			Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Annotations: map[string]string{"mesh-timeout": "2s"},
				Endpoints:   []mesh.Endpoint{{IP: "10.0.0.1", Pod: "p1"}},
			}},
			Proxies: map[string]*mesh.Proxy{
				"a/p1": {Namespace: "a", Name: "p1", IP: "10.0.0.1", Services: []string{"a/app-1"}},
			},
			ChangedAt: time.Unix(1, 0),
		}
	}
	tests := []struct {
		name   string
		change func(*mesh.Snapshot)
		same   bool
	}{
		{"identical", func(*mesh.Snapshot) {}, true},
		{"only ChangedAt differs", func(s *mesh.Snapshot) { s.ChangedAt = time.Unix(2, 0) }, true},
		{"annotation removed", func(s *mesh.Snapshot) { s.Services[0].Annotations = nil }, false},
		{"annotation value", func(s *mesh.Snapshot) { s.Services[0].Annotations["mesh-timeout"] = "3s" }, false},
		{"port", func(s *mesh.Snapshot) { s.Services[0].Ports[0].TargetPort = "http" }, false},
		{"endpoint pod", func(s *mesh.Snapshot) { s.Services[0].Endpoints[0].Pod = "p2" }, false},
		{"endpoint added", func(s *mesh.Snapshot) {
			s.Services[0].Endpoints = append(s.Services[0].Endpoints, mesh.Endpoint{IP: "10.0.0.2"})
		}, false},
		{"service added", func(s *mesh.Snapshot) { s.Services = append(s.Services, &mesh.Service{Namespace: "b"}) }, false},
		{"proxy IP", func(s *mesh.Snapshot) { s.Proxies["a/p1"].IP = "10.0.0.9" }, false},
		{"proxy services", func(s *mesh.Snapshot) { s.Proxies["a/p1"].Services = nil }, false},
		{"proxy replaced", func(s *mesh.Snapshot) {
			s.Proxies = map[string]*mesh.Proxy{"a/p2": {Namespace: "a", Name: "p2"}}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := base(), base()
			tt.change(b)
			if got := sameMeaning(a, b); got != tt.same {
				t.Errorf("sameMeaning = %v, want %v", got, tt.same)
			}
		})
	}
	t.Run("nil and empty collections", func(t *testing.T) {
		a, b := base(), base()
		a.Services[0].Annotations, b.Services[0].Annotations = nil, map[string]string{}
		a.Services[0].Endpoints, b.Services[0].Endpoints = nil, []mesh.Endpoint{}
		if !sameMeaning(a, b) {
			t.Error("nil and empty collections should mean the same")
		}
	})
	t.Run("nil", func(t *testing.T) {
		if sameMeaning(nil, base()) || !sameMeaning(nil, nil) {
			t.Error("a nil snapshot equals only nil")
		}
	})
}

// cmpDiff compares mesh values the way the tests mean them: ChangedAt aside, and nil
// equal to empty.
func cmpDiff(want, got any) string { return cmp.Diff(want, got, snapshotCmp...) }
