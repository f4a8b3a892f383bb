package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// The sidecar trusts only what it must: its outbound listener is the pod's own, callers
// cannot override policy with x-envoy-* headers, and it starts without a warning.

// TestOutboundListenerIsPodLocal: from a process that is not the pod (this test), the
// pod's address refuses connections on the outbound port, as it does in a real pod whose
// outbound listener is on 127.0.0.1; the pod's own loopback address serves it.
func TestOutboundListenerIsPodLocal(t *testing.T) {
	m := sharedMesh(t)
	for _, p := range m.Pods() {
		t.Run(p.Name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(p.IP, strconv.Itoa(mesh.OutboundPort)), 2*time.Second)
			if err == nil {
				c.Close()
				t.Fatalf("%s:%d accepted a connection: the outbound listener is a relay into the mesh for anyone", p.IP, mesh.OutboundPort)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("%s:%d: %v, want connection refused", p.IP, mesh.OutboundPort, err)
			}
			status, body, err := m.Get(ctxT(t, 10*time.Second), p.Name, "app-1")
			if err != nil || status != http.StatusOK {
				t.Fatalf("through %s: %d %s %v", p.OutboundURL(), status, body, err)
			}
		})
	}
}

// TestCallerCannotShortenCalleeTimeout: x-envoy-upstream-rq-timeout-ms: 1 from a caller
// does not cut a request that the callee's mesh-timeout allows, whether it comes through
// the caller's sidecar or straight to the callee's inbound port.
func TestCallerCannotShortenCalleeTimeout(t *testing.T) {
	m := sharedMesh(t)
	// PERMISSIVE, so that a plaintext client can reach the inbound port at all (STRICT
	// refuses it before any HTTP: TestPlaintextClientAndModes); the timeout headers are
	// then what is under test.
	withService(t, m, "patient", map[string]string{"mesh-timeout": "5s", "mesh-mtls": "PERMISSIVE"}, map[string]string{"LATENCY": "300ms"})
	ctx := ctxT(t, 60*time.Second)
	if err := m.WaitReachable(ctx, 30*time.Second, "app-1-0", "patient"); err != nil {
		t.Fatal(err)
	}
	callee := m.PodsOf("patient")[0]
	for _, tc := range []struct {
		name, url string
		headers   []string
	}{
		{"through the caller's sidecar", m.PodsOf("app-1")[0].OutboundURL(), []string{mesh.ServiceHeader, "patient"}},
		{"to the callee's inbound port", "http://" + callee.InboundAddr() + "/", nil},
		{"to the callee's inbound port, claiming an internal x-forwarded-for", "http://" + callee.InboundAddr() + "/", []string{"x-forwarded-for", "10.0.0.1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, tc.url, nil)
			req.Header.Set("x-envoy-upstream-rq-timeout-ms", "1")
			for i := 0; i+1 < len(tc.headers); i += 2 {
				req.Header.Set(tc.headers[i], tc.headers[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			a, _ := localmesh.ParseAnswer(body)
			if resp.StatusCode != http.StatusOK || a.Name != "patient" {
				t.Fatalf("got %d %q, want 200 from patient (300ms under a 5s mesh-timeout)", resp.StatusCode, body)
			}
		})
	}
}

// TestEnvoyStartsWithoutWarnings: a new pod's Envoy, run with the bootstrap of `bearkong
// bootstrap` and configured by bearkong, logs nothing at warning level or above (the
// local mesh runs Envoy with --log-level warn, so its log holds exactly those lines).
func TestEnvoyStartsWithoutWarnings(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "quiet", nil, nil)
	ctx := ctxT(t, 60*time.Second)
	if err := m.WaitReachable(ctx, 30*time.Second, "quiet-0", "app-1"); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(m.EnvoyLog("quiet-0"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var warnings []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		if l := s.Text(); strings.Contains(l, "][warning][") || strings.Contains(l, "][error][") || strings.Contains(l, "][critical][") {
			warnings = append(warnings, l)
		}
	}
	if len(warnings) > 0 {
		t.Fatalf("Envoy logged at warning level or above:\n%s", strings.Join(warnings, "\n"))
	}
}

// TestServiceHeaderDNSForms: the names users copy from Kubernetes DNS reach the Service.
func TestServiceHeaderDNSForms(t *testing.T) {
	m := sharedMesh(t)
	ctx := ctxT(t, 30*time.Second)
	for _, name := range []string{"app-3", "app-3.default", "app-3.default.svc", "app-3.default.svc.cluster.local", "App-3.Default.SVC.Cluster.Local"} {
		t.Run(name, func(t *testing.T) {
			status, who, _, err := get(ctx, m, "app-1-0", name, "/")
			if err != nil || status != http.StatusOK || who != "app-3" {
				t.Fatalf("service: %s: %d %q %v, want 200 from app-3", name, status, who, err)
			}
		})
	}
	status, body, _, err := get(ctx, m, "app-1-0", "app-3.default.svc.cluster.remote", "/")
	if err != nil || status != http.StatusNotFound || body+"\n" != translate.UnknownServiceBody {
		t.Fatalf("another cluster domain: %d %q %v, want 404 %q", status, body, err, translate.UnknownServiceBody)
	}
}

// TestNoReadyEndpointNamesTheService: a meshed Service without a ready endpoint answers
// 503 with a body that names it, not Envoy's bare "no healthy upstream".
func TestNoReadyEndpointNamesTheService(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "lonely", nil)
	want := fmt.Sprintf(translate.NoEndpointBodyFormat, m.Namespace()+"/lonely")
	var status int
	var body string
	err := localmesh.Eventually(ctxT(t, 60*time.Second), 30*time.Second, func(ctx context.Context) error {
		var err error
		if status, body, _, err = get(ctx, m, "app-2-0", "lonely", "/"); err != nil {
			return err
		}
		if status != http.StatusServiceUnavailable || body+"\n" != want {
			return fmt.Errorf("got %d %q, want 503 %q", status, body, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
