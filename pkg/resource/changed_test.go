package resource

import (
	"slices"
	"testing"
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
