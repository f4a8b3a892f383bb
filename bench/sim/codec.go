package sim

import (
	"fmt"
	"math/bits"
	"sync"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// rawResponse is a DiscoveryResponse read straight off the wire: the resources' bytes
// alias the message buffer instead of being copied into an Any each. The simulator then
// costs little more than the bytes it receives, which keeps the machine's CPU for the
// servers under test. Everything a client checks is still checked (see decoder.decode).
type rawResponse struct {
	Version, TypeURL, Nonce string
	Resources               []rawAny
	// Size is the size of the DiscoveryResponse message.
	Size int
	buf  *[]byte
}

type rawAny struct {
	TypeURL []byte
	Value   []byte
}

func (r *rawResponse) release() {
	if r.buf != nil {
		putBuf(r.buf)
		r.buf = nil
		r.Resources = nil
	}
}

// DiscoveryResponse field numbers, and Any's.
const (
	fieldVersionInfo = 1
	fieldResources   = 2
	fieldTypeURL     = 4
	fieldNonce       = 5
	fieldAnyTypeURL  = 1
	fieldAnyValue    = 2
)

func (r *rawResponse) parse(b []byte) error {
	r.Size = len(b)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("DiscoveryResponse: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType || (num != fieldVersionInfo && num != fieldResources && num != fieldTypeURL && num != fieldNonce) {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("DiscoveryResponse field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("DiscoveryResponse field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case fieldVersionInfo:
			r.Version = string(v)
		case fieldTypeURL:
			r.TypeURL = string(v)
		case fieldNonce:
			r.Nonce = string(v)
		case fieldResources:
			a, err := parseAny(v)
			if err != nil {
				return err
			}
			r.Resources = append(r.Resources, a)
		}
	}
	return nil
}

func parseAny(b []byte) (rawAny, error) {
	var a rawAny
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return a, fmt.Errorf("Any: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == fieldAnyTypeURL || num == fieldAnyValue) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return a, fmt.Errorf("Any: %w", protowire.ParseError(n))
			}
			b = b[n:]
			if num == fieldAnyTypeURL {
				a.TypeURL = v
			} else {
				a.Value = v
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return a, fmt.Errorf("Any field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return a, nil
}

// rawDeltaResponse is a DeltaDiscoveryResponse read the same way: the resources' Anys
// alias the message buffer, with each resource's name and version beside.
type rawDeltaResponse struct {
	rawResponse
	Names, Versions []string
	Removed         []string
}

// DeltaDiscoveryResponse and Resource field numbers.
const (
	fieldDeltaResources = 2
	fieldDeltaTypeURL   = 4
	fieldDeltaNonce     = 5
	fieldDeltaRemoved   = 6
	fieldResVersion     = 1
	fieldResResource    = 2
	fieldResName        = 3
)

func (r *rawDeltaResponse) parse(b []byte) error {
	r.Size = len(b)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("DeltaDiscoveryResponse: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType || (num != fieldDeltaResources && num != fieldDeltaTypeURL && num != fieldDeltaNonce && num != fieldDeltaRemoved) {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("DeltaDiscoveryResponse field %d: %w", num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("DeltaDiscoveryResponse field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case fieldDeltaTypeURL:
			r.TypeURL = string(v)
		case fieldDeltaNonce:
			r.Nonce = string(v)
		case fieldDeltaRemoved:
			r.Removed = append(r.Removed, internBytes(v).String())
		case fieldDeltaResources:
			name, version, a, err := parseDeltaResource(v)
			if err != nil {
				return err
			}
			r.Names = append(r.Names, name)
			r.Versions = append(r.Versions, version)
			r.Resources = append(r.Resources, a)
		}
	}
	return nil
}

func parseDeltaResource(b []byte) (name, version string, a rawAny, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", a, fmt.Errorf("Resource: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == fieldResName || num == fieldResVersion || num == fieldResResource) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", "", a, fmt.Errorf("Resource: %w", protowire.ParseError(n))
			}
			b = b[n:]
			switch num {
			// Names and versions are the fleet's one copy of each (see sym.go): every
			// client keeps the versions it holds, to send them back on a reconnect.
			case fieldResName:
				name = internBytes(v).String()
			case fieldResVersion:
				version = internBytes(v).String()
			case fieldResResource:
				if a, err = parseAny(v); err != nil {
					return "", "", a, err
				}
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", "", a, fmt.Errorf("Resource field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	if a.Value == nil && a.TypeURL == nil {
		return "", "", a, fmt.Errorf("Resource %q without a resource (TTL heartbeats are not used)", name)
	}
	return name, version, a, nil
}

// codec is gRPC's proto codec, except that it reads a *rawResponse off the wire itself.
type codec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (codec) Name() string { return grpcproto.Name }

// Marshal writes a request into a slice of its own size. gRPC's codec takes a buffer from
// its tiered pool, whose size above 32 KiB is 1 MiB: a reconnect's requests carry every
// name and version the client holds (about 40 KB a type at S=1000), and 5000 clients
// reconnecting then held 5 GB of mostly empty buffers until the server had read them.
func (codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return protoCodec.Marshal(v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch r := v.(type) {
	case *rawResponse:
		buf := getBuf(data.Len())
		data.CopyTo(*buf)
		r.buf = buf
		return r.parse(*buf)
	case *rawDeltaResponse:
		buf := getBuf(data.Len())
		data.CopyTo(*buf)
		r.buf = buf
		return r.parse(*buf)
	}
	return protoCodec.Unmarshal(data, v)
}

// Message buffers by power-of-two size class, not cleared on reuse (CopyTo overwrites).
var bufPools [32]sync.Pool

func getBuf(n int) *[]byte {
	c := bits.Len(uint(n))
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<c)
	return &b
}

func putBuf(b *[]byte) {
	c := bits.Len(uint(cap(*b) - 1))
	if cap(*b) == 1<<c && c < len(bufPools) {
		bufPools[c].Put(b)
	}
}
