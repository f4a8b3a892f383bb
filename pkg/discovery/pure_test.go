package discovery

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// pureObjects are a Namespace and Services whose mesh-* annotations are valid (valid
// true) or all invalid, with a Service that inherits the Namespace's mode.
func pureObjects(valid bool) []runtime.Object {
	ann := mesh.AnnotationMTLS
	nsMode, mode, timeout, maxRequests, interval := "PERMISSIVE", "DISABLE", "2s", "7", "1s"
	if !valid {
		nsMode, mode, timeout, maxRequests, interval = "PERMISIVE", "Disabled", "banana", "0", "soon"
	}
	return []runtime.Object{
		namespace("a", ann, nsMode),
		service("a", "own", meshed, withAnnotations(ann, mode, mesh.AnnotationTimeout, timeout,
			mesh.AnnotationMaxRequests, maxRequests, mesh.AnnotationOutlierInterval, interval)),
		service("a", "inherits", meshed),
		pod("a", "own-0", "10.0.0.1", map[string]string{"app": "own"}),
		pod("a", "inherits-0", "10.0.0.2", map[string]string{"app": "inherits"}),
	}
}

// fullSnapshotCmp compares everything but the time of the change.
var fullSnapshotCmp = []cmp.Option{cmpopts.IgnoreFields(mesh.Snapshot{}, "ChangedAt"), cmpopts.EquateEmpty()}

// TestInvalidIsAsIfAbsent: the config is a function of what the API holds. A Service or
// Namespace whose mesh-* annotations are invalid gives what it would give without
// them (plus one diagnostic each), whatever the objects said before: a replica started
// now, or a restarted one, has no "before" to remember, and must serve what every other
// replica serves.
func TestInvalidIsAsIfAbsent(t *testing.T) {
	before := buildWith(t, "", pureObjects(true)...)
	if s := before.Service("a", "own"); s.Policy.Timeout == 0 || s.MTLS != mesh.MTLSDisable || before.Service("a", "inherits").MTLS != mesh.MTLSPermissive {
		t.Fatalf("the valid annotations do not apply: %+v", before.Services)
	}
	invalid := buildWith(t, "", pureObjects(false)...)

	// As if absent: the objects without the mesh-* annotations give the same model.
	absent := pureObjects(false)
	absent[0] = namespace("a")
	absent[1] = service("a", "own", meshed, withAnnotations("owner", "team-a"))
	want := buildWith(t, "", absent...)
	for i := range want.Services {
		want.Services[i].Annotations = invalid.Services[i].Annotations // the raw annotations differ, by construction
	}
	if diff := cmp.Diff(want, invalid, append(fullSnapshotCmp, cmpopts.IgnoreFields(mesh.Snapshot{}, "Diagnostics"))...); diff != "" {
		t.Errorf("invalid annotations are not ignored as if absent (-absent +invalid):\n%s", diff)
	}

	// One diagnostic and one Event per invalid annotation, naming it, its value, why,
	// and what applies instead.
	var got []string
	for _, d := range invalid.Diagnostics {
		if d.Reason != mesh.ReasonInvalidAnnotation {
			continue
		}
		if !d.Event {
			t.Errorf("diagnostic without an Event: %+v", d)
		}
		got = append(got, d.Kind+" "+d.Namespace+"/"+d.Name+": "+d.Message)
	}
	wantDiags := []string{
		`Namespace /a: annotation mesh-mtls="PERMISIVE" is invalid: must be STRICT, PERMISSIVE or DISABLE (upper case); it is ignored, as if absent: the Namespace's Services without a mesh-mtls of their own get the control plane's default mode (STRICT)`,
		`Service a/own: annotation mesh-max-requests="0" is invalid: must be from 1 to 1000000; it is ignored, as if absent: Envoy's default (1024)`,
		`Service a/own: annotation mesh-mtls="Disabled" is invalid: must be STRICT, PERMISSIVE or DISABLE (upper case); it is ignored, as if absent: the Service gets the control plane's default mode (STRICT)`,
		`Service a/own: annotation mesh-outlier-interval="soon" is invalid: not a duration (use a Go duration such as 2s, 500ms or 1m30s); it is ignored, as if absent: no outlier detection, unless another mesh-outlier-* annotation turns it on (then Envoy's default, 10s)`,
		`Service a/own: annotation mesh-timeout="banana" is invalid: not a duration (use a Go duration such as 2s, 500ms or 1m30s); it is ignored, as if absent: no timeout`,
	}
	if diff := cmp.Diff(wantDiags, got); diff != "" {
		t.Errorf("diagnostics (-want +got):\n%s", diff)
	}

	// Fixed: the annotations apply again.
	if diff := cmp.Diff(before, buildWith(t, "", pureObjects(true)...), fullSnapshotCmp...); diff != "" {
		t.Errorf("once fixed (-want +got):\n%s", diff)
	}
}

// TestRestartServesTheSame: a Discovery that saw valid annotations turn invalid
// publishes the same snapshot as one started on the invalid objects (a restart, or a
// replica started later).
func TestRestartServesTheSame(t *testing.T) {
	h := newHarness(t, fastOptions(), pureObjects(true)...)
	if s := h.start(); s.Service("a", "own").Policy.Timeout == 0 {
		t.Fatalf("first snapshot: %s", describe(s))
	}
	for _, o := range pureObjects(false)[:2] {
		h.update(o)
	}
	var seen *mesh.Snapshot
	for i := 0; i < 10; i++ {
		seen = h.next()
		if seen.Service("a", "own").Annotations[mesh.AnnotationTimeout] == "banana" && hasInvalidDiagnostic(seen, KindNamespace, "a") {
			break
		}
	}

	restarted := newHarness(t, fastOptions(), pureObjects(false)...).start()
	if diff := cmp.Diff(restarted, seen, fullSnapshotCmp...); diff != "" {
		t.Errorf("the running replica and a restarted one disagree (-restarted +running):\n%s", diff)
	}
}

func hasInvalidDiagnostic(s *mesh.Snapshot, kind, name string) bool {
	for _, d := range s.Diagnostics {
		if d.Kind == kind && d.Name == name && strings.Contains(d.Message, "invalid") {
			return true
		}
	}
	return false
}
