package ads

import (
	"errors"
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
//   - A codec that writes a DiscoveryResponse by copying its resources' bytes, marshalled
//     once per snapshot, instead of walking and marshalling every resource again for each
//     proxy as the default proto codec does. The bytes are the same (TestCodecBytes).
//     The streams of a push share one copy of the resources (TestCodecMemory).
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
	if r, ok := v.(*discoveryv3.DiscoveryRequest); ok {
		buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
		defer buf.Free()
		if ok, err := unmarshalRequest(buf.ReadOnlyData(), r); ok {
			return err
		}
	}
	return protoCodec.Unmarshal(data, v)
}

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(*discoveryv3.DiscoveryResponse); ok && plainResponse(r) {
		size := responseSize(r)
		if size < minSharedBody {
			return mem.BufferSlice{mem.SliceBuffer(appendResponse(make([]byte, 0, size), r))}, nil
		}
		// The body (version and resources) is the same for every proxy the push goes to;
		// only the type URL and nonce, which proto.Marshal writes after the resources,
		// are the stream's own.
		tail := appendString(appendString(make([]byte, 0, sizeString(len(r.TypeUrl))+sizeString(len(r.Nonce))),
			fieldTypeURL, r.TypeUrl), fieldNonce, r.Nonce)
		return mem.BufferSlice{mem.SliceBuffer(sharedBodies.body(r)), mem.SliceBuffer(tail)}, nil
	}
	return protoCodec.Marshal(v)
}

// minSharedBody is the size from which a response's body is shared between streams;
// below it, a response is one small allocation, cheaper than a look-up.
const minSharedBody = 16 << 10

// sharedBodies holds the bodies of the last large responses: a push writes one copy of
// its resources, which every stream's response points to until written, whatever the
// number of proxies. The buffers are plain garbage-collected memory, not pooled: once no
// stream writes a body and the cache has moved on, the next GC takes it, so the memory
// held after a push does not grow with the number of pushes or proxies (issue 14
// measured a pool of one buffer per stream keeping RSS up after every full push).
var sharedBodies = &bodyCache{}

// bodyCacheEntries bounds the bodies kept: a push interleaves CDS, EDS, LDS and RDS
// across streams, and EDS may name several subsets; a few per type is plenty.
const bodyCacheEntries = 16

// bodyCache finds a response's body by content: same version, same type, and the same
// resources, compared by identity. A snapshot's resources are immutable and the cache
// keeps the ones it compares alive, so an identical list of pointers is identical bytes.
// The version alone is not enough: EDS and RDS responses name only what changed, so two
// streams may get different subsets under one version.
type bodyCache struct {
	mu      sync.Mutex
	entries [bodyCacheEntries]bodyEntry
	next    int
}

type bodyEntry struct {
	version, typeURL string
	resources        []*anypb.Any
	body             []byte
}

func (e *bodyEntry) matches(r *discoveryv3.DiscoveryResponse) bool {
	return e.body != nil && e.version == r.VersionInfo && e.typeURL == r.TypeUrl && slices.Equal(e.resources, r.Resources)
}

// body returns the bytes of r's version and resources, as appendResponse writes them,
// from the cache or written now. The caller must not modify them. It marshals under the
// lock, so that the streams of a push that ask at once wait for one copy rather than
// each making its own.
func (c *bodyCache) body(r *discoveryv3.DiscoveryResponse) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if c.entries[i].matches(r) {
			return c.entries[i].body
		}
	}
	body := appendBody(make([]byte, 0, bodySize(r)), r)
	c.entries[c.next] = bodyEntry{version: r.VersionInfo, typeURL: r.TypeUrl, resources: r.Resources, body: body}
	c.next = (c.next + 1) % len(c.entries)
	return body
}

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
// not allocated again, and a subscription that is exactly a live set's names, in any
// order, is that set's own name list, in its sorted order (read-only, as every request is
// to the server). It reports false, having done nothing, for a request with any
// field it does not handle (resource locators, unknown fields): the proto codec takes
// those.
//
// Why: every Envoy repeats its whole EDS and RDS subscription in every request, ACKs
// included. With a thousand services, decoding the ACKs of a push to thousands of
// proxies allocated millions of strings, the largest cost of the push.
func unmarshalRequest(b []byte, r *discoveryv3.DiscoveryRequest) (bool, error) {
	// First pass: check that the fast path handles every field, count the names and hash
	// them as the index of live name lists does.
	names := 0
	var h resource.NameListHash
	h.Reset()
	for rest := b; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		if n < 0 || typ != protowire.BytesType || num < fieldReqVersionInfo || num > fieldReqErrorDetail {
			return false, nil
		}
		rest = rest[n:]
		v, n := protowire.ConsumeBytes(rest)
		if n < 0 {
			return false, nil
		}
		rest = rest[n:]
		if num == fieldReqResourceNames {
			names++
			h.Add(v)
		}
	}
	r.Reset()
	var err error
	resource.LookupNames(func(lookup resource.NameLookup) {
		if names > 0 {
			// The subscription is most often exactly a set's names (EDS for every
			// cluster), in Envoy's watch order: then the request takes that set's
			// list itself, in the set's order. The order of resource_names carries no
			// meaning in xDS.
			lookup.Lists(&h, names, func(list resource.NameList) bool {
				if sameNames(b, list) {
					r.ResourceNames = list.Names()
					return true
				}
				return false
			})
		}
		shared := r.ResourceNames != nil
		if !shared && names > 0 {
			r.ResourceNames = make([]string, 0, names)
		}
		str := func(v []byte) (string, error) {
			if s, ok := lookup.Name(v); ok {
				return s, nil
			}
			if !utf8.Valid(v) {
				return "", errInvalidUTF8
			}
			return string(v), nil
		}
		for len(b) > 0 && err == nil {
			num, _, n := protowire.ConsumeTag(b)
			b = b[n:]
			v, n := protowire.ConsumeBytes(b)
			b = b[n:]
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
				if r.Node == nil {
					r.Node = &corev3.Node{}
				}
				err = proto.UnmarshalOptions{Merge: true}.Unmarshal(v, r.Node)
			case fieldReqErrorDetail:
				if r.ErrorDetail == nil {
					r.ErrorDetail = &status.Status{}
				}
				err = proto.UnmarshalOptions{Merge: true}.Unmarshal(v, r.ErrorDetail)
			}
		}
	})
	return true, err
}

// sameNames reports whether the resource names in the well-formed request b are the
// names of list, in any order, each once. It does not allocate for lists of up to 4096
// names.
func sameNames(b []byte, list resource.NameList) bool {
	n := len(list.Names())
	var small [64]uint64
	seen := small[:]
	if words := (n + 63) / 64; words > len(small) {
		seen = make([]uint64, words)
	}
	count := 0
	for len(b) > 0 {
		num, _, l := protowire.ConsumeTag(b)
		b = b[l:]
		v, l := protowire.ConsumeBytes(b)
		b = b[l:]
		if num != fieldReqResourceNames {
			continue
		}
		i, ok := list.Index(v)
		if !ok || seen[i/64]&(1<<(i%64)) != 0 {
			return false
		}
		seen[i/64] |= 1 << (i % 64)
		count++
	}
	return count == n
}

var errInvalidUTF8 = errors.New("proto: DiscoveryRequest: string field contains invalid UTF-8")

// typeURL returns the type URL in v, without allocating for the types bearkong serves.
func typeURL(v []byte) (string, error) {
	for _, t := range resource.Types {
		if string(v) == t.URL() {
			return t.URL(), nil
		}
	}
	if !utf8.Valid(v) {
		return "", errInvalidUTF8
	}
	return string(v), nil
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

// plainResponse reports whether r holds only what the fast path writes: version, nonce,
// type URL and resources (Anys) without unknown fields. Anything else goes through the
// proto codec.
func plainResponse(r *discoveryv3.DiscoveryResponse) bool {
	if r.Canary || r.ControlPlane != nil || len(r.ResourceErrors) > 0 || len(r.ProtoReflect().GetUnknown()) > 0 {
		return false
	}
	for _, a := range r.Resources {
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
		s := anySize(a.TypeUrl, a.Value)
		n += 1 + protowire.SizeVarint(uint64(s)) + s
	}
	return n
}

func responseSize(r *discoveryv3.DiscoveryResponse) int {
	return bodySize(r) + sizeString(len(r.TypeUrl)) + sizeString(len(r.Nonce))
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendResponse appends r as proto.Marshal writes it: fields in number order, empty
// proto3 scalars left out, each resource an embedded Any (type_url, then value).
func appendResponse(b []byte, r *discoveryv3.DiscoveryResponse) []byte {
	b = appendBody(b, r)
	b = appendString(b, fieldTypeURL, r.TypeUrl)
	return appendString(b, fieldNonce, r.Nonce)
}

// appendBody appends the fields of r that come before its type URL: the version and the
// resources.
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
