package mesh

import (
	"fmt"
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
)

// Policy is a Service's mesh policy, parsed and validated. The zero value is the
// default: no policy.
type Policy struct {
	// Timeout is the inbound request timeout; 0 means Envoy's default (15s).
	Timeout time.Duration
	// Outlier detection; zero fields keep Envoy's defaults.
	Outlier OutlierDetection
	// Circuit-breaker thresholds; 0 keeps Envoy's default.
	MaxConnections, MaxPendingRequests, MaxRequests uint32
}

// OutlierDetection configures ejection of failing endpoints.
type OutlierDetection struct {
	Enabled            bool
	Consecutive5xx     uint32
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionPercent uint32
}

// policyField is one annotation: how to parse it into a Policy, and how to keep the last
// good value when the new one is invalid.
type policyField struct {
	key   string
	parse func(value string, p *Policy) error
	keep  func(dst *Policy, prev Policy)
}

// durationField and intField build the usual kinds of field.
func durationField(key string, max time.Duration, set func(*Policy) *time.Duration, outlier bool) policyField {
	return policyField{
		key: key,
		parse: func(v string, p *Policy) error {
			d, err := parseDuration(v, 0, max)
			*set(p) = d
			if err == nil && outlier {
				p.Outlier.Enabled = true
			}
			return err
		},
		keep: func(dst *Policy, prev Policy) {
			*set(dst) = *set(&prev)
			if outlier && prev.Outlier.Enabled {
				dst.Outlier.Enabled = true
			}
		},
	}
}

func intField(key string, min, max uint32, set func(*Policy) *uint32, outlier bool) policyField {
	return policyField{
		key: key,
		parse: func(v string, p *Policy) error {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil {
				return fmt.Errorf("not a whole number")
			}
			if uint32(n) < min || uint32(n) > max || n > uint64(max) {
				return fmt.Errorf("must be from %d to %d", min, max)
			}
			*set(p) = uint32(n)
			if outlier {
				p.Outlier.Enabled = true
			}
			return nil
		},
		keep: func(dst *Policy, prev Policy) {
			*set(dst) = *set(&prev)
			if outlier && prev.Outlier.Enabled {
				dst.Outlier.Enabled = true
			}
		},
	}
}

var policyFields = []policyField{
	durationField(AnnotationOutlierInterval, time.Hour, func(p *Policy) *time.Duration { return &p.Outlier.Interval }, true),
	durationField(AnnotationOutlierBaseEjectionTime, time.Hour, func(p *Policy) *time.Duration { return &p.Outlier.BaseEjectionTime }, true),
	intField(AnnotationOutlierConsecutive5xx, 1, 1000, func(p *Policy) *uint32 { return &p.Outlier.Consecutive5xx }, true),
	intField(AnnotationOutlierMaxEjectionPercent, 1, 100, func(p *Policy) *uint32 { return &p.Outlier.MaxEjectionPercent }, true),
	intField(AnnotationMaxConnections, 1, 1000000, func(p *Policy) *uint32 { return &p.MaxConnections }, false),
	intField(AnnotationMaxPendingRequests, 1, 1000000, func(p *Policy) *uint32 { return &p.MaxPendingRequests }, false),
	intField(AnnotationMaxRequests, 1, 1000000, func(p *Policy) *uint32 { return &p.MaxRequests }, false),
	{
		key: AnnotationTimeout,
		parse: func(v string, p *Policy) error {
			d, err := parseDuration(v, 0, MaxTimeout)
			p.Timeout = d
			return err
		},
		keep: func(dst *Policy, prev Policy) { dst.Timeout = prev.Timeout },
	},
}

// KnownAnnotations lists the policy annotations bearkong understands, sorted.
func KnownAnnotations() []string {
	out := make([]string, 0, len(policyFields))
	for _, f := range policyFields {
		out = append(out, f.key)
	}
	slices.Sort(out)
	return out
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

// ParsePolicy reads a Service's mesh annotations (as kept in Service.Annotations). An
// invalid or unknown annotation yields a Diagnostic, and the invalid field keeps its
// value from prev, the Service's last good policy: a typo must not undo a working
// config. A removed annotation goes back to the default.
func ParsePolicy(namespace, name string, annotations map[string]string, prev Policy) (Policy, []Diagnostic) {
	var p Policy
	var diags []Diagnostic
	known := map[string]bool{}
	for _, f := range policyFields {
		known[f.key] = true
		v, ok := annotations[f.key]
		if !ok {
			continue
		}
		if err := f.parse(v, &p); err != nil {
			f.keep(&p, prev)
			diags = append(diags, Diagnostic{
				Kind: "Service", Namespace: namespace, Name: name, Reason: ReasonInvalidAnnotation, Event: true,
				Message: fmt.Sprintf("annotation %s=%q is invalid: %v; keeping the last valid value (%s)", f.key, v, err, describe(f.key, p)),
			})
		}
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

// describe renders the value of one field for messages.
func describe(key string, p Policy) string {
	var v any
	switch key {
	case AnnotationTimeout:
		v = p.Timeout
	case AnnotationOutlierInterval:
		v = p.Outlier.Interval
	case AnnotationOutlierBaseEjectionTime:
		v = p.Outlier.BaseEjectionTime
	case AnnotationOutlierConsecutive5xx:
		v = p.Outlier.Consecutive5xx
	case AnnotationOutlierMaxEjectionPercent:
		v = p.Outlier.MaxEjectionPercent
	case AnnotationMaxConnections:
		v = p.MaxConnections
	case AnnotationMaxPendingRequests:
		v = p.MaxPendingRequests
	case AnnotationMaxRequests:
		v = p.MaxRequests
	}
	switch x := v.(type) {
	case time.Duration:
		if x == 0 {
			return "none: the default"
		}
		return x.String()
	case uint32:
		if x == 0 {
			return "none: the default"
		}
		return strconv.FormatUint(uint64(x), 10)
	}
	return "?"
}

// Diagnostic reasons.
const (
	ReasonInvalidAnnotation   = "InvalidAnnotation"
	ReasonUnknownAnnotation   = "UnknownAnnotation"
	ReasonTargetPortBypasses  = "TargetPortBypassesSidecar"
	ReasonTargetPortMisses    = "TargetPortMissesSidecar"
	ReasonConflictingPolicies = "ConflictingPolicies"
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
func CheckTargetPorts(s *Service) []Diagnostic {
	var out []Diagnostic
	for _, p := range s.Ports {
		tp := p.TargetPort
		if tp == "" {
			tp = strconv.Itoa(int(p.Port))
		}
		n, err := strconv.Atoi(tp)
		if err != nil {
			continue // a named port resolves per pod; nothing to check here
		}
		var reason, why string
		switch n {
		case InboundPort:
			continue
		case AppPort:
			reason = ReasonTargetPortBypasses
			why = "the app's own port: clients using the Service's cluster IP skip the sidecar"
		default:
			reason = ReasonTargetPortMisses
			why = fmt.Sprintf("where neither the sidecar (%d) nor the app (%d) listens: clients using the Service's cluster IP reach nothing", InboundPort, AppPort)
		}
		out = append(out, Diagnostic{
			Kind: "Service", Namespace: s.Namespace, Name: s.Name, Reason: reason,
			Message: fmt.Sprintf("port %d targets %d, %s; mesh traffic is not affected: bearkong routes it to each ready endpoint's sidecar on port %d; set targetPort: %d to send every client through the sidecar",
				p.Port, n, why, InboundPort, InboundPort),
		})
	}
	return out
}
