package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// The tests in this file run in order against the shared mesh; each one leaves it as it
// found it (app-1 x1, app-2 x2, app-3 x2, every proxy SYNCED).

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// streams returns the control plane's /debug/streams.
func streams(ctx context.Context, m *localmesh.Mesh) ([]ads.StreamInfo, error) {
	b, err := m.ControlPlaneGet(ctx, "/debug/streams")
	if err != nil {
		return nil, err
	}
	var body struct {
		Streams []ads.StreamInfo `json:"streams"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, fmt.Errorf("decode /debug/streams: %w", err)
	}
	return body.Streams, nil
}

func nodeID(p localmesh.Pod) string { return p.Name + "." + p.Namespace }

// waitAllSynced waits until /debug/streams shows exactly one stream per pod of the mesh,
// in the protocol the mesh runs (meshXDSProtocol), SYNCED on every type, and returns it
// keyed by node id.
func waitAllSynced(t *testing.T, m *localmesh.Mesh) map[string]ads.StreamInfo {
	t.Helper()
	var byNode map[string]ads.StreamInfo
	err := localmesh.Eventually(ctxT(t, 30*time.Second), 20*time.Second, func(ctx context.Context) error {
		ss, err := streams(ctx, m)
		if err != nil {
			return err
		}
		byNode = map[string]ads.StreamInfo{}
		for _, s := range ss {
			if _, dup := byNode[s.Node]; dup {
				return fmt.Errorf("two streams for node %s", s.Node)
			}
			byNode[s.Node] = s
		}
		for _, p := range m.Pods() {
			s, ok := byNode[nodeID(p)]
			if !ok {
				return fmt.Errorf("no stream for %s", nodeID(p))
			}
			if s.Protocol != meshXDSProtocol {
				return localmesh.Permanent(fmt.Errorf("%s speaks %q, want %q (%s)", s.Node, s.Protocol, meshXDSProtocol, xdsProtocolEnv))
			}
			for _, typ := range resource.Types {
				ti := s.Types.Get(typ)
				if ti.Status != ads.Synced || ti.VersionAcked != ti.VersionSent {
					return fmt.Errorf("%s not synced: %+v", s.Node, s.Types)
				}
			}
		}
		if len(byNode) != len(m.Pods()) {
			return fmt.Errorf("%d streams for %d pods", len(byNode), len(m.Pods()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return byNode
}

// cpMetrics returns the control plane's /metrics samples, keyed by series as written
// (`bearkong_xds_push_total{type="eds"}`).
func cpMetrics(t *testing.T, m *localmesh.Mesh) map[string]float64 {
	t.Helper()
	b, err := m.ControlPlaneGet(ctxT(t, 10*time.Second), "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func pushes(mt map[string]float64) float64 {
	n := 0.0
	for _, typ := range objectTypes {
		n += mt[`bearkong_xds_push_total{type="`+typ.String()+`"}`]
	}
	return n
}

// objectTypes are the types whose content comes from Kubernetes objects, in push order:
// every type but SDS. Certificates rotate with the clock (every 30 s in these tests), so
// the tests of what a Kubernetes change sends, or does not send, leave SDS out;
// TestCertificatesRotateWithoutFailures and TestCASurvivesRestartAndIsShared check it.
var objectTypes = resource.Types[:resource.Secret]

// typePairs pairs each object type's state in two views of the same stream, in push
// order (see objectTypes).
func typePairs(before, after ads.StreamInfo) [][2]ads.TypeInfo {
	var out [][2]ads.TypeInfo
	for _, typ := range objectTypes {
		out = append(out, [2]ads.TypeInfo{*before.Types.Get(typ), *after.Types.Get(typ)})
	}
	return out
}

func TestBootstrapValidatesWithEnvoy(t *testing.T) {
	sharedMesh(t)
	out := filepath.Join(t.TempDir(), "envoy.json")
	cmd := exec.Command(filepath.Join(shared.binDir, "bearkong"), "bootstrap", "--pod-name", "app-9-x", "--pod-namespace", "default",
		"--listen-ip", "127.0.1.250", "--app-address", "127.0.1.250:9090", "--admin-address", "127.0.1.250:8081", "--xds-address", "127.0.0.1:5000", "--xds-insecure",
		"--xds-protocol", meshXDSProtocol, "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bearkong bootstrap: %v\n%s", err, b)
	}
	b, err := exec.Command(shared.envoy, "--mode", "validate", "-c", out, "--disable-hot-restart", "--log-level", "warn").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "configuration") || !strings.Contains(string(b), "OK") {
		t.Fatalf("envoy --mode validate: %v\n%s", err, b)
	}
}

func TestBothReplicasAnswer(t *testing.T) {
	m := sharedMesh(t)
	ctx := ctxT(t, 30*time.Second)
	for _, svc := range []string{"app-2", "app-3"} {
		want := map[string]bool{}
		for _, p := range m.PodsOf(svc) {
			want[p.Name] = true
		}
		if len(want) != 2 {
			t.Fatalf("%s has %d pods, want 2", svc, len(want))
		}
		seen := map[string]int{}
		for range 40 {
			c := m.Call(ctx, "app-1-0", svc)
			if c.Err != nil || c.Status != 200 || c.Answer.Name != svc {
				t.Fatalf("app-1-0 -> %s: %d %v %q", svc, c.Status, c.Err, c.Body)
			}
			seen[c.Pod]++
		}
		for p := range want {
			if seen[p] == 0 {
				t.Errorf("%s: replica %s never answered in 40 requests: %v", svc, p, seen)
			}
		}
	}
}

// TestEnvoysAreSyncedAndAcceptEverything checks each Envoy's own view (connected, nothing
// rejected but what a test had rejected on purpose) and the control plane's (every proxy
// SYNCED on every type).
func TestEnvoysAreSyncedAndAcceptEverything(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 30*time.Second)
	for _, p := range m.Pods() {
		st, err := m.EnvoyStats(ctx, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		if st["control_plane.connected_state"] != 1 {
			t.Errorf("%s: control_plane.connected_state = %d", p.Name, st["control_plane.connected_state"])
		}
		checked := map[string]int{}
		for name, v := range st {
			if !strings.HasSuffix(name, ".update_rejected") {
				continue
			}
			switch {
			case name == "cluster_manager.cds.update_rejected":
				checked["cds"]++
			case name == "listener_manager.lds.update_rejected":
				checked["lds"]++
			case strings.HasPrefix(name, "http.") && strings.Contains(name, ".rds."):
				checked["rds"]++
			case strings.HasPrefix(name, "cluster.") && strings.Contains(name, "/"):
				// A Service's cluster: its stats are under its stat name,
				// cluster.<namespace>/<name>.
				checked["eds"]++
			}
			if want := expectedRejected(p.Name, name); int(v) != want {
				t.Errorf("%s: %s = %d, want %d (the rejections tests caused on purpose)", p.Name, name, v, want)
			}
		}
		// CDS and LDS once; RDS for the inbound and outbound route configs; EDS for the
		// three services' clusters at least.
		if checked["cds"] != 1 || checked["lds"] != 1 || checked["rds"] < 2 || checked["eds"] < 3 {
			t.Errorf("%s: update_rejected stats found per type: %v", p.Name, checked)
		}
		if st["cluster_manager.cds.update_success"] == 0 || st["listener_manager.lds.update_success"] == 0 {
			t.Errorf("%s: no successful CDS/LDS update in the stats", p.Name)
		}
	}
}

func TestPrometheusSeesACKs(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	err := localmesh.Eventually(ctxT(t, 60*time.Second), 45*time.Second, func(ctx context.Context) error {
		series, err := promQuery(ctx, "sum by (type) (bearkong_xds_ack_total)")
		if err != nil {
			return err
		}
		got := map[string]float64{}
		for _, s := range series {
			got[s.Metric["type"]] = s.Value
		}
		for _, typ := range []string{"cds", "eds", "lds", "rds", "sds"} {
			if got[typ] <= 0 {
				return fmt.Errorf("prometheus: bearkong_xds_ack_total for %s = %v (all: %v)", typ, got[typ], got)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Prometheus scrapes the Envoys too.
	err = localmesh.Eventually(ctxT(t, 30*time.Second), 20*time.Second, func(ctx context.Context) error {
		series, err := promQuery(ctx, "count(envoy_control_plane_connected_state == 1)")
		if err != nil {
			return err
		}
		if len(series) != 1 || series[0].Value != float64(len(m.Pods())) {
			return fmt.Errorf("prometheus: connected Envoys: %+v, want %d", series, len(m.Pods()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestNoOpChangesSendNothing(t *testing.T) {
	m := sharedMesh(t)
	before := waitAllSynced(t, m)
	ctx := ctxT(t, 60*time.Second)
	mt0 := cpMetrics(t, m)

	// An unrelated annotation and label on a Service, then back.
	if err := m.SetServiceAnnotations(ctx, "app-1", map[string]string{"owner": "team-a"}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetServiceLabels(ctx, "app-2", map[string]string{"meshed": "enabled", "team": "b"}); err != nil {
		t.Fatal(err)
	}
	// Let the control plane see them, and two informer resyncs happen.
	time.Sleep(2*resyncPeriod + time.Second)
	mt1 := cpMetrics(t, m)
	if mt1[`bearkong_discovery_events_total{event="update",kind="service"}`] < mt0[`bearkong_discovery_events_total{event="update",kind="service"}`]+2 {
		t.Fatalf("the control plane did not see the Service updates: %v -> %v", mt0[`bearkong_discovery_events_total{event="update",kind="service"}`], mt1[`bearkong_discovery_events_total{event="update",kind="service"}`])
	}
	if p0, p1 := pushes(mt0), pushes(mt1); p0 != p1 {
		t.Fatalf("bearkong_xds_push_total moved from %v to %v on no-op changes", p0, p1)
	}
	after := waitAllSynced(t, m)
	for node, b := range before {
		a := after[node]
		for _, pair := range typePairs(b, a) {
			if pair[0].VersionSent != pair[1].VersionSent || pair[0].Pushes != pair[1].Pushes {
				t.Errorf("%s: before %+v\nafter %+v", node, pair[0], pair[1])
			}
		}
	}

	// Put the Services back; that is a no-op for the mesh too.
	if err := m.SetServiceAnnotations(ctx, "app-1", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetServiceLabels(ctx, "app-2", map[string]string{"meshed": "enabled"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if p := pushes(cpMetrics(t, m)); p != pushes(mt0) {
		t.Fatalf("bearkong_xds_push_total moved from %v to %v", pushes(mt0), p)
	}
}

// loop makes requests from one pod to one service until stopped, bounded in count, and
// returns the statuses it saw.
func loop(ctx context.Context, m *localmesh.Mesh, from, to string, stop <-chan struct{}) map[string]int {
	seen := map[string]int{}
	for i := 0; i < 5000; i++ {
		select {
		case <-stop:
			return seen
		case <-ctx.Done():
			return seen
		default:
		}
		c := m.Call(ctx, from, to)
		switch {
		case c.Err != nil:
			seen["error: "+c.Err.Error()]++
		case c.Status != 200:
			seen[fmt.Sprintf("%d %s", c.Status, c.Body)]++
		default:
			seen["200 "+c.Pod]++
		}
		time.Sleep(10 * time.Millisecond)
	}
	return seen
}

func TestScaleUpAndGracefulScaleDown(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 90*time.Second)

	p, err := m.AddPod(ctx, "app-3", localmesh.PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// AddPod returns once the Pod and its endpoint are Ready in the API server.
	ready := time.Now()
	var took time.Duration
	err = localmesh.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
		for _, from := range []string{"app-1-0", "app-2-0"} {
			c := m.Call(ctx, from, "app-3")
			if c.Status == 200 && c.Pod == p.Name {
				took = time.Since(ready)
				return nil
			}
		}
		return fmt.Errorf("new pod %s not answering yet", p.Name)
	})
	if err != nil {
		t.Fatalf("scale up: %v", err)
	}
	t.Logf("scale up: new pod %s answered %s after its endpoint became ready", p.Name, took.Round(time.Millisecond))
	waitAllSynced(t, m)

	// Scale down while a steady loop runs: no 5xx, no error.
	stop := make(chan struct{})
	var seen map[string]int
	var wg sync.WaitGroup
	wg.Go(func() { seen = loop(ctx, m, "app-1-0", "app-3", stop) })
	time.Sleep(500 * time.Millisecond)
	if err := m.RemovePod(ctx, p.Name, true); err != nil {
		close(stop)
		wg.Wait()
		t.Fatal(err)
	}
	time.Sleep(time.Second) // keep going after the pod is gone
	close(stop)
	wg.Wait()
	total := 0
	for k, n := range seen {
		total += n
		if !strings.HasPrefix(k, "200 ") {
			t.Errorf("during graceful scale down: %d x %s", n, k)
		}
	}
	if seen["200 "+p.Name] == 0 {
		t.Errorf("the removed pod served nothing before it went: %v", seen)
	}
	t.Logf("scale down: %d requests, %v", total, seen)
	waitAllSynced(t, m)
}

// waitGone waits until every caller gets the mesh's 404 for the service.
func waitGone(ctx context.Context, m *localmesh.Mesh, svc string, callers ...string) error {
	for _, from := range callers {
		err := localmesh.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			status, body, err := m.Get(ctx, from, svc)
			if err != nil {
				return err
			}
			if status != 404 || !strings.Contains(string(body), "no meshed service") {
				return fmt.Errorf("%s -> %s: %d %q, want 404", from, svc, status, body)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func TestServiceJoinsAndLeavesTheMesh(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 120*time.Second)
	if err := m.AddService(ctx, "app-4", localmesh.ServiceOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := m.AddPod(ctx, "app-4", localmesh.PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.RemovePod(context.Background(), p.Name, false) })
	callers := []string{"app-1-0", "app-2-0", "app-3-0"}
	reachable := func() {
		t.Helper()
		for _, from := range callers {
			if err := m.WaitReachable(ctx, 10*time.Second, from, "app-4"); err != nil {
				t.Fatalf("%s -> app-4: %v", from, err)
			}
		}
	}
	gone := func(why string) {
		t.Helper()
		if err := waitGone(ctx, m, "app-4", callers...); err != nil {
			t.Fatalf("after %s: %v", why, err)
		}
	}
	reachable()
	if err := m.SetServiceLabels(ctx, "app-4", map[string]string{}); err != nil {
		t.Fatal(err)
	}
	gone("removing the meshed label")
	if err := m.SetServiceLabels(ctx, "app-4", map[string]string{"meshed": "enabled"}); err != nil {
		t.Fatal(err)
	}
	reachable()
	if err := m.DeleteService(ctx, "app-4"); err != nil {
		t.Fatal(err)
	}
	gone("deleting the Service")
	if err := m.RemovePod(ctx, p.Name, false); err != nil {
		t.Fatal(err)
	}
	waitAllSynced(t, m)
}

func TestAPIServerRestart(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 120*time.Second)
	streams0 := cpMetrics(t, m)["bearkong_xds_streams_total"]

	if err := shared.env.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	// The control plane keeps serving, and the mesh keeps working, without the API.
	if _, err := m.ControlPlaneGet(ctx, "/healthz"); err != nil {
		t.Fatalf("control plane while the API server is down: %v", err)
	}
	for _, from := range []string{"app-1-0", "app-2-1"} {
		if c := m.Call(ctx, from, "app-3"); c.Status != 200 {
			t.Fatalf("%s -> app-3 while the API server is down: %d %v", from, c.Status, c.Err)
		}
	}
	time.Sleep(2 * time.Second)
	if err := shared.env.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	// A change made after the API server is back reaches the Envoys.
	if err := m.AddService(ctx, "app-5", localmesh.ServiceOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := m.AddPod(ctx, "app-5", localmesh.PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{"app-1-0", "app-3-1"} {
		if err := m.WaitReachable(ctx, 30*time.Second, from, "app-5"); err != nil {
			t.Fatalf("%s -> app-5 after the API server restart: %v", from, err)
		}
	}
	// Same control-plane process and the same streams: nobody reconnected.
	if s := cpMetrics(t, m)["bearkong_xds_streams_total"]; s != streams0+1 {
		t.Errorf("bearkong_xds_streams_total %v -> %v; want only the new pod's stream", streams0, s)
	}
	if err := m.RemovePod(ctx, p.Name, false); err != nil {
		t.Fatal(err)
	}
	if err := m.DeleteService(ctx, "app-5"); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(ctx, m, "app-5", "app-1-0", "app-3-1"); err != nil {
		t.Fatal(err)
	}
	waitAllSynced(t, m)
}

func TestControlPlaneRestart(t *testing.T) {
	m := sharedMesh(t)
	before := waitAllSynced(t, m)
	ctx := ctxT(t, 120*time.Second)
	envoyBefore := envoyXDSStats(t, m)

	if err := m.StopControlPlane(); err != nil {
		t.Fatal(err)
	}
	// Traffic keeps flowing on the last config.
	for _, from := range m.Pods() {
		for _, to := range []string{"app-1", "app-2", "app-3"} {
			c := m.Call(ctx, from.Name, to)
			if c.Status != 200 || c.Answer.Name != to {
				t.Errorf("%s -> %s with the control plane down: %d %v %q", from.Name, to, c.Status, c.Err, c.Body)
			}
		}
	}
	if err := m.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	after := waitAllSynced(t, m)
	for node, b := range before {
		a, ok := after[node]
		if !ok {
			t.Errorf("%s did not reconnect", node)
			continue
		}
		for i, pair := range typePairs(b, a) {
			if pair[0].VersionAcked != pair[1].VersionAcked {
				t.Errorf("%s %s: version %s before the restart, %s after, for unchanged content (subscribed %d names %s, then %d %s)",
					node, resource.Types[i], pair[0].VersionAcked, pair[1].VersionAcked, pair[0].SubscribedCount, pair[0].SubscribedHash, pair[1].SubscribedCount, pair[1].SubscribedHash)
			}
		}
	}
	if err := m.WaitAllReachable(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	checkRestartSentNothingNew(t, m, envoyBefore, envoyXDSStats(t, m), after)
}
