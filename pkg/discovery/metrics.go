package discovery

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label of bearkong_discovery_snapshots_total.
const (
	resultPublished = "published"
	resultUnchanged = "unchanged"
	resultError     = "error"
)

// metrics are the package's Prometheus collectors. They are registered on the
// Registerer the caller passes in, never on the global registry, so tests and several
// instances do not collide.
type metrics struct {
	events       *prometheus.CounterVec
	ignored      *prometheus.CounterVec
	snapshots    *prometheus.CounterVec
	buildSeconds prometheus.Histogram
	apiWrites    *prometheus.CounterVec
	diagnostics  prometheus.Gauge
	quarantined  prometheus.Gauge
	quarantines  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_discovery_events_total",
			Help: "Kubernetes watch events seen by discovery, by object kind and event type. Informer resyncs are not counted.",
		}, []string{"kind", "event"}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_discovery_snapshots_total",
			Help: "Mesh snapshots built, by result: published (meaning changed), unchanged (suppressed) or error.",
		}, []string{"result"}),
		buildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "bearkong_discovery_snapshot_build_seconds",
			Help:    "Time to build one mesh snapshot from the informer caches.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9), // 100µs .. ~6.5s
		}),
	}
	m.apiWrites = newAPIWrites()
	m.diagnostics = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bearkong_diagnostics",
		Help: "Problems found in the mesh's objects (invalid annotations, targetPorts that miss the sidecar); see /debug/diagnostics.",
	})
	m.quarantined = register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bearkong_quarantined_objects",
		Help: "Objects left out of the config because proxies rejected what bearkong built from them (or held back as suspects while that is worked out).",
	}))
	m.quarantines = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bearkong_quarantines_total",
		Help: "Objects quarantined because proxies rejected the config built from them, by kind (HTTPRoute, Service).",
	}, []string{"kind"}))
	m.quarantines.WithLabelValues(KindHTTPRoute)
	m.quarantines.WithLabelValues(KindService)
	m.apiWrites = register(reg, m.apiWrites)
	m.diagnostics = register(reg, m.diagnostics)
	m.events = register(reg, m.events)
	m.snapshots = register(reg, m.snapshots)
	m.buildSeconds = register(reg, m.buildSeconds)
	m.ignored = newIgnoredEvents(reg)

	// Create every series up front so that dashboards and rate() see zeros, not gaps.
	for _, kind := range []string{kindService, kindEndpointSlice, kindPod, kindHTTPRoute} {
		for _, event := range []string{eventAdd, eventUpdate, eventDelete} {
			m.events.WithLabelValues(kind, event)
		}
	}
	for _, result := range []string{resultPublished, resultUnchanged, resultError} {
		m.snapshots.WithLabelValues(result)
	}
	m.apiWrites.WithLabelValues("events", "create", "ok")
	m.apiWrites.WithLabelValues("events", "create", "error")
	m.apiWrites.WithLabelValues("httproutes/status", "update", "ok")
	m.apiWrites.WithLabelValues("httproutes/status", "update", "error")
	return m
}

// register registers c on reg. If an identical collector is already there (a second
// Discovery on the same registry), it shares that one instead of failing; any other
// error is a programming error and panics, as MustRegister would.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}

// newAPIWrites is bearkong_kube_api_writes_total. Discovery and the RootPublisher both
// write to the API and count it here: built from one definition, they share one
// collector when they are registered on the same registry.
func newAPIWrites() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bearkong_kube_api_writes_total",
		Help: "Writes bearkong made to the Kubernetes API, by resource, verb and result. In steady state it does not move.",
	}, []string{"resource", "verb", "result"})
}
