package ads_test

import (
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
)

// TestDeltaReconnectOverGRPC: a proxy that reconnects with initial_resource_versions
// gets only what differs from what it says it holds, and the names it holds that went
// are removed, over real gRPC, whether the server decodes the requests with bearkong's
// codec (initial_resource_versions apart from the proto) or with gRPC's proto codec
// (the proto's map): both reach the same session logic.
func TestDeltaReconnectOverGRPC(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []grpc.ServerOption
	}{
		{"bearkong's codec", ads.ServerOptions()},
		{"gRPC's proto codec", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			srv := ads.NewServer(ads.Options{Metrics: ads.NewMetrics(reg)})
			e := &env{srv: srv, reg: reg, addr: serveGRPC(t, srv, tc.opts...)}
			w := world{endpoints: map[string]int{"app-1": 1, "app-2": 2, "app-3": 1}, routeTag: map[string]string{}}
			e.set(t, w)

			// A first stream syncs CDS and EDS and learns the versions.
			c := dialDelta(t, e.addr)
			c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "r"}, TypeUrl: xdstest.ClusterType})
			cds := c.next(xdstest.ClusterType)
			c.ack(cds)
			c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.EndpointType, ResourceNamesSubscribe: []string{"app-1", "app-2", "app-3"}})
			eds := c.next(xdstest.EndpointType)
			c.ack(eds)
			held := func(r *discoveryv3.DeltaDiscoveryResponse) map[string]string {
				m := map[string]string{}
				for _, res := range r.Resources {
					m[res.Name] = res.Version
				}
				return m
			}
			clusters, endpoints := held(cds), held(eds)
			if len(clusters) != 3 || len(endpoints) != 3 {
				t.Fatalf("first sync: CDS %v, EDS %v", clusters, endpoints)
			}

			// Meanwhile app-3 went and app-2's endpoints changed; the proxy reconnects
			// and says what it holds, with a stale version of app-1's assignment too.
			delete(w.endpoints, "app-3")
			w.endpoints["app-2"] = 3
			e.set(t, w)
			endpoints["app-1"] = "stale"
			c = dialDelta(t, e.addr)
			c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "r"}, TypeUrl: xdstest.ClusterType, InitialResourceVersions: clusters})
			cds = c.next(xdstest.ClusterType)
			if len(cds.Resources) != 0 {
				t.Fatalf("CDS after the reconnect sent %v, want nothing: the clusters did not change", deltaNames(cds))
			}
			removed := map[string][]string{xdstest.ClusterType: cds.RemovedResources}
			c.ack(cds)
			c.send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: xdstest.EndpointType, ResourceNamesSubscribe: []string{"app-1", "app-2", "app-3"}, InitialResourceVersions: endpoints})
			eds = c.next(xdstest.EndpointType)
			if got := deltaNames(eds); !slices.Equal(got, []string{"app-1", "app-2"}) {
				t.Fatalf("EDS after the reconnect sent %v, want app-1 (stale) and app-2 (changed)", got)
			}
			removed[xdstest.EndpointType] = append(removed[xdstest.EndpointType], eds.RemovedResources...)
			c.ack(eds)
			// The removals go last, each type's in a response of its own.
			for len(removed[xdstest.ClusterType]) == 0 || len(removed[xdstest.EndpointType]) == 0 {
				select {
				case r := <-c.resps:
					if len(r.GetResources()) != 0 {
						t.Fatalf("%s sent %v after the answers", r.GetTypeUrl(), deltaNames(r))
					}
					removed[r.GetTypeUrl()] = append(removed[r.GetTypeUrl()], r.GetRemovedResources()...)
					c.ack(r)
				case <-time.After(5 * time.Second):
					t.Fatalf("app-3 not removed within 5s: %v", removed)
				}
			}
			if !slices.Equal(removed[xdstest.ClusterType], []string{"app-3"}) || !slices.Equal(removed[xdstest.EndpointType], []string{"app-3"}) {
				t.Fatalf("removed %v, want app-3's cluster and assignment", removed)
			}
			c.none()
		})
	}
}

// TestDeltaInitialVersionsCountAsNames: initial_resource_versions count toward
// Limits.MaxResourceNames with the names subscribed, whichever way they were decoded.
func TestDeltaInitialVersionsCountAsNames(t *testing.T) {
	e := startLimited(t, ads.Options{Limits: ads.Limits{MaxResourceNames: 10}}, nil, 0)
	e.set(t, world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}})
	initial := map[string]string{}
	for _, n := range names(6) {
		initial[n] = "0123456789abcdef"
	}
	// Five names and five entries pass.
	c := dialDelta(t, e.addr)
	few := map[string]string{}
	for _, n := range names(5) {
		few[n] = "v"
	}
	c.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "few"}, TypeUrl: xdstest.EndpointType, ResourceNamesSubscribe: names(5), InitialResourceVersions: few})
	c.next(xdstest.EndpointType)
	// Six and six do not.
	st := deltaRefusal(t, e.addr, &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "many"}, TypeUrl: xdstest.EndpointType,
		ResourceNamesSubscribe: names(6), InitialResourceVersions: initial})
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("status %v %q, want InvalidArgument", st.Code(), st.Message())
	}
	if n := metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonTooManyNames); n != 1 {
		t.Fatalf("bearkong_xds_refused_total{reason=%s} = %v, want 1", ads.ReasonTooManyNames, n)
	}
}
