package ads

import (
	"hash/maphash"
	"sync"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/bearkong/bearkong/pkg/resource"
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
// in the form the session reads.
//
// As the codec decodes it, it is first only the entries' bytes (copied into a pooled
// buffer), their count and a fingerprint: the sum, over the entries, of a keyed 64-bit
// hash of each name and version (entryHash). That is enough for the common case, a client
// that holds exactly the resources it subscribes to as they are now (a control plane
// restarted with the same config, or a failover to a replica): the session compares the
// count and the sum with those of the resources it covers (sameAs), with no look-up per
// entry. Only otherwise does it ask for the entries (materialize): the entries in the
// request's order, and an index from each name to its entry (of a name given more than
// once, the last, as proto.Unmarshal fills a map field).
//
// It allocates nothing per entry for what Envoy sends back on a reconnect: the entries'
// bytes, the entries and the index are pooled (see versionsBuf); the names bearkong
// serves are the live sets' own strings (resource.LookupNames); a version that is a
// content hash (resource.Resource.Hash: 16 lowercase hex digits, what bearkong sends as
// every resource's version) is held as its 64-bit value. Any other version (a peer's, an
// empty one) gets a string of its own, in odd.
//
// Why a fingerprint: with the entries decoded and indexed (a look-up of each name in the
// table of names, an insertion in the index, a look-up per covered resource), decoding
// was still half of the server's CPU for a reconnect of 5000 proxies at S=1000.
// A sum of 64-bit hashes can match for other entries only by a collision of 64-bit
// hashes under a per-process random key, which the versions themselves (64-bit content
// hashes) already take as never happening.
type resourceVersions struct {
	// raw holds the entries as the request had them (each a map entry message, field
	// fieldDeltaReqInitial), until materialize decodes them.
	raw []byte
	// count is the number of entries of raw, "*" aside (as given: a name given twice
	// counts twice); sum is the sum of their entryHash.
	count int
	sum   uint64

	entries []versionEntry
	index   map[string]int32
	odd     []string
	// buf is the pooled memory that raw, entries and index are, if any.
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
func parseHash[T string | []byte](b T) (h uint64, ok bool) {
	if len(b) != hashDigits {
		return 0, false
	}
	var bad byte
	for i := range len(b) {
		d := hexValue[b[i]]
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

// entrySeed keys entryHash, for the life of the process.
var entrySeed = maphash.MakeSeed()

// entryHash is a hash of an entry, name and version, for the fingerprint of a set of
// entries (resourceVersions.sum): a hash of the name and the version's value (a content
// hash's 64 bits, or a hash of any other version), mixed so that swapping two entries'
// versions changes the sum.
func entryHash[T string | []byte](name, version T) uint64 {
	v, ok := parseHash(version)
	if !ok {
		v = maphash.String(entrySeed, string(version)) ^ 0x9e3779b97f4a7c15
	}
	return mix64(maphash.String(entrySeed, string(name)) ^ mix64(v+0x632be59bd9b4e019))
}

// mix64 is MurmurHash3's 64-bit finalizer: every bit of the result depends on every bit
// of x.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// addRaw records an entry as the decoder meets it (a map entry message, whose key and
// value are valid): its bytes, and its part of the count and the sum.
func (v *resourceVersions) addRaw(entry, key, value []byte, room int) {
	if v.buf == nil {
		v.buf = getVersionsBuf(room)
		v.raw = v.buf.raw
	}
	v.raw = protowire.AppendBytes(protowire.AppendTag(v.raw, fieldDeltaReqInitial, protowire.BytesType), entry)
	if string(key) == "*" {
		return
	}
	v.count++
	v.sum += entryHash(key, value)
}

// sameAsCovered reports whether the entries are exactly the resources that sub covers in
// view (coveredBy), each at its content hash, "*" aside. It decodes no entry and builds
// no list: what a wildcard covers is every set of view (a view's sets never share a
// name), each set's sum worked out once for every proxy (coveredSum); a subscription to
// exactly a set's names is that set; only another subscription is looked up name by name.
//
// Why: a proxy's clusters and scopes are a shared set and one of its own, which coveredBy
// merges into a new list, per proxy and per type, whose sum coveredSum then cannot find.
// When a fleet reconnects at once, those lists are garbage on top of the requests.
func (v *resourceVersions) sameAsCovered(sub subscription, view resource.View) bool {
	if v.m != nil || v.raw == nil {
		return false
	}
	var sets []*resource.Set
	if sub.wildcard {
		sets = view
	} else {
		for _, set := range view {
			if sameSlice(sub.names, set.Names()) {
				sets = []*resource.Set{set}
				break
			}
		}
	}
	if sets == nil {
		count, sum := 0, uint64(0)
		for _, n := range sub.names {
			if r, ok := view.Get(n); ok {
				count++
				sum += entryHash(r.Name, r.Hash)
			}
		}
		return count == v.count && sum == v.sum
	}
	count := 0
	for _, set := range sets {
		count += set.Len()
	}
	if count != v.count {
		return false
	}
	var sum uint64
	for _, set := range sets {
		sum += coveredSum(set.All())
	}
	return sum == v.sum
}

// coveredSum returns the sum of entryHash over rs, from coveredSums when rs is a list it
// has seen.
func coveredSum(rs []*resource.Resource) uint64 {
	if len(rs) < minCachedSum {
		return sumOf(rs)
	}
	c := &coveredSums
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		if len(e.rs) == len(rs) && unsafe.SliceData(e.rs) == unsafe.SliceData(rs) {
			return e.sum
		}
	}
	sum := sumOf(rs)
	c.entries[c.next] = coveredSumEntry{rs: rs, sum: sum}
	c.next = (c.next + 1) % len(c.entries)
	return sum
}

func sumOf(rs []*resource.Resource) uint64 {
	var sum uint64
	for _, r := range rs {
		sum += entryHash(r.Name, r.Hash)
	}
	return sum
}

// coveredSums remembers the sums of the last lists of resources that sameAs compared
// entries with: what a session covers is most often a set's own list (see coveredBy),
// the same for every proxy, so a fleet's reconnect hashes each list once rather than once
// per proxy. A list is immutable, and the entry keeps it alive, so its address is its
// identity.
var coveredSums struct {
	mu      sync.Mutex
	entries [16]coveredSumEntry
	next    int
}

type coveredSumEntry struct {
	rs  []*resource.Resource
	sum uint64
}

// minCachedSum is the length from which coveredSum looks in coveredSums: below it,
// hashing the list costs less than the lock.
const minCachedSum = 64

// materialize decodes raw into the entries and the index, once.
func (v *resourceVersions) materialize() {
	if v.raw == nil || v.index != nil {
		return
	}
	n := v.count + 1
	v.entries, v.index = v.buf.entries[:0], v.buf.index
	if v.index == nil {
		v.index = make(map[string]int32, n)
	}
	resource.LookupNames(func(lookup resource.NameLookup) {
		eachField(v.raw, func(_ protowire.Number, entry []byte) bool {
			key, value, _ := mapEntry(entry) // checked as it was decoded
			name, ok := lookup.Name(key)
			if !ok {
				name = string(key)
			}
			v.add(name, value)
			return true
		})
	})
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
	v.index[name] = int32(len(v.entries))
	v.entries = append(v.entries, e)
}

// empty reports whether there are no entries.
func (v *resourceVersions) empty() bool {
	return len(v.m) == 0 && len(v.raw) == 0
}

// size is the number of entries as given (a name given twice counts twice; "*" too), for
// Limits.MaxResourceNames: it does not decode them.
func (v *resourceVersions) size() int {
	if v.m != nil {
		return len(v.m)
	}
	n := 0
	eachField(v.raw, func(protowire.Number, []byte) bool { n++; return true })
	return n
}

// len is the number of names.
func (v *resourceVersions) len() int {
	if v.m != nil {
		return len(v.m)
	}
	v.materialize()
	return len(v.index)
}

// has reports whether name has an entry.
func (v *resourceVersions) has(name string) bool {
	v.materialize()
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
	v.materialize()
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
	v.materialize()
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
	v.materialize()
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
		v.buf.raw = v.raw
		if v.index != nil {
			v.buf.entries, v.buf.index = v.entries, v.index
		}
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

// versionsBuf is the memory of a request's entries, recycled through versionsBufPool: a
// stream's request is done with once its session has answered it, and a fleet's reconnect
// decodes, per proxy, three requests of a thousand entries at S=1000 (CDS, EDS, RDS;
// about 40 KB of bytes each, and as much again of entries and index when they are
// decoded), all at once. Buffers grown past maxPooledEntries are left to the collector,
// so the pool holds no outlier.
type versionsBuf struct {
	raw     []byte
	entries []versionEntry
	index   map[string]int32
}

var versionsBufPool sync.Pool

const maxPooledEntries = 1 << 14

// getVersionsBuf returns an empty buffer with room for about n entries' bytes.
func getVersionsBuf(n int) *versionsBuf {
	if n <= maxPooledEntries {
		if b, ok := versionsBufPool.Get().(*versionsBuf); ok {
			return b
		}
	}
	return &versionsBuf{raw: make([]byte, 0, n*48)}
}

// putVersionsBuf gives b back, as used (its parts may have grown).
func putVersionsBuf(b *versionsBuf) {
	if cap(b.entries) > maxPooledEntries || len(b.index) > maxPooledEntries || cap(b.raw) > maxPooledEntries*64 {
		return
	}
	// Nothing of a request is kept alive by the pool.
	clear(b.entries[:cap(b.entries)])
	b.entries = b.entries[:0]
	clear(b.index)
	b.raw = b.raw[:0]
	versionsBufPool.Put(b)
}
