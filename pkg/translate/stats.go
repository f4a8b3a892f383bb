package translate

import (
	"fmt"
	"regexp"

	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/config/metrics/v3"
)

// Golden-signal labels. Every stat of a sidecar carries two fixed tags naming the
// sidecar's own workload, which Envoy's /stats/prometheus writes as labels on every
// series:
//
//   - on the outbound side, a Service's cluster stats (envoy_cluster_upstream_rq_xx,
//     envoy_cluster_upstream_rq_time, ...) then say who called (mesh_namespace,
//     mesh_workload) and whom (envoy_cluster_name="<namespace>/<name>", see StatName):
//     request rate, error rate and latency per caller and callee;
//   - on the inbound side, the inbound connection manager's stats
//     (envoy_http_downstream_rq_xx{envoy_http_conn_manager_prefix="inbound"}, ...) say
//     what the callee answered, whoever called, 403s from authorization included.
//
// Fixed tags rather than labels added by Prometheus's scrape configuration: the sidecar's
// stats name both ends wherever they are scraped from, with whatever relabelling.
// The names are prefixed so that they do not clash with the labels scrape
// configurations commonly add (namespace, pod, app, service), which Prometheus would
// rename to exported_*.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#envoy-v3-api-field-config-metrics-v3-statsconfig-stats-tags
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#envoy-v3-api-field-config-metrics-v3-tagspecifier-fixed-value
const (
	// StatsTagWorkload names the sidecar's workload (BootstrapOptions.Workload).
	StatsTagWorkload = "mesh_workload"
	// StatsTagNamespace names the sidecar's pod namespace.
	StatsTagNamespace = "mesh_namespace"
)

// statsConfig tags every stat with the workload and its namespace. Envoy's default tags
// (envoy_cluster_name, envoy_response_code_class, ...) stay on.
func statsConfig(namespace, workload string) *metricsv3.StatsConfig {
	return &metricsv3.StatsConfig{StatsTags: []*metricsv3.TagSpecifier{
		{TagName: StatsTagNamespace, TagValue: &metricsv3.TagSpecifier_FixedValue{FixedValue: namespace}},
		{TagName: StatsTagWorkload, TagValue: &metricsv3.TagSpecifier_FixedValue{FixedValue: workload}},
	}}
}

// labelValue is the syntax of a Kubernetes label value, which the workload usually is
// (the pod's app label, through the downward API).
var labelValue = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$`)

func validateWorkload(v string) error {
	if !labelValue.MatchString(v) {
		return fmt.Errorf("workload %q is not a valid Kubernetes label value (at most 63 characters: alphanumerics, '-', '_', '.', starting and ending with an alphanumeric)", v)
	}
	return nil
}
