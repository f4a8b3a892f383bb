package discovery

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

func httpRoute(name, parent string, created int, rules ...gwv1.HTTPRouteRule) *gwv1.HTTPRoute {
	kind := gwv1.Kind("Service")
	return &gwv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name, Generation: 3, CreationTimestamp: metav1.NewTime(time.Unix(int64(created), 0))},
		Spec: gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{Kind: &kind, Name: gwv1.ObjectName(parent)}}},
			Rules:           rules,
		},
	}
}

func backend(name string, weight int32) gwv1.HTTPBackendRef {
	return gwv1.HTTPBackendRef{BackendRef: gwv1.BackendRef{BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name)}, Weight: &weight}}
}

func ptrTo[T any](v T) *T { return &v }

func TestRouteRules(t *testing.T) {
	meshed := map[string]*mesh.Service{
		"a/app-3":    {Namespace: "a", Name: "app-3"},
		"a/app-3-v1": {Namespace: "a", Name: "app-3-v1"},
		"a/app-3-v2": {Namespace: "a", Name: "app-3-v2"},
	}
	exact := gwv1.PathMatchExact
	headerMatch := gwv1.HTTPRouteMatch{Headers: []gwv1.HTTPHeaderMatch{{Name: "x-version", Value: "v2"}}}

	t.Run("a canary split attaches, resolved, in precedence order", func(t *testing.T) {
		rt := httpRoute("split", "app-3", 1,
			gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("app-3-v1", 80), backend("app-3-v2", 20)},
				Timeouts: &gwv1.HTTPRouteTimeouts{Request: ptrTo(gwv1.Duration("1s"))},
				Retry:    &gwv1.HTTPRouteRetry{Attempts: ptrTo(5), Codes: []gwv1.HTTPRouteRetryStatusCode{503}, Backoff: ptrTo(gwv1.Duration("25ms"))}},
			gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{headerMatch}, BackendRefs: []gwv1.HTTPBackendRef{backend("app-3-v2", 1)}},
			gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{Type: &exact, Value: ptrTo("/healthz")}}}, BackendRefs: []gwv1.HTTPBackendRef{backend("app-3-v1", 1)}},
		)
		rules, statuses, diags := routeRules([]*gwv1.HTTPRoute{rt}, meshed, nil)
		got := rules["a/app-3"]
		if len(got) != 3 || len(diags) != 0 {
			t.Fatalf("rules %+v, diagnostics %+v", got, diags)
		}
		// Exact path first, then the header match, then the catch-all split.
		if got[0].Rule != 2 || got[1].Rule != 1 || got[2].Rule != 0 {
			t.Fatalf("order: %d %d %d", got[0].Rule, got[1].Rule, got[2].Rule)
		}
		split := got[2]
		if len(split.Backends) != 2 || split.Backends[0].Weight != 80 || !split.Backends[0].Valid || !split.TimeoutSet || split.Timeout != time.Second ||
			split.Retry.Attempts != 5 || split.Retry.Codes[0] != 503 || split.Retry.Backoff != 25*time.Millisecond {
			t.Fatalf("split rule: %+v", split)
		}
		if len(statuses) != 1 || len(statuses[0].Parents) != 1 || statuses[0].Parents[0].Accepted.Status != metav1.ConditionTrue ||
			statuses[0].Parents[0].Resolved.Status != metav1.ConditionTrue || statuses[0].Parents[0].Accepted.ObservedGeneration != 3 {
			t.Fatalf("status: %+v", statuses)
		}
	})

	cases := []struct {
		name         string
		route        *gwv1.HTTPRoute
		attached     bool
		accepted     string // reason
		resolved     string // reason
		invalidNamed string
	}{
		{"a missing backend", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("app-3-v1", 90), backend("nope", 10)}}),
			true, "Accepted", "BackendNotFound", "nope"},
		{"a parent that is not meshed", httpRoute("r", "plain", 1, gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("app-3-v1", 1)}}),
			false, "NoMatchingParent", "ResolvedRefs", ""},
		{"filters are not supported", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{Filters: []gwv1.HTTPRouteFilter{{Type: gwv1.HTTPRouteFilterRequestHeaderModifier}}}),
			false, "UnsupportedValue", "ResolvedRefs", ""},
		{"an invalid regular expression", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{Type: ptrTo(gwv1.PathMatchRegularExpression), Value: ptrTo("/(")}}}}),
			false, "UnsupportedValue", "ResolvedRefs", ""},
		// Valid for Go's regexp, but over the RE2 program size every sidecar allows.
		{"a regular expression over the RE2 program-size limit", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{Type: ptrTo(gwv1.PathMatchRegularExpression), Value: ptrTo("/[a-z0-9-]{1,400}")}}}}),
			false, "UnsupportedValue", "ResolvedRefs", ""},
		{"a header regular expression over the limit", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{{Headers: []gwv1.HTTPHeaderMatch{{Type: ptrTo(gwv1.HeaderMatchRegularExpression), Name: "x-id", Value: `\pL{1,20}`}}}}}),
			false, "UnsupportedValue", "ResolvedRefs", ""},
		{"a query regular expression over the limit", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{{}, {QueryParams: []gwv1.HTTPQueryParamMatch{{Type: ptrTo(gwv1.QueryParamMatchRegularExpression), Name: "q", Value: ".{1,200}"}}}}}),
			false, "UnsupportedValue", "ResolvedRefs", ""},
		{"a regular expression under the limit", httpRoute("r", "app-3", 1, gwv1.HTTPRouteRule{Matches: []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{Type: ptrTo(gwv1.PathMatchRegularExpression), Value: ptrTo("/[a-z0-9-]{1,64}")}}}, BackendRefs: []gwv1.HTTPBackendRef{backend("app-3-v1", 1)}}),
			true, "Accepted", "ResolvedRefs", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rules, statuses, diags := routeRules([]*gwv1.HTTPRoute{c.route}, meshed, nil)
			if _, ok := rules["a/app-3"]; ok != c.attached {
				t.Fatalf("attached = %v, want %v", ok, c.attached)
			}
			p := statuses[0].Parents[0]
			if p.Accepted.Reason != c.accepted || p.Resolved.Reason != c.resolved {
				t.Fatalf("conditions %+v / %+v", p.Accepted, p.Resolved)
			}
			if strings.Contains(c.name, "over the") && (!strings.Contains(p.Accepted.Message, "rule 0 match") || !strings.Contains(p.Accepted.Message, "over the limit of 1000")) {
				t.Fatalf("message %q does not name the match and the size against the limit", p.Accepted.Message)
			}
			if c.accepted != "Accepted" || c.resolved != "ResolvedRefs" {
				if len(diags) == 0 || diags[0].Kind != "HTTPRoute" {
					t.Fatalf("diagnostics %+v", diags)
				}
			}
			if c.invalidNamed != "" {
				if !strings.Contains(p.Resolved.Message, c.invalidNamed) {
					t.Fatalf("message %q does not name %s", p.Resolved.Message, c.invalidNamed)
				}
				for _, b := range rules["a/app-3"][0].Backends {
					if (b.Name == c.invalidNamed) == b.Valid {
						t.Fatalf("backend %+v", b)
					}
				}
			}
		})
	}
}
