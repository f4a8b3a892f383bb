// Package v1alpha1 is bearkong's own API, group bearkong.dev, version v1alpha1: the
// AuthorizationPolicy resource (manifests/crds/bearkong.dev_authorizationpolicies.yaml),
// its Go types with hand-written deep copies, and a small typed client on rest.Interface
// in the shape of client-go's generated clients (List, Watch, Get, UpdateStatus), so that
// bearkong needs neither code generators nor controller-runtime for one resource.
//
// The CRD's OpenAPI schema is what refuses malformed policies; these types only carry
// them. pkg/discovery resolves a policy into the mesh model (mesh.AuthzPolicy).
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Action is what a policy does with the requests its rules match.
type Action string

const (
	ActionAllow Action = "ALLOW"
	ActionDeny  Action = "DENY"
)

// Mode says whether a policy is enforced or only evaluated (a dry run).
type Mode string

const (
	// ModeEnforce (the default) blocks what the policy denies.
	ModeEnforce Mode = "Enforce"
	// ModeShadow evaluates, counts and logs the policy, and blocks nothing.
	ModeShadow Mode = "Shadow"
)

// PathMatchType is how a path is compared.
type PathMatchType string

const (
	PathMatchExact      PathMatchType = "Exact"
	PathMatchPathPrefix PathMatchType = "PathPrefix"
)

// The Accepted condition and its reasons.
const (
	ConditionAccepted = "Accepted"

	// ReasonAccepted: the policy is enforced (Accepted=True). Its message warns when a
	// caller it names resolved to nobody.
	ReasonAccepted = "Accepted"
	// ReasonTargetNotFound: no Service of that name in the policy's namespace.
	ReasonTargetNotFound = "TargetNotFound"
	// ReasonTargetNotMeshed: the Service exists but has not joined the mesh.
	ReasonTargetNotMeshed = "TargetNotMeshed"
	// ReasonCallerNotFound: a caller named by the policy does not exist. With
	// Accepted=True the policy is enforced with that caller matching nobody.
	ReasonCallerNotFound = "CallerNotFound"
	// ReasonInvalid: a policy the schema let through but bearkong cannot enforce.
	ReasonInvalid = "Invalid"
)

// AuthorizationPolicy says who may call a meshed Service, and what.
type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AuthorizationPolicySpec   `json:"spec"`
	Status AuthorizationPolicyStatus `json:"status,omitempty"`
}

// AuthorizationPolicySpec is the policy itself.
type AuthorizationPolicySpec struct {
	// TargetRef names a Service in the policy's namespace.
	TargetRef TargetRef `json:"targetRef"`
	// Action is ALLOW or DENY; DENY wins.
	Action Action `json:"action"`
	// Mode is Enforce (default) or Shadow.
	Mode Mode `json:"mode,omitempty"`
	// Rules: a request matches the policy when it matches any rule (1 to 64).
	Rules []Rule `json:"rules"`
}

// TargetRef names the Service a policy protects.
type TargetRef struct {
	Name string `json:"name"`
}

// Rule matches a request when its caller matches From and the request matches To.
type Rule struct {
	// From lists the callers, any of which matches; omitted: any workload of the mesh.
	From []Source `json:"from,omitempty"`
	// To is what the request must be; omitted: any request.
	To *Operation `json:"to,omitempty"`
}

// Source is one caller: exactly one of its fields is set.
type Source struct {
	// ServiceAccount is a workload identity; its namespace defaults to the policy's.
	ServiceAccount *ObjectRef `json:"serviceAccount,omitempty"`
	// Service stands for the ServiceAccounts of the Service's pods; its namespace
	// defaults to the policy's.
	Service *ObjectRef `json:"service,omitempty"`
	// AnyWorkload, true, matches any authenticated workload of the mesh.
	AnyWorkload bool `json:"anyWorkload,omitempty"`
}

// ObjectRef names an object, in the policy's namespace unless Namespace says otherwise.
type ObjectRef struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// Operation is what a request must be: every field given must match; within a field,
// any entry matches (headers: all must match).
type Operation struct {
	Methods []string      `json:"methods,omitempty"`
	Paths   []PathMatch   `json:"paths,omitempty"`
	Headers []HeaderMatch `json:"headers,omitempty"`
	GRPC    []GRPCMethod  `json:"grpc,omitempty"`
}

// PathMatch matches the request path.
type PathMatch struct {
	// Type is Exact or PathPrefix (the default).
	Type  PathMatchType `json:"type,omitempty"`
	Value string        `json:"value"`
}

// HeaderMatch matches one request header's exact value.
type HeaderMatch struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// GRPCMethod names a gRPC service (package included) and a method; Method omitted or
// "*" means every method of the service.
type GRPCMethod struct {
	Service string `json:"service"`
	Method  string `json:"method,omitempty"`
}

// AuthorizationPolicyStatus is what bearkong made of the policy.
type AuthorizationPolicyStatus struct {
	// Conditions: Accepted, with ObservedGeneration.
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AuthorizationPolicyList is a list of AuthorizationPolicies.
type AuthorizationPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`

	Items []AuthorizationPolicy `json:"items"`
}
