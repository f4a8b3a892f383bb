package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Traffic management from Gateway API HTTPRoutes attached to meshed Services (GAMMA),
// and destination policy from Service annotations.

func gateway(t *testing.T) gwclient.Interface {
	t.Helper()
	c, err := gwclient.NewForConfig(shared.env.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// withService adds a meshed Service with pods (each with its own demo-app env) and
// removes them at the end of the test.
func withService(t *testing.T, m *localmesh.Mesh, name string, annotations map[string]string, envs ...map[string]string) {
	t.Helper()
	ctx := ctxT(t, 60*time.Second)
	if err := m.AddService(ctx, name, localmesh.ServiceOptions{Annotations: annotations}); err != nil {
		t.Fatal(err)
	}
	var pods []string
	t.Cleanup(func() {
		before := cdsVersions(m)
		for _, p := range pods {
			_ = m.RemovePod(context.Background(), p, false)
		}
		_ = m.DeleteService(context.Background(), name)
		// Wait until the deletion has reached every proxy (its CDS changes): the next
		// test must not take it for one of its own changes (TestNoOpChangesSendNothing
		// right after TestClusterPolicyChangeReachesEnvoy saw its pushes). Bounded short:
		// a Service a test took out of the mesh changes nothing when deleted.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := localmesh.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			after := cdsVersions(m)
			for node, v := range before {
				if a, ok := after[node]; ok && a == v {
					return fmt.Errorf("%s still has CDS version %s", node, v)
				}
			}
			return nil
		}); err != nil {
			t.Logf("deleting Service %s: %v", name, err)
		}
	})
	for _, env := range envs {
		p, err := m.AddPod(ctx, name, localmesh.PodOptions{Env: env})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p.Name)
	}
}

// cdsVersions returns the CDS version each stream has sent and its proxy ACKed, by node;
// a stream that is not synced on CDS is left out.
func cdsVersions(m *localmesh.Mesh) map[string]string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ss, err := streams(ctx, m)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, s := range ss {
		if s.Types.CDS.Status == ads.Synced && s.Types.CDS.VersionAcked == s.Types.CDS.VersionSent {
			out[s.Node] = s.Types.CDS.VersionSent
		}
	}
	return out
}

func kind(k string) *gwv1.Kind { return (*gwv1.Kind)(&k) }

func backendRef(name string, weight int32) gwv1.HTTPBackendRef {
	port := gwv1.PortNumber(9090)
	return gwv1.HTTPBackendRef{BackendRef: gwv1.BackendRef{
		BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: &port},
		Weight:                 &weight,
	}}
}

// withRoute creates an HTTPRoute attached to the Service parent, deleted at the end of
// the test unless the test deletes it first.
func withRoute(t *testing.T, name, parent string, rules ...gwv1.HTTPRouteRule) {
	t.Helper()
	gw := gateway(t)
	rt := &gwv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{Group: (*gwv1.Group)(new(string)), Kind: kind("Service"), Name: gwv1.ObjectName(parent)}}},
			Rules:           rules,
		},
	}
	if _, err := gw.GatewayV1().HTTPRoutes("default").Create(ctxT(t, 10*time.Second), rt, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = gw.GatewayV1().HTTPRoutes("default").Delete(context.Background(), name, metav1.DeleteOptions{})
	})
}

// get makes one request from a pod's outbound listener to a service, with extra headers,
// and returns the status and the name of the service that answered (from the body).
func get(ctx context.Context, m *localmesh.Mesh, from, to, path string, headers ...string) (int, string, time.Duration, error) {
	p, ok := m.Pod(from)
	if !ok {
		return 0, "", 0, fmt.Errorf("no pod %s", from)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(p.OutboundURL(), "/")+path, nil)
	req.Header.Set(mesh.ServiceHeader, to)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", time.Since(start), err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	took := time.Since(start)
	a, err := localmesh.ParseAnswer(body)
	if err != nil {
		return resp.StatusCode, strings.TrimSpace(string(body)), took, nil
	}
	return resp.StatusCode, a.Name, took, nil
}

// tally makes n requests and counts "status name" outcomes.
func tally(t *testing.T, m *localmesh.Mesh, n int, from, to string, headers ...string) map[string]int {
	t.Helper()
	ctx := ctxT(t, 2*time.Minute)
	out := map[string]int{}
	for range n {
		status, name, _, err := get(ctx, m, from, to, "/", headers...)
		if err != nil {
			t.Fatal(err)
		}
		out[fmt.Sprintf("%d %s", status, name)]++
	}
	return out
}

// eventually retries check for up to d.
func eventually(t *testing.T, d time.Duration, check func(ctx context.Context) error) {
	t.Helper()
	if err := localmesh.Eventually(ctxT(t, d+10*time.Second), d, check); err != nil {
		t.Fatal(err)
	}
}

func TestCanarySplitAndHeaderMatch(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "shop", nil, map[string]string{})
	withService(t, m, "shop-v1", nil, map[string]string{})
	withService(t, m, "shop-v2", nil, map[string]string{})
	withRoute(t, "shop", "shop",
		gwv1.HTTPRouteRule{
			Matches:     []gwv1.HTTPRouteMatch{{Headers: []gwv1.HTTPHeaderMatch{{Name: "x-version", Value: "v2"}}}},
			BackendRefs: []gwv1.HTTPBackendRef{backendRef("shop-v2", 1)},
		},
		gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backendRef("shop-v1", 80), backendRef("shop-v2", 20)}},
	)
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		if _, name, _, err := get(ctx, m, "app-1-0", "shop", "/", "x-version", "v2"); err != nil || name != "shop-v2" {
			return fmt.Errorf("header route not in force yet: %q %v", name, err)
		}
		return nil
	})

	split := tally(t, m, 1000, "app-1-0", "shop")
	v1, v2 := split["200 shop-v1"], split["200 shop-v2"]
	if v1+v2 != 1000 {
		t.Fatalf("split: %v", split)
	}
	if v2 < 160 || v2 > 240 {
		t.Fatalf("80/20 split: shop-v2 got %d of 1000, want 200 ± 40 (%v)", v2, split)
	}
	t.Logf("80/20 split over 1000 requests: %v", split)

	header := tally(t, m, 200, "app-2-0", "shop", "x-version", "v2")
	if header["200 shop-v2"] != 200 {
		t.Fatalf("x-version: v2: %v, want all 200 to shop-v2", header)
	}

	// Deleting the HTTPRoute restores plain routing to the parent Service.
	if err := gateway(t).GatewayV1().HTTPRoutes("default").Delete(ctxT(t, 10*time.Second), "shop", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		got := tally(t, m, 20, "app-1-0", "shop", "x-version", "v2")
		if got["200 shop"] != 20 {
			return fmt.Errorf("after deleting the HTTPRoute: %v, want shop itself", got)
		}
		return nil
	})
}

func TestRetries(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "flaky", nil, map[string]string{"ERROR_RATE": "0.5", "ERROR_CODE": "503", "ERROR_PATTERN": "even"})
	if err := m.WaitReachable(ctxT(t, 30*time.Second), 20*time.Second, "app-1-0", "flaky"); err != nil {
		t.Fatal(err)
	}
	without := tally(t, m, 200, "app-1-0", "flaky")
	if ok := without["200 flaky"]; ok < 80 || ok > 120 {
		t.Fatalf("without retries: %v, want about half 200", without)
	}
	stats0, err := m.EnvoyStats(ctxT(t, 10*time.Second), "app-1-0")
	if err != nil {
		t.Fatal(err)
	}
	attempts := 5
	withRoute(t, "flaky", "flaky", gwv1.HTTPRouteRule{
		BackendRefs: []gwv1.HTTPBackendRef{backendRef("flaky", 1)},
		Retry:       &gwv1.HTTPRouteRetry{Attempts: &attempts, Codes: []gwv1.HTTPRouteRetryStatusCode{503}, Backoff: ptr(gwv1.Duration("10ms"))},
	})
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		got := tally(t, m, 10, "app-1-0", "flaky")
		if got["200 flaky"] != 10 {
			return fmt.Errorf("retries not in force yet: %v", got)
		}
		return nil
	})
	with := tally(t, m, 500, "app-1-0", "flaky")
	if ok := with["200 flaky"]; ok < 495 {
		t.Fatalf("with 5 retries on 503: %v, want at least 99%% of 500 to succeed", with)
	}
	stats1, err := m.EnvoyStats(ctxT(t, 10*time.Second), "app-1-0")
	if err != nil {
		t.Fatal(err)
	}
	retries := stats1["cluster.default/flaky.upstream_rq_retry"] - stats0["cluster.default/flaky.upstream_rq_retry"]
	if retries < 200 {
		t.Fatalf("Envoy counted %d retries (cluster.default/flaky.upstream_rq_retry), want about one per request", retries)
	}
	t.Logf("without retries %v; with retries %v; Envoy retries %d", without, with, retries)
}

func ptr[T any](v T) *T { return &v }

func TestOutlierDetection(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "ejecty", map[string]string{
		mesh.AnnotationOutlierConsecutive5xx:     "3",
		mesh.AnnotationOutlierMaxEjectionPercent: "50",
		mesh.AnnotationOutlierBaseEjectionTime:   "5m",
		mesh.AnnotationOutlierInterval:           "1s",
	}, map[string]string{}, map[string]string{"ERROR_RATE": "1", "ERROR_CODE": "500"})
	if err := m.WaitReachable(ctxT(t, 30*time.Second), 20*time.Second, "app-1-0", "ejecty"); err != nil {
		t.Fatal(err)
	}
	// Until the bad replica has answered 500 three times in a row, some requests fail.
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		st, err := m.EnvoyStats(ctx, "app-1-0")
		if err != nil {
			return err
		}
		if st["cluster.default/ejecty.outlier_detection.ejections_enforced_total"] == 0 {
			get(ctx, m, "app-1-0", "ejecty", "/")
			return fmt.Errorf("no ejection yet")
		}
		return nil
	})
	// The ejection is decided on Envoy's main thread and reaches the worker's load
	// balancer a moment later; give it that moment.
	time.Sleep(2 * time.Second)
	after := tally(t, m, 200, "app-1-0", "ejecty")
	if after["200 ejecty"] < 198 {
		p, _ := m.Pod("app-1-0")
		resp, err := http.Get(p.AdminURL() + "/clusters")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "ejecty.default::127") {
					t.Log(l)
				}
			}
		}
		st, _ := m.EnvoyStats(ctxT(t, 10*time.Second), "app-1-0")
		for k, v := range st {
			if strings.Contains(k, "ejecty") && (strings.Contains(k, "lb_") || strings.Contains(k, "membership")) {
				t.Log(k, v)
			}
		}
		t.Fatalf("after ejection: %v, want at least 99%% of 200 to succeed", after)
	}
	st, _ := m.EnvoyStats(ctxT(t, 10*time.Second), "app-1-0")
	t.Logf("after ejection: %v; ejections_enforced_consecutive_5xx=%d", after, st["cluster.default/ejecty.outlier_detection.ejections_enforced_consecutive_5xx"])
}

func TestRequestTimeoutFromHTTPRoute(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "sluggish", nil, map[string]string{"LATENCY": "3s"})
	withRoute(t, "sluggish", "sluggish", gwv1.HTTPRouteRule{
		BackendRefs: []gwv1.HTTPBackendRef{backendRef("sluggish", 1)},
		Timeouts:    &gwv1.HTTPRouteTimeouts{Request: ptr(gwv1.Duration("1s"))},
	})
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		status, _, took, err := get(ctx, m, "app-1-0", "sluggish", "/")
		if err != nil || status != 504 || took < 900*time.Millisecond || took >= 2*time.Second { // Envoy's timer may fire early by a hair
			return fmt.Errorf("got %d after %s (%v), want 504 after the 1s timeout", status, took, err)
		}
		return nil
	})
}

func TestHTTPRouteStatusAndMissingBackend(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "front", nil, map[string]string{})
	withRoute(t, "front", "front", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backendRef("late", 1)}})
	gw := gateway(t)
	condition := func(ctx context.Context, typ string) (metav1.Condition, error) {
		rt, err := gw.GatewayV1().HTTPRoutes("default").Get(ctx, "front", metav1.GetOptions{})
		if err != nil {
			return metav1.Condition{}, err
		}
		for _, p := range rt.Status.Parents {
			if p.ControllerName != "bearkong.dev/mesh" || string(p.ParentRef.Name) != "front" {
				continue
			}
			for _, c := range p.Conditions {
				if c.Type == typ {
					return c, nil
				}
			}
		}
		return metav1.Condition{}, fmt.Errorf("no %s condition from bearkong in %+v", typ, rt.Status.Parents)
	}
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		acc, err := condition(ctx, "Accepted")
		if err != nil {
			return err
		}
		res, err := condition(ctx, "ResolvedRefs")
		if err != nil {
			return err
		}
		if acc.Status != metav1.ConditionTrue || res.Status != metav1.ConditionFalse || res.Reason != "BackendNotFound" || !strings.Contains(res.Message, "default/late") {
			return fmt.Errorf("Accepted %+v; ResolvedRefs %+v", acc, res)
		}
		return nil
	})
	if status, body, _, _ := get(ctxT(t, 10*time.Second), m, "app-1-0", "front", "/"); status != 500 {
		t.Fatalf("traffic to a missing backend: %d %q, want 500", status, body)
	}

	withService(t, m, "late", nil, map[string]string{})
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		res, err := condition(ctx, "ResolvedRefs")
		if err != nil {
			return err
		}
		if res.Status != metav1.ConditionTrue {
			return fmt.Errorf("ResolvedRefs %+v", res)
		}
		if status, name, _, err := get(ctx, m, "app-1-0", "front", "/"); err != nil || status != 200 || name != "late" {
			return fmt.Errorf("traffic: %d %q %v", status, name, err)
		}
		return nil
	})
	// Steady state writes no status again.
	before := cpMetrics(t, m)[`bearkong_kube_api_writes_total{resource="httproutes/status",result="ok",verb="update"}`]
	time.Sleep(2 * resyncPeriod)
	if after := cpMetrics(t, m)[`bearkong_kube_api_writes_total{resource="httproutes/status",result="ok",verb="update"}`]; after != before {
		t.Fatalf("status writes %v -> %v in steady state", before, after)
	}
}
