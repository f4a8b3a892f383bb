package discovery

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/bearkong/bearkong/pkg/ca"
)

// Keys of the CA Secret: a kubernetes.io/tls Secret's own two
// (https://kubernetes.io/docs/concepts/configuration/secret/#tls-secrets) and ca.crt for
// the trust bundle, the layout cert-manager writes too, so a user can bring a CA that
// cert-manager issued.
const (
	CASecretCert   = corev1.TLSCertKey       // tls.crt: the signing certificate (and its intermediates)
	CASecretKey    = corev1.TLSPrivateKeyKey // tls.key: its private key
	CASecretBundle = "ca.crt"                // ca.crt: the roots proxies trust
)

// CASecretStore keeps bearkong's CA material (ca.Material) in one Secret, shared by every
// replica: Load reads it, Create creates it and, when another replica created it first,
// returns that one instead, so replicas starting together converge on one root.
//
// It needs get on the Secret by name and create on Secrets in its namespace (see
// manifests/bearkong/rbac.yaml); nothing else, in particular no list or watch of Secrets.
type CASecretStore struct {
	Client          kubernetes.Interface
	Namespace, Name string
}

var _ ca.Store = CASecretStore{}

// Load returns the material in the Secret; false when the Secret does not exist. A Secret
// without one of the three keys is an error naming it.
func (s CASecretStore) Load(ctx context.Context) (ca.Material, bool, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return ca.Material{}, false, nil
	}
	if err != nil {
		return ca.Material{}, false, fmt.Errorf("CA secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	m, err := s.material(sec)
	return m, err == nil, err
}

// Create stores m in a new kubernetes.io/tls Secret labelled as managed by bearkong. When
// the Secret exists already (another replica won the race, or the user created it), it
// returns the stored material, not m.
func (s CASecretStore) Create(ctx context.Context, m ca.Material) (ca.Material, error) {
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      s.Name,
			Namespace: s.Namespace,
			Labels: map[string]string{
				"app.kubernetes.io/managed-by": "bearkong",
				"app.kubernetes.io/part-of":    "bearkong",
			},
		},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{CASecretCert: m.CertPEM, CASecretKey: m.KeyPEM, CASecretBundle: m.BundlePEM},
	}
	created, err := s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, sec, metav1.CreateOptions{FieldManager: "bearkong"})
	if apierrors.IsAlreadyExists(err) {
		stored, ok, err := s.Load(ctx)
		if err != nil {
			return ca.Material{}, err
		}
		if !ok { // deleted between our create and our get: let the caller retry
			return ca.Material{}, fmt.Errorf("CA secret %s/%s: exists, then not found", s.Namespace, s.Name)
		}
		return stored, nil
	}
	if err != nil {
		return ca.Material{}, fmt.Errorf("CA secret %s/%s: create: %w", s.Namespace, s.Name, err)
	}
	return s.material(created)
}

func (s CASecretStore) material(sec *corev1.Secret) (ca.Material, error) {
	for _, k := range []string{CASecretCert, CASecretKey, CASecretBundle} {
		if len(sec.Data[k]) == 0 {
			return ca.Material{}, fmt.Errorf("CA secret %s/%s: no key %s (want %s, %s and %s; for a root, %s is the same certificate as %s)",
				s.Namespace, s.Name, k, CASecretCert, CASecretKey, CASecretBundle, CASecretBundle, CASecretCert)
		}
	}
	return ca.Material{CertPEM: sec.Data[CASecretCert], KeyPEM: sec.Data[CASecretKey], BundlePEM: sec.Data[CASecretBundle]}, nil
}
