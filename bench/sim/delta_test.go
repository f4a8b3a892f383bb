package sim

import (
	"context"
	"io"
	"maps"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeDeltaStream is one delta stream as a client sees it: what the client sends, and
// the responses the test hands it. Like gRPC's, Send says io.EOF once the stream's
// context ended; RecvMsg waits for gate, so that a test can have a response already
// received when the stream is cut.
type fakeDeltaStream struct {
	discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient // only Send and RecvMsg are used
	ctx                                                                   context.Context
	gate                                                                  chan struct{}
	resps                                                                 chan []byte
	sent                                                                  chan *discoveryv3.DeltaDiscoveryRequest
}

func (s *fakeDeltaStream) Send(r *discoveryv3.DeltaDiscoveryRequest) error {
	if s.ctx.Err() != nil {
		return io.EOF
	}
	s.sent <- r
	return nil
}

func (s *fakeDeltaStream) RecvMsg(m any) error {
	select {
	case <-s.gate:
	case <-time.After(10 * time.Second):
		return status.Error(codes.DeadlineExceeded, "test: gate never opened")
	}
	select {
	case b := <-s.resps:
		return m.(*rawDeltaResponse).parse(b)
	default:
	}
	select {
	case b := <-s.resps:
		return m.(*rawDeltaResponse).parse(b)
	case <-s.ctx.Done():
		return status.FromContextError(s.ctx.Err()).Err()
	}
}

// TestDeltaReconnectWithResponseInFlight: a response that arrived just before the
// stream was cut is applied, its ACK fails on the cut stream, and the client reconnects
// with what it holds, as Envoy does; it does not count as a stream the server ended.
func TestDeltaReconnectWithResponseInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	streams := make(chan *fakeDeltaStream, 2)
	f := &Fleet{}
	c := &Client{ID: 0, Node: &corev3.Node{Id: "sidecar~10.0.0.1~p.ns~ns.svc.cluster.local"}, fleet: f}
	f.Clients = []*Client{c}
	c.openDelta = func() (discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, context.CancelFunc, error) {
		sctx, scancel := context.WithCancel(ctx)
		s := &fakeDeltaStream{ctx: sctx, gate: make(chan struct{}), resps: make(chan []byte, 1), sent: make(chan *discoveryv3.DeltaDiscoveryRequest, 16)}
		streams <- s
		return s, scancel, nil
	}
	var err error
	if c.dstream, c.cancelStream, err = c.openDelta(); err != nil {
		t.Fatal(err)
	}
	first := <-streams
	go c.runDelta()
	if r := <-first.sent; r.TypeUrl != CDS.URL() {
		t.Fatalf("first request for %s, want CDS", r.TypeUrl)
	}

	cl, err := anypb.New(&clusterv3.Cluster{Name: "c1", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := proto.Marshal(&discoveryv3.DeltaDiscoveryResponse{TypeUrl: CDS.URL(), Nonce: "1",
		Resources: []*discoveryv3.Resource{{Name: "c1", Version: "v1", Resource: cl}}})
	if err != nil {
		t.Fatal(err)
	}
	first.resps <- resp // received...
	f.Reconnect()       // ...when the stream is cut
	close(first.gate)

	var second *fakeDeltaStream
	select {
	case second = <-streams:
	case <-ctx.Done():
		t.Fatalf("no new stream; client lost: %v (%v)", c.Lost(), c.err)
	}
	r := <-second.sent
	if r.TypeUrl != CDS.URL() || r.GetNode().GetId() != c.Node.Id || !maps.Equal(r.InitialResourceVersions, map[string]string{"c1": "v1"}) {
		t.Errorf("first request of the new stream = %v, want CDS with the node and c1 at v1", r)
	}
	if r := <-second.sent; r.TypeUrl != EDS.URL() || len(r.ResourceNamesSubscribe) != 1 || r.ResourceNamesSubscribe[0] != "c1" {
		t.Errorf("second request of the new stream = %v, want EDS subscribing to c1", r)
	}
	if c.Lost() {
		t.Errorf("the client counts its stream as lost: %v", c.err)
	}
	close(second.gate)
}
