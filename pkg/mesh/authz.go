package mesh

// Authorization: who may call a Service, and what. bearkong's AuthorizationPolicy
// (bearkong.dev/v1alpha1) names a target Service in its own namespace; pkg/discovery
// resolves its callers to workload identities, and pkg/translate turns the policies of the
// Services a pod serves into Envoy's RBAC filter on the pod's inbound listener.

// AuthzAction is what a policy does with the requests its rules match.
type AuthzAction string

const (
	// AuthzAllow lets the matched requests through; once a Service has an ALLOW policy,
	// a request no ALLOW rule matches is denied.
	AuthzAllow AuthzAction = "ALLOW"
	// AuthzDeny denies the matched requests, whatever ALLOW says: DENY wins.
	AuthzDeny AuthzAction = "DENY"
)

// AuthzPolicy is one accepted AuthorizationPolicy, ready to translate.
type AuthzPolicy struct {
	Namespace, Name string
	Action          AuthzAction
	// Shadow policies are evaluated, logged and counted, never enforced: a dry run.
	Shadow bool
	// Rules: a request matches the policy when it matches any rule.
	Rules []AuthzRule
}

// Key returns "namespace/name".
func (p *AuthzPolicy) Key() string { return p.Namespace + "/" + p.Name }

// AuthzRule matches a request when its caller and its request both match. Empty lists
// match anything, except callers: see AnyCaller.
type AuthzRule struct {
	// AnyCaller matches any workload of the mesh (an authenticated peer of the trust
	// domain). Otherwise the caller must be one of Callers.
	AnyCaller bool
	// Callers are identities as "namespace/serviceaccount", sorted and unique; a Service
	// named as a caller stands for the ServiceAccounts of its pods. Empty with AnyCaller
	// false matches no caller at all (a Service with no known pod, for example): never
	// read it as "anyone".
	Callers []string
	// Methods are HTTP methods (GET, POST, ...), any of which matches.
	Methods []string
	// Paths, any of which matches: Type "Exact" or "PathPrefix" (no regular expressions).
	Paths []PathMatch
	// Headers, all of which must match: Type "Exact".
	Headers []ValueMatch
	// GRPC methods, any of which matches: "/<Service>/<Method>", or the whole service when
	// Method is "" or "*".
	GRPC []GRPCMethod
}

// GRPCMethod names a gRPC service ("currency.Currency", package included) and a method
// ("Convert"; "" or "*" for every method).
type GRPCMethod struct {
	Service, Method string
}
