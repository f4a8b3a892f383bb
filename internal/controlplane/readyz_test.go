package controlplane_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/discovery"
)

// outageSource is real discovery (over a fake clientset, which cannot go away) whose
// API health the test sets: pkg/discovery's TestRecoveryAfterAPIServerOutage proves
// against a real API server that APIUnreachableSince reports an outage; this proves
// what /readyz makes of it.
type outageSource struct {
	*discovery.Discovery
	mu    sync.Mutex
	since time.Time
	err   error
}

func (s *outageSource) APIUnreachableSince() (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.since, s.err
}

func (s *outageSource) set(since time.Time, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.since, s.err = since, err
}

// TestReadyzShowsAnUnreachableAPI: a replica with a config stays ready (200) while the
// Kubernetes API is unreachable, and its /readyz body says since when and why; /healthz
// does not change.
func TestReadyzShowsAnUnreachableAPI(t *testing.T) {
	client := fake.NewClientset(service("app-1"), pod("app-1", 0, "10.0.0.1"), slice("app-1", "10.0.0.1"))
	reg := controlplane.NewRegistry()
	src := &outageSource{Discovery: discovery.New(client, discovery.Options{QuietPeriod: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, Registerer: reg})}
	cp := controlplane.New(src, controlplane.Options{XDSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Registry: reg,
		DrainTimeout: time.Second, Certificates: testCertificates(t)})
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + cp.HTTPAddr() + path)
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
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if code, _ := get("/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz not 200 within 10s")
		}
	}

	since := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		since      time.Time
		err        error
		wantReadyz []string // lines of the body, in order; the first is exact, the others prefixes
	}{
		{"reachable", time.Time{}, nil, []string{"ok"}},
		{"unreachable", since, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused"),
			[]string{"ok", "Kubernetes API unreachable since 2026-12-01T08:00:00Z ("}},
		{"reachable again", time.Time{}, nil, []string{"ok"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src.set(tt.since, tt.err)
			code, body := get("/readyz")
			if code != http.StatusOK {
				t.Errorf("/readyz %d %q, want 200", code, body)
			}
			lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
			if len(lines) != len(tt.wantReadyz) || lines[0] != tt.wantReadyz[0] {
				t.Fatalf("/readyz body %q, want lines %q", body, tt.wantReadyz)
			}
			for i, want := range tt.wantReadyz[1:] {
				if !strings.HasPrefix(lines[i+1], want) {
					t.Errorf("/readyz line %q, want it to begin %q", lines[i+1], want)
				}
			}
			if tt.err != nil && !strings.Contains(body, tt.err.Error()+"; serving the last config built") {
				t.Errorf("/readyz body %q does not say why (%v) and that the last config is served", body, tt.err)
			}
			if code, body := get("/healthz"); code != http.StatusOK || body != "ok\n" {
				t.Errorf("/healthz %d %q, want 200 ok", code, body)
			}
		})
	}
}
