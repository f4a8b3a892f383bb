package discovery

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// buildWith is buildFrom with Namespaces among the objects and the control plane's
// default mode.
func buildWith(t *testing.T, defaultMTLS mesh.MTLSMode, objs ...runtime.Object) *mesh.Snapshot {
	t.Helper()
	newIndexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, slices, pods, nss := newIndexer(), newIndexer(), newIndexer(), newIndexer()
	for _, o := range objs {
		var err error
		switch o.(type) {
		case *corev1.Service:
			err = svcs.Add(o)
		case *discoveryv1.EndpointSlice:
			err = slices.Add(o)
		case *corev1.Pod:
			err = pods.Add(o)
		case *corev1.Namespace:
			err = nss.Add(o)
		default:
			t.Fatalf("unexpected object %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	opts := &buildOptions{namespaces: corelisters.NewNamespaceLister(nss), defaultMTLS: defaultMTLS}
	snap, _, err := build(corelisters.NewServiceLister(svcs), discoverylisters.NewEndpointSliceLister(slices), corelisters.NewPodLister(pods), nil, opts)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return snap
}

func namespace(name string, kv ...string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "1"}}
	for i := 0; i+1 < len(kv); i += 2 {
		if ns.Annotations == nil {
			ns.Annotations = map[string]string{}
		}
		ns.Annotations[kv[i]] = kv[i+1]
	}
	return ns
}

func withServiceAccount(p *corev1.Pod, sa string) *corev1.Pod {
	p.Spec.ServiceAccountName = sa
	return p
}

// modes returns each Service's mode by name.
func modes(s *mesh.Snapshot) map[string]mesh.MTLSMode {
	out := map[string]mesh.MTLSMode{}
	for _, svc := range s.Services {
		out[svc.Key()] = svc.MTLS
	}
	return out
}

// TestMTLSPrecedence: the Service's mesh-mtls wins, else its Namespace's, else the
// control plane's default; only the three upper-case modes are valid.
func TestMTLSPrecedence(t *testing.T) {
	ann := mesh.AnnotationMTLS
	tests := []struct {
		name        string
		defaultMTLS mesh.MTLSMode
		objs        []runtime.Object
		want        map[string]mesh.MTLSMode
		// invalid lists the objects ("Kind ns/name") reported as InvalidAnnotation.
		invalid []string
	}{
		{
			name: "nothing set: STRICT",
			objs: []runtime.Object{service("a", "app-1", meshed), namespace("a")},
			want: map[string]mesh.MTLSMode{"a/app-1": mesh.MTLSStrict},
		},
		{
			name:        "the control plane's default",
			defaultMTLS: mesh.MTLSPermissive,
			objs:        []runtime.Object{service("a", "app-1", meshed)},
			want:        map[string]mesh.MTLSMode{"a/app-1": mesh.MTLSPermissive},
		},
		{
			name: "the Namespace's mode for its Services only",
			objs: []runtime.Object{
				service("a", "app-1", meshed), service("b", "app-2", meshed),
				namespace("a", ann, "PERMISSIVE"), namespace("b"),
			},
			want: map[string]mesh.MTLSMode{"a/app-1": mesh.MTLSPermissive, "b/app-2": mesh.MTLSStrict},
		},
		{
			name:        "the Service's mode wins over the Namespace's and the default",
			defaultMTLS: mesh.MTLSPermissive,
			objs: []runtime.Object{
				service("a", "app-1", meshed, withAnnotations(ann, "DISABLE")),
				service("a", "app-2", meshed, withAnnotations(ann, "STRICT")),
				service("a", "app-3", meshed),
				namespace("a", ann, "PERMISSIVE"),
			},
			want: map[string]mesh.MTLSMode{"a/app-1": mesh.MTLSDisable, "a/app-2": mesh.MTLSStrict, "a/app-3": mesh.MTLSPermissive},
		},
		{
			name: "modes are upper case: an invalid Service mode falls back to the Namespace's",
			objs: []runtime.Object{
				service("a", "app-1", meshed, withAnnotations(ann, "permissive")),
				namespace("a", ann, "DISABLE"),
			},
			want:    map[string]mesh.MTLSMode{"a/app-1": mesh.MTLSDisable},
			invalid: []string{"Service a/app-1"},
		},
		{
			name: "an invalid Namespace mode falls back to the default, and is reported on the Namespace",
			objs: []runtime.Object{
				service("a", "app-1", meshed),
				service("a", "app-2", meshed, withAnnotations(ann, "PERMISSIVE")),
				namespace("a", ann, " STRICT"),
			},
			want:    map[string]mesh.MTLSMode{"a/app-1": mesh.MTLSStrict, "a/app-2": mesh.MTLSPermissive},
			invalid: []string{"Namespace /a"},
		},
		{
			name:    "a Namespace without meshed Services is reported too",
			objs:    []runtime.Object{namespace("empty", ann, "OFF")},
			want:    map[string]mesh.MTLSMode{},
			invalid: []string{"Namespace /empty"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := buildWith(t, tt.defaultMTLS, tt.objs...)
			if diff := cmp.Diff(tt.want, modes(snap)); diff != "" {
				t.Errorf("modes (-want +got):\n%s", diff)
			}
			var invalid []string
			for _, d := range snap.Diagnostics {
				if d.Reason == mesh.ReasonUnknownAnnotation {
					t.Errorf("mesh-mtls reported as unknown: %+v", d)
				}
				if d.Reason != mesh.ReasonInvalidAnnotation {
					continue
				}
				invalid = append(invalid, d.Kind+" "+d.Namespace+"/"+d.Name)
				if !d.Event || !strings.Contains(d.Message, "STRICT, PERMISSIVE or DISABLE") {
					t.Errorf("diagnostic %+v: want an Event naming the valid modes", d)
				}
			}
			if diff := cmp.Diff(tt.invalid, invalid); diff != "" {
				t.Errorf("InvalidAnnotation diagnostics (-want +got):\n%s", diff)
			}
		})
	}
}

// TestMTLSInvalidIsAsIfAbsent: an invalid mesh-mtls, on a Service or on its Namespace,
// counts as absent, and the diagnostic says what applies instead. (pure_test.go proves
// that what the Service had before does not matter.)
func TestMTLSInvalidIsAsIfAbsent(t *testing.T) {
	ann := mesh.AnnotationMTLS
	snap := buildWith(t, mesh.MTLSPermissive,
		service("a", "own", meshed, withAnnotations(ann, "Disabled")),
		service("a", "inherits", meshed),
		service("b", "own", meshed, withAnnotations(ann, "strict")),
		namespace("a", ann, "PERMISIVE"),
		namespace("b", ann, "DISABLE"),
	)
	want := map[string]mesh.MTLSMode{"a/own": mesh.MTLSPermissive, "a/inherits": mesh.MTLSPermissive, "b/own": mesh.MTLSDisable}
	if diff := cmp.Diff(want, modes(snap)); diff != "" {
		t.Errorf("modes (-want +got):\n%s", diff)
	}
	var got []string
	for _, d := range snap.Diagnostics {
		if d.Reason == mesh.ReasonInvalidAnnotation {
			got = append(got, d.Kind+" "+d.Namespace+"/"+d.Name+": "+d.Message)
		}
	}
	wantDiags := []string{
		`Namespace /a: annotation mesh-mtls="PERMISIVE" is invalid: must be STRICT, PERMISSIVE or DISABLE (upper case); it is ignored, as if absent: the Namespace's Services without a mesh-mtls of their own get the control plane's default mode (PERMISSIVE)`,
		`Service a/own: annotation mesh-mtls="Disabled" is invalid: must be STRICT, PERMISSIVE or DISABLE (upper case); it is ignored, as if absent: the Service gets the control plane's default mode (PERMISSIVE)`,
		`Service b/own: annotation mesh-mtls="strict" is invalid: must be STRICT, PERMISSIVE or DISABLE (upper case); it is ignored, as if absent: the Service gets its Namespace's mode (DISABLE)`,
	}
	if diff := cmp.Diff(wantDiags, got); diff != "" {
		t.Errorf("diagnostics (-want +got):\n%s", diff)
	}
}

// TestServiceAccounts: a proxy's ServiceAccount is its pod's, "default" when unset; a
// Service's ServiceAccounts are those of the pods behind its ready endpoints.
func TestServiceAccounts(t *testing.T) {
	ipv4 := discoveryv1.AddressTypeIPv4
	lbl := map[string]string{"app": "app-1"}
	notReady := conditions(ptr(false), ptr(false), nil)
	snap := buildWith(t, "",
		service("a", "app-1", meshed),
		endpointSlice("a", "app-1-x", "app-1", ipv4,
			endpoint("10.0.0.1", "p1"),
			endpoint("10.0.0.2", "p2"),
			endpoint("10.0.0.3", "p3"),
			endpoint("10.0.0.4", "gone"),         // no such pod: contributes nothing
			endpoint("10.0.0.5", ""),             // no targetRef: contributes nothing
			endpoint("10.0.0.6", "p6", notReady), // not an endpoint the mesh uses
		),
		endpointSlice("a", "app-1-y", "app-1", ipv4, endpoint("10.0.0.7", "p7")),
		withServiceAccount(pod("a", "p1", "10.0.0.1", lbl), "web"),
		withServiceAccount(pod("a", "p2", "10.0.0.2", lbl), "api"),
		pod("a", "p3", "10.0.0.3", lbl),
		withServiceAccount(pod("a", "p6", "10.0.0.6", lbl), "canary"),
		withServiceAccount(pod("a", "p7", "10.0.0.7", lbl), "web"),
		// Same name in another namespace: not the endpoint's pod.
		withServiceAccount(pod("b", "gone", "10.0.0.4", lbl), "intruder"),
		service("a", "no-endpoints", meshed, withSelector(map[string]string{"app": "none"})),
	)
	if diff := cmp.Diff([]string{"api", "default", "web"}, snap.Service("a", "app-1").ServiceAccounts); diff != "" {
		t.Errorf("app-1 ServiceAccounts (-want +got):\n%s", diff)
	}
	if got := snap.Service("a", "no-endpoints").ServiceAccounts; len(got) != 0 {
		t.Errorf("no-endpoints ServiceAccounts = %v, want none", got)
	}
	for name, want := range map[string]string{"p1": "web", "p2": "api", "p3": "default", "p6": "canary"} {
		if p := snap.Proxy("a", name); p == nil || p.ServiceAccount != want {
			t.Errorf("proxy a/%s = %+v, want ServiceAccount %q", name, p, want)
		}
	}
}

// TestProxyMTLS: a pod's inbound mode is its Services' when they agree; when they
// differ it is PERMISSIVE, so every Service's callers keep working, and each Service
// is reported with the others and their modes.
func TestProxyMTLS(t *testing.T) {
	ann := mesh.AnnotationMTLS
	front := map[string]string{"app": "app-1", "tier": "front"}
	snap := buildWith(t, "",
		service("a", "app-1", meshed),
		service("a", "web", meshed, withSelector(map[string]string{"tier": "front"}), withAnnotations(ann, "DISABLE")),
		service("a", "app-2", meshed, withAnnotations(ann, "PERMISSIVE")),
		service("a", "app-2-all", meshed, withSelector(map[string]string{"app": "app-2"}), withAnnotations(ann, "PERMISSIVE")),
		service("a", "app-3", meshed),
		pod("a", "both", "10.0.0.1", front),
		pod("a", "only-app-1", "10.0.0.2", map[string]string{"app": "app-1"}),
		pod("a", "app-2-0", "10.0.0.3", map[string]string{"app": "app-2"}),
		pod("a", "app-3-0", "10.0.0.4", map[string]string{"app": "app-3"}),
	)
	want := map[string]mesh.MTLSMode{
		"a/both":       mesh.MTLSPermissive, // STRICT and DISABLE
		"a/only-app-1": mesh.MTLSStrict,
		"a/app-2-0":    mesh.MTLSPermissive, // two PERMISSIVE Services agree
		"a/app-3-0":    mesh.MTLSStrict,
	}
	got := map[string]mesh.MTLSMode{}
	for k, p := range snap.Proxies {
		got[k] = p.MTLS
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("proxy modes (-want +got):\n%s", diff)
	}
	var diags []string
	for _, d := range snap.Diagnostics {
		if d.Reason != mesh.ReasonConflictingMTLSModes {
			continue
		}
		if d.Kind != "Service" || !d.Event {
			t.Errorf("diagnostic %+v: want an Event on the Service", d)
		}
		diags = append(diags, d.Namespace+"/"+d.Name+": "+d.Message)
	}
	wantDiags := []string{
		"a/app-1: Service a/web (DISABLE) selects some of the same pods as this Service (STRICT); a pod has one inbound listener for all its Services, so those pods accept both mutual TLS and plaintext (PERMISSIVE); give the Services separate pods or the same mesh-mtls",
		"a/web: Service a/app-1 (STRICT) selects some of the same pods as this Service (DISABLE); a pod has one inbound listener for all its Services, so those pods accept both mutual TLS and plaintext (PERMISSIVE); give the Services separate pods or the same mesh-mtls",
	}
	if diff := cmp.Diff(wantDiags, diags); diff != "" {
		t.Errorf("ConflictingMTLSModes diagnostics (-want +got):\n%s", diff)
	}
}

// TestMTLSEvents: an invalid mesh-mtls on a Namespace becomes a Warning Event on the
// Namespace (in "default", where the API keeps Events about cluster-scoped objects), and
// conflicting modes on a pod become Events on both Services, as ConflictingPolicies do.
// The Namespace cache keeps the annotation only.
func TestMTLSEvents(t *testing.T) {
	ann := mesh.AnnotationMTLS
	ns := namespace("a", ann, "off", "team", "bears")
	ns.Labels = map[string]string{"team": "bears"}
	ns.UID = "ns-uid"
	ns.Spec.Finalizers = []corev1.FinalizerName{corev1.FinalizerKubernetes}
	h := newHarness(t, fastOptions(),
		ns,
		service("a", "app-1", meshed),
		service("a", "web", meshed, withSelector(map[string]string{"tier": "front"}), withAnnotations(ann, "DISABLE")),
		pod("a", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1", "tier": "front"}),
	)
	h.start()

	cached, err := h.d.namespaces.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	wantCached := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a", UID: "ns-uid", ResourceVersion: "1", Annotations: map[string]string{ann: "off"}}}
	if diff := cmp.Diff(wantCached, cached); diff != "" {
		t.Errorf("cached Namespace (-want +got):\n%s", diff)
	}

	evs := h.waitEvents(2)
	if len(evs) != 2 || !containsAny(evs, "app-1 "+mesh.ReasonConflictingMTLSModes+": Service a/web (DISABLE)") ||
		!containsAny(evs, "web "+mesh.ReasonConflictingMTLSModes+": Service a/app-1 (STRICT)") {
		t.Errorf("events in a: %v", evs)
	}
	deadline := time.Now().Add(waitFor)
	for {
		list, err := h.client.EventsV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) > 0 {
			e := list.Items[0]
			r := e.Regarding
			if len(list.Items) != 1 || r.Kind != KindNamespace || r.Name != "a" || r.Namespace != "" || r.UID != "ns-uid" ||
				e.Reason != mesh.ReasonInvalidAnnotation || !strings.Contains(e.Note, `mesh-mtls="off" is invalid`) {
				t.Errorf("events in default: %+v", list.Items)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no Event about Namespace a")
		}
		time.Sleep(5 * time.Millisecond)
	}

	// A change to the Namespace that leaves mesh-mtls alone is not worth a build.
	builds := h.counter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged})
	ns.Labels["team"] = "wolves"
	h.update(ns)
	seen := time.Now().Add(waitFor)
	for !h.hasCounter("bearkong_discovery_events_total", map[string]string{"kind": kindNamespace, "event": eventUpdate}) {
		if time.Now().After(seen) {
			t.Fatal("the Namespace update was not seen")
		}
		time.Sleep(2 * time.Millisecond)
	}
	h.nothing()
	if got := h.counter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}); got != builds {
		t.Errorf("%v unchanged builds after a label change, want %v", got, builds)
	}
	// Fixing it applies.
	ns.Annotations[ann] = "DISABLE"
	h.update(ns)
	if s := h.next(); s.Service("a", "app-1").MTLS != mesh.MTLSDisable || s.Proxy("a", "app-1-0").MTLS != mesh.MTLSDisable {
		t.Errorf("after the fix: %s", describe(s))
	}
}

// hasCounter reports whether the registry holds a sample with these labels (counter
// fails the test when there is none yet).
func (h *harness) hasCounter(name string, labels map[string]string) bool {
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
			return true
		}
	}
	return false
}

// TestDefaultMTLSOption: the default mode is STRICT; a mode that is not one of the three
// makes Run fail before it watches anything, rather than guess.
func TestDefaultMTLSOption(t *testing.T) {
	if got := New(newFakeClient(), Options{}).opts.DefaultMTLS; got != mesh.MTLSStrict {
		t.Errorf("default mode %q, want STRICT", got)
	}
	if got := New(newFakeClient(), Options{DefaultMTLS: mesh.MTLSDisable}).opts.DefaultMTLS; got != mesh.MTLSDisable {
		t.Errorf("mode %q, want DISABLE", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	err := New(newFakeClient(), Options{DefaultMTLS: "strict"}).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), `default mTLS mode "strict"`) {
		t.Errorf("Run with an invalid default mode: %v", err)
	}
}
