package controlplane_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/discovery"
)

// TestDebugAddr checks the pprof listener: /debug/pprof/heap answers with a heap profile
// on DebugAddr, the profiles are not on HTTPAddr (which a Service may expose), and the
// listener goes away with the rest when Serve returns.
func TestDebugAddr(t *testing.T) {
	reg := controlplane.NewRegistry()
	d := discovery.New(fake.NewClientset(service("app-1")), discovery.Options{QuietPeriod: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, Registerer: reg})
	cp := controlplane.New(d, controlplane.Options{XDSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", DebugAddr: "127.0.0.1:0", Registry: reg, DrainTimeout: time.Second})
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	debugAddr := cp.DebugAddr()
	if debugAddr == "" {
		t.Fatal("no debug address after Listen with DebugAddr set")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()

	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("http://" + debugAddr + "/debug/pprof/heap?debug=1")
	if code != http.StatusOK || !strings.HasPrefix(body, "heap profile: ") {
		t.Errorf("GET /debug/pprof/heap?debug=1 on the debug address: %d %.200q, want 200 and a heap profile", code, body)
	}
	if code, body := get("http://" + debugAddr + "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Errorf("GET /debug/pprof/ on the debug address: %d %.200q, want the index of profiles", code, body)
	}
	if code, _ := get("http://" + cp.HTTPAddr() + "/debug/pprof/heap?debug=1"); code != http.StatusNotFound {
		t.Errorf("GET /debug/pprof/heap on the HTTP address: %d, want 404 (profiles only on the debug address)", code)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return within 5s of cancel")
	}
	if c, err := net.DialTimeout("tcp", debugAddr, time.Second); err == nil {
		c.Close()
		t.Error("the debug address still accepts connections after Serve returned")
	}
}

// TestNoDebugAddr checks that an empty DebugAddr opens no listener.
func TestNoDebugAddr(t *testing.T) {
	cp := controlplane.New(discovery.New(fake.NewClientset(), discovery.Options{}), controlplane.Options{XDSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0"})
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = cp.Serve(ctx)
	if got := cp.DebugAddr(); got != "" {
		t.Errorf("DebugAddr() = %q with no DebugAddr option, want empty", got)
	}
}
