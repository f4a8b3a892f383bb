package translate

import (
	"slices"
	"testing"
	"weak"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// fullNew is NewWithOptions with no last Translator to start from.
func fullNew(t *testing.T, snap *mesh.Snapshot, opts Options) *Translator {
	t.Helper()
	last.Lock()
	last.tr = weak.Pointer[Translator]{}
	last.Unlock()
	tr, err := NewWithOptions(snap, opts)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// sameSets fails unless got's sets hold what want's do.
func sameSets(t *testing.T, what string, got, want map[string]*resource.Set) {
	t.Helper()
	for typ, set := range got {
		w := want[typ]
		if set.Version() != w.Version() || !slices.Equal(set.Names(), w.Names()) {
			t.Fatalf("%s %s: version %s, %d names; a build from nothing: %s, %d", what, typ, set.Version(), set.Len(), w.Version(), w.Len())
		}
		for i, r := range w.All() {
			if g := set.All()[i]; g.Name != r.Name || g.Hash != r.Hash {
				t.Fatalf("%s %s: %s %s, want %s %s", what, typ, g.Name, g.Hash, r.Name, r.Hash)
			}
			if g, ok := set.Get(r.Name); !ok || g.Hash != r.Hash {
				t.Fatalf("%s %s: Get(%s) = %v", what, typ, r.Name, g)
			}
		}
	}
}

// sharedSets are the sets of tr every proxy shares.
func sharedSets(tr *Translator) map[string]*resource.Set {
	return map[string]*resource.Set{"cds": tr.clusters, "eds": tr.endpoints, "rds": tr.routes, "srds": tr.scopes}
}

// TestNewFromTheLastTranslator: a Translator built from the last one, as every snapshot
// after the first is, is the Translator a build from nothing gives, through a series of
// changes; it shares the last one's sets where their content did not change, and
// rejects a snapshot that breaks the model as a build from nothing does.
func TestNewFromTheLastTranslator(t *testing.T) {
	opts := Options{DefaultDeny: true}
	snap := benchSnapshot(300, 3, 3)
	prev := fullNew(t, snap, opts)
	edit := func(i int, f func(*mesh.Service)) *mesh.Snapshot {
		next := &mesh.Snapshot{Services: slices.Clone(snap.Services), Proxies: snap.Proxies}
		c := *next.Services[i]
		f(&c)
		next.Services[i] = &c
		return next
	}
	insert := func(i int, svc *mesh.Service) *mesh.Snapshot {
		return &mesh.Snapshot{Services: slices.Insert(slices.Clone(snap.Services), i, svc), Proxies: snap.Proxies}
	}
	steps := []struct {
		name string
		next *mesh.Snapshot
		// shared: the sets the next Translator takes as they are from the last.
		shared []string
	}{
		{"endpoint gone", edit(150, func(s *mesh.Service) { s.Endpoints = s.Endpoints[1:] }), []string{"cds", "rds", "srds"}},
		{"another endpoint gone", edit(7, func(s *mesh.Service) { s.Endpoints = s.Endpoints[1:] }), []string{"cds", "rds", "srds"}},
		{"same content, new objects", edit(7, func(*mesh.Service) {}), []string{"cds", "eds", "rds", "srds"}},
		{"cluster policy", edit(20, func(s *mesh.Service) { s.Policy.MaxConnections = 7 }), []string{"eds", "rds", "srds"}},
		{"new Service", insert(31, &mesh.Service{Namespace: snap.Services[30].Namespace, Name: snap.Services[30].Name + "-b",
			Ports: snap.Services[30].Ports, Endpoints: []mesh.Endpoint{{IP: "10.8.0.1", Pod: "b-0"}}}), nil},
		{"Service deleted", &mesh.Snapshot{Services: slices.Delete(slices.Clone(snap.Services), 31, 32), Proxies: snap.Proxies}, nil},
		{"same snapshot", nil, []string{"cds", "eds", "rds", "srds"}},
	}
	full := sharedSets(prev)
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.next == nil {
				st.next = snap
			}
			want := sharedSets(fullNew(t, st.next, opts))
			// Back to snap from the Translator of the step's snapshot, then to it again.
			back, err := NewWithOptions(snap, opts)
			if err != nil {
				t.Fatal(err)
			}
			sameSets(t, "back", sharedSets(back), full)
			got, err := NewWithOptions(st.next, opts)
			if err != nil {
				t.Fatal(err)
			}
			sameSets(t, "next", sharedSets(got), want)
			for typ, set := range sharedSets(got) {
				before := sharedSets(back)[typ]
				if (set == before) != slices.Contains(st.shared, typ) {
					t.Errorf("%s: the last Translator's set taken as it is: %v, want %v", typ, set == before, slices.Contains(st.shared, typ))
				}
				if set != before && set.Len() == before.Len() && &set.Names()[0] != &before.Names()[0] {
					t.Errorf("%s: a set of the same names does not share them", typ)
				}
			}
		})
	}

	bad := map[string]*mesh.Snapshot{
		"two Services swapped": {Services: func() []*mesh.Service {
			s := slices.Clone(snap.Services)
			s[10], s[11] = s[11], s[10]
			return s
		}()},
		"a Service twice": {Services: slices.Insert(slices.Clone(snap.Services), 10, snap.Services[10])},
		"a new Service out of order": insert(31, &mesh.Service{Namespace: snap.Services[31].Namespace, Name: snap.Services[31].Name + "-b",
			Ports: snap.Services[30].Ports}),
		"a new endpoint that is no IP": edit(40, func(s *mesh.Service) {
			s.Endpoints = append(slices.Clone(s.Endpoints), mesh.Endpoint{IP: "not-an-ip", Pod: "x"})
		}),
		"a nil Service": {Services: slices.Insert(slices.Clone(snap.Services), 10, nil)},
	}
	for name, s := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := NewWithOptions(snap, opts); err != nil {
				t.Fatal(err)
			}
			if _, err := NewWithOptions(s, opts); err == nil {
				t.Fatal("accepted from the last Translator")
			}
			last.Lock()
			last.tr = weak.Pointer[Translator]{}
			last.Unlock()
			if _, err := NewWithOptions(s, opts); err == nil {
				t.Fatal("accepted by a build from nothing")
			}
		})
	}
}
