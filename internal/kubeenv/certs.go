package kubeenv

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the paths of the files the API server needs, and the CA in PEM form for
// clients.
type pki struct {
	caCert, serverCert, serverKey string // paths
	saPublic, saPrivate           string // paths
	tokenFile                     string // path
	caPEM                         []byte
	adminToken                    string
}

// writePKI generates, under dir, a CA, a serving certificate for 127.0.0.1 and localhost
// signed by it, a service-account RSA key pair, and a token file with one admin token in
// the system:masters group. Existing files are kept, so that a restarted environment with
// the same Dir keeps trusting the same CA and tokens.
func writePKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	p := &pki{
		caCert:     filepath.Join(dir, "ca.crt"),
		serverCert: filepath.Join(dir, "apiserver.crt"),
		serverKey:  filepath.Join(dir, "apiserver.key"),
		saPublic:   filepath.Join(dir, "sa.pub"),
		saPrivate:  filepath.Join(dir, "sa.key"),
		tokenFile:  filepath.Join(dir, "tokens.csv"),
	}
	if allExist(p.caCert, p.serverCert, p.serverKey, p.saPublic, p.saPrivate, p.tokenFile) {
		return p, p.load()
	}

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "bearkong-kubeenv-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: serving key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, srvKey.Public(), caKey)
	if err != nil {
		return nil, fmt.Errorf("pki: serving certificate: %w", err)
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("pki: service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("pki: service-account public key: %w", err)
	}

	token := make([]byte, 24)
	if _, err := rand.Read(token); err != nil {
		return nil, fmt.Errorf("pki: admin token: %w", err)
	}

	srvKeyPEM, err := pkcs8PEM(srvKey)
	if err != nil {
		return nil, fmt.Errorf("pki: serving key: %w", err)
	}
	saKeyPEM, err := pkcs8PEM(saKey)
	if err != nil {
		return nil, fmt.Errorf("pki: service-account key: %w", err)
	}

	files := []struct {
		path string
		data []byte
	}{
		{p.caCert, pemBlock("CERTIFICATE", caDER)},
		{p.serverCert, pemBlock("CERTIFICATE", srvDER)},
		{p.serverKey, srvKeyPEM},
		{p.saPublic, pemBlock("PUBLIC KEY", saPub)},
		{p.saPrivate, saKeyPEM},
		// token,user,uid,"group1,group2"
		{p.tokenFile, fmt.Appendf(nil, "%s,kubeenv-admin,kubeenv-admin,\"system:masters\"\n", hex.EncodeToString(token))},
	}
	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			return nil, fmt.Errorf("pki: %w", err)
		}
	}
	return p, p.load()
}

// load reads the CA certificate and the admin token back from disk.
func (p *pki) load() error {
	ca, err := os.ReadFile(p.caCert)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tokens, err := os.ReadFile(p.tokenFile)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	tok, _, ok := bytes.Cut(tokens, []byte(","))
	if !ok || len(tok) == 0 {
		return fmt.Errorf("pki: %s: no token", p.tokenFile)
	}
	p.caPEM = ca
	p.adminToken = string(tok)
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// pkcs8PEM returns the PEM-encoded PKCS#8 form of key.
func pkcs8PEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func allExist(paths ...string) bool {
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}
