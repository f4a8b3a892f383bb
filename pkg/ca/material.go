package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Material is what a Store keeps: the signing certificate, its private key and the trust
// bundle, all PEM.
//
// CertPEM is the signing certificate first, optionally followed by the intermediates
// between it and a root of the bundle (they are sent after the leaf in every chain).
// KeyPEM is its private key (PKCS#8 "PRIVATE KEY", PKCS#1 "RSA PRIVATE KEY" or SEC 1 "EC
// PRIVATE KEY"). BundlePEM holds the roots proxies trust; for a root bearkong generates it
// equals CertPEM.
//
// Material prints without its key (String, GoString, LogValue) so that a stray %v or
// slog attribute cannot leak it.
type Material struct {
	CertPEM, KeyPEM, BundlePEM []byte
}

func (m Material) String() string {
	return fmt.Sprintf("ca.Material{CertPEM: %d bytes, KeyPEM: redacted, BundlePEM: %d bytes}", len(m.CertPEM), len(m.BundlePEM))
}

// GoString keeps %#v from printing the key.
func (m Material) GoString() string { return m.String() }

// LogValue keeps slog from printing the key.
func (m Material) LogValue() slog.Value { return slog.StringValue(m.String()) }

// parsed is a validated Material.
type parsed struct {
	cert    *x509.Certificate   // the signing certificate
	chain   []*x509.Certificate // cert and the intermediates after it, as in CertPEM
	signer  crypto.Signer
	secret  []byte // canonical private key bytes, the root of every derivation
	roots   []*x509.Certificate
	bundle  []byte // BundlePEM re-encoded: only CERTIFICATE blocks
	signsAt bool   // cert is itself a root of the bundle (chains end at the leaf)
}

// parseMaterial checks that m can issue certificates that verify against its bundle at
// time now, and returns its parts. Each error says what is wrong with which field.
func parseMaterial(m Material, now time.Time) (*parsed, error) {
	chain, err := parseCerts(m.CertPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: signing certificate: %w", err)
	}
	roots, err := parseCerts(m.BundlePEM)
	if err != nil {
		return nil, fmt.Errorf("ca: trust bundle: %w", err)
	}
	cert := chain[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("ca: signing certificate %q is not a CA (basicConstraints CA:TRUE is missing)", cert.Subject)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca: signing certificate %q: its key usage does not allow certificate signing", cert.Subject)
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("ca: signing certificate %q is not valid before %s", cert.Subject, cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if !now.Before(cert.NotAfter) {
		return nil, fmt.Errorf("ca: signing certificate %q expired at %s", cert.Subject, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	signer, secret, err := parseKey(m.KeyPEM)
	if err != nil {
		return nil, err
	}
	if pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("ca: the private key does not match the signing certificate %q", cert.Subject)
	}

	p := &parsed{cert: cert, chain: chain, signer: signer, secret: secret, roots: roots}
	pool := x509.NewCertPool()
	var bundle bytes.Buffer
	for _, r := range roots {
		pool.AddCert(r)
		_ = pem.Encode(&bundle, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
		if bytes.Equal(r.Raw, cert.Raw) {
			p.signsAt = true
		}
	}
	p.bundle = bundle.Bytes()
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("ca: the signing certificate %q does not chain to the trust bundle: %w", cert.Subject, err)
	}
	return p, nil
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q, want CERTIFICATE", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return out, nil
}

// parseKey returns the signer and its canonical secret bytes: the private scalar (ECDSA)
// or exponent (RSA), so that the derivations depend on the key and not on how it was
// encoded. Supported: RSA of at least 2048 bits and ECDSA on P-256 or P-384, the key types
// Envoy's BoringSSL verifies in a chain.
func parseKey(b []byte) (crypto.Signer, []byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, nil, errors.New("ca: private key: no PEM block")
	}
	var key any
	var err error
	switch blk.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		return nil, nil, fmt.Errorf("ca: private key: unsupported PEM block %q", blk.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("ca: private key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("ca: private key: unsupported key type: RSA %d bits (at least 2048)", k.N.BitLen())
		}
		return k, k.D.Bytes(), nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, nil, fmt.Errorf("ca: private key: unsupported key type: ECDSA on %s (P-256 or P-384)", k.Curve.Params().Name)
		}
		d, err := k.Bytes()
		if err != nil {
			return nil, nil, fmt.Errorf("ca: private key: %w", err)
		}
		return k, d, nil
	default:
		return nil, nil, fmt.Errorf("ca: private key: unsupported key type %T (RSA or ECDSA P-256/P-384)", key)
	}
}
