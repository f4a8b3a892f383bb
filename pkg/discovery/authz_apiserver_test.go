package discovery

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestAuthorizationPoliciesWithTheAPIServer runs discovery against a real kube-apiserver
// with the CRD of manifests/crds (kubeenv installs it) and the RBAC of
// manifests/bearkong: the schema refuses malformed policies; a valid one reaches the
// snapshot with its callers resolved and gets Accepted=True, written with bearkong's own
// token; one on a Service that does not exist gets Accepted=False and stays out of the
// model; deleting a policy takes it out again.
func TestAuthorizationPoliciesWithTheAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	admin := env.Client
	cfg := bearkongConfig(ctx, t, env)
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	authz, err := v1alpha1.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(env.RESTConfig)
	if err != nil {
		t.Fatal(err)
	}
	const ns = "shop"
	policies := dyn.Resource(v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.Resource)).Namespace(ns)
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	// app-1 (pods of ServiceAccount web) and app-3 (api), both meshed.
	must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	no := false
	for _, app := range []struct{ name, sa, ip string }{{"app-1", "web", "10.1.2.1"}, {"app-3", "api", "10.1.2.3"}} {
		must(admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: app.sa}}, metav1.CreateOptions{}))
		svc := service(ns, app.name, meshed)
		svc.ResourceVersion = ""
		must(admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}))
		p := pod(ns, app.name+"-0", "", map[string]string{"app": app.name})
		p.ResourceVersion = ""
		p.Spec = corev1.PodSpec{ServiceAccountName: app.sa, AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "app", Image: "app"}}}
		created, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		slice := endpointSlice(ns, app.name+"-x", app.name, discoveryv1.AddressTypeIPv4, endpoint(app.ip, app.name+"-0"))
		slice.ResourceVersion = ""
		slice.Endpoints[0].TargetRef.Namespace, slice.Endpoints[0].TargetRef.UID = ns, created.UID
		must(admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}))
	}

	create := func(doc string) error {
		t.Helper()
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		_, err := policies.Create(ctx, &unstructured.Unstructured{Object: m}, metav1.CreateOptions{})
		return err
	}

	t.Run("the schema refuses malformed policies", func(t *testing.T) {
		for _, c := range []struct{ name, spec, want string }{
			{"action BLOCK", `{targetRef: {name: app-3}, action: BLOCK, rules: [{}]}`, "action"},
			{"no action", `{targetRef: {name: app-3}, rules: [{}]}`, "action"},
			{"no rules", `{targetRef: {name: app-3}, action: ALLOW, rules: []}`, "rules"},
			{"a from entry of two kinds", `{targetRef: {name: app-3}, action: ALLOW, rules: [{from: [{serviceAccount: {name: web}, service: {name: app-1}}]}]}`, "exactly one of serviceAccount, service or anyWorkload"},
			{"anyWorkload false alone", `{targetRef: {name: app-3}, action: ALLOW, rules: [{from: [{anyWorkload: false}]}]}`, "exactly one"},
			{"mode Audit", `{targetRef: {name: app-3}, action: DENY, mode: Audit, rules: [{}]}`, "mode"},
			{"lower-case method", `{targetRef: {name: app-3}, action: DENY, rules: [{to: {methods: [get]}}]}`, "methods"},
			{"regex path type", `{targetRef: {name: app-3}, action: DENY, rules: [{to: {paths: [{type: RegularExpression, value: "/a.*"}]}}]}`, "type"},
			{"relative path", `{targetRef: {name: app-3}, action: DENY, rules: [{to: {paths: [{value: admin}]}}]}`, "value"},
			{"gRPC service with a slash", `{targetRef: {name: app-3}, action: DENY, rules: [{to: {grpc: [{service: "a/B"}]}}]}`, "service"},
			{"paths and grpc", `{targetRef: {name: app-3}, action: DENY, rules: [{to: {paths: [{value: /a}], grpc: [{service: a.B}]}}]}`, "paths and grpc"},
			{"empty to", `{targetRef: {name: app-3}, action: DENY, rules: [{to: {}}]}`, "to"},
			{"unknown field", `{targetRef: {name: app-3}, action: DENY, rules: [{form: [{anyWorkload: true}]}]}`, "form"},
		} {
			err := create("{apiVersion: bearkong.dev/v1alpha1, kind: AuthorizationPolicy, metadata: {name: bad}, spec: " + c.spec + "}")
			switch {
			case c.name == "unknown field":
				// Pruned, not refused, by a create without strict field validation;
				// kubectl apply validates strictly and refuses it. The policy left is
				// valid (any caller), so delete it.
				if err == nil {
					must(nil, policies.Delete(ctx, "bad", metav1.DeleteOptions{}))
					continue
				}
				fallthrough
			default:
				if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), c.want) {
					t.Errorf("%s: create: %v, want Invalid mentioning %q", c.name, err, c.want)
				}
			}
		}
	})

	reg := prometheus.NewRegistry()
	d := New(client, Options{QuietPeriod: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, AuthzClient: authz, Registerer: reg,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	await := func(what string, ok func(*mesh.Snapshot) bool) *mesh.Snapshot {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case s := <-d.Snapshots():
				if ok(s) {
					return s
				}
			case <-deadline:
				t.Fatalf("no snapshot with %s within 30s; latest: %s", what, describeMTLS(d.Latest()))
				return nil
			}
		}
	}
	// accepted waits until the policy's Accepted condition, read with the typed
	// client, is status/reason for its current generation.
	accepted := func(name, want string) *v1alpha1.AuthorizationPolicy {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			p, err := authz.AuthorizationPolicies(ns).Get(ctx, name, metav1.GetOptions{})
			if err == nil {
				if c := findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted); c != nil &&
					string(c.Status)+"/"+c.Reason == want && c.ObservedGeneration == p.Generation && !c.LastTransitionTime.IsZero() {
					t.Logf("%s: Accepted=%s %s: %s", name, c.Status, c.Reason, c.Message)
					return p
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: no Accepted %s within 30s: %+v, %v", name, want, p.Status, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	must(nil, create(`
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: app-3-callers}
spec:
  targetRef: {name: app-3}
  action: ALLOW
  rules:
    - from: [{service: {name: app-1}}, {serviceAccount: {name: robot, namespace: ops}}]
      to: {methods: [GET], paths: [{value: /api}]}
`))
	s := await("app-3's policy", func(s *mesh.Snapshot) bool {
		svc := s.Service(ns, "app-3")
		return svc != nil && len(svc.Authz) == 1
	})
	want := mesh.AuthzPolicy{Namespace: ns, Name: "app-3-callers", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{{
		Callers: []string{"ops/robot", "shop/web"}, Methods: []string{"GET"},
		Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/api"}}, // the schema's default type
	}}}
	if got := s.Service(ns, "app-3").Authz[0]; !equalPolicy(got, want) {
		t.Errorf("app-3's policy = %+v, want %+v", got, want)
	}
	if got := s.Service(ns, "app-1").Authz; got != nil {
		t.Errorf("app-1 has policies: %+v", got)
	}
	p := accepted("app-3-callers", "True/Accepted")
	if p.Spec.Mode != v1alpha1.ModeEnforce {
		t.Errorf("mode = %q, want the schema's default Enforce", p.Spec.Mode)
	}
	since := findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted).LastTransitionTime
	// A new generation that stays accepted: the condition follows the generation and
	// keeps its transition time (the status did not change).
	time.Sleep(1100 * time.Millisecond) // transition times have a resolution of a second
	must(policies.Patch(ctx, "app-3-callers", types.JSONPatchType, []byte(`[{"op":"add","path":"/spec/rules/0/to/methods/-","value":"POST"}]`), metav1.PatchOptions{}))
	await("app-3's policy with POST", func(s *mesh.Snapshot) bool {
		svc := s.Service(ns, "app-3")
		return svc != nil && len(svc.Authz) == 1 && slices.Equal(svc.Authz[0].Rules[0].Methods, []string{"GET", "POST"})
	})
	p = accepted("app-3-callers", "True/Accepted")
	if c := findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted); p.Generation != 2 || !c.LastTransitionTime.Equal(&since) {
		t.Errorf("generation %d, transition %v; want 2 and %v, the first", p.Generation, c.LastTransitionTime, since)
	}

	must(nil, create(`{apiVersion: bearkong.dev/v1alpha1, kind: AuthorizationPolicy, metadata: {name: on-ghost}, spec: {targetRef: {name: ghost}, action: DENY, rules: [{}]}}`))
	ghostSince := findCondition(accepted("on-ghost", "False/TargetNotFound").Status.Conditions, v1alpha1.ConditionAccepted).LastTransitionTime
	if s := d.Latest(); !hasDiagnostic(s, "on-ghost", v1alpha1.ReasonTargetNotFound) {
		t.Errorf("no TargetNotFound diagnostic: %+v", s.Diagnostics)
	}

	// A change of the spec is a new generation, and the condition follows it: pointed
	// at app-3, the policy is accepted and joins app-3's, in name order. The status
	// changed, so the transition time did too.
	time.Sleep(1100 * time.Millisecond) // transition times have a resolution of a second
	must(policies.Patch(ctx, "on-ghost", types.MergePatchType, []byte(`{"spec":{"targetRef":{"name":"app-3"}}}`), metav1.PatchOptions{}))
	if p := accepted("on-ghost", "True/Accepted"); p.Generation != 2 {
		t.Errorf("generation %d, want 2", p.Generation)
	} else if c := findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted); !c.LastTransitionTime.After(ghostSince.Time) {
		t.Errorf("transition time %v after False at %v: want a later one", c.LastTransitionTime, ghostSince)
	}
	await("two policies on app-3", func(s *mesh.Snapshot) bool {
		svc := s.Service(ns, "app-3")
		return svc != nil && len(svc.Authz) == 2 && svc.Authz[0].Name == "app-3-callers" && svc.Authz[1].Name == "on-ghost" &&
			svc.Authz[1].Action == mesh.AuthzDeny && svc.Authz[1].Rules[0].AnyCaller
	})

	must(nil, policies.Delete(ctx, "app-3-callers", metav1.DeleteOptions{}))
	must(nil, policies.Delete(ctx, "on-ghost", metav1.DeleteOptions{}))
	await("no policy on app-3", func(s *mesh.Snapshot) bool {
		svc := s.Service(ns, "app-3")
		return svc != nil && svc.Authz == nil
	})
	// Policies are read on every build, so their events (and those of the statuses
	// bearkong wrote) rebuild no Service: the only full build is the first.
	if full, incremental := sumMetric(t, reg, "bearkong_discovery_builds_total", map[string]string{"kind": buildFull}),
		sumMetric(t, reg, "bearkong_discovery_builds_total", map[string]string{"kind": buildIncremental}); full != 1 || incremental == 0 {
		t.Errorf("%v full builds and %v incremental ones, want 1 (the first) and some", full, incremental)
	}
}

func equalPolicy(a, b mesh.AuthzPolicy) bool {
	if a.Key() != b.Key() || a.Action != b.Action || a.Shadow != b.Shadow || len(a.Rules) != len(b.Rules) {
		return false
	}
	for i := range a.Rules {
		x, y := a.Rules[i], b.Rules[i]
		if x.AnyCaller != y.AnyCaller || !slices.Equal(x.Callers, y.Callers) || !slices.Equal(x.Methods, y.Methods) ||
			!slices.Equal(x.Paths, y.Paths) || !slices.Equal(x.Headers, y.Headers) || !slices.Equal(x.GRPC, y.GRPC) {
			return false
		}
	}
	return true
}
