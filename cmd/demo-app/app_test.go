package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func env(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

func TestConfigFromEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    config
		wantErr string
	}{
		{
			name: "defaults",
			want: config{Name: "demo-app", ListenAddr: "0.0.0.0:9090", Body: "Hello World", ErrorCode: 500},
		},
		{
			name: "everything set",
			env: map[string]string{"NAME": "app-2", "LISTEN_ADDR": "127.0.1.3:9090", "BODY": "hi",
				"ERROR_RATE": "0.25", "ERROR_CODE": "503", "LATENCY": "3s"},
			want: config{Name: "app-2", ListenAddr: "127.0.1.3:9090", Body: "hi", ErrorRate: 0.25, ErrorCode: 503, Latency: 3 * time.Second},
		},
		{
			name: "fake-service names",
			env:  map[string]string{"MESSAGE": "from fake-service", "TIMING_50_PERCENTILE": "20ms"},
			want: config{Name: "demo-app", ListenAddr: "0.0.0.0:9090", Body: "from fake-service", ErrorCode: 500, Latency: 20 * time.Millisecond},
		},
		{
			name: "LATENCY wins over TIMING_50_PERCENTILE",
			env:  map[string]string{"TIMING_50_PERCENTILE": "20ms", "LATENCY": "1s"},
			want: config{Name: "demo-app", ListenAddr: "0.0.0.0:9090", Body: "Hello World", ErrorCode: 500, Latency: time.Second},
		},
		{name: "error rate above 1", env: map[string]string{"ERROR_RATE": "1.5"}, wantErr: "ERROR_RATE"},
		{name: "error rate not a number", env: map[string]string{"ERROR_RATE": "half"}, wantErr: "ERROR_RATE"},
		{name: "error code out of range", env: map[string]string{"ERROR_CODE": "42"}, wantErr: "ERROR_CODE"},
		{name: "latency without unit", env: map[string]string{"LATENCY": "3"}, wantErr: "LATENCY"},
		{name: "negative latency", env: map[string]string{"LATENCY": "-1s"}, wantErr: "LATENCY"},
		{name: "bad timing", env: map[string]string{"TIMING_50_PERCENTILE": "soon"}, wantErr: "TIMING_50_PERCENTILE"},
		{name: "listen address without port", env: map[string]string{"LISTEN_ADDR": "127.0.0.1"}, wantErr: "LISTEN_ADDR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := configFromEnv(env(tt.env))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("configFromEnv() error = %v, want one mentioning %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("configFromEnv() error = %v", err)
			}
			if got != tt.want {
				t.Errorf("configFromEnv() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func newTestHandler(t *testing.T, cfg config, roll float64) (*handler, *[]time.Duration) {
	t.Helper()
	h, err := newHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var slept []time.Duration
	h.rand = func() float64 { return roll }
	h.sleep = func(_ *http.Request, d time.Duration) { slept = append(slept, d) }
	return h, &slept
}

func get(t *testing.T, h http.Handler, path string) (*httptest.ResponseRecorder, response) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	var resp response
	if ct := rec.Header().Get("Content-Type"); ct == "application/json" {
		if err := json.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
			t.Fatalf("GET %s: bad JSON %q: %v", path, rec.Body.String(), err)
		}
	}
	return rec, resp
}

func TestHandlerAnswersLikeFakeService(t *testing.T) {
	cfg := config{Name: "app-1", ListenAddr: "127.0.1.2:9090", Body: "Hello World", ErrorCode: 500}
	h, slept := newTestHandler(t, cfg, 0.5)
	rec, resp := get(t, h, "/some/path?x=1")
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", rec.Code)
	}
	if resp.Name != "app-1" || resp.URI != "/some/path?x=1" || resp.Type != "HTTP" || resp.Body != "Hello World" || resp.Code != 200 {
		t.Errorf("response = %+v", resp)
	}
	if len(resp.IPAddresses) != 1 || resp.IPAddresses[0] != "127.0.1.2" {
		t.Errorf("ip_addresses = %v, want [127.0.1.2]", resp.IPAddresses)
	}
	if resp.StartTime == "" || resp.EndTime == "" || resp.Duration == "" {
		t.Errorf("timing fields missing: %+v", resp)
	}
	if _, err := time.Parse(timeFormat, resp.StartTime); err != nil {
		t.Errorf("start_time %q: %v", resp.StartTime, err)
	}
	if resp.Error != "" {
		t.Errorf("error = %q, want none", resp.Error)
	}
	if len(*slept) != 0 {
		t.Errorf("slept %v without LATENCY", *slept)
	}
}

func TestHandlerInjectsErrors(t *testing.T) {
	cfg := config{Name: "app-3", ListenAddr: "127.0.0.1:9090", ErrorRate: 0.3, ErrorCode: 503}
	for _, tt := range []struct {
		roll float64
		want int
	}{{0.1, 503}, {0.29, 503}, {0.3, 200}, {0.9, 200}} {
		h, _ := newTestHandler(t, cfg, tt.roll)
		rec, resp := get(t, h, "/")
		if rec.Code != tt.want || resp.Code != tt.want {
			t.Errorf("roll %v: status %d, code %d; want %d", tt.roll, rec.Code, resp.Code, tt.want)
		}
		if tt.want != 200 && resp.Error == "" {
			t.Errorf("roll %v: no error message in %+v", tt.roll, resp)
		}
	}
}

func TestHandlerLatency(t *testing.T) {
	cfg := config{Name: "slow", ListenAddr: "127.0.0.1:9090", ErrorCode: 500, Latency: 3 * time.Second}
	h, slept := newTestHandler(t, cfg, 0)
	get(t, h, "/")
	if len(*slept) != 1 || (*slept)[0] != 3*time.Second {
		t.Errorf("slept %v, want [3s]", *slept)
	}
}

func TestHealthIsNeverDelayedOrFailed(t *testing.T) {
	cfg := config{Name: "x", ListenAddr: "127.0.0.1:9090", ErrorRate: 1, ErrorCode: 500, Latency: time.Hour}
	h, slept := newTestHandler(t, cfg, 0)
	for _, path := range []string{"/health", "/ready"} {
		rec, _ := get(t, h, path)
		if rec.Code != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", path, rec.Code)
		}
	}
	if len(*slept) != 0 {
		t.Errorf("health checks slept %v", *slept)
	}
}

func TestServerOverHTTP(t *testing.T) {
	h, err := newHandler(config{Name: "real", ListenAddr: "127.0.0.1:0", Body: "b", ErrorCode: 500})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body response
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || body.Name != "real" || body.Body != "b" {
		t.Errorf("got %d %+v", resp.StatusCode, body)
	}
}

func TestEvenErrors(t *testing.T) {
	for _, rate := range []float64{0.5, 0.25, 1} {
		h := &handler{cfg: config{ErrorRate: rate, ErrorEven: true}}
		fails, last := 0, false
		for i := range 100 {
			f := h.fail()
			if f {
				fails++
			}
			if rate == 0.5 && i > 0 && f == last {
				t.Fatalf("rate 0.5: requests %d and %d both fail=%v; want alternation", i-1, i, f)
			}
			last = f
		}
		if fails != int(rate*100) {
			t.Fatalf("rate %v: %d of 100 failed", rate, fails)
		}
	}
	if _, err := configFromEnv(func(k string) string { return map[string]string{"ERROR_PATTERN": "sometimes"}[k] }); err == nil {
		t.Fatal("ERROR_PATTERN=sometimes accepted")
	}
}

func TestLatencyFromQuery(t *testing.T) {
	cfg := config{Name: "slow", ListenAddr: "127.0.0.1:9090", ErrorCode: 500, Latency: 3 * time.Second}
	for _, tt := range []struct {
		path   string
		status int
		slept  []time.Duration
	}{
		{"/?latency=30s", 200, []time.Duration{30 * time.Second}},
		{"/x?latency=250ms", 200, []time.Duration{250 * time.Millisecond}},
		{"/?latency=0s", 200, nil},
		{"/", 200, []time.Duration{3 * time.Second}},
		{"/?latency=soon", 400, nil},
		{"/?latency=-1s", 400, nil},
	} {
		t.Run(tt.path, func(t *testing.T) {
			h, slept := newTestHandler(t, cfg, 0)
			rec, _ := get(t, h, tt.path)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tt.status, rec.Body)
			}
			if fmt.Sprint(*slept) != fmt.Sprint(tt.slept) {
				t.Errorf("slept %v, want %v", *slept, tt.slept)
			}
		})
	}
}

// startServer runs the app's real server (HTTP/1.1, h2c and gRPC on one port) on a
// loopback port, with Tick's interval shortened to every.
func startServer(t *testing.T, every time.Duration) string {
	t.Helper()
	h, err := newHandler(config{Name: "real", ListenAddr: "127.0.0.1:0", Body: "b", ErrorCode: 500})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := newGRPCServer("real", every)
	srv := newServer(withGRPC(h, g))
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		g.Stop()
		_ = srv.Close()
	})
	return ln.Addr().String()
}

func TestDownloadAndUpload(t *testing.T) {
	addr := startServer(t, time.Second)
	for _, n := range []int64{0, 1, 10 << 20} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			resp, err := http.Get(fmt.Sprintf("http://%s/download?bytes=%d", addr, n))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			sum := sha256.New()
			got, err := io.Copy(sum, resp.Body)
			if err != nil || resp.StatusCode != 200 || got != n {
				t.Fatalf("download: %d, %d bytes, %v; want 200 and %d bytes", resp.StatusCode, got, err, n)
			}
			hexSum := hex.EncodeToString(sum.Sum(nil))
			if h := resp.Header.Get("X-Content-Sha256"); h != hexSum {
				t.Fatalf("X-Content-Sha256 %q, body's %q", h, hexSum)
			}
			// Upload what was downloaded: the app reports the same size and checksum.
			up, err := http.Post("http://"+addr+"/upload", "application/octet-stream", content(n))
			if err != nil {
				t.Fatal(err)
			}
			defer up.Body.Close()
			var res uploadResult
			if err := json.NewDecoder(up.Body).Decode(&res); err != nil || up.StatusCode != 200 {
				t.Fatalf("upload: %d, %v", up.StatusCode, err)
			}
			if res.Bytes != n || res.SHA256 != hexSum || res.Name != "real" {
				t.Errorf("upload answered %+v, want %d bytes with sha256 %s", res, n, hexSum)
			}
		})
	}
	for _, path := range []string{"/download", "/download?bytes=-1", "/download?bytes=2000000000"} {
		if resp, err := http.Get("http://" + addr + path); err != nil || resp.StatusCode != 400 {
			t.Errorf("GET %s: %v %v, want 400", path, resp.StatusCode, err)
		}
	}
	if resp, err := http.Get("http://" + addr + "/upload"); err != nil || resp.StatusCode != 405 {
		t.Errorf("GET /upload: %v %v, want 405", resp.StatusCode, err)
	}
}

func TestWebSocketEcho(t *testing.T) {
	addr := startServer(t, time.Second)
	ws, err := websocket.Dial("ws://"+addr+"/ws", "", "http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.SetDeadline(time.Now().Add(10 * time.Second))
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo of %q: %q, %v", msg, got, err)
		}
	}
	bin := []byte{0, 1, 2, 255}
	if err := websocket.Message.Send(ws, bin); err != nil {
		t.Fatal(err)
	}
	var got frame
	if err := frameCodec.Receive(ws, &got); err != nil || !bytes.Equal(got.data, bin) || got.typ != websocket.BinaryFrame {
		t.Fatalf("binary echo: %v (type %d), %v", got.data, got.typ, err)
	}
}

func TestServesHTTP1AndH2C(t *testing.T) {
	addr := startServer(t, time.Second)
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	for name, c := range map[string]*http.Client{
		"HTTP/1.1": {},
		"HTTP/2.0": {Transport: &http.Transport{Protocols: &protocols}},
	} {
		resp, err := c.Get("http://" + addr + "/")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var body response
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.Proto != name || resp.StatusCode != 200 || body.Protocol != name {
			t.Errorf("%s client: %s %d, the app saw %q (%v)", name, resp.Proto, resp.StatusCode, body.Protocol, err)
		}
	}
}

func TestGRPC(t *testing.T) {
	addr := startServer(t, 10*time.Millisecond)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	out := &wrapperspb.StringValue{}
	if err := conn.Invoke(ctx, "/"+GRPCService+"/Echo", wrapperspb.String("hi"), out); err != nil || out.GetValue() != "real: hi" {
		t.Fatalf("Echo: %q, %v", out.GetValue(), err)
	}
	for _, c := range []codes.Code{codes.OK, codes.NotFound, codes.PermissionDenied, codes.Unavailable, codes.Unauthenticated} {
		err := conn.Invoke(ctx, "/"+GRPCService+"/Fail", wrapperspb.Int32(int32(c)), &emptypb.Empty{})
		st := status.Convert(err)
		if st.Code() != c || (c != codes.OK && st.Message() != "demo-app real: failing with "+c.String()) {
			t.Errorf("Fail(%s): %s %q", c, st.Code(), st.Message())
		}
	}
	if err := conn.Invoke(ctx, "/"+GRPCService+"/Fail", wrapperspb.Int32(17), &emptypb.Empty{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Fail(17): %v, want InvalidArgument", err)
	}

	stream, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/"+GRPCService+"/Tick")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(durationpb.New(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got []int64
	for {
		m := &wrapperspb.Int64Value{}
		if err := stream.RecvMsg(m); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		got = append(got, m.GetValue())
	}
	if fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Errorf("Tick(50ms) every 10ms: %v, want [1 2 3 4 5]", got)
	}
}

// TestGRPCReflection: the demo app's gRPC server has a second service, server reflection
// (v1 and the older v1alpha that many clients still speak), so that the mesh can tell two
// services of one server apart (authorization by gRPC method, issue 12) and grpcurl can
// list what the server offers.
func TestGRPCReflection(t *testing.T) {
	addr := startServer(t, time.Second)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	want := []string{GRPCService, "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
	t.Run("v1", func(t *testing.T) {
		stream, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			got = append(got, s.GetName())
		}
		if !slices.Equal(got, want) {
			t.Errorf("v1 ListServices: %q, want %q", got, want)
		}
	})
	// A client can describe the service: reflection serves demoFile, which must say what
	// demoServiceDesc serves.
	t.Run("describe", func(t *testing.T) {
		stream, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionv1.ServerReflectionRequest{MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: GRPCService}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		files := resp.GetFileDescriptorResponse().GetFileDescriptorProto()
		if len(files) == 0 {
			t.Fatalf("no file for %s: %v", GRPCService, resp)
		}
		fd := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(files[0], fd); err != nil {
			t.Fatal(err)
		}
		if fd.GetName() != demoServiceDesc.Metadata || len(fd.GetService()) != 1 || fd.GetPackage()+"."+fd.GetService()[0].GetName() != GRPCService {
			t.Fatalf("reflection describes %s with %v", GRPCService, prototext.Format(fd))
		}
		var described, served []string
		for _, m := range fd.GetService()[0].GetMethod() {
			described = append(described, fmt.Sprintf("%s stream=%v", m.GetName(), m.GetServerStreaming()))
		}
		for _, m := range demoServiceDesc.Methods {
			served = append(served, m.MethodName+" stream=false")
		}
		for _, m := range demoServiceDesc.Streams {
			served = append(served, fmt.Sprintf("%s stream=%v", m.StreamName, m.ServerStreams))
		}
		slices.Sort(described)
		slices.Sort(served)
		if !slices.Equal(described, served) {
			t.Errorf("reflection describes %q, the server serves %q", described, served)
		}
	})
	t.Run("v1alpha", func(t *testing.T) {
		stream, err := reflectionv1alpha.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionv1alpha.ServerReflectionRequest{MessageRequest: &reflectionv1alpha.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			got = append(got, s.GetName())
		}
		if !slices.Equal(got, want) {
			t.Errorf("v1alpha ListServices: %q, want %q", got, want)
		}
	})
}
