package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// memStore is an in-memory Store that keeps the first Material created, as the Secret
// store does with AlreadyExists.
type memStore struct {
	mu      sync.Mutex
	m       *Material
	creates int
	// loaded, when set, is called by Load after it has read the store (before returning),
	// so a test can hold replicas between their load and their create.
	loaded func()
}

func (s *memStore) Load(context.Context) (Material, bool, error) {
	s.mu.Lock()
	m := s.m
	s.mu.Unlock()
	if s.loaded != nil {
		s.loaded()
	}
	if m == nil {
		return Material{}, false, nil
	}
	return *m, true, nil
}

func (s *memStore) Create(_ context.Context, m Material) (Material, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.creates++
	if s.m == nil {
		s.m = &m
	}
	return *s.m, nil
}

// The tests share one root generated as LoadOrCreate generates it.
var generated struct {
	once sync.Once
	m    Material
	err  error
}

func generatedRoot(t testing.TB) Material {
	t.Helper()
	generated.once.Do(func() { generated.m, generated.err = GenerateRoot("cluster.local", time.Now()) })
	if generated.err != nil {
		t.Fatal(generated.err)
	}
	return generated.m
}

// keyPEM encodes a private key as PKCS#8.
func keyPEM(t testing.TB, k crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func ecKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func ecKeyOn(t testing.TB, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func rsaKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// certSpec describes a certificate a test brings.
type certSpec struct {
	cn                  string
	ca                  bool
	notBefore, notAfter time.Time
}

// makeCert signs spec for key with parent/parentKey, or self-signs when parent is nil.
func makeCert(t testing.TB, spec certSpec, key crypto.Signer, parent *x509.Certificate, parentKey crypto.Signer) *x509.Certificate {
	t.Helper()
	if spec.notBefore.IsZero() {
		spec.notBefore = time.Now().Add(-time.Hour)
	}
	if spec.notAfter.IsZero() {
		spec.notAfter = time.Now().Add(365 * 24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: spec.cn},
		NotBefore:             spec.notBefore,
		NotAfter:              spec.notAfter,
		IsCA:                  spec.ca,
		BasicConstraintsValid: true,
	}
	if spec.ca {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// fixedClock returns a clock stopped at t.
func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

var (
	podA = Workload{Namespace: "apps", ServiceAccount: "app-1", PodName: "app-1-abc", PodUID: "uid-a"}
)

// byoMaterials are the kinds of material a user may bring, and whether the signing
// certificate is a root (chains of one) or an intermediate (chains of two).
func byoMaterials(t *testing.T) []struct {
	name   string
	m      Material
	isRoot bool
} {
	ecRootKey := ecKey(t)
	ecRoot := makeCert(t, certSpec{cn: "ec root", ca: true}, ecRootKey, nil, nil)
	rsaRootKey := rsaKey(t, 2048)
	rsaRoot := makeCert(t, certSpec{cn: "rsa root", ca: true}, rsaRootKey, nil, nil)
	interKey := rsaKey(t, 2048)
	inter := makeCert(t, certSpec{cn: "rsa intermediate", ca: true}, interKey, ecRoot, ecRootKey)
	ecInterKey := ecKey(t)
	ecInter := makeCert(t, certSpec{cn: "ec intermediate", ca: true}, ecInterKey, rsaRoot, rsaRootKey)
	p384RootKey := ecKeyOn(t, elliptic.P384())
	p384Root := makeCert(t, certSpec{cn: "p384 root", ca: true}, p384RootKey, nil, nil)
	return []struct {
		name   string
		m      Material
		isRoot bool
	}{
		{"generated root", generatedRoot(t), true},
		{"own ECDSA root", Material{certPEM(ecRoot), keyPEM(t, ecRootKey), certPEM(ecRoot)}, true},
		{"own RSA root", Material{certPEM(rsaRoot), keyPEM(t, rsaRootKey), certPEM(rsaRoot)}, true},
		{"RSA intermediate of an ECDSA root", Material{certPEM(inter), keyPEM(t, interKey), certPEM(ecRoot)}, false},
		{"ECDSA intermediate of an RSA root, bundle of two roots", Material{certPEM(ecInter), keyPEM(t, ecInterKey), append(certPEM(ecRoot), certPEM(rsaRoot)...)}, false},
		{"own ECDSA P-384 root", Material{certPEM(p384Root), keyPEM(t, p384RootKey), certPEM(p384Root)}, true},
	}
}

// parseChain returns the certificates of a PEM chain.
func parseChain(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	certs, err := parseCerts(b)
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

// verify verifies chain against bundle for usage.
func verify(chain []*x509.Certificate, bundle []byte, at time.Time, usage x509.ExtKeyUsage) error {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return errors.New("bundle: no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestIssue(t *testing.T) {
	now := time.Now()
	strangerKey := ecKey(t)
	stranger := certPEM(makeCert(t, certSpec{cn: "another CA", ca: true}, strangerKey, nil, nil))
	for _, tc := range byoMaterials(t) {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.m, Options{TrustDomain: "example.org", Now: fixedClock(now)})
			if err != nil {
				t.Fatal(err)
			}
			l, err := a.Issue(podA)
			if err != nil {
				t.Fatal(err)
			}
			chain := parseChain(t, l.ChainPEM)
			if want := map[bool]int{true: 1, false: 2}[tc.isRoot]; len(chain) != want {
				t.Fatalf("chain of %d certificates, want %d", len(chain), want)
			}
			leaf := chain[0]
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
				if err := verify(chain, a.Bundle(), now, u); err != nil {
					t.Errorf("verify for usage %d: %v", u, err)
				}
				if err := verify(chain, a.Bundle(), l.NotAfter.Add(time.Second), u); err == nil {
					t.Errorf("verify after NotAfter: no error")
				}
				if err := verify(chain, stranger, now, u); err == nil {
					t.Errorf("verify against another CA: no error")
				}
			}
			const id = "spiffe://example.org/ns/apps/sa/app-1"
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id || l.SPIFFEID != id {
				t.Errorf("URI SANs %v (SPIFFEID %q), want exactly %s", leaf.URIs, l.SPIFFEID, id)
			}
			if len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("other SANs: %v %v %v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA {
				t.Error("leaf is a CA")
			}
			if leaf.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment {
				t.Errorf("key usage %b", leaf.KeyUsage)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ext key usage %v", leaf.ExtKeyUsage)
			}
			if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
				t.Errorf("leaf key %T, want ECDSA P-256", leaf.PublicKey)
			}
			if leaf.SerialNumber.Sign() <= 0 || len(leaf.SerialNumber.Bytes()) > 20 || leaf.SerialNumber.Text(16) != l.Serial {
				t.Errorf("serial %x (Serial %q)", leaf.SerialNumber, l.Serial)
			}
			if !leaf.NotBefore.Equal(l.NotBefore) || !leaf.NotAfter.Equal(l.NotAfter) || l.NotAfter.Sub(l.NotBefore) != 24*time.Hour {
				t.Errorf("validity %s..%s (Leaf %s..%s), want 24h", leaf.NotBefore, leaf.NotAfter, l.NotBefore, l.NotAfter)
			}

			// The key is the certificate's: parse it and compare, then let crypto/tls
			// check the pair the way a TLS stack loads it.
			blk, _ := pem.Decode(l.KeyPEM)
			if blk == nil || blk.Type != "PRIVATE KEY" {
				t.Fatalf("key PEM block %v", blk)
			}
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				t.Fatal(err)
			}
			if ek, ok := k.(*ecdsa.PrivateKey); !ok || !ek.PublicKey.Equal(leaf.PublicKey) {
				t.Errorf("the key (%T) does not match the certificate", k)
			}
			if _, err := tls.X509KeyPair(l.ChainPEM, l.KeyPEM); err != nil {
				t.Errorf("tls.X509KeyPair: %v", err)
			}
		})
	}
}

func TestIssueRejectsIncompleteWorkload(t *testing.T) {
	a, err := New(generatedRoot(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []Workload{{ServiceAccount: "sa"}, {Namespace: "ns"}} {
		if _, err := a.Issue(w); err == nil {
			t.Errorf("Issue(%+v): no error", w)
		}
	}
}

// TestDeterminism checks that the leaf is a function of (material, workload, window):
// equal bytes from two Authorities on the same Material, as two replicas or a restart
// have, and different keys for a different workload or window.
func TestDeterminism(t *testing.T) {
	m := generatedRoot(t)
	// Inside the root's validity, which starts an hour before the test runs.
	now := time.Now().UTC().Truncate(time.Hour).Add(2 * time.Hour)
	clock := now
	opts := Options{Now: func() time.Time { return clock }}
	a1, err := New(m, opts)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := LoadOrCreate(t.Context(), &memStore{m: &m}, opts)
	if err != nil {
		t.Fatal(err)
	}
	l1, err := a1.Issue(podA)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := a2.Issue(podA)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(l1.ChainPEM, l2.ChainPEM) || !bytes.Equal(l1.KeyPEM, l2.KeyPEM) || l1.Serial != l2.Serial {
		t.Fatal("two Authorities on the same material issued different bytes in one window")
	}
	again, _ := a1.Issue(podA)
	if again != l1 {
		t.Error("the same Authority issued twice in one window (not memoized)")
	}

	differ := func(name string, a *Authority, w Workload) {
		t.Helper()
		l, err := a.Issue(w)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(l.KeyPEM, l1.KeyPEM) || bytes.Equal(l.ChainPEM, l1.ChainPEM) || l.Serial == l1.Serial {
			t.Errorf("%s: same key, certificate or serial as podA's", name)
		}
	}
	for name, w := range map[string]Workload{
		"other pod name":        {podA.Namespace, podA.ServiceAccount, "other", podA.PodUID},
		"other pod UID":         {podA.Namespace, podA.ServiceAccount, podA.PodName, "other"},
		"other service account": {podA.Namespace, "other", podA.PodName, podA.PodUID},
		"other namespace":       {"other", podA.ServiceAccount, podA.PodName, podA.PodUID},
		// Length-prefixed fields: moving a byte from one field to the next changes the key.
		"fields shifted": {podA.Namespace + podA.ServiceAccount[:1], podA.ServiceAccount[1:], podA.PodName, podA.PodUID},
	} {
		differ(name, a1, w)
	}
	clock = now.Add(12 * time.Hour) // the next window
	differ("next window", a1, podA)

	// Another CA: another key for the same workload and window.
	other, err := New(byoMaterials(t)[1].m, Options{Now: fixedClock(now)})
	if err != nil {
		t.Fatal(err)
	}
	lo, err := other.Issue(podA)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(lo.KeyPEM, l1.KeyPEM) {
		t.Error("two CAs derived the same workload key")
	}
}

// TestDeterminismEveryKeyType checks that two Authorities on the same material, as two
// replicas or a restart have, issue byte-identical workload and server certificates in a
// window whatever the CA key: RSA (PKCS#1 v1.5) and ECDSA P-256 and P-384 (RFC 6979
// deterministic signatures), as a root or as an intermediate.
func TestDeterminismEveryKeyType(t *testing.T) {
	now := time.Now()
	for _, tc := range byoMaterials(t) {
		t.Run(tc.name, func(t *testing.T) {
			var leaves [2]*Leaf
			var servers [2]*tls.Certificate
			for i := range leaves {
				a, err := New(tc.m, Options{Now: fixedClock(now)})
				if err != nil {
					t.Fatal(err)
				}
				if leaves[i], err = a.Issue(podA); err != nil {
					t.Fatal(err)
				}
				if servers[i], err = a.ServerCertificate([]string{"xds", "127.0.0.1"}); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(leaves[0].KeyPEM, leaves[1].KeyPEM) || leaves[0].Serial != leaves[1].Serial {
				t.Fatal("two Authorities derived different keys or serials")
			}
			if !bytes.Equal(leaves[0].ChainPEM, leaves[1].ChainPEM) {
				t.Error("two Authorities on the same material signed different workload certificates in one window")
			}
			if !slices.EqualFunc(servers[0].Certificate, servers[1].Certificate, bytes.Equal) {
				t.Error("two Authorities on the same material signed different server certificates in one window")
			}
		})
	}
}

// TestWindows checks the window arithmetic and the validity it gives, at the boundaries,
// with the clock injected.
func TestWindows(t *testing.T) {
	for _, tc := range []struct {
		lifetime, window, backdate time.Duration
	}{
		{24 * time.Hour, 12 * time.Hour, 5 * time.Minute},
		{time.Minute, 30 * time.Second, 6 * time.Second},
		{2 * time.Second, time.Second, 200 * time.Millisecond},
	} {
		t.Run(tc.lifetime.String(), func(t *testing.T) {
			k := time.Now().UnixNano() / int64(tc.window) // within the root's validity
			start := time.Unix(0, k*int64(tc.window))
			clock := time.Now() // New validates the root at this time
			a, err := New(generatedRoot(t), Options{LeafLifetime: tc.lifetime, Now: func() time.Time { return clock }})
			if err != nil {
				t.Fatal(err)
			}
			if a.LeafLifetime() != tc.lifetime || a.TrustDomain() != DefaultTrustDomain {
				t.Errorf("LeafLifetime %s, TrustDomain %q", a.LeafLifetime(), a.TrustDomain())
			}
			for _, c := range []struct {
				at   time.Time
				want int64
			}{
				{start, k},
				{start.Add(-time.Nanosecond), k - 1},
				{start.Add(tc.window - time.Nanosecond), k},
				{start.Add(tc.window), k + 1},
			} {
				if got := a.Window(c.at); got != c.want {
					t.Errorf("Window(start%+v) = %d, want %d", c.at.Sub(start), got-k, c.want-k)
				}
			}
			if got := a.NextRotation(start.Add(tc.window / 3)); !got.Equal(start.Add(tc.window)) {
				t.Errorf("NextRotation = start%+v, want start+%s", got.Sub(start), tc.window)
			}

			clock = start.Add(tc.window - time.Nanosecond) // last instant of window k
			last, err := a.Issue(podA)
			if err != nil {
				t.Fatal(err)
			}
			if want := start.Add(-tc.backdate); !last.NotBefore.Equal(want) {
				t.Errorf("NotBefore = start%+v, want start-%s", last.NotBefore.Sub(start), tc.backdate)
			}
			if want := start.Add(-tc.backdate + tc.lifetime); !last.NotAfter.Equal(want) {
				t.Errorf("NotAfter = start%+v, want start%+v", last.NotAfter.Sub(start), want.Sub(start))
			}
			// At rotation the old certificate has about half its lifetime left.
			if left := last.NotAfter.Sub(a.NextRotation(clock)); left != tc.window-tc.backdate {
				t.Errorf("left at rotation: %s, want %s", left, tc.window-tc.backdate)
			}
			if _, err := a.ServerCertificate([]string{"xds"}); err != nil {
				t.Fatal(err)
			}

			clock = start.Add(tc.window) // first instant of window k+1
			next, err := a.Issue(podA)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(next.KeyPEM, last.KeyPEM) || !next.NotBefore.Equal(last.NotBefore.Add(tc.window)) {
				t.Errorf("window k+1: same key, or NotBefore %s, want %s", next.NotBefore, last.NotBefore.Add(tc.window))
			}
			// The previous window's entries are gone from the memo.
			a.mu.Lock()
			for key := range a.leaves {
				if key.window != k+1 {
					t.Errorf("memoized leaf of window k%+d after moving to k+1", key.window-k)
				}
			}
			if len(a.servers) != 0 {
				t.Errorf("%d server certificates memoized after the window moved", len(a.servers))
			}
			a.mu.Unlock()
		})
	}
}

func TestOptionsRejected(t *testing.T) {
	for _, o := range []Options{
		{LeafLifetime: time.Second},
		{LeafLifetime: 3 * time.Second},
		{LeafLifetime: 90 * time.Millisecond},
		{LeafLifetime: -time.Hour},
		{TrustDomain: "spiffe://cluster.local"},
		{TrustDomain: "a/b"},
	} {
		if _, err := New(generatedRoot(t), o); err == nil {
			t.Errorf("New(%+v): no error", o)
		}
	}
}

// TestGeneratedRoot checks the root LoadOrCreate generates.
func TestGeneratedRoot(t *testing.T) {
	s := &memStore{}
	now := time.Now()
	a, err := LoadOrCreate(t.Context(), s, Options{TrustDomain: "example.org", Now: fixedClock(now)})
	if err != nil {
		t.Fatal(err)
	}
	if s.m == nil || s.creates != 1 {
		t.Fatalf("store holds %v after %d creates", s.m, s.creates)
	}
	if !bytes.Equal(s.m.CertPEM, s.m.BundlePEM) || !bytes.Equal(a.Bundle(), s.m.BundlePEM) {
		t.Error("the bundle of a generated root is not the root")
	}
	root := parseChain(t, s.m.CertPEM)[0]
	pub, ok := root.PublicKey.(*ecdsa.PublicKey)
	switch {
	case !ok || pub.Curve != elliptic.P256():
		t.Errorf("root key %T, want ECDSA P-256", root.PublicKey)
	case !root.IsCA || !root.BasicConstraintsValid:
		t.Error("root is not CA:TRUE")
	case root.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign:
		t.Errorf("root key usage %b", root.KeyUsage)
	case len(root.URIs) != 1 || root.URIs[0].String() != "spiffe://example.org":
		t.Errorf("root URIs %v", root.URIs)
	case !slices.Equal(root.Subject.Organization, []string{"bearkong"}):
		t.Errorf("root subject %s", root.Subject)
	case root.NotAfter.Sub(root.NotBefore) != RootLifetime || root.NotBefore.After(now):
		t.Errorf("root validity %s..%s", root.NotBefore, root.NotAfter)
	case root.SignatureAlgorithm != x509.ECDSAWithSHA256:
		t.Errorf("root signature %s, want ECDSA-SHA256", root.SignatureAlgorithm)
	}
	if _, ok := a.p.signer.(*ecdsa.PrivateKey); !ok {
		t.Errorf("signing key %T, want ECDSA", a.p.signer)
	}

	// Its leaves are signed by it and verify against the bundle, for both usages.
	l, err := a.Issue(podA)
	if err != nil {
		t.Fatal(err)
	}
	chain := parseChain(t, l.ChainPEM)
	if len(chain) != 1 || chain[0].SignatureAlgorithm != x509.ECDSAWithSHA256 {
		t.Fatalf("leaf chain of %d, signature %s; want the leaf alone, ECDSA-SHA256", len(chain), chain[0].SignatureAlgorithm)
	}
	if err := chain[0].CheckSignatureFrom(root); err != nil {
		t.Errorf("leaf not signed by the root: %v", err)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verify(chain, a.Bundle(), now, usage); err != nil {
			t.Errorf("leaf does not verify for %v: %v", usage, err)
		}
	}

	// A restart loads the same root and creates nothing.
	b, err := LoadOrCreate(t.Context(), s, Options{TrustDomain: "example.org", Now: fixedClock(now)})
	if err != nil {
		t.Fatal(err)
	}
	if s.creates != 1 || !bytes.Equal(b.Bundle(), a.Bundle()) {
		t.Errorf("restart: %d creates, same bundle %t", s.creates, bytes.Equal(b.Bundle(), a.Bundle()))
	}
}

// TestConcurrentLoadOrCreate starts two replicas on an empty store; both load nothing and
// generate a root, one creates it first, and both end up signing with it.
func TestConcurrentLoadOrCreate(t *testing.T) {
	var arrived sync.WaitGroup
	arrived.Add(2)
	s := &memStore{}
	s.loaded = func() {
		arrived.Done()
		done := make(chan struct{})
		go func() { arrived.Wait(); close(done) }()
		select { // both replicas have loaded before either creates
		case <-done:
		case <-time.After(30 * time.Second):
		}
	}
	var (
		wg   sync.WaitGroup
		as   [2]*Authority
		errs [2]error
	)
	for i := range as {
		wg.Go(func() { as[i], errs[i] = LoadOrCreate(t.Context(), s, Options{}) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if s.creates != 2 {
		t.Errorf("%d creates, want 2 (the test must make both replicas generate)", s.creates)
	}
	if !bytes.Equal(as[0].Bundle(), as[1].Bundle()) || !bytes.Equal(as[0].Bundle(), s.m.BundlePEM) {
		t.Fatal("the replicas trust different roots")
	}
	l0, _ := as[0].Issue(podA)
	l1, _ := as[1].Issue(podA)
	if !bytes.Equal(l0.ChainPEM, l1.ChainPEM) || !bytes.Equal(l0.KeyPEM, l1.KeyPEM) {
		t.Error("the replicas issue different leaves")
	}
}

// TestValidation checks that material a user brings is refused with an error that says
// what is wrong.
func TestValidation(t *testing.T) {
	rootKey := ecKey(t)
	root := makeCert(t, certSpec{cn: "root", ca: true}, rootKey, nil, nil)
	otherKey := ecKey(t)
	other := makeCert(t, certSpec{cn: "other root", ca: true}, otherKey, nil, nil)
	leafKey := ecKey(t)
	leaf := makeCert(t, certSpec{cn: "not a ca"}, leafKey, root, rootKey)
	expiredKey := ecKey(t)
	expired := makeCert(t, certSpec{cn: "expired", ca: true, notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)}, expiredKey, nil, nil)
	futureKey := ecKey(t)
	future := makeCert(t, certSpec{cn: "future", ca: true, notBefore: time.Now().Add(time.Hour)}, futureKey, nil, nil)
	interKey := ecKey(t)
	inter := makeCert(t, certSpec{cn: "intermediate", ca: true}, interKey, root, rootKey)
	smallKey := rsaKey(t, 1024)
	small := makeCert(t, certSpec{cn: "small", ca: true}, smallKey, nil, nil)
	p384Key, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p224 := makeCert(t, certSpec{cn: "p224", ca: true}, p384Key, nil, nil)
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ed := makeCert(t, certSpec{cn: "ed25519", ca: true}, edKey, nil, nil)

	for _, tc := range []struct {
		name string
		m    Material
		want string
	}{
		{"not a CA", Material{certPEM(leaf), keyPEM(t, leafKey), certPEM(root)}, `"CN=not a ca" is not a CA`},
		{"key does not match", Material{certPEM(root), keyPEM(t, otherKey), certPEM(root)}, `private key does not match the signing certificate "CN=root"`},
		{"does not chain to the bundle", Material{certPEM(inter), keyPEM(t, interKey), certPEM(other)}, `"CN=intermediate" does not chain to the trust bundle`},
		{"root not in the bundle", Material{certPEM(root), keyPEM(t, rootKey), certPEM(other)}, `"CN=root" does not chain to the trust bundle`},
		{"expired", Material{certPEM(expired), keyPEM(t, expiredKey), certPEM(expired)}, `"CN=expired" expired at`},
		{"not yet valid", Material{certPEM(future), keyPEM(t, futureKey), certPEM(future)}, `"CN=future" is not valid before`},
		{"RSA 1024", Material{certPEM(small), keyPEM(t, smallKey), certPEM(small)}, "unsupported key type: RSA 1024 bits"},
		{"ECDSA P-224", Material{certPEM(p224), keyPEM(t, p384Key), certPEM(p224)}, "unsupported key type: ECDSA on P-224"},
		{"Ed25519", Material{certPEM(ed), keyPEM(t, edKey), certPEM(ed)}, "unsupported key type ed25519.PrivateKey"},
		{"no certificate", Material{nil, keyPEM(t, rootKey), certPEM(root)}, "signing certificate: no PEM CERTIFICATE block"},
		{"no bundle", Material{certPEM(root), keyPEM(t, rootKey), nil}, "trust bundle: no PEM CERTIFICATE block"},
		{"key in the bundle", Material{certPEM(root), keyPEM(t, rootKey), keyPEM(t, rootKey)}, `trust bundle: unexpected PEM block "PRIVATE KEY"`},
		{"no key", Material{certPEM(root), nil, certPEM(root)}, "private key: no PEM block"},
		{"garbage key", Material{certPEM(root), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), certPEM(root)}, "private key: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.m, Options{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Errorf("the error holds a key: %v", err)
			}
			// LoadOrCreate refuses stored material the same way.
			if _, err := LoadOrCreate(t.Context(), &memStore{m: &tc.m}, Options{}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadOrCreate: err = %v, want one containing %q", err, tc.want)
			}
		})
	}

	// Valid variants: PKCS#1 and SEC 1 keys, an intermediate followed by its own
	// intermediates in CertPEM.
	ecDER, _ := x509.MarshalECPrivateKey(rootKey)
	rk := rsaKey(t, 2048)
	rroot := makeCert(t, certSpec{cn: "rsa", ca: true}, rk, nil, nil)
	sub := makeCert(t, certSpec{cn: "sub", ca: true}, leafKey, inter, interKey)
	for name, m := range map[string]Material{
		"SEC 1 key":         {certPEM(root), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}), certPEM(root)},
		"PKCS#1 key":        {certPEM(rroot), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rk)}), certPEM(rroot)},
		"two intermediates": {append(certPEM(sub), certPEM(inter)...), keyPEM(t, leafKey), certPEM(root)},
	} {
		t.Run(name, func(t *testing.T) {
			a, err := New(m, Options{})
			if err != nil {
				t.Fatal(err)
			}
			l, err := a.Issue(podA)
			if err != nil {
				t.Fatal(err)
			}
			chain := parseChain(t, l.ChainPEM)
			if err := verify(chain, a.Bundle(), time.Now(), x509.ExtKeyUsageClientAuth); err != nil {
				t.Errorf("chain of %d: %v", len(chain), err)
			}
		})
	}
}

// TestServerCertificate serves TLS with ServerCertificate as GetCertificate and connects
// with a client that trusts only the bundle, by name and by IP.
func TestServerCertificate(t *testing.T) {
	for _, tc := range byoMaterials(t) {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.m, Options{})
			if err != nil {
				t.Fatal(err)
			}
			names := []string{"bearkong.bearkong-system.svc", "127.0.0.1", "::1"}
			c1, err := a.ServerCertificate(names)
			if err != nil {
				t.Fatal(err)
			}
			c2, _ := a.ServerCertificate(names)
			if c1 != c2 {
				t.Error("not memoized")
			}
			leaf := c1.Leaf
			if !slices.Equal(leaf.DNSNames, names[:1]) || len(leaf.IPAddresses) != 2 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || len(leaf.URIs) != 0 {
				t.Errorf("SANs DNS %v IP %v URI %v", leaf.DNSNames, leaf.IPAddresses, leaf.URIs)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
				t.Errorf("ext key usage %v", leaf.ExtKeyUsage)
			}
			if want := map[bool]int{true: 1, false: 2}[tc.isRoot]; len(c1.Certificate) != want {
				t.Errorf("chain of %d, want %d", len(c1.Certificate), want)
			}

			ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return a.ServerCertificate(names) },
			})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for range 2 {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_, _ = io.WriteString(c, "hello")
					c.Close()
				}
			}()
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(a.Bundle())
			for _, server := range []string{"bearkong.bearkong-system.svc", ""} {
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: server})
				if err != nil {
					t.Fatalf("dial with server name %q: %v", server, err)
				}
				b, _ := io.ReadAll(conn)
				conn.Close()
				if string(b) != "hello" {
					t.Errorf("read %q", b)
				}
			}
		})
	}
}

// TestSigningCertificateExpiry checks that leaves never outlive the signing certificate,
// and that nothing is issued once it has expired.
func TestSigningCertificateExpiry(t *testing.T) {
	now := time.Now()
	key := ecKey(t)
	root := makeCert(t, certSpec{cn: "short", ca: true, notAfter: now.Add(time.Hour)}, key, nil, nil)
	clock := now
	a, err := New(Material{certPEM(root), keyPEM(t, key), certPEM(root)}, Options{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	l, err := a.Issue(podA)
	if err != nil {
		t.Fatal(err)
	}
	if !l.NotAfter.Equal(root.NotAfter) {
		t.Errorf("leaf NotAfter %s, want the root's %s", l.NotAfter, root.NotAfter)
	}
	clock = now.Add(24 * time.Hour)
	if _, err := a.Issue(podA); err == nil || !strings.Contains(err.Error(), `"CN=short" expired at`) {
		t.Errorf("Issue after the root expired: %v", err)
	}
	if _, err := a.ServerCertificate([]string{"xds"}); err == nil || !strings.Contains(err.Error(), `"CN=short" expired at`) {
		t.Errorf("ServerCertificate after the root expired: %v", err)
	}
}

// TestConcurrentIssue issues from many goroutines at once (run with -race): every caller
// of a window gets the one memoized certificate.
func TestConcurrentIssue(t *testing.T) {
	a, err := New(generatedRoot(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		leaves  [8]*Leaf
		servers [8]*tls.Certificate
		errs    [16]error
	)
	for i := range leaves {
		wg.Go(func() { leaves[i], errs[i] = a.Issue(podA) })
		wg.Go(func() { servers[i], errs[8+i] = a.ServerCertificate([]string{"xds", "127.0.0.1"}) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range leaves {
		if leaves[i] != leaves[0] || servers[i] != servers[0] {
			t.Fatalf("caller %d got another certificate than caller 0", i)
		}
	}
}

// TestNoKeyInStrings checks that printing the types that hold keys does not print them.
func TestNoKeyInStrings(t *testing.T) {
	m := generatedRoot(t)
	a, err := New(m, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := a.Issue(podA)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{m, &m, l, *l, a} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			s := fmt.Sprintf(verb, v)
			if strings.Contains(s, "PRIVATE KEY") || strings.Contains(s, string(m.KeyPEM[40:80])) || strings.Contains(s, string(l.KeyPEM[40:80])) {
				t.Errorf("%s of %T prints a key: %.200s", verb, v, s)
			}
		}
	}
}

// BenchmarkIssueUncached issues a new workload each time: key derivation and a signature,
// with the generated (ECDSA P-256) root and, for comparison, brought RSA 3072 (the root
// bearkong generated before) and ECDSA P-384 roots.
func BenchmarkIssueUncached(b *testing.B) {
	rsaRootKey := rsaKey(b, 3072)
	rsaRoot := makeCert(b, certSpec{cn: "rsa root", ca: true}, rsaRootKey, nil, nil)
	p384RootKey := ecKeyOn(b, elliptic.P384())
	p384Root := makeCert(b, certSpec{cn: "p384 root", ca: true}, p384RootKey, nil, nil)
	for name, m := range map[string]Material{
		"generatedRoot": generatedRoot(b),
		"RSA3072root":   {certPEM(rsaRoot), keyPEM(b, rsaRootKey), certPEM(rsaRoot)},
		"P384root":      {certPEM(p384Root), keyPEM(b, p384RootKey), certPEM(p384Root)},
	} {
		b.Run(name, func(b *testing.B) {
			a, err := New(m, Options{})
			if err != nil {
				b.Fatal(err)
			}
			w := podA
			for i := 0; b.Loop(); i++ {
				w.PodUID = fmt.Sprint(i)
				if _, err := a.Issue(w); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkIssueCached(b *testing.B) {
	a, err := New(generatedRoot(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := a.Issue(podA); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := a.Issue(podA); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkServerCertificate(b *testing.B) {
	a, err := New(generatedRoot(b), Options{})
	if err != nil {
		b.Fatal(err)
	}
	names := []string{"bearkong.bearkong-system.svc", "127.0.0.1"}
	for b.Loop() {
		if _, err := a.ServerCertificate(names); err != nil {
			b.Fatal(err)
		}
	}
}
