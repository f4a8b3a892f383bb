package discovery

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// incrementalWorld is a small mesh in indexers, shaped to exercise every cross-Service
// part of a build: Services that share pods (a mesh-timeout conflict and an mTLS mode
// conflict), a Service without a selector whose hand-made slice names pods, a named
// targetPort, and pods that move between Services.
type incrementalWorld struct {
	svcs, slices, pods, nss cache.Indexer
}

func newIncrementalWorld(t *testing.T) *incrementalWorld {
	t.Helper()
	newIndexer := func(idx cache.Indexers) cache.Indexer {
		all := cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}
		for k, f := range idx {
			all[k] = f
		}
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, all)
	}
	w := &incrementalWorld{
		svcs: newIndexer(nil), slices: newIndexer(cache.Indexers{podIndex: slicePods}),
		pods: newIndexer(nil), nss: newIndexer(nil),
	}
	add := func(idx cache.Indexer, obj any) {
		if err := idx.Add(obj); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{"a", "b"} {
		add(w.nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})
		// web and api select app=web and app=api; both select tier=shared pods too
		// through "shared" (a second Service on the same pods), with another timeout
		// and another mTLS mode.
		add(w.svcs, service(ns, "web", meshed))
		add(w.svcs, service(ns, "api", meshed, withAnnotations(mesh.AnnotationMTLS, "PERMISSIVE")))
		add(w.svcs, service(ns, "shared", meshed, withSelector(map[string]string{"tier": "shared"}),
			withAnnotations(mesh.AnnotationTimeout, "3s")))
		add(w.svcs, service(ns, "named", meshed, withSelector(map[string]string{"app": "web"}),
			withPorts(corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP})))
		add(w.svcs, service(ns, "manual", meshed, withSelector(nil)))
		add(w.svcs, service(ns, "unmeshed"))
		for i := range 6 {
			add(w.pods, w.randomPod(rand.New(rand.NewPCG(uint64(i), 1)), ns, i))
		}
	}
	return w
}

// randomPod is pod i of ns with random labels, ServiceAccount, IP and container port.
func (w *incrementalWorld) randomPod(r *rand.Rand, ns string, i int) *corev1.Pod {
	lbls := map[string]string{}
	switch r.IntN(4) {
	case 0:
		lbls["app"] = "web"
	case 1:
		lbls["app"] = "api"
	case 2:
		lbls["app"] = "other"
	}
	if r.IntN(2) == 0 {
		lbls["tier"] = "shared"
	}
	p := pod(ns, fmt.Sprintf("p%d", i), fmt.Sprintf("10.0.%d.%d", len(ns), 1+r.IntN(8)), lbls)
	p.Spec.ServiceAccountName = []string{"", "sa1", "sa2"}[r.IntN(3)]
	if r.IntN(2) == 0 {
		withContainerPorts(p, "web", 8000+r.IntN(3))
	}
	p.ResourceVersion = fmt.Sprint(r.Int())
	return p
}

// randomService is a new state of one of ns's Services, or a new Service ("extra"):
// meshed but one time in five, with random mesh-* annotations (timeout, mTLS mode, a
// cluster policy), selector and target port.
func (w *incrementalWorld) randomService(r *rand.Rand, ns string) *corev1.Service {
	name := []string{"web", "api", "shared", "named", "manual", "unmeshed", "extra"}[r.IntN(7)]
	var kv []string
	if v := []string{"", "3s", "5s"}[r.IntN(3)]; v != "" {
		kv = append(kv, mesh.AnnotationTimeout, v)
	}
	if v := []string{"", "PERMISSIVE", "STRICT"}[r.IntN(3)]; v != "" {
		kv = append(kv, mesh.AnnotationMTLS, v)
	}
	if r.IntN(2) == 0 {
		kv = append(kv, mesh.AnnotationMaxConnections, fmt.Sprint(1+r.IntN(100)))
	}
	opts := []func(*corev1.Service){withAnnotations(kv...)}
	if r.IntN(5) > 0 {
		opts = append(opts, meshed)
	}
	if name != "manual" {
		opts = append(opts, withSelector([]map[string]string{{"app": "web"}, {"app": "api"}, {"tier": "shared"}}[r.IntN(3)]))
	} else {
		opts = append(opts, withSelector(nil))
	}
	if r.IntN(2) == 0 {
		opts = append(opts, withPorts(corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP}))
	}
	svc := service(ns, name, opts...)
	svc.ResourceVersion = fmt.Sprint(r.Int())
	return svc
}

// randomNamespace is Namespace ns with a random mesh-mtls annotation, none, valid or
// invalid.
func randomNamespace(r *rand.Rand, ns string) *corev1.Namespace {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, ResourceVersion: fmt.Sprint(r.Int())}}
	if v := []string{"", "STRICT", "PERMISSIVE", "DISABLED", "bogus"}[r.IntN(5)]; v != "" {
		n.Annotations = map[string]string{mesh.AnnotationMTLS: v}
	}
	return n
}

// randomSlice is a slice of svc in ns naming random pods, ready or not.
func (w *incrementalWorld) randomSlice(r *rand.Rand, ns, name, svc string) *discoveryv1.EndpointSlice {
	var eps []discoveryv1.Endpoint
	for range r.IntN(4) {
		i := r.IntN(6)
		ready := r.IntN(3) > 0
		eps = append(eps, endpoint(fmt.Sprintf("10.0.%d.%d", len(ns), 1+r.IntN(8)), fmt.Sprintf("p%d", i), conditions(&ready, nil, nil)))
	}
	sl := endpointSlice(ns, name, svc, discoveryv1.AddressTypeIPv4, eps...)
	sl.ResourceVersion = fmt.Sprint(r.Int())
	return sl
}

func (w *incrementalWorld) listers() (corelisters.ServiceLister, discoverylisters.EndpointSliceLister, corelisters.PodLister, *buildOptions) {
	return corelisters.NewServiceLister(w.svcs), discoverylisters.NewEndpointSliceLister(w.slices), corelisters.NewPodLister(w.pods),
		&buildOptions{namespaces: corelisters.NewNamespaceLister(w.nss)}
}

// TestIncrementalBuildEqualsFullBuild applies random sequences of EndpointSlice, Pod,
// Service and Namespace changes (add, update, delete; Services joining and leaving the
// mesh, with random annotations, selector and ports; Namespaces' mesh-mtls) and checks, after each, that the incremental
// build of the Services the change touched (touchedServices, as the handlers attribute
// it) is the same snapshot as a full build of the same listers, and that the previous
// snapshot was not modified. None of these events makes a full build.
func TestIncrementalBuildEqualsFullBuild(t *testing.T) {
	// seen collects the diagnostics of the full builds, to check that the changes did
	// reach the parts that span Services.
	seen := map[string]bool{}
	for seed := range uint64(20) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 14))
			w := newIncrementalWorld(t)
			sl, el, pl, opts := w.listers()
			var b builder
			prev, _, err := b.build(nil, sl, el, pl, nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			for step := range 60 {
				ns := []string{"a", "b"}[r.IntN(2)]
				var kind string
				var oldObj, obj any
				var idx cache.Indexer
				switch r.IntN(4) {
				case 0:
					kind, idx = kindPod, w.pods
					obj = w.randomPod(r, ns, r.IntN(6))
				case 1:
					kind, idx = kindService, w.svcs
					obj = w.randomService(r, ns)
				case 2:
					// Namespace c has no Service: created and deleted as well.
					kind, idx = kindNamespace, w.nss
					obj = randomNamespace(r, []string{"a", "b", "c"}[r.IntN(3)])
				default:
					kind, idx = kindEndpointSlice, w.slices
					svc := []string{"web", "api", "shared", "named", "manual", "unmeshed"}[r.IntN(6)]
					obj = w.randomSlice(r, ns, fmt.Sprintf("%s-%d", svc, r.IntN(2)), svc)
				}
				key, _ := cache.MetaNamespaceKeyFunc(obj)
				cur, exists, _ := idx.GetByKey(key)
				// The handlers run after the cache changed: apply, then attribute.
				switch {
				case exists && r.IntN(3) == 0:
					if err := idx.Delete(cur); err != nil {
						t.Fatal(err)
					}
					obj = cur
				case exists:
					if err := idx.Update(obj); err != nil {
						t.Fatal(err)
					}
					oldObj = cur
				default:
					if err := idx.Add(obj); err != nil {
						t.Fatal(err)
					}
				}
				keys, ok := touchedServices(sl, w.slices, kind, oldObj, obj)
				if !ok {
					t.Fatalf("step %d: %s event not attributed", step, kind)
				}
				dirty := map[string]bool{}
				for _, k := range keys {
					dirty[k] = true
				}
				want := cloneSnapshot(prev)
				got, _, err := b.build(dirty, sl, el, pl, nil, opts)
				if err != nil {
					t.Fatal(err)
				}
				if b.wasFull {
					t.Fatalf("step %d: the %s event of %s made a full build", step, kind, key)
				}
				full, _, err := build(sl, el, pl, nil, opts)
				if err != nil {
					t.Fatal(err)
				}
				for _, d := range full.Diagnostics {
					seen[d.Reason] = true
				}
				if !sameMeaning(got, full) {
					t.Fatalf("step %d (%s %s, dirty %v): incremental build differs from the full build\nincremental: %s\nfull:        %s",
						step, kind, key, keys, describeSnapshot(got), describeSnapshot(full))
				}
				if !sameMeaning(prev, want) {
					t.Fatalf("step %d: the incremental build modified the previous snapshot", step)
				}
				prev = got
			}
		})
	}
	for _, reason := range []string{mesh.ReasonConflictingPolicies, mesh.ReasonConflictingMTLSModes, mesh.ReasonNoEndpointSlices, mesh.ReasonInvalidAnnotation} {
		if !seen[reason] {
			t.Errorf("no full build had a %s diagnostic: the random changes miss a part of the build", reason)
		}
	}
}

// cloneSnapshot copies what sameMeaning compares, so that a later change to the
// original shows.
func cloneSnapshot(s *mesh.Snapshot) *mesh.Snapshot {
	out := &mesh.Snapshot{Proxies: map[string]*mesh.Proxy{}, Diagnostics: append([]mesh.Diagnostic(nil), s.Diagnostics...)}
	for _, svc := range s.Services {
		c := *svc
		c.Endpoints = append([]mesh.Endpoint(nil), svc.Endpoints...)
		c.ServiceAccounts = append([]string(nil), svc.ServiceAccounts...)
		c.Ports = append([]mesh.ServicePort(nil), svc.Ports...)
		out.Services = append(out.Services, &c)
	}
	for k, p := range s.Proxies {
		c := *p
		c.Services = append([]string(nil), p.Services...)
		out.Proxies[k] = &c
	}
	return out
}

func describeSnapshot(s *mesh.Snapshot) string {
	out := ""
	for _, svc := range s.Services {
		out += fmt.Sprintf("\n  %s eps=%v sas=%v mtls=%s", svc.Key(), svc.Endpoints, svc.ServiceAccounts, svc.MTLS)
	}
	for k, p := range s.Proxies {
		out += fmt.Sprintf("\n  proxy %s %+v", k, *p)
	}
	for _, d := range s.Diagnostics {
		out += fmt.Sprintf("\n  diag %s/%s %s", d.Namespace, d.Name, d.Reason)
	}
	return out
}

// TestIncrementalBuildsThroughInformers drives random pod, EndpointSlice and Service
// changes (Services created, updated and deleted) through the informers and checks that after each the published snapshot converges to
// a full build of the informers' caches, and that the worker built incrementally.
func TestIncrementalBuildsThroughInformers(t *testing.T) {
	w := newIncrementalWorld(t)
	var objs []runtime.Object
	for _, idx := range []cache.Indexer{w.svcs, w.pods} {
		for _, o := range idx.List() {
			objs = append(objs, o.(runtime.Object))
		}
	}
	h := newHarness(t, fastOptions(), objs...)
	h.start()
	r := rand.New(rand.NewPCG(7, 14))
	for step := range 25 {
		ns := []string{"a", "b"}[r.IntN(2)]
		var obj runtime.Object
		var lister func() (metav1.Object, error)
		switch r.IntN(3) {
		case 0:
			p := w.randomPod(r, ns, r.IntN(6))
			obj = p
			lister = func() (metav1.Object, error) { return h.d.pods.Pods(ns).Get(p.Name) }
		case 1:
			svc := []string{"web", "api", "shared", "named", "manual"}[r.IntN(5)]
			sl := w.randomSlice(r, ns, svc+"-0", svc)
			obj = sl
			lister = func() (metav1.Object, error) { return h.d.slices.EndpointSlices(ns).Get(sl.Name) }
		default:
			svc := w.randomService(r, ns)
			obj = svc
			lister = func() (metav1.Object, error) { return h.d.services.Services(ns).Get(svc.Name) }
		}
		// Services are deleted too, one event in four; the lister then has it no more.
		_, err := lister()
		deleted := false
		if svc, isSvc := obj.(*corev1.Service); isSvc && err == nil && r.IntN(4) == 0 {
			if err := h.client.CoreV1().Services(ns).Delete(context.Background(), svc.Name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			deleted = true
		} else {
			h.apply(obj, err != nil)
		}
		want := obj.(metav1.Object).GetResourceVersion()
		deadline := time.Now().Add(waitFor)
		for {
			cur, err := lister()
			if (deleted && err != nil) || (!deleted && err == nil && cur.GetResourceVersion() == want) {
				full, _, err := build(h.d.services, h.d.slices, h.d.pods, nil, &buildOptions{namespaces: h.d.namespaces, defaultMTLS: h.d.opts.DefaultMTLS})
				if err != nil {
					t.Fatal(err)
				}
				if sameMeaning(h.d.Latest(), full) {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("step %d: the published snapshot did not converge to a full build within %v\npublished: %s", step, waitFor, describeSnapshot(h.d.Latest()))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got := h.counter("bearkong_discovery_builds_total", map[string]string{"kind": buildIncremental}); got == 0 {
		t.Errorf("incremental builds = 0, want some")
	}
	if got := h.counter("bearkong_discovery_builds_total", map[string]string{"kind": buildFull}); got != 1 {
		t.Errorf("full builds = %v, want 1 (the first)", got)
	}
}

// TestFullBuildSharesUnchangedServices checks that a full build (after a Service event,
// or the periodic one) hands the snapshot the very Services and proxies of the previous
// build where nothing of them changed. A full build recomputes every Service, and it
// used to give every one a new object: every snapshot the control plane still held (its
// history of configs, for the quarantine) then carried a generation of the whole mesh
// of its own (issue 14: heap 96 -> 139 MiB at S=1000 after 10 new Services).
func TestFullBuildSharesUnchangedServices(t *testing.T) {
	for _, tc := range []struct {
		name string
		// change changes the world and returns the key of the Service whose model it
		// changed ("" for none).
		change func(t *testing.T, w *incrementalWorld) string
	}{
		{"no change", func(*testing.T, *incrementalWorld) string { return "" }},
		{"one Service's policy", func(t *testing.T, w *incrementalWorld) string {
			if err := w.svcs.Update(service("a", "web", meshed, withAnnotations(mesh.AnnotationMaxConnections, "7"))); err != nil {
				t.Fatal(err)
			}
			return "a/web"
		}},
		{"a new Service", func(t *testing.T, w *incrementalWorld) string {
			if err := w.svcs.Add(service("b", "extra", meshed, withSelector(map[string]string{"app": "none"}))); err != nil {
				t.Fatal(err)
			}
			return "b/extra"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newIncrementalWorld(t)
			sl, el, pl, opts := w.listers()
			var b builder
			prev, _, err := b.build(nil, sl, el, pl, nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			changed := tc.change(t, w)
			got, _, err := b.build(nil, sl, el, pl, nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !b.wasFull {
				t.Fatal("the build was not a full one")
			}
			full, _, err := build(sl, el, pl, nil, opts)
			if err != nil {
				t.Fatal(err)
			}
			if !sameMeaning(got, full) {
				t.Fatalf("the build differs from a build from scratch\nbuilt:   %s\nscratch: %s", describeSnapshot(got), describeSnapshot(full))
			}
			for _, svc := range got.Services {
				old := prev.Service(svc.Namespace, svc.Name)
				if svc.Key() == changed {
					if old == svc {
						t.Errorf("Service %s changed but is the previous object", svc.Key())
					}
					continue
				}
				if old != svc {
					t.Errorf("Service %s did not change but is a new object", svc.Key())
				}
			}
			for k, p := range got.Proxies {
				if old := prev.Proxies[k]; old != nil && sameProxy(old, p) && old != p {
					t.Errorf("proxy %s did not change but is a new object", k)
				}
			}
			if len(prev.Diagnostics) == 0 {
				t.Fatal("the world has no diagnostics: nothing to share")
			}
			if slices.Equal(got.Diagnostics, prev.Diagnostics) && &got.Diagnostics[0] != &prev.Diagnostics[0] {
				t.Error("the diagnostics did not change but are a copy")
			}
		})
	}
}
