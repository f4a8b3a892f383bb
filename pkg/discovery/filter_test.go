package discovery

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

const ignoredMetric = "bearkong_discovery_events_ignored_total"

// builds is how many snapshots the worker built, published or not.
func (h *harness) builds() float64 {
	h.t.Helper()
	return h.counter("bearkong_discovery_snapshot_build_seconds", nil)
}

// ignored waits until the ignored counter of kind reaches want, and checks that nothing
// was built meanwhile.
func (h *harness) ignored(kind string, want, builds float64) {
	h.t.Helper()
	h.waitCounter(ignoredMetric, map[string]string{"kind": kind}, want)
	h.nothing()
	if got := h.builds(); got != builds {
		h.t.Fatalf("builds = %v, want %v: an ignored event must not build", got, builds)
	}
}

// ignoredSoFar reads the ignored counter of every kind.
func (h *harness) ignoredSoFar() map[string]float64 {
	h.t.Helper()
	out := map[string]float64{}
	for _, kind := range []string{kindPod, kindEndpointSlice, kindService, kindNamespace} {
		out[kind] = h.counter(ignoredMetric, map[string]string{"kind": kind})
	}
	return out
}

func (h *harness) delete(obj any) {
	h.t.Helper()
	ctx := context.Background()
	var err error
	switch o := obj.(type) {
	case *corev1.Pod:
		err = h.client.CoreV1().Pods(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
	case *discoveryv1.EndpointSlice:
		err = h.client.DiscoveryV1().EndpointSlices(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
	default:
		h.t.Fatalf("unexpected object %T", obj)
	}
	if err != nil {
		h.t.Fatal(err)
	}
}

// TestIgnoredEvents walks through the events that cannot change the mesh, checking each
// is counted as ignored and builds nothing, and that what was ignored is not lost: the
// cache still holds it when a Service takes it into the mesh later.
func TestIgnoredEvents(t *testing.T) {
	svc, slice, p := app1()
	h := newHarness(t, fastOptions(), svc, slice, p)
	h.start()
	// The initial list may already have ignored some events: a pod listed before the
	// Service that selects it is ignored, and the Service's own event builds.
	base := h.ignoredSoFar()
	builds := h.builds()

	// A pod that no meshed Service selects: created, updated, deleted.
	other := pod("default", "other-0", "10.0.0.7", map[string]string{"app": "other"})
	h.create(other)
	h.ignored(kindPod, base[kindPod]+1, builds)
	// Each write works on a copy: the fake clientset hands the informer the object it
	// was given, so changing that object in place would change the cache's old state.
	other = other.DeepCopy()
	other.Status.PodIP = "10.0.0.8"
	h.update(other)
	h.ignored(kindPod, base[kindPod]+2, builds)
	stray := pod("default", "stray-0", "10.0.0.9", map[string]string{"app": "stray"})
	h.create(stray)
	h.ignored(kindPod, base[kindPod]+3, builds)
	h.delete(stray)
	h.ignored(kindPod, base[kindPod]+4, builds)

	// A selected pod's write that changes nothing bearkong keeps of it.
	p = p.DeepCopy()
	p.Annotations = map[string]string{"kubectl.kubernetes.io/restartedAt": "now"}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastProbeTime: metav1.Now()}}
	h.update(p)
	h.ignored(kindPod, base[kindPod]+5, builds)

	// The slice of a Service that is not meshed, and one that names no Service.
	otherSlice := endpointSlice("default", "other-x", "other", discoveryv1.AddressTypeIPv4, endpoint("10.0.0.8", "other-0"))
	h.create(otherSlice)
	h.ignored(kindEndpointSlice, base[kindEndpointSlice]+1, builds)
	loose := endpointSlice("default", "loose", "", discoveryv1.AddressTypeIPv4, endpoint("10.0.0.5", ""))
	delete(loose.Labels, discoveryv1.LabelServiceName)
	h.create(loose)
	h.ignored(kindEndpointSlice, base[kindEndpointSlice]+2, builds)

	// An unmeshed Service: its creation builds (policies may name it), its updates do not.
	otherSvc := service("default", "other")
	h.create(otherSvc)
	h.waitCounter("bearkong_discovery_snapshots_total", map[string]string{"result": resultUnchanged}, 1)
	builds++
	h.nothing()
	otherSvc = otherSvc.DeepCopy()
	withAnnotations("team", "bears")(otherSvc)
	h.update(otherSvc)
	h.ignored(kindService, base[kindService]+1, builds)
	// A meshed Service's write of nothing bearkong keeps (kubectl's last-applied).
	svc = svc.DeepCopy()
	withAnnotations("kubectl.kubernetes.io/last-applied-configuration", "{}")(svc)
	h.update(svc)
	h.ignored(kindService, base[kindService]+2, builds)

	// The Service joins the mesh: its pod (with the IP of the ignored update) and its
	// slice were in the cache all along.
	otherSvc = otherSvc.DeepCopy()
	meshed(otherSvc)
	h.update(otherSvc)
	s := h.next()
	got := s.Service("default", "other")
	if got == nil || len(got.Endpoints) != 1 || got.Endpoints[0].IP != "10.0.0.8" {
		t.Fatalf("the newly meshed Service should have the slice it had before: %s", describe(s))
	}
	if px := s.Proxies["default/other-0"]; px == nil || px.IP != "10.0.0.8" {
		t.Fatalf("the newly meshed Service should have the pod it had before, with its latest IP: %s", describe(s))
	}
	if s.Proxies["default/stray-0"] != nil {
		t.Fatalf("a deleted pod came back: %s", describe(s))
	}

	// Now that it is meshed, the same kinds of events do build.
	ignoredPods := h.counter(ignoredMetric, map[string]string{"kind": kindPod})
	other = other.DeepCopy()
	other.Status.PodIP = "10.0.0.6"
	h.update(other)
	if s := h.next(); s.Proxies["default/other-0"].IP != "10.0.0.6" {
		t.Fatalf("a selected pod's new IP: %s", describe(s))
	}
	if got := h.counter(ignoredMetric, map[string]string{"kind": kindPod}); got != ignoredPods {
		t.Fatalf("a selected pod's update was ignored")
	}
}

// TestPodLabelsMoveItIntoAndOutOfTheMesh: a pod that comes to be selected, and one that
// stops being selected (its old labels matched), both change the mesh.
func TestPodLabelsMoveItIntoAndOutOfTheMesh(t *testing.T) {
	svc, slice, p := app1()
	h := newHarness(t, fastOptions(), svc, slice, p)
	h.start()
	base := h.ignoredSoFar()[kindPod]

	moving := pod("default", "moving-0", "10.0.0.3", map[string]string{"app": "none"})
	h.create(moving)
	h.ignored(kindPod, base+1, h.builds())

	moving = moving.DeepCopy() // see TestIgnoredEvents
	moving.Labels["app"] = "app-1"
	h.update(moving)
	if s := h.next(); s.Proxies["default/moving-0"] == nil {
		t.Fatalf("the pod the Service now selects is not a proxy: %s", describe(s))
	}
	moving = moving.DeepCopy()
	moving.Labels["app"] = "none"
	h.update(moving)
	if s := h.next(); s.Proxies["default/moving-0"] != nil {
		t.Fatalf("the pod the Service no longer selects is still a proxy: %s", describe(s))
	}
	if got := h.counter(ignoredMetric, map[string]string{"kind": kindPod}); got != base+1 {
		t.Fatalf("ignored pod events = %v, want %v", got, base+1)
	}
}

// TestPodNamedByTheSliceOfASelectorlessService: a meshed Service without a selector
// selects no pod, but the pods its EndpointSlices name give it its ServiceAccounts, so a
// pod that appears after the slice that names it is not ignored.
func TestPodNamedByTheSliceOfASelectorlessService(t *testing.T) {
	manual := service("default", "manual", meshed, withSelector(nil))
	sl := endpointSlice("default", "manual-x", "manual", discoveryv1.AddressTypeIPv4, endpoint("10.0.0.4", "ext-0"))
	h := newHarness(t, fastOptions(), manual, sl)
	if s := h.start(); len(s.Service("default", "manual").ServiceAccounts) != 0 {
		t.Fatalf("no pod yet, so no ServiceAccount: %v", s.Service("default", "manual").ServiceAccounts)
	}
	h.create(withServiceAccount(pod("default", "ext-0", "10.0.0.4", map[string]string{"app": "ext"}), "ext"))
	s := h.next()
	if got := s.Service("default", "manual").ServiceAccounts; !slices.Equal(got, []string{"ext"}) {
		t.Fatalf("ServiceAccounts = %v, want [ext]", got)
	}
	// Another pod, which no slice names, is ignored.
	base := h.ignoredSoFar()[kindPod]
	h.create(pod("default", "ext-1", "10.0.0.5", map[string]string{"app": "ext"}))
	h.ignored(kindPod, base+1, h.builds())
}

// TestIgnorable is the decision, case by case, over listers the test fills.
func TestIgnorable(t *testing.T) {
	svc, slice, p := app1()
	unmeshed := service("default", "plain")
	h := newHarness(t, fastOptions(), svc, slice, p, unmeshed)
	h.start()
	d := h.d

	relabel := func(p *corev1.Pod, app string) *corev1.Pod {
		c := p.DeepCopy()
		c.Labels = map[string]string{"app": app}
		c.ResourceVersion = "2"
		return c
	}
	stranger := pod("default", "x-0", "10.0.0.9", map[string]string{"app": "x"})
	elsewhere := pod("other", "app-1-0", "10.0.0.9", map[string]string{"app": "app-1"})
	plainSlice := endpointSlice("default", "plain-x", "plain", discoveryv1.AddressTypeIPv4)
	ipChange := p.DeepCopy()
	ipChange.ResourceVersion, ipChange.Status.PodIP = "2", "10.0.0.2"
	annotated := p.DeepCopy()
	annotated.ResourceVersion = "2"
	annotated.Annotations = map[string]string{"a": "b"} // not what the transform keeps, but the handler compares what it gets
	meshedPlain := unmeshed.DeepCopy()
	meshed(meshedPlain)
	nsA, nsB := namespace("default"), namespace("default", mesh.AnnotationMTLS, "STRICT")
	nsB.ResourceVersion = "2"

	tests := []struct {
		name       string
		kind       string
		event      string
		old, obj   any
		wantIgnore bool
	}{
		{"selected pod added", kindPod, eventAdd, nil, p, false},
		{"unselected pod added", kindPod, eventAdd, nil, stranger, true},
		{"pod of another namespace with the same labels", kindPod, eventAdd, nil, elsewhere, true},
		{"unselected pod deleted", kindPod, eventDelete, nil, stranger, true},
		{"selected pod deleted", kindPod, eventDelete, nil, p, false},
		{"pod joins a Service", kindPod, eventUpdate, stranger, relabel(stranger, "app-1"), false},
		{"pod leaves a Service", kindPod, eventUpdate, p, relabel(p, "x"), false},
		{"selected pod's IP", kindPod, eventUpdate, p, ipChange, false},
		{"selected pod's other field", kindPod, eventUpdate, p, annotated, false},
		{"tombstone without an object", kindPod, eventDelete, nil, nil, false},
		{"slice of a meshed Service", kindEndpointSlice, eventAdd, nil, slice, false},
		{"slice of an unmeshed Service", kindEndpointSlice, eventAdd, nil, plainSlice, true},
		{"slice moves to a meshed Service", kindEndpointSlice, eventUpdate, plainSlice, slice, false},
		{"slice leaves a meshed Service", kindEndpointSlice, eventUpdate, slice, plainSlice, false},
		{"unmeshed Service updated", kindService, eventUpdate, unmeshed, withRV(unmeshed, "2"), true},
		{"unmeshed Service added", kindService, eventAdd, nil, unmeshed, false},
		{"unmeshed Service deleted", kindService, eventDelete, nil, unmeshed, false},
		{"Service joins the mesh", kindService, eventUpdate, unmeshed, meshedPlain, false},
		{"Service leaves the mesh", kindService, eventUpdate, meshedPlain, unmeshed, false},
		{"Namespace's mesh-mtls set", kindNamespace, eventUpdate, nsA, nsB, false},
		{"Namespace updated, same mesh-mtls", kindNamespace, eventUpdate, nsA, withRV(nsA, "3"), true},
		{"Namespace added", kindNamespace, eventAdd, nil, nsA, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := d.ignorable(tt.kind, tt.event, tt.old, tt.obj); got != tt.wantIgnore {
				t.Errorf("ignorable = %v, want %v", got, tt.wantIgnore)
			}
		})
	}
}

// withRV is a copy of obj with another resourceVersion.
func withRV[T interface {
	metav1.Object
	DeepCopy() T
}](obj T, rv string) T {
	c := obj.DeepCopy()
	c.SetResourceVersion(rv)
	return c
}
