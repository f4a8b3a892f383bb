package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ca"
	bkdiscovery "github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// ipPrefix is where this package's local mesh puts its pods: away from test/e2e and
// `make run` (127.0.1.) and internal/localmesh's tests (127.0.3.).
const ipPrefix = "127.0.6."

// startEnv starts a real etcd and kube-apiserver for the test.
func startEnv(ctx context.Context, t *testing.T, b bins) *kubeenv.Env {
	t.Helper()
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(t.TempDir(), "kube"), BinDir: b.toolDir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube: %v", err)
		}
	})
	return env
}

// applier applies manifest objects with server-side apply, as
// `kubectl apply --server-side` does, with strict field validation, and turns every
// warning the API server sends into an error.
type applier struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper

	mu       sync.Mutex
	warnings []string
}

func (a *applier) HandleWarningHeader(_ int, _ string, text string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.warnings = append(a.warnings, text)
}

func newApplier(t *testing.T, env *kubeenv.Env) *applier {
	t.Helper()
	a := &applier{}
	cfg := rest.CopyConfig(env.RESTConfig)
	cfg.WarningHandler = a
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	groups, err := restmapper.GetAPIGroupResources(dc)
	if err != nil {
		t.Fatal(err)
	}
	a.mapper = restmapper.NewDiscoveryRESTMapper(groups)
	if a.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return a
}

// apply applies o; with dryRun, as a server-side dry run (admission and validation run,
// nothing is stored).
func (a *applier) apply(ctx context.Context, o object, dryRun bool) error {
	gvk := o.obj.GroupVersionKind()
	mapping, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(mapping.Resource).Namespace(o.obj.GetNamespace())
	}
	data, err := json.Marshal(o.obj.Object)
	if err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	force := true
	opts := metav1.PatchOptions{FieldManager: "bearkong-deploy-test", Force: &force, FieldValidation: "Strict"}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	a.mu.Lock()
	a.warnings = nil
	a.mu.Unlock()
	if _, err := ri.Patch(ctx, o.obj.GetName(), types.ApplyPatchType, data, opts); err != nil {
		return fmt.Errorf("%s: %w", o, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.warnings) > 0 {
		return fmt.Errorf("%s: API server warnings: %q", o, a.warnings)
	}
	return nil
}

// TestManifestsServerDryRun applies every manifest object to a real kube-apiserver as a
// server-side dry run with strict field validation: the namespaces first (then for real,
// since namespaced objects need them), then everything else. With kubectl on PATH it also
// runs the users' command, `kubectl apply --server-side --dry-run=server -k`, on each
// directory.
func TestManifestsServerDryRun(t *testing.T) {
	b := binaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	env := startEnv(ctx, t, b)
	a := newApplier(t, env)
	objs := loadAll(t)

	namespaces := find(objs, "Namespace", "")
	for _, o := range namespaces {
		if err := a.apply(ctx, o, true); err != nil {
			t.Fatal(err)
		}
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for _, o := range objs {
		if o.obj.GetKind() == "Namespace" {
			continue
		}
		if err := a.apply(ctx, o, true); err != nil {
			t.Error(err)
			continue
		}
		n++
	}
	t.Logf("%d namespaces applied, %d objects passed a server-side dry-run apply", len(namespaces), n)

	t.Run("dry run stored nothing", func(t *testing.T) {
		_, err := env.Client.AppsV1().Deployments("bearkong-system").Get(ctx, "bearkong", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("get Deployment bearkong after a dry run: %v, want NotFound", err)
		}
	})

	// manifests/crds is applied by `make run/crds` (kubectl apply --server-side -f), not
	// by the kustomizations; kubeenv created its CRDs already, so this is the apply a
	// user's upgrade makes, strict.
	t.Run("bearkong's CRDs", func(t *testing.T) {
		files, err := filepath.Glob(filepath.Join(repoRoot(t), "manifests", "crds", "*.yaml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no CRDs in manifests/crds: %v", err)
		}
		for _, f := range files {
			crds, err := kubeenv.ReadYAML(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range crds {
				if err := a.apply(ctx, object{file: f, obj: o}, true); err != nil {
					t.Error(err)
				}
			}
		}
		// And the command `make run/crds` runs, as a server-side dry run.
		root := repoRoot(t)
		cmd := exec.CommandContext(ctx, filepath.Join(root, ".cache", "bin", "kubectl"), "--kubeconfig", env.Kubeconfig,
			"apply", "--server-side", "--dry-run=server", "-f", filepath.Join("manifests", "crds"))
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("kubectl apply --server-side --dry-run=server -f manifests/crds: %v\n%s", err, out)
		} else {
			t.Logf("kubectl apply -f manifests/crds: %s", strings.TrimSpace(string(out)))
		}
	})

	t.Run("a misspelt field fails", func(t *testing.T) {
		bad := object{file: "(modified copy)", obj: find(objs, "Deployment", "bearkong")[0].obj.DeepCopy()}
		containers := bad.obj.Object["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)
		c := containers[0].(map[string]any)
		c["readinesProbe"] = c["readinessProbe"]
		err := a.apply(ctx, bad, true)
		if err == nil || !strings.Contains(err.Error(), "readinesProbe") {
			t.Errorf("dry-run apply with a misspelt field: %v, want a strict-validation error", err)
		}
	})

	t.Run("kubectl apply -k", func(t *testing.T) {
		// kubectl is built from a pinned module by scripts/install-kube.sh (make install).
		root := repoRoot(t)
		kubectl := filepath.Join(root, ".cache", "bin", "kubectl")
		if _, err := os.Stat(kubectl); err != nil {
			t.Fatalf("%v (run make install)", err)
		}
		for _, dir := range append([]string{""}, manifestDirs...) {
			cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", env.Kubeconfig,
				"apply", "--server-side", "--dry-run=server", "-k", filepath.Join("manifests", dir))
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("%s: %v\n%s", cmd, err, out)
				continue
			}
			t.Logf("%s:\n%s", strings.Join(cmd.Args[3:], " "), out)
		}
	})
}

// TestControlPlaneWithItsServiceAccount applies manifests/bearkong for real, mints a token
// for its ServiceAccount with the TokenRequest API, and runs `bearkong cp` with a
// kubeconfig that holds that token and the cluster's CA, nothing else. The control plane
// must serve the local mesh built from manifests/apps (every pod reaches every app through
// its Envoy), and the token must be refused everything the control plane does not use.
func TestControlPlaneWithItsServiceAccount(t *testing.T) {
	b := binaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	env := startEnv(ctx, t, b)
	root := repoRoot(t)

	a := newApplier(t, env)
	cpObjs, err := loadDir(root, "bearkong")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range cpObjs {
		if err := a.apply(ctx, o, false); err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig := serviceAccountKubeconfig(ctx, t, env, "bearkong-system", "bearkong")
	saCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	saCfg.QPS, saCfg.Burst = 100, 200 // this test's many access reviews, not the control plane's
	sa := kubernetes.NewForConfigOrDie(saCfg)

	t.Run("the kubeconfig is the ServiceAccount", func(t *testing.T) {
		r, err := sa.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		u := r.Status.UserInfo
		if u.Username != "system:serviceaccount:bearkong-system:bearkong" || slices.Contains(u.Groups, "system:masters") {
			t.Fatalf("authenticated as %s %v", u.Username, u.Groups)
		}
		t.Logf("authenticated as %s %v", u.Username, u.Groups)
	})

	as := apps(t)
	names := slices.Sorted(maps.Keys(as))
	m, err := localmesh.New(ctx, localmesh.Options{
		Env:                    env,
		Dir:                    filepath.Join(t.TempDir(), "mesh"),
		BearkongBin:            b.bearkong,
		EnvoyBin:               b.envoy,
		DemoAppBin:             b.demoApp,
		Namespace:              as[names[0]].svc.Namespace,
		IPPrefix:               ipPrefix,
		ControlPlaneKubeconfig: kubeconfig,
		Logf:                   t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("close mesh: %v", err)
		}
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("control plane log (tail):\n%s", kubeenv.LogTail(m.ControlPlaneLog(), 8192))
		}
	})
	if err := m.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}

	// The Services as the manifests declare them; the pods as many as the Deployments'
	// replicas (localmesh plays the kubelet and the endpoint controller).
	var specs []localmesh.PodSpec
	for _, name := range names {
		svc := as[name].svc
		if svc.Namespace != m.Namespace() {
			t.Fatalf("%s is in namespace %s, the others in %s", name, svc.Namespace, m.Namespace())
		}
		port := svc.Spec.Ports[0]
		if port.TargetPort.Type != intstr.Int {
			t.Fatalf("%s: targetPort %s: only numbers are carried over to the local mesh", name, port.TargetPort.String())
		}
		err := m.AddService(ctx, name, localmesh.ServiceOptions{
			TargetPort:  port.TargetPort.IntVal,
			PortName:    port.Name,
			Labels:      svc.Labels,
			Annotations: svc.Annotations,
		})
		if err != nil {
			t.Fatal(err)
		}
		for range as[name].replicas {
			specs = append(specs, localmesh.PodSpec{Service: name})
		}
	}
	if _, err := m.AddPods(ctx, specs...); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitAllReachable(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	t.Run("every pod reaches every app", func(t *testing.T) {
		pods := m.Pods()
		if len(pods) != len(specs) {
			t.Fatalf("%d pods, want %d", len(pods), len(specs))
		}
		var table strings.Builder
		fmt.Fprintf(&table, "%-10s", "from\\to")
		for _, to := range names {
			fmt.Fprintf(&table, " %-22s", to)
		}
		for _, p := range pods {
			fmt.Fprintf(&table, "\n%-10s", p.Name)
			for _, to := range names {
				c := m.Call(ctx, p.Name, to)
				fmt.Fprintf(&table, " %3d %-18s", c.Status, c.Pod)
				if c.Err != nil || c.Status != http.StatusOK || c.Answer.Name != to {
					t.Errorf("%s -> %s: %d %q %v", p.Name, to, c.Status, c.Body, c.Err)
				}
			}
		}
		t.Logf("status and answering pod, through each pod's outbound listener:\n%s", table.String())
	})

	t.Run("one stream per pod", func(t *testing.T) {
		want := fmt.Sprintf("bearkong_xds_connected_streams %d\n", len(specs))
		err := localmesh.Eventually(ctx, 10*time.Second, func(ctx context.Context) error {
			b, err := m.ControlPlaneGet(ctx, "/metrics")
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), want) {
				return fmt.Errorf("no %q in /metrics", strings.TrimSpace(want))
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	// The manifests' Services point targetPort at the sidecar (8000), except app-3, which
	// keeps the original exercise's 5080: that, and only that, is diagnosed.
	t.Run("diagnostics name app-3's targetPort only", func(t *testing.T) {
		b, err := m.ControlPlaneGet(ctx, "/debug/diagnostics")
		if err != nil {
			t.Fatal(err)
		}
		var body struct {
			Diagnostics []mesh.Diagnostic `json:"diagnostics"`
		}
		if err := json.Unmarshal(b, &body); err != nil {
			t.Fatal(err)
		}
		ds := body.Diagnostics
		if len(ds) != 1 || ds[0].Name != "app-3" || ds[0].Reason != mesh.ReasonTargetPortMisses || !strings.Contains(ds[0].Message, "5080") {
			t.Errorf("diagnostics = %+v, want one %s for app-3 naming 5080", ds, mesh.ReasonTargetPortMisses)
		}
	})

	// An unknown mesh-* annotation makes the control plane write an Event on the Service,
	// with its own token. (An invalid value of a known one would be refused by the
	// admission policy, which manifests/bearkong installs; a misspelt key gets through.)
	t.Run("the control plane writes its Events", func(t *testing.T) {
		svc := names[0]
		if err := m.SetServiceAnnotations(ctx, svc, map[string]string{"mesh-timout": "2s"}); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := m.SetServiceAnnotations(ctx, svc, as[svc].svc.Annotations); err != nil {
				t.Error(err)
			}
		}()
		err := localmesh.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			evs, err := env.Client.EventsV1().Events(m.Namespace()).List(ctx, metav1.ListOptions{})
			if err != nil {
				return err
			}
			for _, ev := range evs.Items {
				if ev.ReportingController == "bearkong.dev/control-plane" && ev.Regarding.Kind == "Service" && ev.Regarding.Name == svc {
					t.Logf("Event %s: %s %s: %s", ev.Name, ev.Type, ev.Reason, ev.Note)
					return nil
				}
			}
			return fmt.Errorf("no Event from bearkong on Service %s among %d", svc, len(evs.Items))
		})
		if err != nil {
			t.Error(err)
		}
	})

	// An HTTPRoute attached to a meshed Service gets a parent status from bearkong, which
	// it writes with its own token (update on httproutes/status).
	t.Run("the control plane writes HTTPRoute status", func(t *testing.T) {
		svc := names[len(names)-1]
		route := object{file: "(test)", obj: &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "gateway.networking.k8s.io/v1",
			"kind":       "HTTPRoute",
			"metadata":   map[string]any{"name": svc + "-deploy-test", "namespace": m.Namespace()},
			"spec": map[string]any{
				"parentRefs": []any{map[string]any{"group": "", "kind": "Service", "name": svc}},
				"rules":      []any{map[string]any{"backendRefs": []any{map[string]any{"name": svc, "port": int64(9090)}}}},
			},
		}}}
		if err := a.apply(ctx, route, false); err != nil {
			t.Fatal(err)
		}
		gvr := schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "httproutes"}
		routes := a.dyn.Resource(gvr).Namespace(m.Namespace())
		defer func() {
			if err := routes.Delete(ctx, route.obj.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		}()
		err := localmesh.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			got, err := routes.Get(ctx, route.obj.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			parents, _, _ := unstructured.NestedSlice(got.Object, "status", "parents")
			for _, p := range parents {
				if pm, ok := p.(map[string]any); ok && pm["controllerName"] == string(bkdiscovery.ControllerName) {
					t.Logf("HTTPRoute %s: parent status from %s: %v", got.GetName(), pm["controllerName"], pm["conditions"])
					return nil
				}
			}
			return fmt.Errorf("no parent status from %s on HTTPRoute %s", bkdiscovery.ControllerName, got.GetName())
		})
		if err != nil {
			t.Error(err)
		}
	})

	// An AuthorizationPolicy on a meshed Service gets Accepted=True from bearkong, which
	// it writes with its own token (update on authorizationpolicies/status).
	t.Run("the control plane writes AuthorizationPolicy status", func(t *testing.T) {
		svc := names[len(names)-1]
		pol := object{file: "(test)", obj: &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "bearkong.dev/v1alpha1",
			"kind":       "AuthorizationPolicy",
			"metadata":   map[string]any{"name": svc + "-deploy-test", "namespace": m.Namespace()},
			"spec": map[string]any{
				"targetRef": map[string]any{"name": svc},
				"action":    "DENY",
				"mode":      "Shadow", // evaluated, never enforced: the other subtests keep their traffic
				"rules":     []any{map[string]any{"to": map[string]any{"paths": []any{map[string]any{"value": "/deploy-test"}}}}},
			},
		}}}
		if err := a.apply(ctx, pol, false); err != nil {
			t.Fatal(err)
		}
		gvr := schema.GroupVersionResource{Group: "bearkong.dev", Version: "v1alpha1", Resource: "authorizationpolicies"}
		policies := a.dyn.Resource(gvr).Namespace(m.Namespace())
		defer func() {
			if err := policies.Delete(ctx, pol.obj.GetName(), metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
		}()
		err := localmesh.Eventually(ctx, 20*time.Second, func(ctx context.Context) error {
			got, err := policies.Get(ctx, pol.obj.GetName(), metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
			for _, c := range conds {
				if cm, ok := c.(map[string]any); ok && cm["type"] == "Accepted" && cm["status"] == "True" {
					t.Logf("AuthorizationPolicy %s: %v", got.GetName(), cm)
					return nil
				}
			}
			return fmt.Errorf("no Accepted=True on AuthorizationPolicy %s: %v", got.GetName(), conds)
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("no request was refused", func(t *testing.T) {
		log, err := os.ReadFile(m.ControlPlaneLog())
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.Lines(string(log)) {
			if l := strings.ToLower(line); strings.Contains(l, "forbidden") || strings.Contains(l, "unauthorized") {
				t.Errorf("control plane log: %s", strings.TrimSpace(line))
			}
		}
	})

	t.Run("least privilege", func(t *testing.T) {
		leastPrivilege(ctx, t, sa, m.Namespace(), names[0])
	})

	t.Run("least privilege on ConfigMaps", func(t *testing.T) {
		rootConfigMapAccess(ctx, t, sa, env.Client, m.Namespace())
	})
	t.Run("the CA Secret and no other", func(t *testing.T) {
		caSecretAccess(ctx, t, env, sa, m.Namespace())
	})
	t.Run("the leader Lease and no other", func(t *testing.T) {
		leaseAccess(ctx, t, env, sa, m.Namespace())
	})
}

// leaseAccess checks, with the control plane's own client, that it may get and update
// the leader-election Lease bearkong-system/bearkong and create it (client-go's leader
// election, pkg/discovery/leader.go), and nothing else: not another Lease's, not in
// another namespace, no list, watch, patch or delete. The control plane under test holds
// that Lease already, through those verbs.
func leaseAccess(ctx context.Context, t *testing.T, env *kubeenv.Env, sa kubernetes.Interface, appNS string) {
	const cpNS, name = "bearkong-system", "bearkong"
	for _, c := range []struct {
		verb, namespace, name string
		allowed               bool
	}{
		{"get", cpNS, name, true},
		{"update", cpNS, name, true},
		{"create", cpNS, "", true}, // RBAC cannot restrict create by name (rbac.yaml)
		{"get", cpNS, "other", false},
		{"update", cpNS, "other", false},
		{"get", cpNS, "", false},
		{"list", cpNS, "", false},
		{"watch", cpNS, name, false},
		{"patch", cpNS, name, false},
		{"delete", cpNS, name, false},
		{"deletecollection", cpNS, "", false},
		{"get", appNS, name, false},
		{"update", appNS, name, false},
		{"create", appNS, "", false},
		{"create", "kube-system", "", false},
	} {
		r, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Group: "coordination.k8s.io", Resource: "leases", Namespace: c.namespace, Name: c.name,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.allowed {
			t.Errorf("%s leases %q in %q: allowed=%t, want %t", c.verb, c.name, c.namespace, r.Status.Allowed, c.allowed)
		}
	}

	// The same with real requests: the control plane's Lease is there and readable;
	// it may not be deleted, and another Lease (the admin's) may be neither read nor
	// updated.
	lease, err := sa.CoordinationV1().Leases(cpNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get the leader Lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Errorf("the leader Lease has no holder: %+v", lease.Spec)
	} else {
		t.Logf("Lease %s/%s held by %s", cpNS, name, *lease.Spec.HolderIdentity)
	}
	if err := sa.CoordinationV1().Leases(cpNS).Delete(ctx, name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete the leader Lease: %v, want Forbidden", err)
	}
	other := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "other", Namespace: cpNS}}
	other, err = env.Client.CoordinationV1().Leases(cpNS).Create(ctx, other, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.CoordinationV1().Leases(cpNS).Get(ctx, other.Name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get Lease %s: %v, want Forbidden", other.Name, err)
	}
	holder := "intruder"
	other.Spec.HolderIdentity = &holder
	if _, err := sa.CoordinationV1().Leases(cpNS).Update(ctx, other, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("update Lease %s: %v, want Forbidden", other.Name, err)
	}
	if _, err := sa.CoordinationV1().Leases(cpNS).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list Leases: %v, want Forbidden", err)
	}
}

// caSecretAccess checks, with the control plane's own client, that it may read the CA
// Secret bearkong-system/bearkong-ca and create it (pkg/discovery.CASecretStore), and no
// other Secret: not another name in its namespace, not the same name in another one, no
// list, watch, update or delete.
func caSecretAccess(ctx context.Context, t *testing.T, env *kubeenv.Env, sa kubernetes.Interface, appNS string) {
	const cpNS, caName = "bearkong-system", "bearkong-ca"
	for _, c := range []struct {
		verb, namespace, name string
		allowed               bool
	}{
		{"get", cpNS, caName, true},
		{"create", cpNS, "", true}, // RBAC cannot restrict create by name (rbac.yaml)
		{"get", cpNS, "other", false},
		{"get", cpNS, "", false},
		{"list", cpNS, "", false},
		{"watch", cpNS, caName, false},
		{"update", cpNS, caName, false},
		{"patch", cpNS, caName, false},
		{"delete", cpNS, caName, false},
		{"get", appNS, caName, false},
		{"create", appNS, "", false},
		{"get", "default", caName, false},
		{"create", "default", "", false},
	} {
		r, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Resource: "secrets", Namespace: c.namespace, Name: c.name,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.allowed {
			t.Errorf("%s secrets %q in %q: allowed=%t, want %t", c.verb, c.name, c.namespace, r.Status.Allowed, c.allowed)
		}
	}

	// The same with real requests: the CA comes up with the ServiceAccount's client (it
	// creates the Secret, or loads it when the control plane already has), and other
	// Secrets, which the admin creates, stay out of its reach.
	store := bkdiscovery.CASecretStore{Client: sa, Namespace: cpNS, Name: caName}
	a, err := ca.LoadOrCreate(ctx, store, ca.Options{})
	if err != nil {
		t.Fatalf("the CA with the ServiceAccount's client: %v", err)
	}
	stored, err := env.Client.CoreV1().Secrets(cpNS).Get(ctx, caName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if string(stored.Data["ca.crt"]) != string(a.Bundle()) {
		t.Error("the CA Secret does not hold the root the CA loaded")
	}
	for _, ns := range []string{cpNS, appNS} {
		name := "not-the-ca"
		if ns == appNS {
			name = caName
		}
		other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, StringData: map[string]string{"k": "v"}}
		if _, err := env.Client.CoreV1().Secrets(ns).Create(ctx, other, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := sa.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("get Secret %s/%s: %v, want Forbidden", ns, name, err)
		}
	}
	if _, err := sa.CoreV1().Secrets(cpNS).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list Secrets in %s: %v, want Forbidden", cpNS, err)
	}
	if err := sa.CoreV1().Secrets(cpNS).Delete(ctx, caName, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete the CA Secret: %v, want Forbidden", err)
	}
}

// leastPrivilege checks, with the control plane's own client, that its RBAC grants
// exactly what it uses: read Services, Pods, EndpointSlices, HTTPRoutes and
// AuthorizationPolicies; list and watch Namespaces; update HTTPRoute and
// AuthorizationPolicy statuses; create, patch and list events.k8s.io Events; and nothing
// else (ConfigMaps: rootConfigMapAccess; Secrets: caSecretAccess; Leases: leaseAccess).
func leastPrivilege(ctx context.Context, t *testing.T, sa kubernetes.Interface, ns, svcName string) {
	type access struct {
		verb, group, resource, namespace string
		allowed                          bool
	}
	var cases []access
	for _, r := range []struct{ group, resource string }{
		{"", "services"}, {"", "pods"}, {"discovery.k8s.io", "endpointslices"}, {"gateway.networking.k8s.io", "httproutes"},
		{"bearkong.dev", "authorizationpolicies"},
	} {
		for _, verb := range []string{"get", "list", "watch"} {
			cases = append(cases, access{verb, r.group, r.resource, "", true}, access{verb, r.group, r.resource, ns, true})
		}
		for _, verb := range []string{"create", "update", "patch", "delete", "deletecollection"} {
			cases = append(cases, access{verb, r.group, r.resource, ns, false})
		}
	}
	cases = append(cases,
		access{"update", "gateway.networking.k8s.io", "httproutes/status", ns, true},
		access{"patch", "gateway.networking.k8s.io", "httproutes/status", ns, false},
		access{"update", "bearkong.dev", "authorizationpolicies/status", ns, true},
		access{"patch", "bearkong.dev", "authorizationpolicies/status", ns, false},
		access{"list", "gateway.networking.k8s.io", "gateways", "", false},
		access{"update", "gateway.networking.k8s.io", "gateways/status", ns, false},
		access{"create", "events.k8s.io", "events", ns, true},
		access{"create", "events.k8s.io", "events", "bearkong-system", true},
		// The events recorder patches a repeated Event into a series; a new leader
		// lists the Events bearkong wrote, once, to write none twice.
		access{"patch", "events.k8s.io", "events", ns, true},
		access{"list", "events.k8s.io", "events", "", true},
		access{"update", "events.k8s.io", "events", ns, false},
		access{"delete", "events.k8s.io", "events", ns, false},
		access{"deletecollection", "events.k8s.io", "events", ns, false},
		access{"get", "events.k8s.io", "events", ns, false},
		access{"watch", "events.k8s.io", "events", "", false},
		access{"create", "authentication.k8s.io", "tokenreviews", "", true}, // the proxies' tokens
		access{"create", "authorization.k8s.io", "subjectaccessreviews", "", false},
		access{"create", "", "serviceaccounts/token", ns, false},
		access{"create", "", "events", ns, false}, // core/v1 Events: not used
		access{"get", "", "secrets", ns, false},
		access{"list", "", "secrets", "", false},
		access{"list", "", "configmaps", "", false},
		access{"list", "", "endpoints", "", false},
		access{"list", "", "nodes", "", false},
		// Namespaces: an informer for their mesh-mtls annotation, nothing more.
		access{"list", "", "namespaces", "", true},
		access{"watch", "", "namespaces", "", true},
		access{"get", "", "namespaces", "", false},
		access{"update", "", "namespaces", "", false},
		access{"patch", "", "namespaces", "", false},
		access{"create", "", "namespaces", "", false},
		access{"delete", "", "namespaces", "", false},
		access{"create", "events.k8s.io", "events", "default", true}, // Events about Namespaces
		access{"create", "", "serviceaccounts/token", "bearkong-system", false},
		access{"update", "", "pods/status", ns, false},
		// Leases: leaseAccess.
		access{"create", "coordination.k8s.io", "leases", ns, false},
		access{"list", "coordination.k8s.io", "leases", "", false},
		access{"list", "apps", "deployments", "", false},
		access{"bind", "rbac.authorization.k8s.io", "clusterroles", "", false},
		access{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", false},
		access{"impersonate", "", "users", "", false},
		access{"*", "*", "*", "", false},
	)
	for _, c := range cases {
		resource, sub, _ := strings.Cut(c.resource, "/")
		r, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Group: c.group, Resource: resource, Subresource: sub, Namespace: c.namespace,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.allowed {
			t.Errorf("%s %s (group %q) in %q: allowed=%t, want %t", c.verb, c.resource, c.group, c.namespace, r.Status.Allowed, c.allowed)
		}
	}

	// The same with real requests, where a request is harmless.
	tr, err := sa.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: "not-a-token", Audiences: []string{"bearkong"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Errorf("TokenReview with the control plane's token: %v, want allowed", err)
	} else if tr.Status.Authenticated {
		t.Errorf("TokenReview of a garbage token: authenticated as %q", tr.Status.User.Username)
	}
	if _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list secrets: %v, want Forbidden", err)
	}
	svc, err := sa.CoreV1().Services(ns).Get(ctx, svcName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get Service %s: %v", svcName, err)
	}
	svc.Annotations = map[string]string{"mesh-timeout": "2s"}
	if _, err := sa.CoreV1().Services(ns).Update(ctx, svc, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("update Service %s: %v, want Forbidden", svcName, err)
	}
	ev := &eventsv1.Event{
		ObjectMeta:          metav1.ObjectMeta{Name: svcName + ".bearkong-deploy-test", Namespace: ns},
		EventTime:           metav1.NowMicro(),
		ReportingController: "bearkong.dev/deploy-test",
		ReportingInstance:   "bearkong-deploy-test",
		Action:              "Validate",
		Reason:              "InvalidAnnotation",
		Type:                corev1.EventTypeWarning,
		Note:                "mesh-timeout: test event created with the control plane's token",
		Regarding:           corev1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: ns, Name: svcName, UID: svc.UID},
	}
	created, err := sa.EventsV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create an events.k8s.io Event: %v", err)
	}
	// The recorder's series patch (a strategic merge patch, as client-go's sink sends).
	patch := []byte(`{"series":{"count":2,"lastObservedTime":"` + metav1.NowMicro().UTC().Format(metav1.RFC3339Micro) + `"}}`)
	if _, err := sa.EventsV1().Events(ns).Patch(ctx, created.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Errorf("patch an Event into a series: %v, want allowed", err)
	}
	if _, err := sa.EventsV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "reportingController=bearkong.dev/deploy-test"}); err != nil {
		t.Errorf("list Events by reportingController: %v, want allowed", err)
	}
	if _, err := sa.EventsV1().Events(ns).Update(ctx, created, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("update an Event: %v, want Forbidden", err)
	}
	if err := sa.EventsV1().Events(ns).Delete(ctx, created.Name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete an Event: %v, want Forbidden", err)
	}
	core := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: svcName + ".core-event-test", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Service", Namespace: ns, Name: svcName},
		Reason:         "Test", Message: "core/v1 Event", Type: corev1.EventTypeNormal,
	}
	if _, err := sa.CoreV1().Events(ns).Create(ctx, core, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("create a core/v1 Event: %v, want Forbidden", err)
	}
}

// rootConfigMapAccess checks the ConfigMap rules, which pkg/discovery's RootPublisher
// uses to publish the CA's root: get and update on ConfigMap bearkong-ca-root only,
// create on any name (RBAC cannot restrict create by name: the name is not known when
// the request is authorized), and no other ConfigMap readable or writable.
func rootConfigMapAccess(ctx context.Context, t *testing.T, sa, adminClient kubernetes.Interface, ns string) {
	type named struct {
		verb, name, namespace string
		allowed               bool
	}
	for _, c := range []named{
		{"get", bkdiscovery.RootConfigMapName, ns, true},
		{"update", bkdiscovery.RootConfigMapName, ns, true},
		{"get", bkdiscovery.RootConfigMapName, "bearkong-system", true},
		{"update", bkdiscovery.RootConfigMapName, "bearkong-system", true},
		{"create", "", ns, true},
		{"create", "", "kube-system", true},
		{"patch", bkdiscovery.RootConfigMapName, ns, false},
		{"delete", bkdiscovery.RootConfigMapName, ns, false},
		{"get", "app-config", ns, false},
		{"update", "app-config", ns, false},
		{"get", "kube-root-ca.crt", ns, false},
		{"update", "kube-root-ca.crt", ns, false},
		{"get", "", ns, false}, // a rule with resourceNames matches only requests that name one
		{"list", "", ns, false},
		{"watch", "", "", false},
		{"delete", "app-config", ns, false},
		{"deletecollection", "", ns, false},
	} {
		r, err := sa.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: c.verb, Resource: "configmaps", Name: c.name, Namespace: c.namespace,
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Status.Allowed != c.allowed {
			t.Errorf("%s configmaps %q in %q: allowed=%t, want %t", c.verb, c.name, c.namespace, r.Status.Allowed, c.allowed)
		}
	}

	// The same with real requests.
	appConfig, err := adminClient.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "app-config", Namespace: ns}, Data: map[string]string{"k": "v"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sa.CoreV1().ConfigMaps(ns).Get(ctx, "app-config", metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("get ConfigMap app-config: %v, want Forbidden", err)
	}
	appConfig.Data["k"] = "changed"
	if _, err := sa.CoreV1().ConfigMaps(ns).Update(ctx, appConfig, metav1.UpdateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("update ConfigMap app-config: %v, want Forbidden", err)
	}
	// The publisher's three requests, in a namespace of their own (the control plane may
	// publish into ns meanwhile).
	own := "ca-root-rbac-test"
	if _, err := adminClient.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: own}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	root := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: bkdiscovery.RootConfigMapName, Namespace: own},
		Data:       map[string]string{bkdiscovery.RootConfigMapKey: "root one"},
	}
	if _, err := sa.CoreV1().ConfigMaps(own).Create(ctx, root, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ConfigMap %s: %v", root.Name, err)
	}
	got, err := sa.CoreV1().ConfigMaps(own).Get(ctx, root.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ConfigMap %s: %v", root.Name, err)
	}
	got.Data[bkdiscovery.RootConfigMapKey] = "root two"
	if _, err := sa.CoreV1().ConfigMaps(own).Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ConfigMap %s: %v", root.Name, err)
	}
	if err := sa.CoreV1().ConfigMaps(own).Delete(ctx, root.Name, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("delete ConfigMap %s: %v, want Forbidden", root.Name, err)
	}
}

// serviceAccountKubeconfig mints a token for the ServiceAccount with the TokenRequest API
// and writes a kubeconfig holding only that token and the cluster's CA.
func serviceAccountKubeconfig(ctx context.Context, t *testing.T, env *kubeenv.Env, ns, name string) string {
	t.Helper()
	expiry := int64(time.Hour / time.Second)
	tr, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", ns, name, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubeenv"] = &clientcmdapi.Cluster{Server: env.Host, CertificateAuthorityData: env.CAData()}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: "kubeenv", AuthInfo: name, Namespace: ns}
	cfg.CurrentContext = name
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), env.AdminToken()) {
		t.Fatal("the ServiceAccount kubeconfig holds the admin token")
	}
	return path
}
