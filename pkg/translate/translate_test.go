package translate

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// TestProxyViews checks the shape of a proxy's config: which resource lands in which set
// of which view, for a known pod and for an unknown one.
func TestProxyViews(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	services := []string{"app-1.default", "app-2.default", "app-3.team-b"}
	for _, tc := range []struct {
		name   string
		node   Node
		serves []string
		short  []string // the short-name scopes of the node's namespace
	}{
		{"known pod", nodeApp1A, []string{"default/app-1"}, []string{"app-1", "app-2"}},
		{"unknown pod", nodeLocal, nil, []string{"app-3"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustProxy(t, tr, tc.node)
			want := [resource.NumTypes][][]string{
				resource.Cluster:     {services, {LocalAppClusterName}},
				resource.Endpoint:    {services},
				resource.Listener:    {{InboundListenerName, OutboundListenerName}},
				resource.ScopedRoute: {services, tc.short},
				resource.Route:       {services, {InboundRouteName}},
			}
			for _, typ := range resource.Types {
				var got [][]string
				seen := map[string]bool{}
				for _, s := range p.Views[typ] {
					got = append(got, s.Names())
					for _, n := range s.Names() {
						if seen[n] {
							t.Errorf("%s: name %q repeats across the sets of the view", typ, n)
						}
						seen[n] = true
						r, _ := s.Get(n)
						if r.Any.GetTypeUrl() != typ.URL() {
							t.Errorf("%s %q: type URL %q, want %q", typ, n, r.Any.GetTypeUrl(), typ.URL())
						}
					}
				}
				if diff := cmp.Diff(want[typ], got); diff != "" {
					t.Errorf("%s view names (-want +got):\n%s", typ, diff)
				}
			}
			if diff := cmp.Diff(tc.serves, p.Serves); diff != "" {
				t.Errorf("Serves (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSharing checks that resources are built once and shared by every proxy they do not
// differ for: the same *resource.Resource, not merely equal bytes.
func TestSharing(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	a1 := mustProxy(t, tr, nodeApp1A)
	a1b := mustProxy(t, tr, nodeApp1B)
	a2 := mustProxy(t, tr, nodeApp2A)
	local := mustProxy(t, tr, nodeLocal)
	again := mustProxy(t, tr, nodeApp1A)

	get := func(p *resource.Proxy, typ resource.Type, name string) *resource.Resource {
		t.Helper()
		r, ok := p.Views[typ].Get(name)
		if !ok {
			t.Fatalf("%s %q missing", typ, name)
		}
		return r
	}
	for _, tc := range []struct {
		name       string
		a, b       *resource.Proxy
		typ        resource.Type
		resource   string
		wantShared bool
	}{
		{"service cluster, other namespace", a1, local, resource.Cluster, "app-3.team-b", true},
		{"service endpoints, other namespace", a1, local, resource.Endpoint, "app-1.default", true},
		{"local-app, same app address", a1, a2, resource.Cluster, LocalAppClusterName, true},
		{"local-app, other app address", a1, local, resource.Cluster, LocalAppClusterName, false},
		{"listeners, same listen IP and mode", a1, a1b, resource.Listener, InboundListenerName, true},
		{"listeners, same listen IP, other mode", a1, a2, resource.Listener, InboundListenerName, false},
		{"listeners, other listen IP", a1, local, resource.Listener, OutboundListenerName, false},
		{"service routes, other namespace", a1, local, resource.Route, "app-3.team-b", true},
		{"full-name scope, other namespace", a1, local, resource.ScopedRoute, "app-1.default", true},
		{"short-name scope, same namespace", a1, a2, resource.ScopedRoute, "app-1", true},
		{"inbound routes, replicas of one app", a1, a1b, resource.Route, InboundRouteName, true},
		{"inbound routes, other app", a1, a2, resource.Route, InboundRouteName, false},
		{"same proxy asked twice", a1, again, resource.Route, InboundRouteName, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ra, rb := get(tc.a, tc.typ, tc.resource), get(tc.b, tc.typ, tc.resource)
			if shared := ra == rb; shared != tc.wantShared {
				t.Errorf("shared = %v, want %v", shared, tc.wantShared)
			}
		})
	}
	if a1.Views[resource.Cluster][0] != local.Views[resource.Cluster][0] {
		t.Error("the service cluster set is not shared")
	}
	if a1.Views[resource.Endpoint][0] != local.Views[resource.Endpoint][0] {
		t.Error("the endpoint set is not shared")
	}
	if a1.Views[resource.ScopedRoute][0] != local.Views[resource.ScopedRoute][0] || a1.Views[resource.Route][0] != local.Views[resource.Route][0] {
		t.Error("the full-name scopes and the service routes are not shared")
	}
	if a1.Views[resource.ScopedRoute][1] != a2.Views[resource.ScopedRoute][1] {
		t.Error("the short-name scopes of one namespace are not shared")
	}
}

// TestDeterministic checks that versions are content hashes: two Translators over equal
// (but separately built) snapshots give the same version for every view and resource.
func TestDeterministic(t *testing.T) {
	t1, t2 := mustNew(t, sampleSnapshot()), mustNew(t, sampleSnapshot())
	for _, n := range []Node{nodeApp1A, nodeApp2A, nodeLocal} {
		t.Run(n.ID, func(t *testing.T) {
			p1, p2 := mustProxy(t, t1, n), mustProxy(t, t2, n)
			for _, typ := range resource.Types {
				if v1, v2 := p1.Views[typ].Version(), p2.Views[typ].Version(); v1 != v2 {
					t.Errorf("%s version %s != %s", typ, v1, v2)
				}
				if diff := cmp.Diff(hashes(p1.Views[typ]), hashes(p2.Views[typ])); diff != "" {
					t.Errorf("%s hashes (-first +second):\n%s", typ, diff)
				}
			}
		})
	}
}

func hashes(v resource.View) map[string]string {
	m := map[string]string{}
	for _, r := range v.All() {
		m[r.Name] = r.Hash
	}
	return m
}

// TestChangeIsLocal checks that a change to one Service changes only the resources that
// depend on it, so that pkg/ads pushes only what changed.
func TestChangeIsLocal(t *testing.T) {
	before := mustProxy(t, mustNew(t, sampleSnapshot()), nodeApp1A)
	for _, tc := range []struct {
		name    string
		change  func(*mesh.Snapshot)
		changed map[resource.Type][]string // names whose hash must change; every other must not
	}{
		{
			name: "endpoint added",
			change: func(s *mesh.Snapshot) {
				s.Services[1].Endpoints = append(s.Services[1].Endpoints, mesh.Endpoint{IP: "10.0.0.22", Pod: "app-2-b"})
			},
			changed: map[resource.Type][]string{resource.Endpoint: {"app-2.default"}},
		},
		{
			name:    "last endpoint gone",
			change:  func(s *mesh.Snapshot) { s.Services[1].Endpoints = nil },
			changed: map[resource.Type][]string{resource.Endpoint: {"app-2.default"}},
		},
		{
			name:    "service in another namespace gets an endpoint",
			change:  func(s *mesh.Snapshot) { s.Services[2].Endpoints = []mesh.Endpoint{{IP: "10.1.0.31"}} },
			changed: map[resource.Type][]string{resource.Endpoint: {"app-3.team-b"}},
		},
		{
			name:    "targetPort changes nothing",
			change:  func(s *mesh.Snapshot) { s.Services[0].Ports[0].TargetPort = "http" },
			changed: nil,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			snap := sampleSnapshot()
			tc.change(snap)
			after := mustProxy(t, mustNew(t, snap), nodeApp1A)
			for _, typ := range resource.Types {
				hb, ha := hashes(before.Views[typ]), hashes(after.Views[typ])
				var got []string
				for name := range ha {
					if hb[name] != ha[name] {
						got = append(got, name)
					}
				}
				slices.Sort(got)
				if diff := cmp.Diff(tc.changed[typ], got); diff != "" {
					t.Errorf("%s resources that changed (-want +got):\n%s", typ, diff)
				}
				if (len(got) > 0) != (before.Views[typ].Version() != after.Views[typ].Version()) {
					t.Errorf("%s view version changed = %v, but %d resources changed", typ, before.Views[typ].Version() != after.Views[typ].Version(), len(got))
				}
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		snap    func() *mesh.Snapshot
		wantErr []string
	}{
		{"nil snapshot", func() *mesh.Snapshot { return nil }, []string{"nil snapshot"}},
		{"empty snapshot", func() *mesh.Snapshot { return &mesh.Snapshot{} }, nil},
		{"nil service", func() *mesh.Snapshot {
			s := sampleSnapshot()
			s.Services[1] = nil
			return s
		}, []string{"service 1 is nil"}},
		{"unsorted", func() *mesh.Snapshot {
			s := sampleSnapshot()
			s.Services[0], s.Services[1] = s.Services[1], s.Services[0]
			return s
		}, []string{`"default/app-1" comes after "default/app-2"`}},
		{"duplicate", func() *mesh.Snapshot {
			s := sampleSnapshot()
			s.Services[1] = s.Services[0]
			return s
		}, []string{"without duplicates"}},
		{"dotted name", func() *mesh.Snapshot {
			s := sampleSnapshot()
			s.Services[0].Name = "app.1"
			return s
		}, []string{`name "app.1" is not an RFC 1123 label`}},
		{"empty namespace", func() *mesh.Snapshot {
			s := sampleSnapshot()
			s.Services[0].Namespace = ""
			return s
		}, []string{`namespace "" is not an RFC 1123 label`}},
		{"endpoint not an IP", func() *mesh.Snapshot {
			s := sampleSnapshot()
			s.Services[0].Endpoints[1].IP = "app-1-b.pod"
			return s
		}, []string{`service "default/app-1": endpoint "app-1-b.pod" (pod "app-1-b") is not an IP address`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := New(tc.snap())
			if !errorContains(err, tc.wantErr) {
				t.Fatalf("New error = %v, want one containing %q", err, tc.wantErr)
			}
			if err == nil {
				mustProxy(t, tr, nodeApp1A)
			}
		})
	}
}

func TestProxyErrors(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	for _, tc := range []struct {
		name    string
		node    Node
		wantErr []string
	}{
		{"defaults fill in", Node{PodName: "p", PodNamespace: "ns"}, nil},
		{"no pod", Node{PodNamespace: "ns"}, []string{"pod_name is missing"}},
		{"listen IP a name", Node{PodName: "p", PodNamespace: "ns", ListenIP: "localhost"}, []string{`listen_ip "localhost" is not an IP address`}},
		{"app address a name", Node{PodName: "p", PodNamespace: "ns", AppAddress: "localhost:9090"}, []string{"the host must be an IP address"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tr.Proxy(tc.node)
			if !errorContains(err, tc.wantErr) {
				t.Fatalf("Proxy error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestProxyConcurrent asks for many proxies from many goroutines at once (run it with
// -race): every shared piece must be built once, and every answer must be the same.
func TestProxyConcurrent(t *testing.T) {
	snap := benchSnapshot(200, 20, 3)
	tr := mustNew(t, snap)
	const goroutines = 32
	nodes := make([]Node, 0, len(snap.Services))
	for i, svc := range snap.Services {
		nodes = append(nodes, Node{
			ID:           fmt.Sprintf("pod-%d", i),
			PodNamespace: svc.Namespace,
			PodName:      svc.Name + "-0",
			ListenIP:     fmt.Sprintf("127.0.1.%d", 1+i%3),
			AppAddress:   "127.0.0.1:9090",
		})
	}
	results := make([][]*resource.Proxy, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range nodes {
				n := nodes[(i+g*7)%len(nodes)]
				p, err := tr.Proxy(n)
				if err != nil {
					t.Error(err)
					return
				}
				results[g] = append(results[g], p)
			}
		})
	}
	wg.Wait()
	// Index the first goroutine's answers by node, then compare every other goroutine's
	// answer for the same node resource by resource, pointer by pointer.
	first := map[string]*resource.Proxy{}
	for i, p := range results[0] {
		first[nodes[i%len(nodes)].ID] = p
	}
	for g := 1; g < goroutines; g++ {
		for i, p := range results[g] {
			n := nodes[(i+g*7)%len(nodes)]
			want := first[n.ID]
			for _, typ := range resource.Types {
				got, exp := p.Views[typ].All(), want.Views[typ].All()
				if len(got) != len(exp) {
					t.Fatalf("goroutine %d, %s %s: %d resources, want %d", g, n.ID, typ, len(got), len(exp))
				}
				for j := range got {
					if got[j] != exp[j] {
						t.Fatalf("goroutine %d, %s %s %q: a different *Resource than goroutine 0 got", g, n.ID, typ, got[j].Name)
					}
				}
			}
		}
	}
}

// TestValidateAll checks every resource against the constraints Envoy's protos declare
// (protoc-gen-validate), including the configs packed in Anys, which the check of the
// outer message does not reach.
func TestValidateAll(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	type validator interface{ ValidateAll() error }
	for _, n := range []Node{nodeApp1A, nodeLocal} {
		p := mustProxy(t, tr, n)
		for _, typ := range resource.Types {
			for _, r := range p.Views[typ].All() {
				t.Run(n.ID+"/"+typ.String()+"/"+r.Name, func(t *testing.T) {
					msgs := []proto.Message{unpack(t, r.Any)}
					if l, ok := msgs[0].(*listenerv3.Listener); ok {
						hcm := hcmOf(t, l)
						msgs = append(msgs, hcm)
						for _, f := range hcm.GetHttpFilters() {
							msgs = append(msgs, unpack(t, f.GetTypedConfig()))
						}
					}
					for _, m := range msgs {
						v, ok := m.(validator)
						if !ok {
							t.Fatalf("%T has no ValidateAll", m)
						}
						if err := v.ValidateAll(); err != nil {
							t.Errorf("%T: %v", m, err)
						}
					}
				})
			}
		}
	}
}

// TestBuilders pins the builders' output for small inputs, field by field.
func TestBuilders(t *testing.T) {
	ads := &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
	addr := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	ep := func(ip string, port uint32) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr(ip, port)}}}
	}
	toCluster := func(name string) *routev3.Route {
		return &routev3.Route{
			Name:   name,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}, Timeout: durationpb.New(0)}},
		}
	}
	scope := func(key, routes string) *routev3.ScopedRouteConfiguration {
		return &routev3.ScopedRouteConfiguration{
			Name: key, RouteConfigurationName: routes,
			Key: &routev3.ScopedRouteConfiguration_Key{Fragments: []*routev3.ScopedRouteConfiguration_Key_Fragment{{
				Type: &routev3.ScopedRouteConfiguration_Key_Fragment_StringKey{StringKey: key},
			}}},
		}
	}
	web := &mesh.Service{
		Namespace: "shop", Name: "web",
		// The Service targets 8080; mesh traffic still goes to the sidecar's 8000.
		Ports:     []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "8080"}},
		Endpoints: []mesh.Endpoint{{IP: "10.0.0.1"}, {IP: "fd00::2"}},
	}
	db := &mesh.Service{Namespace: "data", Name: "db"}

	for _, tc := range []struct {
		name string
		got  proto.Message
		want proto.Message
	}{
		{"Cluster", Cluster(web, "cluster.local"), &clusterv3.Cluster{
			Name:                 "web.shop",
			AltStatName:          "shop/web",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads},
			ConnectTimeout:       durationpb.New(1e9),
			// STRICT by default: mutual TLS to any workload of the trust domain, as no
			// endpoint names its pod's ServiceAccount.
			TransportSocket: wantUpstreamTLS("http/1.1", prefixSAN("spiffe://cluster.local/")),
		}},
		{"ClusterLoadAssignment at the sidecar port", ClusterLoadAssignment(web), &endpointv3.ClusterLoadAssignment{
			ClusterName: "web.shop",
			Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{ep("10.0.0.1", 8000), ep("fd00::2", 8000)}}},
		}},
		{"ClusterLoadAssignment without endpoints", ClusterLoadAssignment(db), &endpointv3.ClusterLoadAssignment{ClusterName: "db.data"}},
		{"LocalAppCluster", LocalAppCluster(Node{AppAddress: "[::1]:9091"}), &clusterv3.Cluster{
			Name:                 "local-app",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout:       durationpb.New(1e9),
			LoadAssignment: &endpointv3.ClusterLoadAssignment{
				ClusterName: "local-app",
				Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{ep("::1", 9091)}}},
			},
			// The app gets the HTTP version the request came in with.
			TypedExtensionProtocolOptions: map[string]*anypb.Any{
				"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttpv3.HttpProtocolOptions{
					UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
						UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
							HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
							Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
						},
					},
				}),
			},
		}},
		{"ServiceRouteConfiguration", ServiceRouteConfiguration(web), &routev3.RouteConfiguration{
			Name: "web.shop", ValidateClusters: wrapperspb.Bool(false),
			VirtualHosts: []*routev3.VirtualHost{{
				Name: "web.shop", Domains: []string{"*"},
				Routes: []*routev3.Route{toCluster("web.shop")},
			}},
			// The scope key is the sidecar's, not the callee's.
			RequestHeadersToRemove: []string{"x-bearkong-scope"},
		}},
		{"ServiceScope, full name", ServiceScope(ServiceScopeKey(web), web), scope("web.shop", "web.shop")},
		{"ServiceScope, short name", ServiceScope("web", web), scope("web", "web.shop")},
		{"InboundRouteConfiguration", InboundRouteConfiguration([]*mesh.Service{web}, DefaultTrustDomain, false), &routev3.RouteConfiguration{
			Name: "inbound",
			VirtualHosts: []*routev3.VirtualHost{{
				Name: "inbound", Domains: []string{"*"},
				Routes: []*routev3.Route{{
					Name:   "local-app",
					Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "local-app"}, Timeout: durationpb.New(0)}},
				}},
			}},
		}},
		{"InboundListener address", InboundListener(Node{ListenIP: "127.0.1.9"}, mesh.MTLSStrict, DefaultTrustDomain).GetAddress(), addr("127.0.1.9", 8000)},
		{"OutboundListener address", OutboundListener(Node{ListenIP: "::", OutboundIP: "::1"}, DefaultClusterDomain).GetAddress(), addr("::1", 8001)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, tc.got, protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestInboundTimeoutFromPolicy(t *testing.T) {
	svc := func(name string, timeout time.Duration) *mesh.Service {
		return &mesh.Service{Namespace: "default", Name: name, Policy: mesh.Policy{Timeout: timeout}}
	}
	cases := []struct {
		name     string
		services []*mesh.Service
		want     time.Duration // 0: no timeout (set to 0s, not left to Envoy's 15s default)
	}{
		{"no policy", []*mesh.Service{svc("a", 0)}, 0},
		{"mesh-timeout 2s", []*mesh.Service{svc("a", 2*time.Second)}, 2 * time.Second},
		{"mesh-timeout above Envoy's 15s default", []*mesh.Service{svc("a", 20*time.Second)}, 20 * time.Second},
		{"mesh-timeout at its maximum", []*mesh.Service{svc("a", mesh.MaxTimeout)}, time.Hour},
		{"two services: the shortest wins", []*mesh.Service{svc("a", 5*time.Second), svc("b", 2*time.Second), svc("c", 0)}, 2 * time.Second},
		{"no services", nil, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := InboundRouteConfiguration(c.services, DefaultTrustDomain, false)
			action := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute()
			// Unset would mean Envoy's 15 s: the timeout is always explicit.
			if action.GetTimeout() == nil {
				t.Fatal("timeout unset: Envoy would apply its 15s default")
			}
			if got := action.GetTimeout().AsDuration(); got != c.want {
				t.Fatalf("timeout %s, want %s", got, c.want)
			}
		})
	}
}

// TestOutboundRouteTimeouts checks the caller's side: no timeout on a plain route, and
// HTTPRoute timeouts as the Gateway API defines them ("0s" is no timeout).
// https://gateway-api.sigs.k8s.io/reference/spec/#httproutetimeouts
func TestOutboundRouteTimeouts(t *testing.T) {
	rule := func(timeout time.Duration, set bool, backend time.Duration) mesh.RouteRule {
		return mesh.RouteRule{
			Route: "default/r", Path: mesh.PathMatch{Type: "PathPrefix", Value: "/"},
			Backends: []mesh.Backend{{Namespace: "default", Name: "b", Weight: 1, Valid: true}},
			Timeout:  timeout, TimeoutSet: set, BackendTimeout: backend,
		}
	}
	for _, tc := range []struct {
		name        string
		routes      []mesh.RouteRule
		wantTimeout time.Duration
		wantPerTry  time.Duration // 0: no per-try timeout
	}{
		{"no HTTPRoute", nil, 0, 0},
		{"HTTPRoute without timeouts", []mesh.RouteRule{rule(0, false, 0)}, 0, 0},
		{"timeouts.request 0s means none", []mesh.RouteRule{rule(0, true, 0)}, 0, 0},
		{"timeouts.request 30s", []mesh.RouteRule{rule(30*time.Second, true, 0)}, 30 * time.Second, 0},
		{"timeouts.request 1h", []mesh.RouteRule{rule(time.Hour, true, 0)}, time.Hour, 0},
		{"timeouts.backendRequest alone", []mesh.RouteRule{rule(0, false, 500*time.Millisecond)}, 0, 500 * time.Millisecond},
		{"both", []mesh.RouteRule{rule(2*time.Second, true, 500*time.Millisecond)}, 2 * time.Second, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &mesh.Service{Namespace: "default", Name: "s", Routes: tc.routes}
			routes := serviceRoutes(svc)
			a := routes[0].GetRoute()
			if a.GetTimeout() == nil {
				t.Fatal("timeout unset: Envoy would apply its 15s default")
			}
			if got := a.GetTimeout().AsDuration(); got != tc.wantTimeout {
				t.Errorf("timeout %s, want %s", got, tc.wantTimeout)
			}
			if got := a.GetRetryPolicy().GetPerTryTimeout().AsDuration(); got != tc.wantPerTry {
				t.Errorf("per-try timeout %s, want %s", got, tc.wantPerTry)
			}
		})
	}
}

// TestClusterProtocol is the mapping from a Service's protocol to what its cluster
// speaks upstream: HTTP/2 for h2c and gRPC, Envoy's default (HTTP/1.1) otherwise.
func TestClusterProtocol(t *testing.T) {
	http2 := map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			},
		},
	})}
	for _, tc := range []struct {
		ports []mesh.ServicePort
		want  map[string]*anypb.Any // nil: HTTP/1.1
	}{
		{[]mesh.ServicePort{{Name: "grpc"}}, http2},
		{[]mesh.ServicePort{{Name: "api", AppProtocol: "grpc"}}, http2},
		{[]mesh.ServicePort{{Name: "api", AppProtocol: "kubernetes.io/h2c"}}, http2},
		{[]mesh.ServicePort{{Name: "http2-web"}}, http2},
		{[]mesh.ServicePort{{Name: "h2c"}}, http2},
		{[]mesh.ServicePort{{Name: "http"}}, nil},
		{[]mesh.ServicePort{{Name: "api", AppProtocol: "kubernetes.io/ws"}}, nil},
		{[]mesh.ServicePort{{Name: "web"}}, nil},
		{nil, nil},
	} {
		svc := &mesh.Service{Namespace: "default", Name: "s", Ports: tc.ports}
		svc.Protocol, _ = mesh.ServiceProtocol(svc)
		t.Run(fmt.Sprintf("%+v", tc.ports), func(t *testing.T) {
			got := Cluster(svc, DefaultTrustDomain).GetTypedExtensionProtocolOptions()
			if diff := cmp.Diff(tc.want, got, protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("protocol options (-want +got):\n%s", diff)
			}
		})
	}
}

// TestHTTPConnectionManagers checks what every chain's connection manager carries, on
// both listeners in every mode: WebSocket upgrades and the stream idle timeout.
func TestHTTPConnectionManagers(t *testing.T) {
	var chains []*listenerv3.FilterChain
	var names []string
	for _, l := range []*listenerv3.Listener{
		InboundListener(Node{ListenIP: "127.0.0.1"}, mesh.MTLSStrict, DefaultTrustDomain),
		InboundListener(Node{ListenIP: "127.0.0.1"}, mesh.MTLSPermissive, DefaultTrustDomain),
		InboundListener(Node{ListenIP: "127.0.0.1"}, mesh.MTLSDisable, DefaultTrustDomain),
		OutboundListener(Node{ListenIP: "127.0.0.1"}, DefaultClusterDomain),
	} {
		for i, c := range l.GetFilterChains() {
			chains = append(chains, c)
			names = append(names, fmt.Sprintf("%s/%d", l.GetName(), i))
		}
	}
	for i, c := range chains {
		t.Run(names[i], func(t *testing.T) {
			hcm := &hcmv3.HttpConnectionManager{}
			if err := c.GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
				t.Fatal(err)
			}
			if got := hcm.GetStreamIdleTimeout().AsDuration(); got != time.Hour {
				t.Errorf("stream_idle_timeout %s, want 1h", got)
			}
			want := []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
			if diff := cmp.Diff(want, hcm.GetUpgradeConfigs(), protocmp.Transform()); diff != "" {
				t.Errorf("upgrade_configs (-want +got):\n%s", diff)
			}
		})
	}
}
