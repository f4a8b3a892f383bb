package translate

import (
	"fmt"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	celfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Access logs (annotation mesh-access-log, default `bearkong cp --default-access-log`).
//
// A request from app-1 to app-2 crosses two sidecars, and each writes one line when
// app-2's format says so: app-2's inbound listener (the callee's view: who called, what
// the app answered) and app-1's outbound listener (the caller's view: which endpoint,
// how long the whole exchange took). Both lines carry the same request ID (see
// preserveRequestID), so that a line on one side finds its match on the other.
//
// The inbound listener serves one pod, so its format is a property of the listener:
// the most detailed format its Services ask for (inboundAccessLogFormat).
//
// The outbound listener is shared by every destination, so it has one logger per
// format, and each logs only the requests routed to a Service that asks for that format.
// The filter reads the format from the metadata of the upstream cluster the router
// picked (clusterAccessLogMetadata), in a CEL expression, rather than from the request's
// `service` header:
//   - exact: the cluster names one Service, whichever of the header's spellings the
//     caller used ("app-2", "app-2.default", "app-2.default.svc.cluster.local", and the
//     short name means another Service in another namespace) and wherever an HTTPRoute
//     sent the request (a canary backend logs as itself, the Service whose pods answer
//     and write the inbound line);
//   - cheap: at most two loggers, whatever the number of Services, each with one short
//     expression evaluated once per request; header matching would need one matcher
//     per Service and spelling;
//   - stable: turning a Service's logs on or off changes that Service's cluster only;
//     the outbound listener stays as it is, so no listener drains its connections.
//
// https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/access_loggers/filters/cel/v3/cel.proto
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes

// AccessLogMetadataNamespace is the cluster filter_metadata namespace under which a
// Service's cluster carries its access-log format, as {"access_log": "json"|"text"}.
const AccessLogMetadataNamespace = "bearkong"

// accessLogMetadataKey is the key of the format in AccessLogMetadataNamespace.
const accessLogMetadataKey = "access_log"

// AccessLogTextPrefix starts every text access-log line, so that they are found among
// Envoy's own log lines on the same output.
const AccessLogTextPrefix = "[bearkong access]"

// ServiceAccessLog returns the access-log format of svc's traffic: its annotation, else
// def (the control plane's default), "" counting as off.
func ServiceAccessLog(svc *mesh.Service, def mesh.AccessLogFormat) mesh.AccessLogFormat {
	if f := svc.Policy.AccessLog.Or(def); f.Logs() {
		return f
	}
	return mesh.AccessLogOff
}

// inboundAccessLogFormat is the format of a pod's inbound listener: the most detailed
// one its Services ask for (json, then text). The listener cannot tell which Service a
// caller meant, so a Service that asks for logs gets them, and the pod's other Services'
// requests are logged with them.
func inboundAccessLogFormat(services []*mesh.Service, def mesh.AccessLogFormat) mesh.AccessLogFormat {
	out := mesh.AccessLogOff
	for _, s := range services {
		switch ServiceAccessLog(s, def) {
		case mesh.AccessLogJSON:
			return mesh.AccessLogJSON
		case mesh.AccessLogText:
			out = mesh.AccessLogText
		}
	}
	return out
}

// anyAccessLog reports whether some Service of services logs: only then does the
// outbound listener need its loggers.
func anyAccessLog(services []*mesh.Service, def mesh.AccessLogFormat) bool {
	for _, s := range services {
		if ServiceAccessLog(s, def).Logs() {
			return true
		}
	}
	return false
}

// setClusterAccessLog marks a Service's cluster with the format its callers log its
// requests in; a cluster that does not log carries no metadata, so that the clusters of
// a mesh without access logs are what they were.
func setClusterAccessLog(c *clusterv3.Cluster, f mesh.AccessLogFormat) *clusterv3.Cluster {
	if !f.Logs() {
		return c
	}
	c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		AccessLogMetadataNamespace: {Fields: map[string]*structpb.Value{accessLogMetadataKey: structpb.NewStringValue(string(f))}},
	}}
	return c
}

// accessLogField is one field of an access-log line: its JSON key (and text key) and
// its value, an Envoy command operator or a literal.
type accessLogField struct{ key, value string }

// accessLogFields are the fields of a line, in the order the text format writes them:
// what people filter on first. side is "inbound" or "outbound"; serves are the keys of
// the Services the proxy serves (the callee on the inbound side, the caller on the
// outbound side).
//
// https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#command-operators
func accessLogFields(side string, serves []string) []accessLogField {
	self := strings.Join(serves, ",")
	if self == "" {
		self = "-"
	}
	fields := []accessLogField{
		{"time", "%START_TIME%"},
		{"side", side},
		{"method", "%REQ(:METHOD)%"},
		// The path the caller sent, before any rewrite.
		{"path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"},
		{"protocol", "%PROTOCOL%"},
		{"status", "%RESPONSE_CODE%"},
		{"response_flags", "%RESPONSE_FLAGS%"},
		{"duration_ms", "%DURATION%"},
		{"bytes_received", "%BYTES_RECEIVED%"},
		{"bytes_sent", "%BYTES_SENT%"},
		{"upstream_host", "%UPSTREAM_HOST%"},
		{"request_id", "%REQ(X-REQUEST-ID)%"},
	}
	if side == InboundListenerName {
		// The caller as the callee knows it: the SPIFFE ID its client certificate
		// proved (none on a plaintext connection), and its address.
		return append(fields,
			accessLogField{"caller_identity", "%DOWNSTREAM_PEER_URI_SAN%"},
			accessLogField{"caller_address", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
			accessLogField{"callee_service", self},
		)
	}
	// %UPSTREAM_CLUSTER% is the cluster's alt_stat_name, "<namespace>/<name>" (see
	// StatName); the callee's identity is the SPIFFE ID its certificate proved.
	return append(fields,
		accessLogField{"caller_service", self},
		accessLogField{"callee_service", "%UPSTREAM_CLUSTER%"},
		accessLogField{"callee_identity", "%UPSTREAM_PEER_URI_SAN%"},
	)
}

// accessLogFormat is the line format of f: a JSON object (typed: numbers stay numbers),
// or key=value text after AccessLogTextPrefix.
func accessLogFormat(f mesh.AccessLogFormat, fields []accessLogField) *corev3.SubstitutionFormatString {
	if f == mesh.AccessLogJSON {
		js := &structpb.Struct{Fields: make(map[string]*structpb.Value, len(fields))}
		for _, fd := range fields {
			js.Fields[fd.key] = structpb.NewStringValue(fd.value)
		}
		return &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_JsonFormat{JsonFormat: js}}
	}
	var b strings.Builder
	b.WriteString(AccessLogTextPrefix)
	for _, fd := range fields {
		v := fd.value
		if fd.key == "path" {
			v = `"` + v + `"` // paths may hold spaces once decoded
		}
		fmt.Fprintf(&b, " %s=%s", fd.key, v)
	}
	b.WriteString("\n")
	return &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
		TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: b.String()}},
	}}
}

// stdoutAccessLog writes lines of format f to the sidecar's standard output, where the
// container runtime collects them (kubectl logs -c envoy). filter may be nil.
func stdoutAccessLog(f mesh.AccessLogFormat, fields []accessLogField, filter *accesslogv3.AccessLogFilter) *accesslogv3.AccessLog {
	return &accesslogv3.AccessLog{
		Name:   "envoy.access_loggers.stdout",
		Filter: filter,
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&streamv3.StdoutAccessLog{
			AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: accessLogFormat(f, fields)},
		})},
	}
}

// inboundAccessLogs are the loggers of a pod's inbound listener: one, in format f, for
// every request, or none.
func inboundAccessLogs(f mesh.AccessLogFormat, serves []string) []*accesslogv3.AccessLog {
	if !f.Logs() {
		return nil
	}
	return []*accesslogv3.AccessLog{stdoutAccessLog(f, accessLogFields(InboundListenerName, serves), nil)}
}

// outboundAccessLogs are the loggers of a pod's outbound listener: one per format, each
// for the requests whose upstream cluster asks for it (see the notes at the top).
func outboundAccessLogs(serves []string) []*accesslogv3.AccessLog {
	fields := accessLogFields(OutboundListenerName, serves)
	var out []*accesslogv3.AccessLog
	for _, f := range []mesh.AccessLogFormat{mesh.AccessLogJSON, mesh.AccessLogText} {
		out = append(out, stdoutAccessLog(f, fields, clusterFormatFilter(f)))
	}
	return out
}

// clusterFormatFilter passes the requests routed to a cluster whose metadata names
// format f. A request that reached no cluster (an unknown Service's 404) has no cluster
// metadata: the expression then fails to evaluate, and Envoy's CEL filter logs nothing.
func clusterFormatFilter(f mesh.AccessLogFormat) *accesslogv3.AccessLogFilter {
	expr := fmt.Sprintf("xds.cluster_metadata.filter_metadata[%q][%q] == %q", AccessLogMetadataNamespace, accessLogMetadataKey, string(f))
	return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
		ExtensionFilter: &accesslogv3.ExtensionFilter{
			Name:       "envoy.access_loggers.extension_filters.cel",
			ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: mustAny(&celfilterv3.ExpressionFilter{Expression: expr})},
		},
	}}
}

// withAccessLogs adds logs to the access logs of every HTTP connection manager of l, and
// returns l.
func withAccessLogs(l *listenerv3.Listener, logs []*accesslogv3.AccessLog) *listenerv3.Listener {
	if len(logs) == 0 {
		return l
	}
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if f.GetTypedConfig().MessageIs(hcm) {
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					panic("translate: unpack the connection manager: " + err.Error())
				}
				hcm.AccessLog = append(hcm.AccessLog, logs...)
				f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}
			}
		}
	}
	return l
}

// preserveRequestID keeps the x-request-id a request arrives with, so that the caller's
// outbound line, the callee's inbound line and the app carry one ID. Envoy generates an
// ID for a request without one, and replaces the ID of an "edge" request unless
// preserve_external_request_id is set. A request is an edge request only on a
// connection manager with use_remote_address, which bearkong's leave unset: measured with
// the pinned Envoy (TestEnvoyAccessLogs), the ID survives the inbound listener without
// this setting too. It is set all the same, so that the promise does not rest on
// use_remote_address staying off (it is what an ingress-facing listener would turn on),
// and it is what a reader of the config looks for.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-preserve-external-request-id
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-request-id
func preserveRequestID(hcm *hcmv3.HttpConnectionManager) {
	hcm.PreserveExternalRequestId = true
}
