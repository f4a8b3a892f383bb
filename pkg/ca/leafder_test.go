package ca

import (
	"bytes"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestWorkloadDERMatchesX509: for every issuer whose workload certificates are written
// without crypto/x509 (ECDSA P-256, root or intermediate), they are byte for byte what
// x509.CreateCertificate writes, for short and long names (DER lengths of one, two and
// three bytes) and windows whose validity crosses into 2050 (GeneralizedTime); other
// issuers keep crypto/x509. Each certificate verifies up to the bundle.
func TestWorkloadDERMatchesX509(t *testing.T) {
	workloads := []Workload{
		podA,
		{Namespace: "n", ServiceAccount: "s", PodName: "p", PodUID: "u"},
		{Namespace: strings.Repeat("a", 63), ServiceAccount: strings.Repeat("b", 253), PodName: strings.Repeat("c", 253), PodUID: "0f2b7c1e-8a4d-4c35-9b0e-2f6d1a7e3c59"},
		{Namespace: "ns-with-dashes", ServiceAccount: "sa.with.dots", PodName: "pod-0", PodUID: "uid"},
	}
	now := time.Now()
	// A root generated on the last day of 2049: its leaves' validity ends in 2050, which
	// DER writes as a GeneralizedTime instead of a UTCTime.
	at2049 := time.Date(2049, 12, 31, 23, 0, 0, 0, time.UTC)
	root2049, err := GenerateRoot("cluster.local", at2049)
	if err != nil {
		t.Fatal(err)
	}
	materials := append(byoMaterials(t), struct {
		name   string
		m      Material
		isRoot bool
	}{"generated root, in 2049", root2049, true})
	for _, tc := range materials {
		t.Run(tc.name, func(t *testing.T) {
			clock := now
			if strings.HasSuffix(tc.name, "2049") {
				clock = at2049
			}
			a, err := New(tc.m, Options{Now: fixedClock(clock)})
			if err != nil {
				t.Fatal(err)
			}
			ref := a.workloadReference()
			wantFast := strings.HasPrefix(tc.name, "generated root") || tc.name == "own ECDSA root" || strings.HasPrefix(tc.name, "ECDSA intermediate")
			if (ref != nil) != wantFast {
				t.Fatalf("written without crypto/x509: %v, want %v", ref != nil, wantFast)
			}
			for _, w := range workloads {
				l, err := a.Issue(w)
				if err != nil {
					t.Fatal(err)
				}
				k := a.Window(clock)
				nb, na, err := a.validity(k)
				if err != nil {
					t.Fatal(err)
				}
				u, err := url.Parse(mesh.SPIFFEID(a.trustDomain, w.Namespace, w.ServiceAccount))
				if err != nil {
					t.Fatal(err)
				}
				want, _, err := a.sign(workloadTemplate(u, nb, na), []string{"workload", w.Namespace, w.ServiceAccount, w.PodName, w.PodUID}, k)
				if err != nil {
					t.Fatal(err)
				}
				chain := parseChain(t, l.ChainPEM)
				if !bytes.Equal(chain[0].Raw, want) {
					t.Errorf("%s at %s: the certificate differs from crypto/x509's", w.PodName[:1], clock.Format(time.DateOnly))
				}
				if clock == at2049 && chain[0].NotAfter.Year() != 2050 {
					t.Errorf("the 2049 certificate ends on %s, not in 2050", chain[0].NotAfter)
				}
				if err := verify(chain, tc.m.BundlePEM, clock, x509.ExtKeyUsageClientAuth); err != nil {
					t.Errorf("%s at %s: %v", w.PodName[:1], clock.Format(time.DateOnly), err)
				}
			}
		})
	}
}
