package kubeenv

import (
	"context"
	"net"
	"net/url"
	"slices"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestEnv starts a real etcd and kube-apiserver and checks what the harness relies on.
// It needs the binaries from scripts/install-kube.sh: a missing binary fails the test.
func TestEnv(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	env, err := Start(ctx, Options{Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	t.Logf("environment ready in %s", time.Since(start).Round(time.Millisecond))
	ns := metav1.NamespaceDefault

	t.Run("kubeconfig works", func(t *testing.T) {
		cfg, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		c := kubernetes.NewForConfigOrDie(cfg)
		v, err := c.Discovery().ServerVersion()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("server version %s", v.GitVersion)
	})

	// The resources bearkong watches beyond the core ones: Gateway API HTTPRoutes and
	// its own AuthorizationPolicies (manifests/crds), with their status subresources.
	t.Run("the CRDs are served", func(t *testing.T) {
		for gv, want := range map[string][]string{
			"gateway.networking.k8s.io/v1": {"httproutes", "httproutes/status"},
			"bearkong.dev/v1alpha1":        {"authorizationpolicies", "authorizationpolicies/status"},
		} {
			list, err := env.Client.Discovery().ServerResourcesForGroupVersion(gv)
			if err != nil {
				t.Fatalf("%s: %v", gv, err)
			}
			served := map[string]bool{}
			for _, r := range list.APIResources {
				served[r.Name] = true
				if r.Name == "authorizationpolicies" && (!r.Namespaced || !slices.Equal(r.ShortNames, []string{"bap"})) {
					t.Errorf("authorizationpolicies: namespaced %v, short names %v; want namespaced, [bap]", r.Namespaced, r.ShortNames)
				}
			}
			for _, w := range want {
				if !served[w] {
					t.Errorf("%s: %s not served", gv, w)
				}
			}
		}
	})

	t.Run("default service account exists", func(t *testing.T) {
		if _, err := env.Client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("pod with a loopback IP", func(t *testing.T) {
		no := false
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns, Labels: map[string]string{"app": "a"}},
			Spec: corev1.PodSpec{
				NodeName:                     "n",
				AutomountServiceAccountToken: &no,
				Containers:                   []corev1.Container{{Name: "c", Image: "x"}},
			},
		}
		pod, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status.Phase = corev1.PodRunning
		pod.Status.PodIP = "127.0.1.9"
		pod.Status.PodIPs = []corev1.PodIP{{IP: "127.0.1.9"}}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		if _, err := env.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	// The API rejects loopback endpoint addresses; StoreEndpointSlice goes around it.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "a-local", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: "a"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"127.0.1.9"}}},
	}
	t.Run("API rejects loopback endpoints", func(t *testing.T) {
		_, err := env.Client.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{})
		if !apierrors.IsInvalid(err) {
			t.Fatalf("create EndpointSlice with a loopback address: got %v, want Invalid", err)
		}
	})

	t.Run("stored EndpointSlice is served and watched", func(t *testing.T) {
		w, err := env.Client.DiscoveryV1().EndpointSlices(ns).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		if err := env.StoreEndpointSlice(ctx, slice); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-w.ResultChan():
			got, ok := ev.Object.(*discoveryv1.EndpointSlice)
			if !ok || got.Name != "a-local" || got.Endpoints[0].Addresses[0] != "127.0.1.9" {
				t.Fatalf("watch event %s %#v", ev.Type, ev.Object)
			}
			t.Logf("watch: %s %s rv=%s", ev.Type, got.Name, got.ResourceVersion)
		case <-time.After(10 * time.Second):
			t.Fatal("no watch event for the stored EndpointSlice")
		}
		got, err := env.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "a-local", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got.UID != slice.UID || got.AddressType != discoveryv1.AddressTypeIPv4 {
			t.Errorf("got %+v", got)
		}
		if err := env.DeleteStoredEndpointSlice(ctx, ns, "a-local"); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, "a-local", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("after delete: got %v, want NotFound", err)
		}
	})

	t.Run("RBAC is on", func(t *testing.T) {
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "nobody", Namespace: ns}}
		if _, err := env.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tok, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "nobody", &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cfg := rest.AnonymousClientConfig(env.RESTConfig)
		cfg.BearerToken = tok.Status.Token
		c := kubernetes.NewForConfigOrDie(cfg)
		_, err = c.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("list pods as an unprivileged service account: got %v, want Forbidden", err)
		}
	})

	t.Run("API server restart keeps data and port", func(t *testing.T) {
		if err := env.StopAPIServer(); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.CoreV1().Pods(ns).Get(ctx, "p", metav1.GetOptions{}); err == nil {
			t.Fatal("API server still answers after StopAPIServer")
		}
		restart := time.Now()
		if err := env.StartAPIServer(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("API server ready again in %s", time.Since(restart).Round(time.Millisecond))
		p, err := env.Client.CoreV1().Pods(ns).Get(ctx, "p", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Status.PodIP != "127.0.1.9" {
			t.Errorf("pod IP after restart = %q", p.Status.PodIP)
		}
	})

	t.Run("Stop frees the ports", func(t *testing.T) {
		if err := env.Stop(); err != nil {
			t.Fatal(err)
		}
		for _, u := range []string{env.Host, env.EtcdURL} {
			parsed, err := url.Parse(u)
			if err != nil {
				t.Fatal(err)
			}
			addr := parsed.Host
			if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
				c.Close()
				t.Errorf("%s still accepts connections after Stop", addr)
			}
		}
		if err := env.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})
}

// TestContextCancelStopsEverything checks that cancelling Start's context stops the
// processes, as a crashed test's cleanup would rely on.
func TestContextCancelStopsEverything(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	ctx, cancel := context.WithCancel(t.Context())
	env, err := Start(ctx, Options{Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cancel()
	for _, p := range []interface{ Done() <-chan struct{} }{env.etcd, env.apiserver} {
		select {
		case <-p.Done():
		case <-time.After(30 * time.Second):
			t.Fatal("a process outlived its context by 30s")
		}
	}
	if err := env.Stop(); err != nil {
		t.Errorf("Stop after cancel: %v", err)
	}
}
