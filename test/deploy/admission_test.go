package deploy

import (
	"context"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Values tried on every annotation of a kind; which are valid is for pkg/mesh to say.
var (
	durationValues = []string{
		"2s", "500ms", "1m30s", "1h", "1h0m0s", " 2s ", "\t2s\n", "+2s", "1.5s", ".5s", "5.s", "0.000001h",
		"000001s", "1us", "1\u00b5s", "1\u03bcs", "1ns", "3599999999999ns", "3600000000000ns",
		"banana", "", " ", "0", "0s", "-0s", "-1s", "2", "61m", "2h", "1h0m0.000000001s", "3600000000001ns",
		"1 s", "1hh", "1S", "1d", ".s", "s", "1.2.3s", "1e3s", "1s1", "99999999999999999999h",
	}
	countValues = []string{
		"1", "3", "007", "00000000001", " 5 ", "\t9\n", "100", "101", "1000", "1001", "1000000", "1000001",
		"0", "", " ", "-1", "+1", "1.0", "1e3", "lots", "0x10", "1_000", "1 0", "4294967297",
		"99999999999999999999999", "-0",
	}
	modeValues      = []string{"STRICT", "PERMISSIVE", "DISABLE", "strict", "Permissive", " STRICT", "STRICT ", "", "OFF", "DISABLED"}
	accessLogValues = []string{"json", "text", "off", "JSON", "Text", " json", "json ", "", "on", "false", "yaml"}
)

// annotationValues is the table of values to try, per annotation a Service can carry.
var annotationValues = map[string][]string{
	mesh.AnnotationTimeout:                   durationValues,
	mesh.AnnotationOutlierInterval:           durationValues,
	mesh.AnnotationOutlierBaseEjectionTime:   durationValues,
	mesh.AnnotationOutlierConsecutive5xx:     countValues,
	mesh.AnnotationOutlierMaxEjectionPercent: countValues,
	mesh.AnnotationMaxConnections:            countValues,
	mesh.AnnotationMaxPendingRequests:        countValues,
	mesh.AnnotationMaxRequests:               countValues,
	mesh.AnnotationMTLS:                      modeValues,
	mesh.AnnotationAccessLog:                 accessLogValues,
}

// TestAdmissionPolicyAgreesWithBearkong installs manifests/bearkong/admission-policy.yaml
// in a real kube-apiserver (internal/kubeenv; the ValidatingAdmissionPolicy admission
// plugin is on by default) and checks, annotation by annotation and value by value, that
// the API server accepts exactly the values bearkong's own parser accepts
// (mesh.ValidateAnnotation), and that each refusal is a 422 naming the annotation.
func TestAdmissionPolicyAgreesWithBearkong(t *testing.T) {
	b := binaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	env := startEnv(ctx, t, b)
	if err := localmesh.InstallAdmissionPolicy(ctx, env); err != nil {
		t.Fatal(err)
	}
	// The API server compiles the expressions when the policy is created; the type
	// check against the schemas is a kube-controller-manager's job (status.typeChecking),
	// and none runs here. An expression with a type error would fail at run time and
	// refuse every value: the table below, which wants valid values accepted, catches
	// that.

	// The table covers every annotation bearkong reads, and no other.
	if got, want := slices.Sorted(maps.Keys(annotationValues)), mesh.KnownAnnotations(); !slices.Equal(got, want) {
		t.Fatalf("the table covers %v, bearkong reads %v", got, want)
	}

	core := env.Client.CoreV1()
	dryRun := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	// check compares the API server's answer (err) for key=value with bearkong's.
	check := func(t *testing.T, kind, key, value string, err error) (accepted bool) {
		t.Helper()
		known, bad := mesh.ValidateAnnotation(key, value)
		if !known {
			t.Fatalf("mesh.ValidateAnnotation does not know %s", key)
		}
		switch {
		case bad == nil && err != nil:
			t.Errorf("%s %s=%q: refused (%v), but bearkong accepts it", kind, key, value, err)
		case bad != nil && err == nil:
			t.Errorf("%s %s=%q: accepted, but bearkong refuses it (%v)", kind, key, value, bad)
		case err != nil:
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), localmesh.AdmissionPolicyName) {
				t.Errorf("%s %s=%q: refused with %v, want a 422 from %s naming %s", kind, key, value, err, localmesh.AdmissionPolicyName, key)
			}
		}
		return err == nil
	}
	for _, key := range slices.Sorted(maps.Keys(annotationValues)) {
		t.Run(key, func(t *testing.T) {
			accepted, refused := 0, 0
			for _, v := range annotationValues[key] {
				svc := &corev1.Service{
					ObjectMeta: metav1.ObjectMeta{Namespace: "default", GenerateName: "probe-", Annotations: map[string]string{key: v}},
					Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
				}
				_, err := core.Services("default").Create(ctx, svc, dryRun)
				if check(t, "Service", key, v, err) {
					accepted++
				} else {
					refused++
				}
				if !slices.Contains(mesh.NamespaceAnnotations(), key) {
					continue
				}
				ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Annotations: map[string]string{key: v}}}
				_, err = core.Namespaces().Create(ctx, ns, dryRun)
				check(t, "Namespace", key, v, err)
			}
			if accepted == 0 || refused == 0 {
				t.Errorf("%d values accepted and %d refused: want some of each", accepted, refused)
			}
			t.Logf("%d values accepted and %d refused, as bearkong reads them", accepted, refused)
		})
	}

	// Keys bearkong does not read are let through, as bearkong ignores them: a misspelt
	// mesh-* key on a Service (bearkong reports it as UnknownAnnotation), and a Service
	// annotation on a Namespace.
	t.Run("keys bearkong does not read", func(t *testing.T) {
		svc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", GenerateName: "probe-", Annotations: map[string]string{"mesh-timout": "banana", "example.com/note": "x"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}
		if _, err := core.Services("default").Create(ctx, svc, dryRun); err != nil {
			t.Errorf("Service with an unknown mesh-* key: %v", err)
		}
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "probe-", Annotations: map[string]string{mesh.AnnotationTimeout: "banana"}}}
		if _, err := core.Namespaces().Create(ctx, ns, dryRun); err != nil {
			t.Errorf("Namespace with mesh-timeout: %v", err)
		}
	})

	// `kubectl annotate service app-2 mesh-timeout=banana` on an existing Service.
	t.Run("kubectl annotate an existing Service", func(t *testing.T) {
		app2 := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "app-2", Labels: map[string]string{mesh.MeshedLabel: mesh.MeshedValue}},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "app-2"}, Ports: []corev1.ServicePort{{Name: "http", Port: 9090}}},
		}
		if _, err := core.Services("default").Create(ctx, app2, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		out, err := kubectl(ctx, t, env, "annotate", "service", "app-2", "mesh-timeout=banana")
		if err == nil || !strings.Contains(out, `annotation mesh-timeout="banana" is invalid`) || !strings.Contains(out, localmesh.AdmissionPolicyName) {
			t.Errorf("kubectl annotate service app-2 mesh-timeout=banana: %v\n%s", err, out)
		} else {
			t.Logf("kubectl annotate service app-2 mesh-timeout=banana:\n%s", out)
		}
		// The same through the API: 422 Invalid, and nothing stored.
		cur, err := core.Services("default").Get(ctx, "app-2", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cur.Annotations = map[string]string{mesh.AnnotationTimeout: "banana"}
		_, err = core.Services("default").Update(ctx, cur, metav1.UpdateOptions{})
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), `annotation mesh-timeout="banana" is invalid: use a Go duration`) {
			t.Errorf("update with mesh-timeout=banana: %v, want 422 Invalid naming the annotation", err)
		}
		if out, err := kubectl(ctx, t, env, "annotate", "service", "app-2", "mesh-timeout=2s"); err != nil {
			t.Errorf("kubectl annotate service app-2 mesh-timeout=2s: %v\n%s", err, out)
		}
		if got, _ := core.Services("default").Get(ctx, "app-2", metav1.GetOptions{}); got == nil || got.Annotations[mesh.AnnotationTimeout] != "2s" {
			t.Errorf("app-2 after the refused and the valid annotate: %+v", got)
		}
	})

	// A value stored before the policy was installed does not block other changes to the
	// object (bearkong ignores it as if absent); changing it to another invalid value does.
	t.Run("an invalid value already stored", func(t *testing.T) {
		if err := localmesh.RemoveAdmissionPolicy(ctx, env); err != nil {
			t.Fatal(err)
		}
		old := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "old", Annotations: map[string]string{mesh.AnnotationTimeout: "banana"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
		}
		if _, err := core.Services("default").Create(ctx, old, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create without the policy: %v", err)
		}
		if err := localmesh.InstallAdmissionPolicy(ctx, env); err != nil {
			t.Fatal(err)
		}
		if out, err := kubectl(ctx, t, env, "label", "service", "old", "team=bears"); err != nil {
			t.Errorf("a label on a Service with a stored invalid value: %v\n%s", err, out)
		}
		out, err := kubectl(ctx, t, env, "annotate", "--overwrite", "service", "old", "mesh-timeout=apple")
		if err == nil || !strings.Contains(out, `annotation mesh-timeout="apple" is invalid`) {
			t.Errorf("changing it to another invalid value: %v\n%s", err, out)
		}
		if out, err := kubectl(ctx, t, env, "annotate", "service", "old", "mesh-timeout-"); err != nil {
			t.Errorf("removing it: %v\n%s", err, out)
		}
	})
}

// kubectl runs the installed kubectl (.cache/bin) against env and returns its output.
func kubectl(ctx context.Context, t *testing.T, env *kubeenv.Env, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(repoRoot(t), ".cache", "bin", "kubectl")
	out, err := exec.CommandContext(ctx, bin, append([]string{"--kubeconfig", env.Kubeconfig, "--namespace", "default"}, args...)...).CombinedOutput()
	return string(out), err
}

// TestAdmissionPolicyManifest checks the policy's file without a cluster: bound with
// Deny, failing closed, on creates and updates of core/v1 Services and Namespaces, and one
// validation per annotation bearkong reads, whose messages name it.
func TestAdmissionPolicyManifest(t *testing.T) {
	policy, binding, err := localmesh.ReadAdmissionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if binding.Spec.PolicyName != policy.Name || !slices.Equal(binding.Spec.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
		t.Errorf("binding %+v, want policy %s with validationActions [Deny]", binding.Spec, policy.Name)
	}
	if fp := policy.Spec.FailurePolicy; fp == nil || *fp != admissionv1.Fail {
		t.Errorf("failurePolicy %v, want Fail", fp)
	}
	mc := policy.Spec.MatchConstraints
	if mc == nil || len(mc.ResourceRules) != 1 {
		t.Fatalf("matchConstraints %+v, want one rule", mc)
	}
	r := mc.ResourceRules[0].RuleWithOperations
	if !slices.Equal(r.APIGroups, []string{""}) || !slices.Equal(r.APIVersions, []string{"v1"}) ||
		!slices.Equal(r.Resources, []string{"services", "namespaces"}) ||
		!slices.Equal(r.Operations, []admissionv1.OperationType{admissionv1.Create, admissionv1.Update}) {
		t.Errorf("rule %+v, want CREATE and UPDATE of core/v1 services and namespaces", r)
	}
	var covered []string
	for _, v := range policy.Spec.Validations {
		var key string
		for _, k := range mesh.KnownAnnotations() {
			// mesh-outlier-interval is no prefix of another key, and so on: the quoted key
			// names one annotation.
			if strings.Contains(v.Expression, "'"+k+"'") {
				if key != "" {
					t.Errorf("validation checks %s and %s: want one annotation per validation", key, k)
				}
				key = k
			}
		}
		if key == "" {
			t.Errorf("validation %q checks no annotation bearkong reads", v.Expression)
			continue
		}
		covered = append(covered, key)
		if !strings.Contains(v.MessageExpression, "annotation "+key+`="`) || !strings.HasPrefix(v.Message, "annotation "+key+" is invalid: ") {
			t.Errorf("validation of %s: messages %q and %q do not name it", key, v.MessageExpression, v.Message)
		}
		if v.Reason == nil || *v.Reason != metav1.StatusReasonInvalid {
			t.Errorf("validation of %s: reason %v, want Invalid (422)", key, v.Reason)
		}
	}
	if slices.Sort(covered); !slices.Equal(covered, mesh.KnownAnnotations()) {
		t.Errorf("the policy validates %v, bearkong reads %v", covered, mesh.KnownAnnotations())
	}
}
