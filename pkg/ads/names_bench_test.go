package ads

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/bearkong/bearkong/pkg/resource"
)

// heapAlloc is the live heap after a GC.
func heapAlloc() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkTwoSetRDS: a proxy's RDS subscription as pkg/translate builds it, two sets
// (every Service's route configuration and the proxy's inbound one), at S=1000. It
// reports the heap a session synced on RDS holds (held-B/proxy, over N sessions, SotW and
// delta), and per op: for "subscribe", what a new session's subscription and its ACK
// cost; for "ack", what a SotW RDS ACK costs the server, decoding included (Envoy repeats
// its whole subscription, in watch order, in every request).
func BenchmarkTwoSetRDS(b *testing.B) {
	const services, proxies = 1000, 1000
	w := newTwoSetRoutes(b, services, 10)
	names := w.envoyOrder()
	b.Run(fmt.Sprintf("sotw/subscribe/services=%d/proxies=%d", services, proxies), func(b *testing.B) {
		before := heapAlloc()
		sessions := make([]*session, proxies)
		for i := range sessions {
			sessions[i] = newSession(nil, nil)
			syncRDS(b, sessions[i], w.proxy(i), names)
		}
		held := float64(heapAlloc()-before) / proxies
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			syncRDS(b, newSession(nil, nil), w.proxy(i), names)
		}
		b.ReportMetric(held, "held-B/proxy")
		runtime.KeepAlive(sessions)
	})
	b.Run(fmt.Sprintf("delta/subscribe/services=%d/proxies=%d", services, proxies), func(b *testing.B) {
		before := heapAlloc()
		sessions := make([]*deltaSession, proxies)
		for i := range sessions {
			sessions[i] = newDeltaSession(nil, nil)
			syncDeltaRDS(b, sessions[i], w.proxy(i), names, 1)
		}
		held := float64(heapAlloc()-before) / proxies
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			syncDeltaRDS(b, newDeltaSession(nil, nil), w.proxy(i), names, 1)
		}
		b.ReportMetric(held, "held-B/proxy")
		runtime.KeepAlive(sessions)
	})
	b.Run(fmt.Sprintf("sotw/ack/services=%d", services), func(b *testing.B) {
		s := newSession(nil, nil)
		syncRDS(b, s, w.proxy(0), names)
		benchmarkACK(b, s, resource.Route, names, false)
	})
}
