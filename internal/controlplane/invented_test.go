package controlplane_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/resource"
)

// inputCerts are certificates whose bytes depend only on their inputs, as pkg/ca's do
// within a window, without pkg/ca's own memo of every leaf it issued in the window (see
// TestInventedNodesLeaveNothing for why).
type inputCerts struct{}

func (inputCerts) Workload(namespace, serviceAccount, pod, podUID string) ([]byte, []byte, error) {
	id := namespace + "/" + serviceAccount + "/" + pod + "/" + podUID
	return bytes.Repeat([]byte(id+" chain "), 1+2048/len(id)), bytes.Repeat([]byte(id+" key "), 1+1024/len(id)), nil
}
func (inputCerts) Bundle() []byte                       { return []byte("bundle") }
func (inputCerts) NextRotation(now time.Time) time.Time { return now.Add(time.Hour) }

func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestInventedNodesLeaveNothing is issue 16's first attack over real gRPC: 2000 streams,
// one after the other, each naming a namespace, pod and addresses that no pod has, each
// served its whole config and closed. With no Kubernetes change in between, the heap
// after a forced GC must be back within 10 % of before, and an honest proxy stays SYNCED.
//
// The certificates are inputCerts, not pkg/ca: the Authority memoizes every leaf it
// issues until its window ends (about 2.7 KiB per invented pod: 7.0 -> 12.4 MiB here with
// it), and only a channel without authentication (--xds-insecure) lets a client invent
// pods; the secure channel binds the node's pod to its token.
func TestInventedNodesLeaveNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("2000 gRPC streams: skipped with -short")
	}
	h := startWith(t, inputCerts{})
	h.connect(t, "app-1-0", "10.0.0.1")
	h.waitSynced(t, "app-1-0.default")

	invent := func(i int) error {
		ip := fmt.Sprintf("10.%d.%d.%d", 100+i/62500, i/250%250, i%250+1)
		md, _ := structpb.NewStruct(map[string]any{
			"pod_name": "p", "pod_namespace": fmt.Sprintf("invented-%d", i), "listen_ip": ip, "outbound_ip": ip, "app_address": ip + ":9090",
		})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := xdstest.Dial(ctx, h.cp.XDSAddr(), &corev3.Node{Id: fmt.Sprintf("p.invented-%d", i), Cluster: "bearkong-mesh", Metadata: md})
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Start(); err != nil {
			return err
		}
		return c.WaitFor(10*time.Second, func(rs []xdstest.Received) bool {
			return xdstest.Count(rs, resource.Route.URL()) > 0 && xdstest.Count(rs, resource.Secret.URL()) > 0
		})
	}
	// Warm what any node builds once (the gRPC server's buffers, the shared routes).
	for i := range 50 {
		if err := invent(100000 + i); err != nil {
			t.Fatal(err)
		}
	}
	waitStreams(t, h, 1)
	before := heapAfterGC()
	const invented = 2000
	for i := range invented {
		if err := invent(i); err != nil {
			t.Fatalf("invented node %d: %v", i, err)
		}
	}
	waitStreams(t, h, 1)
	after := heapAfterGC()
	t.Logf("heap after GC: %d KiB before, %d KiB after %d invented nodes", before/1024, after/1024, invented)
	if after > before+before/10 {
		t.Errorf("heap grew from %d KiB to %d KiB (more than 10 %%)", before/1024, after/1024)
	}
	h.waitSynced(t, "app-1-0.default")
}

// waitStreams waits until /debug/streams counts n streams.
func waitStreams(t *testing.T, h *harness, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for got := len(h.streams(t, "")); got != n; got = len(h.streams(t, "")) {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams, want %d", got, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
