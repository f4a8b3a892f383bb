package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestNamespaceMTLSWithTheAPIServer runs discovery against a real kube-apiserver, with
// a token of the ServiceAccount that manifests/bearkong/rbac.yaml defines and grants, so
// that the RBAC the product ships is the one under test: annotating a Namespace changes
// the mode of its Services in the snapshot, an invalid value is reported as an Event on
// the Namespace (written with that token) and counts as absent (the default mode), and the
// ServiceAccounts come from the pods behind the endpoints. None of it makes a full build.
func TestNamespaceMTLSWithTheAPIServer(t *testing.T) {
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

	client := bearkongClient(ctx, t, env)
	const ns = "shop"
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}))
	must(admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}}, metav1.CreateOptions{}))
	svc := service(ns, "app-1", meshed)
	svc.ResourceVersion = ""
	must(admin.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}))
	no := false
	p := pod(ns, "app-1-0", "", map[string]string{"app": "app-1"})
	p.ResourceVersion = ""
	p.Spec = corev1.PodSpec{ServiceAccountName: "web", AutomountServiceAccountToken: &no, Containers: []corev1.Container{{Name: "app", Image: "app"}}}
	created, err := admin.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	slice := endpointSlice(ns, "app-1-x", "app-1", discoveryv1.AddressTypeIPv4, endpoint("10.1.2.3", "app-1-0"))
	slice.ResourceVersion = ""
	slice.Endpoints[0].TargetRef.Namespace, slice.Endpoints[0].TargetRef.UID = ns, created.UID
	must(admin.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}))

	reg := prometheus.NewRegistry()
	d := New(client, Options{QuietPeriod: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, Registerer: reg,
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

	// await waits for a snapshot in which ok holds.
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
	mode := func(m mesh.MTLSMode) func(*mesh.Snapshot) bool {
		return func(s *mesh.Snapshot) bool {
			svc := s.Service(ns, "app-1")
			return svc != nil && svc.MTLS == m && len(svc.Endpoints) == 1
		}
	}
	annotate := func(v *string) {
		t.Helper()
		patch := `{"metadata":{"annotations":{"mesh-mtls":null}}}`
		if v != nil {
			patch = fmt.Sprintf(`{"metadata":{"annotations":{"mesh-mtls":%q}}}`, *v)
		}
		must(admin.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}))
	}

	s := await("app-1 STRICT", mode(mesh.MTLSStrict))
	if got := s.Service(ns, "app-1").ServiceAccounts; !slices.Equal(got, []string{"web"}) {
		t.Errorf("ServiceAccounts = %v, want [web]", got)
	}
	if px := s.Proxy(ns, "app-1-0"); px == nil || px.ServiceAccount != "web" || px.MTLS != mesh.MTLSStrict {
		t.Errorf("proxy = %+v, want ServiceAccount web, STRICT", px)
	}

	permissive, invalid := "PERMISSIVE", "permissive"
	annotate(&permissive)
	await("app-1 PERMISSIVE from its Namespace", mode(mesh.MTLSPermissive))

	annotate(&invalid)
	s = await("the invalid annotation reported", func(s *mesh.Snapshot) bool {
		return slices.ContainsFunc(s.Diagnostics, func(d mesh.Diagnostic) bool {
			return d.Kind == KindNamespace && d.Name == ns && d.Reason == mesh.ReasonInvalidAnnotation
		})
	})
	if got := s.Service(ns, "app-1").MTLS; got != mesh.MTLSStrict {
		t.Errorf("after an invalid Namespace annotation: %s, want the default STRICT (invalid counts as absent)", got)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs, err := admin.EventsV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(evs.Items, func(e eventsv1.Event) bool {
			return e.ReportingController == reportingController && e.Regarding.Kind == KindNamespace && e.Regarding.Name == ns
		})
		if i >= 0 {
			e := evs.Items[i]
			if e.Reason != mesh.ReasonInvalidAnnotation || !strings.Contains(e.Note, `mesh-mtls="permissive"`) || e.Regarding.UID == "" {
				t.Errorf("Event %+v", e)
			}
			t.Logf("Event on Namespace %s: %s: %s", ns, e.Reason, e.Note)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no Event on Namespace %s among %d in default", ns, len(evs.Items))
		}
		time.Sleep(100 * time.Millisecond)
	}

	annotate(nil)
	await("app-1 back to the default STRICT", mode(mesh.MTLSStrict))
	// A Namespace's event rebuilds its Services, not the mesh: the only full build is
	// the first.
	if full := sumMetric(t, reg, "bearkong_discovery_builds_total", map[string]string{"kind": buildFull}); full != 1 {
		t.Errorf("%v full builds, want 1 (the first)", full)
	}
}

// bearkongClient applies manifests/bearkong's Namespace and RBAC with the admin client
// and returns a client that holds only a token of bearkong's ServiceAccount.
func bearkongClient(ctx context.Context, t *testing.T, env *kubeenv.Env) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(bearkongConfig(ctx, t, env))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// bearkongConfig is bearkongClient's, as a REST config: the API server's address and
// a token of bearkong's ServiceAccount, nothing more.
func bearkongConfig(ctx context.Context, t *testing.T, env *kubeenv.Env) *rest.Config {
	t.Helper()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	var objs []runtime.Object
	for _, f := range []string{"namespace.yaml", "rbac.yaml"} {
		list, err := kubeenv.ReadYAML(filepath.Join(root, "manifests", "bearkong", f))
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range list {
			var o runtime.Object
			switch u.GetKind() {
			case "Namespace":
				o = &corev1.Namespace{}
			case "ServiceAccount":
				o = &corev1.ServiceAccount{}
			case "ClusterRole":
				o = &rbacv1.ClusterRole{}
			case "ClusterRoleBinding":
				o = &rbacv1.ClusterRoleBinding{}
			case "Role":
				o = &rbacv1.Role{}
			case "RoleBinding":
				o = &rbacv1.RoleBinding{}
			default:
				t.Fatalf("%s: unexpected %s", f, u.GetKind())
			}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, o); err != nil {
				t.Fatal(err)
			}
			objs = append(objs, o)
		}
	}
	var saNS, saName string
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *corev1.Namespace:
			_, err = env.Client.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{})
		case *corev1.ServiceAccount:
			saNS, saName = o.Namespace, o.Name
			_, err = env.Client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = env.Client.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = env.Client.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = env.Client.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = env.Client.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	expiry := int64(time.Hour / time.Second)
	tr, err := env.Client.CoreV1().ServiceAccounts(saNS).CreateToken(ctx, saName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &rest.Config{Host: env.Host, BearerToken: tr.Status.Token, TLSClientConfig: rest.TLSClientConfig{CAData: env.CAData()}}
}

func describeMTLS(s *mesh.Snapshot) string {
	if s == nil {
		return "none"
	}
	var b strings.Builder
	for _, svc := range s.Services {
		fmt.Fprintf(&b, "%s %s eps=%v sas=%v; ", svc.Key(), svc.MTLS, svc.Endpoints, svc.ServiceAccounts)
	}
	for _, d := range s.Diagnostics {
		fmt.Fprintf(&b, "[%s %s/%s %s] ", d.Kind, d.Namespace, d.Name, d.Reason)
	}
	return b.String()
}
