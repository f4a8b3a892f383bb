package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestAdmissionPolicyRefusesInvalidAnnotations: with the admission policy the local mesh
// installs (manifests/bearkong/admission-policy.yaml), `kubectl annotate service app-2
// mesh-timeout=banana` is refused by the API server with a message naming the annotation,
// app-2 keeps its annotations, and no proxy is sent anything.
func TestAdmissionPolicyRefusesInvalidAnnotations(t *testing.T) {
	m := sharedMesh(t)
	ctx := ctxT(t, time.Minute)
	before := waitSettled(t, m) // what an earlier test changed has landed
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.CommandContext(ctx, filepath.Join(root, ".cache", "bin", "kubectl"), "--kubeconfig", shared.env.Kubeconfig,
		"--namespace", m.Namespace(), "annotate", "service", "app-2", "mesh-timeout=banana")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `annotation mesh-timeout="banana" is invalid: use a Go duration`) ||
		!strings.Contains(string(out), localmesh.AdmissionPolicyName) {
		t.Fatalf("kubectl annotate service app-2 mesh-timeout=banana: %v, want a refusal naming the annotation\n%s", err, out)
	}
	t.Logf("kubectl annotate service app-2 mesh-timeout=banana:\n%s", out)

	// The same through the API, for a Service annotation and a Namespace's mesh-mtls:
	// 422 Invalid.
	err = m.SetServiceAnnotations(ctx, "app-2", map[string]string{mesh.AnnotationMaxRequests: "lots"})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), `annotation mesh-max-requests="lots" is invalid`) {
		t.Errorf("mesh-max-requests: lots: %v, want 422 Invalid naming the annotation", err)
	}
	ns, err := shared.env.Client.CoreV1().Namespaces().Get(ctx, m.Namespace(), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ns.Annotations == nil {
		ns.Annotations = map[string]string{}
	}
	ns.Annotations[mesh.AnnotationMTLS] = "strict"
	_, err = shared.env.Client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{})
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), `annotation mesh-mtls="strict" is invalid: use STRICT, PERMISSIVE or DISABLE`) {
		t.Errorf("Namespace mesh-mtls: strict: %v, want 422 Invalid naming the annotation", err)
	}

	svc, err := shared.env.Client.CoreV1().Services(m.Namespace()).Get(ctx, "app-2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for k := range svc.Annotations {
		if strings.HasPrefix(k, mesh.AnnotationPrefix) {
			t.Errorf("app-2 holds %s=%q after the refusals", k, svc.Annotations[k])
		}
	}
	after := waitAllSynced(t, m)
	for node, b := range before {
		for i, pair := range typePairs(b, after[node]) {
			if pair[0].VersionAcked != pair[1].VersionAcked || pair[0].Pushes != pair[1].Pushes {
				t.Errorf("%s: type %d changed after refused writes:\nbefore %+v\nafter  %+v", node, i, pair[0], pair[1])
			}
		}
	}
}
