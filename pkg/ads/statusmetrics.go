package ads

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bearkong/bearkong/pkg/resource"
)

// StatusCollector exports, at each scrape, how many of the server's streams are in each
// status per type (what /debug/streams shows stream by stream), and how long the oldest
// unacknowledged response of each type has waited: what the alerts "a proxy NACKing
// for over a minute" and "a proxy STALE for over a minute" need
// (manifests/prometheus/rules.yaml).
//
// The series are per type and status, not per proxy: 4 statuses and 1 age per type,
// whatever the number of proxies. A per-proxy label would make a series per proxy and
// type (50,000 at 10,000 proxies), and a new set at every pod restart, for Prometheus to
// keep for its whole retention; an alert that fires says which type, and `bearkong
// status` or /debug/streams names the proxies. The counts are computed from the
// streams' published state when Prometheus asks, so streams pay nothing for them.
type StatusCollector struct {
	s   *Server
	now func() time.Time

	proxies, staleAge *prometheus.Desc
}

// NewStatusCollector returns the collector of s's stream states, to register with the
// registry that serves /metrics.
func NewStatusCollector(s *Server) *StatusCollector {
	return &StatusCollector{
		s:   s,
		now: time.Now,
		proxies: prometheus.NewDesc("bearkong_xds_proxies",
			"ADS streams (one per connected proxy) by type and status: SYNCED, STALE (sent, not yet ACKed), NACKED (rejected; the proxy runs its last accepted version) or NOT_SENT.",
			[]string{"type", "status"}, nil),
		staleAge: prometheus.NewDesc("bearkong_xds_stale_seconds",
			"Age of the oldest response of this type still waiting for its proxy's ACK or NACK (a STALE stream); 0 when none waits.",
			[]string{"type"}, nil),
	}
}

// statuses are the values of the status label, every one exported (0 included), so
// that queries and alerts find a series whatever the mesh's state.
var statuses = []Status{Synced, StaleStatus, Nacked, NotSent}

// Describe implements prometheus.Collector.
func (c *StatusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.proxies
	ch <- c.staleAge
}

// Collect implements prometheus.Collector.
func (c *StatusCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	var counts [resource.NumTypes]map[Status]int
	var oldest [resource.NumTypes]time.Duration
	for t := range counts {
		counts[t] = make(map[Status]int, len(statuses))
	}
	for _, info := range c.s.Streams("") {
		for _, t := range resource.Types {
			ti := info.Types.Get(t)
			st := ti.Status
			if st == "" {
				st = NotSent
			}
			counts[t][st]++
			if st == StaleStatus && ti.SentAt != nil {
				oldest[t] = max(oldest[t], now.Sub(*ti.SentAt))
			}
		}
	}
	for _, t := range resource.Types {
		for _, st := range statuses {
			ch <- prometheus.MustNewConstMetric(c.proxies, prometheus.GaugeValue, float64(counts[t][st]), t.String(), string(st))
		}
		ch <- prometheus.MustNewConstMetric(c.staleAge, prometheus.GaugeValue, oldest[t].Seconds(), t.String())
	}
}
