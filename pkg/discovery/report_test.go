package discovery

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// events lists the Events bearkong wrote in namespace a.
func (h *harness) events() []string {
	h.t.Helper()
	list, err := h.client.EventsV1().Events("a").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.ReportingController != reportingController || e.Type != corev1.EventTypeWarning {
			h.t.Fatalf("unexpected event %+v", e)
		}
		out = append(out, e.Regarding.Name+" "+e.Reason+": "+e.Note)
	}
	return out
}

func (h *harness) waitEvents(n int) []string {
	h.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		evs := h.events()
		if len(evs) >= n || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPolicyAndDiagnostics(t *testing.T) {
	svc := service("a", "app-1", meshed, withAnnotations("mesh-timeout", "2s"))
	h := newHarness(t, fastOptions(), svc)
	s := h.start()
	if got := s.Services[0].Policy.Timeout; got != 2*time.Second {
		t.Fatalf("timeout %s, want 2s", got)
	}
	if evs := h.events(); len(evs) != 0 {
		t.Fatalf("events for a valid config: %v", evs)
	}

	steps := []struct {
		value       string
		wantTimeout time.Duration
		wantErr     string // in the diagnostic and the Event; "" means none
	}{
		// An invalid value is ignored as if absent: no timeout.
		{"banana", 0, "not a duration"},
		{"-1s", 0, "greater than 0s"},
		{"0s", 0, "greater than 0s"},
		{"2h", 0, "at most 1h0m0s"},
		{"3s", 3 * time.Second, ""},
		{"", 0, ""}, // annotation removed: back to the default
	}
	wantEvents := 0
	for _, st := range steps {
		if st.value == "" {
			delete(svc.Annotations, mesh.AnnotationTimeout)
		} else {
			svc.Annotations[mesh.AnnotationTimeout] = st.value
		}
		h.update(svc)
		s = h.next()
		if got := s.Services[0].Policy.Timeout; got != st.wantTimeout {
			t.Fatalf("mesh-timeout=%q: timeout %s, want %s", st.value, got, st.wantTimeout)
		}
		var invalid []mesh.Diagnostic
		for _, d := range s.Diagnostics {
			if d.Reason == mesh.ReasonInvalidAnnotation {
				invalid = append(invalid, d)
			}
		}
		if st.wantErr == "" {
			if len(invalid) != 0 {
				t.Fatalf("mesh-timeout=%q: diagnostics %v", st.value, invalid)
			}
			continue
		}
		if len(invalid) != 1 || !strings.Contains(invalid[0].Message, st.wantErr) || invalid[0].Name != "app-1" {
			t.Fatalf("mesh-timeout=%q: diagnostics %v, want one saying %q", st.value, invalid, st.wantErr)
		}
		wantEvents++
		evs := h.waitEvents(wantEvents)
		if len(evs) != wantEvents || !containsAny(evs, st.wantErr) {
			t.Fatalf("mesh-timeout=%q: events %v", st.value, evs)
		}
	}
	if got := h.counter("bearkong_kube_api_writes_total", map[string]string{"resource": "events", "verb": "create", "result": "ok"}); got != float64(wantEvents) {
		t.Fatalf("api writes %v, want %v", got, wantEvents)
	}

	// A steady invalid value is reported once, not on every rebuild.
	svc.Annotations[mesh.AnnotationTimeout] = "banana"
	h.update(svc)
	h.next()
	svc.Annotations["unrelated"] = "x"
	h.update(svc)
	h.nothing()
	if evs := h.waitEvents(wantEvents + 1); len(evs) != wantEvents+1 {
		t.Fatalf("events %v, want %d", evs, wantEvents+1)
	}
}

func containsAny(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func TestTargetPortDiagnostics(t *testing.T) {
	h := newHarness(t, fastOptions(),
		service("a", "app-3", meshed, withPorts(corev1.ServicePort{Name: "http", Port: 9090, TargetPort: intstr.FromInt32(5080)})),
		service("a", "ok", meshed, withPorts(corev1.ServicePort{Name: "http", Port: 9090, TargetPort: intstr.FromInt32(8000)})),
	)
	s := h.start()
	if len(s.Diagnostics) != 1 {
		t.Fatalf("diagnostics %+v, want one for app-3", s.Diagnostics)
	}
	d := s.Diagnostics[0]
	if d.Name != "app-3" || d.Reason != mesh.ReasonTargetPortMisses || !strings.Contains(d.Message, "targets 5080") || d.Event {
		t.Fatalf("diagnostic %+v", d)
	}
	if got := h.counter("bearkong_diagnostics", nil); got != 1 {
		t.Fatalf("bearkong_diagnostics = %v", got)
	}
}

// TestOddServiceEvents checks which odd-Service diagnostics become Events: an
// ExternalName Service and conflicting mesh-timeouts do (they are mistakes to fix), a
// selector-less Service without slices does not (every such Service starts that way).
func TestOddServiceEvents(t *testing.T) {
	sidecar := withPorts(corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8000)})
	h := newHarness(t, fastOptions(),
		service("a", "ext", meshed, sidecar, withSelector(nil), externalName("db.example.com")),
		service("a", "manual", meshed, sidecar, withSelector(nil)),
		service("a", "app-1", meshed, sidecar, withAnnotations("mesh-timeout", "2s")),
		service("a", "web", meshed, sidecar, withSelector(map[string]string{"tier": "front"})),
		pod("a", "app-1-0", "10.0.0.1", map[string]string{"app": "app-1", "tier": "front"}),
	)
	s := h.start()
	reasons := map[string]string{}
	for _, d := range s.Diagnostics {
		reasons[d.Name] += d.Reason + " "
	}
	want := map[string]string{
		"ext":    mesh.ReasonExternalName + " ",
		"manual": mesh.ReasonNoEndpointSlices + " ",
		"app-1":  mesh.ReasonConflictingPolicies + " ",
		"web":    mesh.ReasonConflictingPolicies + " ",
	}
	if diff := cmpDiff(want, reasons); diff != "" {
		t.Fatalf("diagnostics by Service (-want +got):\n%s", diff)
	}
	evs := h.waitEvents(3)
	if len(evs) != 3 || !containsAny(evs, "ext "+mesh.ReasonExternalName+": ExternalName Service") ||
		!containsAny(evs, "app-1 "+mesh.ReasonConflictingPolicies+": Service a/web (no mesh-timeout)") ||
		!containsAny(evs, "web "+mesh.ReasonConflictingPolicies+": Service a/app-1 (mesh-timeout 2s)") {
		t.Fatalf("events %v", evs)
	}
	time.Sleep(quiet)
	if evs := h.events(); len(evs) != 3 {
		t.Fatalf("events %v, want 3 (none for the selector-less Service)", evs)
	}
}
