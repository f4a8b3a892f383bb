package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// The original exercise's three questions, as features: every meshed service is
// routable, no needless updates, and mesh-timeout.

func diagnostics(t *testing.T, m *localmesh.Mesh, name string) []mesh.Diagnostic {
	t.Helper()
	b, err := m.ControlPlaneGet(ctxT(t, 10*time.Second), "/debug/diagnostics?name="+name)
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Diagnostics []mesh.Diagnostic `json:"diagnostics"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatal(err)
	}
	return body.Diagnostics
}

func cpLog(t *testing.T, m *localmesh.Mesh) string {
	t.Helper()
	b, err := os.ReadFile(m.ControlPlaneLog())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Question 1: app-3's Service targets port 5080, where nothing listens. bearkong routes
// mesh traffic to each endpoint's sidecar on 8000, and says what is wrong.
func TestQuestion1TargetPortThatMissesTheSidecar(t *testing.T) {
	m := sharedMesh(t)
	ctx := ctxT(t, 30*time.Second)
	for _, from := range []string{"app-1-0", "app-2-0", "app-2-1"} {
		c := m.Call(ctx, from, "app-3")
		if c.Status != 200 || c.Answer.Name != "app-3" {
			t.Fatalf("%s -> app-3: %d %v %q", from, c.Status, c.Err, c.Body)
		}
	}
	ds := diagnostics(t, m, "app-3")
	if len(ds) != 1 || ds[0].Reason != mesh.ReasonTargetPortMisses || !strings.Contains(ds[0].Message, "port 9090 targets 5080") {
		t.Fatalf("/debug/diagnostics?name=app-3: %+v", ds)
	}
	if log := cpLog(t, m); !strings.Contains(log, "default/app-3") || !strings.Contains(log, "targets 5080") {
		t.Fatalf("the control plane log does not name app-3 and port 5080")
	}
}

// Question 2: in steady state bearkong writes nothing to the API server and sends
// nothing to any proxy, through a minute of informer resyncs and 100 no-op updates.
func TestQuestion2NoNeedlessUpdates(t *testing.T) {
	m := sharedMesh(t)
	before := waitAllSynced(t, m)
	ctx := ctxT(t, 3*time.Minute)
	c := shared.env.Client
	mt0 := cpMetrics(t, m)
	writes := func(mt map[string]float64) float64 {
		n := 0.0
		for k, v := range mt {
			if strings.HasPrefix(k, "bearkong_kube_api_writes_total") {
				n += v
			}
		}
		return n
	}

	const window, updates = 60 * time.Second, 100
	start := time.Now()
	for i := range updates {
		// Spread the updates over the window, across the three kinds.
		time.Sleep(time.Until(start.Add(window * time.Duration(i) / updates)))
		note := fmt.Sprintf("no-op-%d", i)
		var err error
		switch i % 3 {
		case 0:
			err = m.SetServiceAnnotations(ctx, "app-1", map[string]string{"example.com/note": note})
		case 1:
			p, gerr := c.CoreV1().Pods("default").Get(ctx, "app-2-0", metav1.GetOptions{})
			if gerr != nil {
				t.Fatal(gerr)
			}
			if p.Annotations == nil {
				p.Annotations = map[string]string{}
			}
			p.Annotations["example.com/note"] = note
			_, err = c.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{})
		case 2:
			s, gerr := c.DiscoveryV1().EndpointSlices("default").Get(ctx, "app-3-local", metav1.GetOptions{})
			if gerr != nil {
				t.Fatal(gerr)
			}
			if s.Annotations == nil {
				s.Annotations = map[string]string{}
			}
			s.Annotations["example.com/note"] = note
			// Slices with loopback addresses go straight to etcd (see internal/kubeenv).
			err = shared.env.StoreEndpointSlice(ctx, s)
		}
		if err != nil {
			t.Fatalf("no-op update %d: %v", i, err)
		}
	}
	time.Sleep(time.Until(start.Add(window)) + time.Second)

	mt1 := cpMetrics(t, m)
	seen := 0.0
	for _, kind := range []string{"service", "pod", "endpointslice"} {
		seen += mt1[`bearkong_discovery_events_total{event="update",kind="`+kind+`"}`] - mt0[`bearkong_discovery_events_total{event="update",kind="`+kind+`"}`]
	}
	if seen < updates {
		t.Fatalf("the control plane saw %v updates, want at least %d", seen, updates)
	}
	if p0, p1 := pushes(mt0), pushes(mt1); p0 != p1 {
		t.Errorf("bearkong_xds_push_total moved from %v to %v", p0, p1)
	}
	if w0, w1 := writes(mt0), writes(mt1); w0 != w1 {
		t.Errorf("bearkong_kube_api_writes_total moved from %v to %v", w0, w1)
	}
	t.Logf("%v updates seen, %v snapshots built and found unchanged, 0 pushes, 0 API writes", seen,
		mt1[`bearkong_discovery_snapshots_total{result="unchanged"}`]-mt0[`bearkong_discovery_snapshots_total{result="unchanged"}`])
	after := waitAllSynced(t, m)
	for node, b := range before {
		for _, pair := range typePairs(b, after[node]) {
			if pair[0].Pushes != pair[1].Pushes {
				t.Errorf("%s was sent something", node)
			}
		}
	}
	if err := m.SetServiceAnnotations(ctx, "app-1", map[string]string{}); err != nil {
		t.Fatal(err)
	}
}

// timed makes one request and returns its status and duration.
func timed(ctx context.Context, m *localmesh.Mesh, from, to string) (int, time.Duration) {
	start := time.Now()
	status, _, err := m.Get(ctx, from, to)
	if err != nil {
		return 0, time.Since(start)
	}
	return status, time.Since(start)
}

// Question 3: mesh-timeout on a Service ends slow requests at its proxies, touches only
// those proxies and only RDS. The admission policy refuses bad values; a bad value that
// got past it is ignored as if absent, the same way after a restart.
func TestQuestion3MeshTimeout(t *testing.T) {
	m := sharedMesh(t)
	ctx := ctxT(t, 4*time.Minute)
	if err := m.AddService(ctx, "slow", localmesh.ServiceOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := m.AddPod(ctx, "slow", localmesh.PodOptions{Env: map[string]string{"LATENCY": "3s"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = m.RemovePod(context.Background(), p.Name, false)
		_ = m.DeleteService(context.Background(), "slow")
	}()
	if err := m.WaitReachable(ctx, 20*time.Second, "app-1-0", "slow"); err != nil {
		t.Fatal(err)
	}
	if status, took := timed(ctx, m, "app-1-0", "slow"); status != 200 || took < 3*time.Second {
		t.Fatalf("without mesh-timeout: %d after %s, want 200 after the app's 3s", status, took)
	}
	before := waitAllSynced(t, m)
	slowNode := nodeID(p)

	setTimeout := func(v string) {
		t.Helper()
		ann := map[string]string{}
		if v != "" {
			ann[mesh.AnnotationTimeout] = v
		}
		if err := m.SetServiceAnnotations(ctx, "slow", ann); err != nil {
			t.Fatal(err)
		}
	}

	setTimeout("2s")
	// Only the slow service's proxy gets a new version, and only of RDS.
	var after map[string]ads.StreamInfo
	err = localmesh.Eventually(ctx, 10*time.Second, func(context.Context) error {
		after = waitAllSynced(t, m)
		if after[slowNode].Types.RDS.VersionAcked == before[slowNode].Types.RDS.VersionAcked {
			return fmt.Errorf("%s has no new RDS version yet", slowNode)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkOnlyRDS := func(before, after map[string]ads.StreamInfo, changed string) {
		t.Helper()
		for node, b := range before {
			a := after[node]
			for i, pair := range typePairs(b, a) {
				if node == changed && resource.Types[i] == resource.Route {
					continue
				}
				if pair[0].VersionAcked != pair[1].VersionAcked || pair[0].Pushes != pair[1].Pushes {
					t.Errorf("%s: a type other than its RDS changed:\nbefore %+v\nafter  %+v", node, pair[0], pair[1])
				}
			}
		}
		if changed != "" && after[changed].Types.RDS.Pushes != before[changed].Types.RDS.Pushes+1 {
			t.Errorf("%s: RDS pushes %d -> %d, want one more", changed, before[changed].Types.RDS.Pushes, after[changed].Types.RDS.Pushes)
		}
	}
	checkOnlyRDS(before, after, slowNode)

	expect504 := func(when string) {
		t.Helper()
		status, took := timed(ctx, m, "app-1-0", "slow")
		// Envoy's timer may fire a few milliseconds early.
		if status != 504 || took < 1900*time.Millisecond || took >= 3*time.Second {
			t.Fatalf("%s: %d after %s, want 504 after the 2s timeout (before the app's 3s)", when, status, took)
		}
	}
	expect504("with mesh-timeout: 2s")

	// With the admission policy (the local mesh installs it, as `kubectl apply -k
	// manifests/` does), an invalid value is refused when it is written, with a message
	// naming the annotation, and nothing changes.
	synced := waitAllSynced(t, m)
	err = m.SetServiceAnnotations(ctx, "slow", map[string]string{mesh.AnnotationTimeout: "banana"})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), `annotation mesh-timeout="banana" is invalid`) {
		t.Fatalf("mesh-timeout: banana with the admission policy: %v, want 422 Invalid naming the annotation", err)
	}
	expect504("after mesh-timeout: banana was refused")

	// Without the policy, invalid values get stored. bearkong ignores them as if absent
	// (no timeout), the same way on every replica and after every restart, with a clear
	// message in the log, in diagnostics and as an Event.
	if err := localmesh.RemoveAdmissionPolicy(ctx, shared.env); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := localmesh.InstallAdmissionPolicy(context.Background(), shared.env); err != nil {
			t.Error(err)
		}
	})
	expect200 := func(when string) {
		t.Helper()
		if status, took := timed(ctx, m, "app-1-0", "slow"); status != 200 || took < 3*time.Second {
			t.Fatalf("%s: %d after %s, want 200 after the app's 3s (no timeout)", when, status, took)
		}
	}
	var ignored map[string]ads.StreamInfo
	for i, bad := range []string{"banana", "-1s", "0s", "2h"} {
		setTimeout(bad)
		want := fmt.Sprintf("annotation mesh-timeout=%q is invalid", bad)
		err := localmesh.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			ds := diagnostics(t, m, "slow")
			if !anyContains(ds, want+": ") || !anyContains(ds, "it is ignored, as if absent: no timeout") {
				return fmt.Errorf("diagnostics %+v do not say %s, ignored as if absent", ds, want)
			}
			evs, err := shared.env.Client.EventsV1().Events("default").List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Regarding.Name == "slow" && e.Regarding.Kind == "Service" && e.Reason == mesh.ReasonInvalidAnnotation && strings.Contains(e.Note, want) {
					return nil
				}
			}
			return fmt.Errorf("no Event on Service slow saying %s", want)
		})
		if err != nil {
			t.Fatal(err)
		}
		// slog's text handler quotes the message, escaping its quotes.
		if !strings.Contains(cpLog(t, m), strings.ReplaceAll(want, `"`, `\"`)) {
			t.Fatalf("the control plane log does not say %s", want)
		}
		if i == 0 {
			// 2s to an invalid value: the timeout goes, on the slow Service's proxy only,
			// in RDS only.
			err := localmesh.Eventually(ctx, 10*time.Second, func(context.Context) error {
				ignored = waitAllSynced(t, m)
				if ignored[slowNode].Types.RDS.VersionAcked == synced[slowNode].Types.RDS.VersionAcked {
					return fmt.Errorf("%s has no new RDS version yet", slowNode)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			checkOnlyRDS(synced, ignored, slowNode)
		}
		expect200(fmt.Sprintf("with mesh-timeout: %s (ignored as if absent)", bad))
	}
	// From one invalid value to another, nobody is sent anything.
	checkOnlyRDS(ignored, waitAllSynced(t, m), "")

	// A restarted control plane has no memory of the 2s, and needs none: it serves the
	// same config, version for version. (Its start installs the admission policy again.)
	if err := m.StopControlPlane(); err != nil {
		t.Fatal(err)
	}
	if err := m.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	restarted := waitAllSynced(t, m)
	for node, b := range ignored {
		for i, pair := range typePairs(b, restarted[node]) {
			if pair[0].VersionAcked != pair[1].VersionAcked {
				t.Errorf("%s %s: version %s before the restart, %s after", node, resource.Types[i], pair[0].VersionAcked, pair[1].VersionAcked)
			}
		}
	}
	expect200("after a restart of the control plane")

	// Removing the annotation restores the default.
	setTimeout("")
	err = localmesh.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		if status, took := timed(ctx, m, "app-1-0", "slow"); status != 200 {
			return fmt.Errorf("without mesh-timeout: %d after %s", status, took)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ds := diagnostics(t, m, "slow"); anyContains(ds, "invalid") {
		t.Fatalf("diagnostics after the fix: %+v", ds)
	}
}

func anyContains(ds []mesh.Diagnostic, s string) bool {
	for _, d := range ds {
		if strings.Contains(d.Message, s) {
			return true
		}
	}
	return false
}
