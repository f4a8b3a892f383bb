package discovery

import (
	"strings"
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
	snap, _, err := build(corelisters.NewServiceLister(svcs), discoverylisters.NewEndpointSliceLister(slices), corelisters.NewPodLister(pods), nil, nil)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return snap
}

// snapshotCmp compares the model; policy, protocol, mTLS modes, ServiceAccounts and
// diagnostics have tests of their own (TestPolicyAndDiagnostics and TestBuildProtocols
// here, mtls_test.go, and pkg/mesh).
var snapshotCmp = []cmp.Option{
	cmpopts.IgnoreFields(mesh.Snapshot{}, "ChangedAt", "Diagnostics"),
	cmpopts.IgnoreFields(mesh.Service{}, "Policy", "Protocol", "MTLS", "ServiceAccounts"),
	cmpopts.IgnoreFields(mesh.Proxy{}, "ServiceAccount", "MTLS"),
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
			name: "serving terminating endpoints when no endpoint is ready",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withSelector(nil)),
				endpointSlice("a", "app-1-x", "app-1", ipv4,
					endpoint("10.0.0.4", "terminating", conditions(ptr(false), ptr(true), ptr(true))),
					endpoint("10.0.0.5", "terminating-serving-nil", conditions(ptr(false), nil, ptr(true))),
					endpoint("10.0.0.6", "terminating-not-serving", conditions(ptr(false), ptr(false), ptr(true))),
					endpoint("10.0.0.7", "serving-not-ready", conditions(ptr(false), ptr(true), ptr(false))),
				),
			},
			// As kube-proxy: serving nil reads as ready (false here), and a serving
			// endpoint that is not terminating is not ready for a reason of its own.
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "10.0.0.4", Pod: "terminating"}},
			}}},
		},
		{
			name: "terminating endpoints are dropped once one endpoint is ready, in any slice",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withSelector(nil)),
				endpointSlice("a", "app-1-x", "app-1", ipv4,
					endpoint("10.0.0.4", "terminating", conditions(ptr(false), ptr(true), ptr(true))),
				),
				endpointSlice("a", "app-1-y", "app-1", ipv4, endpoint("10.0.0.9", "new")),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "10.0.0.9", Pod: "new"}},
			}}},
		},
		{
			name: "dual-stack: the primary family only, IPv4 first",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withFamilies(corev1.IPv4Protocol, corev1.IPv6Protocol)),
				endpointSlice("a", "app-1-4", "app-1", ipv4, endpoint("10.0.0.1", "p1"), endpoint("10.0.0.2", "p2")),
				endpointSlice("a", "app-1-6", "app-1", ipv6, endpoint("fd00::1", "p1"), endpoint("fd00::2", "p2")),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "10.0.0.1", Pod: "p1"}, {IP: "10.0.0.2", Pod: "p2"}},
			}}},
		},
		{
			name: "dual-stack: the primary family only, IPv6 first",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withFamilies(corev1.IPv6Protocol, corev1.IPv4Protocol)),
				endpointSlice("a", "app-1-4", "app-1", ipv4, endpoint("10.0.0.1", "p1"), endpoint("10.0.0.2", "p2")),
				endpointSlice("a", "app-1-6", "app-1", ipv6, endpoint("fd00::1", "p1"), endpoint("fd00::2", "p2")),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "fd00::1", Pod: "p1"}, {IP: "fd00::2", Pod: "p2"}},
			}}},
		},
		{
			name: "IPv6 single-stack",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withFamilies(corev1.IPv6Protocol)),
				endpointSlice("a", "app-1-6", "app-1", ipv6, endpoint("fd00::1", "p1")),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{{
				Namespace: "a", Name: "app-1", Ports: httpPort(),
				Endpoints: []mesh.Endpoint{{IP: "fd00::1", Pod: "p1"}},
			}}},
		},
		{
			name: "no ipFamilies: IPv4; slices of the other family only are still used",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withSelector(nil)),
				service("a", "app-2", meshed, withSelector(nil)),
				endpointSlice("a", "app-1-4", "app-1", ipv4, endpoint("10.0.0.1", "p1")),
				endpointSlice("a", "app-1-6", "app-1", ipv6, endpoint("fd00::1", "p1")),
				endpointSlice("a", "app-2-6", "app-2", ipv6, endpoint("fd00::2", "p2")),
			},
			want: &mesh.Snapshot{Services: []*mesh.Service{
				{Namespace: "a", Name: "app-1", Ports: httpPort(), Endpoints: []mesh.Endpoint{{IP: "10.0.0.1", Pod: "p1"}}},
				{Namespace: "a", Name: "app-2", Ports: httpPort(), Endpoints: []mesh.Endpoint{{IP: "fd00::2", Pod: "p2"}}},
			}},
		},
		{
			name: "headless Services are routed like any other",
			objs: []runtime.Object{
				service("a", "app-1", meshed, headless),
				endpointSlice("a", "app-1-x", "app-1", ipv4, endpoint("10.0.0.1", "app-1-0")),
				pod("a", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1"}),
			},
			want: &mesh.Snapshot{
				Services: []*mesh.Service{{
					Namespace: "a", Name: "app-1", Ports: httpPort(),
					Endpoints: []mesh.Endpoint{{IP: "10.0.0.1", Pod: "app-1-0"}},
				}},
				Proxies: map[string]*mesh.Proxy{
					"a/app-1-0": {Namespace: "a", Name: "app-1-0", IP: "10.0.0.1", Services: []string{"a/app-1"}},
				},
			},
		},
		{
			name: "ExternalName: no endpoints and no proxies, whatever its selector and slices say",
			objs: []runtime.Object{
				service("a", "app-1", meshed, externalName("app.example.com")),
				endpointSlice("a", "app-1-x", "app-1", ipv4, endpoint("10.0.0.1", "app-1-0")),
				pod("a", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1"}),
			},
			// Kubernetes ignores an ExternalName Service's selector, and so do kube-proxy
			// and the endpoint controller.
			want: &mesh.Snapshot{Services: []*mesh.Service{{Namespace: "a", Name: "app-1", Ports: httpPort()}}},
		},
		{
			name: "several slices, deduplicated and sorted by address",
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
				endpointSlice("a", "app-1-c", "app-1", ipv6, endpoint("fd00::1", "p2")), // not the primary family
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
				MTLS:        mesh.MTLSStrict, ServiceAccounts: []string{"default"},
			}},
			Proxies: map[string]*mesh.Proxy{
				"a/p1": {Namespace: "a", Name: "p1", IP: "10.0.0.1", Services: []string{"a/app-1"}, ServiceAccount: "default", MTLS: mesh.MTLSStrict},
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
		{"port appProtocol", func(s *mesh.Snapshot) { s.Services[0].Ports[0].AppProtocol = "grpc" }, false},
		{"protocol", func(s *mesh.Snapshot) { s.Services[0].Protocol = mesh.ProtocolHTTP2 }, false},
		{"endpoint pod", func(s *mesh.Snapshot) { s.Services[0].Endpoints[0].Pod = "p2" }, false},
		{"endpoint added", func(s *mesh.Snapshot) {
			s.Services[0].Endpoints = append(s.Services[0].Endpoints, mesh.Endpoint{IP: "10.0.0.2"})
		}, false},
		{"service added", func(s *mesh.Snapshot) { s.Services = append(s.Services, &mesh.Service{Namespace: "b"}) }, false},
		{"proxy IP", func(s *mesh.Snapshot) { s.Proxies["a/p1"].IP = "10.0.0.9" }, false},
		{"proxy services", func(s *mesh.Snapshot) { s.Proxies["a/p1"].Services = nil }, false},
		{"service mTLS mode", func(s *mesh.Snapshot) { s.Services[0].MTLS = mesh.MTLSPermissive }, false},
		{"service ServiceAccounts", func(s *mesh.Snapshot) { s.Services[0].ServiceAccounts = []string{"other"} }, false},
		{"proxy ServiceAccount", func(s *mesh.Snapshot) { s.Proxies["a/p1"].ServiceAccount = "other" }, false},
		{"proxy mTLS mode", func(s *mesh.Snapshot) { s.Proxies["a/p1"].MTLS = mesh.MTLSPermissive }, false},
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

// TestOddServiceDiagnostics checks what build reports about Services the mesh cannot
// route as they are, or routes differently from what their owner may think.
func TestOddServiceDiagnostics(t *testing.T) {
	ipv4 := discoveryv1.AddressTypeIPv4
	sidecarPort := withPorts(corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8000), Protocol: corev1.ProtocolTCP})
	namedPort := func(name string, proto corev1.Protocol) func(*corev1.Service) {
		return withPorts(corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString(name), Protocol: proto})
	}
	appPod := func(name string) *corev1.Pod {
		return withContainerPorts(pod("a", name, "10.0.0.1", map[string]string{"app": "app-1"}), "http", 9090, "inbound", 8000)
	}
	type want struct{ name, reason, text string }
	tests := []struct {
		name      string
		objs      []runtime.Object
		want      []want
		wantEvent map[string]bool // by reason
	}{
		{
			name: "a Service that routes is not reported",
			objs: []runtime.Object{service("a", "app-1", meshed, sidecarPort), appPod("app-1-0")},
		},
		{
			name: "ExternalName",
			objs: []runtime.Object{service("a", "ext", meshed, sidecarPort, withSelector(nil), externalName("db.example.com"))},
			want: []want{{"ext", mesh.ReasonExternalName, `ExternalName Service (an alias of "db.example.com") has no endpoints`}},
		},
		{
			name: "selector-less without EndpointSlices",
			objs: []runtime.Object{
				service("a", "manual", meshed, sidecarPort, withSelector(nil)),
				endpointSlice("a", "manual-fqdn", "manual", discoveryv1.AddressTypeFQDN, endpoint("db.example.com", "")),
			},
			want: []want{{"manual", mesh.ReasonNoEndpointSlices, "has no selector and no EndpointSlice of IP addresses labelled kubernetes.io/service-name=manual"}},
		},
		{
			name: "selector-less with hand-made EndpointSlices, even with no ready endpoint, is not reported",
			objs: []runtime.Object{
				service("a", "manual", meshed, sidecarPort, withSelector(nil)),
				endpointSlice("a", "manual-x", "manual", ipv4, endpoint("10.0.0.1", "", conditions(ptr(false), ptr(false), nil))),
			},
		},
		{
			name: "a named targetPort on the app's port bypasses the sidecar",
			objs: []runtime.Object{service("a", "app-1", meshed, namedPort("http", corev1.ProtocolTCP)), appPod("app-1-0"), appPod("app-1-1")},
			want: []want{{"app-1", mesh.ReasonTargetPortBypasses, `port 80 targets "http", which resolves to 9090 in pod app-1-0 and 1 more`}},
		},
		{
			name: "a named targetPort on the sidecar",
			objs: []runtime.Object{service("a", "app-1", meshed, namedPort("inbound", corev1.ProtocolTCP)), appPod("app-1-0")},
		},
		{
			name: "a named targetPort matches the protocol too",
			objs: []runtime.Object{service("a", "app-1", meshed, namedPort("inbound", corev1.ProtocolUDP)), appPod("app-1-0")},
			want: []want{{"app-1", mesh.ReasonTargetPortMisses, "pod app-1-0 declares no container port of that name"}},
		},
		{
			name: "different mesh-timeouts on one pod",
			objs: []runtime.Object{
				service("a", "app-1", meshed, sidecarPort, withAnnotations("mesh-timeout", "2s")),
				service("a", "web", meshed, sidecarPort, withSelector(map[string]string{"tier": "front"}), withAnnotations("mesh-timeout", "1s")),
				pod("a", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1", "tier": "front"}),
			},
			want: []want{
				{"app-1", mesh.ReasonConflictingPolicies, "Service a/web (mesh-timeout 1s) selects some of the same pods as this Service (mesh-timeout 2s)"},
				{"web", mesh.ReasonConflictingPolicies, "Service a/app-1 (mesh-timeout 2s) selects some of the same pods as this Service (mesh-timeout 1s)"},
			},
			wantEvent: map[string]bool{mesh.ReasonConflictingPolicies: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := buildFrom(t, tt.objs...).Diagnostics
			if len(got) != len(tt.want) {
				t.Fatalf("diagnostics %+v, want %+v", got, tt.want)
			}
			for i, w := range tt.want {
				d := got[i]
				wantEvent := tt.wantEvent[w.reason] || w.reason == mesh.ReasonExternalName
				if d.Kind != "Service" || d.Namespace != "a" || d.Name != w.name || d.Reason != w.reason || !strings.Contains(d.Message, w.text) || d.Event != wantEvent {
					t.Errorf("diagnostic %+v, want %+v (event %t)", d, w, wantEvent)
				}
			}
		})
	}
}

// TestBuildProtocols checks that discovery reads appProtocol and port names into each
// Service's protocol, and reports ports that disagree. The mapping itself is table-tested
// in pkg/mesh.
func TestBuildProtocols(t *testing.T) {
	appProtocol := func(name, ap string) corev1.ServicePort {
		p := corev1.ServicePort{Name: name, Port: 80, TargetPort: intstr.FromInt32(8000), Protocol: corev1.ProtocolTCP}
		if ap != "" {
			p.AppProtocol = &ap
		}
		return p
	}
	snap := buildFrom(t,
		service("a", "grpc-by-app-protocol", meshed, withPorts(appProtocol("api", "grpc"))),
		service("a", "h2c-by-name", meshed, withPorts(appProtocol("h2c-api", ""))),
		service("a", "plain", meshed),
		service("a", "undeclared", meshed, withPorts(appProtocol("api", ""))),
		service("a", "mixed", meshed, withPorts(appProtocol("web", "kubernetes.io/ws"), appProtocol("rpc", "kubernetes.io/h2c"))),
	)
	want := map[string]mesh.Protocol{
		"grpc-by-app-protocol": mesh.ProtocolHTTP2,
		"h2c-by-name":          mesh.ProtocolHTTP2,
		"plain":                mesh.ProtocolHTTP,
		"undeclared":           mesh.ProtocolUnspecified,
		"mixed":                mesh.ProtocolHTTP,
	}
	for _, s := range snap.Services {
		if s.Protocol != want[s.Name] {
			t.Errorf("%s: protocol %q, want %q", s.Name, s.Protocol, want[s.Name])
		}
	}
	if got := snap.Service("a", "grpc-by-app-protocol").Ports[0].AppProtocol; got != "grpc" {
		t.Errorf("appProtocol read as %q, want grpc", got)
	}
	var conflicts []string
	for _, d := range snap.Diagnostics {
		if d.Reason == mesh.ReasonConflictingProtocols {
			conflicts = append(conflicts, d.Name)
		}
	}
	if len(conflicts) != 1 || conflicts[0] != "mixed" {
		t.Errorf("ConflictingProtocols diagnostics for %v, want [mixed]", conflicts)
	}
}
