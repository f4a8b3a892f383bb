package translate

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestEnvoyMTLS runs four real Envoys on their translated config, with the secrets a
// control plane would push given statically (withTestSecrets): a caller, and callees
// in STRICT, PERMISSIVE and DISABLE mode, each in front of a small HTTP app. It checks
// what mutual TLS between sidecars promises: HTTP/1.1 and HTTP/2 Services answer
// through caller and callee with both sides counting TLS handshakes and the app seeing
// the caller's SPIFFE ID; a callee with another identity than its Service's is refused;
// a STRICT callee refuses a client certificate from another CA and plaintext; a
// PERMISSIVE one accepts plaintext (without a forged identity), and so does DISABLE.
func TestEnvoyMTLS(t *testing.T) {
	envoyBinary(t)
	const (
		callerID = "spiffe://cluster.local/ns/default/sa/client"
		calleeID = "spiffe://cluster.local/ns/default/sa/web"
	)
	ips := distinctLoopbackIPs(t, 10)
	caller, strict, permissive, disable := ips[0], ips[2], ips[4], ips[6]
	svc := func(name, ip string, mode mesh.MTLSMode, proto mesh.Protocol, sas ...string) *mesh.Service {
		return &mesh.Service{Namespace: "default", Name: name, MTLS: mode, Protocol: proto, ServiceAccounts: sas,
			Endpoints: []mesh.Endpoint{{IP: ip, Pod: name + "-0"}}}
	}
	proxy := func(name, ip string, mode mesh.MTLSMode, sa string, services ...string) *mesh.Proxy {
		return &mesh.Proxy{Namespace: "default", Name: name, IP: ip, Services: services, ServiceAccount: sa, MTLS: mode}
	}
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{
			svc("disable", disable, mesh.MTLSDisable, mesh.ProtocolHTTP),
			svc("permissive", permissive, mesh.MTLSPermissive, mesh.ProtocolHTTP, "web"),
			svc("strict", strict, mesh.MTLSStrict, mesh.ProtocolHTTP, "web"),
			svc("strict-h2", strict, mesh.MTLSStrict, mesh.ProtocolHTTP2, "web"),
			// The STRICT callee's pod, but the Service's endpoints are meant to run as
			// "db": the caller must refuse the callee's "web" certificate.
			svc("wrong-sa", strict, mesh.MTLSStrict, mesh.ProtocolHTTP, "db"),
		},
		Proxies: map[string]*mesh.Proxy{
			"default/client-0":     proxy("client-0", caller, mesh.MTLSStrict, "client"),
			"default/rogue-0":      proxy("rogue-0", ips[8], mesh.MTLSStrict, "client"),
			"default/strict-0":     proxy("strict-0", strict, mesh.MTLSStrict, "web", "default/strict", "default/strict-h2", "default/wrong-sa"),
			"default/permissive-0": proxy("permissive-0", permissive, mesh.MTLSPermissive, "web", "default/permissive"),
			"default/disable-0":    proxy("disable-0", disable, mesh.MTLSDisable, "web", "default/disable"),
		},
	}
	ca := newTestCA(t, "mesh root")
	// app answers with who it is, the protocol it was spoken and the caller identity
	// its sidecar forwarded.
	app := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s got %s %s xfcc=%q\n", name, r.URL.Path, r.Proto, r.Header.Get("x-forwarded-client-cert"))
		})
	}
	start := func(name, ip, outIP, identity string, issuer *testCA) *envoyRun {
		chain, key := issuer.issue(t, identity)
		n := Node{ID: name + ".default", PodNamespace: "default", PodName: name, ListenIP: ip, OutboundIP: outIP}
		return startEnvoyWith(t, snap, n, Options{}, app(name), func(b *bootstrapv3.Bootstrap) {
			withTestSecrets(t, b, chain, key, ca.pem)
		})
	}
	c := start("client-0", caller, ips[1], callerID, ca)
	s := start("strict-0", strict, ips[3], calleeID, ca)
	p := start("permissive-0", permissive, ips[5], calleeID, ca)
	d := start("disable-0", disable, ips[7], calleeID, ca)
	// A sidecar whose certificate names a mesh identity but comes from another CA (it
	// trusts the mesh's roots, so only the callee's check can refuse it).
	rogue := start("rogue-0", ips[8], ips[9], callerID, newTestCA(t, "another root"))

	// through sends a request for service through the caller's outbound listener.
	through := func(t *testing.T, service string) (int, string) {
		t.Helper()
		return c.do(t, c.outbound, "/hello", [2]string{"service", service})
	}
	forwarded := fmt.Sprintf("URI=%s", callerID)

	t.Run("HTTP/1.1 and HTTP/2 over mutual TLS", func(t *testing.T) {
		for _, tc := range []struct {
			service, cluster, proto string
		}{
			{"strict", "default/strict", "HTTP/1.1"},
			{"strict-h2", "default/strict-h2", "HTTP/2.0"},
			{"permissive", "default/permissive", "HTTP/1.1"},
		} {
			t.Run(tc.service, func(t *testing.T) {
				callee := s
				if tc.service == "permissive" {
					callee = p
				}
				callerBefore := stat(t, c, `cluster\.`+regexp.QuoteMeta(tc.cluster)+`\.ssl\.handshake`)
				calleeBefore := stat(t, callee, `listener\..*\.ssl\.handshake`)
				code, body := through(t, tc.service)
				want := fmt.Sprintf("%s got /hello %s xfcc=", callee.name(), tc.proto)
				if code != 200 || !strings.HasPrefix(body, want) || !strings.Contains(body, forwarded) {
					t.Fatalf("got %d %q, want 200 %q... with %q", code, body, want, forwarded)
				}
				if after := stat(t, c, `cluster\.`+regexp.QuoteMeta(tc.cluster)+`\.ssl\.handshake`); after <= callerBefore {
					t.Errorf("caller's cluster ssl.handshake %d -> %d, want it to grow", callerBefore, after)
				}
				if after := stat(t, callee, `listener\..*\.ssl\.handshake`); after <= calleeBefore {
					t.Errorf("callee's listener ssl.handshake %d -> %d, want it to grow", calleeBefore, after)
				}
			})
		}
	})

	t.Run("callee with another identity is refused by the caller", func(t *testing.T) {
		before := stat(t, c, `cluster\.default/wrong-sa\.ssl\.fail_verify_san`)
		code, body := through(t, "wrong-sa")
		if code != 503 {
			t.Errorf("got %d %q, want 503", code, body)
		}
		if after := statAbove(t, c, `cluster\.default/wrong-sa\.ssl\.fail_verify_san`, before); after <= before {
			t.Errorf("caller's ssl.fail_verify_san %d -> %d, want it to grow", before, after)
		}
	})

	t.Run("caller with a certificate from another CA is refused by the callee", func(t *testing.T) {
		before := stat(t, s, `listener\..*\.ssl\.fail_verify_error`)
		code, body := rogue.do(t, rogue.outbound, "/hello", [2]string{"service", "strict"})
		if code != 503 {
			t.Errorf("got %d %q, want 503", code, body)
		}
		if after := statAbove(t, s, `listener\..*\.ssl\.fail_verify_error`, before); after <= before {
			t.Errorf("callee's ssl.fail_verify_error %d -> %d, want it to grow", before, after)
		}
	})

	t.Run("DISABLE Service is plaintext end to end", func(t *testing.T) {
		before := stat(t, d, `listener\..*\.ssl\.handshake`)
		code, body := through(t, "disable")
		if want := "disable-0 got /hello HTTP/1.1 xfcc=\"\"\n"; code != 200 || body != want {
			t.Errorf("got %d %q, want 200 %q", code, body, want)
		}
		if after := stat(t, d, `listener\..*\.ssl\.handshake`); after != before {
			t.Errorf("DISABLE callee counted TLS handshakes: %d -> %d", before, after)
		}
	})

	// A client that is not a sidecar, straight to a callee's inbound port, with a
	// client certificate from cert's CA (nil: none) and a spoofed identity header.
	direct := func(e *envoyRun, useTLS bool, cert *tls.Certificate) (int, string, error) {
		tr := &http.Transport{DisableKeepAlives: true}
		scheme := "http"
		if useTLS {
			scheme = "https"
			tr.TLSClientConfig = &tls.Config{
				// The callee's check of the client is under test, not the client's
				// check of the callee (whose certificate has no DNS name to verify).
				InsecureSkipVerify: true,
				MinVersion:         tls.VersionTLS13,
			}
			if cert != nil {
				// Presented whatever the server asks for: given as Certificates, Go's
				// client would send none when its issuer is not among the CAs the
				// server names, and the test would not present the foreign cert.
				tr.TLSClientConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
			}
		}
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		defer tr.CloseIdleConnections()
		req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, scheme+"://"+e.inbound()+"/direct", nil)
		if err != nil {
			return 0, "", err
		}
		req.Header.Set("x-forwarded-client-cert", "By=x;URI=spiffe://cluster.local/ns/kube-system/sa/admin")
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	keyPair := func(ca *testCA, id string) *tls.Certificate {
		chain, key := ca.issue(t, id)
		kp, err := tls.X509KeyPair(chain, key)
		if err != nil {
			t.Fatal(err)
		}
		return &kp
	}

	t.Run("STRICT accepts a mesh client certificate", func(t *testing.T) {
		code, body, err := direct(s, true, keyPair(ca, callerID))
		if want := "strict-0 got /direct HTTP/1.1 xfcc="; err != nil || code != 200 || !strings.HasPrefix(body, want) || !strings.Contains(body, forwarded) {
			t.Errorf("got %d %q %v, want 200 %q... with %q", code, body, err, want, forwarded)
		}
	})
	t.Run("STRICT refuses a client certificate from another CA", func(t *testing.T) {
		before := stat(t, s, `listener\..*\.ssl\.fail_verify_error`)
		code, body, err := direct(s, true, keyPair(newTestCA(t, "another root"), callerID))
		if err == nil {
			t.Errorf("got %d %q, want a TLS failure", code, body)
		}
		if after := statAbove(t, s, `listener\..*\.ssl\.fail_verify_error`, before); after <= before {
			t.Errorf("callee's ssl.fail_verify_error %d -> %d, want it to grow", before, after)
		}
	})
	t.Run("STRICT refuses a client without certificate", func(t *testing.T) {
		before := stat(t, s, `listener\..*\.ssl\.fail_verify_no_cert`)
		if code, body, err := direct(s, true, nil); err == nil {
			t.Errorf("got %d %q, want a TLS failure", code, body)
		}
		if after := statAbove(t, s, `listener\..*\.ssl\.fail_verify_no_cert`, before); after <= before {
			t.Errorf("callee's ssl.fail_verify_no_cert %d -> %d, want it to grow", before, after)
		}
	})
	t.Run("STRICT refuses plaintext", func(t *testing.T) {
		if code, body, err := direct(s, false, nil); err == nil {
			t.Errorf("got %d %q, want a failure", code, body)
		}
	})
	t.Run("PERMISSIVE accepts plaintext, without the forged identity", func(t *testing.T) {
		code, body, err := direct(p, false, nil)
		if want := "permissive-0 got /direct HTTP/1.1 xfcc=\"\"\n"; err != nil || code != 200 || body != want {
			t.Errorf("got %d %q %v, want 200 %q", code, body, err, want)
		}
	})
	t.Run("PERMISSIVE refuses a client certificate from another CA", func(t *testing.T) {
		if code, body, err := direct(p, true, keyPair(newTestCA(t, "another root"), callerID)); err == nil {
			t.Errorf("got %d %q, want a TLS failure", code, body)
		}
	})
	t.Run("DISABLE accepts plaintext, without the forged identity", func(t *testing.T) {
		code, body, err := direct(d, false, nil)
		if want := "disable-0 got /direct HTTP/1.1 xfcc=\"\"\n"; err != nil || code != 200 || body != want {
			t.Errorf("got %d %q %v, want 200 %q", code, body, err, want)
		}
	})

	for _, e := range []*envoyRun{c, s, p, d, rogue} {
		if w := e.warnings(); len(w) > 0 {
			t.Errorf("%s logged warnings:\n%s", e.name(), strings.Join(w, "\n"))
		}
	}
}

// name is the pod name of e's proxy, which its app prints.
func (e *envoyRun) name() string { return e.pod }

// statAbove polls stat until it exceeds before, for up to 5 s, and returns its last value:
// Envoy counts a failed handshake on its worker thread, and the client may see the
// failure before the counter moves.
func statAbove(t *testing.T, e *envoyRun, re string, before int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := stat(t, e, re)
		if v > before || time.Now().After(deadline) {
			return v
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stat returns the sum of e's counters whose names match the regular expression re
// (anchored), from the admin API's text stats.
func stat(t *testing.T, e *envoyRun, re string) int {
	t.Helper()
	resp, err := e.client.Get(e.admin + "/stats?usedonly")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	match := regexp.MustCompile(`^(?:` + re + `)$`)
	sum := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok || !match.MatchString(name) {
			continue
		}
		v, err := strconv.Atoi(value)
		if err != nil {
			continue // a histogram or gauge text value, not a counter
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return sum
}

// distinctLoopbackIPs returns n different addresses from freeLoopbackIP.
func distinctLoopbackIPs(t *testing.T, n int) []string {
	t.Helper()
	seen := map[string]bool{}
	var out []string
	for range 20 * n {
		if len(out) == n {
			break
		}
		ip := freeLoopbackIP(t)
		if !seen[ip] {
			seen[ip] = true
			out = append(out, ip)
		}
	}
	if len(out) != n {
		t.Fatalf("only %d distinct free loopback addresses, want %d", len(out), n)
	}
	return out
}
