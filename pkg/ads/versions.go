package ads

import (
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
// in the form the session reads: the entries in the request's order, and an index from
// each name to its entry (of a name given more than once, the last, as proto.Unmarshal
// fills a map field).
//
// It allocates nothing per entry for what Envoy sends back on a reconnect: the names
// bearkong serves are the live sets' own strings (resource.LookupNames), a version that
// is a content hash (resource.Resource.Hash: 16 lowercase hex digits, what bearkong sends
// as every resource's version) is held as its 64-bit value, and the entries and the
// index are pooled (see versionsBufPool). Any other version (a peer's, an empty one)
// gets a string of its own, in odd.
//
// Why an index and not the entries sorted by name, walked beside the covered resources:
// Envoy lists them in its hash map's order, and sorting a thousand names that share
// long prefixes cost four times what indexing them does.
type resourceVersions struct {
	entries []versionEntry
	index   map[string]int32
	odd     []string
	// buf is the pooled memory that entries and index are, if any.
	buf *versionsBuf
	// m, when not nil, holds the entries instead: a proto's map (see versionsOf).
	m map[string]string
}

type versionEntry struct {
	name string
	// hash is the version's value, when odd is 0.
	hash uint64
	// odd is 0 for a version held in hash, else the version is odd[odd-1].
	odd int32
}

// hashDigits is the length of a content hash (resource.Resource.Hash).
const hashDigits = 16

// hexValue maps a byte to its value as a lowercase hex digit, or to 0xff.
var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i, c := range []byte("0123456789abcdef") {
		t[c] = byte(i)
	}
	return t
}()

// parseHash returns the value of 16 lowercase hex digits; ok is false for anything else,
// which a hash does not round-trip (uppercase digits, another length).
func parseHash(b []byte) (h uint64, ok bool) {
	if len(b) != hashDigits {
		return 0, false
	}
	var bad byte
	for _, c := range b {
		d := hexValue[c]
		bad |= d
		h = h<<4 | uint64(d&0xf)
	}
	return h, bad&0xf0 == 0
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
	if v.index == nil && n > 0 {
		v.buf = getVersionsBuf(n)
		v.entries, v.index = v.buf.entries, v.buf.index
	}
}

// add appends an entry, its version as it came (the caller checks that it is valid
// UTF-8).
func (v *resourceVersions) add(name string, version []byte) {
	e := versionEntry{name: name}
	if h, ok := parseHash(version); ok {
		e.hash = h
	} else {
		v.odd = append(v.odd, string(version))
		e.odd = int32(len(v.odd))
	}
	if v.index == nil {
		v.index = map[string]int32{}
	}
	v.index[name] = int32(len(v.entries))
	v.entries = append(v.entries, e)
}

// len is the number of names.
func (v *resourceVersions) len() int {
	if v.m != nil {
		return len(v.m)
	}
	return len(v.index)
}

// has reports whether name has an entry.
func (v *resourceVersions) has(name string) bool {
	if v.m != nil {
		_, ok := v.m[name]
		return ok
	}
	_, ok := v.index[name]
	return ok
}

// holds reports whether name has an entry, and whether its version is version; it does
// not allocate.
func (v *resourceVersions) holds(name, version string) (found, same bool) {
	if v.m != nil {
		h, ok := v.m[name]
		return ok, ok && h == version
	}
	i, ok := v.index[name]
	if !ok {
		return false, false
	}
	e := &v.entries[i]
	if e.odd > 0 {
		return true, v.odd[e.odd-1] == version
	}
	b := formatHash(e.hash)
	return true, string(b[:]) == version
}

// version returns the version of name's entry ("" if none), as a string (allocated for a
// hash: the session asks only for versions it records, those that differ from what it
// serves).
func (v *resourceVersions) version(name string) string {
	if v.m != nil {
		return v.m[name]
	}
	i, ok := v.index[name]
	if !ok {
		return ""
	}
	e := &v.entries[i]
	if e.odd > 0 {
		return v.odd[e.odd-1]
	}
	b := formatHash(e.hash)
	return string(b[:])
}

// each calls f with each name that has an entry.
func (v *resourceVersions) each(f func(name string)) {
	if v.m != nil {
		for n := range v.m {
			f(n)
		}
		return
	}
	unique := len(v.index) == len(v.entries)
	for i, e := range v.entries {
		if unique || int(v.index[e.name]) == i {
			f(e.name)
		}
	}
}

// release gives the pooled memory back for another request's; v is empty after it.
// The session keeps none of it: what it records are strings.
func (v *resourceVersions) release() {
	if v.buf != nil {
		v.buf.entries = v.entries
		putVersionsBuf(v.buf)
	}
	*v = resourceVersions{}
}

// versionsOf returns the entries of a proto's map: the map itself, which the session
// reads as it reads the codec's form.
func versionsOf(m map[string]string) *resourceVersions {
	if m == nil {
		m = map[string]string{}
	}
	return &resourceVersions{m: m}
}

// asMap returns the entries as proto.Unmarshal fills the map field.
func (v *resourceVersions) asMap() map[string]string {
	if v.len() == 0 {
		return nil
	}
	out := make(map[string]string, v.len())
	v.each(func(name string) { out[name] = v.version(name) })
	return out
}

// versionsBuf is the memory of a request's entries and index, recycled through
// versionsBufPool: a stream's request is done with once its session has answered it,
// and a fleet's reconnect decodes, per proxy, three requests of a thousand entries at
// S=1000 (CDS, EDS, RDS; about 32 KB of entries and 40 KB of index each), all at once.
// Buffers grown past maxPooledEntries are left to the collector, so the pool holds no
// outlier.
type versionsBuf struct {
	entries []versionEntry
	index   map[string]int32
}

var versionsBufPool sync.Pool

const maxPooledEntries = 1 << 14

// getVersionsBuf returns an empty buffer with room for n entries.
func getVersionsBuf(n int) *versionsBuf {
	if n <= maxPooledEntries {
		if b, ok := versionsBufPool.Get().(*versionsBuf); ok {
			if cap(b.entries) >= n {
				return b
			}
			versionsBufPool.Put(b) // for a smaller request
		}
	}
	return &versionsBuf{entries: make([]versionEntry, 0, n), index: make(map[string]int32, n)}
}

// putVersionsBuf gives b back, its entries as used (they may have grown).
func putVersionsBuf(b *versionsBuf) {
	if cap(b.entries) > maxPooledEntries || len(b.index) > maxPooledEntries {
		return
	}
	// Nothing of a request is kept alive by the pool.
	clear(b.entries[:cap(b.entries)])
	b.entries = b.entries[:0]
	clear(b.index)
	versionsBufPool.Put(b)
}
