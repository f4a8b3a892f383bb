package sim

import (
	"fmt"
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/bearkong/bearkong/internal/xdsclient"
)

// dreq is a delta request as the tests compare it.
type dreq struct {
	typ          Type
	sub, unsub   []string
	ack, nack    bool
	initVersions int
}

func summarizeDelta(rs []*discoveryv3.DeltaDiscoveryRequest) []dreq {
	var out []dreq
	for _, r := range rs {
		t, _ := typeOf(r.TypeUrl)
		out = append(out, dreq{typ: t, sub: r.ResourceNamesSubscribe, unsub: r.ResourceNamesUnsubscribe,
			ack: r.ResponseNonce != "" && r.ErrorDetail == nil, nack: r.ErrorDetail != nil, initVersions: len(r.InitialResourceVersions)})
	}
	return out
}

func cluster(name string, hash uint64, secrets ...string) xdsclient.Resource {
	return xdsclient.Resource{Name: name, Hash: hash, EDS: name, Secrets: secrets}
}

func equalReqs(a, b []dreq) bool {
	return slices.EqualFunc(a, b, func(x, y dreq) bool {
		return x.typ == y.typ && slices.Equal(x.sub, y.sub) && slices.Equal(x.unsub, y.unsub) && x.ack == y.ack && x.nack == y.nack && x.initVersions == y.initVersions
	})
}

// TestDeltaProto walks a delta client through a stream's life, as Envoy would live it.
func TestDeltaProto(t *testing.T) {
	p := newDeltaProto()
	first := p.Start()
	if first.TypeUrl != CDS.URL() || len(first.ResourceNamesSubscribe) != 0 {
		t.Fatalf("first request = %v, want CDS by legacy wildcard (no names)", first)
	}
	steps := []deltaStep{
		{name: "initial clusters subscribe to their assignments and secrets, then ACK", typ: CDS,
			rs:      []xdsclient.Resource{cluster("b", 1, "cert"), cluster("a", 1, "cert")},
			want:    []dreq{{typ: EDS, sub: []string{"a", "b"}}, {typ: SDS, sub: []string{"cert"}}, {typ: CDS, ack: true}},
			warming: []string{"a", "b"}},
		{name: "one assignment warms one cluster", typ: EDS, rs: []xdsclient.Resource{{Name: "a", Hash: 5}},
			want: []dreq{{typ: EDS, ack: true}}, warming: []string{"b"}},
		{name: "an assignment nobody asked for is ignored", typ: EDS, rs: []xdsclient.Resource{{Name: "zz", Hash: 5}},
			want: []dreq{{typ: EDS, ack: true}}, warming: []string{"b"}},
		{name: "the last assignment warms the clusters: LDS is asked for", typ: EDS, rs: []xdsclient.Resource{{Name: "b", Hash: 5}},
			want: []dreq{{typ: LDS}, {typ: EDS, ack: true}}},
		{name: "listeners subscribe to their routes", typ: LDS,
			rs:   []xdsclient.Resource{{Name: "out", Hash: 1, Routes: []string{"r1", "r2"}}},
			want: []dreq{{typ: RDS, sub: []string{"r1", "r2"}}, {typ: LDS, ack: true}}},
		{name: "a new cluster adds one subscription", typ: CDS, rs: []xdsclient.Resource{cluster("c", 1, "cert")},
			want: []dreq{{typ: EDS, sub: []string{"c"}}, {typ: CDS, ack: true}}, warming: []string{"c"}},
		{name: "a modified cluster warms without a new subscription", typ: CDS, rs: []xdsclient.Resource{cluster("a", 2, "cert")},
			want: []dreq{{typ: CDS, ack: true}}, warming: []string{"a", "c"}},
		{name: "removed clusters unsubscribe their assignments", typ: CDS, removed: []string{"a", "c"},
			want: []dreq{{typ: EDS, unsub: []string{"a", "c"}}, {typ: CDS, ack: true}}},
		{name: "a NACK changes nothing", typ: CDS, rs: []xdsclient.Resource{cluster("d", 1)}, nack: "bad",
			want: []dreq{{typ: CDS, nack: true}}},
		{name: "a route no listener names is unsubscribed", typ: LDS,
			rs:   []xdsclient.Resource{{Name: "out", Hash: 2, Routes: []string{"r2"}}},
			want: []dreq{{typ: RDS, unsub: []string{"r1"}}, {typ: LDS, ack: true}}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			rs := deltaResources(s.rs...)
			got, err := p.Response(s.typ, "n", rs, s.removed, s.nack)
			if err != nil {
				t.Fatal(err)
			}
			if g := summarizeDelta(got); !equalReqs(g, s.want) {
				t.Errorf("requests = %+v, want %+v", g, s.want)
			}
			if w := p.Warming(); !slices.Equal(w, s.warming) {
				t.Errorf("warming = %v, want %v", w, s.warming)
			}
		})
	}
	if _, _, ok := p.Has(EDS, "a"); ok {
		t.Errorf("the assignment of a removed cluster is still cached")
	}
	if _, _, ok := p.Has(EDS, "zz"); ok {
		t.Errorf("an assignment never subscribed to is cached")
	}
	if _, _, ok := p.Has(CDS, "d"); ok {
		t.Errorf("a NACKed cluster is cached")
	}

	t.Run("reconnect asks for every type again with the versions held", func(t *testing.T) {
		got := summarizeDelta(p.Reconnect())
		want := []dreq{
			{typ: CDS, initVersions: 1},                        // b
			{typ: EDS, sub: []string{"b"}, initVersions: 1},    // b
			{typ: LDS, initVersions: 1},                        // out
			{typ: RDS, sub: []string{"r2"}, initVersions: 0},   // never received
			{typ: SDS, sub: []string{"cert"}, initVersions: 0}, // never received
		}
		if !equalReqs(got, want) {
			t.Errorf("reconnect = %+v, want %+v", got, want)
		}
	})
}

// deltaStep is one response a test hands the protocol (typ, its resources and removed
// names, NACKed with nack if set) and the requests it must answer with; warming, when
// set, the clusters still warming after it.
type deltaStep struct {
	name    string
	typ     Type
	rs      []xdsclient.Resource
	removed []string
	nack    string
	want    []dreq
	warming []string
}

// deltaResources builds the protocol's view of a response's resources, for tests.
func deltaResources(rs ...xdsclient.Resource) []deltaResource {
	out := make([]deltaResource, len(rs))
	for i, r := range rs {
		out[i] = deltaResource{Resource: r, Version: fmt.Sprint(r.Hash)}
	}
	return out
}

// TestDeltaProtoScopes: SRDS is asked for by wildcard from the first LDS response whose
// listeners take scopes, the scopes' route configurations are subscribed to, and a scope
// that goes takes its route configuration with it; a reconnect asks for the scopes again.
func TestDeltaProtoScopes(t *testing.T) {
	p := newDeltaProto()
	p.Start()
	steps := []deltaStep{
		{name: "clusters", typ: CDS, rs: []xdsclient.Resource{cluster("a", 1)},
			want: []dreq{{typ: EDS, sub: []string{"a"}}, {typ: CDS, ack: true}}},
		{name: "warm: LDS", typ: EDS, rs: []xdsclient.Resource{{Name: "a", Hash: 1}},
			want: []dreq{{typ: LDS}, {typ: EDS, ack: true}}},
		{name: "the first listeners take scopes: SRDS by wildcard", typ: LDS,
			rs:   []xdsclient.Resource{{Name: "out", Hash: 1, Scoped: true}, {Name: "in", Hash: 1, Routes: []string{"inbound"}}},
			want: []dreq{{typ: RDS, sub: []string{"inbound"}}, {typ: SRDS}, {typ: LDS, ack: true}}},
		{name: "scopes subscribe to their route configurations", typ: SRDS,
			rs:   []xdsclient.Resource{{Name: "s1", Hash: 1, Routes: []string{"r1"}}, {Name: "s2", Hash: 1, Routes: []string{"r2"}}},
			want: []dreq{{typ: RDS, sub: []string{"r1", "r2"}}, {typ: SRDS, ack: true}}},
		{name: "a new scope adds its route configuration", typ: SRDS,
			rs:   []xdsclient.Resource{{Name: "s3", Hash: 1, Routes: []string{"r3"}}},
			want: []dreq{{typ: RDS, sub: []string{"r3"}}, {typ: SRDS, ack: true}}},
		{name: "a scope that goes takes its route configuration", typ: SRDS, removed: []string{"s1"},
			want: []dreq{{typ: RDS, unsub: []string{"r1"}}, {typ: SRDS, ack: true}}},
		{name: "listeners again: no second SRDS subscription", typ: LDS,
			rs:   []xdsclient.Resource{{Name: "out", Hash: 2, Scoped: true}},
			want: []dreq{{typ: LDS, ack: true}}},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			got, err := p.Response(s.typ, "n", deltaResources(s.rs...), s.removed, "")
			if err != nil {
				t.Fatal(err)
			}
			if g := summarizeDelta(got); !equalReqs(g, s.want) {
				t.Errorf("requests = %+v, want %+v", g, s.want)
			}
		})
	}
	if got := p.Names(RDS); !slices.Equal(got, []string{"inbound", "r2", "r3"}) {
		t.Errorf("RDS subscription = %v, want inbound r2 r3", got)
	}
	got := summarizeDelta(p.Reconnect())
	want := []dreq{{typ: CDS, initVersions: 1}, {typ: EDS, sub: []string{"a"}, initVersions: 1}, {typ: LDS, initVersions: 2},
		{typ: SRDS, initVersions: 2}, {typ: RDS, sub: []string{"inbound", "r2", "r3"}}}
	if !equalReqs(got, want) {
		t.Errorf("reconnect = %+v, want %+v", got, want)
	}
}

// TestDeltaProtoSharedReferences: a name that several clusters (or a listener and a
// scope) refer to stays subscribed until the last of them goes, as Envoy's watches do.
func TestDeltaProtoSharedReferences(t *testing.T) {
	p := newDeltaProto()
	p.Start()
	shared := func(name string, hash uint64) xdsclient.Resource {
		return xdsclient.Resource{Name: name, Hash: hash, EDS: "shared"}
	}
	steps := []deltaStep{
		{name: "two clusters, one assignment", typ: CDS, rs: []xdsclient.Resource{shared("a", 1), shared("b", 1)},
			want: []dreq{{typ: EDS, sub: []string{"shared"}}, {typ: CDS, ack: true}}},
		{name: "one goes: still referred to", typ: CDS, removed: []string{"a"}, want: []dreq{{typ: CDS, ack: true}}},
		{name: "the other changes its assignment", typ: CDS, rs: []xdsclient.Resource{cluster("b", 2)},
			want: []dreq{{typ: EDS, sub: []string{"b"}, unsub: []string{"shared"}}, {typ: CDS, ack: true}}},
		// Routes: a listener and a scope name the same route configuration.
		{name: "a listener names r", typ: LDS, rs: []xdsclient.Resource{{Name: "l", Hash: 1, Routes: []string{"r"}}},
			want: []dreq{{typ: RDS, sub: []string{"r"}}, {typ: LDS, ack: true}}},
		{name: "a scope names r too", typ: SRDS, rs: []xdsclient.Resource{{Name: "s", Hash: 1, Routes: []string{"r"}}},
			want: []dreq{{typ: SRDS, ack: true}}},
		{name: "the listener goes: the scope keeps r", typ: LDS, removed: []string{"l"}, want: []dreq{{typ: LDS, ack: true}}},
		{name: "the scope goes", typ: SRDS, removed: []string{"s"}, want: []dreq{{typ: RDS, unsub: []string{"r"}}, {typ: SRDS, ack: true}}},
	}
	for _, st := range steps {
		// As if LDS and SRDS had been asked for (the listeners' rule is TestDeltaProto's).
		p.types[LDS].requested, p.types[SRDS].requested = true, true
		got, err := p.Response(st.typ, "n", deltaResources(st.rs...), st.removed, "")
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if g := summarizeDelta(got); !equalReqs(g, st.want) {
			t.Fatalf("%s: requests %+v, want %+v", st.name, g, st.want)
		}
	}
}
