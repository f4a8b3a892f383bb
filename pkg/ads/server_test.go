package ads_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// world is a tiny mesh expressed directly as Envoy resources: services with endpoint
// counts; every proxy gets the same clusters and endpoints and a listener of its own.
type world struct {
	endpoints map[string]int // service -> number of endpoints
	routeTag  map[string]string
}

func build(t testing.TB, w world) func(node *corev3.Node) (*resource.Proxy, error) {
	t.Helper()
	var clusters, clas []*resource.Resource
	add := func(dst *[]*resource.Resource, typ resource.Type, name string, r *resource.Resource, err error) {
		if err != nil {
			t.Fatal(err)
		}
		*dst = append(*dst, r)
	}
	for svc, n := range w.endpoints {
		r, err := resource.New(resource.Cluster, svc, &clusterv3.Cluster{
			Name:                 svc,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{}}},
		})
		add(&clusters, resource.Cluster, svc, r, err)
		cla := &endpointv3.ClusterLoadAssignment{ClusterName: svc, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
		for i := 0; i < n; i++ {
			cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: fmt.Sprintf("10.0.0.%d", i+1), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8000}}}}}},
			})
		}
		r, err = resource.New(resource.Endpoint, svc, cla)
		add(&clas, resource.Endpoint, svc, r, err)
	}
	sharedClusters, sharedCLAs := resource.NewSet(clusters...), resource.NewSet(clas...)
	return func(node *corev3.Node) (*resource.Proxy, error) {
		if node.GetId() == "" {
			return nil, fmt.Errorf("no id")
		}
		hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
			StatPrefix:     "outbound",
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "outbound-" + node.Id}},
		})
		if err != nil {
			return nil, err
		}
		l, err := resource.New(resource.Listener, "outbound", &listenerv3.Listener{
			Name:         "outbound",
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "hcm", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}},
		})
		if err != nil {
			return nil, err
		}
		rc, err := resource.New(resource.Route, "outbound-"+node.Id, &routev3.RouteConfiguration{
			Name: "outbound-" + node.Id, VirtualHosts: []*routev3.VirtualHost{{Name: w.routeTag[node.Id], Domains: []string{"*"}}},
		})
		if err != nil {
			return nil, err
		}
		return &resource.Proxy{
			Views: [resource.NumTypes]resource.View{
				resource.Cluster: {sharedClusters}, resource.Endpoint: {sharedCLAs}, resource.Listener: {resource.NewSet(l)}, resource.Route: {resource.NewSet(rc)},
			},
			Serves: []string{"svc-of-" + node.Id},
		}, nil
	}
}

type env struct {
	srv  *ads.Server
	reg  *prometheus.Registry
	addr string
}

func start(t *testing.T, observe ...func(ads.Report)) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	o := ads.Options{Metrics: ads.NewMetrics(reg)}
	if len(observe) > 0 {
		o.Observe = observe[0]
	}
	srv := ads.NewServer(o)
	return &env{srv: srv, reg: reg, addr: serveGRPC(t, srv, ads.ServerOptions()...)}
}

// serveGRPC serves srv on a gRPC server with opts, on 127.0.0.1, until the test ends,
// and returns its address.
func serveGRPC(t *testing.T, srv *ads.Server, opts ...grpc.ServerOption) string {
	t.Helper()
	g := grpc.NewServer(opts...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func (e *env) set(t testing.TB, w world) {
	e.srv.SetConfig(&ads.Config{Resolve: build(t, w), ChangedAt: time.Now()})
}

func (e *env) connect(t *testing.T, id string, nack func(string, []string) string) *xdstest.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := xdstest.Dial(ctx, e.addr, &corev3.Node{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	c.Nack = nack
	t.Cleanup(c.Close)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c
}

func types(rs []xdstest.Received) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.TypeURL[strings.LastIndex(r.TypeURL, ".")+1:])
	}
	return out
}

// syncedAll waits until the client has received all four types and the server shows the
// stream SYNCED on each.
func (e *env) waitSynced(t *testing.T, c *xdstest.Client) {
	t.Helper()
	if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool { return xdstest.Count(rs, xdstest.RouteType) > 0 }); err != nil {
		t.Fatalf("%s: %v; got %v", c.Node.Id, err, types(c.Received()))
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		s := e.srv.Streams(c.Node.Id)
		if len(s) == 1 && s[0].Types.CDS.Status == ads.Synced && s[0].Types.EDS.Status == ads.Synced &&
			s[0].Types.LDS.Status == ads.Synced && s[0].Types.RDS.Status == ads.Synced {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s not SYNCED: %+v", c.Node.Id, e.srv.Streams(c.Node.Id))
}

func counter(t *testing.T, e *env, name, typ string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "type" && l.GetValue() == typ {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{type=%q} not found", name, typ)
	return 0
}

// quiet waits a bounded time and returns what arrived meanwhile: proof that nothing was
// sent needs a wait; 300ms is far above the loopback round trip.
func quiet(c *xdstest.Client, before int) []xdstest.Received {
	time.Sleep(300 * time.Millisecond)
	return c.Received()[before:]
}

func TestADSOverGRPC(t *testing.T) {
	e := start(t)
	w := world{endpoints: map[string]int{"app-1": 1, "app-2": 2, "app-3": 2}, routeTag: map[string]string{}}
	e.set(t, w)
	a := e.connect(t, "a", nil)
	b := e.connect(t, "b", nil)
	e.waitSynced(t, a)
	e.waitSynced(t, b)

	t.Run("initial sync arrives in CDS, EDS, LDS, RDS order", func(t *testing.T) {
		got := strings.Join(types(a.Received()), ",")
		if got != "Cluster,ClusterLoadAssignment,Listener,RouteConfiguration" {
			t.Fatalf("initial responses: %s", got)
		}
	})

	t.Run("an endpoint change pushes EDS only, with that service only", func(t *testing.T) {
		before := len(a.Received())
		w.endpoints["app-3"] = 3
		e.set(t, w)
		if err := a.WaitFor(5*time.Second, func(rs []xdstest.Received) bool { return len(rs) > before }); err != nil {
			t.Fatal(err)
		}
		got := quiet(a, before)
		if len(got) != 1 || got[0].TypeURL != xdstest.EndpointType || strings.Join(got[0].Names, ",") != "app-3" {
			t.Fatalf("after an endpoint change: %+v", got)
		}
		cla := a.Resource(xdstest.EndpointType, "app-3").(*endpointv3.ClusterLoadAssignment)
		if n := len(cla.Endpoints[0].LbEndpoints); n != 3 {
			t.Fatalf("app-3 has %d endpoints, want 3", n)
		}
		e.waitSynced(t, a)
	})

	t.Run("a change for one proxy sends nothing to the others", func(t *testing.T) {
		beforeA, beforeB := len(a.Received()), len(b.Received())
		w.routeTag["b"] = "changed"
		e.set(t, w)
		if err := b.WaitFor(5*time.Second, func(rs []xdstest.Received) bool { return len(rs) > beforeB }); err != nil {
			t.Fatal(err)
		}
		if got := quiet(b, beforeB); len(got) != 1 || got[0].TypeURL != xdstest.RouteType {
			t.Fatalf("b got %+v, want one RDS response", got)
		}
		if got := a.Received()[beforeA:]; len(got) != 0 {
			t.Fatalf("a got %+v, want nothing", got)
		}
	})

	t.Run("the same content again sends nothing", func(t *testing.T) {
		pushes := counter(t, e, "bearkong_xds_push_total", "eds")
		beforeA := len(a.Received())
		e.set(t, w)
		if got := quiet(a, beforeA); len(got) != 0 {
			t.Fatalf("a got %+v", got)
		}
		if after := counter(t, e, "bearkong_xds_push_total", "eds"); after != pushes {
			t.Fatalf("eds pushes moved %v -> %v", pushes, after)
		}
	})
}

// TestResubscribeOverGRPC: every service goes and comes back, so the client's EDS
// subscription goes empty and then names the same clusters again. Envoy dropped the
// assignments when it unsubscribed; the server must send them again.
func TestResubscribeOverGRPC(t *testing.T) {
	e := start(t)
	w := world{endpoints: map[string]int{"app-1": 1, "app-2": 2}, routeTag: map[string]string{}}
	e.set(t, w)
	a := e.connect(t, "a", nil)
	e.waitSynced(t, a)

	e.set(t, world{endpoints: map[string]int{}, routeTag: map[string]string{}})
	waitUntil(t, 5*time.Second, func() bool { return len(a.Names(xdstest.EndpointType)) == 0 })
	quiet(a, 0)
	if a.Resource(xdstest.EndpointType, "app-1") != nil {
		t.Fatal("the client kept app-1's assignment after unsubscribing")
	}

	e.set(t, w)
	waitUntil(t, 5*time.Second, func() bool {
		return a.Resource(xdstest.EndpointType, "app-1") != nil && a.Resource(xdstest.EndpointType, "app-2") != nil && len(a.Warming()) == 0
	})
}

// waitUntil polls cond (which may call the client's methods) until it holds.
func waitUntil(t *testing.T, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %s", d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNACKIsVisible(t *testing.T) {
	reports := make(chan ads.Report, 100)
	e := start(t, func(r ads.Report) {
		select {
		case reports <- r:
		default:
		}
	})
	w := world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}}
	e.set(t, w)
	var rejecting atomic.Bool
	c := e.connect(t, "n", func(typeURL string, names []string) string {
		if rejecting.Load() && typeURL == xdstest.ClusterType {
			return "cluster app-2: unknown field"
		}
		return ""
	})
	e.waitSynced(t, c)
	rejecting.Store(true)
	acked := c.Acked(xdstest.ClusterType)
	w.endpoints["app-2"] = 1
	e.set(t, w)
	if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool {
		for _, r := range rs {
			if r.NACKed {
				return true
			}
		}
		return false
	}); err != nil {
		t.Fatal(err)
	}
	var info *ads.StreamInfo
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s := e.srv.Streams("n"); len(s) == 1 && s[0].Types.CDS.Status == ads.Nacked {
			info = s[0]
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if info == nil {
		t.Fatalf("stream never NACKED: %+v", e.srv.Streams("n"))
	}
	cds := info.Types.CDS
	if cds.LastNack == nil || cds.LastNack.Message != "cluster app-2: unknown field" || cds.VersionAcked != acked || cds.Nacks != 1 {
		t.Fatalf("CDS state: %+v (last nack %+v), acked before %s", cds, cds.LastNack, acked)
	}
	if got := counter(t, e, "bearkong_xds_nack_total", "cds"); got != 1 {
		t.Fatalf("bearkong_xds_nack_total{type=cds} = %v", got)
	}

	// Options.Observe heard the ACKs and then the NACK, with what it rejected.
	var nack *ads.Report
	acks := 0
	for len(reports) > 0 {
		r := <-reports
		switch r.Kind {
		case ads.ACK:
			acks++
		case ads.NACK:
			nack = &r
		}
	}
	if acks == 0 || nack == nil {
		t.Fatalf("observed %d ACKs and NACK %+v", acks, nack)
	}
	if nack.Node.GetId() != "n" || nack.Type != resource.Cluster || nack.AckedVersion != acked || nack.Version != cds.VersionSent ||
		nack.Message != "cluster app-2: unknown field" || fmt.Sprint(nack.Resources) != fmt.Sprint([]ads.ResourceRef{{Name: "app-1", Hash: nack.Resources[0].Hash}, {Name: "app-2", Hash: nack.Resources[1].Hash}}) {
		t.Fatalf("NACK report: %+v", nack)
	}

	// The same NACK through the HTTP handler, filtered by node.
	rec := httptest.NewRecorder()
	e.srv.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/streams?node=n", nil))
	var body struct {
		Streams []ads.StreamInfo `json:"streams"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Streams) != 1 || body.Streams[0].Types.CDS.Status != ads.Nacked || body.Streams[0].Types.CDS.LastNack.Message != "cluster app-2: unknown field" {
		t.Fatalf("/debug/streams?node=n: %s", rec.Body.String())
	}
}

// TestStreamsWhileServing: /debug/streams and the status metrics read the streams while
// their loops handle requests and pushes (run with -race to check the locking), and what
// they read is the stream's state now: after the last push is ACKed, each stream shows
// the version and nonce its client ACKed and one EDS push per assignment change.
func TestStreamsWhileServing(t *testing.T) {
	e := start(t)
	w := world{endpoints: map[string]int{"app-1": 1, "app-2": 2}, routeTag: map[string]string{}}
	e.set(t, w)
	var clients []*xdstest.Client
	for i := range 3 {
		c := e.connect(t, fmt.Sprint("reader-", i), nil)
		e.waitSynced(t, c)
		clients = append(clients, c)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, info := range e.srv.Streams("") {
				_ = info.Types.EDS.VersionAcked
			}
			_, _ = e.reg.Gather()
		}
	}()
	const changes = 20
	for i := range changes {
		w.endpoints["app-1"] = 2 + i
		e.set(t, w)
		for _, c := range clients {
			if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool {
				return xdstest.Count(rs, xdstest.EndpointType) == 2+i
			}); err != nil {
				t.Fatalf("change %d, %s: %v", i, c.Node.Id, err)
			}
		}
	}
	close(stop)
	<-done
	for _, c := range clients {
		var last xdstest.Received
		for _, r := range c.Received() {
			if r.TypeURL == xdstest.EndpointType {
				last = r
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			s := e.srv.Streams(c.Node.Id)
			if len(s) != 1 {
				t.Fatalf("%s: %d streams", c.Node.Id, len(s))
			}
			eds := s[0].Types.EDS
			if eds.Status == ads.Synced && eds.VersionAcked == last.Version {
				if eds.NonceSent != last.Nonce || eds.Pushes != changes+1 {
					t.Errorf("%s: EDS nonce %q, %d pushes; want %q, %d", c.Node.Id, eds.NonceSent, eds.Pushes, last.Nonce, changes+1)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: EDS %+v; want SYNCED at %q", c.Node.Id, eds, last.Version)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
