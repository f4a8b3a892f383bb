package ads

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/metadata"

	"github.com/bearkong/bearkong/pkg/resource"
)

// fanOutWorld is a mesh shaped like bearkong's at S services: clusters and endpoints
// shared by every proxy, two listeners, two route configurations and two secrets. Two
// endpoint sets differ in one service's ClusterLoadAssignment: switching between them is
// a one-endpoint change.
type fanOutWorld struct {
	clusters, listeners, routes, secrets *resource.Set
	endpoints                            [2]*resource.Set
}

func newFanOutWorld(b testing.TB, services int) *fanOutWorld {
	var clusters, clas, clas2 []*resource.Resource
	for i := range services {
		name := fmt.Sprintf("svc-%05d.ns-%03d", i, i/100)
		clusters = append(clusters, res(b, resource.Cluster, name, "cluster "+name))
		cla := res(b, resource.Endpoint, name, "endpoints of "+name+": 10.0.0.1 10.0.0.2 10.0.0.3")
		clas = append(clas, cla)
		if i == services/2 {
			cla = res(b, resource.Endpoint, name, "endpoints of "+name+": 10.0.0.1 10.0.0.2 10.0.0.4")
		}
		clas2 = append(clas2, cla)
	}
	return &fanOutWorld{
		clusters:  resource.NewSet(clusters...),
		endpoints: [2]*resource.Set{resource.NewSet(clas...), resource.NewSet(clas2...)},
		listeners: resource.NewSet(res(b, resource.Listener, "inbound", "l1"), res(b, resource.Listener, "outbound", "l2")),
		routes:    resource.NewSet(res(b, resource.Route, "inbound", "r1"), res(b, resource.Route, "outbound", "r2")),
		secrets:   resource.NewSet(res(b, resource.Secret, "trust-bundle", "roots"), res(b, resource.Secret, "workload-cert", "chain and key")),
	}
}

func (w *fanOutWorld) proxy(gen int) *resource.Proxy {
	return &resource.Proxy{Views: [resource.NumTypes]resource.View{
		resource.Cluster:  {w.clusters},
		resource.Endpoint: {w.endpoints[gen%2]},
		resource.Listener: {w.listeners},
		resource.Route:    {w.routes},
		resource.Secret:   {w.secrets},
	}}
}

// subscription is what a proxy of w subscribes to of type t: every cluster's assignment,
// the routes and the secrets by name, the rest by wildcard (nil).
func (w *fanOutWorld) subscription(t resource.Type) []string {
	switch t {
	case resource.Endpoint:
		return w.clusters.Names()
	case resource.Route:
		return w.routes.Names()
	case resource.Secret:
		return w.secrets.Names()
	}
	return nil
}

// syncSession brings a session to SYNCED on every type, as a proxy would.
func syncSession(b testing.TB, s *session, w *fanOutWorld) {
	s.onConfig(w.proxy(0), time.Time{})
	for _, t := range resource.Types {
		names := w.subscription(t)
		_, resps := s.onRequest(t, &discoveryv3.DiscoveryRequest{TypeUrl: t.URL(), ResourceNames: names})
		if len(resps) != 1 {
			b.Fatalf("%s: %d responses to the first request", t, len(resps))
		}
		s.onRequest(t, &discoveryv3.DiscoveryRequest{TypeUrl: t.URL(), VersionInfo: resps[0].VersionInfo, ResponseNonce: resps[0].Nonce, ResourceNames: names})
	}
}

// BenchmarkFanOutSessions measures the protocol work of a one-endpoint change for N
// proxies, without gRPC: each session gets the new config, answers with the one changed
// ClusterLoadAssignment, and takes the proxy's ACK (which repeats the whole EDS
// subscription, as Envoy does).
func BenchmarkFanOutSessions(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("services=1000/proxies=%d", n), func(b *testing.B) {
			w := newFanOutWorld(b, 1000)
			sessions := make([]*session, n)
			for i := range sessions {
				sessions[i] = newSession(nil, nil)
				syncSession(b, sessions[i], w)
			}
			gen := 0
			b.ReportAllocs()
			for b.Loop() {
				gen++
				p := w.proxy(gen)
				for _, s := range sessions {
					resps := s.onConfig(p, time.Time{})
					if len(resps) != 1 || len(resps[0].Resources) != 1 {
						b.Fatalf("%d responses for a one-endpoint change", len(resps))
					}
					s.onRequest(resource.Endpoint, &discoveryv3.DiscoveryRequest{
						TypeUrl: resource.Endpoint.URL(), VersionInfo: resps[0].VersionInfo, ResponseNonce: resps[0].Nonce,
						ResourceNames: w.clusters.Names(),
					})
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/proxy")
		})
	}
}

// fakeStream is an in-process ADS stream: what the server sends goes to the proxy's
// answer function, which may queue requests back.
type fakeStream struct {
	ctx    context.Context
	reqs   chan *discoveryv3.DiscoveryRequest
	onSend func(*discoveryv3.DiscoveryResponse)
}

func (f *fakeStream) Send(r *discoveryv3.DiscoveryResponse) error { f.onSend(r); return nil }
func (f *fakeStream) Recv() (*discoveryv3.DiscoveryRequest, error) {
	select {
	case r := <-f.reqs:
		return r, nil
	case <-f.ctx.Done():
		return nil, io.EOF
	}
}
func (f *fakeStream) SetHeader(metadata.MD) error  { return nil }
func (f *fakeStream) SendHeader(metadata.MD) error { return nil }
func (f *fakeStream) SetTrailer(metadata.MD)       {}
func (f *fakeStream) Context() context.Context     { return f.ctx }
func (f *fakeStream) SendMsg(any) error            { return nil }
func (f *fakeStream) RecvMsg(any) error            { return nil }

// BenchmarkFanOutServer measures a one-endpoint change through the whole server (stream
// loops, Resolve, metrics, /debug state) for N in-process streams, without gRPC: from
// SetConfig to every stream having sent its response, plus the ACKs.
func BenchmarkFanOutServer(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("services=1000/proxies=%d", n), func(b *testing.B) {
			w := newFanOutWorld(b, 1000)
			srv := NewServer(Options{Metrics: NewMetrics(nil)})
			var gen atomic.Int64
			srv.SetConfig(&Config{Resolve: func(*corev3.Node) (*resource.Proxy, error) { return w.proxy(int(gen.Load())), nil }})
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var pending sync.WaitGroup // responses expected
			for i := range n {
				fs := &fakeStream{ctx: ctx, reqs: make(chan *discoveryv3.DiscoveryRequest, 8)}
				fs.onSend = func(r *discoveryv3.DiscoveryResponse) {
					var names []string
					switch r.TypeUrl {
					case resource.Endpoint.URL():
						names = w.clusters.Names()
					case resource.Route.URL():
						names = w.routes.Names()
					}
					fs.reqs <- &discoveryv3.DiscoveryRequest{TypeUrl: r.TypeUrl, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce, ResourceNames: names}
					pending.Done()
				}
				pending.Add(4)
				fs.reqs <- &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: fmt.Sprint("proxy-", i)}, TypeUrl: resource.Cluster.URL()}
				fs.reqs <- &discoveryv3.DiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResourceNames: w.clusters.Names()}
				fs.reqs <- &discoveryv3.DiscoveryRequest{TypeUrl: resource.Listener.URL()}
				fs.reqs <- &discoveryv3.DiscoveryRequest{TypeUrl: resource.Route.URL(), ResourceNames: w.routes.Names()}
				wg.Go(func() { _ = srv.StreamAggregatedResources(fs) })
			}
			pending.Wait()
			b.ReportAllocs()
			for b.Loop() {
				pending.Add(n)
				gen.Add(1)
				srv.SetConfig(&Config{Resolve: func(*corev3.Node) (*resource.Proxy, error) { return w.proxy(int(gen.Load())), nil }})
				pending.Wait()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/proxy")
			b.StopTimer()
			cancel()
			wg.Wait()
		})
	}
}
