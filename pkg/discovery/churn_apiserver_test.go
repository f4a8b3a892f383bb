package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestUnrelatedPodChurnBuildsNothing runs discovery against a real kube-apiserver and
// churns 1000 Pods that no meshed Service selects, in the namespace of a meshed Service
// (created, their status and labels updated, deleted, by a few workers): no snapshot is
// built, the ignored counter counts every event, and then a change to the selected pod
// builds and publishes as usual.
func TestUnrelatedPodChurnBuildsNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	const (
		churned = 1000
		workers = 4
		// Each churned pod makes five watch events: added, status updated, labels
		// updated, and its deletion: the API server first sets deletionTimestamp (an
		// update), then removes it.
		eventsPerPod = 5
	)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	// The churn is the test's load, not what it measures: let it go fast.
	cfg := rest.CopyConfig(env.RESTConfig)
	cfg.QPS, cfg.Burst = 500, 1000
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	const ns = "shop"
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	// No controller-manager: nothing creates the default ServiceAccount the pods use.
	must(admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}))
	svc := service(ns, "app-1", meshed)
	svc.ResourceVersion = ""
	must(admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}))
	no := false
	newPod := func(name string, lbls map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
			Spec:       corev1.PodSpec{AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "app", Image: "app"}}},
		}
	}
	selected, err := admin.CoreV1().Pods(ns).Create(ctx, newPod("app-1-0", map[string]string{"app": "app-1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	selected.Status.PodIP, selected.Status.PodIPs = "10.1.0.1", []corev1.PodIP{{IP: "10.1.0.1"}}
	if selected, err = admin.CoreV1().Pods(ns).UpdateStatus(ctx, selected, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := endpointSlice(ns, "app-1-x", "app-1", discoveryv1.AddressTypeIPv4, endpoint("10.1.0.1", "app-1-0"))
	slice.ResourceVersion = ""
	must(admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}))

	reg := prometheus.NewRegistry()
	d := New(bearkongClient(ctx, t, env), Options{QuietPeriod: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	awaitSnapshot(ctx, t, d, "the meshed Service with its pod", func(s *mesh.Snapshot) bool {
		p := s.Proxy(ns, "app-1-0")
		return p != nil && p.IP == "10.1.0.1"
	})

	read := func(name string, labels map[string]string) float64 {
		t.Helper()
		v, err := gatherValue(reg, name, labels)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	snapshots := func() float64 {
		return read("bearkong_discovery_snapshots_total", map[string]string{"result": resultPublished}) +
			read("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}) +
			read("bearkong_discovery_snapshots_total", map[string]string{"result": resultError})
	}
	podEvents := func() float64 {
		return read("bearkong_discovery_events_total", map[string]string{"kind": kindPod, "event": eventAdd}) +
			read("bearkong_discovery_events_total", map[string]string{"kind": kindPod, "event": eventUpdate}) +
			read("bearkong_discovery_events_total", map[string]string{"kind": kindPod, "event": eventDelete})
	}
	snaps0, builds0 := snapshots(), read("bearkong_discovery_snapshot_build_seconds", nil)
	events0, ignored0 := podEvents(), read("bearkong_discovery_events_ignored_total", map[string]string{"kind": kindPod})

	// The churn: pods of a Deployment no meshed Service selects, in the same namespace.
	start := time.Now()
	work := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range work {
				if err := churnPod(ctx, admin, ns, i, newPod); err != nil {
					errs <- err
					return
				}
			}
		})
	}
feed:
	for i := range churned {
		select {
		case work <- i:
		case err := <-errs:
			t.Errorf("churn: %v", err)
			break feed
		}
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("churn: %v", err)
	}
	if t.Failed() {
		return
	}
	t.Logf("churned %d pods (%d writes) in %v", churned, churned*4, time.Since(start).Round(time.Millisecond))

	// Wait until discovery has seen every event of the churn, then a quiet period and a
	// maximum delay more, so that a build the last events caused would have happened.
	want := events0 + churned*eventsPerPod
	deadline := time.Now().Add(time.Minute)
	for podEvents() < want {
		if time.Now().After(deadline) {
			t.Fatalf("discovery saw %v pod events of the churn's %d", podEvents()-events0, churned*eventsPerPod)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(d.opts.MaxDelay + 10*d.opts.QuietPeriod)

	if got := snapshots(); got != snaps0 {
		t.Errorf("bearkong_discovery_snapshots_total moved by %v during the churn, want 0", got-snaps0)
	}
	if got := read("bearkong_discovery_snapshot_build_seconds", nil); got != builds0 {
		t.Errorf("bearkong_discovery_snapshot_build_seconds counted %v builds during the churn, want 0", got-builds0)
	}
	if got := read("bearkong_discovery_events_ignored_total", map[string]string{"kind": kindPod}) - ignored0; got != churned*eventsPerPod {
		t.Errorf("bearkong_discovery_events_ignored_total{kind=pod} moved by %v, want %d (every event of the churn)", got, churned*eventsPerPod)
	}
	if got := podEvents() - events0; got != churned*eventsPerPod {
		t.Errorf("pod events = %v, want %d", got, churned*eventsPerPod)
	}

	// A change to the selected pod still builds and publishes.
	selected.Status.PodIP, selected.Status.PodIPs = "10.1.0.2", []corev1.PodIP{{IP: "10.1.0.2"}}
	if _, err := admin.CoreV1().Pods(ns).UpdateStatus(ctx, selected, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	awaitSnapshot(ctx, t, d, "the selected pod's new IP", func(s *mesh.Snapshot) bool {
		p := s.Proxy(ns, "app-1-0")
		return p != nil && p.IP == "10.1.0.2"
	})
	if got := read("bearkong_discovery_snapshots_total", map[string]string{"result": resultPublished}); got <= 1 {
		t.Errorf("published snapshots = %v, want more than the first", got)
	}
}

// churnPod creates pod i, sets its status (an IP, as the kubelet does), changes its
// labels (as a rollout's pod-template-hash would) and deletes it.
func churnPod(ctx context.Context, c kubernetes.Interface, ns string, i int, newPod func(string, map[string]string) *corev1.Pod) error {
	name := fmt.Sprintf("batch-%d", i)
	p, err := c.CoreV1().Pods(ns).Create(ctx, newPod(name, map[string]string{"app": "batch", "pod-template-hash": "a"}), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	ip := fmt.Sprintf("10.2.%d.%d", i/250, i%250+1)
	p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = corev1.PodRunning, ip, []corev1.PodIP{{IP: ip}}
	if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of %s: %w", name, err)
	}
	patch := []byte(`{"metadata":{"labels":{"pod-template-hash":"b"}}}`)
	if _, err := c.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("labels of %s: %w", name, err)
	}
	// Grace period 0: no kubelet runs to finish a graceful deletion.
	if err := c.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// awaitSnapshot waits (bounded by ctx) for the latest snapshot to satisfy ok.
func awaitSnapshot(ctx context.Context, t *testing.T, d *Discovery, what string, ok func(*mesh.Snapshot) bool) *mesh.Snapshot {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		if s := d.Latest(); s != nil && ok(s) {
			return s
		}
		select {
		case <-ctx.Done():
			s := d.Latest()
			if s == nil {
				t.Fatalf("%s: no snapshot", what)
			}
			t.Fatalf("%s: not in the snapshot: %s", what, describe(s))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// gatherValue reads one sample (a counter's value, a histogram's count) from reg.
func gatherValue(reg *prometheus.Registry, name string, labels map[string]string) (float64, error) {
	families, err := reg.Gather()
	if err != nil {
		return 0, err
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue metric
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount()), nil
			}
			return m.GetCounter().GetValue(), nil
		}
	}
	return 0, fmt.Errorf("metric %s%v not found", name, labels)
}
