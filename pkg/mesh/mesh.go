// Package mesh holds bearkong's model of the mesh: an immutable snapshot of the meshed
// Services, their ready endpoints, and the proxies (pods) that serve them.
//
// pkg/discovery builds snapshots from the Kubernetes API; pkg/translate turns them into
// Envoy resources. Neither side mutates a snapshot once it is published.
package mesh

import (
	"sort"
	"strings"
	"time"
)

// Well-known labels, annotations and ports of the mesh contract.
const (
	// MeshedLabel marks a Service as part of the mesh when its value is MeshedValue.
	MeshedLabel = "meshed"
	MeshedValue = "enabled"

	// AnnotationPrefix is the prefix of the Service annotations that carry mesh policy.
	// Annotations without it are not part of a snapshot, so changing them changes nothing.
	AnnotationPrefix = "mesh-"

	// InboundPort is the sidecar's inbound listener port on every pod.
	InboundPort = 8000
	// OutboundPort is the sidecar's outbound listener port; requests are routed by the
	// "service" header.
	OutboundPort = 8001
	// AdminPort is the sidecar's Envoy admin port.
	AdminPort = 8081
	// AppPort is the port the application listens on inside the pod.
	AppPort = 9090

	// ServiceHeader is the request header the outbound listener routes on.
	ServiceHeader = "service"
)

// Snapshot is an immutable view of the mesh at one moment.
type Snapshot struct {
	// Services are the meshed Services, sorted by namespace then name.
	Services []*Service
	// Proxies are the pods that select into at least one meshed Service, keyed by
	// "namespace/name".
	Proxies map[string]*Proxy
	// Diagnostics are the problems found in the objects behind this snapshot (invalid
	// annotations, targetPorts that miss the sidecar), sorted. bearkong works around them;
	// it reports them so that nothing breaks silently.
	Diagnostics []Diagnostic
	// ChangedAt is when the control plane observed the earliest Kubernetes change folded
	// into this snapshot. It is the start of the convergence clock.
	ChangedAt time.Time
}

// Service is one meshed Kubernetes Service.
type Service struct {
	Namespace string
	Name      string
	// Annotations holds only the annotations with AnnotationPrefix.
	Annotations map[string]string
	// Policy is parsed from Annotations alone; an invalid annotation counts as absent.
	Policy Policy
	// Routes are the rules of the HTTPRoutes attached to this Service, in precedence
	// order; nil means plain routing to the Service.
	Routes []RouteRule
	// Ports are the Service's ports, in the Service's order.
	Ports []ServicePort
	// Protocol is the protocol the Service's ports declare (ServiceProtocol): which HTTP
	// callers speak to its pods.
	Protocol Protocol
	// Endpoints are the ready endpoints, sorted by IP, without duplicates.
	Endpoints []Endpoint
	// MTLS is the Service's mutual-TLS mode (annotation on the Service, else on its
	// Namespace, else the control plane's default): callers originate TLS unless it is
	// MTLSDisable.
	MTLS MTLSMode
	// ServiceAccounts are the ServiceAccounts of the pods behind Endpoints, sorted and
	// unique: the identities a caller accepts from this Service's endpoints.
	ServiceAccounts []string
	// Authz are the accepted AuthorizationPolicies that target this Service, sorted by
	// name. None means every caller is allowed, unless the mesh denies by default.
	Authz []AuthzPolicy
}

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// ServicePort is one port of a Service as the user declared it.
type ServicePort struct {
	Name       string
	Port       int32
	TargetPort string // number or named port, as written; "" when unset (defaults to Port)
	Protocol   string // the transport protocol: TCP, UDP or SCTP
	// AppProtocol is the port's appProtocol as written ("" when unset); see PortProtocol.
	AppProtocol string
}

// Endpoint is a ready endpoint of a Service: a pod's address.
type Endpoint struct {
	IP  string
	Pod string // pod name, "" when the EndpointSlice does not say
}

// Proxy is a pod that runs (or should run) a sidecar because meshed Services select it.
type Proxy struct {
	Namespace string
	Name      string
	IP        string
	// Services are the keys ("namespace/name") of the meshed Services whose selector
	// matches this pod, sorted.
	Services []string
	// ServiceAccount is the pod's spec.serviceAccountName ("default" when unset).
	ServiceAccount string
	// MTLS is the mode of the proxy's inbound listener: the mode of its Services when
	// they agree, else MTLSPermissive (callers of each Service keep working; a
	// diagnostic names the conflict).
	MTLS MTLSMode
}

// Key returns "namespace/name".
func (p *Proxy) Key() string { return p.Namespace + "/" + p.Name }

// Service returns the Service with the given namespace and name, or nil.
func (s *Snapshot) Service(namespace, name string) *Service {
	if s == nil {
		return nil
	}
	i := sort.Search(len(s.Services), func(i int) bool {
		svc := s.Services[i]
		if svc.Namespace != namespace {
			return svc.Namespace >= namespace
		}
		return svc.Name >= name
	})
	if i < len(s.Services) && s.Services[i].Namespace == namespace && s.Services[i].Name == name {
		return s.Services[i]
	}
	return nil
}

// Proxy returns the proxy for the pod namespace/name, or nil.
func (s *Snapshot) Proxy(namespace, name string) *Proxy {
	if s == nil || s.Proxies == nil {
		return nil
	}
	return s.Proxies[namespace+"/"+name]
}

// SplitKey splits "namespace/name".
func SplitKey(key string) (namespace, name string) {
	ns, n, ok := strings.Cut(key, "/")
	if !ok {
		return "", key
	}
	return ns, n
}

// ConfigPart is a part of the proxies' config that Kubernetes objects contribute to:
// what a proxy rejects is attributed to the objects behind the part it rejected.
type ConfigPart int

const (
	// RoutesPart is the routing config: HTTPRoutes, and the Service policies that set
	// route options (mesh-timeout).
	RoutesPart ConfigPart = iota + 1
	// ClustersPart is the per-Service cluster config: the destination policies
	// (outlier detection, circuit breakers).
	ClustersPart
)

func (p ConfigPart) String() string {
	switch p {
	case RoutesPart:
		return "routes"
	case ClustersPart:
		return "clusters"
	}
	return "unknown"
}

// MTLSMode is how a proxy's inbound listener treats plaintext and mutual TLS, and
// whether callers originate TLS to a Service.
type MTLSMode string

// The modes. STRICT is the default: an empty mode means STRICT wherever a mode is read.
const (
	// MTLSStrict accepts only mutual TLS with a client certificate from the mesh's CA.
	MTLSStrict MTLSMode = "STRICT"
	// MTLSPermissive accepts mutual TLS and plaintext on the same port, for migration.
	MTLSPermissive MTLSMode = "PERMISSIVE"
	// MTLSDisable accepts plaintext only; callers do not originate TLS.
	MTLSDisable MTLSMode = "DISABLE"
)

// Effective returns the mode with the empty value read as MTLSStrict.
func (m MTLSMode) Effective() MTLSMode {
	if m == "" {
		return MTLSStrict
	}
	return m
}

// SPIFFEID returns the workload identity of a pod running as a ServiceAccount:
// spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>, as Istio and SPIFFE's
// Kubernetes conventions write it (https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md).
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}
