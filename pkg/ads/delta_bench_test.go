package ads

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/bearkong/bearkong/pkg/resource"
)

// syncDelta brings a delta session to SYNCED on every type, as Envoy would: CDS and LDS
// by legacy wildcard, the others by name.
func syncDelta(b testing.TB, s *deltaSession, w *fanOutWorld) {
	s.onConfig(w.proxy(0), time.Time{})
	for _, t := range resource.Types {
		_, resps := s.onRequest(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResourceNamesSubscribe: w.subscription(t)})
		if len(resps) != 1 {
			b.Fatalf("%s: %d responses to the first request", t, len(resps))
		}
		s.onRequest(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResponseNonce: resps[0].Nonce})
	}
}

// responseBytes is the resource bytes of delta responses.
func responseBytes(rs []*discoveryv3.DeltaDiscoveryResponse) int {
	n := 0
	for _, r := range rs {
		for _, res := range r.Resources {
			n += len(res.Resource.GetValue())
		}
	}
	return n
}

// BenchmarkDeltaFanOutSessions measures the delta protocol work for N proxies, without
// gRPC, of a one-endpoint change and of a new Service (a cluster and its assignment
// added, then removed), and the heap a synced session holds.
func BenchmarkDeltaFanOutSessions(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		w := newFanOutWorld(b, 1000)
		// With one more Service: its cluster and its assignment.
		grown := *w
		grown.clusters = resource.NewSet(append(w.clusters.All(), res(b, resource.Cluster, "svc-new.ns", "cluster svc-new"))...)
		grown.endpoints[0] = resource.NewSet(append(w.endpoints[0].All(), res(b, resource.Endpoint, "svc-new.ns", "endpoints of svc-new: 10.0.0.9"))...)
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		sessions := make([]*deltaSession, n)
		for i := range sessions {
			sessions[i] = newDeltaSession(nil, nil)
			syncDelta(b, sessions[i], w)
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		held := float64(after.HeapAlloc-before.HeapAlloc) / float64(n)

		b.Run(fmt.Sprintf("endpoint/services=1000/proxies=%d", n), func(b *testing.B) {
			gen, sent := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				gen++
				p := w.proxy(gen)
				for _, s := range sessions {
					resps := s.onConfig(p, time.Time{})
					if len(resps) != 1 || len(resps[0].Resources) != 1 {
						b.Fatalf("%d responses for a one-endpoint change", len(resps))
					}
					sent += responseBytes(resps)
					s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResponseNonce: resps[0].Nonce})
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/proxy")
			b.ReportMetric(float64(sent)/float64(b.N)/float64(n), "sent-B/proxy")
			b.ReportMetric(held, "held-B/proxy")
		})
		// Back to the first endpoint set, whatever number of iterations the endpoint
		// run made: the new Service must be its only change.
		for _, s := range sessions {
			for _, r := range s.onConfig(w.proxy(0), time.Time{}) {
				s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
			}
		}
		b.Run(fmt.Sprintf("new-service/services=1000/proxies=%d", n), func(b *testing.B) {
			gen, sent := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				gen++
				p := w.proxy(0)
				if gen%2 == 1 {
					p = grown.proxy(0)
				}
				for _, s := range sessions {
					resps := s.onConfig(p, time.Time{})
					if len(resps) != 1 {
						b.Fatalf("%d responses for a Service added or removed", len(resps))
					}
					sent += responseBytes(resps)
					s.onRequest(resource.Cluster, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Cluster.URL(), ResponseNonce: resps[0].Nonce})
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/proxy")
			b.ReportMetric(float64(sent)/float64(b.N)/float64(n), "sent-B/proxy")
		})
	}
}

// BenchmarkDeltaInitialSync measures what one proxy's initial sync costs the server at
// S=1000, without gRPC: the session's work for Envoy's first request of every type and
// its ACKs, and the codec's marshalling of the responses. Every proxy gets the same
// resources, so after the first the codec shares their bytes.
func BenchmarkDeltaInitialSync(b *testing.B) {
	w := newFanOutWorld(b, 1000)
	b.ReportAllocs()
	for b.Loop() {
		s := newDeltaSession(nil, nil)
		s.onConfig(w.proxy(0), time.Time{})
		for _, t := range resource.Types {
			_, resps := s.onRequest(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResourceNamesSubscribe: w.subscription(t)})
			for _, r := range resps {
				bs, err := codec{}.Marshal(r)
				if err != nil {
					b.Fatal(err)
				}
				bs.Free()
			}
			s.onRequest(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResponseNonce: resps[0].Nonce})
		}
	}
}

// BenchmarkDeltaSubscribeOne measures a synced proxy's request that subscribes to one
// more name and the next that unsubscribes from it, at S=1000: what Envoy sends for a
// new Service's assignment and route configuration. Its cost must not grow with S.
func BenchmarkDeltaSubscribeOne(b *testing.B) {
	w := newFanOutWorld(b, 1000)
	s := newDeltaSession(nil, nil)
	syncDelta(b, s, w)
	name := w.clusters.Names()[500]
	b.ReportAllocs()
	for b.Loop() {
		_, resps := s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResourceNamesUnsubscribe: []string{name}})
		if len(resps) != 0 {
			b.Fatalf("%d responses to an unsubscription", len(resps))
		}
		_, resps = s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResourceNamesSubscribe: []string{name}})
		if len(resps) != 1 || len(resps[0].Resources) != 1 {
			b.Fatalf("%d responses to a subscription", len(resps))
		}
		s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResponseNonce: resps[0].Nonce})
	}
}

// BenchmarkDeltaReconnect measures a proxy's reconnect at S=1000 (to a restarted control
// plane, or another replica) with nothing changed: a new session, told by
// initial_resource_versions that the client holds everything, answers each type
// empty.
func BenchmarkDeltaReconnect(b *testing.B) {
	w := newFanOutWorld(b, 1000)
	p := w.proxy(0)
	initial := make(map[resource.Type]map[string]string)
	for _, t := range resource.Types {
		initial[t] = map[string]string{}
		for _, r := range p.Views[t].All() {
			initial[t][r.Name] = r.Hash
		}
	}
	var held *deltaSession
	b.ReportAllocs()
	for b.Loop() {
		s := newDeltaSession(nil, nil)
		s.onConfig(p, time.Time{})
		for _, t := range resource.Types {
			_, resps := s.onRequest(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResourceNamesSubscribe: w.subscription(t), InitialResourceVersions: initial[t]})
			if len(resps) != 1 || len(resps[0].Resources)+len(resps[0].RemovedResources) != 0 {
				b.Fatalf("%s: %d responses, want one empty", t, len(resps))
			}
			s.onRequest(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResponseNonce: resps[0].Nonce})
		}
		held = s
	}
	runtime.KeepAlive(held)
}

// BenchmarkDeltaSubscribeNewService measures what Envoy's subscription to a new
// Service's assignment costs a synced proxy at S=1000, and its unsubscription when the
// Service goes: the config gains a set with one more name, the proxy subscribes to it
// and ACKs; the config goes back, the proxy unsubscribes. Either subscription is then
// a set's list, so neither should cost a copy of the 1000 names.
func BenchmarkDeltaSubscribeNewService(b *testing.B) {
	w := newFanOutWorld(b, 1000)
	s := newDeltaSession(nil, nil)
	syncDelta(b, s, w)
	grown := *w
	grown.endpoints[0] = resource.NewSet(append(w.endpoints[0].All(), res(b, resource.Endpoint, "svc-new.ns", "endpoints of svc-new"))...)
	big, small := grown.proxy(0), w.proxy(0)
	b.ReportAllocs()
	for b.Loop() {
		s.onConfig(big, time.Time{})
		_, resps := s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResourceNamesSubscribe: []string{"svc-new.ns"}})
		if len(resps) != 1 || len(resps[0].Resources) != 1 {
			b.Fatalf("%d responses to a subscription", len(resps))
		}
		s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResponseNonce: resps[0].Nonce})
		for _, r := range s.onConfig(small, time.Time{}) {
			s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.TypeUrl, ResponseNonce: r.Nonce})
		}
		s.onRequest(resource.Endpoint, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(), ResourceNamesUnsubscribe: []string{"svc-new.ns"}})
	}
}
