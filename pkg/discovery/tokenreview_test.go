package discovery

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bearkong/bearkong/internal/kubeenv"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// reviewCountingTransport counts the TokenReviews sent.
type reviewCountingTransport struct {
	next    http.RoundTripper
	reviews *atomic.Int32
}

func (c reviewCountingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/tokenreviews") {
		c.reviews.Add(1)
	}
	return c.next.RoundTrip(r)
}

// TestTokenReviewer reviews real tokens with the real API server: a token bound to a
// pod, for bearkong's audience, proves the pod; tokens for another audience, for the API
// server's own, or bound to no pod do not; a deleted pod's token stops proving it once
// the cache has expired. The cache spares the API server a review per reconnect.
func TestTokenReviewer(t *testing.T) {
	if testing.Short() {
		t.Skip("needs kube-apiserver and etcd: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, err := kubeenv.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(t.TempDir(), "kube"), BinDir: bin, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop kube: %v", err)
		}
	})
	kc := env.Client
	sa, err := kc.CoreV1().ServiceAccounts("default").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app-1"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := kc.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "app-1-a"},
		Spec: corev1.PodSpec{ServiceAccountName: sa.Name, AutomountServiceAccountToken: new(bool),
			Containers: []corev1.Container{{Name: "app", Image: "app:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := func(audiences []string, bound bool) string {
		t.Helper()
		req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences}}
		if bound {
			req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
		}
		tr, err := kc.CoreV1().ServiceAccounts("default").CreateToken(ctx, sa.Name, req, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}

	var reviews atomic.Int32
	cfg := rest.CopyConfig(env.RESTConfig)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		return reviewCountingTransport{next: rt, reviews: &reviews}
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Now()}
	r := &TokenReviewer{Client: client, Audience: "bearkong", Now: clock.Now}

	good := token([]string{"bearkong"}, true)
	want := PodIdentity{Namespace: "default", ServiceAccount: "app-1", PodName: "app-1-a", PodUID: string(pod.UID)}
	for i := 0; i < 3; i++ {
		id, err := r.Review(ctx, good)
		if err != nil {
			t.Fatalf("review of a good token: %v", err)
		}
		if id != want {
			t.Fatalf("identity %+v, want %+v", id, want)
		}
	}
	if n := reviews.Load(); n != 1 {
		t.Errorf("%d TokenReviews for three reviews of one token, want 1 (cached)", n)
	}

	for _, tc := range []struct {
		name, token, want string
	}{
		{"another audience", token([]string{"someone-else"}, true), "token refused"},
		{"the API server's audience", token(nil, true), "token refused"},
		{"bound to no pod", token([]string{"bearkong"}, false), "is not bound to a pod"},
		{"not a token", "abc.def.ghi", "token refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := reviews.Load()
			for i := 0; i < 2; i++ {
				id, err := r.Review(ctx, tc.token)
				if !errors.Is(err, ErrTokenRefused) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("review = %+v, %v; want a refusal containing %q", id, err, tc.want)
				}
				if strings.Contains(err.Error(), tc.token) {
					t.Errorf("the error holds the token: %v", err)
				}
			}
			if n := reviews.Load() - before; n != 1 {
				t.Errorf("%d TokenReviews for two reviews of one refused token, want 1 (negative cache)", n)
			}
		})
	}

	// The pod goes away: within the positive TTL the cached identity stands; after it,
	// the API server refuses the token (bound objects must exist).
	if err := kc.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Review(ctx, good); err != nil {
		t.Fatalf("within the cache TTL: %v", err)
	}
	clock.Add(DefaultTokenCacheTTL + time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := r.Review(ctx, good)
		if errors.Is(err, ErrTokenRefused) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token of a deleted pod is still accepted: %v", err)
		}
		// The API server may still see the pod in its cache for a moment; the negative
		// cache is not in the way, as nothing was refused yet.
		time.Sleep(200 * time.Millisecond)
		clock.Add(DefaultTokenCacheTTL + time.Second)
	}
}

// TestTokenExpiryBoundsTheCache checks the cache without an API server: a bounded number
// of entries, and never past the token's expiry.
func TestTokenExpiryBoundsTheCache(t *testing.T) {
	exp, ok := tokenExpiry("eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE3MDAwMDAwMDB9.sig")
	if !ok || exp.Unix() != 1700000000 {
		t.Errorf("tokenExpiry = %v, %v; want 1700000000", exp, ok)
	}
	if _, ok := tokenExpiry("not-a-jwt"); ok {
		t.Error("tokenExpiry of a non-JWT is ok")
	}
	r := &TokenReviewer{MaxEntries: 3}
	now := time.Now()
	for i := 0; i < 10; i++ {
		r.store([32]byte{byte(i)}, reviewResult{expires: now.Add(time.Minute)}, now)
	}
	if n := r.cached(); n != 3 {
		t.Errorf("cache holds %d entries, want at most 3", n)
	}
}
