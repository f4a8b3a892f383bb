package translate

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// TestEnvoyScopedRoutes runs a real Envoy on a proxy's config, its outbound routes as
// scopes (SRDS) with one route configuration per Service, and holds the "service"
// header contract (README, "The service header") through it: every form of a Service's
// name, in any case and with surrounding blanks, reaches that Service; a short name
// reaches only the proxy's own namespace; every malformed, missing, empty or repeated
// header gets its readable 404; an HTTPRoute's own 404 still comes from the Service's
// routes; and the scope key header is the proxy's own: a client cannot pick a scope
// with it, and the app never sees it.
func TestEnvoyScopedRoutes(t *testing.T) {
	envoy := envoyBinary(t)
	ip := freeLoopbackIP(t)
	outIP := freeLoopbackIP(t)

	app := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "app got %s service=%q key=%q\n", r.URL.Path, r.Header.Values("service"), r.Header.Get(ScopeKeyHeader))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	ep := []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}
	onlyV2 := []mesh.RouteRule{{Route: "other/app-1", Rule: 0, Path: mesh.PathMatch{Type: "PathPrefix", Value: "/v2"},
		Backends: []mesh.Backend{{Namespace: "other", Name: "app-1", Weight: 1, Valid: true}}}}
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{
			{Namespace: "default", Name: "app-1", Endpoints: ep},
			// Same short name in another namespace; its HTTPRoute only takes /v2, so
			// its own 404 tells it apart from default/app-1.
			{Namespace: "other", Name: "app-1", Endpoints: ep, Routes: onlyV2},
			{Namespace: "other", Name: "app-9", Endpoints: ep},
		},
		Proxies: map[string]*mesh.Proxy{"default/app-1-0": {Namespace: "default", Name: "app-1-0", IP: ip, Services: []string{"default/app-1"}, MTLS: mesh.MTLSPermissive}},
	}
	n := Node{ID: "app-1-0.default", PodNamespace: "default", PodName: "app-1-0", ListenIP: ip, OutboundIP: outIP, AppAddress: ln.Addr().String()}
	p := mustProxy(t, mustNew(t, snap), n)
	out, ok := p.Views[resource.Listener].Get(OutboundListenerName)
	if !ok || hcmOf(t, unpack(t, out.Any).(*listenerv3.Listener)).GetScopedRoutes().GetScopedRds() == nil {
		t.Fatal("the outbound listener does not take its routes from SRDS")
	}
	base, err := Bootstrap(BootstrapOptions{
		PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, OutboundIP: n.OutboundIP,
		AppAddress: n.AppAddress, XDSAddress: "127.0.0.1:18000", XDSInsecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := inlined(t, base, p)
	cfg.Admin.Address = socketAddress(ip, 0)
	path := filepath.Join(t.TempDir(), "envoy.json")
	if err := os.WriteFile(path, stableJSON(t, cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, _ := runEnvoy(t, envoy, path)
	outbound := net.JoinHostPort(outIP, strconv.Itoa(mesh.OutboundPort))

	// send writes one raw HTTP/1.1 request with the given header lines, so that a
	// test can send what Go's client would tidy up (blanks around a value, a repeated
	// header), and reads the response.
	send := func(path string, headers ...string) (int, string, error) {
		c, err := net.DialTimeout("tcp", outbound, 5*time.Second)
		if err != nil {
			return 0, "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		req := "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
		for _, h := range headers {
			req += h + "\r\n"
		}
		if _, err := io.WriteString(c, req+"\r\n"); err != nil {
			return 0, "", err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, err := send("/"); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("envoy not serving within 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}

	got := func(values ...string) string {
		return fmt.Sprintf("app got /hello service=%q key=\"\"\n", values)
	}
	noRule := "bearkong: no rule of the HTTPRoutes attached to service other/app-1 matches this request\n"
	for _, tc := range []struct {
		name     string
		headers  []string
		wantCode int
		wantBody string
	}{
		{"short name", []string{"service: app-1"}, 200, got("app-1")},
		{"name.namespace", []string{"service: app-1.default"}, 200, got("app-1.default")},
		{"name.namespace.svc", []string{"service: app-1.default.svc"}, 200, got("app-1.default.svc")},
		{"full DNS name", []string{"service: app-1.default.svc.cluster.local"}, 200, got("app-1.default.svc.cluster.local")},
		{"other namespace", []string{"service: app-9.other"}, 200, got("app-9.other")},
		{"other namespace .svc", []string{"service: app-9.other.svc"}, 200, got("app-9.other.svc")},
		{"other namespace full DNS name", []string{"service: app-9.other.svc.cluster.local"}, 200, got("app-9.other.svc.cluster.local")},
		{"mixed case short name", []string{"service: App-1"}, 200, got("App-1")},
		{"mixed case full name", []string{"service: App-9.Other.SVC"}, 200, got("App-9.Other.SVC")},
		{"capitals", []string{"service: APP-9.OTHER.SVC.CLUSTER.LOCAL"}, 200, got("APP-9.OTHER.SVC.CLUSTER.LOCAL")},
		{"blanks around the value", []string{"service: \t app-1.default  "}, 200, got("app-1.default")},
		{"header name in capitals", []string{"SERVICE: app-1"}, 200, got("app-1")},
		{"same short name, other namespace", []string{"service: app-1.other"}, 404, noRule},
		{"the key header is not the client's", []string{"service: app-1", ScopeKeyHeader + ": app-9.other"}, 200, got("app-1")},
		{"short name of another namespace", []string{"service: app-9"}, 404, UnknownServiceBody},
		{"unknown service", []string{"service: nope"}, 404, UnknownServiceBody},
		{"unknown namespace", []string{"service: app-1.nope"}, 404, UnknownServiceBody},
		{"another cluster domain", []string{"service: app-9.other.svc.cluster.remote"}, 404, UnknownServiceBody},
		{"not .svc", []string{"service: app-9.other.pod"}, 404, UnknownServiceBody},
		{"trailing dot", []string{"service: app-9.other."}, 404, UnknownServiceBody},
		{"bad characters", []string{"service: app_1"}, 404, UnknownServiceBody},
		{"a key header alone", []string{ScopeKeyHeader + ": app-1.default"}, 404, MissingServiceHeaderBody},
		{"missing", nil, 404, MissingServiceHeaderBody},
		{"empty", []string{"service:"}, 404, MissingServiceHeaderBody},
		{"blank", []string{"service:    "}, 404, MissingServiceHeaderBody},
		{"repeated, same value", []string{"service: app-1", "service: app-1"}, 404, RepeatedServiceHeaderBody},
		{"repeated, first unknown", []string{"service: nope", "service: app-1"}, 404, RepeatedServiceHeaderBody},
		{"repeated, one empty", []string{"service: app-1", "service:"}, 404, RepeatedServiceHeaderBody},
		{"comma", []string{"service: app-1,app-9.other"}, 404, RepeatedServiceHeaderBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := send("/hello", tc.headers...)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode || body != tc.wantBody {
				t.Errorf("%s: got %d %q, want %d %q", strings.Join(tc.headers, " / "), code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
}
