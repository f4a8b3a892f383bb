package resource

import (
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
