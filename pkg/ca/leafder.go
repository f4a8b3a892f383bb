package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net/url"
	"sync"
	"time"
)

// A workload certificate differs from the next only in its serial number, validity,
// public key and SPIFFE ID; everything else (issuer, signature algorithm, key usages,
// authority key ID) is the Authority's. workloadDER writes such a certificate from a
// reference that crypto/x509 issued once, and signs it, with the same bytes as
// x509.CreateCertificate.
//
// Why: x509.CreateCertificate checks the signature it has just made, with the issuer's
// public key, before it returns. An ECDSA P-256 verification costs about three
// signatures: it was more than half of issuing a workload certificate, and a sixth of a
// proxy's initial sync. The signer here is the Authority's own in-memory key, which the
// check cannot catch misbehaving; the tests compare the bytes with crypto/x509's for
// many workloads (TestWorkloadDERMatchesX509), and any issuer other than an ECDSA P-256
// key, or a reference whose encoding does not round-trip, keeps crypto/x509.

// tbsCertificate is RFC 5280's TBSCertificate (section 4.1), with the ASN.1 tags that
// crypto/x509 encodes it with.
type tbsCertificate struct {
	Raw                asn1.RawContent
	Version            int `asn1:"optional,explicit,default:0,tag:0"`
	SerialNumber       *big.Int
	SignatureAlgorithm pkix.AlgorithmIdentifier
	Issuer             asn1.RawValue
	Validity           validity
	Subject            asn1.RawValue
	PublicKey          asn1.RawValue
	UniqueID           asn1.BitString   `asn1:"optional,tag:1"`
	SubjectUniqueID    asn1.BitString   `asn1:"optional,tag:2"`
	Extensions         []pkix.Extension `asn1:"omitempty,optional,explicit,tag:3"`
}

type validity struct {
	NotBefore, NotAfter time.Time
}

type certificate struct {
	TBSCertificate     asn1.RawValue
	SignatureAlgorithm pkix.AlgorithmIdentifier
	SignatureValue     asn1.BitString
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// workloadRef is what workloadDER copies from the reference certificate.
type workloadRef struct {
	tbs    tbsCertificate // serial, validity, key and SAN replaced per certificate
	san    int            // index of the subjectAltName extension in tbs.Extensions
	sigAlg pkix.AlgorithmIdentifier
	key    *ecdsa.PrivateKey
}

// workloadReference returns the reference for a's workload certificates, or nil when
// they must go through crypto/x509. It is made once per Authority.
func (a *Authority) workloadReference() *workloadRef {
	a.refOnce.Do(func() { a.ref = a.makeWorkloadReference() })
	return a.ref
}

func (a *Authority) makeWorkloadReference() *workloadRef {
	key, ok := a.p.signer.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil
	}
	u, err := url.Parse("spiffe://" + a.trustDomain + "/ns/reference/sa/reference")
	if err != nil {
		return nil
	}
	tmpl := workloadTemplate(u, time.Unix(0, 0), time.Unix(3600, 0))
	tmpl.SerialNumber = big.NewInt(1)
	der, err := x509.CreateCertificate(nil, tmpl, a.p.cert, key.Public(), key)
	if err != nil {
		return nil
	}
	var cert certificate
	if rest, err := asn1.Unmarshal(der, &cert); err != nil || len(rest) > 0 {
		return nil
	}
	ref := &workloadRef{san: -1, sigAlg: cert.SignatureAlgorithm, key: key}
	if rest, err := asn1.Unmarshal(cert.TBSCertificate.FullBytes, &ref.tbs); err != nil || len(rest) > 0 {
		return nil
	}
	for i, e := range ref.tbs.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			ref.san = i
		}
	}
	if ref.san < 0 {
		return nil
	}
	// The reference must come out of workloadDER as crypto/x509 wrote it; if an
	// encoding detail differs, every certificate goes through crypto/x509.
	again, err := ref.der(tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter, key.Public(), u)
	if err != nil || !bytes.Equal(again, der) {
		return nil
	}
	return ref
}

// workloadTemplate is the template of a workload certificate, for crypto/x509.
func workloadTemplate(u *url.URL, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		URIs:        []*url.URL{u},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
}

// der writes and signs the workload certificate of serial, validity, public key and
// SPIFFE ID u. A nil random source makes the ECDSA signature deterministic (RFC 6979),
// as for crypto/x509 in Authority.sign.
func (ref *workloadRef) der(serial *big.Int, notBefore, notAfter time.Time, pub crypto.PublicKey, u *url.URL) ([]byte, error) {
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(u.String())}})
	if err != nil {
		return nil, err
	}
	tbs := ref.tbs
	tbs.Raw = nil
	tbs.SerialNumber = serial
	tbs.Validity = validity{notBefore.UTC(), notAfter.UTC()}
	tbs.PublicKey = asn1.RawValue{FullBytes: spki}
	tbs.Extensions = append([]pkix.Extension(nil), ref.tbs.Extensions...)
	tbs.Extensions[ref.san].Value = san
	tbsDER, err := asn1.Marshal(tbs)
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(tbsDER)
	sig, err := ref.key.Sign(nil, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(certificate{
		TBSCertificate:     asn1.RawValue{FullBytes: tbsDER},
		SignatureAlgorithm: ref.sigAlg,
		SignatureValue:     asn1.BitString{Bytes: sig, BitLength: 8 * len(sig)},
	})
}

// refState is the Authority's part for workloadDER; a field group of its own so that
// the zero Authority needs no set-up.
type refState struct {
	refOnce sync.Once
	ref     *workloadRef
}
