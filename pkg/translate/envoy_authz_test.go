package translate

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestEnvoyAuthz runs real Envoys on translated config with AuthorizationPolicies and
// sends them requests as mesh workloads would (mutual TLS with a workload certificate of
// the test CA, static secrets as in TestEnvoyMTLS), and as a plaintext client. It checks
// what authorization promises: an ALLOW policy lets its callers in and answers the
// others 403 naming the policy; a DENY policy wins over ALLOW and names itself; a denied
// gRPC call gets grpc-status 7 PERMISSION_DENIED; shadow policies block nothing and
// count their would-be denials; the mesh's default deny answers with its own body; a
// plaintext caller of a PERMISSIVE pod has no identity, so ALLOW rules with callers deny
// it; and the per-policy counters grow, in the admin API and in its Prometheus output.
func TestEnvoyAuthz(t *testing.T) {
	envoyBinary(t)
	ips := distinctLoopbackIPs(t, 4)
	const td = DefaultTrustDomain
	app := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s got %s %s\n", name, r.Method, r.URL.Path)
		})
	}
	app3 := &mesh.Service{Namespace: "default", Name: "app-3", MTLS: mesh.MTLSPermissive, ServiceAccounts: []string{"app-3"},
		Endpoints: []mesh.Endpoint{{IP: ips[0], Pod: "app-3-0"}},
		Authz: []mesh.AuthzPolicy{
			{Namespace: "default", Name: "app-3-callers", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-1"}}}},
			{Namespace: "default", Name: "deny-admin", Action: mesh.AuthzDeny, Rules: []mesh.AuthzRule{{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/admin"}}}}},
			// Would deny app-1's /reports; shadow, so it only counts. Its dot reads as
			// '_' in stats, so that the policy stays a Prometheus label.
			{Namespace: "default", Name: "try-deny.reports", Action: mesh.AuthzDeny, Shadow: true, Rules: []mesh.AuthzRule{{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "Exact", Value: "/reports"}}}}},
			// Would let only app-2 in; shadow, so app-1 is let in and the would-be
			// denial counted.
			{Namespace: "default", Name: "try-app-2-only", Action: mesh.AuthzAllow, Shadow: true, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-2"}}}},
		},
	}
	app4 := &mesh.Service{Namespace: "default", Name: "app-4", ServiceAccounts: []string{"app-4"}, Endpoints: []mesh.Endpoint{{IP: ips[2], Pod: "app-4-0"}}}
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{app3, app4},
		Proxies: map[string]*mesh.Proxy{
			"default/app-3-0": {Namespace: "default", Name: "app-3-0", IP: ips[0], Services: []string{"default/app-3"}, ServiceAccount: "app-3", MTLS: mesh.MTLSPermissive},
			"default/app-4-0": {Namespace: "default", Name: "app-4-0", IP: ips[2], Services: []string{"default/app-4"}, ServiceAccount: "app-4", MTLS: mesh.MTLSStrict},
		},
	}
	ca := newTestCA(t, "mesh root")
	start := func(pod, ip, outIP string, opts Options) *envoyRun {
		chain, key := ca.issue(t, mesh.SPIFFEID(td, "default", strings.TrimSuffix(pod, "-0")))
		n := Node{ID: pod + ".default", PodNamespace: "default", PodName: pod, ListenIP: ip, OutboundIP: outIP}
		return startEnvoyWith(t, snap, n, opts, app(pod), func(b *bootstrapv3.Bootstrap) {
			withTestSecrets(t, b, chain, key, ca.pem)
		})
	}
	e3 := start("app-3-0", ips[0], ips[1], Options{})
	// The same snapshot, with the mesh denying by default: app-4 has no policy.
	e4 := start("app-4-0", ips[2], ips[3], Options{DefaultDeny: true})

	// call sends method path to e's inbound port as the workload of ServiceAccount sa
	// ("" for a plaintext client), over HTTP/2 when h2, with headers; it returns the
	// status, the body (for a gRPC answer without one, its grpc-message) and the
	// grpc-status.
	call := func(t *testing.T, e *envoyRun, sa, method, path string, h2 bool, headers ...[2]string) (int, string, string) {
		t.Helper()
		tr := &http.Transport{DisableKeepAlives: true}
		scheme := "http"
		if sa != "" {
			scheme = "https"
			chain, key := ca.issue(t, mesh.SPIFFEID(td, "default", sa))
			kp, err := tls.X509KeyPair(chain, key)
			if err != nil {
				t.Fatal(err)
			}
			tr.TLSClientConfig = &tls.Config{
				InsecureSkipVerify: true, // the callee's checks are under test, not the client's
				MinVersion:         tls.VersionTLS13,
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
					return &kp, nil
				},
			}
			tr.ForceAttemptHTTP2 = h2
		} else if h2 {
			t.Fatal("h2 needs TLS here")
		}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		req, err := http.NewRequestWithContext(e.ctx, method, scheme+"://"+e.inbound()+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range headers {
			req.Header.Add(h[0], h[1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if h2 && resp.ProtoMajor != 2 {
			t.Fatalf("spoke %s, want HTTP/2", resp.Proto)
		}
		// A trailers-only gRPC answer carries its status in the headers.
		grpcHeader := func(name string) string {
			if v := resp.Header.Get(name); v != "" {
				return v
			}
			return resp.Trailer.Get(name)
		}
		gs := grpcHeader("grpc-status")
		if gs != "" && len(b) == 0 {
			// The message is percent-encoded: https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md#responses
			msg, err := url.PathUnescape(grpcHeader("grpc-message"))
			if err != nil {
				t.Fatal(err)
			}
			return resp.StatusCode, msg, gs
		}
		return resp.StatusCode, string(b), gs
	}
	policyStat := func(prefix, policy, counter string) string {
		return `http\.inbound\.rbac\.` + prefix + `\.policy\.` + regexp.QuoteMeta(policy) + `\.` + counter
	}
	noAllow := fmt.Sprintf(NoAllowRuleBodyFormat, "default/app-3-callers")
	deniedAdmin := fmt.Sprintf(DeniedByPolicyBodyFormat, "default/deny-admin")

	for _, tc := range []struct {
		name       string
		e          *envoyRun
		sa, path   string
		wantCode   int
		wantBody   string
		grows      []string // counters that must grow
		stays      []string // counters that must not
		method     string
		wantStatus string // grpc-status, for gRPC calls
	}{
		{name: "ALLOW: the allowed caller gets in", e: e3, sa: "app-1", path: "/hello", wantCode: 200, wantBody: "app-3-0 got GET /hello\n",
			grows: []string{policyStat("allow", "default/app-3-callers", "allowed")}},
		{name: "ALLOW: another caller gets 403 naming the policy", e: e3, sa: "app-2", path: "/hello", wantCode: 403, wantBody: noAllow,
			grows: []string{`http\.inbound\.rbac\.allow\.denied`}, stays: []string{policyStat("allow", "default/app-3-callers", "allowed")}},
		{name: "ALLOW: a plaintext caller has no identity", e: e3, path: "/hello", wantCode: 403, wantBody: noAllow,
			grows: []string{`http\.inbound\.rbac\.allow\.denied`}},
		{name: "DENY wins over ALLOW", e: e3, sa: "app-1", path: "/admin/x", wantCode: 403, wantBody: deniedAdmin,
			grows: []string{policyStat("deny", "default/deny-admin", "denied"), `http\.inbound\.rbac\.deny\.denied`},
			stays: []string{policyStat("allow", "default/app-3-callers", "allowed")}},
		{name: "DENY path prefix spares other paths", e: e3, sa: "app-1", path: "/", wantCode: 200, wantBody: "app-3-0 got GET /\n"},
		{name: "DENY path prefix is whole elements", e: e3, sa: "app-1", path: "/administrator", wantCode: 200, wantBody: "app-3-0 got GET /administrator\n"},
		{name: "DENY path prefix after normalisation", e: e3, sa: "app-1", path: "/x/../admin//y", wantCode: 403, wantBody: deniedAdmin},
		{name: "shadow policies block nothing and count", e: e3, sa: "app-1", path: "/reports", wantCode: 200, wantBody: "app-3-0 got GET /reports\n",
			grows: []string{policyStat("deny", "default/try-deny_reports", "shadow_denied"), `http\.inbound\.rbac\.allow\.shadow_denied`, policyStat("allow", "default/app-3-callers", "allowed")}},
		{name: "shadow ALLOW counts whom it would let in", e: e3, sa: "app-2", path: "/", wantCode: 403, wantBody: noAllow,
			grows: []string{policyStat("allow", "default/try-app-2-only", "shadow_allowed")}},
		{name: "default deny", e: e4, sa: "app-1", path: "/", wantCode: 403, wantBody: DefaultDenyBody,
			grows: []string{`http\.inbound\.rbac\.allow\.denied`}},
		{name: "gRPC call denied: PERMISSION_DENIED", e: e3, sa: "app-2", path: "/pkg.Svc/Method", method: http.MethodPost, wantCode: 200, wantBody: noAllow, wantStatus: "7"},
		{name: "gRPC call denied by DENY: PERMISSION_DENIED", e: e3, sa: "app-1", path: "/admin/pkg.Svc/Method", method: http.MethodPost, wantCode: 200, wantBody: deniedAdmin, wantStatus: "7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]int{}
			for _, s := range append(tc.grows, tc.stays...) {
				before[s] = stat(t, tc.e, s)
			}
			method, grpc := tc.method, tc.wantStatus != ""
			if method == "" {
				method = http.MethodGet
			}
			var headers [][2]string
			if grpc {
				headers = append(headers, [2]string{"content-type", "application/grpc"}, [2]string{"te", "trailers"})
			}
			code, body, gs := call(t, tc.e, tc.sa, method, tc.path, grpc, headers...)
			if code != tc.wantCode || body != tc.wantBody || gs != tc.wantStatus {
				t.Errorf("got %d %q grpc-status %q, want %d %q grpc-status %q", code, body, gs, tc.wantCode, tc.wantBody, tc.wantStatus)
			}
			for _, s := range tc.grows {
				if after := stat(t, tc.e, s); after <= before[s] {
					t.Errorf("%s: %d -> %d, want it to grow", s, before[s], after)
				}
			}
			for _, s := range tc.stays {
				if after := stat(t, tc.e, s); after != before[s] {
					t.Errorf("%s: %d -> %d, want it unchanged", s, before[s], after)
				}
			}
		})
	}

	// A shadow policy's would-be denials are logged, one line each, and nothing else is:
	// the two shadow requests above (app-1's /reports, which both shadow policies would
	// deny) are, app-2's "/" (which try-app-2-only lets in) is not.
	t.Run("shadow denials are logged", func(t *testing.T) {
		want := ShadowLogPrefix + ` GET /reports caller=spiffe://cluster.local/ns/default/sa/app-1 shadow_deny=default/try-deny_reports shadow_allow=denied status=200`
		// lines returns the shadow log lines so far, without their start time.
		lines := func() []string {
			var out []string
			for _, l := range strings.Split(e3.logs.String(), "\n") {
				if i := strings.Index(l, ShadowLogPrefix); i >= 0 {
					f := strings.Fields(l[i+len(ShadowLogPrefix):])
					out = append(out, ShadowLogPrefix+" "+strings.Join(f[1:], " "))
				}
			}
			return out
		}
		var got []string
		// Envoy writes access logs out every 10 s (--file-flush-interval-msec).
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			got = lines()
			if slices.Contains(got, want) || time.Now().After(deadline) {
				break
			}
		}
		if !slices.Contains(got, want) {
			t.Errorf("no shadow log line %q in:\n%s", want, strings.Join(got, "\n"))
		}
		for _, l := range got {
			// app-1's other requests are would-be denials of try-app-2-only, and so is
			// the plaintext one; app-2's are let in by it.
			if strings.Contains(l, "sa/app-2 ") || !strings.Contains(l, "shadow_allow=denied") && !strings.Contains(l, "/reports") {
				t.Errorf("logged a request no shadow policy would deny: %s", l)
			}
		}
	})

	// The names the README gives for Prometheus: the policy is a label.
	t.Run("Prometheus names and labels", func(t *testing.T) {
		for _, want := range []string{
			`envoy_http_rbac_policy_allowed{envoy_rbac_policy_name="default/app-3-callers",envoy_rbac_http_prefix="allow",envoy_http_conn_manager_prefix="inbound"}`,
			`envoy_http_rbac_policy_denied{envoy_rbac_policy_name="default/deny-admin",envoy_rbac_http_prefix="deny",envoy_http_conn_manager_prefix="inbound"}`,
			`envoy_http_rbac_policy_shadow_denied{envoy_rbac_policy_name="default/try-deny_reports",envoy_rbac_http_prefix="deny",envoy_http_conn_manager_prefix="inbound"}`,
			`envoy_http_rbac_policy_shadow_allowed{envoy_rbac_policy_name="default/try-app-2-only",envoy_rbac_http_prefix="allow",envoy_http_conn_manager_prefix="inbound"}`,
			`envoy_http_rbac_denied{envoy_rbac_http_prefix="allow",envoy_http_conn_manager_prefix="inbound"}`,
			`envoy_http_rbac_shadow_denied{envoy_rbac_http_prefix="allow",envoy_http_conn_manager_prefix="inbound"}`,
		} {
			if v := promValue(t, e3, want); v < 1 {
				t.Errorf("%s = %d, want at least 1", want, v)
			}
		}
	})

	for _, e := range []*envoyRun{e3, e4} {
		if w := e.warnings(); len(w) > 0 {
			t.Errorf("%s logged warnings:\n%s", e.name(), strings.Join(w, "\n"))
		}
	}
}

// promValue returns the value of the series (name and labels, as Envoy prints them) in
// e's /stats/prometheus, -1 when absent.
func promValue(t *testing.T, e *envoyRun, series string) int {
	t.Helper()
	resp, err := e.client.Get(e.admin + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(string(withoutWorkloadTags(sc.Bytes())), series+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return -1
}

// TestEnvoyValidateAuthz has the real Envoy check the inbound route configuration with
// every construct of a policy (authzGoldenServices), and with the mesh's default deny.
func TestEnvoyValidateAuthz(t *testing.T) {
	envoy := envoyBinary(t)
	for _, tc := range []struct {
		name string
		opts Options
	}{{"policies", Options{}}, {"default-deny", Options{DefaultDeny: true}}} {
		t.Run(tc.name, func(t *testing.T) {
			services := authzGoldenServices()
			services[0].Endpoints = []mesh.Endpoint{{IP: "10.0.0.31", Pod: "app-3-0"}}
			snap := &mesh.Snapshot{Services: services, Proxies: map[string]*mesh.Proxy{
				"default/app-3-0": {Namespace: "default", Name: "app-3-0", IP: "10.0.0.31", Services: []string{"default/app-3"}, ServiceAccount: "app-3", MTLS: mesh.MTLSPermissive},
			}}
			tr, err := NewWithOptions(snap, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			n := Node{ID: "app-3-0.default", PodNamespace: "default", PodName: "app-3-0", ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
			base, err := Bootstrap(BootstrapOptions{PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, AppAddress: n.AppAddress, XDSAddress: "127.0.0.1:18000", XDSInsecure: true})
			if err != nil {
				t.Fatal(err)
			}
			envoyValidate(t, envoy, "json", inlined(t, base, mustProxy(t, tr, n)))
		})
	}
}
