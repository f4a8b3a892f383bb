package translate

import (
	"fmt"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Listener and route configuration names. The inbound listener takes the route
// configuration of its name over RDS; the outbound listener takes scopes over SRDS
// (OutboundRouteName names its scoped routes), each naming a Service's route
// configuration (see ServiceScope).
const (
	InboundListenerName  = "inbound"
	OutboundListenerName = "outbound"
	InboundRouteName     = InboundListenerName
	OutboundRouteName    = OutboundListenerName
)

// Filter names, as Envoy knows them. Envoy picks the extension by the typed_config's type
// URL; the names are for humans and for config dumps:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/network_filters/http_conn_man
const (
	httpConnectionManagerFilterName = "envoy.filters.network.http_connection_manager"
	routerFilterName                = "envoy.filters.http.router"
)

// streamIdleTimeout ends a stream on which nothing has moved, either way, for this long.
// Envoy's default is 5 minutes, which would cut a silent long poll or a quiet gRPC or
// WebSocket stream, and cut a request before a mesh-timeout above 5 minutes could
// answer it. One hour is the longest mesh-timeout bearkong accepts (mesh.MaxTimeout),
// so the idle timer never ends a request that a policy allows, and it still reaps
// streams whose peer vanished without a word. It matches Envoy's default idle timeout
// of a connection without streams (common_http_protocol_options.idle_timeout, 1h).
// https://www.envoyproxy.io/docs/envoy/latest/faq/configuration/timeouts#stream-timeouts
const streamIdleTimeout = mesh.MaxTimeout

// upgradeConfigs allow WebSocket upgrades through the connection managers, which refuse
// them by default; the upgrade goes on to the app over HTTP/1.1.
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/upgrades
var upgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}

// routerFilter is the terminal HTTP filter of every chain. It is the same for every
// listener, so it is packed once.
var routerFilter = &hcmv3.HttpFilter{
	Name:       routerFilterName,
	ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
}

// InboundListener returns the listener on ListenIP:mesh.InboundPort where peers' sidecars
// send this pod's traffic; its routes (InboundRouteConfiguration) go to the local app.
// n must be valid (Node.Validate). mode is the pod's mTLS mode ("" reads as STRICT):
//
//   - STRICT: one chain, which terminates mutual TLS and requires a client certificate
//     of the trust domain (downstreamTLS); a plaintext client fails the handshake.
//   - PERMISSIVE: the TLS inspector sends a connection that opens with a TLS
//     ClientHello to that same chain and any other to a plaintext chain, for
//     migration. Envoy takes the most specific match, so transport_protocol "tls"
//     wins over the chain that names none:
//     https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener_components.proto#envoy-v3-api-msg-config-listener-v3-filterchainmatch
//     The inspector decides as soon as the first bytes arrive; a client that sends
//     nothing is closed after listener_filters_timeout (15 s by default, as
//     continue_on_listener_filters_timeout is false). HTTP clients speak first, so they
//     are never held by it, and no protocol that waits for the server is meshed:
//     https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto#envoy-v3-api-field-config-listener-v3-listener-listener-filters-timeout
//   - DISABLE: one plaintext chain.
//
// On a TLS chain the app gets the caller's SPIFFE ID in x-forwarded-client-cert
// (SANITIZE_SET with the URI); a plaintext chain strips that header (SANITIZE), so that
// no caller can claim an identity it did not prove.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-forwarded-client-cert
func InboundListener(n Node, mode mesh.MTLSMode, trustDomain string) *listenerv3.Listener {
	l := httpListener(InboundListenerName, n.ListenIP, mesh.InboundPort, corev3.TrafficDirection_INBOUND)
	plain := &listenerv3.FilterChain{Filters: httpFilters(InboundListenerName, InboundRouteName, corev3.TrafficDirection_INBOUND, false)}
	mtls := &listenerv3.FilterChain{
		Filters:         httpFilters(InboundListenerName, InboundRouteName, corev3.TrafficDirection_INBOUND, true),
		TransportSocket: downstreamTLS(trustDomain),
	}
	switch mode.Effective() {
	case mesh.MTLSDisable:
		l.FilterChains = []*listenerv3.FilterChain{plain}
	case mesh.MTLSPermissive:
		// Named, so that config dumps and stats say which one a connection took.
		mtls.Name, plain.Name = "mtls", "plaintext"
		mtls.FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "tls"}
		l.ListenerFilters = []*listenerv3.ListenerFilter{tlsInspector}
		l.FilterChains = []*listenerv3.FilterChain{mtls, plain}
	default:
		l.FilterChains = []*listenerv3.FilterChain{mtls}
	}
	return l
}

// OutboundListener returns the listener on OutboundIP:mesh.OutboundPort where the local
// app sends requests for other meshed services, named by the "service" header; its
// routes come by scope (see scope.go), for clusterDomain's names. OutboundIP is loopback in a real pod, so that no
// other pod can use this sidecar as a relay, and the app talks to it in plaintext: the
// sidecar originates TLS to the callee (Cluster). n must be valid (Node.Validate).
func OutboundListener(n Node, clusterDomain string) *listenerv3.Listener {
	l := httpListener(OutboundListenerName, n.OutboundIP, mesh.OutboundPort, corev3.TrafficDirection_OUTBOUND)
	hcm := newHCM(OutboundListenerName, OutboundRouteName, corev3.TrafficDirection_OUTBOUND, false)
	hcm.RouteSpecifier = outboundScopedRoutes()
	hcm.HttpFilters = []*hcmv3.HttpFilter{scopeKeyFilter(clusterDomain), routerFilter}
	hcm.LocalReplyConfig = &hcmv3.LocalReplyConfig{Mappers: append([]*hcmv3.ResponseMapper{noEndpointMapper}, scopeReplies()...)}
	l.FilterChains = []*listenerv3.FilterChain{{Filters: hcmFilters(hcm)}}
	return l
}

// httpListener is a listener without filter chains, which the caller adds.
func httpListener(name, ip string, port uint32, dir corev3.TrafficDirection) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(ip, port),
		// The direction labels the listener for stats and tracing:
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto#envoy-v3-api-field-config-listener-v3-listener-traffic-direction
		TrafficDirection: dir,
	}
}

// httpFilters are the filters of a chain: one HTTP connection manager whose routes come
// over RDS on the ADS stream. RDS rather than inline routes: the routes change when
// services come and go, and an RDS update does not drain the listener's connections the
// way a listener update does:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/rds
// mtls says the chain terminates mutual TLS, and so has a peer identity to forward.
func httpFilters(name, routeName string, dir corev3.TrafficDirection, mtls bool) []*listenerv3.Filter {
	return hcmFilters(newHCM(name, routeName, dir, mtls))
}

// hcmFilters is the filter list of a chain with the one connection manager hcm.
func hcmFilters(hcm *hcmv3.HttpConnectionManager) []*listenerv3.Filter {
	return []*listenerv3.Filter{{
		Name:       httpConnectionManagerFilterName,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
	}}
}

// newHCM is the connection manager of httpFilters.
func newHCM(name, routeName string, dir corev3.TrafficDirection, mtls bool) *hcmv3.HttpConnectionManager {
	hcm := &hcmv3.HttpConnectionManager{
		// Stats land under http.<stat_prefix>., so inbound and outbound traffic are
		// told apart in the sidecar's stats.
		StatPrefix: name,
		// AUTO takes the HTTP version from ALPN on a TLS chain and from the first bytes
		// on a plaintext one.
		CodecType: hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{routerFilter},
		// No route sets a timeout unless a policy asks (see serviceRoutes and
		// inboundRouteAction); this bounds streams on which nothing happens.
		StreamIdleTimeout: durationpb.New(streamIdleTimeout),
		UpgradeConfigs:    upgradeConfigs,
	}
	harden(hcm)
	preserveRequestID(hcm)
	if dir == corev3.TrafficDirection_OUTBOUND {
		hcm.LocalReplyConfig = noEndpointReply
	} else {
		// Authorization: the callee's RBAC filters, whose rules come with the inbound
		// routes, and the 403 bodies that name the policy (see authzFilters). The same
		// on the TLS and the plaintext chain: a plaintext caller has no identity, so no
		// rule that names callers matches it.
		hcm.HttpFilters = append(authzFilters(), routerFilter)
		hcm.LocalReplyConfig = authzReply
		hcm.AccessLog = []*accesslogv3.AccessLog{shadowAccessLog}
	}
	if mtls {
		// The app learns who called: the URI SAN (SPIFFE ID) of the client
		// certificate, with anything the caller sent under that header replaced.
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-enum-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-forwardclientcertdetails
		hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
		hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true}
	} else {
		// SANITIZE is the field's zero value and Envoy's default, written out to say
		// it is meant: a plaintext caller's x-forwarded-client-cert never reaches the
		// app.
		hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE
	}
	return hcm
}

// harden sets what a sidecar's connection managers owe the app behind them, whoever
// calls: x-envoy-* request headers are never trusted, and the path a route matches is
// the path the app gets.
func harden(hcm *hcmv3.HttpConnectionManager) {
	// Envoy acts on x-envoy-* request headers (x-envoy-upstream-rq-timeout-ms,
	// x-envoy-max-retries, x-envoy-retry-on...) only in requests it deems internal, and
	// strips them from the others: a request is internal when its x-forwarded-for holds
	// one address that internal_address_config lists. internal_address_config stays
	// unset on purpose: since Envoy 1.33 that lists no address, so every request is
	// external on both listeners and no request header overrides the policy that comes
	// from Kubernetes objects (mesh-timeout, HTTPRoute timeouts and retries). An empty
	// internal_address_config would not do: Envoy 1.36 reads its empty cidr_ranges as
	// the legacy private and loopback ranges (an x-forwarded-for of 10.0.0.1 or
	// 127.0.0.1 then makes a request internal). TestEnvoyHardening holds this against
	// the pinned Envoy.
	// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/headers#x-envoy-internal
	// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-internal-address-config
	// RFC 3986 normalisation ("/a/./b/../c" is "/a/c") and "//" merged into "/", before
	// routing, so that an HTTPRoute path match cannot be side-stepped by spelling the
	// path differently, and the app receives the path that was matched:
	// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-field-extensions-filters-network-http-connection-manager-v3-httpconnectionmanager-normalize-path
	hcm.NormalizePath = wrapperspb.Bool(true)
	hcm.MergeSlashes = true
	// Escaped slashes ("%2F", "%5C") are decoded and the request goes on: matched and
	// forwarded as "/" alike. Kept escaped, "/admin%2Fx" would miss a "/admin" prefix
	// match while many app frameworks decode it to "/admin/x"; a redirect would fail
	// clients that do not follow redirects (gRPC), and rejecting would fail every such
	// request.
	hcm.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
}

// NoEndpointBodyFormat is the body of the 503 a caller gets when the Service it names
// has no ready endpoint, with %s the Service's stat name (StatName: "<namespace>/<name>").
const NoEndpointBodyFormat = "bearkong: service %s has no ready endpoint\n"

// noEndpointReply makes the outbound listener answer a request for a Service without a
// ready endpoint with a 503 that names the Service, instead of Envoy's bare "no healthy
// upstream". Envoy flags such a reply UH; %UPSTREAM_CLUSTER% is the cluster's
// alt_stat_name when it has one (Envoy 1.36), so the body names "<namespace>/<name>":
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply
// https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage#format-rules
var noEndpointReply = &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{noEndpointMapper}}

var noEndpointMapper = &hcmv3.ResponseMapper{
	Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
		ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"UH"}},
	}},
	BodyFormatOverride: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{InlineString: fmt.Sprintf(NoEndpointBodyFormat, "%UPSTREAM_CLUSTER%")},
		}},
	},
}
