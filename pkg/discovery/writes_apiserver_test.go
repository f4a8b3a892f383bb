package discovery

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// writesEnv is a real API server with bearkong's RBAC, a meshed Service app-1 in
// namespace shop with an invalid mesh-timeout (a diagnostic that asks for an Event) and
// an HTTPRoute attached to it (a status to write).
type writesEnv struct {
	t     *testing.T
	ctx   context.Context
	env   *kubeenv.Env
	admin kubernetes.Interface
	// adminGW is the Gateway API client with the admin's token.
	adminGW gwclient.Interface
	// cfg is bearkong's REST config: its ServiceAccount's token, nothing more.
	cfg *rest.Config
}

const writesNS = "shop"

func startWritesEnv(t *testing.T) *writesEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	t.Cleanup(cancel)
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	w := &writesEnv{t: t, ctx: ctx, env: env, admin: env.Client, cfg: bearkongConfig(ctx, t, env)}
	if w.adminGW, err = gwclient.NewForConfig(env.RESTConfig); err != nil {
		t.Fatal(err)
	}
	if _, err := w.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: writesNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := service(writesNS, "app-1", meshed, withAnnotations(mesh.AnnotationTimeout, "banana"))
	svc.ResourceVersion = ""
	if _, err := w.admin.CoreV1().Services(writesNS).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return w
}

// createRoute attaches HTTPRoute name to app-1.
func (w *writesEnv) createRoute(name string) {
	w.t.Helper()
	rt := httpRoute(name, "app-1", 1, gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backend("app-1", 1)}})
	rt.Namespace, rt.Generation, rt.CreationTimestamp = writesNS, 0, metav1.Time{}
	core := gwv1.Group("") // the core group: a Service parent (GAMMA)
	rt.Spec.ParentRefs[0].Group = &core
	port := gwv1.PortNumber(80)
	rt.Spec.Rules[0].BackendRefs[0].Port = &port
	if _, err := w.adminGW.GatewayV1().HTTPRoutes(writesNS).Create(w.ctx, rt, metav1.CreateOptions{}); err != nil {
		w.t.Fatal(err)
	}
}

// with returns w for a subtest's t.
func (w *writesEnv) with(t *testing.T) *writesEnv {
	c := *w
	c.t = t
	return &c
}

// replica is one Discovery, as one bearkong replica runs it, with its own metrics.
type replica struct {
	d    *Discovery
	reg  *prometheus.Registry
	stop func()
}

// startReplica runs a Discovery with bearkong's token. wrap, if set, wraps the
// transport of its Gateway API client.
func (w *writesEnv) startReplica(name string, opts Options, wrap func(http.RoundTripper) http.RoundTripper) *replica {
	w.t.Helper()
	client, err := kubernetes.NewForConfig(w.cfg)
	if err != nil {
		w.t.Fatal(err)
	}
	gwCfg := rest.CopyConfig(w.cfg)
	gwCfg.WrapTransport = wrap
	gw, err := gwclient.NewForConfig(gwCfg)
	if err != nil {
		w.t.Fatal(err)
	}
	r := &replica{reg: prometheus.NewRegistry()}
	opts.QuietPeriod, opts.MaxDelay = 20*time.Millisecond, 200*time.Millisecond
	opts.GatewayClient, opts.Registerer = gw, r.reg
	opts.Logger = slog.New(slog.NewTextHandler(tWriter{w.t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("replica", name)
	r.d = New(client, opts)
	ctx, cancel := context.WithCancel(w.ctx)
	done := make(chan error, 1)
	go func() { done <- r.d.Run(ctx) }()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				w.t.Errorf("replica %s: Run: %v", name, err)
			}
		})
	}
	w.t.Cleanup(r.stop)
	deadline := time.Now().Add(30 * time.Second)
	for !r.d.HasSynced() {
		if time.Now().After(deadline) {
			w.t.Fatalf("replica %s: no first snapshot within 30s", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r
}

// writes sums bearkong_kube_api_writes_total{resource,verb,result} over replicas.
func writes(t *testing.T, resource, verb, result string, rs ...*replica) float64 {
	t.Helper()
	sum := 0.0
	for _, r := range rs {
		sum += sumMetric(t, r.reg, "bearkong_kube_api_writes_total", map[string]string{"resource": resource, "verb": verb, "result": result})
	}
	return sum
}

// sumMetric sums the samples of one metric whose labels include labels (0 if none).
func sumMetric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
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
			if m.GetGauge() != nil {
				sum += m.GetGauge().GetValue()
			} else {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// bearkongEvents returns the Events bearkong wrote, in every namespace, as
// "Kind namespace/name reason: note".
func (w *writesEnv) bearkongEvents() []string {
	w.t.Helper()
	list, err := w.admin.EventsV1().Events("").List(w.ctx, metav1.ListOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.ReportingController == reportingController {
			out = append(out, describeEvent(e))
		}
	}
	slices.Sort(out)
	return out
}

func describeEvent(e eventsv1.Event) string {
	return e.Regarding.Kind + " " + e.Regarding.Namespace + "/" + e.Regarding.Name + " " + e.Reason + ": " + e.Note
}

// eventually polls cond every 50ms for up to 30s.
func (w *writesEnv) eventually(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			routes, _ := w.adminGW.GatewayV1().HTTPRoutes(writesNS).List(w.ctx, metav1.ListOptions{})
			for _, rt := range routes.Items {
				w.t.Logf("HTTPRoute %s generation %d: %+v", rt.Name, rt.Generation, rt.Status.Parents)
			}
			w.t.Fatalf("not within 30s: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// routeAccepted reports whether bearkong's parent status on the route says Accepted,
// for the route's current generation.
func (w *writesEnv) routeAccepted(name string) bool {
	w.t.Helper()
	rt, err := w.adminGW.GatewayV1().HTTPRoutes(writesNS).Get(w.ctx, name, metav1.GetOptions{})
	if err != nil {
		w.t.Fatal(err)
	}
	for _, p := range ours(rt.Status.Parents) {
		for _, c := range p.Conditions {
			if c.Type == string(gwv1.RouteConditionAccepted) && c.Status == metav1.ConditionTrue && c.ObservedGeneration == rt.Generation {
				return true
			}
		}
	}
	return false
}

// TestRestartWritesNothingWithTheAPIServer: a control plane writes the Event of a
// diagnostic and a route's status once; a fresh one started against the same API,
// with the same objects, finds both already written and writes nothing.
func TestRestartWritesNothingWithTheAPIServer(t *testing.T) {
	w := startWritesEnv(t)
	w.createRoute("web")
	first := w.startReplica("first", Options{}, nil)
	w.eventually("the Event of the invalid mesh-timeout", func() bool { return len(w.bearkongEvents()) == 1 })
	w.eventually("the route's status", func() bool { return w.routeAccepted("web") })
	w.eventually("the writes counted", func() bool {
		return writes(t, "events", "create", "ok", first) == 1 && writes(t, "httproutes/status", "update", "ok", first) == 1
	})
	first.stop()

	second := w.startReplica("second", Options{}, nil)
	// Nothing to wait for but time: give it what it took the first to write both.
	time.Sleep(2 * time.Second)
	for _, res := range []string{"events", "httproutes/status"} {
		for _, verb := range []string{"create", "patch", "update"} {
			for _, result := range []string{"ok", "error"} {
				if got := writes(t, res, verb, result, second); got != 0 {
					t.Errorf("after a restart: %s %s %s = %v, want no write", res, verb, result, got)
				}
			}
		}
	}
	if evs := w.bearkongEvents(); len(evs) != 1 {
		t.Errorf("Events after a restart: %q, want the first one only", evs)
	}
}

// TestStatusWriteRetriedWithTheAPIServer: a route status write the API server refuses
// lands on retry, whether it is refused with a conflict (someone changed the route
// between bearkong's read and its write) or refused outright (here: bearkong's RBAC
// lost the rule for a while), with no other change to the route to trigger a rebuild.
func TestStatusWriteRetriedWithTheAPIServer(t *testing.T) {
	w := startWritesEnv(t)

	t.Run("conflict", func(t *testing.T) {
		w := w.with(t)
		// Before bearkong's first PUT of the route's status goes out, another client
		// updates the route (a label: no new generation), so the API server answers
		// 409 Conflict to a write based on the version bearkong read.
		var interfered atomic.Bool
		wrap := func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(req *http.Request) (*http.Response, error) {
				if req.Method == http.MethodPut && strings.HasSuffix(req.URL.Path, "/httproutes/conflict/status") && interfered.CompareAndSwap(false, true) {
					patch := []byte(`{"metadata":{"labels":{"touched":"yes"}}}`)
					if _, err := w.adminGW.GatewayV1().HTTPRoutes(writesNS).Patch(req.Context(), "conflict", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
						t.Errorf("interfering update: %v", err)
					}
				}
				return rt.RoundTrip(req)
			})
		}
		r := w.startReplica("conflict", Options{}, wrap)
		w.createRoute("conflict")
		w.eventually("the route's status after a conflict", func() bool { return w.routeAccepted("conflict") })
		w.eventually("one refused and one accepted write", func() bool {
			return writes(t, "httproutes/status", "update", "error", r) == 1 && writes(t, "httproutes/status", "update", "ok", r) == 1
		})
		if !interfered.Load() {
			t.Fatal("no status PUT went out")
		}
		r.stop()
	})

	t.Run("forbidden", func(t *testing.T) {
		w := w.with(t)
		// Take httproutes/status out of bearkong's ClusterRole: its writes are refused
		// with 403 until the rule comes back, and nothing else changes meanwhile.
		roles := w.admin.RbacV1().ClusterRoles()
		role, err := roles.Get(w.ctx, "bearkong", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		orig := role.DeepCopy()
		role.Rules = slices.DeleteFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, "httproutes/status") })
		if len(role.Rules) != len(orig.Rules)-1 {
			t.Fatalf("no httproutes/status rule in ClusterRole bearkong: %+v", orig.Rules)
		}
		if _, err := roles.Update(w.ctx, role, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		r := w.startReplica("forbidden", Options{}, nil)
		w.createRoute("forbidden")
		w.eventually("two refused writes", func() bool { return writes(t, "httproutes/status", "update", "error", r) >= 2 })
		if w.routeAccepted("forbidden") {
			t.Fatal("status written without the RBAC rule")
		}
		role, err = roles.Get(w.ctx, "bearkong", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		role.Rules = orig.Rules
		if _, err := roles.Update(w.ctx, role, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		w.eventually("the route's status once the rule is back", func() bool { return w.routeAccepted("forbidden") })
		w.eventually("the write counted", func() bool { return writes(t, "httproutes/status", "update", "ok", r) == 1 })
		t.Logf("refused %v times before it landed", writes(t, "httproutes/status", "update", "error", r))
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// leaseFor is a leader election on the Lease bearkong's RBAC grants, with short
// durations so that a takeover is quick.
func leaseFor(identity string) *LeaderElectionConfig {
	return &LeaderElectionConfig{Namespace: "bearkong-system", Name: "bearkong", Identity: identity,
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 250 * time.Millisecond}
}

// noWrites fails if the replica wrote anything, or tried to.
func noWrites(t *testing.T, r *replica, name string) {
	t.Helper()
	for _, res := range []string{"events", "httproutes/status"} {
		for _, verb := range []string{"create", "patch", "update"} {
			for _, result := range []string{"ok", "error"} {
				if got := writes(t, res, verb, result, r); got != 0 {
					t.Errorf("replica %s: %s %s %s = %v, want no write", name, res, verb, result, got)
				}
			}
		}
	}
}

// TestOneWriterWithTheAPIServer runs two replicas with leader election against one API
// server, with bearkong's RBAC: only the holder of the Lease writes, and every Event
// and status is written once in all. When the leader stops, the other takes the Lease
// and writes what changed after, once; a third replica that takes over from it finds
// everything written and writes nothing.
func TestOneWriterWithTheAPIServer(t *testing.T) {
	w := startWritesEnv(t)
	w.createRoute("web")
	leading := func(r *replica) bool { return sumMetric(t, r.reg, "bearkong_leader", nil) == 1 }
	holder := func() string {
		l, err := w.admin.CoordinationV1().Leases("bearkong-system").Get(w.ctx, "bearkong", metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}

	a := w.startReplica("a", Options{LeaderElection: leaseFor("a")}, nil)
	w.eventually("a leads", func() bool { return leading(a) })
	b := w.startReplica("b", Options{LeaderElection: leaseFor("b")}, nil)
	w.eventually("the Event of the invalid mesh-timeout", func() bool { return len(w.bearkongEvents()) == 1 })
	w.eventually("the route's status", func() bool { return w.routeAccepted("web") })
	w.eventually("one Event and one status written", func() bool {
		return writes(t, "events", "create", "ok", a, b) == 1 && writes(t, "httproutes/status", "update", "ok", a, b) == 1
	})
	time.Sleep(time.Second) // room for a wrong second write
	if leading(b) || holder() != "a" {
		t.Fatalf("b leads (%v) or the Lease names %q, want a", leading(b), holder())
	}
	noWrites(t, b, "b")
	if got := writes(t, "events", "create", "ok", a, b) + writes(t, "httproutes/status", "update", "ok", a, b); got != 2 {
		t.Errorf("%v writes, want 2", got)
	}

	// The leader stops (its Lease released): b takes over, and writes what changes
	// from then on, once.
	a.stop()
	w.eventually("b leads", func() bool { return leading(b) && holder() == "b" })
	if leading(a) {
		t.Error("a still says it leads after it stopped")
	}
	svc, err := w.admin.CoreV1().Services(writesNS).Get(w.ctx, "app-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations[mesh.AnnotationTimeout] = "-1s"
	if _, err := w.admin.CoreV1().Services(writesNS).Update(w.ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rt, err := w.adminGW.GatewayV1().HTTPRoutes(writesNS).Get(w.ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	weight := int32(2)
	rt.Spec.Rules[0].BackendRefs[0].Weight = &weight
	if _, err := w.adminGW.GatewayV1().HTTPRoutes(writesNS).Update(w.ctx, rt, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("the Event of the new invalid value", func() bool { return len(w.bearkongEvents()) == 2 })
	w.eventually("the status of the route's new generation", func() bool { return w.routeAccepted("web") })
	w.eventually("b's writes counted", func() bool {
		return writes(t, "events", "create", "ok", b) == 1 && writes(t, "httproutes/status", "update", "ok", b) == 1
	})
	evs := w.bearkongEvents()
	if len(evs) != 2 || !strings.Contains(evs[0], "-1s") || !strings.Contains(evs[1], "banana") {
		t.Errorf("Events %q, want one for banana and one for -1s", evs)
	}

	// A third replica takes over from b: everything is written already.
	c := w.startReplica("c", Options{LeaderElection: leaseFor("c")}, nil)
	b.stop()
	w.eventually("c leads", func() bool { return leading(c) && holder() == "c" })
	time.Sleep(2 * time.Second) // room for a wrong write
	noWrites(t, c, "c")
	if evs := w.bearkongEvents(); len(evs) != 2 {
		t.Errorf("Events after c took over: %q, want the same 2", evs)
	}
	total := 0.0
	for _, res := range []string{"events", "httproutes/status"} {
		for _, verb := range []string{"create", "patch", "update"} {
			total += writes(t, res, verb, "ok", a, b, c) + writes(t, res, verb, "error", a, b, c)
		}
	}
	if total != 4 {
		t.Errorf("%v writes in all, want 4: two Events and two statuses", total)
	}
	c.stop() // while the API server is up, so that it releases the Lease
	if h := holder(); h != "" {
		t.Errorf("the Lease names %q after the last replica stopped, want it released", h)
	}
}

// TestLosingTheLeaseWithTheAPIServer: a leader that cannot renew its Lease (here: its
// RBAC for Leases taken away) stops writing after the renew deadline, keeps building
// snapshots, and campaigns again; when it can, it takes the Lease back and writes what
// it held back.
func TestLosingTheLeaseWithTheAPIServer(t *testing.T) {
	w := startWritesEnv(t)
	a := w.startReplica("a", Options{LeaderElection: leaseFor("a")}, nil)
	leading := func() bool { return sumMetric(t, a.reg, "bearkong_leader", nil) == 1 }
	w.eventually("a leads", leading)
	w.eventually("the Event of the invalid mesh-timeout", func() bool { return len(w.bearkongEvents()) == 1 })

	bindings := w.admin.RbacV1().RoleBindings("bearkong-system")
	binding, err := bindings.Get(w.ctx, "bearkong-leader-election", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := bindings.Delete(w.ctx, binding.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("a stops leading once it cannot renew", func() bool { return !leading() })

	// Still building and serving: a new problem reaches the snapshot, but no Event.
	svc, err := w.admin.CoreV1().Services(writesNS).Get(w.ctx, "app-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations[mesh.AnnotationTimeout] = "-1s"
	if _, err := w.admin.CoreV1().Services(writesNS).Update(w.ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("the new diagnostic in a's snapshot", func() bool {
		return slices.ContainsFunc(a.d.Latest().Diagnostics, func(d mesh.Diagnostic) bool { return strings.Contains(d.Message, "-1s") })
	})
	time.Sleep(time.Second) // room for a wrong write
	if evs := w.bearkongEvents(); len(evs) != 1 {
		t.Fatalf("Events while not leading: %q, want the first one only", evs)
	}

	binding.ResourceVersion = ""
	if _, err := bindings.Create(w.ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("a leads again", leading)
	w.eventually("the Event held back", func() bool { return len(w.bearkongEvents()) == 2 })
	if got := writes(t, "events", "create", "ok", a); got != 2 {
		t.Errorf("%v Events written, want 2", got)
	}
	a.stop() // while the API server is up, so that it releases the Lease
}
