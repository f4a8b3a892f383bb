// Package ca is bearkong's certificate authority: it issues each proxy its workload
// certificate (a SPIFFE X.509-SVID, https://github.com/spiffe/spiffe/blob/main/standards/X509-SVID.md)
// and the xDS server its serving certificate, from a root or intermediate kept in a Store
// (a Kubernetes Secret, see discovery.CASecretStore) so that every replica and every
// restart signs with the same key.
//
// Issuance is a pure function of (CA material, workload, rotation window): time is cut
// into windows of half the leaf lifetime, and within a window every Authority built on the
// same Material returns the same bytes for the same workload. That is what lets the
// control plane keep its rule that equal inputs give equal config bytes, across replicas
// and restarts, with certificates in the config.
//
// The package is pure Go crypto; it knows nothing of Kubernetes or Envoy.
package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Defaults for Options.
const (
	DefaultTrustDomain  = "cluster.local"
	DefaultLeafLifetime = 24 * time.Hour

	// RootLifetime is the validity of a root bearkong generates.
	RootLifetime = 10 * 365 * 24 * time.Hour
	// maxBackdate bounds how far before its window a leaf is valid, for clocks that lag.
	maxBackdate = 5 * time.Minute
)

// Store keeps the CA material. Load reports whether there is any. Create stores m unless
// material already exists, and returns what is stored: when another replica created it
// first, its material, so that replicas starting together converge on one root.
type Store interface {
	Load(ctx context.Context) (Material, bool, error)
	Create(ctx context.Context, m Material) (Material, error)
}

// Options configures an Authority.
type Options struct {
	// TrustDomain is the SPIFFE trust domain of every identity. Default cluster.local.
	TrustDomain string
	// LeafLifetime is the validity of an issued certificate; certificates rotate every
	// half of it. A whole, even number of seconds (certificate times have a resolution of
	// a second). Default 24h.
	LeafLifetime time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Workload is the pod a certificate is issued to. Namespace and ServiceAccount make its
// identity; PodName and PodUID make its key its own: two pods of the same ServiceAccount
// get the same SPIFFE ID but different keys.
type Workload struct {
	Namespace, ServiceAccount, PodName, PodUID string
}

// Leaf is an issued certificate. ChainPEM is the leaf, then the intermediates up to (not
// including) a root of the bundle; KeyPEM its PKCS#8 private key. Leaves are shared by
// every caller that asks within a window: treat them as read-only. A Leaf prints without
// its key.
type Leaf struct {
	ChainPEM, KeyPEM    []byte
	SPIFFEID, Serial    string
	NotBefore, NotAfter time.Time
}

func (l Leaf) String() string {
	return fmt.Sprintf("ca.Leaf{SPIFFEID: %s, Serial: %s, NotBefore: %s, NotAfter: %s, KeyPEM: redacted}",
		l.SPIFFEID, l.Serial, l.NotBefore.UTC().Format(time.RFC3339), l.NotAfter.UTC().Format(time.RFC3339))
}

// GoString keeps %#v from printing the key.
func (l Leaf) GoString() string { return l.String() }

// LogValue keeps slog from printing the key.
func (l Leaf) LogValue() slog.Value { return slog.StringValue(l.String()) }

// Authority issues certificates. It is safe for concurrent use.
//
// # Determinism, and what it costs
//
// The leaf of a workload in window k is a function of the CA material, the workload and
// k alone: its P-256 private key is derived with HMAC-SHA256, keyed by a secret derived
// from the CA's private key, over a label, the workload's fields and k; its serial number
// likewise; its validity from k. The signature is deterministic too, for every key type
// a CA may have: RSA PKCS#1 v1.5 signatures are by construction (RFC 8017 section 8.2),
// and ECDSA ones (P-256, the generated root, or P-384) because sign asks crypto/ecdsa
// for RFC 6979 signatures, whose nonce is derived from the key and the digest (Go 1.24
// and later, when the random source is nil). So any replica, before or after a restart,
// serves the same bytes: proxies see no change when the control plane restarts or a
// stream moves to another replica, and config versions stay a function of the cluster's
// state.
//
// The price: bearkong, not the proxy, generates the proxy's private key, and anyone who
// holds the CA key can recompute every workload key (they could already mint any identity
// with it; the CA Secret is the crown jewel either way). Istio's agent instead sends a CSR,
// so the key never leaves the pod, at the cost of per-proxy state and a signing round
// trip. The key travels only over the authenticated, TLS-protected xDS stream to the
// proxy it belongs to.
//
// RFC 6979 derives the ECDSA nonce with HMAC from the key and the digest (section 3.2),
// so there is no random source to get wrong. Its known weakness is to fault attacks (a
// computation corrupted while signing the same message twice can reveal the key), which
// take an attacker able to tamper with the control plane's process, who could read the
// CA Secret anyway. Root generation stays random: it happens once, and is stored.
//
// # Cost
//
// Issuing is one HMAC-derived P-256 key and one signature. On the 2-core machine of the
// tests (go test -run '^$' -bench . ./pkg/ca, Go 1.26) a new leaf takes about 0.15 ms
// with the generated ECDSA P-256 root (written without crypto/x509, see leafder.go), 1
// to 2 ms with a P-384 one, and 4 to 6 ms with an RSA 3072 root (what bearkong
// generated before, where the signature dominates); a memoized one about 0.2 µs. Since
// windows are aligned for every workload, all proxies rotate at the same boundary: a
// thousand proxies cost about 0.15 CPU-seconds there (5 with an RSA 3072 root), once per
// window, and as much at the initial sync.
type Authority struct {
	trustDomain string
	lifetime    time.Duration
	window      time.Duration // lifetime / 2
	backdate    time.Duration
	now         func() time.Time

	p          *parsed
	chainPEM   []byte // the intermediates sent after each leaf, PEM
	chainDER   [][]byte
	leafSecret []byte // HMAC key for every derivation

	refState // workload certificates written without crypto/x509 (leafder.go)

	mu      sync.Mutex
	current int64 // the newest window seen; older entries are dropped
	leaves  map[leafKey]*Leaf
	servers map[serverKey]*tls.Certificate
}

type leafKey struct {
	w      Workload
	window int64
}

type serverKey struct {
	names  string
	window int64
}

func (a *Authority) String() string {
	return fmt.Sprintf("ca.Authority{TrustDomain: %s, Signer: %q}", a.trustDomain, a.p.cert.Subject)
}

// GoString keeps %#v from printing the key.
func (a *Authority) GoString() string { return a.String() }

// LoadOrCreate loads the CA material from s, or generates a root and stores it when there
// is none, and returns an Authority signing with it. Material from the store, generated
// or brought by the user, is validated: a CA certificate, its key, a chain to the bundle,
// within its validity, and a supported key type.
func LoadOrCreate(ctx context.Context, s Store, opts Options) (*Authority, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	m, ok, err := s.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("ca: load: %w", err)
	}
	if !ok {
		gen, err := GenerateRoot(opts.TrustDomain, opts.Now())
		if err != nil {
			return nil, err
		}
		if m, err = s.Create(ctx, gen); err != nil {
			return nil, fmt.Errorf("ca: create: %w", err)
		}
	}
	return New(m, opts)
}

// New returns an Authority signing with m.
func New(m Material, opts Options) (*Authority, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	p, err := parseMaterial(m, opts.Now())
	if err != nil {
		return nil, err
	}
	a := &Authority{
		trustDomain: opts.TrustDomain,
		lifetime:    opts.LeafLifetime,
		window:      opts.LeafLifetime / 2,
		backdate:    min(opts.LeafLifetime/10, maxBackdate),
		now:         opts.Now,
		p:           p,
		leafSecret:  derive(p.secret, "bearkong/ca/v1/leaf-secret"),
		leaves:      map[leafKey]*Leaf{},
		servers:     map[serverKey]*tls.Certificate{},
	}
	if !p.signsAt {
		var buf bytes.Buffer
		for _, c := range p.chain {
			a.chainDER = append(a.chainDER, c.Raw)
			_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		a.chainPEM = buf.Bytes()
	}
	return a, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.TrustDomain == "" {
		o.TrustDomain = DefaultTrustDomain
	}
	if o.LeafLifetime == 0 {
		o.LeafLifetime = DefaultLeafLifetime
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if strings.ContainsAny(o.TrustDomain, "/:@?#") {
		return o, fmt.Errorf("ca: trust domain %q: want a bare name such as cluster.local", o.TrustDomain)
	}
	if o.LeafLifetime < 2*time.Second || o.LeafLifetime%(2*time.Second) != 0 {
		return o, fmt.Errorf("ca: leaf lifetime %s: want a whole, even number of seconds, at least 2s", o.LeafLifetime)
	}
	return o, nil
}

// GenerateRoot returns the material of a new self-signed root for trustDomain: ECDSA
// P-256, 128-bit security like RSA 3072 (NIST SP 800-57 part 1, table 2) for a
// twentieth of the signing CPU, and deterministic signatures as RSA PKCS#1 v1.5's are
// (see Authority), valid RootLifetime from an hour before now, CA:TRUE,
// key usage certificate and CRL signing, URI SAN spiffe://<trust-domain> (the SPIFFE
// trust bundle convention), subject O=bearkong. A root generated before, RSA 3072, keeps
// working: LoadOrCreate loads what the store holds and generates nothing.
func GenerateRoot(trustDomain string, now time.Time) (Material, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Material{}, fmt.Errorf("ca: generate root key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return Material{}, fmt.Errorf("ca: root serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial.Add(serial, big.NewInt(1)),
		Subject:               pkix.Name{Organization: []string{"bearkong"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(-time.Hour).Add(RootLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		URIs:                  []*url.URL{{Scheme: "spiffe", Host: trustDomain}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return Material{}, fmt.Errorf("ca: sign root: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Material{}, fmt.Errorf("ca: encode root key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return Material{
		CertPEM:   certPEM,
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		BundlePEM: certPEM,
	}, nil
}

// TrustDomain returns the SPIFFE trust domain.
func (a *Authority) TrustDomain() string { return a.trustDomain }

// LeafLifetime returns the validity of an issued certificate.
func (a *Authority) LeafLifetime() time.Duration { return a.lifetime }

// Bundle returns the trust bundle, the roots proxies verify peers and the xDS server
// with, as PEM.
func (a *Authority) Bundle() []byte { return bytes.Clone(a.p.bundle) }

// Window returns the rotation window t falls in: windows are LeafLifetime/2 long,
// aligned to the Unix epoch, so every replica agrees on them without talking.
func (a *Authority) Window(t time.Time) int64 {
	n, w := t.UnixNano(), int64(a.window)
	k := n / w
	if n%w < 0 { // floor, for times before 1970
		k--
	}
	return k
}

// NextRotation returns when the window after t's starts: when a proxy should get its
// next certificate.
func (a *Authority) NextRotation(t time.Time) time.Time {
	return time.Unix(0, (a.Window(t)+1)*int64(a.window))
}

// validity returns the validity of window k's certificates: from the window's start,
// less a little for clocks behind ours, for one lifetime, so that a proxy that rotates at
// every window boundary always holds a certificate with about half its lifetime left.
// Never past the signing certificate's own expiry.
func (a *Authority) validity(k int64) (time.Time, time.Time, error) {
	nb := time.Unix(0, k*int64(a.window)).Add(-a.backdate)
	na := nb.Add(a.lifetime)
	if na.After(a.p.cert.NotAfter) {
		na = a.p.cert.NotAfter
	}
	if !nb.Before(na) {
		return nb, na, fmt.Errorf("signing certificate %q expired at %s", a.p.cert.Subject, a.p.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return nb, na, nil
}

// Issue returns the certificate of w for the current window: URI SAN the SPIFFE ID of
// its namespace and ServiceAccount, ECDSA P-256 (which Envoy's BoringSSL supports along
// with RSA), for both TLS client and server authentication. Equal calls within a window
// return the same Leaf (see Authority for across Authorities).
func (a *Authority) Issue(w Workload) (*Leaf, error) {
	if w.Namespace == "" || w.ServiceAccount == "" {
		return nil, fmt.Errorf("ca: workload %s/%s: namespace and service account are required", w.Namespace, w.PodName)
	}
	k := a.Window(a.now())
	key := leafKey{w, k}
	if l := a.cachedLeaf(key); l != nil {
		return l, nil
	}
	id := mesh.SPIFFEID(a.trustDomain, w.Namespace, w.ServiceAccount)
	u, err := url.Parse(id)
	if err != nil {
		return nil, fmt.Errorf("ca: workload %s/%s: SPIFFE ID %q: %w", w.Namespace, w.PodName, id, err)
	}
	inputs := []string{"workload", w.Namespace, w.ServiceAccount, w.PodName, w.PodUID}
	nb, na, err := a.validity(k)
	if err != nil {
		return nil, fmt.Errorf("ca: workload %s: %w", id, err)
	}
	tmpl := workloadTemplate(u, nb, na)
	var der []byte
	var priv *ecdsa.PrivateKey
	if ref := a.workloadReference(); ref != nil {
		if priv, tmpl.SerialNumber, err = a.keyAndSerial(inputs, k); err == nil {
			der, err = ref.der(tmpl.SerialNumber, nb, na, priv.Public(), u)
		}
	} else {
		der, priv, err = a.sign(tmpl, inputs, k)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: workload %s: %w", id, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("ca: workload %s: %w", id, err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	l := &Leaf{
		ChainPEM:  append(chain, a.chainPEM...),
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		SPIFFEID:  id,
		Serial:    tmpl.SerialNumber.Text(16),
		NotBefore: nb,
		NotAfter:  na,
	}
	return a.storeLeaf(key, l), nil
}

// ServerCertificate returns the xDS server's certificate for the current window: DNS
// names and IP addresses (as IP SANs) from names, ECDSA P-256, for TLS server
// authentication, with the same windows and memoization as Issue. It is meant for
// tls.Config.GetCertificate: safe for concurrent use, and a map lookup once issued.
func (a *Authority) ServerCertificate(names []string) (*tls.Certificate, error) {
	if len(names) == 0 {
		return nil, errors.New("ca: server certificate: no names")
	}
	k := a.Window(a.now())
	key := serverKey{strings.Join(names, "\x00"), k}
	a.mu.Lock()
	a.advance(k)
	c := a.servers[key]
	a.mu.Unlock()
	if c != nil {
		return c, nil
	}
	nb, na, err := a.validity(k)
	if err != nil {
		return nil, fmt.Errorf("ca: server certificate %v: %w", names, err)
	}
	tmpl := &x509.Certificate{
		NotBefore:   nb,
		NotAfter:    na,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, priv, err := a.sign(tmpl, append([]string{"server"}, names...), k)
	if err != nil {
		return nil, fmt.Errorf("ca: server certificate %v: %w", names, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: server certificate %v: %w", names, err)
	}
	c = &tls.Certificate{
		Certificate: append([][]byte{der}, a.chainDER...),
		PrivateKey:  priv,
		Leaf:        leaf,
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if prev := a.servers[key]; prev != nil { // a concurrent caller won: one answer per window
		return prev, nil
	}
	if k >= a.current {
		a.servers[key] = c
	}
	return c, nil
}

// sign derives the key and serial of (inputs, k), completes tmpl with them and signs it.
func (a *Authority) sign(tmpl *x509.Certificate, inputs []string, k int64) ([]byte, *ecdsa.PrivateKey, error) {
	priv, serial, err := a.keyAndSerial(inputs, k)
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	// A nil random source makes the signature deterministic (see Authority): ECDSA keys
	// sign per RFC 6979 (crypto/ecdsa.PrivateKey.Sign), RSA PKCS#1 v1.5 never reads it,
	// and CreateCertificate reads it itself only to make up a missing serial, set above.
	der, err := x509.CreateCertificate(nil, tmpl, a.p.cert, priv.Public(), a.p.signer)
	if err != nil {
		return nil, nil, err
	}
	return der, priv, nil
}

// keyAndSerial derives the key and serial of (inputs, k).
func (a *Authority) keyAndSerial(inputs []string, k int64) (*ecdsa.PrivateKey, *big.Int, error) {
	priv, err := a.deriveKey(inputs, k)
	if err != nil {
		return nil, nil, err
	}
	// A positive serial of at most 20 bytes (RFC 5280 section 4.1.2.2) with 126 bits from
	// the hash: unique per certificate as a random one would be.
	s := a.mac("serial", inputs, k, 0)[:16]
	s[0] = s[0]&0x3f | 0x40
	return priv, new(big.Int).SetBytes(s), nil
}

// deriveKey derives a P-256 private key from (inputs, k): a 32-byte HMAC output is the
// scalar, re-derived with the next counter in the rare case (about 2^-32) that it is
// zero or not below the group order, so the key is uniform and deterministic.
func (a *Authority) deriveKey(inputs []string, k int64) (*ecdsa.PrivateKey, error) {
	for ctr := range uint32(64) {
		priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), a.mac("key", inputs, k, ctr))
		if err == nil {
			return priv, nil
		}
	}
	return nil, errors.New("no valid P-256 scalar after 64 candidates")
}

// mac is HMAC-SHA256 keyed by the leaf secret over a label, the length-prefixed inputs,
// the window and a counter: distinct labels and framing keep every derivation apart.
func (a *Authority) mac(label string, inputs []string, k int64, ctr uint32) []byte {
	h := hmac.New(sha256.New, a.leafSecret)
	var n [8]byte
	for _, s := range append([]string{label}, inputs...) {
		binary.BigEndian.PutUint32(n[:4], uint32(len(s)))
		h.Write(n[:4])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(n[:], uint64(k))
	h.Write(n[:])
	binary.BigEndian.PutUint32(n[:4], ctr)
	h.Write(n[:4])
	return h.Sum(nil)
}

// derive is HMAC-SHA256(secret, label): a key for one purpose from the CA's key.
func derive(secret []byte, label string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte(label))
	return h.Sum(nil)
}

func (a *Authority) cachedLeaf(key leafKey) *Leaf {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.advance(key.window)
	return a.leaves[key]
}

// storeLeaf memoizes l unless a concurrent caller stored one first, and returns the
// stored one.
func (a *Authority) storeLeaf(key leafKey, l *Leaf) *Leaf {
	a.mu.Lock()
	defer a.mu.Unlock()
	if prev := a.leaves[key]; prev != nil {
		return prev
	}
	if key.window >= a.current {
		a.leaves[key] = l
	}
	return l
}

// advance drops the memoized certificates of windows before k once k is the newest
// window seen: nobody is issued those any more. Callers hold a.mu.
func (a *Authority) advance(k int64) {
	if k <= a.current {
		return
	}
	a.current = k
	for key := range a.leaves {
		if key.window < k {
			delete(a.leaves, key)
		}
	}
	for key := range a.servers {
		if key.window < k {
			delete(a.servers, key)
		}
	}
}
