package mesh

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Policy annotations on a meshed Service.
const (
	// AnnotationTimeout sets a server-side request timeout: the inbound route of the
	// Service's proxies ends a request that takes longer with a 504. A Go duration,
	// greater than 0 and at most MaxTimeout.
	AnnotationTimeout = "mesh-timeout"
	// MaxTimeout is the largest accepted mesh-timeout.
	MaxTimeout = time.Hour

	// Outlier detection on the Service's cluster, in every caller: ejects an endpoint
	// after consecutive 5xx answers. Setting any of them turns it on.
	AnnotationOutlierConsecutive5xx     = "mesh-outlier-consecutive-5xx"      // 1..1000 (Envoy default 5)
	AnnotationOutlierInterval           = "mesh-outlier-interval"             // duration, (0, 1h] (default 10s)
	AnnotationOutlierBaseEjectionTime   = "mesh-outlier-base-ejection-time"   // duration, (0, 1h] (default 30s)
	AnnotationOutlierMaxEjectionPercent = "mesh-outlier-max-ejection-percent" // 1..100 (default 10; one endpoint can always be ejected)

	// Circuit-breaker limits on the Service's cluster, in every caller.
	AnnotationMaxConnections     = "mesh-max-connections"      // 1..1000000 (Envoy default 1024)
	AnnotationMaxPendingRequests = "mesh-max-pending-requests" // 1..1000000 (default 1024)
	AnnotationMaxRequests        = "mesh-max-requests"         // 1..1000000 (default 1024)

	// AnnotationMTLS sets the mutual-TLS mode (MTLSMode) on a Service or on a Namespace
	// (for its Services without their own): exactly STRICT, PERMISSIVE or DISABLE.
	AnnotationMTLS = "mesh-mtls"
)

// Policy is a Service's mesh policy, parsed and validated. The zero value is the
// default: no policy.
type Policy struct {
	// Timeout is the inbound request timeout; 0 means none.
	Timeout time.Duration
	// Outlier detection; zero fields keep Envoy's defaults.
	Outlier OutlierDetection
	// Circuit-breaker thresholds; 0 keeps Envoy's default.
	MaxConnections, MaxPendingRequests, MaxRequests uint32
	// AccessLog is the Service's access-log format (mesh-access-log); "" means not set,
	// and the control plane's default applies.
	AccessLog AccessLogFormat
}

// OutlierDetection configures ejection of failing endpoints.
type OutlierDetection struct {
	Enabled            bool
	Consecutive5xx     uint32
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent uint32
}

// policyField is one annotation: how to parse it into a Policy, and what applies when
// it is absent (for the message that reports an invalid value, which counts as absent).
type policyField struct {
	key   string
	parse func(value string, p *Policy) error
	// absent describes what applies without the annotation, given the policy parsed
	// from the Service's other annotations.
	absent func(p Policy) string
}

// envoyDefault describes Envoy's default for an outlier-detection or circuit-breaker
// field. An outlier field without value is part of outlier detection only when another
// mesh-outlier-* annotation turns it on.
func envoyDefault(def string, outlier bool) func(Policy) string {
	return func(p Policy) string {
		if outlier && !p.Outlier.Enabled {
			return "no outlier detection, unless another mesh-outlier-* annotation turns it on (then Envoy's default, " + def + ")"
		}
		return "Envoy's default (" + def + ")"
	}
}

// durationField and intField build the usual kinds of field. def is Envoy's default
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/outlier_detection.proto,
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto).
func durationField(key string, max time.Duration, set func(*Policy) *time.Duration, outlier bool, def string) policyField {
	return policyField{
		key: key,
		parse: func(v string, p *Policy) error {
			d, err := parseDuration(v, 0, max)
			if err != nil {
				return err
			}
			*set(p) = d
			if outlier {
				p.Outlier.Enabled = true
			}
			return nil
		},
		absent: envoyDefault(def, outlier),
	}
}

func intField(key string, min, max uint32, set func(*Policy) *uint32, outlier bool, def string) policyField {
	return policyField{
		key: key,
		parse: func(v string, p *Policy) error {
			n, err := parseUint(v, min, max)
			if err != nil {
				return err
			}
			*set(p) = n
			if outlier {
				p.Outlier.Enabled = true
			}
			return nil
		},
		absent: envoyDefault(def, outlier),
	}
}

var policyFields = []policyField{
	durationField(AnnotationOutlierInterval, time.Hour, func(p *Policy) *time.Duration { return &p.Outlier.Interval }, true, "10s"),
	durationField(AnnotationOutlierBaseEjectionTime, time.Hour, func(p *Policy) *time.Duration { return &p.Outlier.BaseEjectionTime }, true, "30s"),
	intField(AnnotationOutlierConsecutive5xx, 1, 1000, func(p *Policy) *uint32 { return &p.Outlier.Consecutive5xx }, true, "5"),
	intField(AnnotationOutlierMaxEjectionPercent, 1, 100, func(p *Policy) *uint32 { return &p.Outlier.MaxEjectionPercent }, true, "10"),
	intField(AnnotationMaxConnections, 1, 1000000, func(p *Policy) *uint32 { return &p.MaxConnections }, false, "1024"),
	intField(AnnotationMaxPendingRequests, 1, 1000000, func(p *Policy) *uint32 { return &p.MaxPendingRequests }, false, "1024"),
	intField(AnnotationMaxRequests, 1, 1000000, func(p *Policy) *uint32 { return &p.MaxRequests }, false, "1024"),
	{
		key: AnnotationTimeout,
		parse: func(v string, p *Policy) error {
			d, err := parseDuration(v, 0, MaxTimeout)
			if err != nil {
				return err
			}
			p.Timeout = d
			return nil
		},
		absent: func(Policy) string { return "no timeout" },
	},
	accessLogField,
}

// KnownAnnotations lists the policy annotations bearkong reads on a Service, sorted.
func KnownAnnotations() []string {
	out := make([]string, 0, len(policyFields)+1)
	for _, f := range policyFields {
		out = append(out, f.key)
	}
	out = append(out, AnnotationMTLS)
	slices.Sort(out)
	return out
}

// NamespaceAnnotations lists the policy annotations bearkong reads on a Namespace.
// Other mesh-* annotations on a Namespace are not read.
func NamespaceAnnotations() []string { return []string{AnnotationMTLS} }

// ValidateAnnotation checks one value of a policy annotation the way bearkong reads it
// (ParsePolicy, ParseMTLSMode): known is false for a key bearkong does not read, and
// err says why a value of a known key is invalid. The admission policy
// (manifests/bearkong/admission-policy.yaml) must accept exactly the values this accepts;
// test/deploy proves it against a real API server.
func ValidateAnnotation(key, value string) (known bool, err error) {
	if key == AnnotationMTLS {
		_, err := ParseMTLSMode(value)
		return true, err
	}
	for _, f := range policyFields {
		if f.key == key {
			return true, f.parse(value, &Policy{})
		}
	}
	return false, nil
}

// ParseMTLSMode parses a mesh-mtls value (or the control plane's default mode). Only
// the three modes, spelt exactly as Istio's PeerAuthentication spells them, are valid:
// a value that is almost right ("strict", " STRICT") is a mistake worth reporting, not
// something to guess at when the outcome is whether traffic is encrypted.
func ParseMTLSMode(v string) (MTLSMode, error) {
	switch m := MTLSMode(v); m {
	case MTLSStrict, MTLSPermissive, MTLSDisable:
		return m, nil
	}
	return "", fmt.Errorf("must be %s, %s or %s (upper case)", MTLSStrict, MTLSPermissive, MTLSDisable)
}

// parseDuration parses a Go duration in (min, max].
func parseDuration(v string, min, max time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("not a duration (use a Go duration such as 2s, 500ms or 1m30s)")
	}
	if d <= min {
		return 0, fmt.Errorf("must be greater than %s", min)
	}
	if d > max {
		return 0, fmt.Errorf("must be at most %s", max)
	}
	return d, nil
}

// parseUint parses a whole number in [min, max], decimal digits only.
func parseUint(v string, min, max uint32) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("not a whole number")
	}
	if n < uint64(min) || n > uint64(max) {
		return 0, fmt.Errorf("must be from %d to %d", min, max)
	}
	return uint32(n), nil
}

// InvalidAnnotationMessage is the message of the diagnostic (and Event) about an invalid
// policy annotation: which annotation, its value, why it is invalid, and what applies
// instead (instead), since the value is ignored as if absent.
func InvalidAnnotationMessage(key, value string, err error, instead string) string {
	return fmt.Sprintf("annotation %s=%q is invalid: %v; it is ignored, as if absent: %s", key, value, err, instead)
}

// ParsePolicy reads a Service's mesh annotations (as kept in Service.Annotations). The
// policy is a function of the annotations alone: an invalid annotation is ignored as if
// it were absent, and yields a Diagnostic (with an Event) that says so. bearkong keeps no
// "last valid value": a value remembered in memory would differ between replicas and
// disappear on a restart, and the admission policy
// (manifests/bearkong/admission-policy.yaml) refuses invalid values before they are
// stored. An unknown mesh-* annotation yields a Diagnostic too, and is ignored.
func ParsePolicy(namespace, name string, annotations map[string]string) (Policy, []Diagnostic) {
	var p Policy
	var invalid []policyField
	var errs []error
	// mesh-mtls is not part of Policy: it depends on the Namespace too, so discovery
	// reads it (and reports its errors) itself.
	known := map[string]bool{AnnotationMTLS: true}
	for _, f := range policyFields {
		known[f.key] = true
		v, ok := annotations[f.key]
		if !ok {
			continue
		}
		if err := f.parse(v, &p); err != nil {
			invalid = append(invalid, f)
			errs = append(errs, err)
		}
	}
	var diags []Diagnostic
	// What applies instead depends on the whole policy (whether outlier detection is
	// on), so the messages are written once every field is read.
	for i, f := range invalid {
		diags = append(diags, Diagnostic{
			Kind: "Service", Namespace: namespace, Name: name, Reason: ReasonInvalidAnnotation, Event: true,
			Message: InvalidAnnotationMessage(f.key, annotations[f.key], errs[i], f.absent(p)),
		})
	}
	for k, v := range annotations {
		if !known[k] {
			diags = append(diags, Diagnostic{
				Kind: "Service", Namespace: namespace, Name: name, Reason: ReasonUnknownAnnotation, Event: true,
				Message: fmt.Sprintf("annotation %s=%q is not a mesh policy bearkong knows (known: %s); it is ignored", k, v, strings.Join(KnownAnnotations(), ", ")),
			})
		}
	}
	SortDiagnostics(diags)
	return p, diags
}

// Diagnostic reasons.
const (
	ReasonInvalidAnnotation   = "InvalidAnnotation"
	ReasonUnknownAnnotation   = "UnknownAnnotation"
	ReasonTargetPortBypasses  = "TargetPortBypassesSidecar"
	ReasonTargetPortMisses    = "TargetPortMissesSidecar"
	ReasonConflictingPolicies = "ConflictingPolicies"
	// ReasonConflictingMTLSModes: Services with different mesh-mtls modes select the
	// same pod, whose one inbound listener then accepts both (PERMISSIVE).
	ReasonConflictingMTLSModes = "ConflictingMTLSModes"
	ReasonExternalName         = "ExternalNameService"
	ReasonNoEndpointSlices     = "NoEndpointSlices"
	// ReasonRejectedByEnvoy: the proxies NACKed the config built from the object, so
	// bearkong left the object out (see pkg/discovery's quarantine).
	ReasonRejectedByEnvoy = "RejectedByEnvoy"
)

// Diagnostic is a problem with the user's objects that bearkong works around or
// ignores, and reports: in /debug/diagnostics, in the log, and (when Event is set) as a
// Kubernetes Event on the object.
type Diagnostic struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	// Event asks for a Kubernetes Event on the object.
	Event bool `json:"event"`
}

// SortDiagnostics sorts by object, then reason, then message.
func SortDiagnostics(ds []Diagnostic) {
	slices.SortFunc(ds, func(a, b Diagnostic) int {
		for _, c := range [][2]string{{a.Namespace, b.Namespace}, {a.Name, b.Name}, {a.Kind, b.Kind}, {a.Reason, b.Reason}, {a.Message, b.Message}} {
			if n := strings.Compare(c[0], c[1]); n != 0 {
				return n
			}
		}
		return 0
	})
}

// CheckTargetPorts reports the Service ports whose targetPort does not reach the
// sidecar's inbound port. Mesh traffic does not depend on it (bearkong sends it to each
// endpoint's sidecar on InboundPort), but clients that use the Service's cluster IP do:
// a targetPort on the app's port skips the sidecar, and any other port reaches nothing.
// PodPort is what a named targetPort resolves to in one selected pod: the number of the
// container port with that name and protocol, or 0 when the pod declares none. The
// endpoint controller resolves names the same way, pod by pod
// (https://kubernetes.io/docs/concepts/services-networking/service/#field-spec-ports).
type PodPort struct {
	Pod  string
	Port int32
}

// CheckTargetPorts reports the Service ports whose targetPort does not reach the
// sidecar's inbound port. Mesh traffic does not depend on it (bearkong sends it to each
// endpoint's sidecar on InboundPort), but clients that use the Service's cluster IP do:
// a targetPort on the app's port skips the sidecar, and any other port reaches nothing.
//
// A named targetPort is checked like a number once resolved: named returns, for such a
// port, what the name resolves to in each of the Service's pods (nil when there are no
// pods to ask, and then there is nothing to check). Pods may disagree, during a rollout
// for instance: each outcome other than the sidecar gets its own diagnostic.
func CheckTargetPorts(s *Service, named func(ServicePort) []PodPort) []Diagnostic {
	var out []Diagnostic
	for _, p := range s.Ports {
		tp := p.TargetPort
		if tp == "" {
			tp = strconv.Itoa(int(p.Port))
		}
		n, err := strconv.Atoi(tp)
		if err == nil {
			if d, ok := targetPortDiagnostic(s, p, int32(n), strconv.Itoa(n)+","); ok {
				out = append(out, d)
			}
			continue
		}
		if named == nil {
			continue
		}
		// Group the pods by the number the name resolves to, in number order (0, "not
		// declared", first), so that the diagnostics are stable.
		byPort := map[int32][]string{}
		for _, pp := range named(p) {
			byPort[pp.Port] = append(byPort[pp.Port], pp.Pod)
		}
		for _, port := range slices.Sorted(maps.Keys(byPort)) {
			pods := byPort[port]
			slices.Sort(pods)
			which := "pod " + pods[0]
			if len(pods) > 1 {
				which += fmt.Sprintf(" and %d more", len(pods)-1)
			}
			if port == 0 {
				out = append(out, Diagnostic{
					Kind: "Service", Namespace: s.Namespace, Name: s.Name, Reason: ReasonTargetPortMisses,
					Message: fmt.Sprintf("port %d targets %q, but %s declares no container port of that name (protocol %s): clients using the Service's cluster IP reach nothing there; mesh traffic is not affected: bearkong routes it to each ready endpoint's sidecar on port %d; set targetPort: %d to send every client through the sidecar",
						p.Port, tp, which, protocolOrTCP(p.Protocol), InboundPort, InboundPort),
				})
				continue
			}
			if d, ok := targetPortDiagnostic(s, p, port, fmt.Sprintf("%q, which resolves to %d in %s,", tp, port, which)); ok {
				out = append(out, d)
			}
		}
	}
	return out
}

// targetPortDiagnostic judges one resolved targetPort n of port p; target is how the
// message names it.
func targetPortDiagnostic(s *Service, p ServicePort, n int32, target string) (Diagnostic, bool) {
	var reason, why string
	switch n {
	case InboundPort:
		return Diagnostic{}, false
	case AppPort:
		reason = ReasonTargetPortBypasses
		why = "the app's own port: clients using the Service's cluster IP skip the sidecar"
	default:
		reason = ReasonTargetPortMisses
		why = fmt.Sprintf("where neither the sidecar (%d) nor the app (%d) listens: clients using the Service's cluster IP reach nothing", InboundPort, AppPort)
	}
	return Diagnostic{
		Kind: "Service", Namespace: s.Namespace, Name: s.Name, Reason: reason,
		Message: fmt.Sprintf("port %d targets %s %s; mesh traffic is not affected: bearkong routes it to each ready endpoint's sidecar on port %d; set targetPort: %d to send every client through the sidecar",
			p.Port, target, why, InboundPort, InboundPort),
	}, true
}

// protocolOrTCP is a port's protocol, TCP when unset (the API's default).
func protocolOrTCP(p string) string {
	if p == "" {
		return "TCP"
	}
	return p
}

// CheckPolicyConflicts reports Services whose mesh-timeout differs from that of another
// Service selecting some of the same pods. mesh-timeout is applied by the callee's
// inbound route, and a pod has one inbound route for every Service that selects it: a
// request arriving at the sidecar does not say which Service the caller meant. So the pod
// applies the shortest mesh-timeout of its Services to every request (a Service without
// one counts as unlimited), which keeps each Service's promise that no request takes
// longer than its value, and cuts the other Services' requests short. Both sides are
// reported, as a Warning Event too: the one whose requests are cut, and the one whose
// value does the cutting.
func CheckPolicyConflicts(snap *Snapshot) []Diagnostic {
	services := make(map[string]*Service, len(snap.Services))
	for _, s := range snap.Services {
		services[s.Key()] = s
	}
	// others[k] holds the Services that share a pod with k and have another timeout.
	others := map[string]map[string]bool{}
	for _, p := range snap.Proxies {
		for _, a := range p.Services {
			for _, b := range p.Services {
				sa, sb := services[a], services[b]
				if sa == nil || sb == nil || sa.Policy.Timeout == sb.Policy.Timeout {
					continue
				}
				if others[a] == nil {
					others[a] = map[string]bool{}
				}
				others[a][b] = true
			}
		}
	}
	var out []Diagnostic
	for _, k := range slices.Sorted(maps.Keys(others)) {
		s := services[k]
		shortest := s.Policy.Timeout
		var names []string
		for _, o := range slices.Sorted(maps.Keys(others[k])) {
			t := services[o].Policy.Timeout
			names = append(names, fmt.Sprintf("Service %s (%s)", o, describeTimeout(t)))
			if t > 0 && (shortest == 0 || t < shortest) {
				shortest = t
			}
		}
		verb := "selects"
		if len(names) > 1 {
			verb = "select"
		}
		out = append(out, Diagnostic{
			Kind: "Service", Namespace: s.Namespace, Name: s.Name, Reason: ReasonConflictingPolicies, Event: true,
			Message: fmt.Sprintf("%s %s some of the same pods as this Service (%s); a pod's inbound route serves every Service that selects it and cannot tell their requests apart, so it applies the shortest mesh-timeout, %s, to all of them; give the Services separate pods or the same mesh-timeout",
				strings.Join(names, ", "), verb, describeTimeout(s.Policy.Timeout), shortest),
		})
	}
	return out
}

func describeTimeout(t time.Duration) string {
	if t == 0 {
		return "no mesh-timeout"
	}
	return "mesh-timeout " + t.String()
}
