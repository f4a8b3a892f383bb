package translate

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// TestEnvoyRoutingOverIPv6 runs the config of a pod in an IPv6 single-stack cluster
// through a real Envoy: listeners on an IPv6 address (what LISTEN_IP gives the sidecar)
// and a Service whose endpoint is an IPv6 address (discovery's primary family). A request
// goes out through the outbound listener, to the endpoint's inbound listener over IPv6,
// and to the app.
//
// The only IPv6 loopback address is ::1, so concurrent runs of this test (several
// checkouts on one machine) take turns through a lock file rather than collide on its
// port 8000.
func TestEnvoyRoutingOverIPv6(t *testing.T) {
	envoy := envoyBinary(t)
	const ip = "::1"

	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "bearkong-translate-ipv6.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)

	app := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "app got %s from %s\n", r.URL.Path, r.RemoteAddr)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	snap := &mesh.Snapshot{
		Services: []*mesh.Service{{Namespace: "default", Name: "app-6", Endpoints: []mesh.Endpoint{{IP: ip, Pod: "app-6-0"}}}},
		Proxies:  map[string]*mesh.Proxy{"default/app-6-0": {Namespace: "default", Name: "app-6-0", IP: ip, Services: []string{"default/app-6"}}},
	}
	n := Node{ID: "app-6-0.default", PodNamespace: "default", PodName: "app-6-0", ListenIP: ip, AppAddress: ln.Addr().String()}
	p := mustProxy(t, mustNew(t, snap), n)
	base, err := Bootstrap(BootstrapOptions{
		PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, AppAddress: n.AppAddress,
		XDSAddress: "127.0.0.1:18000", XDSInsecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := inlined(t, base, p)
	cfg.Admin.Address = socketAddress(ip, 0)
	// Send the request to wherever the outbound listener binds, whatever address family.
	outbound := ""
	for _, l := range cfg.GetStaticResources().GetListeners() {
		if l.GetName() == OutboundListenerName {
			sa := l.GetAddress().GetSocketAddress()
			outbound = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		}
	}
	if outbound == "" {
		t.Fatal("no outbound listener")
	}
	path := filepath.Join(t.TempDir(), "envoy.json")
	if err := os.WriteFile(path, stableJSON(t, cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, _ := runEnvoy(t, envoy, path)

	client := &http.Client{Timeout: 5 * time.Second}
	var code int
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+outbound+"/v6", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(mesh.ServiceHeader, "app-6")
		resp, err := client.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			code, body, err = resp.StatusCode, string(b), rerr
		}
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("no 200 through %s within 30s: %d %q %v", outbound, code, body, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The app saw the request come from the inbound listener's side over IPv6.
	if want := "app got /v6 from [::1]:"; len(body) < len(want) || body[:len(want)] != want {
		t.Errorf("body %q, want it to start with %q", body, want)
	}
}
