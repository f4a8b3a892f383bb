package controlplane

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The golden signals of /debug/signals, one PromQL query each, kept together here so that
// they are easy to change when the sidecars' stats change.
//
// They read Envoy's per-cluster upstream stats, which every caller's sidecar keeps for
// each Service it calls: the Service as its callers see it, summed over every caller. The
// cluster of a Service carries the stat name "<namespace>/<name>" (translate.StatName, as
// the cluster's alt_stat_name), which the Prometheus exposition of Envoy's /stats puts in
// the label envoy_cluster_name; the sidecar's own clusters (the local app, xDS) have no
// "/" and are left out. These stats and labels are Envoy's own, so the queries work on
// the local mesh's Prometheus and on one that scrapes a cluster's pods alike, whatever
// target labels it adds.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/upstream/cluster_manager/cluster_stats
const (
	// signalWindow is the range of every rate(): twelve scrapes at the 5 s interval of the
	// local mesh's and manifests/prometheus's Prometheus, well above the two a rate()
	// needs, and still recent enough to show a change within a minute.
	signalWindow = "1m"
	// signalServiceLabel is the label that names the Service in every query's result.
	signalServiceLabel = "envoy_cluster_name"

	// signalRequestRate is requests per second to each Service.
	signalRequestRate = `sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total{envoy_cluster_name=~".+/.+"}[` + signalWindow + `]))`
	// signalErrorRate is 5xx responses per second from each Service. A Service that
	// answered no 5xx has no series here: its error ratio is 0.
	signalErrorRate = `sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name=~".+/.+",envoy_response_code_class="5"}[` + signalWindow + `]))`
	// signalLatencyP99 is the 99th percentile, in milliseconds (Envoy's unit for
	// upstream_rq_time), of the time from a request's start to its response's end.
	signalLatencyP99 = `histogram_quantile(0.99, sum by (envoy_cluster_name, le) (rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name=~".+/.+"}[` + signalWindow + `])))`
)

// signalQueryTimeout bounds each query, so that a slow Prometheus slows the page's
// refresh, never the control plane.
const signalQueryTimeout = 5 * time.Second

// ServiceSignals are one Service's golden signals over the window.
type ServiceSignals struct {
	// Service is "<namespace>/<name>".
	Service string `json:"service"`
	// RequestRate is in requests per second.
	RequestRate float64 `json:"request_rate"`
	// ErrorRatio is the share of the requests answered with a 5xx, from 0 to 1; nil
	// when there were no requests.
	ErrorRatio *float64 `json:"error_ratio"`
	// P99Ms is the 99th-percentile latency in milliseconds; nil when there were no
	// requests in the window.
	P99Ms *float64 `json:"p99_ms"`
}

// Signals is /debug/signals' answer.
type Signals struct {
	// Prometheus is the base URL queried; "" when none is configured
	// (--prometheus-url).
	Prometheus string `json:"prometheus"`
	// Window is the range of each rate().
	Window string `json:"window"`
	// Queries are the PromQL queries, so that a user can paste them into Prometheus.
	Queries map[string]string `json:"queries"`
	// Services are sorted by name.
	Services []ServiceSignals `json:"services"`
	// Error says why some or all of the signals are missing.
	Error string `json:"error,omitempty"`
}

// signals serves /debug/signals: the golden signals of every Service that has any, as
// the configured Prometheus computes them.
func (cp *ControlPlane) signals(w http.ResponseWriter, r *http.Request) {
	out := Signals{
		Prometheus: cp.opts.PrometheusURL,
		Window:     signalWindow,
		Queries: map[string]string{
			"request_rate": signalRequestRate, "error_rate": signalErrorRate, "p99_ms": signalLatencyP99,
		},
		Services: []ServiceSignals{},
	}
	if cp.opts.PrometheusURL != "" {
		var err error
		out.Services, err = querySignals(r.Context(), cp.opts.PrometheusURL)
		if err != nil {
			out.Error = err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// querySignals runs the three queries at once and joins them by Service. What one query
// returned is kept when another fails.
func querySignals(ctx context.Context, base string) ([]ServiceSignals, error) {
	queries := []string{signalRequestRate, signalErrorRate, signalLatencyP99}
	results := make([]map[string]float64, len(queries))
	errs := make([]error, len(queries))
	var wg sync.WaitGroup
	for i, q := range queries {
		wg.Go(func() { results[i], errs[i] = promQuery(ctx, base, q) })
	}
	wg.Wait()
	rates, errors5xx, p99 := results[0], results[1], results[2]

	byName := map[string]*ServiceSignals{}
	get := func(name string) *ServiceSignals {
		s, ok := byName[name]
		if !ok {
			s = &ServiceSignals{Service: name}
			byName[name] = s
		}
		return s
	}
	for name, v := range rates {
		s := get(name)
		s.RequestRate = v
		if v > 0 {
			ratio := errors5xx[name] / v
			s.ErrorRatio = &ratio
		}
	}
	for name, v := range p99 {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			get(name).P99Ms = &v
		}
	}
	out := make([]ServiceSignals, 0, len(byName))
	for _, s := range byName {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b ServiceSignals) int { return cmp.Compare(a.Service, b.Service) })
	return out, errors.Join(errs...)
}

// promQuery runs an instant query through Prometheus's HTTP API and returns each
// series' value by its Service label. NaN values (a quantile of no requests) are kept.
// https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries
func promQuery(ctx context.Context, base, query string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, signalQueryTimeout)
	defer cancel()
	u := strings.TrimSuffix(base, "/") + "/api/v1/query?" + url.Values{"query": {query}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("prometheus: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("prometheus: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, fmt.Errorf("prometheus: %w", err)
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("prometheus: %s: HTTP %d: %.200q", query, resp.StatusCode, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("prometheus: %s: %s", query, r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("prometheus: %s: result of type %q, want a vector", query, r.Data.ResultType)
	}
	out := make(map[string]float64, len(r.Data.Result))
	for _, s := range r.Data.Result {
		name := s.Metric[signalServiceLabel]
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if name == "" || err != nil {
			continue
		}
		out[name] = v
	}
	return out, nil
}
