package ads

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bearkong/bearkong/pkg/resource"
)

// Metrics are the xDS server's Prometheus metrics. The registry is passed in, so tests
// and embedders own it. A nil *Metrics records nothing.
type Metrics struct {
	connected   prometheus.Gauge
	byProtocol  *prometheus.GaugeVec
	streams     prometheus.Counter
	pushes      *prometheus.CounterVec
	acks        *prometheus.CounterVec
	nacks       *prometheus.CounterVec
	staleNonces *prometheus.CounterVec
	resources   *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	convergence *prometheus.HistogramVec
	resolveErrs prometheus.Counter
	authErrs    *prometheus.CounterVec
	// refusedTotal counts streams refused or cut by a limit (Limits), by reason.
	refusedTotal *prometheus.CounterVec
	nackCut      prometheus.Counter

	// byType holds each type's children of the vectors above, looked up once: every
	// response and every ACK of every proxy counts, and WithLabelValues hashes the
	// label each time.
	byType [resource.NumTypes]typeMetrics
}

type typeMetrics struct {
	pushes, acks, nacks, stale, resources, bytes prometheus.Counter
	convergence                                  prometheus.Observer
}

// NewMetrics creates the metrics and registers them on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	byType := []string{"type"}
	m := &Metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bearkong_xds_connected_streams", Help: "ADS streams currently connected.",
		}),
		byProtocol: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "bearkong_xds_connected_streams_by_protocol", Help: "ADS streams currently connected, by protocol: sotw (StreamAggregatedResources) or delta (DeltaAggregatedResources).",
		}, []string{"protocol"}),
		streams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bearkong_xds_streams_total", Help: "ADS streams opened since start.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_push_total", Help: "DiscoveryResponses sent, by type.",
		}, byType),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_ack_total", Help: "Responses ACKed by proxies, by type.",
		}, byType),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_nack_total", Help: "Responses rejected (NACKed) by proxies, by type.",
		}, byType),
		staleNonces: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_stale_nonce_total", Help: "Requests ignored because their nonce was not the latest sent, by type.",
		}, byType),
		resources: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_resources_sent_total", Help: "Resources sent in DiscoveryResponses, by type.",
		}, byType),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_bytes_sent_total", Help: "Serialized resource bytes sent in DiscoveryResponses, by type.",
		}, byType),
		convergence: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "bearkong_xds_convergence_seconds",
			Help:    "From the Kubernetes change the control plane saw to the proxy's ACK of the push it caused, by type.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, byType),
		resolveErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bearkong_xds_config_errors_total", Help: "Streams refused because no config could be built for their node.",
		}),
		authErrs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_auth_failures_total", Help: "Streams refused for their identity (Options.Authenticate, or a node that changed), by reason.",
		}, []string{"reason"}),
		refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bearkong_xds_refused_total", Help: "Streams refused or cut by a limit on what a client sends or does (ads.Limits), by reason.",
		}, []string{"reason"}),
		nackCut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bearkong_xds_nack_detail_truncated_total", Help: "NACKs whose error_detail was cut to --xds-max-nack-detail-bytes before it was kept, logged or reported.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.byProtocol, m.streams, m.pushes, m.acks, m.nacks, m.staleNonces, m.resources, m.bytes, m.convergence, m.resolveErrs, m.authErrs, m.refusedTotal, m.nackCut)
	}
	for _, p := range []string{"sotw", "delta"} {
		m.byProtocol.WithLabelValues(p)
	}
	for _, r := range limitReasons {
		m.refusedTotal.WithLabelValues(r)
	}
	// Every reason appears from the start, so that a rate over it is never empty.
	for _, r := range []string{ReasonUnauthenticated, ReasonPermissionDenied, ReasonNodeChanged, ReasonOther} {
		m.authErrs.WithLabelValues(r)
	}
	// Every type appears from the start, so a query for a type never comes back empty.
	for _, t := range resource.Types {
		l := t.String()
		m.byType[t] = typeMetrics{
			pushes:      m.pushes.WithLabelValues(l),
			acks:        m.acks.WithLabelValues(l),
			nacks:       m.nacks.WithLabelValues(l),
			stale:       m.staleNonces.WithLabelValues(l),
			resources:   m.resources.WithLabelValues(l),
			bytes:       m.bytes.WithLabelValues(l),
			convergence: m.convergence.WithLabelValues(l),
		}
	}
	return m
}

func (m *Metrics) push(t resource.Type, n, size int) {
	if m == nil {
		return
	}
	tm := &m.byType[t]
	tm.pushes.Inc()
	tm.resources.Add(float64(n))
	tm.bytes.Add(float64(size))
}

func (m *Metrics) ack(t resource.Type) {
	if m != nil {
		m.byType[t].acks.Inc()
	}
}

func (m *Metrics) nack(t resource.Type) {
	if m != nil {
		m.byType[t].nacks.Inc()
	}
}

func (m *Metrics) stale(t resource.Type) {
	if m != nil {
		m.byType[t].stale.Inc()
	}
}

func (m *Metrics) converged(t resource.Type, d time.Duration) {
	if m != nil {
		m.byType[t].convergence.Observe(d.Seconds())
	}
}

func (m *Metrics) streamOpened(protocol string) {
	if m != nil {
		m.connected.Inc()
		m.byProtocol.WithLabelValues(protocol).Inc()
		m.streams.Inc()
	}
}

func (m *Metrics) streamClosed(protocol string) {
	if m != nil {
		m.connected.Dec()
		m.byProtocol.WithLabelValues(protocol).Dec()
	}
}

func (m *Metrics) resolveError() {
	if m != nil {
		m.resolveErrs.Inc()
	}
}

func (m *Metrics) authFailure(reason string) {
	if m != nil {
		m.authErrs.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) refused(reason string) {
	if m != nil {
		m.refusedTotal.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) nackTruncated() {
	if m != nil {
		m.nackCut.Inc()
	}
}
