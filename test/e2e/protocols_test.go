package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Real workloads through the mesh: long requests, gRPC, WebSocket and large bodies,
// between app-1's pod and Services of the demo app declared the Kubernetes way
// (appProtocol, port names). The tests are independent and mostly wait, so they run in
// parallel.

// caller is the pod whose outbound listener every test here goes through.
const caller = "app-1-0"

// withApp adds a Service with opts and one demo-app pod, waits until the caller reaches
// it, and removes both at the end of the test.
func withApp(t *testing.T, m *localmesh.Mesh, name string, opts localmesh.ServiceOptions) {
	t.Helper()
	ctx := ctxT(t, 90*time.Second)
	if err := m.AddService(ctx, name, opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.DeleteService(context.Background(), name) })
	p, err := m.AddPod(ctx, name, localmesh.PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.RemovePod(context.Background(), p.Name, false) })
	if err := m.WaitReachable(ctx, 30*time.Second, caller, name); err != nil {
		t.Fatal(err)
	}
}

// outboundAddr is the caller's outbound listener, host:port.
func outboundAddr(t *testing.T, m *localmesh.Mesh) string {
	t.Helper()
	p, ok := m.Pod(caller)
	if !ok {
		t.Fatalf("no pod %s", caller)
	}
	return p.OutboundAddr()
}

func TestLongRequestHasNoDefaultTimeout(t *testing.T) {
	t.Parallel()
	m := sharedMesh(t)
	withApp(t, m, "longhaul", localmesh.ServiceOptions{})
	// Envoy's default route timeout is 15 s; with no policy a request may take longer.
	status, _, took, err := get(ctxT(t, 60*time.Second), m, caller, "longhaul", "/?latency=30s")
	if err != nil || status != 200 || took < 30*time.Second {
		t.Fatalf("a 30s request with no policy: %d after %s (%v), want 200 after 30s", status, took, err)
	}
	t.Logf("a 30s request with no policy: %d after %s", status, took)
}

func TestMeshTimeoutAboveEnvoysDefault(t *testing.T) {
	t.Parallel()
	m := sharedMesh(t)
	withApp(t, m, "patient", localmesh.ServiceOptions{Annotations: map[string]string{mesh.AnnotationTimeout: "20s"}})
	status, _, took, err := get(ctxT(t, 60*time.Second), m, caller, "patient", "/?latency=25s")
	// Envoy's timer may fire a hair early; 15 s would be Envoy's default cutting in.
	if err != nil || status != 504 || took < 19500*time.Millisecond || took >= 25*time.Second {
		t.Fatalf("a 25s request with mesh-timeout 20s: %d after %s (%v), want 504 after 20s", status, took, err)
	}
	t.Logf("a 25s request with mesh-timeout 20s: %d after %s", status, took)
}

func TestHTTPRouteZeroTimeoutMeansNone(t *testing.T) {
	t.Parallel()
	m := sharedMesh(t)
	withApp(t, m, "unhurried", localmesh.ServiceOptions{})
	withRoute(t, "unhurried", "unhurried", gwv1.HTTPRouteRule{
		BackendRefs: []gwv1.HTTPBackendRef{backendRef("unhurried", 1)},
		Timeouts:    &gwv1.HTTPRouteTimeouts{Request: ptr(gwv1.Duration("0s"))},
	})
	// Wait until the HTTPRoute's config is in the caller's sidecar: its route name shows
	// in the config dump.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		dump, err := m.EnvoyConfigDump(ctx, caller)
		if err != nil {
			return err
		}
		if !bytes.Contains(dump, []byte("unhurried.default|default/unhurried|rule-0")) {
			return errors.New("the HTTPRoute's route is not in the caller's config yet")
		}
		return nil
	})
	status, _, took, err := get(ctxT(t, 60*time.Second), m, caller, "unhurried", "/?latency=20s")
	if err != nil || status != 200 || took < 20*time.Second {
		t.Fatalf("a 20s request under timeouts.request 0s: %d after %s (%v), want 200 after 20s", status, took, err)
	}
	t.Logf("a 20s request under timeouts.request 0s: %d after %s", status, took)
}

// appProtocol makes a plain HTTP/1.1 request from the caller to svc and returns the
// HTTP version the demo app saw it arrive in (its JSON's "protocol").
func appProtocol(t *testing.T, m *localmesh.Mesh, svc string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctxT(t, 20*time.Second), http.MethodGet, "http://"+outboundAddr(t, m)+"/", nil)
	req.Header.Set(mesh.ServiceHeader, svc)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Name     string `json:"name"`
		Protocol string `json:"protocol"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 || body.Name != svc {
		t.Fatalf("GET / from %s to %s: %d %+v (%v)", caller, svc, resp.StatusCode, body, err)
	}
	return body.Protocol
}

// grpcMethod is a method of the demo app's gRPC service (cmd/demo-app GRPCService).
func grpcMethod(name string) string { return "/bearkong.demo.Demo/" + name }

func TestGRPCThroughTheMesh(t *testing.T) {
	t.Parallel()
	m := sharedMesh(t)
	conn, err := grpc.NewClient(outboundAddr(t, m), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	// Cleanup, not defer: the parallel subtests run after this function returns.
	t.Cleanup(func() { conn.Close() })

	for _, tc := range []struct {
		name string
		opts localmesh.ServiceOptions
		// stream runs the 60 s server stream too.
		stream bool
	}{
		{"grpc-app-protocol", localmesh.ServiceOptions{AppProtocol: "grpc"}, true},
		{"grpc-port-name", localmesh.ServiceOptions{PortName: "grpc-api"}, false},
		{"h2c-app-protocol", localmesh.ServiceOptions{AppProtocol: "kubernetes.io/h2c"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			withApp(t, m, tc.name, tc.opts)
			// The "service" header goes as gRPC metadata, which is HTTP/2 headers.
			ctx := metadata.AppendToOutgoingContext(ctxT(t, 2*time.Minute), mesh.ServiceHeader, tc.name)

			out := &wrapperspb.StringValue{}
			if err := conn.Invoke(ctx, grpcMethod("Echo"), wrapperspb.String("hello"), out); err != nil || out.GetValue() != tc.name+": hello" {
				t.Fatalf("Echo: %q, %v; want %q", out.GetValue(), err, tc.name+": hello")
			}
			for _, c := range []codes.Code{codes.OK, codes.NotFound, codes.PermissionDenied, codes.Unavailable, codes.ResourceExhausted} {
				err := conn.Invoke(ctx, grpcMethod("Fail"), wrapperspb.Int32(int32(c)), &emptypb.Empty{})
				st := status.Convert(err)
				want := ""
				if c != codes.OK {
					want = fmt.Sprintf("demo-app %s: failing with %s", tc.name, c)
				}
				if st.Code() != c || st.Message() != want {
					t.Errorf("Fail(%s): got %s %q, want %s %q", c, st.Code(), st.Message(), c, want)
				}
			}
			// Any request to a Service declared HTTP/2 reaches its app in HTTP/2, even
			// one that left the caller in HTTP/1.1.
			if got := appProtocol(t, m, tc.name); got != "HTTP/2.0" {
				t.Errorf("an HTTP/1.1 request to %s reached the app in %s, want HTTP/2.0", tc.name, got)
			}
			if !tc.stream {
				return
			}
			// A server stream of 60 s, a message a second: nothing on the way cuts it,
			// and every message arrives, in order.
			const seconds = 60
			start := time.Now()
			stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, grpcMethod("Tick"))
			if err != nil {
				t.Fatal(err)
			}
			if err := stream.SendMsg(durationpb.New(seconds * time.Second)); err != nil {
				t.Fatal(err)
			}
			if err := stream.CloseSend(); err != nil {
				t.Fatal(err)
			}
			var n int64
			for {
				msg := &wrapperspb.Int64Value{}
				err := stream.RecvMsg(msg)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("stream cut after %s and %d messages: %v", time.Since(start).Round(time.Millisecond), n, err)
				}
				if n++; msg.GetValue() != n {
					t.Fatalf("message %d is %d", n, msg.GetValue())
				}
			}
			took := time.Since(start)
			if n != seconds || took < seconds*time.Second {
				t.Fatalf("stream ended after %s with %d messages, want %d over %ds", took, n, seconds, seconds)
			}
			t.Logf("server stream: %d messages in order over %s", n, took.Round(time.Millisecond))
		})
	}
}

func TestWebSocketThroughTheMesh(t *testing.T) {
	t.Parallel()
	m := sharedMesh(t)
	withApp(t, m, "ws-echo", localmesh.ServiceOptions{AppProtocol: "kubernetes.io/ws"})
	addr := outboundAddr(t, m)
	cfg, err := websocket.NewConfig("ws://"+addr+"/ws", "http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Header.Set(mesh.ServiceHeader, "ws-echo")
	ws, err := websocket.DialConfig(cfg)
	if err != nil {
		t.Fatalf("WebSocket upgrade through the mesh: %v", err)
	}
	defer ws.Close()
	// A message a second for 30 s (31 messages, the first at 0 s): the connection
	// outlives Envoy's default route timeout, and every message comes back as it went.
	const seconds = 30
	start := time.Now()
	for i := range seconds + 1 {
		if i > 0 {
			time.Sleep(time.Second)
		}
		_ = ws.SetDeadline(time.Now().Add(10 * time.Second))
		msg := fmt.Sprintf("message %d at %s", i, time.Since(start).Round(time.Millisecond))
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatalf("send %d after %s: %v", i, time.Since(start), err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo %d after %s: %q, %v; want %q", i, time.Since(start), got, err, msg)
		}
	}
	took := time.Since(start)
	if took < seconds*time.Second {
		t.Fatalf("exchanged %d messages in %s, want %ds", seconds+1, took, seconds)
	}
	t.Logf("WebSocket: %d messages echoed over %s", seconds+1, took.Round(time.Millisecond))
}

func TestLargeBodies(t *testing.T) {
	t.Parallel()
	m := sharedMesh(t)
	withApp(t, m, "bulk", localmesh.ServiceOptions{})
	ctx := ctxT(t, 2*time.Minute)
	base := "http://" + outboundAddr(t, m)
	const size = 10 << 20
	// A Service that declares nothing speaks HTTP/1.1 all the way to its app.
	if got := appProtocol(t, m, "bulk"); got != "HTTP/1.1" {
		t.Errorf("a request to an undeclared Service reached the app in %s, want HTTP/1.1", got)
	}

	t.Run("download", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/download?bytes=%d", base, size), nil)
		req.Header.Set(mesh.ServiceHeader, "bulk")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		sum := sha256.New()
		n, err := io.Copy(sum, resp.Body)
		if err != nil || resp.StatusCode != 200 || n != size {
			t.Fatalf("download: %d, %d bytes, %v; want 200 and %d bytes", resp.StatusCode, n, err, size)
		}
		if got, want := hex.EncodeToString(sum.Sum(nil)), resp.Header.Get("X-Content-Sha256"); got != want {
			t.Fatalf("downloaded sha256 %s, the app sent %s", got, want)
		}
	})
	t.Run("upload", func(t *testing.T) {
		body := make([]byte, size)
		_, _ = rand.NewChaCha8([32]byte{'u', 'p'}).Read(body)
		want := sha256.Sum256(body)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/upload", bytes.NewReader(body))
		req.Header.Set(mesh.ServiceHeader, "bulk")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got struct {
			Name   string `json:"name"`
			Bytes  int64  `json:"bytes"`
			SHA256 string `json:"sha256"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("upload: %d, %v", resp.StatusCode, err)
		}
		if got.Name != "bulk" || got.Bytes != size || got.SHA256 != hex.EncodeToString(want[:]) {
			t.Fatalf("the app read %+v, want %d bytes with sha256 %x", got, size, want)
		}
	})
}
