// Package resource is the vocabulary shared by pkg/translate and pkg/ads: an xDS resource
// as a name, its serialized bytes and a content hash, grouped into immutable sets.
//
// A Resource is built and marshalled once and then shared, read-only, by every proxy that
// receives it. Versions are content hashes, so the same content always has the same
// version, across proxies and across control-plane restarts.
package resource

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/maphash"
	"maps"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type is one of the six xDS resource types bearkong serves.
type Type int

// The types, in the order a push sends what it adds or changes (make before break:
// clusters and their endpoints before the listeners and routes that refer to them).
// Removed clusters go last, after the listeners and routes that stopped naming them; see
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations
//
// Scopes (SRDS) go between listeners and routes: the outbound listener takes its
// scopes over SRDS and each scope names a route configuration, which Envoy then asks
// for over RDS; a scope sent before its route configuration waits for it, and the
// route configuration cannot be asked for before its scope names it. See
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/rds#config-http-conn-man-scoped-rds
//
// Secrets (SDS) go last. Envoy asks for a secret only once a cluster or listener that
// names it has arrived (its TLS transport socket creates the SDS subscription), so a
// secret sent earlier in a push would go to a proxy that has not asked for it yet; and
// the secret names are stable, so a certificate rotation changes secrets only and is a
// push of SDS alone, whatever its position. See
// https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret#sds-configuration
const (
	Cluster Type = iota
	Endpoint
	Listener
	ScopedRoute
	Route
	Secret
	NumTypes = 6
)

// Types lists every type in push order for additions.
var Types = [NumTypes]Type{Cluster, Endpoint, Listener, ScopedRoute, Route, Secret}

var (
	typeURLs = [NumTypes]string{
		"type.googleapis.com/envoy.config.cluster.v3.Cluster",
		"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
		"type.googleapis.com/envoy.config.listener.v3.Listener",
		"type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration",
		"type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
		"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
	}
	shortNames = [NumTypes]string{"cds", "eds", "lds", "srds", "rds", "sds"}
)

// URL returns the type URL, as used in DiscoveryRequest.type_url and Any.type_url.
func (t Type) URL() string { return typeURLs[t] }

// String returns the short name: cds, eds, lds, srds, rds or sds.
func (t Type) String() string {
	if t < 0 || t >= NumTypes {
		return fmt.Sprintf("Type(%d)", int(t))
	}
	return shortNames[t]
}

// Wildcard reports whether the type is requested as a whole (CDS, LDS, SRDS): its
// responses carry the full set. EDS, RDS and SDS responses carry the requested names.
// Envoy subscribes to SRDS with no names (seen on Envoy 1.36.4: the HTTP connection
// manager's scoped_rds subscription is a wildcard one) and takes each response as the
// whole set of scopes, as for LDS:
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return
func (t Type) Wildcard() bool { return t == Cluster || t == Listener || t == ScopedRoute }

// TypeFromURL maps a type URL to its Type.
func TypeFromURL(url string) (Type, bool) {
	for i, u := range typeURLs {
		if u == url {
			return Type(i), true
		}
	}
	return 0, false
}

// Resource is one named, serialized xDS resource. It is immutable once built.
type Resource struct {
	Name string
	// Hash is a hex content hash of the serialized bytes.
	Hash string
	// Any holds the type URL and the serialized message.
	Any *anypb.Any
	// delta is the resource as incremental xDS sends it, made on first use (Delta).
	delta atomic.Pointer[discoveryv3.Resource]
}

// Delta returns the resource as an incremental xDS Resource: its version is its content
// hash, the same on every replica and after every restart, which is what a client's
// initial_resource_versions is compared with. It is made once and shared by every
// response that carries the resource; the caller must not modify it.
//
// Why here: a delta push or initial sync wraps each resource for thousands of proxies;
// a look-up table beside the resource (keyed by weak pointers) cost a fifth of the
// server's CPU in an initial sync of 1000 proxies.
func (r *Resource) Delta() *discoveryv3.Resource {
	if w := r.delta.Load(); w != nil {
		return w
	}
	r.delta.CompareAndSwap(nil, &discoveryv3.Resource{Name: r.Name, Version: r.Hash, Resource: r.Any})
	return r.delta.Load()
}

// New marshals msg deterministically and returns it as a Resource of type t.
func New(t Type, name string, msg proto.Message) (*Resource, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("marshal %s %q: %w", t, name, err)
	}
	sum := sha256.Sum256(b)
	return &Resource{
		Name: name,
		Hash: hex.EncodeToString(sum[:8]),
		Any:  &anypb.Any{TypeUrl: t.URL(), Value: b},
	}, nil
}

// Set is an immutable group of resources of one type, with unique names.
type Set struct {
	version string
	names   []string // sorted; shared with every other live set of the same names
	byName  map[string]*Resource
	// list holds the resources in name order, for responses that send the whole set.
	list []*Resource
	// nameList keeps names' entry in the intern table alive while the set is.
	nameList *nameList

	// diffs memoizes Changed: the many proxies that move from one set to the next share
	// one computation.
	diffMu sync.Mutex
	diffs  []setDiff

	// input is the list the set was built from by NewSetFrom, in the caller's order,
	// which the next NewSetFrom compares its own with.
	input []*Resource
}

type setDiff struct {
	// from is weak: a set must not keep its predecessors (and theirs) alive.
	from    weak.Pointer[Set]
	changed []string
}

// NewSet returns a set of the given resources. A later resource with the same name as an
// earlier one replaces it.
func NewSet(rs ...*Resource) *Set {
	s := &Set{byName: make(map[string]*Resource, len(rs))}
	for _, r := range rs {
		s.byName[r.Name] = r
	}
	names := make([]string, 0, len(s.byName))
	for n := range s.byName {
		names = append(names, n)
	}
	sort.Strings(names)
	s.nameList = internNames(names)
	s.names = s.nameList.names
	s.list = make([]*Resource, len(s.names))
	for i, n := range s.names {
		s.list[i] = s.byName[n]
	}
	s.version = listVersion(s.names, s.list)
	return s
}

// maxEdits bounds the resources NewSetFrom edits into a copy of the previous set; beyond
// that, building the set anew costs about as much.
const maxEdits = 64

// NewSetFrom is NewSet(rs...), worked out from prev, a set that the caller built from
// an earlier list with NewSetFrom, when rs is that list with a few resources replaced by
// others of the same name, inserted or taken out, the others in the same order. It
// returns prev itself when the content is the same, and otherwise a copy of prev with
// those edits. In any other case (no prev, resources moved, a name twice) it is
// NewSet(rs...): prev is a hint, never a condition of the result. NewSetFrom keeps rs:
// the caller must not modify it.
//
// Why: every snapshot rebuilds the sets every proxy shares, one resource per Service,
// and nearly every change touches one Service. Building a set anew sorts, interns and
// hashes every name: 10 ms per set at S=10,000. With prev, a change costs the resources
// it edited, a pass over rs comparing pointers and, for a set whose content changed, a
// copy and its version's hash.
func NewSetFrom(prev *Set, rs []*Resource) *Set {
	if prev == nil || prev.input == nil || len(prev.list) != len(prev.input) {
		return newSetFrom(rs)
	}
	e, ok := prev.editsTo(rs)
	switch {
	case !ok:
		return newSetFrom(rs)
	case len(e.replace) == 0 && len(e.insert) == 0 && len(e.remove) == 0:
		return prev
	}
	return prev.edited(e, rs)
}

// setEdits are what turns a set into another: resources replaced by others of other
// content (by position in the set's names), inserted (sorted by name), removed (by
// position, in order).
type setEdits struct {
	replace []setEdit
	insert  []*Resource
	remove  []int
}

type setEdit struct {
	at int
	r  *Resource
}

// editsTo finds the edits that turn s, built from s.input, into the set of rs; ok is
// false unless rs is s.input with at most maxEdits resources replaced, inserted or
// removed, the others in their order, and no name twice.
func (s *Set) editsTo(rs []*Resource) (e setEdits, ok bool) {
	in := s.input
	at := func(name string) (int, bool) { return slices.BinarySearch(s.names, name) }
	edits := 0
	for i, j := 0, 0; i < len(rs) || j < len(in); {
		if i < len(rs) && j < len(in) && rs[i] == in[j] {
			i, j = i+1, j+1
			continue
		}
		if edits++; edits > maxEdits {
			return e, false
		}
		switch {
		case i < len(rs) && j < len(in) && rs[i].Name == in[j].Name:
			// Replaced; kept as it is if the content is the same.
			p, _ := at(rs[i].Name)
			if s.list[p].Hash != rs[i].Hash {
				e.replace = append(e.replace, setEdit{p, rs[i]})
			}
			i, j = i+1, j+1
		case i < len(rs) && !func() bool { _, found := at(rs[i].Name); return found }():
			e.insert = append(e.insert, rs[i])
			i++
		case j < len(in):
			// rs[i] is further on in the input, or there is no rs[i]: in[j] is gone.
			p, _ := at(in[j].Name)
			e.remove = append(e.remove, p)
			j++
		default:
			// rs[i] is a name of s that the input had earlier, or twice.
			return e, false
		}
	}
	slices.SortFunc(e.replace, func(a, b setEdit) int { return a.at - b.at })
	slices.Sort(e.remove)
	slices.SortFunc(e.insert, func(a, b *Resource) int { return strings.Compare(a.Name, b.Name) })
	for k := 1; k < len(e.insert); k++ {
		if e.insert[k].Name == e.insert[k-1].Name {
			return e, false
		}
	}
	return e, true
}

// edited returns a copy of s with the edits e, made from rs.
func (s *Set) edited(e setEdits, rs []*Resource) *Set {
	n := &Set{input: rs}
	var changed []string
	if len(e.insert) == 0 && len(e.remove) == 0 {
		// The same names: shared.
		n.names, n.nameList = s.names, s.nameList
		n.byName = maps.Clone(s.byName)
		n.list = slices.Clone(s.list)
		for _, r := range e.replace {
			n.list[r.at] = r.r
			n.byName[s.names[r.at]] = r.r
			changed = append(changed, s.names[r.at])
		}
	} else {
		// Merge s's names, less those removed, with those inserted.
		size := len(s.names) + len(e.insert) - len(e.remove)
		names := make([]string, 0, size)
		n.list = make([]*Resource, 0, size)
		n.byName = maps.Clone(s.byName)
		key := s.nameList.key
		rep, rem, ins := e.replace, e.remove, e.insert
		add := func(name string, r *Resource) {
			names = append(names, name)
			n.list = append(n.list, r)
		}
		insert := func(r *Resource) {
			add(r.Name, r)
			changed = append(changed, r.Name)
			n.byName[r.Name] = r
			key += maphash.String(nameLists.seed, r.Name)
		}
		for p, name := range s.names {
			for ; len(ins) > 0 && ins[0].Name < name; ins = ins[1:] {
				insert(ins[0])
			}
			switch {
			case len(rem) > 0 && rem[0] == p:
				delete(n.byName, name)
				key -= maphash.String(nameLists.seed, name)
				rem = rem[1:]
			case len(rep) > 0 && rep[0].at == p:
				add(name, rep[0].r)
				changed = append(changed, name)
				n.byName[name] = rep[0].r
				rep = rep[1:]
			default:
				add(name, s.list[p])
			}
		}
		for _, r := range ins {
			insert(r)
		}
		n.nameList = internKeyed(key, names)
		n.names = n.nameList.names
	}
	n.version = listVersion(n.names, n.list)
	n.diffs = []setDiff{{from: weak.Make(s), changed: changed}}
	return n
}

// newSetFrom is NewSet of rs, kept as the input of the next NewSetFrom.
func newSetFrom(rs []*Resource) *Set {
	s := NewSet(rs...)
	s.input = rs
	return s
}

// listVersion is the content hash over names and the hashes of list, in that order.
// It hashes a few kilobytes at a time: a write per name cost a copy of each string.
func listVersion(names []string, list []*Resource) string {
	h := sha256.New()
	buf := make([]byte, 0, 8<<10)
	for i, n := range names {
		buf = append(append(append(append(buf, n...), 0), list[i].Hash...), 0)
		if len(buf) >= 4<<10 {
			h.Write(buf)
			buf = buf[:0]
		}
	}
	h.Write(buf)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Version is a content hash over the names and hashes of every resource in the set.
func (s *Set) Version() string { return s.version }

// Len is the number of resources.
func (s *Set) Len() int { return len(s.names) }

// Names returns the sorted names. The caller must not modify the slice.
//
// Sets with the same names share one slice, for as long as any of them is alive: a proxy
// that subscribes to exactly a set's names can keep that slice instead of a copy of its
// own, and it stays identical (the same backing array) from one snapshot to the next while
// the names do not change.
func (s *Set) Names() []string { return s.names }

// All returns the resources sorted by name. The caller must not modify the slice.
func (s *Set) All() []*Resource { return s.list }

// maxDiffs bounds the memoized diffs of a set. Nearly every proxy moves to a new set
// from the one set that came before it; a few lagging ones may come from older sets.
const maxDiffs = 4

// Changed returns the sorted names of the resources of s that old lacks or holds with
// other content. Names that old has and s has not are not listed. It is nil when s is
// old.
//
// Why: a new snapshot replaces every set, and each proxy works out what changed for it.
// Walking all names per proxy costs O(names) each time; Changed does it once per pair of
// sets and the proxies share the result, so a proxy's work is the size of the change.
func (s *Set) Changed(old *Set) []string {
	if s == old {
		return nil
	}
	from := weak.Make(old)
	s.diffMu.Lock()
	defer s.diffMu.Unlock()
	for _, d := range s.diffs {
		if d.from == from {
			return d.changed
		}
	}
	var changed []string
	for _, n := range s.names {
		r := s.byName[n]
		if o, ok := old.byName[n]; ok && (o == r || o.Hash == r.Hash) {
			continue
		}
		changed = append(changed, n)
	}
	if len(s.diffs) == maxDiffs {
		copy(s.diffs, s.diffs[1:])
		s.diffs = s.diffs[:maxDiffs-1]
	}
	s.diffs = append(s.diffs, setDiff{from: from, changed: changed})
	return changed
}

// Get returns the named resource.
func (s *Set) Get(name string) (*Resource, bool) {
	r, ok := s.byName[name]
	return r, ok
}

// View is what one proxy gets for one type: a stack of sets, typically one shared by many
// proxies and one of the proxy's own. Names must not repeat across the sets of a view.
type View []*Set

// emptyVersion is the version of a view with no sets: that of an empty set, worked out
// once rather than for every request that a proxy sends for a type it has none of.
var emptyVersion = NewSet().Version()

// Version combines the versions of the sets. It changes when any resource in the view
// changes, is added or is removed.
func (v View) Version() string {
	switch len(v) {
	case 0:
		return emptyVersion
	case 1:
		return v[0].Version()
	}
	h := sha256.New()
	for _, s := range v {
		h.Write([]byte(s.Version()))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// Changed returns the sorted names of the resources of v that are new or differ from
// old's, set by set (see Set.Changed), or ok false when the views do not have the same
// number of sets. A name that moved from one set of the view to another is listed, even
// if its content is the same: the list may hold more than what changed, never less.
func (v View) Changed(old View) (names []string, ok bool) {
	if len(v) != len(old) {
		return nil, false
	}
	for i, s := range v {
		c := s.Changed(old[i])
		if len(c) == 0 {
			continue
		}
		if names == nil {
			names = c
			continue
		}
		names = append(slices.Clip(names), c...)
		slices.Sort(names)
		names = slices.Compact(names)
	}
	return names, true
}

// Get returns the named resource from the first set that has it.
func (v View) Get(name string) (*Resource, bool) {
	for _, s := range v {
		if r, ok := s.Get(name); ok {
			return r, true
		}
	}
	return nil, false
}

// Len is the number of resources across the sets.
func (v View) Len() int {
	n := 0
	for _, s := range v {
		n += s.Len()
	}
	return n
}

// All returns every resource in the view, sorted by name within each set, sets in order.
// The caller must not modify the slice.
func (v View) All() []*Resource {
	if len(v) == 1 {
		return v[0].list
	}
	out := make([]*Resource, 0, v.Len())
	for _, s := range v {
		out = append(out, s.list...)
	}
	return out
}

// Proxy is the whole configuration for one proxy: one view per type.
type Proxy struct {
	Views [NumTypes]View
	// Serves describes what the proxy serves, for diagnostics only (for example
	// Service keys). pkg/ads shows it and never interprets it.
	Serves []string
}

// nameList is a sorted name list shared by every live set with the same names.
type nameList struct {
	names []string
	// key is names' key in nameLists (see namesKey), kept so that a list edited by a few
	// names can be looked up without hashing every name again (see SharedEdit).
	key uint64
	// index maps each name to its position, built the first time a request is matched
	// against the list (see NameList.Index).
	indexOnce sync.Once
	index     map[string]int32
}

// nameLists interns name lists by content: a new snapshot rebuilds every set, and most
// keep their names, so a proxy's subscription (Set.Names) stays the same slice across
// snapshots. Entries go when no set holds their list any more. It also indexes every
// name of a live list, for Name.
var nameLists = struct {
	sync.RWMutex
	seed  maphash.Seed
	lists map[uint64][]weak.Pointer[nameList]
	names map[string]nameRef
}{seed: maphash.MakeSeed(), lists: map[uint64][]weak.Pointer[nameList]{}, names: map[string]nameRef{}}

// nameRef is a name of a live set and the number of live lists that hold it.
type nameRef struct {
	s    string
	refs int
}

// NameListHash computes, name by name, the key under which the index of live name
// lists (see LookupNames) files a list. The key does not depend on the order of the
// names: Envoy lists its subscriptions in watch order (newest first), the sets in sorted
// order, and both must find the same list.
type NameListHash struct{ sum uint64 }

// Reset starts a new list.
func (x *NameListHash) Reset() { x.sum = 0 }

// Add adds a name of the list.
func (x *NameListHash) Add(name []byte) { x.sum += maphash.Bytes(nameLists.seed, name) }

func internNames(names []string) *nameList { return internKeyed(namesKey(names), names) }

// namesKey is the key of names in nameLists, as NameListHash computes it.
func namesKey(names []string) uint64 {
	var key uint64
	for _, n := range names {
		key += maphash.String(nameLists.seed, n)
	}
	return key
}

// internKeyed returns the live list of names, filed under key, or makes names one: its
// strings are then replaced by the index's, and the caller must not modify it again.
func internKeyed(key uint64, names []string) *nameList {
	nameLists.Lock()
	defer nameLists.Unlock()
	for _, wp := range nameLists.lists[key] {
		if nl := wp.Value(); nl != nil && slices.Equal(nl.names, names) {
			return nl
		}
	}
	for i, n := range names {
		ref, ok := nameLists.names[n]
		if !ok {
			ref.s = n
		}
		ref.refs++
		nameLists.names[n] = ref
		names[i] = ref.s
	}
	nl := &nameList{names: names, key: key}
	nameLists.lists[key] = append(nameLists.lists[key], weak.Make(nl))
	runtime.AddCleanup(nl, forgetNames, forget{key: key, names: names})
	return nl
}

type forget struct {
	key   uint64
	names []string
}

// forgetNames drops the dead lists under f.key and unindexes the names of one.
func forgetNames(f forget) {
	nameLists.Lock()
	defer nameLists.Unlock()
	live := nameLists.lists[f.key][:0]
	for _, wp := range nameLists.lists[f.key] {
		if wp.Value() != nil {
			live = append(live, wp)
		}
	}
	if len(live) == 0 {
		delete(nameLists.lists, f.key)
	} else {
		nameLists.lists[f.key] = live
	}
	for _, n := range f.names {
		ref := nameLists.names[n]
		if ref.refs--; ref.refs <= 0 {
			delete(nameLists.names, n)
		} else {
			nameLists.names[n] = ref
		}
	}
}

// Names is a sorted, unique list of names as CanonicalNames returns it: List is the
// list, and the value, as long as it is held, keeps a shared list filed in the index of
// live lists (see LookupNames). Hold the Names, not only its List, for as long as the list
// is in use: the index forgets a list that nothing holds (its entries are weak).
type Names struct {
	list []string
	keep *nameList
}

// List returns the names. The caller must not modify the slice.
func (n Names) List() []string { return n.list }

// CanonicalNames returns names, which must be sorted and unique (a subscription's), in
// the form that costs its holder the least memory of its own, given the view v the names
// are resolved against:
//   - the list of a set of v, when names are exactly that set's (EDS for every cluster);
//   - when names are exactly every name of v's sets (RDS: every Service's route
//     configuration and the proxy's inbound one), the live shared list of those names
//     (another proxy's subscription to the same union), or a new one, filed in the index
//     of live lists; with an empty v (no config yet), a live list of the same names;
//   - else names itself, with each string that v holds replaced by v's.
//
// names may be modified, and in the third case becomes the shared list: the caller must
// not modify it afterwards.
//
// Why: a proxy's RDS view is two sets, and Envoy subscribes to every name of both. Each
// session kept a copy of its own of those names (16 KB per proxy at S=1000), and as no
// live list held them, the request decoder allocated them again for every RDS request,
// ACKs included. A shared list is held once for every proxy with the same union, and
// the decoder hands it to their requests (see NameLookup.Lists), so that an unchanged
// subscription is recognised by identity.
func CanonicalNames(v View, names []string) Names {
	if n, ok := SharedNames(v, names); ok {
		return n
	}
	for i, n := range names {
		if r, ok := v.Get(n); ok {
			names[i] = r.Name
		}
	}
	return Names{list: names}
}

// SharedNames is CanonicalNames without its last case: ok is false, and names untouched,
// when names are neither a set's of v, nor every name of v (nor, for an empty v, a live
// list's). It costs no map look-up per name unless names are as many as v's: a subscription that only lost names, whose
// strings are already the resources' own, needs nothing more.
func SharedNames(v View, names []string) (Names, bool) {
	if len(names) == 0 {
		return Names{list: names}, true
	}
	for _, set := range v {
		if len(names) == len(set.names) && slices.Equal(names, set.names) {
			return Names{list: set.names, keep: set.nameList}, true
		}
	}
	if len(names) != v.Len() && len(v) > 0 {
		return Names{}, false
	}
	// Also with no view yet (a proxy that asks before its first config), where only
	// another's list can match.
	key := namesKey(names)
	if nl := liveList(key, names); nl != nil {
		return Names{list: nl.names, keep: nl}, true
	}
	if len(names) != v.Len() {
		return Names{}, false
	}
	// The names are sorted and unique, and names never repeat across a view's sets: as
	// many names as v has, each of them in v, is every name of v.
	for i, n := range names {
		r, ok := v.Get(n)
		if !ok {
			return Names{}, false
		}
		names[i] = r.Name
	}
	nl := internKeyed(key, names)
	return Names{list: nl.names, keep: nl}, true
}

// SharedEdit is SharedNames of the sorted union of names and add, less remove (each
// sorted and unique), found without building that list: ok is false when the result is
// neither a set's list of v nor a live list of every name of v (nor, with an empty v, a
// live list); the caller then builds the list itself. held, when it is the Names that
// names came from (CanonicalNames' or SharedNames' result), saves hashing every name.
//
// Why: Envoy subscribes to one more ClusterLoadAssignment and RouteConfiguration per new
// Service (and unsubscribes from them when it goes). Building the edited list to look it
// up cost each proxy a copy of its whole subscription (16 KB at S=1000, twice per new
// Service) and hashing every name; the list keys are sums of per-name hashes, so the
// edited list's key is n's plus or minus the names that change, and the candidates with
// that key are compared with the edit as they stand.
func SharedEdit(v View, names []string, held Names, add, remove []string) (Names, bool) {
	n := Names{list: names}
	var key uint64
	if held.keep != nil && sameStrings(held.keep.names, names) {
		n, key = held, held.keep.key
	} else {
		key = namesKey(names)
	}
	added, removed := 0, 0
	for _, a := range add {
		if _, ok := slices.BinarySearch(n.list, a); !ok {
			if _, gone := slices.BinarySearch(remove, a); !gone {
				key += maphash.String(nameLists.seed, a)
				added++
			}
		}
	}
	for _, r := range remove {
		if _, ok := slices.BinarySearch(n.list, r); ok {
			key -= maphash.String(nameLists.seed, r)
			removed++
		}
	}
	count := len(n.list) + added - removed
	switch {
	case added == 0 && removed == 0 && n.keep != nil:
		// Nothing added that was not there, nor removed that was: n as it is.
		return n, true
	case added == 0 && removed == 0:
		// names is the caller's own list, which may be in use elsewhere: not to be
		// rewritten by SharedNames.
		return Names{}, false
	case count == 0:
		return Names{}, true
	}
	for _, set := range v {
		if len(set.names) == count && set.nameList.key == key && equalEdit(set.names, n.list, add, remove) {
			return Names{list: set.names, keep: set.nameList}, true
		}
	}
	if len(v) > 0 && count != v.Len() {
		return Names{}, false
	}
	nameLists.RLock()
	defer nameLists.RUnlock()
	for _, wp := range nameLists.lists[key] {
		if nl := wp.Value(); nl != nil && len(nl.names) == count && equalEdit(nl.names, n.list, add, remove) {
			return Names{list: nl.names, keep: nl}, true
		}
	}
	return Names{}, false
}

// equalEdit reports whether list is the sorted union of base and add less remove, all
// sorted and unique. It finds where in base each name is inserted or removed (add and
// remove are a few names) and compares the runs of base between them with list by
// equality, which is a pointer comparison for the interned strings of live lists: an
// ordering comparison per name of base cost more than all the rest of a subscription.
func equalEdit(list, base, add, remove []string) bool {
	k, j := 0, 0 // in list, in base
	removed := remove
	// match: base[j:to] is what list holds next.
	match := func(to int) bool {
		if k+to-j > len(list) {
			return false
		}
		for ; j < to; j, k = j+1, k+1 {
			if list[k] != base[j] {
				return false
			}
		}
		return true
	}
	for {
		// The next name added (not in base, nor removed) and the next removed (in
		// base), with their positions in base.
		addAt, remAt := -1, -1
		for ; len(add) > 0; add = add[1:] {
			p, found := slices.BinarySearch(base, add[0])
			if _, gone := slices.BinarySearch(removed, add[0]); !found && !gone {
				addAt = p
				break
			}
		}
		for ; len(remove) > 0; remove = remove[1:] {
			if p, found := slices.BinarySearch(base, remove[0]); found {
				remAt = p
				break
			}
		}
		switch {
		case addAt >= 0 && (remAt < 0 || addAt <= remAt):
			if !match(addAt) || k == len(list) || list[k] != add[0] {
				return false
			}
			k, add = k+1, add[1:]
		case remAt >= 0:
			if !match(remAt) {
				return false
			}
			j, remove = j+1, remove[1:]
		default:
			return match(len(base)) && k == len(list)
		}
	}
}

// sameStrings reports whether a and b are the same slice, not just equal.
func sameStrings(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// liveList returns the live list of names filed under key, or nil.
func liveList(key uint64, names []string) *nameList {
	nameLists.RLock()
	defer nameLists.RUnlock()
	for _, wp := range nameLists.lists[key] {
		if nl := wp.Value(); nl != nil && slices.Equal(nl.names, names) {
			return nl
		}
	}
	return nil
}

// NameLookup finds the names of the resources of live sets, and the sets' name lists,
// without allocating. It is valid only inside the function given to LookupNames.
type NameLookup struct{}

// Name returns the string of the resource name b, as a live set holds it; ok is false
// for names no live set holds.
func (NameLookup) Name(b []byte) (string, bool) {
	ref, ok := nameLists.names[string(b)]
	return ref.s, ok
}

// NameList is a live name list (a set's, or a subscription's, see CanonicalNames), as
// Lists finds it.
type NameList struct{ l *nameList }

// Names returns the sorted names, the very slice of the sets that hold them (Set.Names)
// and of the subscriptions that hold it (CanonicalNames).
func (l NameList) Names() []string { return l.l.names }

// Index returns the position of name in Names.
func (l NameList) Index(name []byte) (int, bool) {
	l.l.indexOnce.Do(func() {
		l.l.index = make(map[string]int32, len(l.l.names))
		for i, n := range l.l.names {
			l.l.index[n] = int32(i)
		}
	})
	i, ok := l.l.index[string(name)]
	return int(i), ok
}

// Lists calls f with each live name list of n names filed under the key of h, until f
// returns true. The caller must check that a list is the one it wants: lists of other
// names may share a key.
func (NameLookup) Lists(h *NameListHash, n int, f func(NameList) bool) {
	for _, wp := range nameLists.lists[h.sum] {
		if nl := wp.Value(); nl != nil && len(nl.names) == n && f(NameList{nl}) {
			return
		}
	}
}

// LookupNames calls f with a NameLookup; the lookups inside f share one read lock.
//
// Why: every Envoy repeats its whole EDS and RDS subscription in each request, ACKs
// included, so decoding requests would otherwise allocate a string per subscribed name,
// and a slice of them, per proxy per push. With the lookup, a request's names can be
// the sets' own strings, or even a set's own name list (Set.Names).
func LookupNames(f func(NameLookup)) {
	nameLists.RLock()
	defer nameLists.RUnlock()
	f(NameLookup{})
}
