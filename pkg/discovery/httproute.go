package discovery

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// SkipValidationAnnotation, set to "true" on an HTTPRoute, makes bearkong skip its RE2
// program-size check of the route's regexes, so that Envoy gets a regex it will refuse.
// It is honoured only when Options.AllowSkipValidation is set (the hidden
// --unsafe-testing-skip-validation flag of bearkong cp): it exists so that tests can
// drive the NACK path and the quarantine with a real Envoy, and has no other use.
const SkipValidationAnnotation = "bearkong.dev/unsafe-testing-skip-validation"

// ControllerName is how bearkong signs the HTTPRoute parent statuses it writes.
const ControllerName gwv1.GatewayController = "bearkong.dev/mesh"

// routeStatus is the status bearkong wants on one HTTPRoute: one entry per Service
// parentRef.
type routeStatus struct {
	Namespace, Name string
	Generation      int64
	Parents         []parentStatus
}

type parentStatus struct {
	Ref      gwv1.ParentReference
	Accepted metav1.Condition
	Resolved metav1.Condition
}

// isServiceRef reports whether a parentRef names a Service (the GAMMA mesh profile);
// other parents (Gateways) belong to other controllers and are left alone.
func isServiceRef(group *gwv1.Group, kind *gwv1.Kind) bool {
	g := ""
	if group != nil {
		g = string(*group)
	}
	return (g == "" || g == "core") && kind != nil && *kind == "Service"
}

// routeRules turns the HTTPRoutes into rules attached to meshed Services, sorted by the
// Gateway API's precedence, and works out each route's status and diagnostics.
// meshed holds the meshed Services by "namespace/name".
// o may be nil; routes it holds in quarantine are left out.
func routeRules(routes []*gwv1.HTTPRoute, meshed map[string]*mesh.Service, o *buildOptions) (map[string][]mesh.RouteRule, []routeStatus, []mesh.Diagnostic) {
	if o == nil {
		o = &buildOptions{}
	}
	// Oldest first, then by name: the Gateway API's tie-break between routes.
	routes = slices.Clone(routes)
	slices.SortFunc(routes, func(a, b *gwv1.HTTPRoute) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	attached := map[string][]mesh.RouteRule{}
	var statuses []routeStatus
	var diags []mesh.Diagnostic
	for _, rt := range routes {
		skip := o.skipValidation && rt.Annotations[SkipValidationAnnotation] == "true"
		rules, ruleErr := convertRules(rt, skip)
		quarantined := o.held[ObjectRef{KindHTTPRoute, rt.Namespace, rt.Name}]
		resolved := resolveBackends(rt, meshed, rules)
		st := routeStatus{Namespace: rt.Namespace, Name: rt.Name, Generation: rt.Generation}
		for _, ref := range rt.Spec.ParentRefs {
			if !isServiceRef(ref.Group, ref.Kind) {
				continue
			}
			ns := rt.Namespace
			if ref.Namespace != nil {
				ns = string(*ref.Namespace)
			}
			parentKey := ns + "/" + string(ref.Name)
			accepted := condition(gwv1.RouteConditionAccepted, true, gwv1.RouteReasonAccepted, "attached to meshed Service "+parentKey, rt.Generation)
			switch {
			case ns != rt.Namespace:
				accepted = condition(gwv1.RouteConditionAccepted, false, gwv1.RouteReasonNoMatchingParent,
					fmt.Sprintf("parent Service %s is in another namespace; bearkong attaches HTTPRoutes to Services in their own namespace", parentKey), rt.Generation)
			case meshed[parentKey] == nil:
				accepted = condition(gwv1.RouteConditionAccepted, false, gwv1.RouteReasonNoMatchingParent,
					fmt.Sprintf("parent Service %s does not exist or is not meshed (label %s: %s)", parentKey, mesh.MeshedLabel, mesh.MeshedValue), rt.Generation)
			case ruleErr != nil:
				accepted = condition(gwv1.RouteConditionAccepted, false, gwv1.RouteReasonUnsupportedValue, ruleErr.Error(), rt.Generation)
			case quarantined != nil && quarantined.confirmed:
				accepted = condition(gwv1.RouteConditionAccepted, false, gwv1.RouteReasonUnsupportedValue, rejectedMessage(quarantined), rt.Generation)
			case quarantined != nil:
				// A suspect, held back until its turn to be tried again: its status
				// stays as it was; it is either re-admitted or confirmed shortly.
			default:
				attached[parentKey] = append(attached[parentKey], rules...)
			}
			st.Parents = append(st.Parents, parentStatus{Ref: ref, Accepted: accepted, Resolved: resolved})
			if accepted.Status != metav1.ConditionTrue {
				diags = append(diags, mesh.Diagnostic{Kind: "HTTPRoute", Namespace: rt.Namespace, Name: rt.Name, Reason: accepted.Reason, Message: accepted.Message})
			}
		}
		if len(st.Parents) == 0 {
			continue
		}
		if resolved.Status != metav1.ConditionTrue {
			diags = append(diags, mesh.Diagnostic{Kind: "HTTPRoute", Namespace: rt.Namespace, Name: rt.Name, Reason: resolved.Reason, Message: resolved.Message})
		}
		statuses = append(statuses, st)
	}
	for k, rules := range attached {
		slices.SortStableFunc(rules, precedence)
		attached[k] = rules
	}
	return attached, statuses, diags
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func condition(typ gwv1.RouteConditionType, ok bool, reason gwv1.RouteConditionReason, msg string, gen int64) metav1.Condition {
	s := metav1.ConditionFalse
	if ok {
		s = metav1.ConditionTrue
	}
	return metav1.Condition{Type: string(typ), Status: s, Reason: string(reason), Message: msg, ObservedGeneration: gen}
}

// precedence orders rule matches as the Gateway API says: exact paths, then the longest
// prefixes; then a method; then the most headers; then the most query parameters. Ties
// keep their order (older route first, then rule and match order).
func precedence(a, b mesh.RouteRule) int {
	rank := func(r mesh.RouteRule) int {
		switch r.Path.Type {
		case "Exact":
			return 0
		case "RegularExpression":
			return 1
		}
		return 2
	}
	if c := cmp.Compare(rank(a), rank(b)); c != 0 {
		return c
	}
	if c := cmp.Compare(len(b.Path.Value), len(a.Path.Value)); c != 0 {
		return c
	}
	if c := cmp.Compare(b2i(b.Method != ""), b2i(a.Method != "")); c != 0 {
		return c
	}
	if c := cmp.Compare(len(b.Headers), len(a.Headers)); c != 0 {
		return c
	}
	return cmp.Compare(len(b.QueryParams), len(a.QueryParams))
}

// convertRules flattens the route's rules into one mesh.RouteRule per match. Anything
// bearkong cannot honour (filters, invalid regular expressions or durations) makes the
// whole route unaccepted: a half-applied route would route traffic the user did not ask
// for.
//
// skipSize skips the RE2 program-size check (SkipValidationAnnotation, for tests).
func convertRules(rt *gwv1.HTTPRoute, skipSize bool) ([]mesh.RouteRule, error) {
	key := rt.Namespace + "/" + rt.Name
	var out []mesh.RouteRule
	for i, rule := range rt.Spec.Rules {
		if len(rule.Filters) > 0 {
			return nil, fmt.Errorf("rule %d: filters are not supported by bearkong", i)
		}
		base := mesh.RouteRule{Route: key, Rule: i}
		for _, b := range rule.BackendRefs {
			w := int32(1)
			if b.Weight != nil {
				w = *b.Weight
			}
			ns := rt.Namespace
			if b.Namespace != nil {
				ns = string(*b.Namespace)
			}
			base.Backends = append(base.Backends, mesh.Backend{Namespace: ns, Name: string(b.Name), Weight: w})
		}
		if t := rule.Timeouts; t != nil {
			if t.Request != nil {
				d, err := parseGatewayDuration(string(*t.Request))
				if err != nil {
					return nil, fmt.Errorf("rule %d: timeouts.request: %w", i, err)
				}
				base.Timeout, base.TimeoutSet = d, true
			}
			if t.BackendRequest != nil {
				d, err := parseGatewayDuration(string(*t.BackendRequest))
				if err != nil {
					return nil, fmt.Errorf("rule %d: timeouts.backendRequest: %w", i, err)
				}
				base.BackendTimeout = d
			}
		}
		if r := rule.Retry; r != nil {
			if r.Attempts != nil {
				if *r.Attempts < 0 {
					return nil, fmt.Errorf("rule %d: retry.attempts must not be negative", i)
				}
				base.Retry.Attempts = *r.Attempts
			}
			for _, c := range r.Codes {
				base.Retry.Codes = append(base.Retry.Codes, int(c))
			}
			if r.Backoff != nil {
				d, err := parseGatewayDuration(string(*r.Backoff))
				if err != nil {
					return nil, fmt.Errorf("rule %d: retry.backoff: %w", i, err)
				}
				base.Retry.Backoff = d
			}
		}
		matches := rule.Matches
		if len(matches) == 0 {
			matches = []gwv1.HTTPRouteMatch{{}} // no match: every request
		}
		for j, m := range matches {
			r := base
			r.Backends = slices.Clone(base.Backends)
			r.Match = j
			r.Path = mesh.PathMatch{Type: "PathPrefix", Value: "/"}
			if m.Path != nil {
				if m.Path.Type != nil {
					r.Path.Type = string(*m.Path.Type)
				}
				if m.Path.Value != nil {
					r.Path.Value = *m.Path.Value
				}
				if err := checkMatch(r.Path.Type, r.Path.Value, skipSize); err != nil {
					return nil, fmt.Errorf("rule %d match %d: path: %w", i, j, err)
				}
			}
			if m.Method != nil {
				r.Method = string(*m.Method)
			}
			for _, h := range m.Headers {
				typ := "Exact"
				if h.Type != nil {
					typ = string(*h.Type)
				}
				if err := checkMatch(typ, h.Value, skipSize); err != nil {
					return nil, fmt.Errorf("rule %d match %d: header %s: %w", i, j, h.Name, err)
				}
				r.Headers = append(r.Headers, mesh.ValueMatch{Type: typ, Name: string(h.Name), Value: h.Value})
			}
			for _, q := range m.QueryParams {
				typ := "Exact"
				if q.Type != nil {
					typ = string(*q.Type)
				}
				if err := checkMatch(typ, q.Value, skipSize); err != nil {
					return nil, fmt.Errorf("rule %d match %d: query parameter %s: %w", i, j, q.Name, err)
				}
				r.QueryParams = append(r.QueryParams, mesh.ValueMatch{Type: typ, Name: string(q.Name), Value: q.Value})
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// checkMatch rejects what Envoy would reject, so that a bad route is reported on the
// route instead of being NACKed by every proxy.
func checkMatch(typ, value string, skipSize bool) error {
	switch typ {
	case "Exact", "PathPrefix":
		return nil
	case "RegularExpression":
		if skipSize {
			if _, err := mesh.RegexProgramSize(value); err != nil {
				return fmt.Errorf("invalid regular expression %q: %v", value, err)
			}
			return nil
		}
		// Envoy compiles regexes with RE2 and refuses programs above the size the
		// sidecar bootstrap allows; mesh.CheckRegex measures the size the way RE2 does.
		return mesh.CheckRegex(value)
	}
	return fmt.Errorf("match type %q is not supported", typ)
}

// parseGatewayDuration parses a Gateway API duration (GEP-2257: "1h", "10s", "500ms").
func parseGatewayDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid duration %q", s)
	}
	return d, nil
}

// resolveBackends checks every backendRef of the route and marks the rules' backends
// valid or not. It returns the ResolvedRefs condition.
func resolveBackends(rt *gwv1.HTTPRoute, meshed map[string]*mesh.Service, rules []mesh.RouteRule) metav1.Condition {
	var problems []string
	reason := gwv1.RouteReasonResolvedRefs
	fail := func(r gwv1.RouteConditionReason, msg string) {
		if reason == gwv1.RouteReasonResolvedRefs {
			reason = r
		}
		problems = append(problems, msg)
	}
	valid := map[string]bool{}
	for _, rule := range rt.Spec.Rules {
		for _, b := range rule.BackendRefs {
			ns := rt.Namespace
			if b.Namespace != nil {
				ns = string(*b.Namespace)
			}
			key := ns + "/" + string(b.Name)
			if _, done := valid[key]; done {
				continue
			}
			kind := gwv1.Kind("Service") // the API's default
			if b.Kind != nil {
				kind = *b.Kind
			}
			valid[key] = false
			switch {
			case !isServiceRef(b.Group, &kind):
				fail(gwv1.RouteReasonInvalidKind, fmt.Sprintf("backendRef %s is a %s, not a Service", key, kind))
			case ns != rt.Namespace:
				fail(gwv1.RouteReasonRefNotPermitted, fmt.Sprintf("backendRef %s is in another namespace (ReferenceGrants are not supported)", key))
			case meshed[key] == nil:
				fail(gwv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef %s: no meshed Service of that name (label %s: %s)", key, mesh.MeshedLabel, mesh.MeshedValue))
			default:
				valid[key] = true
			}
		}
	}
	for i := range rules {
		for j, b := range rules[i].Backends {
			rules[i].Backends[j].Valid = valid[b.Key()]
		}
	}
	if len(problems) == 0 {
		return condition(gwv1.RouteConditionResolvedRefs, true, gwv1.RouteReasonResolvedRefs, "all backendRefs are meshed Services", rt.Generation)
	}
	return condition(gwv1.RouteConditionResolvedRefs, false, reason, strings.Join(problems, "; "), rt.Generation)
}
