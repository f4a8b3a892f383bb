package controlplane_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/discovery"
)

// TestLimitsReachTheServer: Options.Limits (the cp flags) reach the ADS server: with a
// node id limit of 8 bytes, a proxy whose id is longer is refused with InvalidArgument
// and counted in /metrics, while one within the limit is served.
func TestLimitsReachTheServer(t *testing.T) {
	client := fake.NewClientset(service("app-1"), pod("app-1", 0, "10.0.0.1"), slice("app-1", "10.0.0.1"))
	reg := controlplane.NewRegistry()
	d := discovery.New(client, discovery.Options{QuietPeriod: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, Registerer: reg})
	cp := controlplane.New(d, controlplane.Options{XDSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Registry: reg, DrainTimeout: time.Second,
		Certificates: testCertificates(t), Limits: ads.Limits{MaxNodeIDBytes: len("app-1-0.default")}})
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	h := &harness{client: client, cp: cp, http: "http://" + cp.HTTPAddr()}

	ok := h.connect(t, "app-1-0", "10.0.0.1")
	h.waitSynced(t, "app-1-0.default")
	long := h.connect(t, "app-1-0-but-longer", "10.0.0.9")
	if err := long.WaitFor(5*time.Second, func([]xdstest.Received) bool { return false }); status.Code(long.Err()) != codes.InvalidArgument {
		t.Fatalf("a node id over the limit: %v (%v)", long.Err(), err)
	}
	if n := h.metric(t, `bearkong_xds_refused_total{reason="node_id_too_long"}`); n != 1 {
		t.Fatalf("refused = %v", n)
	}
	if ok.Err() != nil {
		t.Fatalf("the proxy within the limit: %v", ok.Err())
	}
}
