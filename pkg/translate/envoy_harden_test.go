package translate

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// envoyRun is a real Envoy running one proxy's translated config (inlined, as in
// TestEnvoyRouting), with the app it fronts.
type envoyRun struct {
	pod      string // the proxy's pod name
	ip       string // the pod's address: inbound listener, endpoints
	outbound string // host:port of the outbound listener
	admin    string // base URL of the admin API
	logs     *bytes.Buffer
	client   *http.Client
	ctx      context.Context
}

// startEnvoy runs Envoy on n's config from snap, n.ListenIP being a free loopback
// address whose app is handler, and waits (bounded) for its listeners. Envoy logs at
// warning level, so that logs holds every warning it printed.
func startEnvoy(t *testing.T, snap *mesh.Snapshot, n Node, opts Options, handler http.Handler) *envoyRun {
	t.Helper()
	return startEnvoyWith(t, snap, n, opts, handler, nil)
}

// startEnvoyWith is startEnvoy with edit applied to the inlined bootstrap before Envoy
// starts (nil: none), e.g. to give the proxy its own workload certificate.
func startEnvoyWith(t *testing.T, snap *mesh.Snapshot, n Node, opts Options, handler http.Handler, edit func(*bootstrapv3.Bootstrap)) *envoyRun {
	t.Helper()
	envoy := envoyBinary(t)
	app := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, Protocols: &http.Protocols{}}
	// HTTP/1.1 and h2c: the sidecar speaks to its app the version the caller used.
	app.Protocols.SetHTTP1(true)
	app.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", net.JoinHostPort(n.ListenIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	n.AppAddress = ln.Addr().String()

	tr, err := NewWithOptions(snap, opts)
	if err != nil {
		t.Fatal(err)
	}
	p := mustProxy(t, tr, n)
	base, err := Bootstrap(BootstrapOptions{
		PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, OutboundIP: n.OutboundIP,
		AppAddress: n.AppAddress, XDSAddress: "127.0.0.1:18000", XDSInsecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := inlined(t, base, p)
	cfg.Admin.Address = socketAddress(n.ListenIP, 0)
	if edit != nil {
		edit(cfg)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(path, stableJSON(t, cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	adminPath := filepath.Join(dir, "admin-address")

	ctx, logs := runEnvoy(t, envoy, path, "--admin-address-path", adminPath)
	e := &envoyRun{
		pod:      n.PodName,
		ip:       n.ListenIP,
		outbound: net.JoinHostPort(n.OutboundIP, strconv.Itoa(mesh.OutboundPort)),
		logs:     logs,
		client:   &http.Client{Timeout: 5 * time.Second},
		ctx:      ctx,
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(adminPath)
		a := strings.TrimSpace(string(b))
		var errs []error
		if a == "" {
			errs = append(errs, fmt.Errorf("admin address not written yet"))
		}
		for _, addr := range []string{e.outbound, net.JoinHostPort(n.ListenIP, strconv.Itoa(mesh.InboundPort))} {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			c.Close()
		}
		if len(errs) == 0 {
			e.admin = "http://" + a
			return e
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("envoy not serving within 30s: %v", errs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// do sends a GET for rawPath (sent as is, not cleaned) to addr with headers, each
// header name given once per value.
func (e *envoyRun) do(t *testing.T, addr, rawPath string, headers ...[2]string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(e.ctx, http.MethodGet, "http://"+addr+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.URL.Opaque = rawPath // no client-side cleaning or escaping: Envoy sees rawPath
	for _, h := range headers {
		req.Header.Add(h[0], h[1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (e *envoyRun) inbound() string {
	return net.JoinHostPort(e.ip, strconv.Itoa(mesh.InboundPort))
}

// warnings returns Envoy's log lines at warning level or above.
func (e *envoyRun) warnings() []string {
	var out []string
	s := bufio.NewScanner(bytes.NewReader(e.logs.Bytes()))
	for s.Scan() {
		if l := s.Text(); regexp.MustCompile(`\]\[(warning|error|critical)\]`).MatchString(l) {
			out = append(out, l)
		}
	}
	return out
}

// TestEnvoyHardening runs a real Envoy on one proxy's config and checks what the
// sidecar promises beyond routing: per-Service stat names, a 503 that names a Service
// without endpoints, x-envoy-* headers from callers ignored, normalised paths, the
// forms and rules of the "service" header, an outbound listener on its own address,
// and a start-up with no warning.
func TestEnvoyHardening(t *testing.T) {
	ip := freeLoopbackIP(t)
	outIP := freeLoopbackIP(t)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		fmt.Fprintf(w, "app got %s %s service=%q\n", r.Method, r.URL.RawPath+"|"+r.URL.Path, r.Header.Values("service"))
	})
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{
			// The callee: a 5s mesh-timeout, far above the app's 300ms on /slow.
			{Namespace: "default", Name: "app-1", Policy: mesh.Policy{Timeout: 5 * time.Second}, Endpoints: []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}},
			// No ready endpoint.
			{Namespace: "default", Name: "empty"},
			// An HTTPRoute whose only rule matches the exact path /a/c: a request for
			// /a//b/../c reaches it only if the outbound listener normalised the path.
			{Namespace: "default", Name: "routed", Endpoints: []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}, Routes: []mesh.RouteRule{
				{Route: "default/routed", Path: mesh.PathMatch{Type: "Exact", Value: "/a/c"}, Backends: []mesh.Backend{{Namespace: "default", Name: "app-1", Weight: 1, Valid: true}}},
			}},
			{Namespace: "other", Name: "app-9", Endpoints: []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}},
		},
		// PERMISSIVE: the test sends plaintext straight to the inbound listener, while
		// requests through the outbound listener loop back to it over mutual TLS (the
		// Services are STRICT), so both chains' connection managers are exercised.
		Proxies: map[string]*mesh.Proxy{"default/app-1-0": {Namespace: "default", Name: "app-1-0", IP: ip, Services: []string{"default/app-1"}, MTLS: mesh.MTLSPermissive}},
	}
	n := Node{ID: "app-1-0.default", PodNamespace: "default", PodName: "app-1-0", ListenIP: ip, OutboundIP: outIP}
	e := startEnvoy(t, snap, n, Options{ClusterDomain: "cluster.local"}, app)
	svc := func(v string) [2]string { return [2]string{"service", v} }

	t.Run("outbound listener not on the pod address", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(mesh.OutboundPort)), time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("%s:%d accepted a connection; the outbound listener must be on %s only", ip, mesh.OutboundPort, outIP)
		}
	})

	t.Run("service header forms", func(t *testing.T) {
		ok := func(service string) string {
			return "app got GET |/hello service=[\"" + service + "\"]\n"
		}
		for _, tc := range []struct {
			name     string
			headers  [][2]string
			wantCode int
			wantBody string
		}{
			{"name", [][2]string{svc("app-1")}, 200, ok("app-1")},
			{"name.ns", [][2]string{svc("app-1.default")}, 200, ok("app-1.default")},
			{"name.ns.svc", [][2]string{svc("app-1.default.svc")}, 200, ok("app-1.default.svc")},
			{"name.ns.svc.domain", [][2]string{svc("app-1.default.svc.cluster.local")}, 200, ok("app-1.default.svc.cluster.local")},
			{"other namespace, full DNS name", [][2]string{svc("app-9.other.svc.cluster.local")}, 200, ok("app-9.other.svc.cluster.local")},
			{"upper case", [][2]string{svc("App-1.DEFAULT.Svc.Cluster.Local")}, 200, ok("App-1.DEFAULT.Svc.Cluster.Local")},
			{"upper case short name", [][2]string{svc("APP-1")}, 200, ok("APP-1")},
			{"short name of another namespace", [][2]string{svc("app-9")}, 404, UnknownServiceBody},
			{"another cluster domain", [][2]string{svc("app-1.default.svc.example.com")}, 404, UnknownServiceBody},
			{"longer namespace", [][2]string{svc("app-1.defaultx")}, 404, UnknownServiceBody},
			{"longer namespace, svc", [][2]string{svc("app-1.defaultx.svc")}, 404, UnknownServiceBody},
			{"not svc", [][2]string{svc("app-1.default.svcx")}, 404, UnknownServiceBody},
			{"pod DNS form", [][2]string{svc("app-1.default.pod.cluster.local")}, 404, UnknownServiceBody},
			{"trailing dot", [][2]string{svc("app-1.default.")}, 404, UnknownServiceBody},
			{"empty value", [][2]string{svc("")}, 404, MissingServiceHeaderBody},
			{"repeated, same value", [][2]string{svc("app-1"), svc("app-1")}, 404, RepeatedServiceHeaderBody},
			{"repeated, two services", [][2]string{svc("app-1"), svc("app-9.other")}, 404, RepeatedServiceHeaderBody},
			{"missing", nil, 404, MissingServiceHeaderBody},
		} {
			t.Run(tc.name, func(t *testing.T) {
				code, body := e.do(t, e.outbound, "/hello", tc.headers...)
				if code != tc.wantCode || body != tc.wantBody {
					t.Errorf("got %d %q, want %d %q", code, body, tc.wantCode, tc.wantBody)
				}
			})
		}
	})

	t.Run("no ready endpoint: 503 naming the service", func(t *testing.T) {
		code, body := e.do(t, e.outbound, "/", svc("empty"))
		if want := fmt.Sprintf(NoEndpointBodyFormat, "default/empty"); code != 503 || body != want {
			t.Errorf("got %d %q, want 503 %q", code, body, want)
		}
	})

	t.Run("x-envoy headers from a caller are ignored", func(t *testing.T) {
		// Whatever x-forwarded-for claims: Envoy takes a request whose XFF holds one
		// internal address as internal, and an internal request's x-envoy-* as trusted.
		for _, xff := range []string{"", "10.0.0.1", "127.0.0.1", "::1", ip} {
			h := [][2]string{{"x-envoy-upstream-rq-timeout-ms", "1"}, {"x-envoy-max-retries", "0"}}
			if xff != "" {
				h = append(h, [2]string{"x-forwarded-for", xff})
			}
			code, body := e.do(t, e.inbound(), "/slow", h...)
			if code != 200 {
				t.Errorf("inbound with x-envoy-upstream-rq-timeout-ms: 1 and x-forwarded-for %q to a 300ms app under a 5s mesh-timeout: got %d %q, want 200", xff, code, body)
			}
		}
		// Nor on outbound: policy comes from Kubernetes objects, not from request
		// headers, whoever sends them.
		code, body := e.do(t, e.outbound, "/slow", svc("app-1"), [2]string{"x-envoy-upstream-rq-timeout-ms", "1"}, [2]string{"x-forwarded-for", "127.0.0.1"})
		if code != 200 {
			t.Errorf("outbound with x-envoy-upstream-rq-timeout-ms: 1: got %d %q, want 200", code, body)
		}
	})

	t.Run("path normalisation", func(t *testing.T) {
		for _, tc := range []struct {
			name, addr, path string
			headers          [][2]string
			want             string
		}{
			{"inbound: dot segments and double slashes", e.inbound(), "/a//b/../c", nil, "|/a/c"},
			{"inbound: escaped slash", e.inbound(), "/x%2Fy%2f", nil, "|/x/y/"},
			{"outbound: the HTTPRoute sees the normalised path", e.outbound, "/a//b/./../c", [][2]string{svc("routed")}, "|/a/c"},
			{"outbound: escaped slashes too", e.outbound, "/a%2Fc", [][2]string{svc("routed")}, "|/a/c"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				code, body := e.do(t, tc.addr, tc.path, tc.headers...)
				if code != 200 || !strings.HasPrefix(body, "app got GET "+tc.want+" ") {
					t.Errorf("GET %s: got %d %q, want 200 with the app seeing %q", tc.path, code, body, tc.want)
				}
			})
		}
	})

	t.Run("stats per service under its name", func(t *testing.T) {
		for _, s := range []string{"app-1", "app-9.other"} {
			if code, body := e.do(t, e.outbound, "/", svc(s)); code != 200 {
				t.Fatalf("service %s: %d %q", s, code, body)
			}
		}
		resp, err := e.client.Get(e.admin + "/stats/prometheus")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		// The workload tags are TestEnvoyGoldenSignalLabels's business.
		b = withoutWorkloadTags(b)
		for _, name := range []string{"default/app-1", "other/app-9", "default/empty"} {
			want := regexp.MustCompile(`(?m)^envoy_cluster_upstream_rq_total\{envoy_cluster_name="` + regexp.QuoteMeta(name) + `"\} [1-9]`)
			if name == "default/empty" {
				want = regexp.MustCompile(`(?m)^envoy_cluster_upstream_cx_total\{envoy_cluster_name="` + regexp.QuoteMeta(name) + `"\} `)
			}
			if !want.Match(b) {
				t.Errorf("no series %s in /stats/prometheus:\n%s", want, grepLines(b, "envoy_cluster_upstream_rq_total"))
			}
		}
	})

	t.Run("no warning in the log", func(t *testing.T) {
		if w := e.warnings(); len(w) > 0 {
			t.Errorf("Envoy logged at warning level or above:\n%s", strings.Join(w, "\n"))
		}
	})
}

// grepLines returns the lines of b that contain s.
func grepLines(b []byte, s string) string {
	var out []string
	for l := range strings.SplitSeq(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestEnvoyLongestClusterDomain has the real Envoy accept the outbound routes built with
// the longest cluster domain bearkong takes: the header check's regex embeds it, and
// Envoy rejects a regex whose RE2 program is over its size limit.
func TestEnvoyLongestClusterDomain(t *testing.T) {
	envoy := envoyBinary(t)
	domain := strings.Repeat("a", 19) + "." + strings.Repeat("b", 20)
	if len(domain) != MaxClusterDomainLength {
		t.Fatalf("domain of %d characters, want %d", len(domain), MaxClusterDomainLength)
	}
	tr, err := NewWithOptions(sampleSnapshot(), Options{ClusterDomain: domain})
	if err != nil {
		t.Fatal(err)
	}
	base, err := Bootstrap(BootstrapOptions{PodName: nodeApp1A.PodName, PodNamespace: nodeApp1A.PodNamespace, XDSAddress: "127.0.0.1:18000", XDSInsecure: true})
	if err != nil {
		t.Fatal(err)
	}
	envoyValidate(t, envoy, "json", inlined(t, base, mustProxy(t, tr, nodeApp1A)))
}

func TestClusterDomain(t *testing.T) {
	for _, tc := range []struct {
		domain  string
		wantErr bool
	}{
		{"cluster.local", false},
		{"corp", false},
		{strings.Repeat("a", 19) + "." + strings.Repeat("b", 20), false},
		{strings.Repeat("a", 20) + "." + strings.Repeat("b", 20), true},
		{"Cluster.Local", true},
		{"cluster.local.", true},
		{"cluster..local", true},
		{"*.local", true},
	} {
		t.Run(tc.domain, func(t *testing.T) {
			_, err := NewWithOptions(&mesh.Snapshot{}, Options{ClusterDomain: tc.domain})
			if (err != nil) != tc.wantErr {
				t.Fatalf("NewWithOptions(cluster domain %q) error = %v, want error: %t", tc.domain, err, tc.wantErr)
			}
		})
	}
}
