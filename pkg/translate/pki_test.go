package translate

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

// A test PKI made with crypto/x509: a root and SPIFFE leaves, as pkg/ca issues them in
// the product (this package cannot import pkg/ca, and need not: Envoy only sees PEM).

// testCA is a self-signed root.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	ca, err := makeTestCA(name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func makeTestCA(name string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"bearkong test"}, CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// issue returns the PEM chain (the leaf alone, the root being the trust bundle) and PEM
// key of a workload certificate whose only SAN is the URI spiffeID, usable as client and
// server, as an X.509-SVID is:
// https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md
func (ca *testCA) issue(t testing.TB, spiffeID string) (chainPEM, keyPEM []byte) {
	t.Helper()
	chain, key, err := ca.makeLeaf(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	return chain, key
}

func (ca *testCA) makeLeaf(spiffeID string) (chainPEM, keyPEM []byte, err error) {
	u, err := url.Parse(spiffeID)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		URIs:                  []*url.URL{u},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// testIdentity is the workload identity of the certificate inlined gives a proxy: a
// workload of the default trust domain, which every cluster of a Service without known
// ServiceAccounts, and every inbound listener, accepts.
const testIdentity = "spiffe://cluster.local/ns/default/sa/test"

// testPKI is a root and one workload certificate from it.
type testPKI struct {
	ca            *testCA
	workload, key []byte
}

// defaultTestPKI is the PKI of inlined's proxies, made once per test binary.
var defaultTestPKIOnce = sync.OnceValues(func() (*testPKI, error) {
	ca, err := makeTestCA("bearkong test root")
	if err != nil {
		return nil, err
	}
	chain, key, err := ca.makeLeaf(testIdentity)
	if err != nil {
		return nil, err
	}
	return &testPKI{ca: ca, workload: chain, key: key}, nil
})

func defaultTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p, err := defaultTestPKIOnce()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// withTestSecrets gives b the two secrets as static resources (replacing any it has),
// and makes every TLS context of b's clusters and listeners refer to them statically.
//
// The trick: the translated config names its secrets with an sds_config (SDS over the
// ADS stream); an SdsSecretConfig with a name and no sds_config refers to the static
// secret of that name in the bootstrap's static_resources.secrets instead:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/secret.proto#envoy-v3-api-msg-extensions-transport-sockets-tls-v3-sdssecretconfig
// Dropping sds_config is the only change, so the TLS settings, ALPN and SAN checks that
// Envoy runs are those bearkong serves, with the certificates a control plane would push.
func withTestSecrets(t testing.TB, b *bootstrapv3.Bootstrap, chainPEM, keyPEM, rootsPEM []byte) {
	t.Helper()
	sr := b.GetStaticResources()
	sr.Secrets = []*tlsv3.Secret{WorkloadSecret(chainPEM, keyPEM), TrustBundleSecret(rootsPEM)}
	for _, c := range sr.GetClusters() {
		c.TransportSocket = staticSecretRefs(t, c.GetTransportSocket())
	}
	for _, l := range sr.GetListeners() {
		for _, fc := range l.GetFilterChains() {
			fc.TransportSocket = staticSecretRefs(t, fc.GetTransportSocket())
		}
	}
}

// staticSecretRefs returns ts with the sds_config of its secret references dropped.
func staticSecretRefs(t testing.TB, ts *corev3.TransportSocket) *corev3.TransportSocket {
	t.Helper()
	if ts == nil {
		return nil
	}
	ts = proto.Clone(ts).(*corev3.TransportSocket)
	m := unpack(t, ts.GetTypedConfig())
	var common *tlsv3.CommonTlsContext
	switch ctx := m.(type) {
	case *tlsv3.UpstreamTlsContext:
		common = ctx.GetCommonTlsContext()
	case *tlsv3.DownstreamTlsContext:
		common = ctx.GetCommonTlsContext()
	default:
		t.Fatalf("transport socket %q: unexpected %T", ts.GetName(), m)
	}
	for _, s := range common.GetTlsCertificateSdsSecretConfigs() {
		s.SdsConfig = nil
	}
	if s := common.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); s != nil {
		s.SdsConfig = nil
	}
	ts.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(m)}
	return ts
}
