package ads

import (
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/resource"
)

// dreq is a delta request of typ answering nonce, with the names to subscribe to.
func dreq(typ resource.Type, nonce string, subscribe ...string) *discoveryv3.DeltaDiscoveryRequest {
	return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ.URL(), ResponseNonce: nonce, ResourceNamesSubscribe: subscribe}
}

func dunsub(typ resource.Type, nonce string, unsubscribe ...string) *discoveryv3.DeltaDiscoveryRequest {
	return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ.URL(), ResponseNonce: nonce, ResourceNamesUnsubscribe: unsubscribe}
}

func dnack(typ resource.Type, nonce, msg string) *discoveryv3.DeltaDiscoveryRequest {
	r := dreq(typ, nonce)
	r.ErrorDetail = &status.Status{Code: 3, Message: msg}
	return r
}

// dstep is one event fed to a delta session and what must come out of it.
type dstep struct {
	req *discoveryv3.DeltaDiscoveryRequest // a request, or
	// ackOf, an ACK of the latest response of that type (its nonce known only then), or
	ackOf    *resource.Type
	config   map[resource.Type]map[string]string
	wantKind Kind // checked for requests
	want     []dsent
}

// dsent is one expected response: its type, the names of the resources it sends with
// their bodies ("name=body"), and the names it removes.
type dsent struct {
	typ     resource.Type
	sent    []string
	removed []string
}

func drun(t *testing.T, s *deltaSession, steps []dstep) []*discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	var all []*discoveryv3.DeltaDiscoveryResponse
	for i, st := range steps {
		var got []*discoveryv3.DeltaDiscoveryResponse
		if st.ackOf != nil {
			st.req, st.wantKind = dreq(*st.ackOf, s.types[*st.ackOf].nonce), ACK
		}
		if st.req != nil {
			typ, _ := resource.TypeFromURL(st.req.TypeUrl)
			out, resps := s.onRequest(typ, st.req)
			if out.kind != st.wantKind {
				t.Fatalf("step %d: kind = %v, want %v", i, out.kind, st.wantKind)
			}
			got = resps
		} else {
			got = s.onConfig(proxy(t, st.config), time.Now())
		}
		for _, r := range got {
			typ, _ := resource.TypeFromURL(r.TypeUrl)
			for _, res := range r.Resources {
				if res.Resource.GetTypeUrl() != r.TypeUrl {
					t.Fatalf("step %d: Any type %s in a %s response", i, res.Resource.GetTypeUrl(), r.TypeUrl)
				}
				if want := s.cur.Views[typ]; want != nil {
					if cur, ok := want.Get(res.Name); !ok || cur.Hash != res.Version {
						t.Fatalf("step %d: %s %s sent with version %q, not its content hash", i, typ, res.Name, res.Version)
					}
				}
			}
			if r.SystemVersionInfo != s.cur.Views[typ].Version() || r.Nonce == "" {
				t.Fatalf("step %d: %s system_version_info %q nonce %q; the view's version is %s", i, typ, r.SystemVersionInfo, r.Nonce, s.cur.Views[typ].Version())
			}
		}
		gotS, wantS := dsummary(t, got), append([]dsent(nil), st.want...)
		if !equalDsent(gotS, wantS) {
			t.Fatalf("step %d: responses\n got %v\nwant %v", i, gotS, wantS)
		}
		all = append(all, got...)
	}
	return all
}

// dsummary is what drun compares of responses: per response, its type, the resources
// it sends ("name=body") and the names it removes.
func dsummary(t *testing.T, resps []*discoveryv3.DeltaDiscoveryResponse) []dsent {
	t.Helper()
	var out []dsent
	for _, r := range resps {
		typ, _ := resource.TypeFromURL(r.TypeUrl)
		d := dsent{typ: typ, removed: r.RemovedResources}
		for _, res := range r.Resources {
			var body wrapperspb.StringValue
			if err := proto.Unmarshal(res.Resource.GetValue(), &body); err != nil {
				t.Fatal(err)
			}
			d.sent = append(d.sent, res.Name+"="+body.Value)
		}
		out = append(out, d)
	}
	return out
}

func equalDsent(a, b []dsent) bool {
	return slices.EqualFunc(a, b, func(x, y dsent) bool {
		return x.typ == y.typ && slices.Equal(x.sent, y.sent) && slices.Equal(x.removed, y.removed)
	})
}

// dsynced returns a delta session that has sent and had ACKed everything of baseContent:
// CDS and LDS by legacy wildcard, EDS subscribed to a and b, RDS to inbound and outbound,
// SDS to trust-bundle and workload-cert.
func dsynced(t *testing.T) *deltaSession {
	s := newDeltaSession(nil, nil)
	drun(t, s, []dstep{{config: baseContent()}})
	for _, r := range []struct {
		typ   resource.Type
		names []string
		sent  []string
	}{
		{resource.Cluster, nil, []string{"a=1", "b=1"}},
		{resource.Endpoint, []string{"b", "a"}, []string{"a=1", "b=1"}},
		{resource.Listener, nil, []string{"in=1", "out=1"}},
		{resource.Route, []string{"inbound", "outbound"}, []string{"inbound=1", "outbound=1"}},
		{resource.Secret, []string{"workload-cert", "trust-bundle"}, []string{"trust-bundle=1", "workload-cert=1"}},
	} {
		drun(t, s, []dstep{{req: dreq(r.typ, "", r.names...), wantKind: Initial, want: []dsent{{typ: r.typ, sent: r.sent}}}})
		drun(t, s, []dstep{ack(s, r.typ)})
	}
	for _, typ := range resource.Types {
		if st := s.types[typ].status; s.types[typ].requested && st != Synced {
			t.Fatalf("%s not synced: %s", typ, st)
		}
	}
	return s
}

// ack is a step that ACKs the latest response of typ.
func ack(_ *deltaSession, typ resource.Type) dstep {
	return dstep{ackOf: &typ}
}

func TestDeltaSession(t *testing.T) {
	base := baseContent()

	t.Run("requests wait for the first config, then get what they subscribe to", func(t *testing.T) {
		s := newDeltaSession(nil, nil)
		drun(t, s, []dstep{
			{req: dreq(resource.Cluster, ""), wantKind: Initial},
			{req: dreq(resource.Endpoint, "", "a"), wantKind: Initial},
			{config: base, want: []dsent{{typ: resource.Cluster, sent: []string{"a=1", "b=1"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}},
		})
		if st := s.types[resource.Listener].status; st != NotSent {
			t.Fatalf("LDS status %s before any LDS request, want NOT_SENT", st)
		}
		if st := s.types[resource.Cluster].status; st != StaleStatus {
			t.Fatalf("CDS status %s before its ACK, want STALE", st)
		}
	})

	t.Run("ack records the response's version and sends nothing", func(t *testing.T) {
		s := dsynced(t)
		eds := s.types[resource.Endpoint]
		if eds.ackedVersion != eds.version || eds.ackedVersion != s.cur.Views[resource.Endpoint].Version() || eds.acks != 1 {
			t.Fatalf("EDS after its ACK: %+v", eds.typeStats)
		}
	})

	t.Run("subscribe sends the new name only; subscribing again sends it again", func(t *testing.T) {
		s := newDeltaSession(nil, nil)
		drun(t, s, []dstep{
			{config: base},
			{req: dreq(resource.Endpoint, "", "a"), wantKind: Initial, want: []dsent{{typ: resource.Endpoint, sent: []string{"a=1"}}}},
		})
		drun(t, s, []dstep{
			ack(s, resource.Endpoint),
			{req: dreq(resource.Endpoint, "", "b"), wantKind: Update, want: []dsent{{typ: resource.Endpoint, sent: []string{"b=1"}}}},
			// The client may have dropped what it subscribes to again: the server must
			// send it even though it thinks the client holds it.
			{req: dreq(resource.Endpoint, "", "a"), wantKind: Update, want: []dsent{{typ: resource.Endpoint, sent: []string{"a=1"}}}},
		})
	})

	t.Run("unsubscribe sends nothing, forgets, and a later subscribe gets it again", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{
			{req: dunsub(resource.Endpoint, "", "b"), wantKind: Update},
			// b changes: not subscribed any more, nothing to send.
			{config: with(base, resource.Endpoint, "b", "2")},
			{req: dreq(resource.Endpoint, "", "b"), wantKind: Update, want: []dsent{{typ: resource.Endpoint, sent: []string{"b=2"}}}},
		})
		if got := s.types[resource.Endpoint].subscribed(); !slices.Equal(got, []string{"a", "b"}) {
			t.Fatalf("EDS subscription %v", got)
		}
	})

	t.Run("unsubscribing a name never subscribed is ignored", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{{req: dunsub(resource.Endpoint, "", "nope"), wantKind: Update}})
	})

	t.Run("legacy wildcard: a first CDS request naming nothing gets every cluster, and new ones", func(t *testing.T) {
		s := dsynced(t)
		if got := s.types[resource.Cluster].subscribed(); !slices.Equal(got, []string{"*"}) {
			t.Fatalf("CDS subscription %v, want [*]", got)
		}
		drun(t, s, []dstep{{config: with(base, resource.Cluster, "c", "1"), want: []dsent{{typ: resource.Cluster, sent: []string{"c=1"}}}}})
	})

	t.Run("a first EDS request naming nothing is no wildcard", func(t *testing.T) {
		s := newDeltaSession(nil, nil)
		drun(t, s, []dstep{{config: base}, {req: dreq(resource.Endpoint, ""), wantKind: Initial, want: []dsent{{typ: resource.Endpoint}}}})
	})

	t.Run("legacy wildcard goes on when the client subscribes a name, and ends with unsubscribe *", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{
			// A name under the wildcard is sent again: the client asked for it. A cluster
			// sent may warm, so its assignment goes again too.
			{req: dreq(resource.Cluster, "", "a"), wantKind: Update, want: []dsent{{typ: resource.Cluster, sent: []string{"a=1"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}},
			{config: with(base, resource.Cluster, "c", "1"), want: []dsent{{typ: resource.Cluster, sent: []string{"c=1"}}}},
			// Unsubscribe "*": only a is left; the client drops the others, nothing is sent.
			{req: dunsub(resource.Cluster, "", "*"), wantKind: Update},
			{config: with(with(base, resource.Cluster, "c", "2"), resource.Cluster, "b", "2")},
			{config: with(base, resource.Cluster, "a", "2"), want: []dsent{{typ: resource.Cluster, sent: []string{"a=2"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}},
		})
		if got := s.types[resource.Cluster].subscribed(); !slices.Equal(got, []string{"a"}) {
			t.Fatalf("CDS subscription %v, want [a]", got)
		}
		// Now unsubscribe a: nothing is left, and an empty request is no wildcard.
		drun(t, s, []dstep{
			{req: dunsub(resource.Cluster, "", "a"), wantKind: Update},
			{req: dreq(resource.Cluster, ""), wantKind: Update},
			{config: with(base, resource.Cluster, "d", "1")},
		})
	})

	t.Run("explicit wildcard *, alone or next to names", func(t *testing.T) {
		s := newDeltaSession(nil, nil)
		drun(t, s, []dstep{
			{config: base},
			{req: dreq(resource.Listener, "", "*", "in"), wantKind: Initial, want: []dsent{{typ: resource.Listener, sent: []string{"in=1", "out=1"}}}},
		})
		if got := s.types[resource.Listener].subscribed(); !slices.Equal(got, []string{"*", "in"}) {
			t.Fatalf("LDS subscription %v", got)
		}
		// Unsubscribing a name the wildcard also covers: the client cannot know whether
		// to keep it, so it is sent again (it exists).
		drun(t, s, []dstep{{req: dunsub(resource.Listener, "", "in"), wantKind: Update, want: []dsent{{typ: resource.Listener, sent: []string{"in=1"}}}}})
		// And a name that does not exist is removed.
		s2 := newDeltaSession(nil, nil)
		drun(t, s2, []dstep{
			{config: base},
			{req: dreq(resource.Listener, "", "*", "ghost"), wantKind: Initial, want: []dsent{{typ: resource.Listener, sent: []string{"in=1", "out=1"}, removed: []string{"ghost"}}}},
			{req: dunsub(resource.Listener, "", "ghost"), wantKind: Update, want: []dsent{{typ: resource.Listener, removed: []string{"ghost"}}}},
		})
	})

	t.Run("a name that does not exist is said to be removed, then sent when it appears", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{
			{req: dreq(resource.Endpoint, "", "c"), wantKind: Update, want: []dsent{{typ: resource.Endpoint, removed: []string{"c"}}}},
			ack(s, resource.Endpoint),
			// An unrelated change does not repeat it.
			{config: with(base, resource.Route, "inbound", "2"), want: []dsent{{typ: resource.Route, sent: []string{"inbound=2"}}}},
			{config: with(with(base, resource.Route, "inbound", "2"), resource.Endpoint, "c", "new"), want: []dsent{{typ: resource.Endpoint, sent: []string{"c=new"}}}},
		})
	})

	t.Run("a resource that goes is removed; unsubscribed ones are not", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{
			{req: dunsub(resource.Route, "", "inbound"), wantKind: Update},
			{config: with(with(base, resource.Route, "outbound", ""), resource.Route, "inbound", ""), want: []dsent{{typ: resource.Route, removed: []string{"outbound"}}}},
		})
	})

	t.Run("an endpoint change sends that assignment only", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{{config: with(base, resource.Endpoint, "b", "2"), want: []dsent{{typ: resource.Endpoint, sent: []string{"b=2"}}}}})
	})

	t.Run("unchanged content sends nothing", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{{config: baseContent()}})
	})

	t.Run("reconnect with initial_resource_versions sends only what differs and removes what went", func(t *testing.T) {
		old := dsynced(t)
		held := map[string]string{"gone": "0123"}
		for _, r := range old.cur.Views[resource.Cluster].All() {
			held[r.Name] = r.Hash
		}
		s := newDeltaSession(nil, nil) // a new stream, after b changed and gone went
		drun(t, s, []dstep{{config: with(base, resource.Cluster, "b", "2")}})
		first := dreq(resource.Cluster, "")
		first.InitialResourceVersions = held
		drun(t, s, []dstep{{req: first, wantKind: Initial, want: []dsent{{typ: resource.Cluster, sent: []string{"b=2"}}, {typ: resource.Cluster, removed: []string{"gone"}}}}})
		// EDS names what it holds too: a is current, b is not, and b's cluster changed.
		first = dreq(resource.Endpoint, "", "a", "b")
		first.InitialResourceVersions = map[string]string{"a": old.cur.Views[resource.Endpoint][0].All()[0].Hash, "b": "stale"}
		drun(t, s, []dstep{{req: first, wantKind: Initial, want: []dsent{{typ: resource.Endpoint, sent: []string{"b=1"}}}}})
	})

	t.Run("a first request with nothing to send is answered, empty", func(t *testing.T) {
		s := newDeltaSession(nil, nil)
		drun(t, s, []dstep{
			{config: with(with(base, resource.Cluster, "a", ""), resource.Cluster, "b", "")},
			{req: dreq(resource.Cluster, ""), wantKind: Initial, want: []dsent{{typ: resource.Cluster}}},
			ack(s, resource.Cluster),
		})
		if st := s.types[resource.Cluster].status; st != Synced {
			t.Fatalf("CDS status %s, want SYNCED", st)
		}
	})

	t.Run("a reconnect with nothing changed gets one empty answer per type, at the same versions", func(t *testing.T) {
		old := dsynced(t)
		s := newDeltaSession(nil, nil)
		drun(t, s, []dstep{{config: base}})
		for _, typ := range resource.Types {
			if !old.types[typ].requested {
				continue
			}
			first := dreq(typ, "", old.types[typ].subscribed()...)
			if typ.Wildcard() {
				first.ResourceNamesSubscribe = nil // legacy wildcard, as Envoy sends it
			}
			first.InitialResourceVersions = map[string]string{}
			for _, r := range old.cur.Views[typ].All() {
				first.InitialResourceVersions[r.Name] = r.Hash
			}
			drun(t, s, []dstep{{req: first, wantKind: Initial, want: []dsent{{typ: typ}}}, ack(s, typ)})
			if got, want := s.types[typ].ackedVersion, old.types[typ].ackedVersion; got != want {
				t.Fatalf("%s: version %s after the reconnect, %s before", typ, got, want)
			}
		}
	})

	t.Run("a NACK is recorded and nothing is resent until the content changes", func(t *testing.T) {
		s := dsynced(t)
		bad := with(base, resource.Cluster, "a", "bad")
		drun(t, s, []dstep{{config: bad, want: []dsent{{typ: resource.Cluster, sent: []string{"a=bad"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}}})
		cds := s.types[resource.Cluster]
		acked := cds.ackedVersion
		drun(t, s, []dstep{
			{req: dnack(resource.Cluster, cds.nonce, "cluster a: invalid"), wantKind: NACK},
			{config: bad},
			// The same NACK again is stale: its response was answered.
			{req: dnack(resource.Cluster, cds.nonce, "cluster a: invalid"), wantKind: Stale},
		})
		cds = s.types[resource.Cluster]
		if cds.status != Nacked || cds.nacks != 1 || cds.lastNack == nil || cds.lastNack.Message != "cluster a: invalid" || cds.ackedVersion != acked {
			t.Fatalf("NACK not recorded: %+v %+v", cds.typeStats, cds.lastNack)
		}
		// An unrelated cluster change is ACKed: a is still rejected, so still NACKED.
		drun(t, s, []dstep{{config: with(bad, resource.Cluster, "c", "1"), want: []dsent{{typ: resource.Cluster, sent: []string{"c=1"}}}}, ack(s, resource.Cluster)})
		if st := s.types[resource.Cluster].status; st != Nacked {
			t.Fatalf("status %s after an unrelated ACK, want NACKED", st)
		}
		// Fixed content is sent, and its ACK clears the NACK.
		fixed := with(with(base, resource.Cluster, "c", "1"), resource.Cluster, "a", "fixed")
		drun(t, s, []dstep{{config: fixed, want: []dsent{{typ: resource.Cluster, sent: []string{"a=fixed"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}}, ack(s, resource.Cluster)})
		if st := s.types[resource.Cluster].status; st != Synced {
			t.Fatalf("status %s after the fix was ACKed, want SYNCED", st)
		}
	})

	t.Run("the fix of a NACKed response sends all of it again", func(t *testing.T) {
		// Envoy rejects a response whole when a resource does not decode, and applies
		// the valid clusters of one otherwise; which it did is only in its message.
		s := dsynced(t)
		bad := with(with(base, resource.Cluster, "a", "bad"), resource.Cluster, "c", "1")
		drun(t, s, []dstep{{config: bad, want: []dsent{{typ: resource.Cluster, sent: []string{"a=bad", "c=1"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}}})
		drun(t, s, []dstep{{req: dnack(resource.Cluster, s.types[resource.Cluster].nonce, "cluster a: invalid"), wantKind: NACK}})
		fixed := with(bad, resource.Cluster, "a", "fixed")
		drun(t, s, []dstep{{config: fixed, want: []dsent{{typ: resource.Cluster, sent: []string{"a=fixed", "c=1"}}, {typ: resource.Endpoint, sent: []string{"a=1"}}}}, ack(s, resource.Cluster)})
		if st := s.types[resource.Cluster].status; st != Synced {
			t.Fatalf("status %s after the fix was ACKed, want SYNCED", st)
		}
		// A fix by removal clears it too.
		drun(t, s, []dstep{{config: with(fixed, resource.Cluster, "c", "bad"), want: []dsent{{typ: resource.Cluster, sent: []string{"c=bad"}}}}})
		drun(t, s, []dstep{{req: dnack(resource.Cluster, s.types[resource.Cluster].nonce, "cluster c: invalid"), wantKind: NACK}})
		drun(t, s, []dstep{{config: with(fixed, resource.Cluster, "c", ""), want: []dsent{{typ: resource.Cluster, removed: []string{"c"}}}}, ack(s, resource.Cluster)})
		if st := s.types[resource.Cluster].status; st != Synced {
			t.Fatalf("status %s after the bad cluster went, want SYNCED", st)
		}
	})

	t.Run("a stale nonce records no ACK but its subscription change applies", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{{config: with(base, resource.Endpoint, "a", "2"), want: []dsent{{typ: resource.Endpoint, sent: []string{"a=2"}}}}})
		eds := s.types[resource.Endpoint]
		// A request answering a response the server never sent, that subscribes to a
		// new name and drops b: stale, yet both changes apply.
		stale := dreq(resource.Endpoint, "999", "c")
		stale.ResourceNamesUnsubscribe = []string{"b"}
		drun(t, s, []dstep{
			{req: stale, wantKind: Stale, want: []dsent{{typ: resource.Endpoint, removed: []string{"c"}}}},
			{config: with(with(base, resource.Endpoint, "a", "2"), resource.Endpoint, "b", "3")},
		})
		after := s.types[resource.Endpoint]
		if after.stale != 1 || after.acks != eds.acks || !slices.Equal(after.subscribed(), []string{"a", "c"}) {
			t.Fatalf("after the stale request: %+v, subscribed %v", after.typeStats, after.subscribed())
		}
	})

	t.Run("a NACK of a response that a later one already superseded asks for nothing more", func(t *testing.T) {
		// The fix (here: new content from a quarantine) went out before the proxy's NACK
		// of the bad response came back; its ACK ends the matter.
		s := dsynced(t)
		drun(t, s, []dstep{{config: with(base, resource.Route, "outbound", "bad"), want: []dsent{{typ: resource.Route, sent: []string{"outbound=bad"}}}}})
		bad := s.types[resource.Route].nonce
		drun(t, s, []dstep{
			{config: with(base, resource.Route, "outbound", "quarantined"), want: []dsent{{typ: resource.Route, sent: []string{"outbound=quarantined"}}}},
			{req: dnack(resource.Route, bad, "route outbound: invalid"), wantKind: NACK},
			ack(s, resource.Route),
		})
		if rds := s.types[resource.Route]; rds.status != Synced || rds.nacks != 1 || rds.pushes != 3 {
			t.Fatalf("RDS: %+v", rds.typeStats)
		}
	})

	t.Run("an ACK of an older response in flight is no stale request", func(t *testing.T) {
		s := dsynced(t)
		drun(t, s, []dstep{
			{config: with(base, resource.Endpoint, "a", "2"), want: []dsent{{typ: resource.Endpoint, sent: []string{"a=2"}}}},
		})
		first := s.types[resource.Endpoint].nonce
		drun(t, s, []dstep{
			{config: with(base, resource.Endpoint, "a", "3"), want: []dsent{{typ: resource.Endpoint, sent: []string{"a=3"}}}},
			{req: dreq(resource.Endpoint, first), wantKind: ACK},
		})
		if st := s.types[resource.Endpoint].status; st != StaleStatus {
			t.Fatalf("status %s with the latest response not ACKed, want STALE", st)
		}
		drun(t, s, []dstep{ack(s, resource.Endpoint)})
		if st := s.types[resource.Endpoint].status; st != Synced {
			t.Fatalf("status %s, want SYNCED", st)
		}
	})

	t.Run("a push that adds and removes clusters is make before break", func(t *testing.T) {
		s := dsynced(t)
		c := with(base, resource.Cluster, "c", "1")
		c = with(c, resource.Endpoint, "c", "1")
		c = with(c, resource.Cluster, "b", "")
		c = with(c, resource.Endpoint, "b", "")
		c = with(c, resource.Cluster, "a", "2") // a changed: its assignment goes again
		c = with(c, resource.Listener, "out", "2")
		c = with(c, resource.Route, "outbound", "2")
		drun(t, s, []dstep{{config: c, want: []dsent{
			{typ: resource.Cluster, sent: []string{"a=2", "c=1"}},
			{typ: resource.Endpoint, sent: []string{"a=1"}},
			{typ: resource.Listener, sent: []string{"out=2"}},
			{typ: resource.Route, sent: []string{"outbound=2"}},
			{typ: resource.Cluster, removed: []string{"b"}},
			{typ: resource.Endpoint, removed: []string{"b"}},
		}}})
		// Envoy then subscribes to the new cluster's assignment.
		drun(t, s, []dstep{{req: dreq(resource.Endpoint, "", "c"), wantKind: Update, want: []dsent{{typ: resource.Endpoint, sent: []string{"c=1"}}}}})
	})
}
