package mesh

import "time"

// RouteRule is one way of routing the traffic sent to a meshed Service, from an
// HTTPRoute (gateway.networking.k8s.io) whose parentRef is the Service: the GAMMA mesh
// profile. A Service's rules are flattened, one per match, and sorted by the Gateway
// API's precedence, so the first rule that matches a request wins.
type RouteRule struct {
	// Route is the HTTPRoute, "namespace/name"; Rule and Match index the rule in it and
	// the match in the rule. Together they name the Envoy route.
	Route string
	Rule  int
	Match int

	Path        PathMatch
	Method      string // "" matches any method
	Headers     []ValueMatch
	QueryParams []ValueMatch

	// Backends are where matching requests go, by weight. An invalid backend (missing,
	// not meshed, or in another namespace) keeps its share of the traffic, which is then
	// answered 500, as the Gateway API asks.
	Backends []Backend

	// Timeout is the request timeout; TimeoutSet tells "0s: no timeout" from unset.
	Timeout    time.Duration
	TimeoutSet bool
	// BackendTimeout is the timeout of each try (0: unset).
	BackendTimeout time.Duration
	Retry          Retry
}

// PathMatch is a Gateway API path match.
type PathMatch struct {
	Type  string // "Exact", "PathPrefix" or "RegularExpression"
	Value string
}

// ValueMatch is a header or query parameter match.
type ValueMatch struct {
	Type  string // "Exact" or "RegularExpression"
	Name  string
	Value string
}

// Backend is a weighted backendRef.
type Backend struct {
	Namespace string
	Name      string
	Weight    int32
	// Valid is false when the backend is not a meshed Service the route may use.
	Valid bool
}

// Key returns the backend Service's "namespace/name".
func (b Backend) Key() string { return b.Namespace + "/" + b.Name }

// Retry is a rule's retry policy; the zero value means no retries configured.
type Retry struct {
	Attempts int // retries after the first try; 0: unset
	Codes    []int
	Backoff  time.Duration
}

// Set reports whether the rule configures retries.
func (r Retry) Set() bool { return r.Attempts > 0 || len(r.Codes) > 0 || r.Backoff > 0 }
