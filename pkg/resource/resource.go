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
	"sort"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type is one of the four xDS resource types bearkong serves.
type Type int

// The types, in the order a push sends them (make before break: clusters and their
// endpoints before the listeners and routes that refer to them).
const (
	Cluster Type = iota
	Endpoint
	Listener
	Route
	NumTypes = 4
)

// Types lists every type in push order.
var Types = [NumTypes]Type{Cluster, Endpoint, Listener, Route}

var (
	typeURLs   = [NumTypes]string{"type.googleapis.com/envoy.config.cluster.v3.Cluster", "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment", "type.googleapis.com/envoy.config.listener.v3.Listener", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"}
	shortNames = [NumTypes]string{"cds", "eds", "lds", "rds"}
)

// URL returns the type URL, as used in DiscoveryRequest.type_url and Any.type_url.
func (t Type) URL() string { return typeURLs[t] }

// String returns the short name: cds, eds, lds or rds.
func (t Type) String() string {
	if t < 0 || t >= NumTypes {
		return fmt.Sprintf("Type(%d)", int(t))
	}
	return shortNames[t]
}

// Wildcard reports whether the type is requested as a whole (LDS, CDS): its responses
// carry the full set. EDS and RDS responses carry the requested names.
func (t Type) Wildcard() bool { return t == Cluster || t == Listener }

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
	names   []string // sorted
	byName  map[string]*Resource
}

// NewSet returns a set of the given resources. A later resource with the same name as an
// earlier one replaces it.
func NewSet(rs ...*Resource) *Set {
	s := &Set{byName: make(map[string]*Resource, len(rs))}
	for _, r := range rs {
		s.byName[r.Name] = r
	}
	s.names = make([]string, 0, len(s.byName))
	for n := range s.byName {
		s.names = append(s.names, n)
	}
	sort.Strings(s.names)
	h := sha256.New()
	for _, n := range s.names {
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write([]byte(s.byName[n].Hash))
		h.Write([]byte{0})
	}
	s.version = hex.EncodeToString(h.Sum(nil)[:8])
	return s
}

// Version is a content hash over the names and hashes of every resource in the set.
func (s *Set) Version() string { return s.version }

// Len is the number of resources.
func (s *Set) Len() int { return len(s.names) }

// Names returns the sorted names. The caller must not modify the slice.
func (s *Set) Names() []string { return s.names }

// Get returns the named resource.
func (s *Set) Get(name string) (*Resource, bool) {
	r, ok := s.byName[name]
	return r, ok
}

// View is what one proxy gets for one type: a stack of sets, typically one shared by many
// proxies and one of the proxy's own. Names must not repeat across the sets of a view.
type View []*Set

// Version combines the versions of the sets. It changes when any resource in the view
// changes, is added or is removed.
func (v View) Version() string {
	switch len(v) {
	case 0:
		return NewSet().Version()
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
func (v View) All() []*Resource {
	out := make([]*Resource, 0, v.Len())
	for _, s := range v {
		for _, n := range s.names {
			out = append(out, s.byName[n])
		}
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
