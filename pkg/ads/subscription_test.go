package ads

import (
	"testing"

	"github.com/bearkong/bearkong/pkg/resource"
)

// ackLatest is the proxy's ACK of the latest response of typ, with its subscription.
func ackLatest(s *session, typ resource.Type, names ...string) step {
	ts := s.types[typ]
	return step{req: req(typ, ts.version, ts.nonce, names...), wantKind: ACK}
}

// TestSubscriptions follows the xDS protocol's rules on what a client subscribes to:
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return
func TestSubscriptions(t *testing.T) {
	t.Run("resubscribe sends the forgotten names", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{ackLatest(s, resource.Endpoint)})
		eds := s.types[resource.Endpoint]
		run(t, s, []step{{req: req(resource.Endpoint, eds.version, eds.nonce, "b", "a"), wantKind: ACK,
			want: []sent{{resource.Endpoint, []string{"1", "1"}}}}})
	})

	t.Run("an RDS resubscribe after an unsubscribe is answered again", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{ackLatest(s, resource.Route)})
		rds := s.types[resource.Route]
		run(t, s, []step{{req: req(resource.Route, rds.version, rds.nonce, "outbound"), wantKind: ACK,
			want: []sent{{resource.Route, []string{"1"}}}}})
	})

	t.Run("a name dropped and asked for again is resent", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{ackLatest(s, resource.Endpoint, "a")})
		eds := s.types[resource.Endpoint]
		run(t, s, []step{{req: req(resource.Endpoint, eds.version, eds.nonce, "a", "b"), wantKind: ACK,
			want: []sent{{resource.Endpoint, []string{"1"}}}}})
	})

	t.Run("a dropped name is answered with the version a new stream would get", func(t *testing.T) {
		// A Service goes: its cluster and assignment leave the config, and the proxy
		// drops the name. Nothing is left to send, but the version moves to the view's,
		// so that the version the proxy holds is the one a restarted control plane sends
		// for the same content.
		s := synced(t)
		gone := baseContent()
		delete(gone[resource.Cluster], "b")
		delete(gone[resource.Endpoint], "b")
		run(t, s, []step{{config: gone, want: []sent{{resource.Cluster, []string{"1"}}}}})
		run(t, s, []step{ackLatest(s, resource.Cluster)})
		eds := s.types[resource.Endpoint]
		resps := run(t, s, []step{{req: req(resource.Endpoint, eds.version, eds.nonce, "a"), wantKind: ACK,
			want: []sent{{resource.Endpoint, nil}}}})
		fresh := newSession(nil, nil)
		run(t, fresh, []step{
			{config: gone},
			{req: req(resource.Endpoint, "", "", "a"), wantKind: Initial, want: []sent{{resource.Endpoint, []string{"1"}}}},
		})
		if got, want := resps[0].VersionInfo, fresh.types[resource.Endpoint].version; got != want {
			t.Fatalf("version after the drop %s, a new stream's %s", got, want)
		}
		// The ACK of that answer is not answered again.
		run(t, s, []step{ackLatest(s, resource.Endpoint, "a")})
	})

	t.Run("CDS leaves legacy wildcard for names, then unsubscribes, then asks for *", func(t *testing.T) {
		s := synced(t)
		// Names without "*": only those clusters, the full set of them.
		run(t, s, []step{{req: req(resource.Cluster, s0(s, resource.Cluster), s.types[resource.Cluster].nonce, "a"), wantKind: ACK,
			want: []sent{{resource.Cluster, []string{"1"}}}}})
		// A cluster outside the subscription changes: nothing for this proxy.
		run(t, s, []step{{config: with(baseContent(), resource.Cluster, "b", "2")}})
		// An empty list after names is not legacy wildcard any more: it unsubscribes.
		run(t, s, []step{ackLatest(s, resource.Cluster)})
		run(t, s, []step{{config: with(baseContent(), resource.Cluster, "a", "3")}})
		// "*" subscribes to everything again: the proxy dropped its clusters, so each
		// warms again and gets its endpoints.
		run(t, s, []step{{req: req(resource.Cluster, s0(s, resource.Cluster), s.types[resource.Cluster].nonce, "*"), wantKind: ACK,
			want: []sent{{resource.Cluster, []string{"3", "1"}}, {resource.Endpoint, []string{"1", "1"}}}}})
	})

	t.Run("CDS with * and names is wildcard", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: baseContent()},
			{req: req(resource.Cluster, "", "", "a", "*"), wantKind: Initial, want: []sent{{resource.Cluster, []string{"1", "1"}}}},
		})
		// Dropping "*" keeps a only.
		run(t, s, []step{{req: req(resource.Cluster, s0(s, resource.Cluster), s.types[resource.Cluster].nonce, "a"), wantKind: ACK,
			want: []sent{{resource.Cluster, []string{"1"}}}}})
	})

	t.Run("LDS by legacy wildcard gets every listener", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: baseContent()},
			{req: req(resource.Listener, "", ""), wantKind: Initial, want: []sent{{resource.Listener, []string{"1", "1"}}}},
		})
	})

	t.Run("EDS * is every ClusterLoadAssignment", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: baseContent()},
			{req: req(resource.Endpoint, "", "", "*"), wantKind: Initial, want: []sent{{resource.Endpoint, []string{"1", "1"}}}},
			{config: with(baseContent(), resource.Endpoint, "c", "new"), want: []sent{{resource.Endpoint, []string{"new"}}}},
		})
	})

	t.Run("EDS with an empty first request is not wildcard", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: baseContent()},
			{req: req(resource.Endpoint, "", ""), wantKind: Initial},
		})
	})

	t.Run("first request with a nonce is initial", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: baseContent()},
			// A client that kept its nonce across a reconnect (gRPC's xDS client may).
			{req: req(resource.Cluster, "v-old", "42"), wantKind: Initial, want: []sent{{resource.Cluster, []string{"1", "1"}}}},
			{req: req(resource.Endpoint, "v-old", "43", "a"), wantKind: Initial, want: []sent{{resource.Endpoint, []string{"1"}}}},
		})
		// Later requests with a nonce never sent are stale as before.
		run(t, s, []step{{req: req(resource.Cluster, "v-old", "42"), wantKind: Stale}})
	})
}

// TestPushAfterCDS: after a CDS push, only the ClusterLoadAssignments of the clusters
// that were added or changed are sent again (Envoy keeps such clusters warming until one
// arrives); the others keep their endpoints.
func TestPushAfterCDS(t *testing.T) {
	t.Run("a changed cluster gets its CLA, the others do not", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{{config: with(baseContent(), resource.Cluster, "b", "2"), want: []sent{
			{resource.Cluster, []string{"1", "2"}},
			{resource.Endpoint, []string{"1"}},
		}}})
	})

	t.Run("a new cluster gets its CLA when the proxy subscribes to it, and only it", func(t *testing.T) {
		s := synced(t)
		c := with(with(baseContent(), resource.Cluster, "c", "1"), resource.Endpoint, "c", "c1")
		run(t, s, []step{{config: c, want: []sent{{resource.Cluster, []string{"1", "1", "1"}}}}})
		run(t, s, []step{ackLatest(s, resource.Cluster)})
		eds := s.types[resource.Endpoint]
		run(t, s, []step{{req: req(resource.Endpoint, eds.version, eds.nonce, "c", "a", "b"), wantKind: ACK,
			want: []sent{{resource.Endpoint, []string{"c1"}}}}})
	})

	t.Run("a changed cluster whose CLA also changed gets it once", func(t *testing.T) {
		s := synced(t)
		c := with(with(baseContent(), resource.Cluster, "a", "2"), resource.Endpoint, "a", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Cluster, []string{"2", "1"}},
			{resource.Endpoint, []string{"2"}},
		}}})
	})

	t.Run("a reconnecting CDS request gets every CLA again", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{
			{req: req(resource.Cluster, s0(s, resource.Cluster), ""), wantKind: Initial, want: []sent{
				{resource.Cluster, []string{"1", "1"}},
				{resource.Endpoint, []string{"1", "1"}},
			}},
		})
	})
}

// TestPushOrder: additions go CDS, EDS, LDS, SRDS, RDS; removals LDS, RDS, then CDS, so that
// routes stop naming a cluster before it goes (xds_protocol#eventual-consistency-considerations).
func TestPushOrder(t *testing.T) {
	t.Run("a removed cluster goes after the routes that stopped naming it", func(t *testing.T) {
		s := synced(t)
		c := with(with(baseContent(), resource.Cluster, "b", ""), resource.Endpoint, "b", "")
		c = with(c, resource.Route, "outbound", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Route, []string{"2"}},
			{resource.Cluster, []string{"1"}},
		}}})
	})

	t.Run("a removal alone is one CDS push", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{{config: with(baseContent(), resource.Cluster, "b", ""), want: []sent{
			{resource.Cluster, []string{"1"}},
		}}})
	})

	t.Run("an addition and a removal: CDS keeps the old cluster until the routes moved", func(t *testing.T) {
		s := synced(t)
		c := with(with(baseContent(), resource.Cluster, "b", ""), resource.Endpoint, "b", "")
		c = with(with(c, resource.Cluster, "c", "1"), resource.Endpoint, "c", "c1")
		c = with(c, resource.Listener, "out", "2")
		c = with(c, resource.Route, "outbound", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Cluster, []string{"1", "1", "1"}}, // a, b (kept), c
			{resource.Listener, []string{"1", "2"}},
			{resource.Route, []string{"2"}},
			{resource.Cluster, []string{"1", "1"}}, // a, c
		}}})
	})

	t.Run("additions go CDS, EDS, LDS, RDS", func(t *testing.T) {
		s := synced(t)
		c := with(baseContent(), resource.Cluster, "a", "2")
		c = with(c, resource.Listener, "in", "2")
		c = with(c, resource.Route, "inbound", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Cluster, []string{"2", "1"}},
			{resource.Endpoint, []string{"1"}},
			{resource.Listener, []string{"2", "1"}},
			{resource.Route, []string{"2"}},
		}}})
	})

	// A new scope (a new Service) sends the whole set of scopes, as LDS does (SRDS is
	// requested by wildcard), after the listeners and before the route configuration
	// it names.
	t.Run("a new scope: the whole SRDS set, between LDS and RDS", func(t *testing.T) {
		s := synced(t)
		c := with(baseContent(), resource.ScopedRoute, "new.ns", "1")
		c = with(c, resource.Listener, "in", "2")
		c = with(c, resource.Route, "outbound", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Listener, []string{"2", "1"}},
			{resource.ScopedRoute, []string{"1", "1", "1"}}, // app, app.ns, new.ns
			{resource.Route, []string{"2"}},
		}}})
	})
}
