package ads

import (
	"cmp"
	"slices"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// deltaRequest is a DeltaDiscoveryRequest as the server's delta stream receives it: the
// codec decodes its initial_resource_versions into versions, and leaves the proto's map
// empty, when it takes the request's fast path (see unmarshalDeltaRequest); otherwise
// (a request the fast path does not handle, or another codec) the map holds them, as
// proto.Unmarshal leaves it.
//
// Why not the map: a reconnecting Envoy lists every resource it holds, a thousand
// entries for EDS and for RDS at S=1000, and every proxy of a fleet reconnects at once
// when the control plane restarts. A map and a version string per entry per request
// were 2 GB of garbage in 20 s at N=5000 (issue 14), for a session that then, in the
// common case, finds every version current and records nothing.
type deltaRequest struct {
	*discoveryv3.DeltaDiscoveryRequest
	versions resourceVersions
	// decoded: versions holds the request's initial_resource_versions.
	decoded bool
}

func newDeltaRequest() *deltaRequest {
	return &deltaRequest{DeltaDiscoveryRequest: &discoveryv3.DeltaDiscoveryRequest{}}
}

// initial returns the request's initial_resource_versions as the session reads them:
// as decoded, or nil for the session to read the proto's map.
func (r *deltaRequest) initial() *resourceVersions {
	if r.decoded {
		return &r.versions
	}
	return nil
}

// resourceVersions is a request's initial_resource_versions
// (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds),
// the form the session reads: sorted by name, one entry per name (of a name given more
// than once, the last, as proto.Unmarshal fills a map field), so that the session walks
// it beside the resources it covers (sorted too) instead of looking each of them up.
//
// It allocates nothing per entry for what Envoy sends back on a reconnect: the names
// bearkong serves are the live sets' own strings (resource.LookupNames), and a version
// that is a content hash (resource.Resource.Hash: 16 lowercase hex digits, what bearkong
// sends as every resource's version) is held as its 64-bit value. Any other version (a
// peer's, an empty one) gets a string of its own, in odd.
type resourceVersions struct {
	entries []versionEntry
	odd     []string
	// buf is the pooled slice that entries is, if any.
	buf *[]versionEntry
}

type versionEntry struct {
	name string
	// hash is the version's value, when odd is 0.
	hash uint64
	// odd is 0 for a version held in hash, else the version is odd[odd-1].
	odd int32
	// pos is the entry's position in the request, which orders entries of one name.
	pos int32
}

// hashDigits is the length of a content hash (resource.Resource.Hash).
const hashDigits = 16

// parseHash returns the value of 16 lowercase hex digits; ok is false for anything else,
// which a hash does not round-trip (uppercase digits, another length).
func parseHash(b []byte) (h uint64, ok bool) {
	if len(b) != hashDigits {
		return 0, false
	}
	for _, c := range b {
		switch {
		case '0' <= c && c <= '9':
			h = h<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			h = h<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return h, true
}

// formatHash is the inverse of parseHash.
func formatHash(h uint64) [hashDigits]byte {
	const digits = "0123456789abcdef"
	var b [hashDigits]byte
	for i := hashDigits - 1; i >= 0; i-- {
		b[i] = digits[h&0xf]
		h >>= 4
	}
	return b
}

// reserve makes room for n entries.
func (v *resourceVersions) reserve(n int) {
	if v.entries == nil && n > 0 {
		v.buf = getVersionEntries(n)
		v.entries = *v.buf
	}
}

// add appends an entry, its version as it came (the caller checks that it is valid
// UTF-8 unless it is a hash). Call sort once every entry is in.
func (v *resourceVersions) add(name string, version []byte) {
	e := versionEntry{name: name, pos: int32(len(v.entries))}
	if h, ok := parseHash(version); ok {
		e.hash = h
	} else {
		v.odd = append(v.odd, string(version))
		e.odd = int32(len(v.odd))
	}
	v.entries = append(v.entries, e)
}

// sort puts the entries in name order and keeps, of each name, the last one given.
func (v *resourceVersions) sort() {
	if len(v.entries) < 2 {
		return
	}
	byName := func(a, b versionEntry) int {
		return cmp.Or(strings.Compare(a.name, b.name), cmp.Compare(a.pos, b.pos))
	}
	if !slices.IsSortedFunc(v.entries, byName) {
		slices.SortFunc(v.entries, byName)
	}
	// Of a run of one name, the last (the latest in the request) stays.
	out := v.entries[:0]
	for i, e := range v.entries {
		if i+1 < len(v.entries) && v.entries[i+1].name == e.name {
			continue
		}
		out = append(out, e)
	}
	v.entries = out
}

// len is the number of names.
func (v *resourceVersions) len() int { return len(v.entries) }

// find returns the index of name's entry.
func (v *resourceVersions) find(name string) (int, bool) {
	return slices.BinarySearchFunc(v.entries, name, func(e versionEntry, n string) int { return strings.Compare(e.name, n) })
}

// is reports whether entry i's version is version, without allocating.
func (v *resourceVersions) is(i int, version string) bool {
	e := &v.entries[i]
	if e.odd > 0 {
		return v.odd[e.odd-1] == version
	}
	b := formatHash(e.hash)
	return string(b[:]) == version
}

// version returns entry i's version as a string (allocated for a hash: the session asks
// only for versions it records, those that differ from what it serves).
func (v *resourceVersions) version(i int) string {
	e := &v.entries[i]
	if e.odd > 0 {
		return v.odd[e.odd-1]
	}
	b := formatHash(e.hash)
	return string(b[:])
}

// release gives the entries' memory back for another request's; v is empty after it.
// The session keeps none of it: what it records are strings.
func (v *resourceVersions) release() {
	if v.buf != nil {
		putVersionEntries(v.buf, v.entries)
	}
	*v = resourceVersions{}
}

// versionsOf returns the entries of a proto's map, sorted.
func versionsOf(m map[string]string) *resourceVersions {
	v := &resourceVersions{}
	if len(m) == 0 {
		return v
	}
	v.entries = make([]versionEntry, 0, len(m))
	for n, h := range m {
		v.add(n, []byte(h))
	}
	v.sort()
	return v
}

// asMap returns the entries as proto.Unmarshal fills the map field.
func (v *resourceVersions) asMap() map[string]string {
	if v.len() == 0 {
		return nil
	}
	m := make(map[string]string, v.len())
	for i, e := range v.entries {
		m[e.name] = v.version(i)
	}
	return m
}

// versionEntryPool recycles the entries of decoded requests: a stream's request is done
// with once its session has answered it, and a fleet's reconnect decodes, per proxy,
// three requests of a thousand entries at S=1000 (CDS, EDS, RDS; 32 KB each), all at
// once. Slices grown past
// maxPooledEntries are left to the collector, so the pool holds no outlier.
var versionEntryPool sync.Pool

const (
	minPooledEntries = 64
	maxPooledEntries = 1 << 14
)

// getVersionEntries returns a slice (as *buf) empty with room for n entries.
func getVersionEntries(n int) *[]versionEntry {
	if n <= maxPooledEntries {
		if p, ok := versionEntryPool.Get().(*[]versionEntry); ok {
			if cap(*p) >= n {
				return p
			}
			versionEntryPool.Put(p) // for a smaller request
		}
	}
	e := make([]versionEntry, 0, max(n, minPooledEntries))
	return &e
}

// putVersionEntries gives back buf, whose slice is now used (it may have grown).
func putVersionEntries(buf *[]versionEntry, used []versionEntry) {
	if cap(used) > maxPooledEntries {
		return
	}
	clear(used[:cap(used)]) // no name kept alive by the pool
	*buf = used[:0]
	versionEntryPool.Put(buf)
}
