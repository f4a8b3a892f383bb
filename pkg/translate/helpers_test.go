package translate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ with the current output")

// sampleSnapshot is the mesh of the golden files: three services in two namespaces, one
// with two endpoints, one with none, and a targetPort that is not the sidecar's port;
// app-1 is STRICT (unset), app-2 PERMISSIVE with two ServiceAccounts, and app-3, with
// no endpoint and so no known ServiceAccount, speaks HTTP/2.
// Every call returns a fresh, equal snapshot.
func sampleSnapshot() *mesh.Snapshot {
	return &mesh.Snapshot{
		Services: []*mesh.Service{
			{
				Namespace:       "default",
				Name:            "app-1",
				Annotations:     map[string]string{"mesh-timeout": "2s"},
				Policy:          mesh.Policy{Timeout: 2 * time.Second},
				Ports:           []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "9090", Protocol: "TCP"}},
				Endpoints:       []mesh.Endpoint{{IP: "10.0.0.11", Pod: "app-1-a"}, {IP: "10.0.0.12", Pod: "app-1-b"}},
				ServiceAccounts: []string{"app-1"},
			},
			{
				Namespace: "default",
				Name:      "app-2",
				Ports:     []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "8000", Protocol: "TCP"}},
				Endpoints: []mesh.Endpoint{{IP: "10.0.0.21", Pod: "app-2-a"}},
				// Migrating to mTLS: its callers use it, its pods accept plaintext too.
				MTLS:            mesh.MTLSPermissive,
				ServiceAccounts: []string{"app-2", "app-2-canary"},
				// Every destination policy, so that the golden files cover them.
				Policy: mesh.Policy{
					Outlier:        mesh.OutlierDetection{Enabled: true, Consecutive5xx: 3, Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 50},
					MaxConnections: 100, MaxPendingRequests: 10, MaxRequests: 200,
				},
				// HTTPRoute rules in precedence order: every match kind, a canary split with
				// a timeout and retries, a per-try timeout, and an invalid backend.
				Routes: []mesh.RouteRule{
					{Route: "default/app-2", Rule: 1, Path: mesh.PathMatch{Type: "Exact", Value: "/healthz"}, Method: "GET",
						Backends: []mesh.Backend{{Namespace: "default", Name: "app-2", Weight: 1, Valid: true}}},
					{Route: "default/app-2", Rule: 2, Path: mesh.PathMatch{Type: "RegularExpression", Value: "/v[0-9]+/.*"},
						QueryParams: []mesh.ValueMatch{{Type: "Exact", Name: "debug", Value: "1"}},
						Backends:    []mesh.Backend{{Namespace: "default", Name: "missing", Weight: 1}}},
					{Route: "default/app-2", Rule: 0, Path: mesh.PathMatch{Type: "PathPrefix", Value: "/"},
						Headers:  []mesh.ValueMatch{{Type: "Exact", Name: "X-Version", Value: "v2"}},
						Backends: []mesh.Backend{{Namespace: "default", Name: "app-2", Weight: 1, Valid: true}}, BackendTimeout: 500 * time.Millisecond},
					{Route: "default/app-2", Rule: 3, Path: mesh.PathMatch{Type: "PathPrefix", Value: "/"},
						Backends: []mesh.Backend{{Namespace: "default", Name: "app-1", Weight: 80, Valid: true}, {Namespace: "default", Name: "app-2", Weight: 20, Valid: true}},
						Timeout:  time.Second, TimeoutSet: true,
						Retry: mesh.Retry{Attempts: 5, Codes: []int{503}, Backoff: 25 * time.Millisecond}},
				},
			},
			{
				Namespace: "team-b",
				Name:      "app-3",
				// A gRPC Service: its cluster speaks HTTP/2.
				Ports:    []mesh.ServicePort{{Name: "api", Port: 80, Protocol: "TCP", AppProtocol: "grpc"}},
				Protocol: mesh.ProtocolHTTP2,
			},
		},
		Proxies: map[string]*mesh.Proxy{
			"default/app-1-a": {Namespace: "default", Name: "app-1-a", IP: "10.0.0.11", Services: []string{"default/app-1"}, ServiceAccount: "app-1", MTLS: mesh.MTLSStrict},
			"default/app-1-b": {Namespace: "default", Name: "app-1-b", IP: "10.0.0.12", Services: []string{"default/app-1"}, ServiceAccount: "app-1", MTLS: mesh.MTLSStrict},
			"default/app-2-a": {Namespace: "default", Name: "app-2-a", IP: "10.0.0.21", Services: []string{"default/app-2"}, ServiceAccount: "app-2", MTLS: mesh.MTLSPermissive},
		},
	}
}

// Sample proxies: a pod of app-1 as in a real cluster, and a local process in team-b
// that no meshed Service selects.
var (
	nodeApp1A = Node{ID: "app-1-a.default", PodNamespace: "default", PodName: "app-1-a", ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
	nodeApp1B = Node{ID: "app-1-b.default", PodNamespace: "default", PodName: "app-1-b", ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
	nodeApp2A = Node{ID: "app-2-a.default", PodNamespace: "default", PodName: "app-2-a", ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
	nodeLocal = Node{ID: "debug.team-b", PodNamespace: "team-b", PodName: "debug", ListenIP: "127.0.1.5", OutboundIP: "127.0.2.5", AppAddress: "127.0.1.5:9090"}
)

func mustNew(t testing.TB, snap *mesh.Snapshot) *Translator {
	t.Helper()
	tr, err := New(snap)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return tr
}

func mustProxy(t testing.TB, tr *Translator, n Node) *resource.Proxy {
	t.Helper()
	p, err := tr.Proxy(n)
	if err != nil {
		t.Fatalf("Proxy(%s): %v", n.ID, err)
	}
	return p
}

// stableJSON marshals m as indented protojson in a byte-stable form: protojson randomizes
// its whitespace on purpose, so the output is re-indented by encoding/json.
func stableJSON(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := protojson.MarshalOptions{Multiline: true}.Marshal(m)
	if err != nil {
		t.Fatalf("protojson: %v", err)
	}
	return indent(t, b)
}

func indent(t testing.TB, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		t.Fatalf("json.Indent: %v\n%s", err, b)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

// viewJSON renders a view as {"sets": [[resource, ...], ...]}, each resource as its Any
// (with "@type"), so that the golden shows which set each resource comes from.
func viewJSON(t testing.TB, v resource.View) []byte {
	t.Helper()
	var b bytes.Buffer
	b.WriteString(`{"sets":[`)
	for i, s := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('[')
		for j, name := range s.Names() {
			if j > 0 {
				b.WriteByte(',')
			}
			r, _ := s.Get(name)
			j, err := protojson.Marshal(r.Any)
			if err != nil {
				t.Fatalf("protojson %s: %v", name, err)
			}
			b.Write(j)
		}
		b.WriteByte(']')
	}
	b.WriteString(`]}`)
	return indent(t, b.Bytes())
}

// golden compares got with testdata/name, or rewrites the file under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./pkg/translate -update` to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s differs from the output (-golden +got); run `go test ./pkg/translate -update` if the change is intended:\n%s", path, diff)
	}
}

// unpack decodes a resource's Any.
func unpack(t testing.TB, a *anypb.Any) proto.Message {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatalf("unmarshal %s: %v", a.GetTypeUrl(), err)
	}
	return m
}

// errorContains reports whether err's message has every one of parts; no parts means
// err must be nil.
func errorContains(err error, parts []string) bool {
	if len(parts) == 0 {
		return err == nil
	}
	if err == nil {
		return false
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			return false
		}
	}
	return true
}

// envoyBinary returns the Envoy that scripts/install-envoy.sh installs at
// <repo>/.cache/bin/envoy. With -short the test is skipped; otherwise a missing Envoy
// fails it, so that `go test` never prints ok for a check that did not run.
func envoyBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real Envoy: skipped with -short")
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
	bin := filepath.Join(dir, ".cache", "bin", "envoy")
	if _, err := os.Stat(bin); errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s is absent: run scripts/install-envoy.sh (or make install) to install Envoy; go test -short skips this test", bin)
	} else if err != nil {
		t.Fatal(err)
	}
	return bin
}

// runEnvoy runs a real Envoy on the config at path (with extra arguments) until the
// test ends, and returns a context that ends with it and Envoy's output, which a failed
// test logs.
func runEnvoy(t *testing.T, envoy, path string, extra ...string) (context.Context, *bytes.Buffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	logs := &bytes.Buffer{}
	args := append([]string{"-c", path, "--disable-hot-restart", "--concurrency", "1", "--log-level", "warn"}, extra...)
	cmd := exec.CommandContext(ctx, envoy, args...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("envoy output:\n%s", logs.String())
		}
	})
	return ctx, logs
}
