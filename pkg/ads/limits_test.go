package ads_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
)

// startLimited starts a server with the given options (its Metrics and Logger filled in
// when unset), served over real gRPC with ServerOptionsWith(o.Limits).
func startLimited(t *testing.T, o ads.Options, logs io.Writer, level slog.Level) *env {
	t.Helper()
	reg := prometheus.NewRegistry()
	o.Metrics = ads.NewMetrics(reg)
	if logs != nil {
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level}))
	}
	srv := ads.NewServer(o)
	g := grpc.NewServer(ads.ServerOptionsWith(o.Limits)...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return &env{srv: srv, reg: reg, addr: lis.Addr().String()}
}

// metric returns the value of the counter name{label=value}.
func metric(t *testing.T, e *env, name, label, value string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" {
				return m.GetCounter().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not found", name, label, value)
	return 0
}

// raw opens an ADS stream with a plain gRPC client that does only what the test says,
// on a connection of its own, closed when ctx ends.
func raw(t *testing.T, ctx context.Context, addr string, opts ...grpc.DialOption) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Closed when ctx ends, not at the test's end: the memory tests count what is left
	// after the attack, and this process is the attackers' too.
	context.AfterFunc(ctx, func() { conn.Close() })
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// refusal sends req on a new raw stream and returns the status the stream ends with.
func refusal(t *testing.T, addr string, req *discoveryv3.DiscoveryRequest) *status.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := raw(t, ctx, addr)
	if err := s.Send(req); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	for {
		if _, err := s.Recv(); err != nil {
			return status.Convert(err)
		}
	}
}

// stillServed changes app-1's endpoints and waits until the honest client has them: an
// honest proxy on the same server keeps receiving every change.
func stillServed(t *testing.T, e *env, w world, c *xdstest.Client) {
	t.Helper()
	w.endpoints["app-1"]++
	want := w.endpoints["app-1"]
	e.set(t, w)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cla, ok := c.Resource(xdstest.EndpointType, "app-1").(*endpointv3.ClusterLoadAssignment); ok && len(cla.Endpoints[0].LbEndpoints) == want {
			return
		}
	}
	t.Fatalf("the honest client did not get the change: %v", c.Err())
}

// heap is the live heap after a forced collection.
func heap() uint64 {
	var m runtime.MemStats
	for range 2 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// within10 fails unless the heap comes back within 10 % of before. Closed connections
// take a moment to be torn down on both sides (both are in this process), so it polls,
// for a bounded time.
func within10(t *testing.T, before uint64) {
	t.Helper()
	after := heap()
	for deadline := time.Now().Add(5 * time.Second); float64(after) > 1.1*float64(before) && time.Now().Before(deadline); after = heap() {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("heap %d KiB before, %d KiB after", before>>10, after>>10)
	if float64(after) > 1.1*float64(before) {
		t.Fatalf("heap after the attack %d KiB > 110%% of %d KiB before", after>>10, before>>10)
	}
}

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("svc-%06d", i)
	}
	return out
}

// TestLimitsRefuseOversizedRequests: with the default limits, a node id, node metadata
// or resource_names list too large ends the attacker's stream with InvalidArgument,
// naming the flag; it is counted by reason, logged once without the whole id, and an
// honest proxy keeps receiving changes.
func TestLimitsRefuseOversizedRequests(t *testing.T) {
	logs := &syncBuffer{}
	e := startLimited(t, ads.Options{}, logs, slog.LevelInfo)
	w := world{endpoints: map[string]int{"app-1": 1, "app-2": 1}, routeTag: map[string]string{}}
	e.set(t, w)
	honest := e.connect(t, "honest", nil)
	e.waitSynced(t, honest)

	bigMeta, err := structpb.NewStruct(map[string]any{"junk": strings.Repeat("m", 3<<20)})
	if err != nil {
		t.Fatal(err)
	}
	longID := strings.Repeat("x", 100<<10)
	for _, tc := range []struct {
		name, reason, flag string
		req                *discoveryv3.DiscoveryRequest
	}{
		{"100 KiB node id", ads.ReasonNodeIDTooLong, "--xds-max-node-id-bytes",
			&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: longID}, TypeUrl: xdstest.ClusterType}},
		{"3 MiB of node metadata", ads.ReasonNodeMetadataTooLarge, "--xds-max-node-metadata-bytes",
			&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "meta", Metadata: bigMeta}, TypeUrl: xdstest.ClusterType}},
		{"200,000 EDS names", ads.ReasonTooManyNames, "--xds-max-resource-names",
			&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "names"}, TypeUrl: xdstest.EndpointType, ResourceNames: names(200000)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := refusal(t, e.addr, tc.req)
			if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.flag) {
				t.Fatalf("status %v %q, want InvalidArgument naming %s", st.Code(), st.Message(), tc.flag)
			}
			if len(st.Message()) > 512 {
				t.Fatalf("status message of %d bytes", len(st.Message()))
			}
			if n := metric(t, e, "bearkong_xds_refused_total", "reason", tc.reason); n != 1 {
				t.Fatalf("refused{%s} = %v, want 1", tc.reason, n)
			}
			stillServed(t, e, w, honest)
		})
	}
	if l := logs.String(); strings.Contains(l, longID[:200]) || len(l) > 8<<10 {
		t.Fatalf("%d bytes of log, holding the long id: %.2000s", len(l), l)
	}
	if n := strings.Count(logs.String(), "xds stream refused"); n != 3 {
		t.Fatalf("%d refusals logged, want one per attacker:\n%s", n, logs)
	}

	t.Run("200 streams of oversized metadata leave no memory behind", func(t *testing.T) {
		meta, err := structpb.NewStruct(map[string]any{"junk": strings.Repeat("m", 100<<10)})
		if err != nil {
			t.Fatal(err)
		}
		attack := func(n int) {
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st := refusal(t, e.addr, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("m-%d", i), Metadata: meta}, TypeUrl: xdstest.ClusterType})
					if st.Code() != codes.InvalidArgument {
						t.Errorf("status %v", st)
					}
				}()
			}
			wg.Wait()
		}
		// A first round of the same size warms what is made once or pooled (gRPC's
		// buffers, the metric's child), so that the measure counts what attackers leave:
		// without it the heap ends ~1 MiB above a 3 MiB start, and no higher after
		// 400 attackers than after 200.
		attack(200)
		before := heap()
		attack(200)
		if n := metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonNodeMetadataTooLarge); n != 401 {
			t.Fatalf("refused = %v, want 401", n)
		}
		stillServed(t, e, w, honest)
		within10(t, before)
	})

	t.Run("20 streams of 200,000 names leave no memory behind", func(t *testing.T) {
		many := names(200000)
		attack := func(n int) {
			for i := range n {
				st := refusal(t, e.addr, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("n-%d", i)}, TypeUrl: xdstest.EndpointType, ResourceNames: many})
				if st.Code() != codes.InvalidArgument {
					t.Fatalf("status %v", st)
				}
			}
		}
		attack(20) // warms gRPC's buffers for requests of this size
		before := heap()
		attack(20)
		if n := metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonTooManyNames); n != 41 {
			t.Fatalf("refused = %v, want 41", n)
		}
		stillServed(t, e, w, honest)
		within10(t, before)
		runtime.KeepAlive(many) // live in both measures, so that they compare the server's
	})
}

// TestLimitStreams: a node that opens more streams than MaxStreamsPerNode, or a server
// at MaxStreams, refuses the new stream with ResourceExhausted and keeps the honest
// stream that came first.
func TestLimitStreams(t *testing.T) {
	e := startLimited(t, ads.Options{Limits: ads.Limits{MaxStreamsPerNode: 2, MaxStreams: 50}}, nil, 0)
	w := world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}}
	e.set(t, w)
	honest := e.connect(t, "honest", nil)
	e.waitSynced(t, honest)

	t.Run("per node", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		second := raw(t, ctx, e.addr)
		if err := second.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "honest"}, TypeUrl: xdstest.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := second.Recv(); err != nil {
			t.Fatalf("the second stream of a node (a reconnect) is refused: %v", err)
		}
		st := refusal(t, e.addr, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "honest"}, TypeUrl: xdstest.ClusterType})
		if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "--xds-max-streams-per-node") {
			t.Fatalf("third stream: %v", st)
		}
		if n := metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonTooManyNodeStreams); n != 1 {
			t.Fatalf("refused = %v", n)
		}
		stillServed(t, e, w, honest)
	})

	t.Run("in total, 200 attacker streams", func(t *testing.T) {
		// flood opens n streams of distinct nodes, then closes them and waits until the
		// server holds the honest stream only.
		flood := func(n int) map[codes.Code]int {
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var mu sync.Mutex
			seen := map[codes.Code]int{}
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					s := raw(t, ctx, e.addr)
					err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("flood-%d", i)}, TypeUrl: xdstest.ClusterType})
					if err == nil {
						_, err = s.Recv()
					}
					mu.Lock()
					seen[status.Code(err)]++
					mu.Unlock()
				}()
			}
			wg.Wait()
			stillServed(t, e, w, honest)
			cancel()
			deadline := time.Now().Add(10 * time.Second)
			for len(e.srv.Streams("")) != 1 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := len(e.srv.Streams("")); n != 1 {
				t.Fatalf("%d streams left", n)
			}
			return seen
		}
		// The first flood warms what is made once, so that the measure counts what
		// attackers leave: the runtime's threads among it (a flood of 200 blocked
		// streams starts OS threads whose structures stay on the heap), hence the
		// same size as the one measured.
		flood(200)
		before := heap()
		seen := flood(200)
		// 50 streams at most: the honest one and 49 attackers; 151 refused.
		if seen[codes.OK] != 49 || seen[codes.ResourceExhausted] != 151 {
			t.Fatalf("attackers got %v, want 49 served and 151 ResourceExhausted", seen)
		}
		if n := metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonTooManyStreams); n != 151+151 {
			t.Fatalf("refused = %v, want 302", n)
		}
		within10(t, before)
	})
}

// TestRepeatedNacks: 50 NACKs of one nonce, each with 1 MiB of error_detail, count once,
// log once, and keep and report at most MaxNackDetailBytes, marked as cut.
func TestRepeatedNacks(t *testing.T) {
	logs := &syncBuffer{}
	var mu sync.Mutex
	var reports []ads.Report
	e := startLimited(t, ads.Options{Observe: func(r ads.Report) {
		mu.Lock()
		reports = append(reports, r)
		mu.Unlock()
	}}, logs, slog.LevelInfo)
	w := world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}}
	e.set(t, w)
	honest := e.connect(t, "honest", nil)
	e.waitSynced(t, honest)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := raw(t, ctx, e.addr)
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "nacker"}, TypeUrl: xdstest.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	detail := strings.Repeat("e", 1<<20)
	for range 50 {
		if err := s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xdstest.ClusterType, ResponseNonce: resp.Nonce,
			ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: detail}}); err != nil {
			t.Fatal(err)
		}
	}
	// An ACK of nothing new after the NACKs is stale; wait for the server to have read
	// every NACK: the stream's stale count comes after them.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st := e.srv.Streams("nacker"); len(st) == 1 && st[0].Types.CDS.Nacks > 0 && metric(t, e, "bearkong_xds_nack_total", "type", "cds") > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{TypeUrl: xdstest.ClusterType, ResponseNonce: "old"}); err != nil {
		t.Fatal(err)
	}
	for time.Now().Before(deadline) {
		if st := e.srv.Streams("nacker"); len(st) == 1 && st[0].Types.CDS.StaleRequests == 1 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	info := e.srv.Streams("nacker")
	if len(info) != 1 || info[0].Types.CDS.StaleRequests != 1 {
		t.Fatalf("the server did not read every request: %+v", info)
	}
	cds := info[0].Types.CDS
	if cds.Nacks != 1 || metric(t, e, "bearkong_xds_nack_total", "type", "cds") != 1 {
		t.Fatalf("50 NACKs of one nonce counted %d times on the stream, %v in the metric", cds.Nacks, metric(t, e, "bearkong_xds_nack_total", "type", "cds"))
	}
	if n := metric(t, e, "bearkong_xds_nack_detail_truncated_total", "", ""); n != 1 {
		t.Fatalf("truncated = %v, want 1", n)
	}
	msg := cds.LastNack.Message
	if len(msg) > ads.DefaultMaxNackDetailBytes+64 || !strings.Contains(msg, fmt.Sprintf("cut %d of %d bytes", 1<<20-ads.DefaultMaxNackDetailBytes, 1<<20)) {
		t.Fatalf("stored NACK message of %d bytes ends %q", len(msg), msg[max(0, len(msg)-80):])
	}
	mu.Lock()
	nackReports := 0
	for _, r := range reports {
		if r.Kind == ads.NACK {
			nackReports++
			if len(r.Message) > ads.DefaultMaxNackDetailBytes+64 {
				t.Errorf("Observe got %d bytes", len(r.Message))
			}
		}
	}
	mu.Unlock()
	if nackReports != 1 {
		t.Fatalf("Observe told of %d NACKs, want 1", nackReports)
	}
	if l := logs.String(); strings.Count(l, "proxy rejected config") != 1 || len(l) > 16<<10 {
		t.Fatalf("%d bytes of log, %d NACK lines", len(l), strings.Count(l, "proxy rejected config"))
	}
	stillServed(t, e, w, honest)
}

// TestSlowReaderIsCut: a client that sends its request and never reads, while the server
// has more to send than HTTP/2 flow control lets through, is cut within the send
// deadline with DeadlineExceeded, counted, and gone from the server's streams; the honest
// client keeps receiving changes.
func TestSlowReaderIsCut(t *testing.T) {
	const timeout = 500 * time.Millisecond
	e := startLimited(t, ads.Options{Limits: ads.Limits{SendTimeout: timeout}}, nil, 0)
	// 20 services of 4000 endpoints: EDS responses of about 2 MiB, far above the 64 KiB
	// stream window the slow client grants.
	w := world{endpoints: map[string]int{}, routeTag: map[string]string{}}
	var svcs []string
	for i := range 20 {
		svc := fmt.Sprintf("app-%d", i+1)
		w.endpoints[svc] = 4000
		svcs = append(svcs, svc)
	}
	e.set(t, w)
	honest := e.connect(t, "honest", nil)
	e.waitSynced(t, honest)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A fixed window turns off BDP estimation, which would otherwise grow it.
	slow := raw(t, ctx, e.addr, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err := slow.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "slow"}, TypeUrl: xdstest.EndpointType, ResourceNames: svcs}); err != nil {
		t.Fatal(err)
	}
	// The first response goes to gRPC whole, whatever the window (its write quota is
	// checked before a message, not per byte); the next one blocks in Send.
	if err := honest.WaitFor(5*time.Second, func([]xdstest.Received) bool { return len(e.srv.Streams("slow")) == 1 }); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	w.endpoints["app-1"]++
	e.set(t, w)
	start := time.Now()
	deadline := start.Add(10 * timeout)
	for metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonSendTimeout) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := metric(t, e, "bearkong_xds_refused_total", "reason", ads.ReasonSendTimeout); n != 1 {
		t.Fatalf("send timeouts = %v after %v", n, time.Since(start))
	}
	if took := time.Since(start); took < timeout {
		t.Fatalf("cut after %v, before the %v deadline", took, timeout)
	}
	for len(e.srv.Streams("slow")) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := e.srv.Streams("slow"); len(s) != 0 {
		t.Fatalf("the slow stream is still there: %+v", s[0])
	}
	stillServed(t, e, w, honest)
	// When it reads again, the client gets what was in flight, then the status.
	var err error
	for err == nil {
		_, err = slow.Recv()
	}
	if st := status.Convert(err); st.Code() != codes.DeadlineExceeded || !strings.Contains(st.Message(), "--xds-send-timeout") {
		t.Fatalf("the slow client got %v", st)
	}
}

// TestStreamLogVolume: 500 connect/disconnect cycles write a few lines at INFO: a
// summary, not two lines per stream.
func TestStreamLogVolume(t *testing.T) {
	logs := &syncBuffer{}
	e := startLimited(t, ads.Options{SummaryInterval: time.Second}, logs, slog.LevelInfo)
	e.set(t, world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}})
	const cycles = 500
	for i := range cycles {
		ctx, cancel := context.WithCancel(context.Background())
		s := raw(t, ctx, e.addr)
		if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprintf("p-%d", i%10)}, TypeUrl: xdstest.ClusterType}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	// counts sums the summaries logged so far.
	counts := func() (lines []string, opened, closed int) {
		lines = strings.Split(strings.TrimSpace(logs.String()), "\n")
		for _, l := range lines {
			var o, c int
			if i := strings.Index(l, "opened="); i >= 0 {
				fmt.Sscanf(l[i:], "opened=%d closed=%d", &o, &c)
			}
			opened, closed = opened+o, closed+c
		}
		return lines, opened, closed
	}
	lines, opened, closed := counts()
	for deadline := time.Now().Add(10 * time.Second); closed < cycles && time.Now().Before(deadline); lines, opened, closed = counts() {
		time.Sleep(50 * time.Millisecond)
	}
	if len(lines) > 10 {
		t.Fatalf("%d log lines for %d cycles:\n%s", len(lines), cycles, strings.Join(lines[:10], "\n"))
	}
	if opened != cycles || closed != cycles {
		t.Fatalf("summaries count %d opened, %d closed, want %d:\n%s", opened, closed, cycles, logs)
	}
}
