package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// Blast radius: one HTTPRoute must not freeze routing for the whole mesh. Every proxy
// shares the outbound route configuration, so a route Envoy rejects would be NACKed by
// every proxy, and no later routing change would reach anyone.

// overLimitRegex is valid for Go's regexp, but its RE2 program (1604 instructions) is
// over the limit bearkong sets in every sidecar (mesh.RegexMaxProgramSize).
const overLimitRegex = "/[a-z0-9-]{1,400}"

// regexRoute is an HTTPRoute on parent whose only rule matches overLimitRegex.
func regexRoute(name, parent string, annotations map[string]string) *gwv1.HTTPRoute {
	regex := gwv1.PathMatchRegularExpression
	return &gwv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Annotations: annotations},
		Spec: gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{Group: (*gwv1.Group)(new(string)), Kind: kind("Service"), Name: gwv1.ObjectName(parent)}}},
			Rules: []gwv1.HTTPRouteRule{{
				Matches:     []gwv1.HTTPRouteMatch{{Path: &gwv1.HTTPPathMatch{Type: &regex, Value: ptr(overLimitRegex)}}},
				BackendRefs: []gwv1.HTTPBackendRef{backendRef(parent, 1)},
			}},
		},
	}
}

func createRoute(t *testing.T, rt *gwv1.HTTPRoute) {
	t.Helper()
	gw := gateway(t)
	if _, err := gw.GatewayV1().HTTPRoutes("default").Create(ctxT(t, 10*time.Second), rt, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = gw.GatewayV1().HTTPRoutes("default").Delete(context.Background(), rt.Name, metav1.DeleteOptions{})
	})
}

// acceptedCondition returns bearkong's Accepted condition on the route for parent.
func acceptedCondition(ctx context.Context, t *testing.T, name, parent string) (metav1.Condition, error) {
	rt, err := gateway(t).GatewayV1().HTTPRoutes("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return metav1.Condition{}, err
	}
	for _, p := range rt.Status.Parents {
		if p.ControllerName != discovery.ControllerName || string(p.ParentRef.Name) != parent {
			continue
		}
		for _, c := range p.Conditions {
			if c.Type == string(gwv1.RouteConditionAccepted) && c.ObservedGeneration == rt.Generation {
				return c, nil
			}
		}
	}
	return metav1.Condition{}, fmt.Errorf("no Accepted condition from bearkong for generation %d in %+v", rt.Generation, rt.Status.Parents)
}

func nacks(mt map[string]float64) float64 {
	n := 0.0
	for _, typ := range resource.Types {
		n += mt[`bearkong_xds_nack_total{type="`+typ.String()+`"}`]
	}
	return n
}

// reachableFromEveryPod waits until every pod of the mesh gets a 200 from service to.
func reachableFromEveryPod(t *testing.T, m *localmesh.Mesh, to string) {
	t.Helper()
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		for _, p := range m.Pods() {
			status, name, _, err := get(ctx, m, p.Name, to, "/")
			if err != nil || status != 200 || name != to {
				return fmt.Errorf("from %s to %s: %d %q %v", p.Name, to, status, name, err)
			}
		}
		return nil
	})
}

// TestRegexOverLimitIsRefused: bearkong refuses the route itself, with a reason on the
// route; no proxy ever sees it, and the mesh keeps converging.
func TestRegexOverLimitIsRefused(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	before := nacks(cpMetrics(t, m))
	withService(t, m, "regexy", nil, map[string]string{})
	createRoute(t, regexRoute("regexy", "regexy", nil))

	eventually(t, 20*time.Second, func(ctx context.Context) error {
		c, err := acceptedCondition(ctx, t, "regexy", "regexy")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.Reason != string(gwv1.RouteReasonUnsupportedValue) ||
			!strings.Contains(c.Message, "rule 0 match 0: path") || !strings.Contains(c.Message, fmt.Sprintf("over the limit of %d", mesh.RegexMaxProgramSize)) {
			return fmt.Errorf("Accepted: %+v", c)
		}
		return nil
	})

	// A Service created afterwards is routable from every pod, and no proxy NACKed.
	withService(t, m, "after-regex", nil, map[string]string{})
	reachableFromEveryPod(t, m, "after-regex")
	waitAllSynced(t, m)
	if after := nacks(cpMetrics(t, m)); after != before {
		t.Fatalf("bearkong_xds_nack_total moved %v -> %v: a proxy rejected config", before, after)
	}
}

// TestNACKedRouteIsQuarantined: with bearkong's own check skipped, the route reaches the
// proxies and every one of them rejects it. bearkong names the route in its status,
// builds the next config without it (every proxy ends SYNCED), and later changes keep
// converging and routing. Fixing the route lifts the quarantine.
func TestNACKedRouteIsQuarantined(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	before := cpMetrics(t, m)
	withService(t, m, "blasted", nil, map[string]string{})
	withService(t, m, "blasted-v2", nil, map[string]string{})
	rejectedBefore := rejectedStats(t, m)
	created := time.Now()
	createRoute(t, regexRoute("blasted-bad", "blasted", map[string]string{discovery.SkipValidationAnnotation: "true"}))

	eventually(t, 30*time.Second, func(ctx context.Context) error {
		c, err := acceptedCondition(ctx, t, "blasted-bad", "blasted")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionFalse || c.Reason != string(gwv1.RouteReasonUnsupportedValue) ||
			!strings.HasPrefix(c.Message, "Envoy rejected the configuration built from this route: ") || !strings.Contains(c.Message, "RE2 program size") {
			return fmt.Errorf("Accepted: %+v", c)
		}
		return nil
	})
	// Every proxy ends SYNCED on every type, without the route.
	waitAllSynced(t, m)
	expectRejected(rejectedBefore, rejectedStats(t, m))
	mt := cpMetrics(t, m)
	if nacks(mt) <= nacks(before) {
		t.Fatalf("no NACK counted: the route never reached the proxies (%v -> %v)", nacks(before), nacks(mt))
	}
	if got := mt["bearkong_quarantined_objects"]; got != 1 {
		t.Fatalf("bearkong_quarantined_objects = %v, want 1", got)
	}
	t.Logf("%d proxies NACKed %v times; route quarantined and every proxy SYNCED %s after the route was created",
		len(m.Pods()), nacks(mt)-nacks(before), time.Since(created).Round(time.Millisecond))
	b, err := m.ControlPlaneGet(ctxT(t, 10*time.Second), "/debug/diagnostics?name=blasted-bad")
	if err != nil {
		t.Fatal(err)
	}
	var diags struct {
		Diagnostics []mesh.Diagnostic `json:"diagnostics"`
	}
	if err := json.Unmarshal(b, &diags); err != nil || len(diags.Diagnostics) == 0 || !strings.Contains(diags.Diagnostics[0].Message, "Envoy rejected") {
		t.Fatalf("/debug/diagnostics?name=blasted-bad: %s (%v)", b, err)
	}

	// Later changes converge and route: a new Service, and another HTTPRoute.
	withService(t, m, "after-blast", nil, map[string]string{})
	reachableFromEveryPod(t, m, "after-blast")
	withRoute(t, "blasted-good", "blasted", gwv1.HTTPRouteRule{
		Matches:     []gwv1.HTTPRouteMatch{{Headers: []gwv1.HTTPHeaderMatch{{Name: "x-version", Value: "v2"}}}},
		BackendRefs: []gwv1.HTTPBackendRef{backendRef("blasted-v2", 1)},
	})
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		for _, p := range m.Pods() {
			status, name, _, err := get(ctx, m, p.Name, "blasted", "/", "x-version", "v2")
			if err != nil || status != 200 || name != "blasted-v2" {
				return fmt.Errorf("from %s, x-version: v2: %d %q %v", p.Name, status, name, err)
			}
		}
		return nil
	})
	waitAllSynced(t, m)

	// Fixing the route (a new generation) lifts the quarantine.
	gw := gateway(t)
	rt, err := gw.GatewayV1().HTTPRoutes("default").Get(ctxT(t, 10*time.Second), "blasted-bad", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt.Spec.Rules[0].Matches[0].Path.Value = ptr("/v[0-9]+/.*")
	if _, err := gw.GatewayV1().HTTPRoutes("default").Update(ctxT(t, 10*time.Second), rt, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		c, err := acceptedCondition(ctx, t, "blasted-bad", "blasted")
		if err != nil {
			return err
		}
		if c.Status != metav1.ConditionTrue {
			return fmt.Errorf("Accepted after the fix: %+v", c)
		}
		status, name, _, err := get(ctx, m, "app-1-0", "blasted", "/v1/x")
		if err != nil || status != 200 || name != "blasted" {
			return fmt.Errorf("/v1/x: %d %q %v", status, name, err)
		}
		return nil
	})
	waitAllSynced(t, m)
	if got := cpMetrics(t, m)["bearkong_quarantined_objects"]; got != 0 {
		t.Fatalf("bearkong_quarantined_objects = %v after the fix, want 0", got)
	}
}

// rejectedStats reads every pod's Envoy update_rejected counters.
func rejectedStats(t *testing.T, m *localmesh.Mesh) map[string]map[string]int {
	t.Helper()
	out := map[string]map[string]int{}
	for _, p := range m.Pods() {
		st, err := m.EnvoyStats(ctxT(t, 10*time.Second), p.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[p.Name] = map[string]int{}
		for name, v := range st {
			if strings.HasSuffix(name, ".update_rejected") {
				out[p.Name][name] = int(v)
			}
		}
	}
	return out
}

// expectRejected records the rejections between two rejectedStats readings as caused on
// purpose (see shared.rejected).
func expectRejected(before, after map[string]map[string]int) {
	shared.rejectedMu.Lock()
	defer shared.rejectedMu.Unlock()
	if shared.rejected == nil {
		shared.rejected = map[string]map[string]int{}
	}
	for pod, st := range after {
		for name, v := range st {
			if d := v - before[pod][name]; d > 0 {
				if shared.rejected[pod] == nil {
					shared.rejected[pod] = map[string]int{}
				}
				shared.rejected[pod][name] += d
			}
		}
	}
}

// expectedRejected returns how many rejections of stat on pod tests caused on purpose.
func expectedRejected(pod, stat string) int {
	shared.rejectedMu.Lock()
	defer shared.rejectedMu.Unlock()
	return shared.rejected[pod][stat]
}
