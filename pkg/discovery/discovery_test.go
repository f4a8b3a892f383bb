package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Bounds for every wait in these tests. waitFor is how long something that should
// happen may take (generous, for -race on a busy machine); quiet is how long we watch
// to prove that nothing happens.
const (
	waitFor = 5 * time.Second
	quiet   = 300 * time.Millisecond
)

// fastOptions are the short coalescing delays most tests use.
func fastOptions() Options {
	return Options{QuietPeriod: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}
}

// newFakeClient returns a fake clientset holding objs. It is the simple one, which
// stores writes as they come: the field-managed NewClientset runs server-side-apply
// bookkeeping on every write, about a hundred times slower under -race, which would
// make the coalescing tests measure the fake instead of the code. Nothing here uses
// apply, the reason NewSimpleClientset is deprecated.
func newFakeClient(objs ...runtime.Object) *fake.Clientset {
	return fake.NewSimpleClientset(objs...) //nolint:staticcheck // see above
}

// harness runs a Discovery against a fake clientset.
type harness struct {
	t      *testing.T
	client *fake.Clientset
	d      *Discovery
	reg    *prometheus.Registry

	// watches counts the watches the informers opened. The fake clientset does not
	// replay changes made between an informer's list and its watch, so tests wait for
	// all four watches before they change anything.
	watches atomic.Int32
	rv      atomic.Int64
	cancel  context.CancelFunc
	runErr  chan error
}

// newHarness prepares a Discovery over a fake clientset holding objs; start runs it.
func newHarness(t *testing.T, opts Options, objs ...runtime.Object) *harness {
	t.Helper()
	h := &harness{t: t, reg: prometheus.NewRegistry(), runErr: make(chan error, 1)}
	h.rv.Store(100)
	h.client = newFakeClient(objs...)
	h.client.PrependWatchReactor("*", func(k8stesting.Action) (bool, watch.Interface, error) {
		h.watches.Add(1)
		return false, nil, nil // let the default reactor open the watch
	})
	opts.Registerer = h.reg
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	h.d = New(h.client, opts)
	return h
}

// run starts Run in the background and arranges for it to stop, and return nil, at
// the end of the test.
func (h *harness) run() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.d.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.runErr:
			if err != nil {
				h.t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(waitFor):
			h.t.Errorf("Run did not return within %v of cancel", waitFor)
		}
	})
}

// start runs Discovery, waits for its first snapshot and for the informers' watches,
// and returns the first snapshot.
func (h *harness) start() *mesh.Snapshot {
	h.t.Helper()
	h.run()
	first := h.next()
	deadline := time.Now().Add(waitFor)
	for h.watches.Load() < 4 {
		if time.Now().After(deadline) {
			h.t.Fatalf("informers opened %d watches, want 4", h.watches.Load())
		}
		time.Sleep(time.Millisecond)
	}
	return first
}

// next waits for the next published snapshot.
func (h *harness) next() *mesh.Snapshot {
	h.t.Helper()
	select {
	case s := <-h.d.Snapshots():
		return s
	case <-time.After(waitFor):
		h.t.Fatalf("no snapshot within %v", waitFor)
		return nil
	}
}

// nothing asserts that no snapshot is published for a while.
func (h *harness) nothing() {
	h.t.Helper()
	select {
	case s := <-h.d.Snapshots():
		h.t.Fatalf("unexpected snapshot: %s", describe(s))
	case <-time.After(quiet):
	}
}

// bump gives obj a new resourceVersion, as the API server does on every write; the
// fake clientset does not.
func (h *harness) bump(obj metav1.Object) {
	obj.SetResourceVersion(strconv.FormatInt(h.rv.Add(1), 10))
}

func (h *harness) apply(obj runtime.Object, create bool) {
	h.t.Helper()
	ctx := context.Background()
	h.bump(obj.(metav1.Object))
	var err error
	switch o := obj.(type) {
	case *corev1.Service:
		if create {
			_, err = h.client.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		} else {
			_, err = h.client.CoreV1().Services(o.Namespace).Update(ctx, o, metav1.UpdateOptions{})
		}
	case *discoveryv1.EndpointSlice:
		if create {
			_, err = h.client.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		} else {
			_, err = h.client.DiscoveryV1().EndpointSlices(o.Namespace).Update(ctx, o, metav1.UpdateOptions{})
		}
	case *corev1.Pod:
		if create {
			_, err = h.client.CoreV1().Pods(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		} else {
			_, err = h.client.CoreV1().Pods(o.Namespace).Update(ctx, o, metav1.UpdateOptions{})
		}
	case *corev1.Namespace:
		if create {
			_, err = h.client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		} else {
			_, err = h.client.CoreV1().Namespaces().Update(ctx, o, metav1.UpdateOptions{})
		}
	default:
		h.t.Fatalf("unexpected object %T", obj)
	}
	if err != nil {
		h.t.Fatalf("write %T: %v", obj, err)
	}
}

func (h *harness) create(obj runtime.Object) { h.t.Helper(); h.apply(obj, true) }
func (h *harness) update(obj runtime.Object) { h.t.Helper(); h.apply(obj, false) }

// counter reads one sample of a counter vector from the harness's registry.
func (h *harness) counter(name string, labels map[string]string) float64 {
	h.t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		h.t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metric
				}
			}
			if m.GetHistogram() != nil {
				return float64(m.GetHistogram().GetSampleCount())
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	h.t.Fatalf("metric %s%v not found", name, labels)
	return 0
}

// waitCounter waits until a counter reaches want.
func (h *harness) waitCounter(name string, labels map[string]string, want float64) {
	h.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		got := h.counter(name, labels)
		if got == want {
			return
		}
		if got > want || time.Now().After(deadline) {
			h.t.Fatalf("%s%v = %v, want %v", name, labels, got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func describe(s *mesh.Snapshot) string {
	out := fmt.Sprintf("changedAt=%s services=[", s.ChangedAt.Format(time.RFC3339Nano))
	for _, svc := range s.Services {
		out += fmt.Sprintf(" %s ann=%v eps=%v", svc.Key(), svc.Annotations, svc.Endpoints)
	}
	out += " ] proxies=["
	for k, p := range s.Proxies {
		out += fmt.Sprintf(" %s(%s %v)", k, p.IP, p.Services)
	}
	return out + " ]"
}

// tWriter sends the package's logs to the test log, so a failure shows what happened.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// app1 is a meshed Service with one ready endpoint and its pod.
func app1() (*corev1.Service, *discoveryv1.EndpointSlice, *corev1.Pod) {
	return service("default", "app-1", meshed),
		endpointSlice("default", "app-1-x", "app-1", discoveryv1.AddressTypeIPv4, endpoint("10.0.0.1", "app-1-0")),
		pod("default", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1"})
}

func TestFirstSnapshot(t *testing.T) {
	svc, slice, p := app1()
	h := newHarness(t, fastOptions(), svc, slice, p, service("default", "plain"))
	before := time.Now()
	first := h.start()

	if !h.d.HasSynced() || h.d.Latest() != first {
		t.Fatalf("HasSynced=%v Latest=%p, want true and the first snapshot %p", h.d.HasSynced(), h.d.Latest(), first)
	}
	if first.ChangedAt.Before(before) || first.ChangedAt.After(time.Now()) {
		t.Errorf("ChangedAt %v is not within the run", first.ChangedAt)
	}
	want := &mesh.Snapshot{
		Services: []*mesh.Service{{
			Namespace: "default", Name: "app-1", Ports: httpPort(),
			Endpoints: []mesh.Endpoint{{IP: "10.0.0.1", Pod: "app-1-0"}},
		}},
		Proxies: map[string]*mesh.Proxy{
			"default/app-1-0": {Namespace: "default", Name: "app-1-0", IP: "10.0.0.1", Services: []string{"default/app-1"}},
		},
	}
	if diff := cmpDiff(want, first); diff != "" {
		t.Errorf("first snapshot (-want +got):\n%s", diff)
	}
	// The initial list was the only change; nothing more follows it.
	h.nothing()
}

func TestFirstSnapshotOfEmptyCluster(t *testing.T) {
	h := newHarness(t, fastOptions())
	first := h.start()
	if len(first.Services) != 0 || len(first.Proxies) != 0 || first.ChangedAt.IsZero() {
		t.Fatalf("first snapshot of an empty cluster: %s", describe(first))
	}
}

func TestNothingBeforeCacheSync(t *testing.T) {
	svc, slice, p := app1()
	h := newHarness(t, fastOptions(), svc, slice, p)
	release := make(chan struct{})
	var once sync.Once
	releaseList := func() { once.Do(func() { close(release) }) }
	t.Cleanup(releaseList)
	// Hold the Services list until released; the fake clientset serializes its calls,
	// so every informer stalls behind it.
	h.client.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	})
	h.run()

	h.nothing()
	if h.d.HasSynced() || h.d.Latest() != nil {
		t.Fatalf("before sync: HasSynced=%v Latest=%v, want false and nil", h.d.HasSynced(), h.d.Latest())
	}

	releaseList()
	first := h.next()
	if len(first.Services) != 1 || !h.d.HasSynced() {
		t.Fatalf("after sync: HasSynced=%v snapshot %s", h.d.HasSynced(), describe(first))
	}
}

func TestRunFailsWhenCancelledBeforeSync(t *testing.T) {
	h := newHarness(t, fastOptions())
	release := make(chan struct{})
	h.client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		<-release
		return false, nil, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- h.d.Run(ctx) }()

	cancel()
	close(release)
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run = %v, want an error wrapping context.Canceled", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return")
	}
	if h.d.HasSynced() || h.d.Latest() != nil {
		t.Fatal("nothing may be published when the caches never synced")
	}
}

func TestRunTwice(t *testing.T) {
	h := newHarness(t, fastOptions())
	h.start()
	if err := h.d.Run(context.Background()); err == nil {
		t.Fatal("second Run succeeded, want an error")
	}
}

func TestChanges(t *testing.T) {
	tests := []struct {
		name   string
		change func(h *harness, svc *corev1.Service, slice *discoveryv1.EndpointSlice, p *corev1.Pod)
		// check is nil when the change must publish nothing.
		check func(t *testing.T, s *mesh.Snapshot)
		// ignored is the kind of a change that must not even be built: it touches
		// nothing bearkong keeps of the object (filter.go).
		ignored string
	}{
		{
			name:    "unrelated annotation",
			ignored: kindService,
			change: func(h *harness, svc *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				withAnnotations("team", "bears")(svc)
				h.update(svc)
			},
		},
		{
			name: "unrelated label",
			change: func(h *harness, svc *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				svc.Labels["team"] = "bears"
				h.update(svc)
			},
		},
		{
			name: "unmeshed service created",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				h.create(service("default", "plain"))
			},
		},
		{
			name:    "pod condition timestamp",
			ignored: kindPod,
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, p *corev1.Pod) {
				p.Status.Conditions = []corev1.PodCondition{{
					Type: corev1.PodReady, Status: corev1.ConditionTrue, LastProbeTime: metav1.Now(),
				}}
				h.update(p)
			},
		},
		{
			name: "pod label the selector ignores",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, p *corev1.Pod) {
				p.Labels["version"] = "v2"
				h.update(p)
			},
		},
		{
			name: "mesh-timeout annotation",
			change: func(h *harness, svc *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				withAnnotations("mesh-timeout", "2s")(svc)
				h.update(svc)
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if got := s.Services[0].Annotations["mesh-timeout"]; got != "2s" {
					t.Errorf("mesh-timeout = %q, want 2s", got)
				}
			},
		},
		{
			name: "service leaves the mesh",
			change: func(h *harness, svc *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				delete(svc.Labels, mesh.MeshedLabel)
				h.update(svc)
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if len(s.Services) != 0 || len(s.Proxies) != 0 {
					t.Errorf("want an empty mesh, got %s", describe(s))
				}
			},
		},
		{
			name: "endpoint terminates and stops serving",
			change: func(h *harness, _ *corev1.Service, slice *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				conditions(ptr(false), ptr(false), ptr(true))(&slice.Endpoints[0])
				h.update(slice)
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if eps := s.Services[0].Endpoints; len(eps) != 0 {
					t.Errorf("endpoints = %v, want none", eps)
				}
			},
		},
		{
			name: "second slice adds an endpoint",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				h.create(endpointSlice("default", "app-1-y", "app-1", discoveryv1.AddressTypeIPv4, endpoint("10.0.0.2", "app-1-1")))
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				want := []mesh.Endpoint{{IP: "10.0.0.1", Pod: "app-1-0"}, {IP: "10.0.0.2", Pod: "app-1-1"}}
				if diff := cmpDiff(want, s.Services[0].Endpoints); diff != "" {
					t.Errorf("endpoints (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "pod selected by a second service",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				h.create(service("default", "all", meshed, withSelector(map[string]string{"app": "app-1"})))
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				p := s.Proxy("default", "app-1-0")
				if p == nil || cmpDiff([]string{"default/all", "default/app-1"}, p.Services) != "" {
					t.Errorf("proxy default/app-1-0 = %+v, want it to serve default/all and default/app-1", p)
				}
			},
		},
		{
			name: "the Namespace's mesh-mtls",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				h.create(namespace("default", mesh.AnnotationMTLS, "PERMISSIVE"))
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if got := s.Services[0].MTLS; got != mesh.MTLSPermissive {
					t.Errorf("Service mode %q, want PERMISSIVE", got)
				}
				if p := s.Proxy("default", "app-1-0"); p == nil || p.MTLS != mesh.MTLSPermissive {
					t.Errorf("proxy = %+v, want mode PERMISSIVE", p)
				}
			},
		},
		{
			name: "another Namespace's mesh-mtls",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				h.create(namespace("other", mesh.AnnotationMTLS, "DISABLE"))
			},
		},
		{
			// A pod's ServiceAccount cannot change in a real cluster (a new pod takes
			// its place); a pod replaced under the same name can have another.
			name: "pod ServiceAccount",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, p *corev1.Pod) {
				h.update(withServiceAccount(p, "web"))
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if got := s.Services[0].ServiceAccounts; cmpDiff([]string{"web"}, got) != "" {
					t.Errorf("ServiceAccounts = %v, want [web]", got)
				}
				if p := s.Proxy("default", "app-1-0"); p == nil || p.ServiceAccount != "web" {
					t.Errorf("proxy = %+v, want ServiceAccount web", p)
				}
			},
		},
		{
			name: "endpoint moves to a pod with another ServiceAccount",
			change: func(h *harness, _ *corev1.Service, slice *discoveryv1.EndpointSlice, _ *corev1.Pod) {
				h.create(withServiceAccount(pod("default", "app-1-1", "10.0.0.2", map[string]string{"app": "app-1"}), "web"))
				slice.Endpoints = []discoveryv1.Endpoint{endpoint("10.0.0.2", "app-1-1")}
				h.update(slice)
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if got := s.Services[0].ServiceAccounts; cmpDiff([]string{"web"}, got) != "" {
					t.Errorf("ServiceAccounts = %v, want [web]", got)
				}
			},
		},
		{
			name: "pod gets its IP",
			change: func(h *harness, _ *corev1.Service, _ *discoveryv1.EndpointSlice, p *corev1.Pod) {
				p.Status.PodIP = "10.0.0.7"
				h.update(p)
			},
			check: func(t *testing.T, s *mesh.Snapshot) {
				if p := s.Proxy("default", "app-1-0"); p == nil || p.IP != "10.0.0.7" {
					t.Errorf("proxy = %+v, want IP 10.0.0.7", p)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc, slice, p := app1()
			h := newHarness(t, fastOptions(), svc.DeepCopy(), slice.DeepCopy(), p.DeepCopy())
			h.start()
			var ignored float64
			if tt.ignored != "" {
				// The initial list may ignore a pod listed before its Service.
				ignored = h.counter("bearkong_discovery_events_ignored_total", map[string]string{"kind": tt.ignored})
			}
			tt.change(h, svc, slice, p)
			if tt.ignored != "" {
				h.waitCounter("bearkong_discovery_events_ignored_total", map[string]string{"kind": tt.ignored}, ignored+1)
				h.nothing()
				if got := h.counter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}); got != 0 {
					t.Errorf("unchanged snapshots = %v, want 0: an ignored change is not built", got)
				}
				return
			}
			if tt.check == nil {
				h.nothing()
				// The change was seen and built, just not published.
				h.waitCounter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}, 1)
				return
			}
			s := h.next()
			tt.check(t, s)
			if h.d.Latest() != s {
				t.Error("Latest is not the snapshot just received")
			}
			h.nothing()
		})
	}
}

func TestDeletes(t *testing.T) {
	tests := []struct {
		name   string
		delete func(ctx context.Context, h *harness) error
		want   func(t *testing.T, s *mesh.Snapshot)
	}{
		{
			name: "service",
			delete: func(ctx context.Context, h *harness) error {
				return h.client.CoreV1().Services("default").Delete(ctx, "app-1", metav1.DeleteOptions{})
			},
			want: func(t *testing.T, s *mesh.Snapshot) {
				if len(s.Services) != 0 || len(s.Proxies) != 0 {
					t.Errorf("want an empty mesh, got %s", describe(s))
				}
			},
		},
		{
			name: "endpointslice",
			delete: func(ctx context.Context, h *harness) error {
				return h.client.DiscoveryV1().EndpointSlices("default").Delete(ctx, "app-1-x", metav1.DeleteOptions{})
			},
			want: func(t *testing.T, s *mesh.Snapshot) {
				if len(s.Services) != 1 || len(s.Services[0].Endpoints) != 0 {
					t.Errorf("want app-1 without endpoints, got %s", describe(s))
				}
			},
		},
		{
			name: "pod",
			delete: func(ctx context.Context, h *harness) error {
				return h.client.CoreV1().Pods("default").Delete(ctx, "app-1-0", metav1.DeleteOptions{})
			},
			want: func(t *testing.T, s *mesh.Snapshot) {
				if len(s.Proxies) != 0 {
					t.Errorf("want no proxies, got %s", describe(s))
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc, slice, p := app1()
			h := newHarness(t, fastOptions(), svc, slice, p)
			h.start()
			if err := tt.delete(context.Background(), h); err != nil {
				t.Fatal(err)
			}
			tt.want(t, h.next())
			kind := map[string]string{"service": kindService, "endpointslice": kindEndpointSlice, "pod": kindPod}[tt.name]
			h.waitCounter("bearkong_discovery_events_total", map[string]string{"kind": kind, "event": eventDelete}, 1)
		})
	}
}

// A watch that misses a delete makes the informer deliver a DeletedFinalStateUnknown
// tombstone after a relist. The fake clientset cannot produce one, so the test plays
// the informer's part: it drops the object from the cache and calls the handler.
func TestDeletedFinalStateUnknown(t *testing.T) {
	tests := []struct {
		name      string
		tombstone func(svc *corev1.Service) cache.DeletedFinalStateUnknown
	}{
		{"with the last known object", func(svc *corev1.Service) cache.DeletedFinalStateUnknown {
			return cache.DeletedFinalStateUnknown{Key: "default/app-1", Obj: svc}
		}},
		{"without an object", func(*corev1.Service) cache.DeletedFinalStateUnknown {
			return cache.DeletedFinalStateUnknown{Key: "default/app-1"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			svc, slice, p := app1()
			h := newHarness(t, fastOptions(), svc, slice, p)
			h.start()

			informer := h.d.factory.Core().V1().Services().Informer()
			cached, ok, err := informer.GetIndexer().GetByKey("default/app-1")
			if err != nil || !ok {
				t.Fatalf("app-1 not in the cache: %v", err)
			}
			if err := informer.GetIndexer().Delete(cached); err != nil {
				t.Fatal(err)
			}
			h.d.handler(kindService).OnDelete(tt.tombstone(cached.(*corev1.Service)))

			if s := h.next(); len(s.Services) != 0 || len(s.Proxies) != 0 {
				t.Errorf("want an empty mesh, got %s", describe(s))
			}
			if got := h.counter("bearkong_discovery_events_total", map[string]string{"kind": kindService, "event": eventDelete}); got != 1 {
				t.Errorf("service delete events = %v, want 1", got)
			}
		})
	}
}

func TestResyncPublishesNothing(t *testing.T) {
	svc, slice, p := app1()
	opts := fastOptions()
	// client-go's shared informers resync at most once a second.
	opts.ResyncPeriod = time.Second
	h := newHarness(t, opts, svc, slice, p)

	// A second handler on each informer proves that resyncs do happen.
	var resyncs atomic.Int32
	for _, inf := range []cache.SharedIndexInformer{
		h.d.factory.Core().V1().Services().Informer(),
		h.d.factory.Discovery().V1().EndpointSlices().Informer(),
		h.d.factory.Core().V1().Pods().Informer(),
	} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			UpdateFunc: func(oldObj, newObj any) { resyncs.Add(1) },
		}); err != nil {
			t.Fatal(err)
		}
	}
	h.start()

	// Watch the channel through two resync rounds (each informer holds one object, so a
	// round is three updates), then a quiet period more, so that a build the last
	// resync might have caused has time to show.
	deadline := time.After(waitFor)
	for resyncs.Load() < 6 {
		select {
		case s := <-h.d.Snapshots():
			t.Fatalf("a resync published a snapshot: %s", describe(s))
		case <-deadline:
			t.Fatalf("only %d resyncs within %v", resyncs.Load(), waitFor)
		case <-time.After(10 * time.Millisecond):
		}
	}
	h.nothing()

	for _, kind := range []string{kindService, kindEndpointSlice, kindPod} {
		if got := h.counter("bearkong_discovery_events_total", map[string]string{"kind": kind, "event": eventUpdate}); got != 0 {
			t.Errorf("%s update events = %v, want 0: resyncs must be ignored", kind, got)
		}
	}
	if got := h.counter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}); got != 0 {
		t.Errorf("unchanged snapshots = %v, want 0: a resync must not even trigger a build", got)
	}
}

func TestBurstGivesOneSnapshot(t *testing.T) {
	svc, slice, p := app1()
	// The 50 writes take a few milliseconds; a 100ms quiet period leaves room for a
	// loaded machine, and MaxDelay is well beyond the burst.
	h := newHarness(t, Options{QuietPeriod: 100 * time.Millisecond, MaxDelay: 5 * time.Second}, svc, slice, p)
	h.start()

	start := time.Now()
	for i := 1; i <= 50; i++ {
		withAnnotations("mesh-timeout", fmt.Sprintf("%ds", i))(svc)
		h.update(svc)
	}
	t.Logf("burst of 50 updates took %v", time.Since(start))

	s := h.next()
	if got := s.Services[0].Annotations["mesh-timeout"]; got != "50s" {
		t.Errorf("mesh-timeout = %q, want the last value 50s", got)
	}
	if s.ChangedAt.Before(start) {
		t.Errorf("ChangedAt %v is before the burst began at %v", s.ChangedAt, start)
	}
	h.nothing()
	h.waitCounter("bearkong_discovery_events_total", map[string]string{"kind": kindService, "event": eventUpdate}, 50)
	if got := h.counter("bearkong_discovery_snapshots_total", map[string]string{"result": resultPublished}); got != 2 {
		t.Errorf("published snapshots = %v, want 2 (the first, then one for the burst)", got)
	}
}

func TestMaxDelayBoundsANeverQuietStream(t *testing.T) {
	svc, slice, p := app1()
	const maxDelay = 300 * time.Millisecond
	// Events come every 10ms, so the 100ms quiet period never elapses.
	h := newHarness(t, Options{QuietPeriod: 100 * time.Millisecond, MaxDelay: maxDelay}, svc, slice, p)
	h.start()

	ctx, stop := context.WithCancel(context.Background())
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			withAnnotations("mesh-timeout", fmt.Sprintf("%dms", i))(svc)
			h.bump(svc)
			if _, err := h.client.CoreV1().Services("default").Update(ctx, svc.DeepCopy(), metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
				t.Errorf("update: %v", err)
				return
			}
		}
	}()
	defer func() { stop(); <-streamDone }()

	// Two snapshots in a row arrive while the stream is still going, each within
	// MaxDelay (plus slack for a loaded machine) of the first event it folds in.
	for i := 0; i < 2; i++ {
		s := h.next()
		got := time.Now()
		select {
		case <-streamDone:
			t.Fatal("the stream ended before the snapshot; the test proves nothing")
		default:
		}
		if lag := got.Sub(s.ChangedAt); lag > maxDelay+500*time.Millisecond {
			t.Errorf("snapshot %d arrived %v after its first event, want about MaxDelay %v", i, lag, maxDelay)
		}
	}
}

func TestChangedAtOfSuppressedBurstDoesNotLeak(t *testing.T) {
	svc, slice, p := app1()
	h := newHarness(t, fastOptions(), svc, slice, p)
	h.start()

	// Burst A changes nothing the mesh cares about, but something bearkong keeps (a
	// label), so it is built.
	svc.Labels["team"] = "bears"
	h.update(svc)
	h.waitCounter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}, 1)

	// Burst B changes policy. Its snapshot dates from B, not from A.
	beforeB := time.Now()
	withAnnotations("mesh-timeout", "2s")(svc)
	h.update(svc)
	s := h.next()
	if s.ChangedAt.Before(beforeB) {
		t.Errorf("ChangedAt %v is before burst B began at %v: burst A's time leaked", s.ChangedAt, beforeB)
	}
}

func TestMetrics(t *testing.T) {
	svc, slice, p := app1()
	h := newHarness(t, fastOptions(), svc, slice, p)
	h.start()

	for _, kind := range []string{kindService, kindEndpointSlice, kindPod} {
		if got := h.counter("bearkong_discovery_events_total", map[string]string{"kind": kind, "event": eventAdd}); got != 1 {
			t.Errorf("%s add events = %v, want 1", kind, got)
		}
	}
	h.waitCounter("bearkong_discovery_snapshots_total", map[string]string{"result": resultPublished}, 1)

	p.Labels["version"] = "v2" // selector unaffected
	h.update(p)
	h.waitCounter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}, 1)

	withAnnotations("mesh-timeout", "2s")(svc)
	h.update(svc)
	h.next()
	h.waitCounter("bearkong_discovery_snapshots_total", map[string]string{"result": resultPublished}, 2)

	for _, c := range []struct {
		kind string
		want float64
	}{{kindService, 1}, {kindPod, 1}, {kindEndpointSlice, 0}} {
		if got := h.counter("bearkong_discovery_events_total", map[string]string{"kind": c.kind, "event": eventUpdate}); got != c.want {
			t.Errorf("%s update events = %v, want %v", c.kind, got, c.want)
		}
	}
	if got := h.counter("bearkong_discovery_snapshot_build_seconds", nil); got != 3 {
		t.Errorf("builds observed = %v, want 3", got)
	}
	if got := h.counter("bearkong_discovery_snapshots_total", map[string]string{"result": resultError}); got != 0 {
		t.Errorf("failed builds = %v, want 0", got)
	}
}

func TestSharedRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := New(newFakeClient(), Options{Registerer: reg})
	b := New(newFakeClient(), Options{Registerer: reg}) // must not panic
	a.metrics.events.WithLabelValues(kindPod, eventAdd).Inc()
	if a.metrics.events != b.metrics.events {
		t.Error("a second Discovery on the same registry should share its collectors")
	}
}

func TestLatestWins(t *testing.T) {
	d := New(newFakeClient(), Options{})
	s1, s2 := &mesh.Snapshot{ChangedAt: time.Unix(1, 0)}, &mesh.Snapshot{ChangedAt: time.Unix(2, 0)}
	d.publish(s1, true)
	d.publish(s2, false) // the reader has not taken s1; s2 replaces it

	select {
	case got := <-d.Snapshots():
		if got != s2 {
			t.Fatalf("got snapshot %v, want the newest", got.ChangedAt)
		}
	case <-time.After(waitFor):
		t.Fatal("no snapshot")
	}
	select {
	case got := <-d.Snapshots():
		t.Fatalf("a stale snapshot %v was queued", got.ChangedAt)
	default:
	}
	if d.Latest() != s2 {
		t.Fatal("Latest is not the newest snapshot")
	}
}

func TestOptionsDefaults(t *testing.T) {
	tests := []struct {
		name      string
		in        Options
		wantQuiet time.Duration
		wantMax   time.Duration
	}{
		{"zero", Options{}, DefaultQuietPeriod, DefaultMaxDelay},
		{"set", Options{QuietPeriod: time.Millisecond, MaxDelay: time.Second}, time.Millisecond, time.Second},
		{"quiet longer than max", Options{QuietPeriod: time.Minute, MaxDelay: time.Second}, time.Second, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := New(newFakeClient(), tt.in)
			if d.opts.QuietPeriod != tt.wantQuiet || d.opts.MaxDelay != tt.wantMax {
				t.Errorf("QuietPeriod, MaxDelay = %v, %v; want %v, %v", d.opts.QuietPeriod, d.opts.MaxDelay, tt.wantQuiet, tt.wantMax)
			}
		})
	}
}

func TestResourceVersionFilter(t *testing.T) {
	withRV := func(rv string) *corev1.Pod {
		p := pod("a", "p", "", nil)
		p.ResourceVersion = rv
		return p
	}
	tests := []struct {
		name     string
		old, new any
		resync   bool
	}{
		{"same version is a resync", withRV("5"), withRV("5"), true},
		{"new version is an update", withRV("5"), withRV("6"), false},
		{"no version proves nothing", withRV(""), withRV(""), false},
		{"not an object", "x", "x", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameResourceVersion(tt.old, tt.new); got != tt.resync {
				t.Errorf("sameResourceVersion = %v, want %v", got, tt.resync)
			}
		})
	}
}
