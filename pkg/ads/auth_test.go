package ads_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// syncBuffer is a log sink written by the stream goroutines and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type authEnv struct {
	*env
	logs     *syncBuffer
	resolved chan *corev3.Node // every node Resolve was called with
}

const secretToken = "s3cr3t-token-value"

// startAuth starts a server whose authenticator accepts the bearer token secretToken for
// the node id "pod-a.ns", and stamps the node with metadata "verified": "yes".
func startAuth(t *testing.T, authn func(ctx context.Context, node *corev3.Node) (*corev3.Node, error)) *authEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	logs := &syncBuffer{}
	srv := ads.NewServer(ads.Options{
		Metrics:      ads.NewMetrics(reg),
		Logger:       slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Authenticate: authn,
	})
	g := grpc.NewServer(ads.ServerOptions()...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	e := &authEnv{env: &env{srv: srv, reg: reg, addr: lis.Addr().String()}, logs: logs, resolved: make(chan *corev3.Node, 16)}
	resolve := build(t, world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}})
	srv.SetConfig(&ads.Config{Resolve: func(n *corev3.Node) (*resource.Proxy, error) {
		select {
		case e.resolved <- n:
		default:
		}
		return resolve(n)
	}, ChangedAt: time.Now()})
	return e
}

func tokenAuth(ctx context.Context, node *corev3.Node) (*corev3.Node, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	auth := md.Get("authorization")
	if len(auth) != 1 || auth[0] != "Bearer "+secretToken {
		return nil, status.Error(codes.Unauthenticated, "no valid token")
	}
	if node.GetId() != "pod-a.ns" {
		return nil, status.Errorf(codes.PermissionDenied, "token is not for node %q", node.GetId())
	}
	out := proto.Clone(node).(*corev3.Node)
	out.Metadata = &structpb.Struct{Fields: map[string]*structpb.Value{"verified": structpb.NewStringValue("yes")}}
	return out, nil
}

// openStream opens a raw ADS stream with the given bearer token (none when empty).
func openStream(t *testing.T, addr, token string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authFailures(t *testing.T, e *authEnv, reason string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bearkong_xds_auth_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("bearkong_xds_auth_failures_total{reason=%q} not found", reason)
	return 0
}

func TestAuthenticateRefusesBeforeServing(t *testing.T) {
	for _, tc := range []struct {
		name   string
		token  string
		node   string
		authn  func(context.Context, *corev3.Node) (*corev3.Node, error)
		code   codes.Code
		reason string
	}{
		{name: "no token", node: "pod-a.ns", authn: tokenAuth, code: codes.Unauthenticated, reason: ads.ReasonUnauthenticated},
		{name: "wrong token", token: "other", node: "pod-a.ns", authn: tokenAuth, code: codes.Unauthenticated, reason: ads.ReasonUnauthenticated},
		{name: "another node", token: secretToken, node: "pod-b.ns", authn: tokenAuth, code: codes.PermissionDenied, reason: ads.ReasonPermissionDenied},
		{name: "plain error", token: secretToken, node: "pod-a.ns", code: codes.Unauthenticated, reason: ads.ReasonUnauthenticated,
			authn: func(context.Context, *corev3.Node) (*corev3.Node, error) { return nil, errors.New("reviewer down") }},
		{name: "unavailable", token: secretToken, node: "pod-a.ns", code: codes.Unavailable, reason: ads.ReasonOther,
			authn: func(context.Context, *corev3.Node) (*corev3.Node, error) {
				return nil, status.Error(codes.Unavailable, "TokenReview unreachable")
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startAuth(t, tc.authn)
			s := openStream(t, e.addr, tc.token)
			if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: tc.node}, TypeUrl: resource.Cluster.URL()}); err != nil {
				t.Fatal(err)
			}
			resp, err := s.Recv()
			if err == nil {
				t.Fatalf("got a response (version %q, nonce %q, %d resources), want the stream refused", resp.GetVersionInfo(), resp.GetNonce(), len(resp.GetResources()))
			}
			if got := status.Code(err); got != tc.code {
				t.Fatalf("status %v (%v), want %v", got, err, tc.code)
			}
			select {
			case n := <-e.resolved:
				t.Fatalf("Resolve was called for %q on a refused stream", n.GetId())
			default:
			}
			if got := authFailures(t, e, tc.reason); got != 1 {
				t.Errorf("auth failures{reason=%q} = %v, want 1", tc.reason, got)
			}
			logs := e.logs.String()
			if n := strings.Count(logs, "xds stream refused"); n != 1 {
				t.Errorf("%d refusal log lines, want 1:\n%s", n, logs)
			}
			if !strings.Contains(logs, "level=WARN msg=\"xds stream refused\" stream=1 node="+tc.node+" peer=127.0.0.1:") {
				t.Errorf("refusal not logged at WARN with node and peer:\n%s", logs)
			}
			if strings.Contains(logs, secretToken) {
				t.Errorf("the token is in the logs:\n%s", logs)
			}
			if s := e.srv.Streams(""); len(s) != 0 {
				t.Errorf("refused stream still listed: %+v", s)
			}
		})
	}
}

func TestAuthenticatedNodeIsTheStreamsNode(t *testing.T) {
	e := startAuth(t, tokenAuth)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secretToken)
	// The client claims metadata of its own; the server's authenticator replaces it.
	c, err := xdstest.Dial(ctx, e.addr, &corev3.Node{Id: "pod-a.ns", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		"verified": structpb.NewStringValue("claimed by the client"),
	}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitSynced(t, c)
	n := <-e.resolved
	if got := n.GetMetadata().GetFields()["verified"].GetStringValue(); got != "yes" {
		t.Errorf("Resolve saw metadata verified=%q, want the authenticator's %q", got, "yes")
	}
	if s := e.srv.Streams("pod-a.ns"); len(s) != 1 {
		t.Fatalf("streams of pod-a.ns: %+v", s)
	}
	if got := authFailures(t, e, ads.ReasonUnauthenticated); got != 0 {
		t.Errorf("auth failures = %v on an honest stream", got)
	}
}

func TestNodeCannotChangeOnAStream(t *testing.T) {
	var calls atomic.Int32
	e := startAuth(t, func(ctx context.Context, n *corev3.Node) (*corev3.Node, error) {
		calls.Add(1)
		return tokenAuth(ctx, n)
	})
	s := openStream(t, e.addr, secretToken)
	node := &corev3.Node{Id: "pod-a.ns", Cluster: "bearkong-mesh"}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resource.Cluster.URL()}); err != nil {
		t.Fatal(err)
	}
	cds, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// The same node again (a client may repeat it) is fine: the ACK is taken.
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: proto.Clone(node).(*corev3.Node), TypeUrl: resource.Cluster.URL(),
		VersionInfo: cds.GetVersionInfo(), ResponseNonce: cds.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if st := e.srv.Streams("pod-a.ns"); len(st) == 1 && st[0].Types.CDS.Status == ads.Synced {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := e.srv.Streams("pod-a.ns"); len(st) != 1 || st[0].Types.CDS.Status != ads.Synced {
		t.Fatalf("repeated identical node: stream %+v, want CDS SYNCED", st)
	}
	// Another node on the same stream is refused, whatever its credentials say.
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "pod-b.ns"}, TypeUrl: resource.Listener.URL()}); err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := s.Recv()
		if err != nil {
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("stream ended with %v, want PermissionDenied", err)
			}
			break
		}
		if resp.GetTypeUrl() == resource.Listener.URL() {
			t.Fatalf("got listeners after the node changed")
		}
	}
	if got := authFailures(t, e, ads.ReasonNodeChanged); got != 1 {
		t.Errorf("auth failures{node_changed} = %v, want 1", got)
	}
	if got := calls.Load(); got != 1 {
		t.Errorf("Authenticate called %d times, want once per stream", got)
	}
}
