package resource

import (
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"
)

func TestChanged(t *testing.T) {
	a1, b1, c1 := mustNew(t, Endpoint, "a", "1"), mustNew(t, Endpoint, "b", "1"), mustNew(t, Endpoint, "c", "1")
	old := NewSet(a1, b1, c1)
	cases := []struct {
		name string
		new  *Set
		want []string
	}{
		{"same set", old, nil},
		{"same content, new set", NewSet(mustNew(t, Endpoint, "a", "1"), mustNew(t, Endpoint, "b", "1"), mustNew(t, Endpoint, "c", "1")), nil},
		{"one changed", NewSet(a1, mustNew(t, Endpoint, "b", "2"), c1), []string{"b"}},
		{"one added", NewSet(a1, b1, c1, mustNew(t, Endpoint, "d", "1")), []string{"d"}},
		{"one removed", NewSet(a1, c1), nil},
		{"all new", NewSet(mustNew(t, Endpoint, "x", "1")), []string{"x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := c.new.Changed(old)
			if !slices.Equal(got, c.want) {
				t.Fatalf("Changed = %v, want %v", got, c.want)
			}
			if again := c.new.Changed(old); len(got) > 0 && unsafe.SliceData(again) != unsafe.SliceData(got) {
				t.Fatal("the diff against the same old set is not memoized")
			}
		})
	}
}

func TestViewChanged(t *testing.T) {
	shared := NewSet(mustNew(t, Cluster, "svc-a", "1"), mustNew(t, Cluster, "svc-b", "1"))
	local := NewSet(mustNew(t, Cluster, "local", "1"))
	old := View{shared, local}
	got, ok := View{NewSet(mustNew(t, Cluster, "svc-a", "1"), mustNew(t, Cluster, "svc-b", "2")), NewSet(mustNew(t, Cluster, "local", "2"))}.Changed(old)
	if !ok || !slices.Equal(got, []string{"local", "svc-b"}) {
		t.Fatalf("Changed = %v, %v; want [local svc-b], true", got, ok)
	}
	if _, ok := (View{shared}).Changed(old); ok {
		t.Fatal("views of different lengths compared set by set")
	}
}

// Sets with the same names share one name list, and the lookup finds their names.
func TestNameLists(t *testing.T) {
	a := NewSet(mustNew(t, Route, "inbound", "1"), mustNew(t, Route, "outbound", "1"))
	b := NewSet(mustNew(t, Route, "outbound", "2"), mustNew(t, Route, "inbound", "2"))
	if unsafe.SliceData(a.Names()) != unsafe.SliceData(b.Names()) {
		t.Fatal("two sets with the same names do not share their name list")
	}
	var h NameListHash
	h.Reset()
	for _, n := range []string{"inbound", "outbound"} {
		h.Add([]byte(n))
	}
	LookupNames(func(l NameLookup) {
		if s, ok := l.Name([]byte("outbound")); !ok || s != "outbound" {
			t.Errorf("Name(outbound) = %q, %v", s, ok)
		}
		if _, ok := l.Name([]byte("nope")); ok {
			t.Error("Name(nope) found")
		}
		found := false
		l.Lists(&h, 2, func(list NameList) bool {
			found = unsafe.SliceData(list.Names()) == unsafe.SliceData(a.Names())
			return found
		})
		if !found {
			t.Error("Lists does not find the sets' list")
		}
	})
}

// A subscription to every name of a view of two sets (every Service's route
// configuration and the proxy's own inbound one) is one list shared by every proxy with
// the same names, filed where the request decoder looks for live lists.
func TestCanonicalNames(t *testing.T) {
	shared := NewSet(mustNew(t, Route, "svc-a", "1"), mustNew(t, Route, "svc-b", "1"))
	v1 := View{shared, NewSet(mustNew(t, Route, "inbound", "of proxy 1"))}
	v2 := View{shared, NewSet(mustNew(t, Route, "inbound", "of proxy 2"))}
	union := func() []string { return []string{"inbound", "svc-a", "svc-b"} }

	n1, n2 := CanonicalNames(v1, union()), CanonicalNames(v2, union())
	if !slices.Equal(n1.List(), union()) {
		t.Fatalf("CanonicalNames = %v, want %v", n1.List(), union())
	}
	if unsafe.SliceData(n1.List()) != unsafe.SliceData(n2.List()) {
		t.Fatal("two proxies subscribed to the same union hold two lists")
	}
	for _, n := range n1.List() {
		r, _ := v1.Get(n)
		if unsafe.StringData(n) != unsafe.StringData(r.Name) {
			t.Fatalf("name %q is not the resource's string", n)
		}
	}
	var h NameListHash
	h.Reset()
	for _, n := range []string{"svc-b", "inbound", "svc-a"} {
		h.Add([]byte(n))
	}
	found := false
	LookupNames(func(l NameLookup) {
		l.Lists(&h, 3, func(list NameList) bool {
			found = unsafe.SliceData(list.Names()) == unsafe.SliceData(n1.List())
			return found
		})
	})
	if !found {
		t.Fatal("the live-list index does not find the union's list")
	}

	cases := []struct {
		name   string
		v      View
		names  []string
		want   []string
		shared []string // the list the result must be, if any
	}{
		{"one set's names: the set's list", v1, []string{"svc-a", "svc-b"}, []string{"svc-a", "svc-b"}, shared.Names()},
		{"a live list, with no config yet", View{}, union(), union(), n1.List()},
		{"as many names as the view, not its own", View{shared}, []string{"svc-a", "svc-c"}, []string{"svc-a", "svc-c"}, nil},
		{"part of the view: names of its own", v1, []string{"inbound", "svc-b"}, []string{"inbound", "svc-b"}, nil},
		{"names the view lacks", v1, []string{"inbound", "nope", "svc-a"}, []string{"inbound", "nope", "svc-a"}, nil},
		{"nothing", v1, nil, nil, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := CanonicalNames(c.v, slices.Clone(c.names)).List()
			if !slices.Equal(got, c.want) {
				t.Fatalf("CanonicalNames = %v, want %v", got, c.want)
			}
			if c.shared != nil && unsafe.SliceData(got) != unsafe.SliceData(c.shared) {
				t.Fatal("not the shared list")
			}
			if c.shared == nil && len(got) > 0 && (unsafe.SliceData(got) == unsafe.SliceData(n1.List()) || unsafe.SliceData(got) == unsafe.SliceData(shared.Names())) {
				t.Fatal("a list of other names")
			}
		})
	}
	runtime.KeepAlive(n1)
	runtime.KeepAlive(n2)
}

// A union list is forgotten once no one holds it, like a set's.
func TestCanonicalNamesForgotten(t *testing.T) {
	shared := NewSet(mustNew(t, Route, "svc-x", "1"))
	v := View{shared, NewSet(mustNew(t, Route, "inbound-x", "1"))}
	n := CanonicalNames(v, []string{"inbound-x", "svc-x"})
	var h NameListHash
	h.Reset()
	h.Add([]byte("inbound-x"))
	h.Add([]byte("svc-x"))
	live := func() bool {
		found := false
		LookupNames(func(l NameLookup) {
			l.Lists(&h, 2, func(NameList) bool { found = true; return true })
		})
		return found
	}
	if !live() {
		t.Fatal("the union's list is not indexed")
	}
	runtime.KeepAlive(n)
	for range 20 {
		runtime.GC()
		if !live() {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if live() {
		t.Fatal("the union's list is still indexed once unreferenced")
	}
	runtime.KeepAlive(v)
}

// SharedEdit finds the list a shared list becomes once a few names are added or removed,
// among the sets of the view and the live unions, without building it.
func TestSharedEdit(t *testing.T) {
	abc := NewSet(mustNew(t, Endpoint, "ed-a", "1"), mustNew(t, Endpoint, "ed-b", "1"), mustNew(t, Endpoint, "ed-c", "1"))
	ab := NewSet(mustNew(t, Endpoint, "ed-a", "1"), mustNew(t, Endpoint, "ed-b", "1"))
	in := NewSet(mustNew(t, Endpoint, "ed-in", "1"))
	union := CanonicalNames(View{abc, in}, []string{"ed-a", "ed-b", "ed-c", "ed-in"})
	setNames := func(s *Set) Names { n, _ := SharedNames(View{s}, s.Names()); return n }
	own := func(names ...string) Names { return Names{list: names} }
	cases := []struct {
		name        string
		v           View
		base        Names
		add, remove []string
		want        []string // the shared list's names; nil when none
		ok          bool
	}{
		{"add one: the set's", View{abc}, setNames(ab), []string{"ed-c"}, nil, abc.Names(), true},
		{"remove one: the set's", View{ab}, setNames(abc), nil, []string{"ed-c"}, ab.Names(), true},
		{"from nothing", View{abc}, Names{}, []string{"ed-a", "ed-b", "ed-c"}, nil, abc.Names(), true},
		{"to nothing", View{abc}, setNames(ab), nil, []string{"ed-a", "ed-b"}, nil, true},
		{"the union of the view", View{abc, in}, setNames(abc), []string{"ed-in"}, nil, union.List(), true},
		{"added and removed at once", View{abc}, setNames(ab), []string{"ed-c", "ed-x"}, []string{"ed-x"}, abc.Names(), true},
		{"a swap", View{abc}, setNames(ab), []string{"ed-c"}, []string{"ed-b"}, nil, false},
		{"nothing changes", View{abc}, setNames(ab), []string{"ed-a"}, []string{"ed-z"}, ab.Names(), true},
		{"a name the view lacks", View{abc}, setNames(ab), []string{"ed-x"}, nil, nil, false},
		{"a base of its own", View{abc}, own("ed-a", "ed-b"), []string{"ed-c"}, nil, abc.Names(), true},
		{"a base of its own, unchanged", View{abc}, own("ed-a", "ed-b"), nil, []string{"ed-c"}, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got Names
			var ok bool
			allocs := testing.AllocsPerRun(10, func() { got, ok = SharedEdit(c.v, c.base.List(), c.base, c.add, c.remove) })
			if ok != c.ok || !slices.Equal(got.List(), c.want) {
				t.Fatalf("SharedEdit = %v, %v; want %v, %v", got.List(), ok, c.want, c.ok)
			}
			if len(c.want) > 0 && unsafe.SliceData(got.List()) != unsafe.SliceData(c.want) {
				t.Error("not the shared list")
			}
			if allocs != 0 {
				t.Errorf("%v allocations", allocs)
			}
		})
	}
	runtime.KeepAlive(union)
}

// equalEdit agrees with building the edited list, for every edit of small lists.
func TestEqualEdit(t *testing.T) {
	names := []string{"a", "b", "c", "d", "e"}
	subset := func(bits int) []string {
		var out []string
		for i, n := range names {
			if bits&(1<<i) != 0 {
				out = append(out, n)
			}
		}
		return out
	}
	for b := range 32 {
		for a := range 32 {
			for r := range 32 {
				base, add, remove := subset(b), subset(a), subset(r)
				var want []string
				for _, n := range names {
					if (slices.Contains(base, n) || slices.Contains(add, n)) && !slices.Contains(remove, n) {
						want = append(want, n)
					}
				}
				for l := range 32 {
					list := subset(l)
					if got := equalEdit(list, base, add, remove); got != slices.Equal(list, want) {
						t.Fatalf("equalEdit(%v, %v, +%v, -%v) = %v", list, base, add, remove, got)
					}
				}
			}
		}
	}
}
