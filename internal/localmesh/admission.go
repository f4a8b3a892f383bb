package localmesh

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// AdmissionPolicyName is the name of the ValidatingAdmissionPolicy that refuses invalid
// mesh-* annotations, and of its binding (manifests/bearkong/admission-policy.yaml).
const AdmissionPolicyName = "bearkong-mesh-annotations"

// admissionWait bounds the wait for the API server to start (or stop) enforcing the
// policy. It loads policies asynchronously, usually within a second.
const admissionWait = 30 * time.Second

// AdmissionPolicyPath returns the path of the admission policy's manifest, the file
// `kubectl apply -k manifests/` applies.
func AdmissionPolicyPath() (string, error) {
	root, err := kubeenv.RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "manifests", "bearkong", "admission-policy.yaml"), nil
}

// ReadAdmissionPolicy decodes the admission policy and its binding from the manifest.
func ReadAdmissionPolicy() (*admissionv1.ValidatingAdmissionPolicy, *admissionv1.ValidatingAdmissionPolicyBinding, error) {
	path, err := AdmissionPolicyPath()
	if err != nil {
		return nil, nil, err
	}
	objs, err := kubeenv.ReadYAML(path)
	if err != nil {
		return nil, nil, err
	}
	var policy *admissionv1.ValidatingAdmissionPolicy
	var binding *admissionv1.ValidatingAdmissionPolicyBinding
	for _, o := range objs {
		var into any
		switch o.GetKind() {
		case "ValidatingAdmissionPolicy":
			policy = &admissionv1.ValidatingAdmissionPolicy{}
			into = policy
		case "ValidatingAdmissionPolicyBinding":
			binding = &admissionv1.ValidatingAdmissionPolicyBinding{}
			into = binding
		default:
			return nil, nil, fmt.Errorf("%s: unexpected %s %s", path, o.GetKind(), o.GetName())
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, into, true); err != nil {
			return nil, nil, fmt.Errorf("%s: %s: %w", path, o.GetKind(), err)
		}
	}
	if policy == nil || binding == nil || policy.Name != AdmissionPolicyName || binding.Name != AdmissionPolicyName {
		return nil, nil, fmt.Errorf("%s: want a ValidatingAdmissionPolicy and a binding named %s", path, AdmissionPolicyName)
	}
	return policy, binding, nil
}

// InstallAdmissionPolicy creates (or updates to the manifest's version) the admission
// policy that refuses invalid mesh-* annotations, and its binding, then waits until the
// API server enforces it: the API server loads policies asynchronously, so a write made
// right after the create could still get through. Enforcement is probed with a dry-run
// create of a Service annotated mesh-timeout=banana, until it is refused.
func InstallAdmissionPolicy(ctx context.Context, env *kubeenv.Env) error {
	policy, binding, err := ReadAdmissionPolicy()
	if err != nil {
		return fmt.Errorf("localmesh: admission policy: %w", err)
	}
	api := env.Client.AdmissionregistrationV1()
	if cur, err := api.ValidatingAdmissionPolicies().Get(ctx, policy.Name, metav1.GetOptions{}); err == nil {
		policy.ResourceVersion = cur.ResourceVersion
		_, err = api.ValidatingAdmissionPolicies().Update(ctx, policy, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("localmesh: update admission policy: %w", err)
		}
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("localmesh: get admission policy: %w", err)
	} else if _, err := api.ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("localmesh: create admission policy: %w", err)
	}
	if cur, err := api.ValidatingAdmissionPolicyBindings().Get(ctx, binding.Name, metav1.GetOptions{}); err == nil {
		binding.ResourceVersion = cur.ResourceVersion
		if _, err := api.ValidatingAdmissionPolicyBindings().Update(ctx, binding, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("localmesh: update admission policy binding: %w", err)
		}
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("localmesh: get admission policy binding: %w", err)
	} else if _, err := api.ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("localmesh: create admission policy binding: %w", err)
	}
	if err := Eventually(ctx, admissionWait, func(ctx context.Context) error {
		refused, err := probeAdmission(ctx, env)
		if err != nil {
			return err
		}
		if !refused {
			return errors.New("a Service annotated mesh-timeout=banana is still accepted")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("localmesh: admission policy %s not enforced: %w", AdmissionPolicyName, err)
	}
	return nil
}

// RemoveAdmissionPolicy deletes the admission policy and its binding, and waits until the
// API server no longer enforces them (a test that sets invalid annotations on purpose,
// to see what bearkong does with a value that got past the policy, needs that).
func RemoveAdmissionPolicy(ctx context.Context, env *kubeenv.Env) error {
	api := env.Client.AdmissionregistrationV1()
	if err := api.ValidatingAdmissionPolicyBindings().Delete(ctx, AdmissionPolicyName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("localmesh: delete admission policy binding: %w", err)
	}
	if err := api.ValidatingAdmissionPolicies().Delete(ctx, AdmissionPolicyName, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("localmesh: delete admission policy: %w", err)
	}
	if err := Eventually(ctx, admissionWait, func(ctx context.Context) error {
		refused, err := probeAdmission(ctx, env)
		if err != nil {
			return err
		}
		if refused {
			return errors.New("a Service annotated mesh-timeout=banana is still refused")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("localmesh: admission policy %s still enforced: %w", AdmissionPolicyName, err)
	}
	return nil
}

// probeAdmission reports whether the admission policy refuses a dry-run create of a
// Service with an invalid mesh-timeout. Dry-run requests go through admission but store
// nothing (https://kubernetes.io/docs/reference/using-api/api-concepts/#dry-run).
func probeAdmission(ctx context.Context, env *kubeenv.Env) (bool, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "bearkong-admission-probe-",
			Namespace:    metav1.NamespaceDefault,
			Annotations:  map[string]string{mesh.AnnotationTimeout: "banana"},
		},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}
	_, err := env.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	switch {
	case err == nil:
		return false, nil
	case apierrors.IsInvalid(err) && strings.Contains(err.Error(), AdmissionPolicyName):
		return true, nil
	default:
		return false, fmt.Errorf("dry-run create of a probe Service: %w", err)
	}
}
