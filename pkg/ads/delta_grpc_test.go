package ads_test

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
)

// deltaClient is a bare delta ADS client over go-control-plane's generated stub: the
// test says what each request carries and reads each response.
type deltaClient struct {
	t      *testing.T
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discoveryv3.DeltaDiscoveryResponse
}

// dialDelta opens a delta stream to addr, with the request metadata md (key, value...).
func dialDelta(t *testing.T, addr string, md ...string) *deltaClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, stream: stream, resps: make(chan *discoveryv3.DeltaDiscoveryResponse, 100)}
	go func() {
		defer close(c.resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			c.resps <- r
		}
	}()
	return c
}

func (c *deltaClient) send(r *discoveryv3.DeltaDiscoveryRequest) {
	c.t.Helper()
	if err := c.stream.Send(r); err != nil {
		c.t.Fatal(err)
	}
}

// next waits for the next response, which must be of typeURL.
func (c *deltaClient) next(typeURL string) *discoveryv3.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatalf("stream closed while waiting for %s", typeURL)
		}
		if r.TypeUrl != typeURL {
			c.t.Fatalf("got a %s response (%v, removed %v), want %s", r.TypeUrl, deltaNames(r), r.RemovedResources, typeURL)
		}
		return r
	case <-time.After(5 * time.Second):
		c.t.Fatalf("no %s response within 5s", typeURL)
	}
	return nil
}

// none checks that nothing arrives for a while (proof of nothing needs a wait).
func (c *deltaClient) none() {
	c.t.Helper()
	select {
	case r := <-c.resps:
		c.t.Fatalf("unexpected %s response: %v, removed %v", r.GetTypeUrl(), deltaNames(r), r.GetRemovedResources())
	case <-time.After(300 * time.Millisecond):
	}
}

func (c *deltaClient) ack(r *discoveryv3.DeltaDiscoveryResponse) {
	c.t.Helper()
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
}

func deltaNames(r *discoveryv3.DeltaDiscoveryResponse) []string {
	var out []string
	for _, res := range r.GetResources() {
		out = append(out, res.Name)
	}
	slices.Sort(out)
	return out
}

func TestDeltaOverGRPC(t *testing.T) {
	reports := make(chan ads.Report, 100)
	e := start(t, func(r ads.Report) {
		select {
		case reports <- r:
		default:
		}
	})
	w := world{endpoints: map[string]int{"app-1": 1, "app-2": 2}, routeTag: map[string]string{}}
	e.set(t, w)
	c := dialDelta(t, e.addr)

	// Envoy's first requests: CDS and LDS by legacy wildcard, then EDS and RDS by name.
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "d"}, TypeUrl: xdstest.ClusterType})
	cds := c.next(xdstest.ClusterType)
	if got := deltaNames(cds); !slices.Equal(got, []string{"app-1", "app-2"}) {
		t.Fatalf("CDS: %v", got)
	}
	for _, r := range cds.Resources {
		if r.Version == "" || r.Resource.GetTypeUrl() != xdstest.ClusterType {
			t.Fatalf("resource %s: version %q, type %q", r.Name, r.Version, r.Resource.GetTypeUrl())
		}
	}
	c.ack(cds)
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.EndpointType, ResourceNamesSubscribe: []string{"app-1", "app-2"}})
	eds := c.next(xdstest.EndpointType)
	if got := deltaNames(eds); !slices.Equal(got, []string{"app-1", "app-2"}) {
		t.Fatalf("EDS: %v", got)
	}
	c.ack(eds)
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.ListenerType})
	lds := c.next(xdstest.ListenerType)
	c.ack(lds)
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.RouteType, ResourceNamesSubscribe: []string{"outbound-d"}})
	rds := c.next(xdstest.RouteType)
	if got := deltaNames(rds); !slices.Equal(got, []string{"outbound-d"}) {
		t.Fatalf("RDS: %v", got)
	}
	c.ack(rds)
	c.none()

	waitStatus := func(what string, cond func(ads.TypeInfos) bool) *ads.StreamInfo {
		t.Helper()
		var s []*ads.StreamInfo
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if s = e.srv.Streams("d"); len(s) == 1 && cond(s[0].Types) {
				return s[0]
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("%s: %+v", what, s)
		return nil
	}
	info := waitStatus("not SYNCED", func(ti ads.TypeInfos) bool {
		return ti.CDS.Status == ads.Synced && ti.EDS.Status == ads.Synced && ti.LDS.Status == ads.Synced && ti.RDS.Status == ads.Synced
	})
	if info.Protocol != "delta" {
		t.Fatalf("protocol %q, want delta", info.Protocol)
	}
	if d, s := streamsOf(t, e, "delta"), streamsOf(t, e, "sotw"); d != 1 || s != 0 {
		t.Fatalf("connected streams by protocol: delta %v, sotw %v; want 1 and 0", d, s)
	}
	if info.Types.CDS.VersionSent != cds.SystemVersionInfo || info.Types.CDS.VersionAcked != cds.SystemVersionInfo {
		t.Fatalf("CDS versions %+v, response said %s", info.Types.CDS, cds.SystemVersionInfo)
	}

	// An endpoint change sends that assignment only.
	w.endpoints["app-1"] = 3
	e.set(t, w)
	eds = c.next(xdstest.EndpointType)
	if got := deltaNames(eds); !slices.Equal(got, []string{"app-1"}) || len(eds.RemovedResources) != 0 {
		t.Fatalf("EDS after an endpoint change: %v, removed %v", got, eds.RemovedResources)
	}
	c.ack(eds)
	c.none()

	// A Service goes: the cluster and then its assignment are removed, by name, and
	// nothing else is sent.
	delete(w.endpoints, "app-2")
	e.set(t, w)
	cds = c.next(xdstest.ClusterType)
	eds = c.next(xdstest.EndpointType)
	if len(eds.Resources) != 0 || !slices.Equal(eds.RemovedResources, []string{"app-2"}) ||
		len(cds.Resources) != 0 || !slices.Equal(cds.RemovedResources, []string{"app-2"}) {
		t.Fatalf("after a Service went: EDS %v removed %v; CDS %v removed %v", deltaNames(eds), eds.RemovedResources, deltaNames(cds), cds.RemovedResources)
	}
	c.ack(eds)
	c.ack(cds)
	c.none()

	// A NACK is recorded and shown, and reported with what it rejected.
	w.endpoints["app-3"] = 1
	e.set(t, w)
	cds = c.next(xdstest.ClusterType)
	if got := deltaNames(cds); !slices.Equal(got, []string{"app-3"}) {
		t.Fatalf("CDS after a Service came: %v", got)
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.ClusterType, ResponseNonce: cds.Nonce,
		ErrorDetail: &status.Status{Code: 3, Message: "cluster app-3: bad"}})
	info = waitStatus("not NACKED", func(ti ads.TypeInfos) bool { return ti.CDS.Status == ads.Nacked })
	if n := info.Types.CDS.LastNack; n == nil || n.Message != "cluster app-3: bad" || info.Types.CDS.Nacks != 1 {
		t.Fatalf("CDS after the NACK: %+v", info.Types.CDS)
	}
	if got := counter(t, e, "bearkong_xds_nack_total", "cds"); got != 1 {
		t.Fatalf("bearkong_xds_nack_total{type=cds} = %v", got)
	}
	var nack *ads.Report
	for len(reports) > 0 {
		if r := <-reports; r.Kind == ads.NACK {
			nack = &r
		}
	}
	if nack == nil || nack.Node.GetId() != "d" || len(nack.Resources) != 1 || nack.Resources[0].Name != "app-3" ||
		nack.Resources[0].Hash != cds.Resources[0].Version || nack.Version != cds.SystemVersionInfo {
		t.Fatalf("NACK report: %+v", nack)
	}
}

// deltaRefusal sends reqs on a new delta stream and returns the status it ends with.
func deltaRefusal(t *testing.T, addr string, reqs ...*discoveryv3.DeltaDiscoveryRequest) *grpcstatus.Status {
	t.Helper()
	c := dialDelta(t, addr)
	for _, r := range reqs {
		if err := c.stream.Send(r); err != nil && err != io.EOF {
			t.Fatal(err)
		}
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case _, ok := <-c.resps:
			if !ok {
				_, err := c.stream.Recv()
				return grpcstatus.Convert(err)
			}
		case <-deadline:
			t.Fatal("the stream was not ended within 10s")
		}
	}
}

// TestDeltaSharesTheStreamRules: the limits, node checks and refusals of the SotW side
// hold on delta streams, counted in the same metrics.
func TestDeltaSharesTheStreamRules(t *testing.T) {
	e := startLimited(t, ads.Options{Limits: ads.Limits{MaxResourceNames: 10, MaxStreamsPerNode: 1, MaxNackDetailBytes: 64}}, nil, slog.LevelInfo)
	w := world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}}
	e.set(t, w)
	for _, tc := range []struct {
		name   string
		reqs   []*discoveryv3.DeltaDiscoveryRequest
		code   codes.Code
		metric string
		reason string
	}{
		{"subscribe and unsubscribe names count together", []*discoveryv3.DeltaDiscoveryRequest{{Node: &corev3.Node{Id: "names"}, TypeUrl: xdstest.EndpointType,
			ResourceNamesSubscribe: names(6), ResourceNamesUnsubscribe: names(6)}}, codes.InvalidArgument, "bearkong_xds_refused_total", ads.ReasonTooManyNames},
		{"no node", []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: xdstest.ClusterType}}, codes.InvalidArgument, "", ""},
		{"the node changes", []*discoveryv3.DeltaDiscoveryRequest{{Node: &corev3.Node{Id: "one"}, TypeUrl: xdstest.ClusterType},
			{Node: &corev3.Node{Id: "other"}, TypeUrl: xdstest.EndpointType}}, codes.PermissionDenied, "bearkong_xds_auth_failures_total", ads.ReasonNodeChanged},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if st := deltaRefusal(t, e.addr, tc.reqs...); st.Code() != tc.code {
				t.Fatalf("status %v %q, want %v", st.Code(), st.Message(), tc.code)
			}
			if tc.metric != "" {
				if n := metric(t, e, tc.metric, "reason", tc.reason); n != 1 {
					t.Fatalf("%s{reason=%s} = %v, want 1", tc.metric, tc.reason, n)
				}
			}
		})
	}

	t.Run("a NACK's detail is cut to MaxNackDetailBytes", func(t *testing.T) {
		c := dialDelta(t, e.addr)
		c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "nacker"}, TypeUrl: xdstest.ClusterType})
		r := c.next(xdstest.ClusterType)
		c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.ClusterType, ResponseNonce: r.Nonce,
			ErrorDetail: &status.Status{Code: 3, Message: strings.Repeat("x", 10<<10)}})
		deadline := time.Now().Add(5 * time.Second)
		for {
			if s := e.srv.Streams("nacker"); len(s) == 1 && s[0].Types.CDS.LastNack != nil {
				if m := s[0].Types.CDS.LastNack.Message; len(m) > 200 || !strings.HasPrefix(m, strings.Repeat("x", 64)) {
					t.Fatalf("NACK message kept: %d bytes: %.100q", len(m), m)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no NACK recorded: %+v", e.srv.Streams("nacker"))
			}
			time.Sleep(10 * time.Millisecond)
		}
		if n := metric(t, e, "bearkong_xds_nack_detail_truncated_total", "", ""); n != 1 {
			t.Fatalf("bearkong_xds_nack_detail_truncated_total = %v, want 1", n)
		}
	})

	t.Run("a node has at most MaxStreamsPerNode streams, whatever their protocol", func(t *testing.T) {
		sotw := e.connect(t, "twice", nil)
		e.waitSynced(t, sotw)
		st := deltaRefusal(t, e.addr, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "twice"}, TypeUrl: xdstest.ClusterType})
		if st.Code() != codes.ResourceExhausted {
			t.Fatalf("status %v %q, want ResourceExhausted", st.Code(), st.Message())
		}
		if s := e.srv.Streams("twice"); len(s) != 1 || s[0].Protocol != "sotw" {
			t.Fatalf("streams of twice: %+v", s)
		}
	})
}

// streamsOf reads bearkong_xds_connected_streams_by_protocol{protocol}.
func streamsOf(t *testing.T, e *env, protocol string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "bearkong_xds_connected_streams_by_protocol" && m.GetLabel()[0].GetValue() == protocol {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no bearkong_xds_connected_streams_by_protocol{protocol=%q}", protocol)
	return 0
}

// TestDeltaIsAuthenticated: Options.Authenticate vets a delta stream's node as it does a
// SotW one's: without the token nothing is resolved or sent; with it the stream runs as
// the node the authenticator returned.
func TestDeltaIsAuthenticated(t *testing.T) {
	e := startAuth(t, tokenAuth)
	st := deltaRefusal(t, e.addr, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "pod-a.ns"}, TypeUrl: xdstest.ClusterType})
	if st.Code() != codes.Unauthenticated {
		t.Fatalf("status %v %q, want Unauthenticated", st.Code(), st.Message())
	}
	select {
	case n := <-e.resolved:
		t.Fatalf("Resolve was called for %q on a refused stream", n.GetId())
	default:
	}
	if got := authFailures(t, e, ads.ReasonUnauthenticated); got != 1 {
		t.Fatalf("auth failures{unauthenticated} = %v, want 1", got)
	}

	c := dialDelta(t, e.addr, "authorization", "Bearer "+secretToken)
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "pod-a.ns"}, TypeUrl: xdstest.ClusterType})
	if got := deltaNames(c.next(xdstest.ClusterType)); !slices.Equal(got, []string{"app-1"}) {
		t.Fatalf("CDS: %v", got)
	}
	n := <-e.resolved
	if n.GetMetadata().GetFields()["verified"].GetStringValue() != "yes" {
		t.Fatalf("resolved with node %v, not the authenticator's", n)
	}
}
