package discovery

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/ca"
)

// barrierStore holds each of n replicas after its Load until all n have loaded, so that
// they all find no Secret and all try to create one.
type barrierStore struct {
	ca.Store
	arrived sync.WaitGroup
	creates atomic.Int32
}

func (b *barrierStore) Create(ctx context.Context, m ca.Material) (ca.Material, error) {
	b.creates.Add(1)
	return b.Store.Create(ctx, m)
}

func (b *barrierStore) Load(ctx context.Context) (ca.Material, bool, error) {
	m, ok, err := b.Store.Load(ctx)
	b.arrived.Done()
	done := make(chan struct{})
	go func() { b.arrived.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
	}
	return m, ok, err
}

// TestCASecretStore runs the CA's store against a real kube-apiserver: two replicas
// starting together on no Secret end with one root, a restart reuses it, a user's Secret
// is used as it is, and a Secret without one of the keys is an error naming it.
func TestCASecretStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	const ns = metav1.NamespaceDefault
	secrets := env.Client.CoreV1().Secrets(ns)

	t.Run("two replicas converge on one root", func(t *testing.T) {
		s := CASecretStore{Client: env.Client, Namespace: ns, Name: "bearkong-ca"}
		if _, ok, err := s.Load(ctx); ok || err != nil {
			t.Fatalf("Load before anything: ok=%t err=%v", ok, err)
		}
		b := &barrierStore{Store: s}
		b.arrived.Add(2)
		var (
			wg   sync.WaitGroup
			as   [2]*ca.Authority
			errs [2]error
		)
		for i := range as {
			wg.Go(func() { as[i], errs[i] = ca.LoadOrCreate(ctx, b, ca.Options{}) })
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if n := b.creates.Load(); n != 2 {
			t.Errorf("%d creates, want 2 (both replicas must find no Secret)", n)
		}
		if !bytes.Equal(as[0].Bundle(), as[1].Bundle()) {
			t.Fatal("the replicas trust different roots")
		}
		sec, err := secrets.Get(ctx, "bearkong-ca", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Type != corev1.SecretTypeTLS || sec.Labels["app.kubernetes.io/managed-by"] != "bearkong" {
			t.Errorf("Secret type %q labels %v", sec.Type, sec.Labels)
		}
		if !bytes.Equal(sec.Data["ca.crt"], as[0].Bundle()) || !bytes.Equal(sec.Data["tls.crt"], sec.Data["ca.crt"]) || !strings.Contains(string(sec.Data["tls.key"]), "PRIVATE KEY") {
			t.Errorf("Secret keys: the bundle is not the replicas' root, or tls.crt is not ca.crt, or no key")
		}
		l0, err := as[0].Issue(ca.Workload{Namespace: "apps", ServiceAccount: "app-1", PodName: "p", PodUID: "u"})
		if err != nil {
			t.Fatal(err)
		}
		l1, _ := as[1].Issue(ca.Workload{Namespace: "apps", ServiceAccount: "app-1", PodName: "p", PodUID: "u"})
		if !bytes.Equal(l0.ChainPEM, l1.ChainPEM) || !bytes.Equal(l0.KeyPEM, l1.KeyPEM) {
			t.Error("the replicas issue different leaves")
		}

		// A restart loads the same Secret and writes nothing.
		a, err := ca.LoadOrCreate(ctx, s, ca.Options{})
		if err != nil {
			t.Fatal(err)
		}
		after, err := secrets.Get(ctx, "bearkong-ca", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Bundle(), as[0].Bundle()) || after.ResourceVersion != sec.ResourceVersion {
			t.Errorf("restart: same root %t, resourceVersion %s -> %s", bytes.Equal(a.Bundle(), as[0].Bundle()), sec.ResourceVersion, after.ResourceVersion)
		}
	})

	t.Run("a user's Secret is used as it is", func(t *testing.T) {
		own, err := ca.GenerateRoot("cluster.local", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "own-ca"},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": own.CertPEM, "tls.key": own.KeyPEM, "ca.crt": own.BundlePEM},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := CASecretStore{Client: env.Client, Namespace: ns, Name: "own-ca"}
		// Create on an existing Secret returns what is stored, not what it was given.
		other, err := ca.GenerateRoot("cluster.local", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Create(ctx, other)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.CertPEM, own.CertPEM) || !bytes.Equal(got.KeyPEM, own.KeyPEM) {
			t.Error("Create on an existing Secret did not return the stored material")
		}
		a, err := ca.LoadOrCreate(ctx, s, ca.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a.Bundle(), own.BundlePEM) {
			t.Error("LoadOrCreate did not use the user's root")
		}
	})

	t.Run("missing keys", func(t *testing.T) {
		root, err := ca.GenerateRoot("cluster.local", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name    string
			typ     corev1.SecretType
			data    map[string][]byte
			missing string
		}{
			{"no-bundle", corev1.SecretTypeTLS, map[string][]byte{"tls.crt": root.CertPEM, "tls.key": root.KeyPEM}, "ca.crt"},
			{"no-key", corev1.SecretTypeOpaque, map[string][]byte{"tls.crt": root.CertPEM, "ca.crt": root.BundlePEM}, "tls.key"},
			{"no-cert", corev1.SecretTypeOpaque, map[string][]byte{"tls.key": root.KeyPEM, "ca.crt": root.BundlePEM}, "tls.crt"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := secrets.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: tc.name}, Type: tc.typ, Data: tc.data}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				s := CASecretStore{Client: env.Client, Namespace: ns, Name: tc.name}
				want := "CA secret default/" + tc.name + ": no key " + tc.missing
				if _, _, err := s.Load(ctx); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Load: %v, want %q", err, want)
				}
				if _, err := ca.LoadOrCreate(ctx, s, ca.Options{}); err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("LoadOrCreate: %v, want %q", err, want)
				}
			})
		}
	})
}
