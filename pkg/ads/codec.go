package ads

import (
	"errors"
	"hash/maphash"
	"slices"
	"sync"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/pkg/resource"
)

// connReadBufferSize is the read buffer of each gRPC connection (gRPC's default is 32 KiB).
// Requests are small and a larger frame is read past the buffer, straight into its
// destination, so a small buffer costs nothing but saves memory on every connection.
const connReadBufferSize = 4 << 10

// ServerOptionsWith returns the gRPC server options that an ADS server for a fleet of
// Envoys wants, with the limits of l (zero fields at their defaults); pass them to
// grpc.NewServer along with your own (keepalive, credentials).
//
//   - A codec that writes a DiscoveryResponse or DeltaDiscoveryResponse by copying its
//     resources' bytes, marshalled once per snapshot, instead of walking and marshalling
//     every resource again for each proxy as the default proto codec does. The bytes
//     are the same (TestCodecBytes, TestDeltaCodecBytes). The streams of a push share
//     one copy of the resources (TestCodecMemory, TestDeltaCodecMemory).
//   - Small per-connection buffers: every Envoy holds a connection open, idle nearly all
//     the time, so per-connection memory is per-proxy memory. The write buffer goes back
//     to a shared pool after each flush; the read buffer is 4 KiB instead of 32.
//   - l.MaxConcurrentStreamsPerConnection: without it, one connection may open streams
//     without bound (grpc-go's default is no limit).
func ServerOptionsWith(l Limits) []grpc.ServerOption {
	l = l.withDefaults()
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(codec{}),
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(connReadBufferSize),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreamsPerConnection),
	}
}

// codec is gRPC's proto codec with a fast path for DiscoveryResponse.
type codec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (codec) Name() string { return grpcproto.Name }

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch r := v.(type) {
	case *discoveryv3.DiscoveryRequest:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		if ok, err := unmarshalRequest(buf.ReadOnlyData(), r, nil); ok {
			return err
		}
	case *sotwRequest:
		// The server's state-of-the-world stream, which remembers its last names.
		b, done := flatten(data)
		defer done()
		if ok, err := unmarshalRequest(b, r.DiscoveryRequest, r.recent); ok {
			return err
		}
		return protoCodec.Unmarshal(data, r.DiscoveryRequest)
	case *discoveryv3.DeltaDiscoveryRequest:
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		if ok, err := unmarshalDeltaRequest(buf.ReadOnlyData(), r, nil); ok {
			return err
		}
	case *deltaRequest:
		// The server's delta stream: initial_resource_versions go into r.versions.
		r.versions.release()
		r.decoded = false
		b, done := flatten(data)
		defer done()
		if ok, err := unmarshalDeltaRequest(b, r.DeltaDiscoveryRequest, &r.versions); ok {
			r.decoded = err == nil
			return err
		}
		return protoCodec.Unmarshal(data, r.DeltaDiscoveryRequest)
	}
	return protoCodec.Unmarshal(data, v)
}

// flatten returns the bytes of data in one slice, valid until done is called: data's own
// when it is one buffer, else a copy in a pooled buffer.
//
// Why not data.MaterializeToBuffer: gRPC's buffer pool clears each buffer it hands out,
// and a reconnecting proxy's requests (a thousand initial_resource_versions each, read
// in several HTTP/2 frames) are large: clearing their copies was 8 % of the server's CPU
// for a fleet's reconnect.
func flatten(data mem.BufferSlice) (b []byte, done func()) {
	if len(data) == 1 {
		return data[0].ReadOnlyData(), func() {}
	}
	p, _ := requestBufs.Get().(*[]byte)
	if p == nil {
		p = new([]byte)
	}
	buf := (*p)[:0]
	for _, d := range data {
		buf = append(buf, d.ReadOnlyData()...)
	}
	return buf, func() {
		if cap(buf) <= maxPooledRequest {
			*p = buf[:0]
			requestBufs.Put(p)
		}
	}
}

// requestBufs recycles flatten's copies, up to maxPooledRequest bytes each.
var requestBufs sync.Pool

const maxPooledRequest = 1 << 20

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	switch r := v.(type) {
	case *discoveryv3.DiscoveryResponse:
		if plainResponseFields(r) {
			// The body (version and resources) is the same for every proxy the push
			// goes to; only the type URL and nonce, which proto.Marshal writes after the
			// resources, are the stream's own.
			if out, ok := withBody(sharedBodies, r.VersionInfo, r.TypeUrl, r.Resources, plainAnys,
				func() int { return bodySize(r) }, func(b []byte) []byte { return appendBody(b, r) },
				sizeString(len(r.TypeUrl))+sizeString(len(r.Nonce)), func(b []byte) []byte {
					return appendString(appendString(b, fieldTypeURL, r.TypeUrl), fieldNonce, r.Nonce)
				}); ok {
				return out, nil
			}
		}
	case *discoveryv3.DeltaDiscoveryResponse:
		if plainDeltaResponseFields(r) {
			// The same split: version and resources are what the streams of a push (or of
			// an initial sync) share; type URL, nonce and removed names are written after
			// them and are the stream's own.
			if out, ok := withBody(sharedDeltaBodies, r.SystemVersionInfo, r.TypeUrl, r.Resources, plainDeltaResources,
				func() int { return deltaBodySize(r) }, func(b []byte) []byte { return appendDeltaBody(b, r) },
				deltaTailSize(r), func(b []byte) []byte { return appendDeltaTail(b, r) }); ok {
				return out, nil
			}
		}
	}
	return protoCodec.Marshal(v)
}

// withBody returns a response made of its body and its tail, written by the functions
// given with their sizes: one buffer for a small response, else the body shared through
// c and a tail of the stream's own. It reports false when plain finds resources that
// the fast path does not write (the proto codec then does). A response of many
// resources first looks for its body in c, which holds only bodies written from the
// very same resources: the streams of a push, or of an initial sync, that find it skip
// walking the resources twice (checking them with ProtoReflect and working out their
// size, about 8 % of a delta initial sync's server CPU at N=5000 when each stream did).
// A response that finds no body is checked and sized before c's lock is taken, so that
// the streams writing bodies at once wait only for the copies.
func withBody[R comparable](c *bodyCache[R], version, typeURL string, resources []R, plain func([]R) bool,
	bodySize func() int, body func([]byte) []byte, tailSize int, tail func([]byte) []byte) (mem.BufferSlice, bool) {
	withTail := func(shared []byte) mem.BufferSlice {
		return mem.BufferSlice{mem.SliceBuffer(shared), mem.SliceBuffer(tail(make([]byte, 0, tailSize)))}
	}
	if len(resources) >= findFirst {
		if shared := c.find(version, typeURL, resources); shared != nil {
			return withTail(shared), true
		}
	}
	if !plain(resources) {
		return nil, false
	}
	size := bodySize()
	if size+tailSize < minSharedBody {
		return mem.BufferSlice{mem.SliceBuffer(tail(body(make([]byte, 0, size+tailSize))))}, true
	}
	return withTail(c.body(version, typeURL, resources, func() []byte { return body(make([]byte, 0, size)) })), true
}

// findFirst is the number of resources from which a response looks for its body in the
// cache before working out its size: below it, the size costs less than the look-up.
const findFirst = 16

// minSharedBody is the size from which a response's body is shared between streams;
// below it, a response is one small allocation, cheaper than a look-up.
const minSharedBody = 16 << 10

// sharedBodies and sharedDeltaBodies hold the bodies of the last large responses: a push
// writes one copy of its resources, which every stream's response points to until
// written, whatever the number of proxies. The buffers are plain garbage-collected
// memory, not pooled: once no stream writes a body and the cache has moved on, the next
// GC takes it, so the memory held after a push does not grow with the number of pushes
// or proxies (issue 14 measured a pool of one buffer per stream keeping RSS up after
// every full push, and delta responses marshalled per stream by the proto codec making
// its initial sync cost twice the CPU and three times the memory of state of the world's).
var (
	sharedBodies      = &bodyCache[*anypb.Any]{}
	sharedDeltaBodies = &bodyCache[*discoveryv3.Resource]{}
)

// bodyCacheEntries bounds the bodies kept: a push interleaves CDS, EDS, LDS and RDS
// across streams, and EDS may name several subsets; a few per type is plenty.
const bodyCacheEntries = 16

// bodyCache finds a response's body by content: same version, same type, and the same
// resources, compared by identity. A snapshot's resources (and their delta forms, one
// per resource, see resource.Resource.Delta) are immutable and the cache keeps the ones
// it compares alive, so an identical list of pointers is identical bytes. The version alone is not
// enough: EDS and RDS responses, and every delta response, name only what changed, so
// two streams may get different subsets under one version.
type bodyCache[R comparable] struct {
	mu      sync.Mutex
	entries [bodyCacheEntries]bodyEntry[R]
	next    int
}

type bodyEntry[R comparable] struct {
	version, typeURL string
	resources        []R
	body             []byte
}

// body returns the bytes of a response's version and resources, from the cache or
// written now by write. The caller must not modify them. It writes under the lock, so
// that the streams of a push that ask at once wait for one copy rather than each making
// its own.
func (c *bodyCache[R]) body(version, typeURL string, resources []R, write func() []byte) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if body := c.lookup(version, typeURL, resources); body != nil {
		return body
	}
	body := write()
	c.entries[c.next] = bodyEntry[R]{version: version, typeURL: typeURL, resources: resources, body: body}
	c.next = (c.next + 1) % len(c.entries)
	return body
}

// find returns the body of a response's version and resources if the cache holds it,
// else nil.
func (c *bodyCache[R]) find(version, typeURL string, resources []R) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lookup(version, typeURL, resources)
}

func (c *bodyCache[R]) lookup(version, typeURL string, resources []R) []byte {
	for i := range c.entries {
		e := &c.entries[i]
		if e.body != nil && e.version == version && e.typeURL == typeURL && slices.Equal(e.resources, resources) {
			return e.body
		}
	}
	return nil
}

// nameTag is the tag of a DiscoveryRequest's resource_names, in one byte.
var nameTag = byte(protowire.EncodeTag(fieldReqResourceNames, protowire.BytesType))

// DiscoveryRequest field numbers.
const (
	fieldReqVersionInfo   protowire.Number = 1
	fieldReqNode          protowire.Number = 2
	fieldReqResourceNames protowire.Number = 3
	fieldReqTypeURL       protowire.Number = 4
	fieldReqResponseNonce protowire.Number = 5
	fieldReqErrorDetail   protowire.Number = 6
)

// unmarshalRequest decodes b into r (which it resets) as proto.Unmarshal does, except
// that resource names and type URLs that bearkong knows (see resource.LookupNames) are
// not allocated again, and a subscription that is exactly a live name list, in any
// order, is that list itself, in its sorted order (read-only, as every request is to the
// server): a set's names, or the union of a view's sets that subscriptions share (see
// resource.CanonicalNames). It reports false, having done nothing, for a request with any
// field it does not handle (resource locators, unknown fields): the proto codec takes
// those.
//
// Why: every Envoy repeats its whole EDS and RDS subscription in every request, ACKs
// included. With a thousand services, decoding the ACKs of a push to thousands of
// proxies allocated millions of strings, the largest cost of the push.
func unmarshalRequest(b []byte, r *discoveryv3.DiscoveryRequest, recent *recentNames) (bool, error) {
	// First pass: check that the fast path handles every field, count the names and find
	// where they are.
	names, from, to := 0, -1, -1 // the names run from the tag at from to the end at to
	split := false               // another field comes between two names
	var url []byte
	for off := 0; off < len(b); {
		if b[off] == nameTag && from < 0 {
			// Envoy's names, one after another, most shorter than 128 bytes: a run of
			// them is skipped here, a name at a time, with no call per name.
			from = off
			for off+1 < len(b) && b[off] == nameTag && b[off+1] < 0x80 {
				names++
				off += 2 + int(b[off+1])
			}
			if off > len(b) {
				return false, nil
			}
			to = off
			continue
		}
		num, v, n := nextField(b[off:])
		if n < 0 || num < 1 || num > fieldReqErrorDetail {
			return false, nil
		}
		switch num {
		case fieldReqResourceNames:
			names++
			if from < 0 {
				from = off
			} else if off != to {
				split = true
			}
			to = off + n
		case fieldReqTypeURL:
			url = v
		}
		off += n
	}
	r.Reset()
	// The stream's previous request of this type may have named the same names, byte for
	// byte: then they decode to the same list (see recentNames).
	var key uint64
	memo := recent != nil && names > 0 && !split
	if memo {
		key = maphash.Bytes(recentSeed, b[from:to])
		if l, ok := recent.find(url, names, to-from, key); ok {
			r.ResourceNames = l
		}
	}
	hit := r.ResourceNames != nil
	var err error
	resource.LookupNames(func(lookup resource.NameLookup) {
		shared := hit
		if !shared && names > 0 {
			// The subscription is most often exactly a set's names (EDS for every
			// cluster), in Envoy's watch order: then the request takes that set's
			// list itself, in the set's order. The order of resource_names carries no
			// meaning in xDS.
			var h resource.NameListHash
			h.Reset()
			eachField(b, func(num protowire.Number, v []byte) bool {
				if num == fieldReqResourceNames {
					h.Add(v)
				}
				return true
			})
			lookup.Lists(&h, names, func(list resource.NameList) bool {
				if sameNames(b, list) {
					r.ResourceNames = list.Names()
					return true
				}
				return false
			})
			if shared = r.ResourceNames != nil; shared && memo {
				recent.remember(url, names, to-from, key, r.ResourceNames)
			}
		}
		if !shared && names > 0 {
			r.ResourceNames = make([]string, 0, names)
		}
		str := func(v []byte) (string, error) {
			if s, ok := lookup.Name(v); ok {
				return s, nil
			}
			return utf8String(v)
		}
		decode := func(num protowire.Number, v []byte) bool {
			switch num {
			case fieldReqVersionInfo:
				r.VersionInfo, err = str(v)
			case fieldReqResourceNames:
				if !shared {
					var name string
					if name, err = str(v); err == nil {
						r.ResourceNames = append(r.ResourceNames, name)
					}
				}
			case fieldReqTypeURL:
				r.TypeUrl, err = typeURL(v)
			case fieldReqResponseNonce:
				r.ResponseNonce, err = str(v)
			case fieldReqNode:
				err = mergeNode(v, &r.Node)
			case fieldReqErrorDetail:
				err = mergeStatus(v, &r.ErrorDetail)
			}
			return err == nil
		}
		if !hit {
			eachField(b, decode)
			return
		}
		// The names are known: only the fields around them.
		if eachField(b[:from], decode); err == nil {
			eachField(b[to:], decode)
		}
	})
	return true, err
}

// sotwRequest is a DiscoveryRequest as the server's state-of-the-world stream receives
// it: with the stream's recentNames, which the codec reads and updates.
type sotwRequest struct {
	*discoveryv3.DiscoveryRequest
	recent *recentNames
}

// recentNames remembers, for each type of one stream, the resource names of its last
// request that were exactly a live name list (see unmarshalRequest): a keyed 64-bit hash
// of their bytes, their count and size, and the list. A request whose names are the same
// bytes takes that list again, with no look-up or comparison per name.
//
// Why: Envoy repeats its whole subscription in every request, ACKs included, and it
// seldom changes. Finding the list again cost 50-65 us per ACK of 1000 EDS names
// (BenchmarkEDSAck), a third of the server's CPU for an endpoint change at N=5000 on
// state of the world: a hash of each name and a comparison of each with the list. One
// hash of the bytes is a few microseconds. As with the name lists' keys and the
// versions, a different list of names that matches can only come from a collision of
// 64-bit hashes under a per-process random key.
//
// It holds only lists that live sets or subscriptions share, so it costs a stream no
// copy of its names.
type recentNames struct {
	entries [resource.NumTypes]recentEntry // by type
	hits    int                            // for tests
}

type recentEntry struct {
	count, size int
	key         uint64
	names       []string
}

// recentSeed keys recentNames' hashes, for the life of the process.
var recentSeed = maphash.MakeSeed()

// entry returns the entry of the type typeURL names, or nil for a type bearkong does not
// serve. It is resource.TypeFromURL on the request's bytes: a string of them, to call
// that, would be allocated for every request.
func (m *recentNames) entry(typeURL []byte) *recentEntry {
	for _, t := range resource.Types {
		if string(typeURL) == t.URL() {
			return &m.entries[t]
		}
	}
	return nil
}

func (m *recentNames) find(typeURL []byte, count, size int, key uint64) ([]string, bool) {
	if e := m.entry(typeURL); e != nil && e.names != nil && e.count == count && e.size == size && e.key == key {
		m.hits++
		return e.names, true
	}
	return nil, false
}

// remember files names for typeURL, in place of the type's previous entry.
func (m *recentNames) remember(typeURL []byte, count, size int, key uint64, names []string) {
	if e := m.entry(typeURL); e != nil {
		*e = recentEntry{count: count, size: size, key: key, names: names}
	}
}

// sameNames reports whether the resource names in the well-formed request b are the
// names of list, in any order, each once. It does not allocate for lists of up to 4096
// names.
func sameNames(b []byte, list resource.NameList) bool {
	if sameOrder(b, list.Names()) {
		return true
	}
	n := len(list.Names())
	var small [64]uint64
	seen := small[:]
	if words := (n + 63) / 64; words > len(small) {
		seen = make([]uint64, words)
	}
	count := 0
	ok := true
	eachField(b, func(num protowire.Number, v []byte) bool {
		if num != fieldReqResourceNames {
			return true
		}
		i, found := list.Index(v)
		if ok = found && seen[i/64]&(1<<(i%64)) == 0; ok {
			seen[i/64] |= 1 << (i % 64)
			count++
		}
		return ok
	})
	return ok && count == n
}

// sameOrder reports whether the resource names in the well-formed request b are names,
// in their order or in the reverse order. It compares bytes, with no look-up per name.
//
// Why: Envoy repeats its whole subscription in every request, ACKs included, in watch
// order: newest first, so after an initial sync the reverse of the order in which the
// clusters came, which is name order. Most requests are then a set's list reversed, or
// a list decoded from the same proxy's previous request; the look-up per name that
// sameNames otherwise does was most of what decoding an ACK of 1000 names cost.
func sameOrder(b []byte, names []string) bool {
	fwd, rev := true, true
	k := 0
	eachField(b, func(num protowire.Number, v []byte) bool {
		if num != fieldReqResourceNames {
			return true
		}
		if k == len(names) {
			fwd, rev = false, false
			return false
		}
		fwd = fwd && string(v) == names[k]
		rev = rev && string(v) == names[len(names)-1-k]
		k++
		return fwd || rev
	})
	return (fwd || rev) && k == len(names)
}

// DeltaDiscoveryRequest field numbers, and those of its initial_resource_versions
// entries.
const (
	fieldDeltaReqNode        protowire.Number = 1
	fieldDeltaReqTypeURL     protowire.Number = 2
	fieldDeltaReqSubscribe   protowire.Number = 3
	fieldDeltaReqUnsubscribe protowire.Number = 4
	fieldDeltaReqInitial     protowire.Number = 5
	fieldDeltaReqNonce       protowire.Number = 6
	fieldDeltaReqErrorDetail protowire.Number = 7
	fieldMapKey              protowire.Number = 1
	fieldMapValue            protowire.Number = 2
)

// unmarshalDeltaRequest decodes b into r (which it resets) as proto.Unmarshal does,
// except that resource names and type URLs that bearkong knows are not allocated again
// (see unmarshalRequest), and that with versions non-nil (and empty), the entries of
// initial_resource_versions go there (see resourceVersions) instead of r's map. It
// reports false, having done nothing, for a request with any field it does not handle
// (resource locators, unknown fields): the proto codec takes those.
//
// Why: Envoy's first delta requests subscribe to every cluster's assignment and every
// route configuration, and a reconnecting Envoy lists all it holds in
// initial_resource_versions: a string per name per proxy, the largest allocation of a
// fleet's initial sync after the responses, and a map and a version string per entry
// per request, most of a fleet's reconnect.
func unmarshalDeltaRequest(b []byte, r *discoveryv3.DeltaDiscoveryRequest, versions *resourceVersions) (bool, error) {
	subs, unsubs, initial := 0, 0, 0
	if !bytesFields(b, fieldDeltaReqErrorDetail, func(num protowire.Number, v []byte) bool {
		switch num {
		case fieldDeltaReqSubscribe:
			subs++
		case fieldDeltaReqUnsubscribe:
			unsubs++
		case fieldDeltaReqInitial:
			// A map<string, string> entry with only its key and value.
			initial++
			return bytesFields(v, fieldMapValue, func(protowire.Number, []byte) bool { return true })
		}
		return true
	}) {
		return false, nil
	}
	r.Reset()
	if subs > 0 {
		r.ResourceNamesSubscribe = make([]string, 0, subs)
	}
	if unsubs > 0 {
		r.ResourceNamesUnsubscribe = make([]string, 0, unsubs)
	}
	if initial > 0 && versions == nil {
		r.InitialResourceVersions = make(map[string]string, initial)
	}
	var err error
	resource.LookupNames(func(lookup resource.NameLookup) {
		name := func(v []byte) (string, error) {
			if s, ok := lookup.Name(v); ok {
				return s, nil
			}
			return utf8String(v)
		}
		eachField(b, func(num protowire.Number, v []byte) bool {
			var s string
			switch num {
			case fieldDeltaReqTypeURL:
				r.TypeUrl, err = typeURL(v)
			case fieldDeltaReqSubscribe:
				if s, err = name(v); err == nil {
					r.ResourceNamesSubscribe = append(r.ResourceNamesSubscribe, s)
				}
			case fieldDeltaReqUnsubscribe:
				if s, err = name(v); err == nil {
					r.ResourceNamesUnsubscribe = append(r.ResourceNamesUnsubscribe, s)
				}
			case fieldDeltaReqInitial:
				key, value, valid := mapEntry(v)
				if !valid {
					err = errInvalidUTF8
				}
				switch {
				case err != nil:
				case versions != nil:
					// Kept as bytes: the session looks at them one by one only if they
					// are not exactly what it serves (see resourceVersions).
					versions.addRaw(v, key, value, initial)
				default:
					var k string
					if k, err = name(key); err == nil {
						r.InitialResourceVersions[k] = string(value)
					}
				}
			case fieldDeltaReqNonce:
				r.ResponseNonce, err = utf8String(v)
			case fieldDeltaReqNode:
				err = mergeNode(v, &r.Node)
			case fieldDeltaReqErrorDetail:
				err = mergeStatus(v, &r.ErrorDetail)
			}
			return err == nil
		})
	})
	return true, err
}

// mapEntry returns the key and value of a map<string, string> entry b, and whether every
// field of it is valid UTF-8, as proto.Unmarshal requires. Of a field given twice, the
// last counts (a map entry is a message), and each must be valid.
func mapEntry(b []byte) (key, value []byte, valid bool) {
	valid = true
	eachField(b, func(num protowire.Number, f []byte) bool {
		if num == fieldMapKey {
			key = f
		} else {
			value = f
		}
		valid = utf8.Valid(f)
		return valid
	})
	return key, value, valid
}

// bytesFields calls f with each field of the message b, in order, while it returns true,
// and reports whether b is well formed, every field length-delimited and numbered from 1
// to maxField, and f returned true for each: the messages the request fast paths handle.
func bytesFields(b []byte, maxField protowire.Number, f func(protowire.Number, []byte) bool) bool {
	for len(b) > 0 {
		num, v, n := nextField(b)
		if n < 0 || num < 1 || num > maxField {
			return false
		}
		b = b[n:]
		if !f(num, v) {
			return false
		}
	}
	return true
}

// nextField returns the number, the value and the length of the length-delimited field
// that b starts with; n is negative when b does not start with one.
//
// Why not protowire's functions alone: a request names up to thousands of resources, and
// walking its fields is most of what decoding it costs. Envoy's names take a one-byte tag
// and a one-byte length; those are read here, the rest by protowire.
func nextField(b []byte) (num protowire.Number, v []byte, n int) {
	if len(b) >= 2 && b[0] < 0x80 && b[1] < 0x80 {
		if protowire.Type(b[0]&7) != protowire.BytesType || 2+int(b[1]) > len(b) {
			return 0, nil, -1
		}
		return protowire.Number(b[0] >> 3), b[2 : 2+int(b[1])], 2 + int(b[1])
	}
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 || typ != protowire.BytesType {
		return 0, nil, -1
	}
	v, m := protowire.ConsumeBytes(b[n:])
	if m < 0 {
		return 0, nil, -1
	}
	return num, v, n + m
}

// eachField calls f with each field of b, which bytesFields accepted, while it returns
// true.
func eachField(b []byte, f func(protowire.Number, []byte) bool) {
	for len(b) > 0 {
		num, v, n := nextField(b)
		if n < 0 {
			return
		}
		b = b[n:]
		if !f(num, v) {
			return
		}
	}
}

// mergeNode and mergeStatus merge an occurrence of a message field into *dst, as
// proto.Unmarshal does with a field that repeats.
func mergeNode(v []byte, dst **corev3.Node) error {
	if *dst == nil {
		*dst = &corev3.Node{}
	}
	return proto.UnmarshalOptions{Merge: true}.Unmarshal(v, *dst)
}

func mergeStatus(v []byte, dst **status.Status) error {
	if *dst == nil {
		*dst = &status.Status{}
	}
	return proto.UnmarshalOptions{Merge: true}.Unmarshal(v, *dst)
}

func utf8String(v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", errInvalidUTF8
	}
	return string(v), nil
}

var errInvalidUTF8 = errors.New("proto: string field contains invalid UTF-8")

// typeURL returns the type URL in v, without allocating for the types bearkong serves.
func typeURL(v []byte) (string, error) {
	for _, t := range resource.Types {
		if string(v) == t.URL() {
			return t.URL(), nil
		}
	}
	return utf8String(v)
}

// DiscoveryResponse field numbers, and Any's.
const (
	fieldVersionInfo protowire.Number = 1
	fieldResources   protowire.Number = 2
	fieldTypeURL     protowire.Number = 4
	fieldNonce       protowire.Number = 5
	fieldAnyTypeURL  protowire.Number = 1
	fieldAnyValue    protowire.Number = 2
)

// plainResponseFields reports whether r holds only what the fast path writes: version,
// nonce, type URL and resources, and no unknown fields; plainAnys, whether its resources
// (Anys) have none either. Anything else goes through the proto codec.
func plainResponseFields(r *discoveryv3.DiscoveryResponse) bool {
	return !r.Canary && r.ControlPlane == nil && len(r.ResourceErrors) == 0 && len(r.ProtoReflect().GetUnknown()) == 0
}

func plainAnys(resources []*anypb.Any) bool {
	for _, a := range resources {
		if a == nil || len(a.ProtoReflect().GetUnknown()) > 0 {
			return false
		}
	}
	return true
}

// sizeString is the size of a string or bytes field as proto3 writes it: nothing when
// empty.
func sizeString(n int) int {
	if n == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(uint64(n)) + n
}

func anySize(typeURL string, value []byte) int {
	return sizeString(len(typeURL)) + sizeString(len(value))
}

// bodySize is the size of what appendBody writes.
func bodySize(r *discoveryv3.DiscoveryResponse) int {
	n := sizeString(len(r.VersionInfo))
	for _, a := range r.Resources {
		// Getters: the resources are checked after (plainAnys), nil ones included.
		s := anySize(a.GetTypeUrl(), a.GetValue())
		n += 1 + protowire.SizeVarint(uint64(s)) + s
	}
	return n
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendBody appends the fields of r that come before its type URL, as proto.Marshal
// writes them (fields in number order, empty proto3 scalars left out, each resource an
// embedded Any: type_url, then value): the version and the resources.
func appendBody(b []byte, r *discoveryv3.DiscoveryResponse) []byte {
	b = appendString(b, fieldVersionInfo, r.VersionInfo)
	for _, a := range r.Resources {
		b = protowire.AppendTag(b, fieldResources, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(anySize(a.TypeUrl, a.Value)))
		b = appendString(b, fieldAnyTypeURL, a.TypeUrl)
		if len(a.Value) > 0 {
			b = protowire.AppendTag(b, fieldAnyValue, protowire.BytesType)
			b = protowire.AppendBytes(b, a.Value)
		}
	}
	return b
}

// DeltaDiscoveryResponse field numbers, and Resource's.
const (
	fieldDeltaSystemVersion protowire.Number = 1
	fieldDeltaResources     protowire.Number = 2
	fieldDeltaTypeURL       protowire.Number = 4
	fieldDeltaNonce         protowire.Number = 5
	fieldDeltaRemoved       protowire.Number = 6
	fieldResourceVersion    protowire.Number = 1
	fieldResourceAny        protowire.Number = 2
	fieldResourceName       protowire.Number = 3
)

// plainDeltaResponseFields reports whether r holds only what the delta fast path
// writes: version, type URL, nonce, removed names and resources, and no unknown fields;
// plainDeltaResources, whether its resources have only a name, a version and an Any,
// none with unknown fields. Anything else goes through the proto codec.
func plainDeltaResponseFields(r *discoveryv3.DeltaDiscoveryResponse) bool {
	return r.ControlPlane == nil && len(r.RemovedResourceNames) == 0 && len(r.ResourceErrors) == 0 && len(r.ProtoReflect().GetUnknown()) == 0
}

func plainDeltaResources(resources []*discoveryv3.Resource) bool {
	for _, w := range resources {
		if w == nil || w.ResourceName != nil || len(w.Aliases) > 0 || w.Ttl != nil || w.CacheControl != nil || w.Metadata != nil ||
			len(w.ProtoReflect().GetUnknown()) > 0 || (w.Resource != nil && len(w.Resource.ProtoReflect().GetUnknown()) > 0) {
			return false
		}
	}
	return true
}

// deltaResourceSize is the size of w as an embedded message: version, Any, name, in
// field number order as proto.Marshal writes them.
func deltaResourceSize(w *discoveryv3.Resource) int {
	// Getters: the resources are checked after (plainDeltaResources), nil ones included.
	n := sizeString(len(w.GetVersion())) + sizeString(len(w.GetName()))
	if a := w.GetResource(); a != nil {
		s := anySize(a.TypeUrl, a.Value)
		n += 1 + protowire.SizeVarint(uint64(s)) + s
	}
	return n
}

// deltaBodySize is the size of what appendDeltaBody writes.
func deltaBodySize(r *discoveryv3.DeltaDiscoveryResponse) int {
	n := sizeString(len(r.SystemVersionInfo))
	for _, w := range r.Resources {
		s := deltaResourceSize(w)
		n += 1 + protowire.SizeVarint(uint64(s)) + s
	}
	return n
}

// appendDeltaBody appends the fields of r that come before its type URL: the system
// version and the resources.
func appendDeltaBody(b []byte, r *discoveryv3.DeltaDiscoveryResponse) []byte {
	b = appendString(b, fieldDeltaSystemVersion, r.SystemVersionInfo)
	for _, w := range r.Resources {
		b = protowire.AppendTag(b, fieldDeltaResources, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(deltaResourceSize(w)))
		b = appendString(b, fieldResourceVersion, w.Version)
		if a := w.Resource; a != nil {
			b = protowire.AppendTag(b, fieldResourceAny, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(anySize(a.TypeUrl, a.Value)))
			b = appendString(b, fieldAnyTypeURL, a.TypeUrl)
			if len(a.Value) > 0 {
				b = protowire.AppendTag(b, fieldAnyValue, protowire.BytesType)
				b = protowire.AppendBytes(b, a.Value)
			}
		}
		b = appendString(b, fieldResourceName, w.Name)
	}
	return b
}

// deltaTailSize is the size of what appendDeltaTail writes.
func deltaTailSize(r *discoveryv3.DeltaDiscoveryResponse) int {
	n := sizeString(len(r.TypeUrl)) + sizeString(len(r.Nonce))
	for _, name := range r.RemovedResources {
		n += 1 + protowire.SizeVarint(uint64(len(name))) + len(name)
	}
	return n
}

// appendDeltaTail appends the fields of r after its resources: type URL, nonce, and the
// removed names (each written even when empty, as for any repeated string).
func appendDeltaTail(b []byte, r *discoveryv3.DeltaDiscoveryResponse) []byte {
	b = appendString(b, fieldDeltaTypeURL, r.TypeUrl)
	b = appendString(b, fieldDeltaNonce, r.Nonce)
	for _, name := range r.RemovedResources {
		b = protowire.AppendTag(b, fieldDeltaRemoved, protowire.BytesType)
		b = protowire.AppendString(b, name)
	}
	return b
}
