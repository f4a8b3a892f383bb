package discovery

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// countingTransport counts the requests a client sends, by method, and can run a hook
// before the next PUT (to provoke a real conflict on the API server).
type countingTransport struct {
	next http.RoundTripper

	mu        sync.Mutex
	byMethod  map[string]int
	beforePut func()
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.byMethod[req.Method]++
	hook := c.beforePut
	if req.Method == http.MethodPut {
		c.beforePut = nil
	}
	c.mu.Unlock()
	if req.Method == http.MethodPut && hook != nil {
		hook()
	}
	return c.next.RoundTrip(req)
}

func (c *countingTransport) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for k, v := range c.byMethod {
		out[k] = v
	}
	return out
}

// syncBuffer is a log sink the publisher's goroutines and the test share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// metricValue reads one sample from reg; labels must match exactly those given.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatalf("no sample %s %v", name, labels)
	return 0
}

// TestRootPublisher publishes the CA root through a real kube-apiserver: created where
// missing, untouched (no write, and with a warm publisher no request at all) where equal,
// updated when the bundle changes, put back after a user's edit or deletion, retried on
// a real conflict, never deleted, and failures logged and counted.
func TestRootPublisher(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(t.TempDir(), "kube"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube: %v", err)
		}
	})
	admin := env.Client
	for _, ns := range []string{"a", "b"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// A ConfigMap of another name, which the publisher must never touch.
	other, err := admin.CoreV1().ConfigMaps("a").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "app-config"}, Data: map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	var logs syncBuffer
	newPublisher := func(opts RootPublisherOptions) (*RootPublisher, *countingTransport) {
		ct := &countingTransport{byMethod: map[string]int{}}
		cfg := rest.CopyConfig(env.RESTConfig)
		cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { ct.next = rt; return ct }
		opts.Registerer = reg
		opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		return NewRootPublisher(kubernetes.NewForConfigOrDie(cfg), opts), ct
	}
	get := func(ns string) *corev1.ConfigMap {
		t.Helper()
		cm, err := admin.CoreV1().ConfigMaps(ns).Get(ctx, RootConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get %s/%s: %v", ns, RootConfigMapName, err)
		}
		return cm
	}
	check := func(ns string, bundle []byte) *corev1.ConfigMap {
		t.Helper()
		cm := get(ns)
		if cm.Data[RootConfigMapKey] != string(bundle) || len(cm.Data) != 1 || cm.Labels[ManagedByLabel] != ManagedByValue {
			t.Fatalf("%s/%s: data %q labels %v, want only %s=%q and %s=%s", ns, cm.Name, cm.Data, cm.Labels, RootConfigMapKey, bundle, ManagedByLabel, ManagedByValue)
		}
		return cm
	}
	writes := func(verb, result string) float64 {
		t.Helper()
		return metricValue(t, reg, "bearkong_kube_api_writes_total", map[string]string{"resource": "configmaps", "verb": verb, "result": result})
	}

	bundle1 := []byte("-----BEGIN CERTIFICATE-----\nroot one\n-----END CERTIFICATE-----\n")
	bundle2 := []byte("-----BEGIN CERTIFICATE-----\nroot two\n-----END CERTIFICATE-----\n")
	bundle3 := []byte("-----BEGIN CERTIFICATE-----\nroot three\n-----END CERTIFICATE-----\n")
	p, ct := newPublisher(RootPublisherOptions{})

	t.Run("created where missing", func(t *testing.T) {
		if err := p.Publish(ctx, bundle1, []string{"b", "a", "a"}); err != nil {
			t.Fatal(err)
		}
		check("a", bundle1)
		check("b", bundle1)
		if got := writes("create", "ok"); got != 2 {
			t.Errorf("creates %v, want 2", got)
		}
	})

	t.Run("no request when nothing changed", func(t *testing.T) {
		before := ct.counts()
		if err := p.Publish(ctx, bundle1, []string{"a", "b"}); err != nil {
			t.Fatal(err)
		}
		if after := ct.counts(); !mapsEqual(before, after) {
			t.Errorf("requests %v -> %v, want none", before, after)
		}
	})

	t.Run("no write when equal", func(t *testing.T) {
		rvA, rvB := get("a").ResourceVersion, get("b").ResourceVersion
		fresh, fct := newPublisher(RootPublisherOptions{}) // remembers nothing: must read
		if err := fresh.Publish(ctx, bundle1, []string{"a", "b"}); err != nil {
			t.Fatal(err)
		}
		if c := fct.counts(); c[http.MethodGet] != 2 || len(c) != 1 {
			t.Errorf("requests %v, want two GETs and nothing else", c)
		}
		if a, b := get("a").ResourceVersion, get("b").ResourceVersion; a != rvA || b != rvB {
			t.Errorf("resourceVersions %s %s -> %s %s, want unchanged", rvA, rvB, a, b)
		}
		if got := writes("update", "ok") + writes("create", "ok"); got != 2 {
			t.Errorf("writes %v, want still 2", got)
		}
	})

	t.Run("updated when the bundle changes", func(t *testing.T) {
		rv := get("a").ResourceVersion
		if err := p.Publish(ctx, bundle2, []string{"a", "b"}); err != nil {
			t.Fatal(err)
		}
		if cm := check("a", bundle2); cm.ResourceVersion == rv {
			t.Error("resourceVersion unchanged after an update")
		}
		check("b", bundle2)
		if got := writes("update", "ok"); got != 2 {
			t.Errorf("updates %v, want 2", got)
		}
	})

	t.Run("a user's edit and deletion are put back", func(t *testing.T) {
		cm := get("a")
		cm.Data = map[string]string{RootConfigMapKey: "tampered", "extra": "x"}
		cm.Labels["team"] = "payments"
		if _, err := admin.CoreV1().ConfigMaps("a").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := admin.CoreV1().ConfigMaps("b").Delete(ctx, RootConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		rp, _ := newPublisher(RootPublisherOptions{RetryInterval: 20 * time.Millisecond, ResyncInterval: 100 * time.Millisecond})
		if err := rp.Publish(ctx, bundle2, []string{"a", "b"}); err != nil {
			t.Fatal(err) // puts both back at once: it has never seen them
		}
		// Break them again; now only Run's resync can notice.
		cm = get("a")
		cm.Data[RootConfigMapKey] = "tampered again"
		if _, err := admin.CoreV1().ConfigMaps("a").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := admin.CoreV1().ConfigMaps("b").Delete(ctx, RootConfigMapName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		go func() { done <- rp.Run(runCtx) }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			a, errA := admin.CoreV1().ConfigMaps("a").Get(ctx, RootConfigMapName, metav1.GetOptions{})
			_, errB := admin.CoreV1().ConfigMaps("b").Get(ctx, RootConfigMapName, metav1.GetOptions{})
			if errA == nil && errB == nil && a.Data[RootConfigMapKey] == string(bundle2) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not put back within 10s: a=%v (%v), b: %v", a.Data, errA, errB)
			}
			time.Sleep(20 * time.Millisecond)
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
		if cm := check("a", bundle2); cm.Labels["team"] != "payments" {
			t.Errorf("labels %v: the user's own label was dropped", cm.Labels)
		}
		check("b", bundle2)
		for _, want := range []string{"changed by someone else", "deleted by someone else"} {
			if !strings.Contains(logs.String(), want) {
				t.Errorf("no log line saying %q", want)
			}
		}
	})

	t.Run("a conflict is retried", func(t *testing.T) {
		conflicts := writes("update", "conflict")
		ct.mu.Lock()
		ct.beforePut = func() {
			// Someone else writes between the publisher's read and its write.
			cm := get("a")
			cm.Data[RootConfigMapKey] = "raced"
			if _, err := admin.CoreV1().ConfigMaps("a").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
			}
		}
		ct.mu.Unlock()
		if err := p.Publish(ctx, bundle3, []string{"a"}); err != nil {
			t.Fatal(err)
		}
		check("a", bundle3)
		if got := writes("update", "conflict"); got != conflicts+1 {
			t.Errorf("update conflicts %v, want %v", got, conflicts+1)
		}
	})

	t.Run("never deletes", func(t *testing.T) {
		// b left the set in the previous step: its ConfigMap stays, as it was.
		check("b", bundle2)
		if err := p.Publish(ctx, bundle3, []string{"a"}); err != nil {
			t.Fatal(err)
		}
		check("b", bundle2)
		got, err := admin.CoreV1().ConfigMaps("a").Get(ctx, "app-config", metav1.GetOptions{})
		if err != nil || got.ResourceVersion != other.ResourceVersion {
			t.Errorf("ConfigMap a/app-config: %v, resourceVersion %s -> %s: want untouched", err, other.ResourceVersion, got.ResourceVersion)
		}
	})

	t.Run("failures are logged, counted and retried", func(t *testing.T) {
		errs := writes("create", "error")
		err := p.Publish(ctx, bundle3, []string{"a", "missing"})
		if err == nil || !strings.Contains(err.Error(), "namespace missing") || !apierrors.IsNotFound(err) {
			t.Fatalf("Publish into a missing namespace: %v, want a NotFound naming it", err)
		}
		if got := writes("create", "error"); got != errs+1 {
			t.Errorf("create errors %v, want %v", got, errs+1)
		}
		if got := metricValue(t, reg, "bearkong_ca_root_pending_namespaces", nil); got != 1 {
			t.Errorf("pending namespaces %v, want 1", got)
		}
		if !strings.Contains(logs.String(), "cannot publish the CA root") || !strings.Contains(logs.String(), "namespace=missing") {
			t.Errorf("no warning naming namespace missing in the log:\n%s", logs.String())
		}
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "missing"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// The same call again: "a" costs nothing, "missing" is retried and now works.
		if err := p.Publish(ctx, bundle3, []string{"a", "missing"}); err != nil {
			t.Fatal(err)
		}
		check("missing", bundle3)
		if got := metricValue(t, reg, "bearkong_ca_root_pending_namespaces", nil); got != 0 {
			t.Errorf("pending namespaces %v, want 0", got)
		}
		if !strings.Contains(logs.String(), "published after earlier failures") {
			t.Error("no log line for the recovery")
		}
	})
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestRootPublisherSharesTheWriteCounter registers a Discovery and a RootPublisher on one
// registry: they must share bearkong_kube_api_writes_total (register panics if the two
// definitions drift apart).
func TestRootPublisherSharesTheWriteCounter(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(newFakeClient(), Options{Registerer: reg})
	p := NewRootPublisher(newFakeClient(), RootPublisherOptions{Registerer: reg})
	if err := p.Publish(context.Background(), []byte("root"), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, reg, "bearkong_kube_api_writes_total", map[string]string{"resource": "configmaps", "verb": "create", "result": "ok"}); got != 1 {
		t.Fatalf("configmap creates %v, want 1", got)
	}
	if got := metricValue(t, reg, "bearkong_kube_api_writes_total", map[string]string{"resource": "events", "verb": "create", "result": "ok"}); got != 0 {
		t.Fatalf("event creates %v, want 0", got)
	}
}

func TestRootNamespaces(t *testing.T) {
	svc := func(ns, name string) *mesh.Service { return &mesh.Service{Namespace: ns, Name: name} }
	for _, tc := range []struct {
		name string
		snap *mesh.Snapshot
		want []string
	}{
		{"no snapshot", nil, nil},
		{"no Services", &mesh.Snapshot{}, nil},
		{"sorted and unique", &mesh.Snapshot{Services: []*mesh.Service{svc("default", "app-1"), svc("shop", "cart"), svc("default", "app-2"), svc("a", "x")}}, []string{"a", "default", "shop"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmpDiff(tc.want, RootNamespaces(tc.snap)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
