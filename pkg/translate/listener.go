package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Listener and route configuration names. Each listener takes the route configuration of
// the same name over RDS.
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
// n must be valid (Node.Validate).
func InboundListener(n Node) *listenerv3.Listener {
	return httpListener(InboundListenerName, n.ListenIP, mesh.InboundPort, corev3.TrafficDirection_INBOUND, InboundRouteName)
}

// OutboundListener returns the listener on ListenIP:mesh.OutboundPort where the local app
// sends requests for other meshed services, named by the "service" header; its routes
// are OutboundRouteConfiguration. n must be valid (Node.Validate).
func OutboundListener(n Node) *listenerv3.Listener {
	return httpListener(OutboundListenerName, n.ListenIP, mesh.OutboundPort, corev3.TrafficDirection_OUTBOUND, OutboundRouteName)
}

// httpListener is a listener with one HTTP connection manager whose routes come over
// RDS on the ADS stream. RDS rather than inline routes: the routes change when services
// come and go, and an RDS update does not drain the listener's connections the way a
// listener update does:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/rds
func httpListener(name, ip string, port uint32, dir corev3.TrafficDirection, routeName string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		// Stats land under http.<stat_prefix>., so inbound and outbound traffic are
		// told apart in the sidecar's stats.
		StatPrefix: name,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
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
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(ip, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       httpConnectionManagerFilterName,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
			}},
		}},
		// The direction labels the listener for stats and tracing:
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/listener/v3/listener.proto#envoy-v3-api-field-config-listener-v3-listener-traffic-direction
		TrafficDirection: dir,
	}
}
