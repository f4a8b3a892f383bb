package localmesh

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Defaults of the secure xDS channel, as `bearkong cp` has them.
const (
	// DefaultCASecret is where `bearkong cp` keeps its CA (--ca-secret).
	DefaultCASecret = "bearkong-system/bearkong-ca"
	// TokenAudience is the audience of the sidecars' tokens (--xds-token-audience).
	TokenAudience = "bearkong"
	// tokenLifetime is how long a pod's token lives. A kubelet asks for an hour and
	// refreshes it at 80%; the harness gives a day, as it never refreshes, and a local
	// mesh or a test lives far less.
	tokenLifetime = 24 * 60 * 60
)

// caSecret splits DefaultCASecret.
func caSecret() (namespace, name string) {
	ns, n, _ := strings.Cut(DefaultCASecret, "/")
	return ns, n
}

// ensureControlPlaneNamespace creates the namespace of the CA Secret, which a cluster gets
// from manifests/bearkong.
func (m *Mesh) ensureControlPlaneNamespace(ctx context.Context) error {
	ns, _ := caSecret()
	_, err := m.env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("localmesh: create namespace %s: %w", ns, err)
	}
	return nil
}

// CARootPath is the trust bundle of the mesh's CA, read from the CA Secret once the
// control plane is ready; every bootstrap inlines it to verify the xDS server.
func (m *Mesh) CARootPath() string { return filepath.Join(m.opts.Dir, "ca.crt") }

// CARoot returns the trust bundle (PEM) that the control plane's CA Secret holds now.
func (m *Mesh) CARoot(ctx context.Context) ([]byte, error) {
	ns, name := caSecret()
	s, err := m.env.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("localmesh: read the CA Secret: %w", err)
	}
	b := s.Data["ca.crt"]
	if len(b) == 0 {
		return nil, fmt.Errorf("localmesh: CA Secret %s has no ca.crt", DefaultCASecret)
	}
	return b, nil
}

// writeCARoot saves the CA's trust bundle for the bootstraps. Replicas starting together
// each write it: through a file of its own and a rename, so that no bootstrap reads a
// half-written one.
func (m *Mesh) writeCARoot(ctx context.Context) error {
	b, err := m.CARoot(ctx)
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(m.CARootPath()), "ca.crt.*")
	if err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	_, err = f.Write(b)
	err = errors.Join(err, f.Close(), os.Chmod(f.Name(), 0o644))
	if err == nil {
		err = os.Rename(f.Name(), m.CARootPath())
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("localmesh: %w", err)
	}
	return nil
}

// ensureServiceAccount creates a ServiceAccount in the mesh's namespace: the pods of a
// Service run as one named after it, so each app has its own identity.
func (m *Mesh) ensureServiceAccount(ctx context.Context, name string) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: m.opts.Namespace}}
	_, err := m.env.Client.CoreV1().ServiceAccounts(m.opts.Namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("localmesh: create service account %s: %w", name, err)
	}
	return nil
}

// TokenPath is where a pod's projected ServiceAccount token lives, as the kubelet would
// mount it; the pod's Envoy reads it from there on each connection to the control plane.
func (m *Mesh) TokenPath(pod string) string { return filepath.Join(m.podDir(pod), "token") }

// RequestToken asks the API server for a token of the pod's ServiceAccount, bound to the
// pod (the kubelet's projected token), with the given audience.
func (m *Mesh) RequestToken(ctx context.Context, pod, audience string) (string, error) {
	m.mu.Lock()
	p, ok := m.pods[pod]
	var sa, uid string
	if ok {
		sa, uid = p.ServiceAccount, string(p.uid)
	}
	m.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("localmesh: unknown pod %s", pod)
	}
	if uid == "" {
		return "", errors.New("localmesh: pod " + pod + " has no object yet")
	}
	exp := int64(tokenLifetime)
	tr, err := m.env.Client.CoreV1().ServiceAccounts(m.opts.Namespace).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: p.uid},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("localmesh: token for pod %s: %w", pod, err)
	}
	return tr.Status.Token, nil
}

// writeToken writes the pod's token for its Envoy, readable by its owner only.
func (m *Mesh) writeToken(ctx context.Context, pod string) error {
	tok, err := m.RequestToken(ctx, pod, TokenAudience)
	if err != nil {
		return err
	}
	return os.WriteFile(m.TokenPath(pod), []byte(tok), 0o600)
}
