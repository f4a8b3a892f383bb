package ads

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/bearkong/bearkong/pkg/resource"
)

// allocated is the heap f allocates, in bytes.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// oneNameBudget bounds what a request that subscribes to or unsubscribes from one name
// may allocate, at S=1000: its response and bookkeeping, not a copy of the 1000-name
// subscription (16 KB).
const oneNameBudget = 4 << 10

// A new Service makes Envoy subscribe to one more ClusterLoadAssignment and one more
// RouteConfiguration, and a deleted one unsubscribe from them. The subscription that
// results is a shared list (the new set's, or the union every proxy of the same view
// holds): the session finds it without building a list of its own first, so one name
// costs it O(1) memory, not O(subscribed names). The list it held before is not modified
// (/debug/streams shares it).
func TestDeltaOneNameSharesList(t *testing.T) {
	const services = 1000
	// Names of their own: the index of live names hands out the strings of the first
	// live set that holds a name, and other tests check whose strings they get.
	named := func(typ resource.Type, n int, extra ...string) []*resource.Resource {
		var rs []*resource.Resource
		for i := range n {
			rs = append(rs, res(t, typ, fmt.Sprintf("one-%05d.ns", i), fmt.Sprint("content ", i)))
		}
		for _, e := range extra {
			rs = append(rs, res(t, typ, e, "content of "+e))
		}
		return rs
	}
	sync := func(s *deltaSession, typ resource.Type, p *resource.Proxy, names []string) {
		t.Helper()
		s.onConfig(p, time.Time{})
		_, resps := s.onRequest(typ, dreq(typ, "", names...))
		if len(resps) != 1 {
			t.Fatalf("%d responses to the first request", len(resps))
		}
		s.onRequest(typ, dreq(typ, resps[0].Nonce))
	}
	t.Run("eds: the new set's list", func(t *testing.T) {
		first := resource.NewSet(named(resource.Endpoint, services)...)
		p := proxy(t, baseContent())
		p.Views[resource.Endpoint] = resource.View{first}
		s := newDeltaSession(nil, nil)
		sync(s, resource.Endpoint, p, slices.Clone(first.Names()))
		eds := &s.types[resource.Endpoint]
		before := eds.subscribed()
		if unsafe.SliceData(before) != unsafe.SliceData(first.Names()) {
			t.Fatal("the synced subscription is not the set's list")
		}
		grown := resource.NewSet(named(resource.Endpoint, services, "one-new.ns")...)
		p2 := *p
		p2.Views[resource.Endpoint] = resource.View{grown}
		s.onConfig(&p2, time.Time{})

		var resps int
		n := allocated(func() {
			_, r := s.onRequest(resource.Endpoint, dreq(resource.Endpoint, "", "one-new.ns"))
			resps = len(r)
		})
		if resps != 1 {
			t.Fatalf("%d responses to the subscription", resps)
		}
		if got := eds.sub.names; unsafe.SliceData(got) != unsafe.SliceData(grown.Names()) {
			t.Errorf("subscription of %d names is not the new set's list", len(got))
		}
		if n > oneNameBudget {
			t.Errorf("subscribing to one name allocated %d bytes, want <= %d", n, oneNameBudget)
		}
		if !slices.Equal(before, first.Names()) || len(before) != services {
			t.Error("the list held before was modified")
		}

		// The Service goes: back to the first set, and the name unsubscribed.
		s.onConfig(p, time.Time{})
		n = allocated(func() { s.onRequest(resource.Endpoint, dunsub(resource.Endpoint, "", "one-new.ns")) })
		if got := eds.sub.names; unsafe.SliceData(got) != unsafe.SliceData(first.Names()) {
			t.Errorf("subscription of %d names is not the set's list", len(got))
		}
		if n > oneNameBudget {
			t.Errorf("unsubscribing from one name allocated %d bytes, want <= %d", n, oneNameBudget)
		}
	})
	t.Run("rds: the union every proxy holds", func(t *testing.T) {
		routes := resource.NewSet(named(resource.Route, services)...)
		var inbound []*resource.Set
		for i := range 3 {
			inbound = append(inbound, resource.NewSet(res(t, resource.Route, "one-inbound", fmt.Sprint("inbound of ", i))))
		}
		union := append(slices.Clone(routes.Names()), "one-inbound")
		sessions := []*deltaSession{newDeltaSession(nil, nil), newDeltaSession(nil, nil), newDeltaSession(nil, nil)}
		for i, s := range sessions {
			p := proxy(t, baseContent())
			p.Views[resource.Route] = resource.View{routes, inbound[i]}
			sync(s, resource.Route, p, union)
		}
		grown := resource.NewSet(named(resource.Route, services, "one-new.ns")...)
		var lists [][]string
		var costs []uint64
		for i, s := range sessions {
			p := proxy(t, baseContent())
			p.Views[resource.Route] = resource.View{grown, inbound[i]}
			s.onConfig(p, time.Time{})
			costs = append(costs, allocated(func() { s.onRequest(resource.Route, dreq(resource.Route, "", "one-new.ns")) }))
			lists = append(lists, s.types[resource.Route].sub.names)
		}
		want := append(slices.Clone(grown.Names()), "one-inbound")
		slices.Sort(want)
		for i, l := range lists {
			if !slices.Equal(l, want) {
				t.Fatalf("session %d: subscription of %d names, want %d", i, len(l), len(want))
			}
			if unsafe.SliceData(l) != unsafe.SliceData(lists[0]) {
				t.Errorf("session %d holds a list of its own", i)
			}
		}
		// The first proxy to get there makes the shared list; the others find it.
		for i, n := range costs[1:] {
			if n > oneNameBudget {
				t.Errorf("session %d: subscribing to one name allocated %d bytes, want <= %d", i+1, n, oneNameBudget)
			}
		}
		runtime.KeepAlive(sessions)
	})
}

// The subscription's bookkeeping, request by request: whatever the sequence of
// subscribes and unsubscribes, the names are the sorted union of what is subscribed,
// shared with a set whenever they are exactly its names, and no list a session held is
// ever modified.
func TestDeltaSubscriptionLists(t *testing.T) {
	mk := func(names ...string) *resource.Set {
		var rs []*resource.Resource
		for _, n := range names {
			rs = append(rs, res(t, resource.Endpoint, n, "endpoints of "+n))
		}
		return resource.NewSet(rs...)
	}
	abc, ab, abcd := mk("a", "b", "c"), mk("a", "b"), mk("a", "b", "c", "d")
	type step struct {
		view       resource.View // nil: unchanged
		sub, unsub []string
		want       []string
		sharedWith *resource.Set // the set whose list the names must be, if any
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"one by one up to a set, and back", []step{
			{view: resource.View{abc}, sub: []string{"a"}, want: []string{"a"}},
			{sub: []string{"c"}, want: []string{"a", "c"}},
			{sub: []string{"b"}, want: []string{"a", "b", "c"}, sharedWith: abc},
			{unsub: []string{"c"}, want: []string{"a", "b"}},
			{view: resource.View{abcd}, sub: []string{"c", "d"}, want: []string{"a", "b", "c", "d"}, sharedWith: abcd},
			{view: resource.View{abc}, unsub: []string{"d"}, want: []string{"a", "b", "c"}, sharedWith: abc},
		}},
		{"subscribe and unsubscribe in one request", []step{
			{view: resource.View{abc}, sub: []string{"a", "b", "c"}, want: []string{"a", "b", "c"}, sharedWith: abc},
			{sub: []string{"d"}, unsub: []string{"c"}, want: []string{"a", "b", "d"}},
			{sub: []string{"c"}, unsub: []string{"d"}, want: []string{"a", "b", "c"}, sharedWith: abc},
			{sub: []string{"d"}, unsub: []string{"d"}, want: []string{"a", "b", "c"}, sharedWith: abc},
		}},
		{"names the view lacks, and phantom unsubscriptions", []step{
			{view: resource.View{ab}, sub: []string{"a", "b"}, want: []string{"a", "b"}, sharedWith: ab},
			{sub: []string{"x"}, want: []string{"a", "b", "x"}},
			{unsub: []string{"y"}, want: []string{"a", "b", "x"}},
			{unsub: []string{"x", "y"}, want: []string{"a", "b"}, sharedWith: ab},
			{sub: []string{"a"}, want: []string{"a", "b"}, sharedWith: ab},
			{unsub: []string{"a", "b"}, want: nil},
		}},
		{"before any config", []step{
			{sub: []string{"b", "a"}, want: []string{"a", "b"}},
			{sub: []string{"c"}, want: []string{"a", "b", "c"}},
			{view: resource.View{abc}, unsub: []string{"b"}, want: []string{"a", "c"}},
			{sub: []string{"b"}, want: []string{"a", "b", "c"}, sharedWith: abc},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := newDeltaSession(nil, nil)
			eds := &s.types[resource.Endpoint]
			type held struct{ list, content []string }
			var seen []held
			for i, st := range c.steps {
				if st.view != nil {
					p := proxy(t, baseContent())
					p.Views[resource.Endpoint] = st.view
					s.onConfig(p, time.Time{})
				}
				req := dreq(resource.Endpoint, "", st.sub...)
				req.ResourceNamesUnsubscribe = st.unsub
				s.onRequest(resource.Endpoint, req)
				got := eds.subscribed()
				if !slices.Equal(got, st.want) {
					t.Fatalf("step %d: subscription %v, want %v", i, got, st.want)
				}
				if st.sharedWith != nil && unsafe.SliceData(got) != unsafe.SliceData(st.sharedWith.Names()) {
					t.Errorf("step %d: subscription %v is not the set's list", i, got)
				}
				seen = append(seen, held{got, slices.Clone(got)})
				for j, h := range seen {
					if !slices.Equal(h.list, h.content) {
						t.Fatalf("step %d: the list of step %d changed: %v, was %v", i, j, h.list, h.content)
					}
				}
			}
		})
	}
}

// A view of two sets (a proxy's own beside the shared one) is served in name order, on a
// first sync and on a reconnect that holds part of it: the covered resources are the
// sets merged, and what the client holds is walked beside them.
func TestDeltaTwoSetViewInNameOrder(t *testing.T) {
	shared := resource.NewSet(res(t, resource.Cluster, "two-b", "1"), res(t, resource.Cluster, "two-d", "1"), res(t, resource.Cluster, "two-e", "1"))
	own := resource.NewSet(res(t, resource.Cluster, "two-a", "1"), res(t, resource.Cluster, "two-c", "1"))
	p := proxy(t, baseContent())
	p.Views[resource.Cluster] = resource.View{shared, own}
	names := func(r *discoveryv3.DeltaDiscoveryResponse) []string {
		var out []string
		for _, res := range r.Resources {
			out = append(out, res.Name)
		}
		return out
	}

	s := newDeltaSession(nil, nil)
	s.onConfig(p, time.Time{})
	_, resps := s.onRequest(resource.Cluster, dreq(resource.Cluster, ""))
	if len(resps) != 1 || !slices.Equal(names(resps[0]), []string{"two-a", "two-b", "two-c", "two-d", "two-e"}) {
		t.Fatalf("first sync sent %d responses: %v", len(resps), names(resps[0]))
	}

	r := s.cur.Views[resource.Cluster]
	a, _ := r.Get("two-a")
	d, _ := r.Get("two-d")
	s = newDeltaSession(nil, nil)
	s.onConfig(p, time.Time{})
	req := dreq(resource.Cluster, "")
	req.InitialResourceVersions = map[string]string{"two-a": a.Hash, "two-c": "old", "two-d": d.Hash, "two-gone": "x"}
	_, resps = s.onRequest(resource.Cluster, req)
	if len(resps) != 2 {
		t.Fatalf("reconnect: %d responses, want the update and the removal", len(resps))
	}
	if got := names(resps[0]); !slices.Equal(got, []string{"two-b", "two-c", "two-e"}) {
		t.Errorf("reconnect sent %v, want what it lacks or holds in another version", got)
	}
	if got := resps[1].RemovedResources; !slices.Equal(got, []string{"two-gone"}) {
		t.Errorf("reconnect removed %v", got)
	}
}

// A control plane that restarts takes the proxies' reconnects before its first config:
// what they say they hold, recorded then, stands once the config comes, and nothing they
// hold as it is is sent again.
func TestDeltaReconnectBeforeConfig(t *testing.T) {
	// Names of its own (see TestDeltaOneNameSharesList).
	content := baseContent()
	for i := range 50 {
		n := fmt.Sprintf("rc-%02d.ns", i)
		content[resource.Cluster][n] = "cluster " + n
		content[resource.Endpoint][n] = "endpoints of " + n
	}
	p := proxy(t, content)
	s := newDeltaSession(nil, nil)
	for _, typ := range resource.Types {
		initial := map[string]string{}
		for _, r := range p.Views[typ].All() {
			initial[r.Name] = r.Hash
		}
		var names []string // CDS, LDS, SRDS: legacy wildcard
		if !typ.Wildcard() {
			names = slices.Clone(p.Views[typ][0].Names())
		}
		req := dreq(typ, "", names...)
		req.InitialResourceVersions = initial
		if _, resps := s.onRequest(typ, req); len(resps) != 0 {
			t.Fatalf("%s: %d responses before any config", typ, len(resps))
		}
	}
	resps := s.onConfig(p, time.Time{})
	if len(resps) != len(resource.Types) {
		t.Errorf("%d responses, want one empty answer per type requested", len(resps))
	}
	for _, r := range resps {
		if len(r.Resources)+len(r.RemovedResources) != 0 {
			t.Errorf("%s: sent %d resources and removed %v, want nothing: the proxy holds them", r.TypeUrl, len(r.Resources), r.RemovedResources)
		}
	}
}
