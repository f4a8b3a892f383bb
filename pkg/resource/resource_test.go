package resource

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustNew(t *testing.T, typ Type, name, body string) *Resource {
	t.Helper()
	r, err := New(typ, name, wrapperspb.String(body))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestVersionsAreContentHashes(t *testing.T) {
	a1, a1again, a2 := mustNew(t, Endpoint, "a", "1"), mustNew(t, Endpoint, "a", "1"), mustNew(t, Endpoint, "a", "2")
	b := mustNew(t, Endpoint, "b", "1")
	if a1.Hash != a1again.Hash || a1.Hash == a2.Hash {
		t.Fatalf("hashes: %s %s %s", a1.Hash, a1again.Hash, a2.Hash)
	}
	if a1.Any.TypeUrl != Endpoint.URL() {
		t.Fatalf("type url %s", a1.Any.TypeUrl)
	}
	cases := []struct {
		name  string
		x, y  *Set
		equal bool
	}{
		{"same content, any order", NewSet(a1, b), NewSet(b, a1again), true},
		{"changed content", NewSet(a1, b), NewSet(a2, b), false},
		{"removed resource", NewSet(a1, b), NewSet(a1), false},
		{"empty sets", NewSet(), NewSet(), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.x.Version() == c.y.Version(); got != c.equal {
				t.Fatalf("versions %s and %s: equal=%v, want %v", c.x.Version(), c.y.Version(), got, c.equal)
			}
		})
	}
}

func TestSetAndView(t *testing.T) {
	a, b, a2 := mustNew(t, Cluster, "a", "1"), mustNew(t, Cluster, "b", "1"), mustNew(t, Cluster, "a", "2")
	s := NewSet(b, a, a2) // the later "a" replaces the earlier one
	if s.Len() != 2 || s.Names()[0] != "a" || s.Names()[1] != "b" {
		t.Fatalf("names %v", s.Names())
	}
	if r, _ := s.Get("a"); r != a2 {
		t.Fatal("a later resource with the same name must replace the earlier one")
	}
	local := NewSet(mustNew(t, Cluster, "local", "x"))
	v := View{s, local}
	if v.Len() != 3 || len(v.All()) != 3 || v.All()[2].Name != "local" {
		t.Fatalf("view: %d resources", v.Len())
	}
	if _, ok := v.Get("local"); !ok {
		t.Fatal("Get through the view")
	}
	if v.Version() == (View{s}).Version() || v.Version() != (View{NewSet(a2, b), local}).Version() {
		t.Fatal("view versions must follow content")
	}
	if (View{}).Version() != NewSet().Version() || (View{}).Version() != (View{NewSet()}).Version() {
		t.Fatal("a view with no sets must have the version of an empty set")
	}
	if tp, ok := TypeFromURL(Route.URL()); !ok || tp != Route || tp.String() != "rds" || !Cluster.Wildcard() || Endpoint.Wildcard() || Route.Wildcard() {
		t.Fatal("type helpers")
	}
	if tp, ok := TypeFromURL("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"); !ok || tp != Secret || tp.String() != "sds" || Secret.Wildcard() || Types[NumTypes-1] != Secret {
		t.Fatal("Secret: a named type, last in push order")
	}
	// Scopes come over SRDS by wildcard, between the listeners that name them and the
	// route configurations they name.
	if tp, ok := TypeFromURL("type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"); !ok || tp != ScopedRoute || tp.String() != "srds" || !ScopedRoute.Wildcard() ||
		Types[3] != ScopedRoute || Types[2] != Listener || Types[4] != Route {
		t.Fatal("ScopedRoute: a wildcard type, between LDS and RDS in push order")
	}
}

// TestDelta: a resource's incremental xDS form carries its name, its content hash as its
// version and its bytes, and is made once, shared by every response.
func TestDelta(t *testing.T) {
	r, err := New(Cluster, "a", wrapperspb.String("x"))
	if err != nil {
		t.Fatal(err)
	}
	w := r.Delta()
	if w2 := r.Delta(); w2 != w || w.Name != "a" || w.Version != r.Hash || w.Resource != r.Any {
		t.Fatalf("Delta: %+v, then %p (first %p)", w, w2, w)
	}
}

// TestNewSetFrom: a set worked out from the previous one is the set NewSet builds from
// the same list, whatever the previous one was; it is the previous set itself when the
// content is, shares its names when only content changed, and knows what changed.
func TestNewSetFrom(t *testing.T) {
	list := func(bodies ...string) []*Resource {
		rs := make([]*Resource, len(bodies))
		for i, b := range bodies {
			// Not in name order, as translate lists them (by Service).
			rs[i] = mustNew(t, Endpoint, string(rune('z'-i)), b)
		}
		return rs
	}
	same := func(t *testing.T, got *Set, rs []*Resource) {
		t.Helper()
		want := NewSet(rs...)
		if got.Version() != want.Version() || !slices.Equal(got.Names(), want.Names()) || got.Len() != want.Len() {
			t.Fatalf("got %s %v, want %s %v", got.Version(), got.Names(), want.Version(), want.Names())
		}
		for i, r := range want.All() {
			g, ok := got.Get(r.Name)
			if !ok || g.Hash != r.Hash || got.All()[i].Hash != r.Hash || got.All()[i].Name != r.Name {
				t.Fatalf("resource %s: got %v, want hash %s", r.Name, g, r.Hash)
			}
		}
	}
	base := list("1", "1", "1", "1")
	prev := NewSetFrom(nil, base)
	same(t, prev, base)

	t.Run("same resources", func(t *testing.T) {
		if got := NewSetFrom(prev, slices.Clone(base)); got != prev {
			t.Fatal("the same resources must give the previous set")
		}
	})
	t.Run("rebuilt with the same content", func(t *testing.T) {
		rs := slices.Clone(base)
		rs[2] = mustNew(t, Endpoint, rs[2].Name, "1")
		if got := NewSetFrom(prev, rs); got != prev {
			t.Fatal("resources of the same content must give the previous set")
		}
	})
	t.Run("content changed", func(t *testing.T) {
		rs := slices.Clone(base)
		rs[1] = mustNew(t, Endpoint, rs[1].Name, "2")
		rs[3] = mustNew(t, Endpoint, rs[3].Name, "2")
		got := NewSetFrom(prev, rs)
		same(t, got, rs)
		if &got.Names()[0] != &prev.Names()[0] {
			t.Fatal("a set whose names did not change must share its names with the previous one")
		}
		if c := got.Changed(prev); !slices.Equal(c, []string{rs[3].Name, rs[1].Name}) {
			t.Fatalf("Changed: %v", c)
		}
		if r, _ := prev.Get(rs[1].Name); r != base[1] {
			t.Fatal("the previous set must not change")
		}
		// And the next change starts from this set.
		next := slices.Clone(rs)
		next[0] = mustNew(t, Endpoint, rs[0].Name, "3")
		same(t, NewSetFrom(got, next), next)
		if c := NewSetFrom(got, next).Changed(got); !slices.Equal(c, []string{next[0].Name}) {
			t.Fatalf("Changed: %v", c)
		}
	})
	t.Run("inserted and removed", func(t *testing.T) {
		rs := slices.Insert(slices.Clone(base), 2, mustNew(t, Endpoint, "a", "1"), mustNew(t, Endpoint, "zz", "1"))
		rs = slices.Delete(rs, 0, 1)
		rs[0] = mustNew(t, Endpoint, rs[0].Name, "2")
		got := NewSetFrom(prev, rs)
		same(t, got, rs)
		if c := got.Changed(prev); !slices.Equal(c, []string{"a", rs[0].Name, "zz"}) {
			t.Fatalf("Changed: %v", c)
		}
		// Back: the names are those of prev again, and their list the same one.
		back := NewSetFrom(got, base)
		same(t, back, base)
		if &back.Names()[0] != &prev.Names()[0] {
			t.Fatal("a set of the names of a live set must share its list")
		}
	})
	t.Run("other lists", func(t *testing.T) {
		renamed := slices.Clone(base)
		renamed[0] = mustNew(t, Endpoint, "a", "1")
		dup := slices.Clone(base)
		dup[0] = mustNew(t, Endpoint, base[1].Name, "2")
		moved := []*Resource{base[1], base[0], base[2], base[3]}
		for name, rs := range map[string][]*Resource{
			"longer":     append(slices.Clone(base), mustNew(t, Endpoint, "a", "1")),
			"shorter":    base[1:],
			"renamed":    renamed,
			"duplicate":  dup,
			"reordered":  moved,
			"moved back": {base[1], base[2], base[3], base[0]},
			"twice":      append(slices.Clone(base), base[0]),
			"new twice":  append(slices.Clone(base), mustNew(t, Endpoint, "a", "1"), mustNew(t, Endpoint, "a", "2")),
			"empty":      nil,
		} {
			t.Run(name, func(t *testing.T) {
				got := NewSetFrom(prev, rs)
				same(t, got, rs)
				// A set from a list with duplicates does not serve as a previous one.
				same(t, NewSetFrom(got, slices.Clone(rs)), rs)
			})
		}
	})
	t.Run("a previous set NewSet built", func(t *testing.T) {
		rs := slices.Clone(base)
		rs[0] = mustNew(t, Endpoint, rs[0].Name, "2")
		same(t, NewSetFrom(NewSet(base...), rs), rs)
	})
	t.Run("many changes", func(t *testing.T) {
		var bodies []string
		for range maxEdits + 2 {
			bodies = append(bodies, "1")
		}
		many := list(bodies...)
		from := NewSetFrom(nil, many)
		rs := slices.Clone(many)
		for i := range rs {
			rs[i] = mustNew(t, Endpoint, rs[i].Name, "2")
		}
		same(t, NewSetFrom(from, rs), rs)
	})
}

// TestNewSetFromRandomEdits holds NewSetFrom to NewSet through random series of lists,
// each the last with a few resources replaced, inserted, removed or moved.
func TestNewSetFromRandomEdits(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for series := range 200 {
		var rs []*Resource
		for i := range rng.IntN(20) {
			rs = append(rs, mustNew(t, Route, fmt.Sprint("r", i), "0"))
		}
		var prev *Set
		for step := range 10 {
			next := slices.Clone(rs)
			for range rng.IntN(4) {
				switch k := rng.IntN(len(next) + 1); rng.IntN(5) {
				case 0: // another content, or the same
					if k < len(next) {
						next[k] = mustNew(t, Route, next[k].Name, fmt.Sprint(rng.IntN(2)))
					}
				case 1: // a new name, or one that is already there
					next = slices.Insert(next, k, mustNew(t, Route, fmt.Sprint("r", rng.IntN(40)), "0"))
				case 2:
					if k < len(next) {
						next = slices.Delete(next, k, k+1)
					}
				case 3: // moved
					if k < len(next) {
						r := next[k]
						next = slices.Insert(slices.Delete(next, k, k+1), rng.IntN(len(next)), r)
					}
				}
			}
			got, want := NewSetFrom(prev, next), NewSet(next...)
			if got.Version() != want.Version() || !slices.Equal(got.Names(), want.Names()) {
				t.Fatalf("series %d step %d: %s %v, want %s %v", series, step, got.Version(), got.Names(), want.Version(), want.Names())
			}
			for _, r := range want.All() {
				if g, ok := got.Get(r.Name); !ok || g.Hash != r.Hash {
					t.Fatalf("series %d step %d: %s", series, step, r.Name)
				}
			}
			for _, r := range rs {
				if _, ok := want.Get(r.Name); !ok {
					if _, ok := got.Get(r.Name); ok {
						t.Fatalf("series %d step %d: %s removed, still there", series, step, r.Name)
					}
				}
			}
			if prev != nil {
				var changed []string
				for _, r := range want.All() {
					if o, ok := prev.Get(r.Name); !ok || o.Hash != r.Hash {
						changed = append(changed, r.Name)
					}
				}
				if c := got.Changed(prev); !slices.Equal(c, changed) {
					t.Fatalf("series %d step %d: Changed %v, want %v", series, step, c, changed)
				}
			}
			prev, rs = got, next
		}
	}
}
