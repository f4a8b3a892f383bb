package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// High availability (issue 13), on a mesh of its own: its own etcd and kube-apiserver
// (so that its replicas' Lease, Events and statuses are apart from the shared mesh's),
// pods on 127.0.5.N (outbound 127.0.6.N) in namespace "ha", and two `bearkong cp`
// replicas electing their writer through a Lease with short timings. The subtests run
// in order on that mesh, which is closed at the end.

// The leader election's timings in these tests: client-go's 15s/10s/2s made short, in the
// same proportions, so that a failover fits a test.
const (
	haLeaseDuration = 4 * time.Second
	haRenewDeadline = 3 * time.Second
	haRetryPeriod   = time.Second
	// haJSONReplica is the replica that logs with --log-format json.
	haJSONReplica = 1
	haNamespace   = "ha"
	// haRoute is the HTTPRoute of the HA mesh, on app-2: its status is one of the writes
	// that must happen once.
	haRoute = "app-2-route"
)

// haMesh is the HA test's mesh and the state its subtests share.
type haMesh struct {
	env     *kubeenv.Env
	m       *localmesh.Mesh
	gw      gwclient.Interface
	kubectl string
	// started is when both replicas were first ready.
	started time.Time
	// stoppedWrites sums bearkong_kube_api_writes_total of the replica processes that
	// are gone, read just before each was stopped: a restarted process counts from 0.
	stoppedWrites map[string]float64
}

func TestHighAvailability(t *testing.T) {
	h := startHAMesh(t)
	t.Run("every proxy on exactly one replica", h.testEveryProxyOnce)
	t.Run("pprof and JSON logs", h.testPprofAndJSONLogs)
	t.Run("same config on every replica and across restarts", h.testSameConfig)
	// Counts every write since the mesh started: what runs before must stop replicas
	// gracefully, through restartReplica or restartAll, and what runs after may kill.
	t.Run("every write once across replicas and restarts", h.testWritesOnce)
	t.Run("leader killed under load", h.testLeaderKilled)
	t.Run("every replica killed", h.testAllKilled)
}

// startHAMesh builds the binaries and starts the HA mesh, closed when the test ends. Its
// logs are kept when the test fails.
func startHAMesh(t *testing.T) *haMesh {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "bearkong-e2e-ha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("HA mesh logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	binDir := filepath.Join(dir, "bin")
	for _, pkg := range []string{"bearkong", "demo-app"} {
		if err := goBuild(ctx, root, filepath.Join(binDir, pkg), "./cmd/"+pkg); err != nil {
			t.Fatal(err)
		}
	}
	toolDir := filepath.Join(root, ".cache", "bin")
	h := &haMesh{kubectl: filepath.Join(toolDir, "kubectl"), stoppedWrites: map[string]float64{}}
	for _, b := range []string{"envoy", "kubectl"} {
		if _, err := os.Stat(filepath.Join(toolDir, b)); err != nil {
			t.Fatalf("%v (run make install)", err)
		}
	}
	h.env, err = kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(dir, "kube"), BinDir: toolDir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.env.Stop(); err != nil {
			t.Error(err)
		}
	})
	if h.gw, err = gwclient.NewForConfig(h.env.RESTConfig); err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: haNamespace}}
	if _, err := h.env.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.m, err = localmesh.New(ctx, localmesh.Options{
		Env:         h.env,
		Dir:         filepath.Join(dir, "mesh"),
		BearkongBin: filepath.Join(binDir, "bearkong"),
		EnvoyBin:    filepath.Join(toolDir, "envoy"),
		DemoAppBin:  filepath.Join(binDir, "demo-app"),
		Namespace:   haNamespace,
		IPPrefix:    "127.0.5.", // away from the shared mesh's 127.0.1. and the harness's 127.0.3.
		XDSProtocol: meshXDSProtocol,
		Logf:        t.Logf,
		// Bad annotations must reach the control plane: the admission policy is
		// installed only where a subtest says so.
		NoAdmissionPolicy:    true,
		ControlPlaneReplicas: 2,
		ControlPlaneArgs: []string{
			"--resync-period", resyncPeriod.String(),
			"--drain-timeout", "1s",
			"--leader-election-lease-duration", haLeaseDuration.String(),
			"--leader-election-renew-deadline", haRenewDeadline.String(),
			"--leader-election-retry-period", haRetryPeriod.String(),
		},
		ControlPlaneReplicaArgs: func(i int) []string {
			if i == haJSONReplica {
				return []string{"--log-format", "json"}
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.m.Close(); err != nil {
			t.Error(err)
		}
	})
	if err := h.m.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	h.started = time.Now()
	if err := h.m.AddApps(ctx, localmesh.DemoApps); err != nil {
		t.Fatal(err)
	}
	if err := h.m.WaitAllReachable(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	// Something for the leader to write, once: an Event for a bad annotation and the
	// status of an HTTPRoute.
	if err := h.m.SetServiceAnnotations(ctx, "app-1", map[string]string{mesh.AnnotationTimeout: "banana"}); err != nil {
		t.Fatal(err)
	}
	rt := &gwv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: haNamespace, Name: haRoute},
		Spec: gwv1.HTTPRouteSpec{
			CommonRouteSpec: gwv1.CommonRouteSpec{ParentRefs: []gwv1.ParentReference{{Group: (*gwv1.Group)(new(string)), Kind: kind("Service"), Name: "app-2"}}},
			Rules:           []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{backendRef("app-2", 1)}}},
		},
	}
	if _, err := h.gw.GatewayV1().HTTPRoutes(haNamespace).Create(ctx, rt, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return h
}

// haStreams returns replica i's /debug/streams.
func (h *haMesh) haStreams(ctx context.Context, i int) ([]ads.StreamInfo, error) {
	b, err := h.m.ControlPlaneReplicaGet(ctx, i, "/debug/streams")
	if err != nil {
		return nil, err
	}
	var body struct {
		Streams []ads.StreamInfo `json:"streams"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, fmt.Errorf("replica %d: decode /debug/streams: %w", i, err)
	}
	return body.Streams, nil
}

// synced checks that the replicas' /debug/streams, together, show every pod of the mesh
// exactly once, SYNCED on every type, and no other stream. It returns the streams and the
// replica of each, by node id. A replica that does not answer counts as having no stream
// when tolerateDown is set (it is down, or not up yet), else it is an error.
func (h *haMesh) synced(ctx context.Context, tolerateDown bool) (map[string]ads.StreamInfo, map[string]int, error) {
	byNode := map[string]ads.StreamInfo{}
	on := map[string]int{}
	for i := range h.m.ControlPlaneReplicas() {
		ss, err := h.haStreams(ctx, i)
		if err != nil {
			if tolerateDown {
				continue
			}
			return nil, nil, err
		}
		for _, s := range ss {
			if j, dup := on[s.Node]; dup {
				return nil, nil, fmt.Errorf("%s has a stream on replica %d and one on replica %d", s.Node, j, i)
			}
			byNode[s.Node], on[s.Node] = s, i
		}
	}
	for _, p := range h.m.Pods() {
		s, ok := byNode[nodeID(p)]
		if !ok {
			return nil, nil, fmt.Errorf("no replica has a stream for %s", nodeID(p))
		}
		for _, typ := range resource.Types {
			if ti := s.Types.Get(typ); ti.Status != ads.Synced || ti.VersionAcked != ti.VersionSent {
				return nil, nil, fmt.Errorf("%s not synced on replica %d: %+v", s.Node, on[s.Node], s.Types)
			}
		}
	}
	if len(byNode) != len(h.m.Pods()) {
		return nil, nil, fmt.Errorf("%d streams for %d pods: %v", len(byNode), len(h.m.Pods()), on)
	}
	return byNode, on, nil
}

// waitSynced waits until every replica answers and, together, they show every proxy once
// and SYNCED.
func (h *haMesh) waitSynced(t *testing.T) (map[string]ads.StreamInfo, map[string]int) {
	t.Helper()
	var byNode map[string]ads.StreamInfo
	var on map[string]int
	eventually(t, 30*time.Second, func(ctx context.Context) (err error) {
		byNode, on, err = h.synced(ctx, false)
		return err
	})
	return byNode, on
}

// metrics returns replica i's /metrics samples, keyed by series as written.
func (h *haMesh) metrics(ctx context.Context, i int) (map[string]float64, error) {
	b, err := h.m.ControlPlaneReplicaGet(ctx, i, "/metrics")
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		k := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[k+1:], 64); err == nil {
			out[line[:k]] = v
		}
	}
	return out, nil
}

// writes keeps the bearkong_kube_api_writes_total samples of mt, keyed "resource verb
// result".
func writes(mt map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for series, v := range mt {
		labels, ok := strings.CutPrefix(series, "bearkong_kube_api_writes_total{")
		if !ok {
			continue
		}
		l := map[string]string{}
		for _, kv := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
			k, v, _ := strings.Cut(kv, "=")
			l[k], _ = strconv.Unquote(v)
		}
		out[l["resource"]+" "+l["verb"]+" "+l["result"]] += v
	}
	return out
}

// nonZero leaves out the zero counts, for the log.
func nonZero(w map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range w {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// allWrites sums the writes of every replica process of the mesh's life: those stopped
// and those running.
func (h *haMesh) allWrites(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for k, v := range h.stoppedWrites {
		out[k] += v
	}
	for i := range h.m.ControlPlaneReplicas() {
		if !h.m.ControlPlaneRunning(i) {
			continue
		}
		mt, err := h.metrics(ctxT(t, 10*time.Second), i)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range writes(mt) {
			out[k] += v
		}
	}
	return out
}

// countWrites adds replica i's writes to stoppedWrites: it is about to stop.
func (h *haMesh) countWrites(t *testing.T, i int) {
	t.Helper()
	mt, err := h.metrics(ctxT(t, 10*time.Second), i)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range writes(mt) {
		h.stoppedWrites[k] += v
	}
}

// restartReplica stops replica i gracefully, counting its writes first, and starts it
// again.
func (h *haMesh) restartReplica(t *testing.T, i int) {
	t.Helper()
	h.countWrites(t, i)
	if err := h.m.StopControlPlaneReplica(i); err != nil {
		t.Fatal(err)
	}
	if err := h.m.StartControlPlaneReplica(ctxT(t, 90*time.Second), i); err != nil {
		t.Fatalf("%v\n%s", err, kubeenv.LogTail(h.m.ControlPlaneReplicaLog(i), 4096))
	}
}

// restartAll stops every replica gracefully, counting their writes first, and starts
// them again.
func (h *haMesh) restartAll(t *testing.T) {
	t.Helper()
	for i := range h.m.ControlPlaneReplicas() {
		h.countWrites(t, i)
	}
	if err := h.m.StopControlPlane(); err != nil {
		t.Fatal(err)
	}
	if err := h.m.StartControlPlane(ctxT(t, 90*time.Second)); err != nil {
		t.Fatal(err)
	}
}

// leader waits until the Lease names a replica of the mesh and returns it.
func (h *haMesh) leader(t *testing.T) int {
	t.Helper()
	leader := -1
	eventually(t, haLeaseDuration+5*haRetryPeriod, func(ctx context.Context) error {
		i, holder, err := h.m.LeaderReplica(ctx)
		if err != nil {
			return err
		}
		if i < 0 {
			return fmt.Errorf("the Lease names %q, no replica of the mesh", holder)
		}
		leader = i
		return nil
	})
	return leader
}

// bearkongEvents returns the Events bearkong wrote, in every namespace.
func (h *haMesh) bearkongEvents(ctx context.Context) ([]apiEvent, error) {
	list, err := h.env.Client.EventsV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []apiEvent
	for _, e := range list.Items {
		if strings.Contains(e.ReportingController, "bearkong") {
			out = append(out, apiEvent{e.Regarding.Kind, e.Regarding.Namespace, e.Regarding.Name, string(e.Regarding.UID), e.Reason, e.Note, e.Series != nil || e.DeprecatedCount > 1})
		}
	}
	return out, nil
}

// apiEvent is what the tests look at in an Event.
type apiEvent struct {
	Kind, Namespace, Name, UID, Reason, Note string
	Repeated                                 bool // it has a series: written more than once
}

// waitEvent waits until bearkong has written an Event on the Service with the reason and
// a note containing note.
func (h *haMesh) waitEvent(t *testing.T, within time.Duration, svc, reason, note string) {
	t.Helper()
	eventually(t, within, func(ctx context.Context) error {
		evs, err := h.bearkongEvents(ctx)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Kind == "Service" && e.Namespace == haNamespace && e.Name == svc && e.Reason == reason && strings.Contains(e.Note, note) {
				return nil
			}
		}
		return fmt.Errorf("no Event %s on Service %s saying %q in %+v", reason, svc, note, evs)
	})
}

// routeAccepted returns the generation of haRoute and the observed generation of
// bearkong's Accepted condition on it (-1 when there is none).
func (h *haMesh) routeAccepted(ctx context.Context) (generation, observed int64, err error) {
	rt, err := h.gw.GatewayV1().HTTPRoutes(haNamespace).Get(ctx, haRoute, metav1.GetOptions{})
	if err != nil {
		return 0, 0, err
	}
	observed = -1
	for _, p := range rt.Status.Parents {
		if p.ControllerName != discovery.ControllerName {
			continue
		}
		for _, c := range p.Conditions {
			if c.Type == string(gwv1.RouteConditionAccepted) && c.Status == metav1.ConditionTrue {
				observed = c.ObservedGeneration
			}
		}
	}
	return rt.Generation, observed, nil
}

// (a) Every proxy has one stream, on one of the replicas.
func (h *haMesh) testEveryProxyOnce(t *testing.T) {
	_, on := h.waitSynced(t)
	per := make([]int, h.m.ControlPlaneReplicas())
	for _, i := range on {
		per[i]++
	}
	t.Logf("proxies per replica: %v", per)
}

// (f) Each replica serves Go's profiles on its --debug-addr, not on --http-addr; the JSON
// replica's log is JSON throughout, client-go's lines included.
func (h *haMesh) testPprofAndJSONLogs(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	for i := range h.m.ControlPlaneReplicas() {
		b, err := h.m.DebugGet(ctx, i, "/debug/pprof/heap")
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		// A heap profile is a gzipped profile.proto.
		if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
			t.Errorf("replica %d: /debug/pprof/heap is not a gzipped profile: %q", i, b[:min(len(b), 64)])
		}
		if b, err := h.m.DebugGet(ctx, i, "/debug/pprof/heap?debug=1"); err != nil || !bytes.HasPrefix(b, []byte("heap profile:")) {
			t.Errorf("replica %d: /debug/pprof/heap?debug=1: %v %q", i, err, b[:min(len(b), 64)])
		}
		if _, err := h.m.ControlPlaneReplicaGet(ctx, i, "/debug/pprof/heap"); err == nil || !strings.Contains(err.Error(), "404") {
			t.Errorf("replica %d serves /debug/pprof on --http-addr (%v); it belongs on --debug-addr only", i, err)
		}
	}

	// client-go's leader election logs through klog as every replica starts.
	const klogLine = "attempting to acquire leader lease"
	eventually(t, 10*time.Second, func(context.Context) error {
		b, err := os.ReadFile(h.m.ControlPlaneReplicaLog(haJSONReplica))
		if err != nil {
			return err
		}
		lines, klog := 0, 0
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			// The harness's own line at each start of the process.
			if len(line) == 0 || bytes.HasPrefix(line, []byte("=== ")) {
				continue
			}
			var rec map[string]any
			if err := json.Unmarshal(line, &rec); err != nil {
				return permanentf("replica %d logs a line that is not JSON: %q", haJSONReplica, line)
			}
			for _, k := range []string{"time", "level", "msg"} {
				if _, ok := rec[k]; !ok {
					return permanentf("replica %d logs a JSON line without %q: %s", haJSONReplica, k, line)
				}
			}
			lines++
			if msg, _ := rec["msg"].(string); strings.Contains(msg, klogLine) {
				klog++
			}
		}
		if klog == 0 {
			return fmt.Errorf("none of replica %d's %d JSON lines says %q", haJSONReplica, lines, klogLine)
		}
		return nil
	})
}

// permanentf ends an eventually at once: what it found will not get better.
func permanentf(format string, args ...any) error {
	return localmesh.Permanent(fmt.Errorf(format, args...))
}

// (c) With two replicas running for a minute (resyncs every 2 s), then each restarted
// once, one after the other: every Event and status was written once. Counted as
// bearkong_kube_api_writes_total summed over every replica process since the mesh
// started (the restarts of testSameConfig included), and against the Events and
// ConfigMaps in the API.
func (h *haMesh) testWritesOnce(t *testing.T) {
	h.waitSynced(t)
	ctx := ctxT(t, 3*time.Minute)
	// What there is to write, once: the Event for app-1's mesh-timeout=banana, and
	// haRoute's status.
	h.waitEvent(t, 20*time.Second, "app-1", mesh.ReasonInvalidAnnotation, mesh.AnnotationTimeout)
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		gen, observed, err := h.routeAccepted(ctx)
		if err == nil && observed != gen {
			err = fmt.Errorf("%s: Accepted for generation %d, want %d", haRoute, observed, gen)
		}
		return err
	})
	if d := time.Until(h.started.Add(time.Minute)); d > 0 {
		t.Logf("waiting %s, until both replicas have run for a minute", d.Round(time.Second))
		time.Sleep(d)
	}
	before := h.allWrites(t)
	for i := range h.m.ControlPlaneReplicas() {
		h.restartReplica(t, i)
	}
	// The Lease's new holder looks at what there is to write and finds it written. (A
	// mesh with no Lease holder still gets its writes counted below.)
	leader, holder := -1, ""
	err := localmesh.Eventually(ctx, haLeaseDuration+5*haRetryPeriod, func(ctx context.Context) (err error) {
		if leader, holder, err = h.m.LeaderReplica(ctx); err == nil && leader < 0 {
			err = fmt.Errorf("the Lease names %q, no replica of the mesh", holder)
		}
		return err
	})
	if err != nil {
		t.Errorf("after the restarts: %v", err)
	}
	time.Sleep(2*resyncPeriod + haRetryPeriod)
	w := h.allWrites(t)
	t.Logf("writes before the restarts %v; after, with replica %d leading: %v", nonZero(before), leader, nonZero(w))

	evs, err := h.bearkongEvents(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[apiEvent]bool{}
	for _, e := range evs {
		if e.Repeated {
			t.Errorf("Event written more than once (it has a series): %+v", e)
		}
		e.Repeated = false
		if seen[e] {
			t.Errorf("two Events on %s %s/%s for %s %q", e.Kind, e.Namespace, e.Name, e.Reason, e.Note)
		}
		seen[e] = true
	}
	if len(evs) == 0 {
		t.Error("no Event from bearkong in the API")
	}
	if got := w["events create ok"]; got != float64(len(evs)) {
		t.Errorf("%v Events created for %d in the API", got, len(evs))
	}
	if got := w["events patch ok"]; got != 0 {
		t.Errorf("%v Event patches (repeats)", got)
	}
	if got := w["httproutes/status update ok"]; got != 1 {
		t.Errorf("%v status updates of %s's one generation, want 1", got, haRoute)
	}
	cms, err := h.env.Client.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + discovery.RootConfigMapName})
	if err != nil {
		t.Fatal(err)
	}
	if len(cms.Items) == 0 {
		t.Errorf("no ConfigMap %s in the API", discovery.RootConfigMapName)
	}
	if got := w["configmaps create ok"]; got != float64(len(cms.Items)) {
		t.Errorf("%v ConfigMaps created for %d in the API", got, len(cms.Items))
	}
	if got := w["configmaps update ok"]; got != 0 {
		t.Errorf("%v ConfigMap updates of an unchanged CA root", got)
	}
	h.waitSynced(t)
}

// loadResult is what a request loop saw.
type loadResult struct {
	ok       int
	failures []string // the first few
	failed   int
}

// startLoad sends requests from every pod to every app in turn, one goroutine per pod,
// about 50 a second each (a steady load that leaves the two cores to the failover),
// until stop is called (or two minutes pass), and counts those that did not get a 200
// from the app they asked for.
func startLoad(m *localmesh.Mesh) (stop func() loadResult) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	var (
		mu  sync.Mutex
		res loadResult
		wg  sync.WaitGroup
	)
	for _, p := range m.Pods() {
		wg.Go(func() {
			for n := 0; n < 100000 && ctx.Err() == nil; n++ {
				to := localmesh.DemoApps[n%len(localmesh.DemoApps)].Name
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				c := m.Call(rctx, p.Name, to)
				rcancel()
				if ctx.Err() != nil {
					return // stopped during the request: not the mesh's failure
				}
				mu.Lock()
				if c.Err == nil && c.Status == 200 && c.Answer.Name == to {
					res.ok++
				} else {
					res.failed++
					if len(res.failures) < 5 {
						res.failures = append(res.failures, fmt.Sprintf("%s -> %s: %d %v %.100q", p.Name, to, c.Status, c.Err, c.Body))
					}
				}
				mu.Unlock()
				_ = sleepCtx(ctx, 20*time.Millisecond)
			}
		})
	}
	return func() loadResult {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return res
	}
}

// (b) SIGKILL of the Lease holder under a steady request loop across every pod: no
// request fails; every proxy is SYNCED on the survivor within 10 s; the survivor takes
// the Lease within the lease duration (plus the retry periods at which it looks); a bad
// annotation and an HTTPRoute change made after the kill get their Event and status.
func (h *haMesh) testLeaderKilled(t *testing.T) {
	_, on := h.waitSynced(t)
	ctx := ctxT(t, 2*time.Minute)
	leader := h.leader(t)
	survivor := (leader + 1) % h.m.ControlPlaneReplicas()
	onLeader := func(on map[string]int) int {
		n := 0
		for _, i := range on {
			if i == leader {
				n++
			}
		}
		return n
	}
	if onLeader(on) < len(on) {
		// Where each proxy connects is up to its gRPC client. Move them all to the
		// leader, so that the kill moves every one: restart the other replica, and its
		// proxies reconnect to the only one left.
		if err := h.m.StopControlPlaneReplica(survivor); err != nil {
			t.Fatal(err)
		}
		if err := h.m.StartControlPlaneReplica(ctx, survivor); err != nil {
			t.Fatal(err)
		}
		_, on = h.waitSynced(t)
	}
	moving := onLeader(on)
	if moving == 0 {
		t.Fatalf("no proxy on replica %d, the leader, to move: %v", leader, on)
	}
	stop := startLoad(h.m)
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	time.Sleep(time.Second) // the loop is in full swing

	killed := time.Now()
	if err := h.m.KillControlPlane(leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed replica %d, the Lease holder, with %d of the %d proxies on it", leader, moving, len(on))
	var syncedAfter, leaseAfter time.Duration
	err := localmesh.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		if syncedAfter == 0 {
			if _, _, err := h.synced(ctx, true); err == nil {
				syncedAfter = time.Since(killed)
			}
		}
		if leaseAfter == 0 {
			if i, _, err := h.m.LeaderReplica(ctx); err == nil && i == survivor {
				leaseAfter = time.Since(killed)
			}
		}
		if syncedAfter == 0 || leaseAfter == 0 {
			return fmt.Errorf("after the kill: every proxy synced on replica %d after %s, Lease taken after %s (0: not yet)", survivor, syncedAfter, leaseAfter)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("every proxy SYNCED on replica %d %s after the kill; it took the Lease after %s", survivor, syncedAfter.Round(time.Millisecond), leaseAfter.Round(time.Millisecond))
	if syncedAfter > 10*time.Second {
		t.Errorf("every proxy SYNCED on the survivor %s after the kill, want within 10s", syncedAfter)
	}
	// client-go's candidate counts the lease duration from when it last saw the record
	// change (the leader's last renewal, seen at its next try), and takes the Lease at its
	// first try after that; it tries every retry period plus a jitter of up to 1.2 of it
	// (leaderelection.JitterFactor). Add half a second for the API's round trips and this
	// test's polling.
	try := haRetryPeriod + haRetryPeriod*12/10
	if bound := haLeaseDuration + 2*try + 500*time.Millisecond; leaseAfter > bound {
		t.Errorf("the survivor took the Lease %s after the kill, want within %s", leaseAfter, bound)
	}
	// client-go writes the Lease, then calls OnStartedLeading in a goroutine of its own,
	// which sets the gauge: the API may name the survivor a moment before its metric does.
	if err := localmesh.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
		mt, err := h.metrics(ctx, survivor)
		if err != nil {
			return err
		}
		if mt["bearkong_leader"] != 1 {
			return fmt.Errorf("the survivor's bearkong_leader = %v, want 1", mt["bearkong_leader"])
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Made after the kill, written by the new leader.
	if err := h.m.SetServiceAnnotations(ctx, "app-3", map[string]string{mesh.AnnotationTimeout: "nope"}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := h.m.SetServiceAnnotations(ctxT(t, 10*time.Second), "app-3", nil); err != nil {
			t.Error(err)
		}
	}()
	err = retryUpdate(ctx, func() error {
		rt, err := h.gw.GatewayV1().HTTPRoutes(haNamespace).Get(ctx, haRoute, metav1.GetOptions{})
		if err != nil {
			return err
		}
		// Same backend, another weight: a new generation that routes the same.
		rt.Spec.Rules[0].BackendRefs[0].Weight = ptr(*rt.Spec.Rules[0].BackendRefs[0].Weight + 1)
		_, err = h.gw.GatewayV1().HTTPRoutes(haNamespace).Update(ctx, rt, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	h.waitEvent(t, 15*time.Second, "app-3", mesh.ReasonInvalidAnnotation, mesh.AnnotationTimeout)
	eventually(t, 15*time.Second, func(ctx context.Context) error {
		gen, observed, err := h.routeAccepted(ctx)
		if err == nil && observed != gen {
			err = fmt.Errorf("%s: Accepted for generation %d, want %d", haRoute, observed, gen)
		}
		return err
	})

	res := stop()
	stopped = true
	t.Logf("request loop: %d ok, %d failed", res.ok, res.failed)
	if res.failed > 0 {
		t.Errorf("%d requests failed across the failover, e.g. %q", res.failed, res.failures)
	}
	if res.ok < 100 {
		t.Errorf("only %d requests in the loop: too few to tell", res.ok)
	}

	if err := h.m.StartControlPlaneReplica(ctx, leader); err != nil {
		t.Fatalf("%v\n%s", err, kubeenv.LogTail(h.m.ControlPlaneReplicaLog(leader), 4096))
	}
	h.waitSynced(t)
}

// retryUpdate retries fn on conflicts, a few times.
func retryUpdate(ctx context.Context, fn func() error) error {
	var err error
	for range 5 {
		if err = fn(); err == nil || !strings.Contains(err.Error(), "the object has been modified") {
			return err
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	return err
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// versionsOf returns each node's acknowledged version of each object type.
func versionsOf(byNode map[string]ads.StreamInfo) map[string][]string {
	out := map[string][]string{}
	for node, s := range byNode {
		for _, typ := range objectTypes {
			out[node] = append(out[node], s.Types.Get(typ).VersionAcked)
		}
	}
	return out
}

// (d) Without the admission policy: mesh-timeout 2s, then banana, then a restart of every
// replica: each proxy is served the same config before and after, and either replica
// serves it the same. With the policy: banana is refused at write time, naming the
// annotation.
func (h *haMesh) testSameConfig(t *testing.T) {
	before, _ := h.waitSynced(t)
	ctx := ctxT(t, 2*time.Minute)
	app2 := nodeID(h.m.PodsOf("app-2")[0])
	if err := h.m.SetServiceAnnotations(ctx, "app-2", map[string]string{mesh.AnnotationTimeout: "2s"}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := h.m.SetServiceAnnotations(ctxT(t, 10*time.Second), "app-2", nil); err != nil {
			t.Error(err)
		}
	}()
	eventually(t, 15*time.Second, func(ctx context.Context) error {
		byNode, _, err := h.synced(ctx, false)
		if err == nil && byNode[app2].Types.RDS.VersionAcked == before[app2].Types.RDS.VersionAcked {
			err = fmt.Errorf("%s has no new RDS version for mesh-timeout 2s yet", app2)
		}
		return err
	})
	if err := h.m.SetServiceAnnotations(ctx, "app-2", map[string]string{mesh.AnnotationTimeout: "banana"}); err != nil {
		t.Fatal(err)
	}
	h.waitEvent(t, 15*time.Second, "app-2", mesh.ReasonInvalidAnnotation, "banana")
	time.Sleep(time.Second) // the snapshot that reported it has reached every proxy
	served, _ := h.waitSynced(t)

	h.restartAll(t)
	after, on := h.waitSynced(t)
	v0, v1 := versionsOf(served), versionsOf(after)
	for node := range v0 {
		if !slices.Equal(v0[node], v1[node]) {
			t.Errorf("%s: versions %v (%v) before the restart of every replica, %v after", node, v0[node], objectTypes, v1[node])
		}
	}

	// Ask each replica, as each proxy, for what the proxy subscribes to: both answer
	// the versions the proxy runs.
	creds, _ := xdsTLS(t, h.m)
	for _, p := range h.m.Pods() {
		node := nodeID(p)
		b, err := h.m.ControlPlaneReplicaGet(ctx, on[node], "/debug/streams?node="+node)
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Streams []ads.StreamInfo `json:"streams"`
		}
		if err := json.Unmarshal(b, &body); err != nil || len(body.Streams) != 1 {
			t.Fatalf("/debug/streams?node=%s: %v %s", node, err, b)
		}
		token, err := h.m.RequestToken(ctx, p.Name, localmesh.TokenAudience)
		if err != nil {
			t.Fatal(err)
		}
		for i, addr := range h.m.XDSAddrs() {
			got, err := fetchVersions(ctx, addr, creds, token, podNode(p), body.Streams[0].Types)
			if err != nil {
				t.Fatalf("replica %d as %s: %v", i, node, err)
			}
			if !slices.Equal(got, v1[node]) {
				t.Errorf("replica %d serves %s versions %v; the proxy runs %v (%v)", i, node, got, v1[node], objectTypes)
			}
		}
	}

	// With the admission policy, the same annotation does not get in.
	if err := h.m.SetServiceAnnotations(ctx, "app-2", nil); err != nil {
		t.Fatal(err)
	}
	if err := localmesh.InstallAdmissionPolicy(ctx, h.env); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := localmesh.RemoveAdmissionPolicy(ctxT(t, 10*time.Second), h.env); err != nil {
			t.Error(err)
		}
	}()
	annotate := func(ctx context.Context, value string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, h.kubectl, "--kubeconfig", h.env.Kubeconfig, "-n", haNamespace,
			"annotate", "--overwrite", "service", "app-2", mesh.AnnotationTimeout+"="+value)
		return cmd.CombinedOutput()
	}
	// The API server loads a new policy within a moment; until then the write gets in.
	eventually(t, 15*time.Second, func(ctx context.Context) error {
		out, err := annotate(ctx, "banana")
		if ctx.Err() != nil {
			return ctx.Err() // kubectl was cut short
		}
		if err == nil {
			if err := h.m.SetServiceAnnotations(ctx, "app-2", nil); err != nil {
				return permanentf("%v", err)
			}
			return fmt.Errorf("kubectl annotate mesh-timeout=banana got in: %s", out)
		}
		if !strings.Contains(string(out), mesh.AnnotationTimeout) {
			return permanentf("kubectl annotate mesh-timeout=banana refused without naming the annotation: %v: %s", err, out)
		}
		t.Logf("refused: %s", bytes.TrimSpace(out))
		return nil
	})
	if out, err := annotate(ctx, "2s"); err != nil {
		t.Errorf("kubectl annotate mesh-timeout=2s, a valid value, refused: %v: %s", err, out)
	}
}

// fetchVersions opens an ADS stream to a replica as the proxy node would (its token and
// node), subscribes to the names its Envoy subscribes to, ACKs what comes, and returns
// the version of each object type (objectTypes order).
func fetchVersions(ctx context.Context, addr string, creds credentials.TransportCredentials, token string, node *corev3.Node, subs ads.TypeInfos) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string][]string{}
	for k, typ := range objectTypes {
		if !typ.Wildcard() {
			names[typ.URL()] = subs.Get(typ).Subscribed
		}
		r := &discoveryv3.DiscoveryRequest{TypeUrl: typ.URL(), ResourceNames: names[typ.URL()]}
		if k == 0 {
			r.Node = node
		}
		if err := stream.Send(r); err != nil {
			break // the server ended the stream; Recv says why
		}
	}
	got := map[string]string{}
	for range 100 {
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		got[resp.GetTypeUrl()] = resp.GetVersionInfo()
		_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: names[resp.GetTypeUrl()]})
		var out []string
		for _, typ := range objectTypes {
			if v, ok := got[typ.URL()]; ok {
				out = append(out, v)
			}
		}
		if len(out) == len(objectTypes) {
			return out, nil
		}
	}
	return nil, errors.New("100 responses without every object type")
}

// (e) SIGKILL of every replica, then a restart of each: every proxy is SYNCED again
// within 5 s of the first replica being ready.
func (h *haMesh) testAllKilled(t *testing.T) {
	h.waitSynced(t)
	ctx := ctxT(t, 2*time.Minute)
	n := h.m.ControlPlaneReplicas()
	for i := range n {
		if err := h.m.KillControlPlane(i); err != nil {
			t.Fatal(err)
		}
	}
	type started struct {
		replica int
		at      time.Time
		err     error
	}
	ready := make(chan started, n)
	for i := range n {
		go func() {
			err := h.m.StartControlPlaneReplica(ctx, i)
			ready <- started{i, time.Now(), err}
		}()
	}
	first := <-ready
	if first.err != nil {
		t.Fatalf("%v\n%s", first.err, kubeenv.LogTail(h.m.ControlPlaneReplicaLog(first.replica), 4096))
	}
	var syncedAfter time.Duration
	err := localmesh.Eventually(ctx, 15*time.Second, func(ctx context.Context) error {
		_, _, err := h.synced(ctx, true)
		if err == nil {
			syncedAfter = time.Since(first.at)
		}
		return err
	})
	for range n - 1 {
		if s := <-ready; s.err != nil {
			t.Errorf("%v\n%s", s.err, kubeenv.LogTail(h.m.ControlPlaneReplicaLog(s.replica), 4096))
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("every proxy SYNCED %s after replica %d, the first back, was ready", syncedAfter.Round(time.Millisecond), first.replica)
	if syncedAfter > 5*time.Second {
		t.Errorf("every proxy SYNCED %s after the first replica was ready, want within 5s", syncedAfter)
	}
	h.waitSynced(t)
}
