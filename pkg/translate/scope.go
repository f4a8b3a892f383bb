package translate

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"weak"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// Outbound routing by scopes (SRDS).
//
// The outbound listener's connection manager picks a route configuration per request by
// a scope key, and takes the scopes over SRDS and each scope's route configuration over
// RDS, all on the ADS stream:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-msg-extensions-filters-network-http-connection-manager-v3-scopedroutes
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/scoped_route.proto
//
// Why: with one route configuration holding every Service's routes, each new Service
// resent all of them to every proxy (175 KB at 1000 Services). With a scope and a route
// configuration per Service, a new Service is one or two scopes and one route
// configuration, a few hundred bytes under delta xDS (TestNewServiceRoutesScale).
//
//   - The scope key is the canonical name of the Service the "service" header names:
//     "<name>.<namespace>" for the full forms ("<name>.<namespace>",
//     "<name>.<namespace>.svc", "<name>.<namespace>.svc.<clusterDomain>"), "<name>" for
//     the short form. A Lua filter computes it into ScopeKeyHeader before routing
//     (scopeKeyLua): scope keys are matched exactly, and DNS names are not, so the key
//     is the lowercased name in one form per Service. Envoy's header extractors cannot
//     lowercase or take a value apart by its shape, and no built-in filter rewrites a
//     header's case; Lua is built into Envoy and runs in the sidecar's own thread.
//   - One scope per Service with the key "<name>.<namespace>", the same resource in
//     every namespace, and one per Service of the proxy's namespace with the key
//     "<name>" (as a short DNS name resolves in a pod): both name the Service's route
//     configuration, ServiceRouteConfiguration, the same in every namespace.
//   - A request that no scope takes (header missing, empty, repeated, malformed, or
//     naming no meshed Service) gets Envoy's 404 with the response flag NR, which
//     scopeReplies turns into the readable bodies.
//
// The Lua filter clears the route cache after it sets the key, and Envoy then picks the
// scope again from the headers as they are (the connection manager re-selects the
// scope when a filter clears the route cache); TestEnvoyScopedRoutes holds that against
// the pinned Envoy.

// ScopeKeyHeader carries a request's scope key, from the outbound listener's Lua filter
// to its scoped routing. The filter removes any value the app sent before it sets its
// own, and every Service's route configuration removes it before the request goes
// upstream: the app never picks a scope with it, and the callee never sees it.
const ScopeKeyHeader = "x-bearkong-scope"

const luaFilterName = "envoy.filters.http.lua"

// scopeKeyLua is the Lua filter's code: the scope key of the request's "service"
// header, when it holds one value (a repeated header is refused, not picked from) of
// one of the shapes of a Service's DNS name, in any case, blanks around it ignored.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/lua_filter
func scopeKeyLua(clusterDomain string) string {
	var dom strings.Builder
	for _, c := range clusterDomain {
		// Lua pattern magic ("." and "-" are in DNS names) is quoted with "%".
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			dom.WriteByte('%')
		}
		dom.WriteRune(c)
	}
	return fmt.Sprintf(`-- bearkong: the scope key of the outbound routes (see ScopeKeyHeader).
function envoy_on_request(h)
  local hs = h:headers()
  hs:remove(%[1]q)
  if hs:getNumValues(%[2]q) == 1 then
    local v = string.lower(string.match(hs:get(%[2]q), "^%%s*(.-)%%s*$"))
    local key = string.match(v, "^[a-z0-9-]+$")
      or string.match(v, "^([a-z0-9-]+%%.[a-z0-9-]+)$")
      or string.match(v, "^([a-z0-9-]+%%.[a-z0-9-]+)%%.svc$")
      or string.match(v, "^([a-z0-9-]+%%.[a-z0-9-]+)%%.svc%%.%[3]s$")
    if key then
      hs:add(%[1]q, key)
    end
  end
  h:clearRouteCache()
end
`, ScopeKeyHeader, mesh.ServiceHeader, dom.String())
}

// scopeKeyFilter is the outbound listener's Lua filter for clusterDomain.
func scopeKeyFilter(clusterDomain string) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{
		Name: luaFilterName,
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&luav3.Lua{
			DefaultSourceCode: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: scopeKeyLua(clusterDomain)}},
		})},
	}
}

// outboundScopedRoutes is the outbound connection manager's routing: scopes over SRDS,
// keyed by the whole value of ScopeKeyHeader (no element separator, index 0), and their
// route configurations over RDS.
//
// Keep it the same from one bearkong version to the next. Envoy 1.36 shares one SRDS
// subscription among the listeners whose scoped routes are configured alike, and
// starts a new one only during its own initialization: a subscription created by a
// listener that arrives later never asks for anything (envoyproxy/envoy#43392, fixed
// after 1.36). The outbound listener comes in the first LDS response, so its
// subscription starts, and a later update of the listener (another Lua source, access
// logs) shares it; a change here would leave every running sidecar without outbound
// routes until it restarts. TestClientMatchesEnvoy (test/e2e) holds this against the
// pinned Envoy.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto#envoy-v3-api-msg-extensions-filters-network-http-connection-manager-v3-scopedroutes-scopekeybuilder-fragmentbuilder-headervalueextractor
func outboundScopedRoutes() *hcmv3.HttpConnectionManager_ScopedRoutes {
	return &hcmv3.HttpConnectionManager_ScopedRoutes{ScopedRoutes: &hcmv3.ScopedRoutes{
		Name: OutboundRouteName,
		ScopeKeyBuilder: &hcmv3.ScopedRoutes_ScopeKeyBuilder{Fragments: []*hcmv3.ScopedRoutes_ScopeKeyBuilder_FragmentBuilder{{
			Type: &hcmv3.ScopedRoutes_ScopeKeyBuilder_FragmentBuilder_HeaderValueExtractor_{HeaderValueExtractor: &hcmv3.ScopedRoutes_ScopeKeyBuilder_FragmentBuilder_HeaderValueExtractor{
				Name:        ScopeKeyHeader,
				ExtractType: &hcmv3.ScopedRoutes_ScopeKeyBuilder_FragmentBuilder_HeaderValueExtractor_Index{Index: 0},
			}},
		}}},
		RdsConfigSource: adsConfigSource(),
		ConfigSpecifier: &hcmv3.ScopedRoutes_ScopedRds{ScopedRds: &hcmv3.ScopedRds{ScopedRdsConfigSource: adsConfigSource()}},
	}}
}

// ServiceScopeKey is the scope key of svc's full names, and the name of its scope.
func ServiceScopeKey(svc *mesh.Service) string { return ClusterName(svc) }

// ServiceRouteName is the name of svc's route configuration: its cluster's name. It
// cannot clash with InboundRouteName, which has no dot.
func ServiceRouteName(svc *mesh.Service) string { return ClusterName(svc) }

// ServiceScope returns the scope that sends requests whose scope key is key to svc's
// route configuration: key is ServiceScopeKey(svc), or svc's name for the proxies of
// its namespace. The key is also the scope's name, unique in a proxy's scopes.
func ServiceScope(key string, svc *mesh.Service) *routev3.ScopedRouteConfiguration {
	return &routev3.ScopedRouteConfiguration{
		Name:                   key,
		RouteConfigurationName: ServiceRouteName(svc),
		Key: &routev3.ScopedRouteConfiguration_Key{Fragments: []*routev3.ScopedRouteConfiguration_Key_Fragment{{
			Type: &routev3.ScopedRouteConfiguration_Key_Fragment_StringKey{StringKey: key},
		}}},
	}
}

// ServiceRouteConfiguration returns the routes of requests for svc, whichever form of
// its name they used: to its cluster, or, with HTTPRoutes attached, by their rules and
// then a 404 for a request that matches none (serviceRoutes). It is the same in every
// namespace.
func ServiceRouteConfiguration(svc *mesh.Service) *routev3.RouteConfiguration {
	name := ServiceRouteName(svc)
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name: name,
			// Routing is by header, not by authority: any Host goes.
			Domains: []string{"*"},
			Routes:  serviceRoutes(svc),
		}},
		RequestHeadersToRemove: []string{ScopeKeyHeader},
		// Routes may name clusters that do not exist: the backends an HTTPRoute names
		// but cannot use, whose share of traffic Envoy answers with 500. That is RDS's
		// default; saying it keeps an inlined copy of this config valid too.
		ValidateClusters: wrapperspb.Bool(false),
	}
}

// scopeReplies makes the outbound listener's 404 for a request that no scope takes
// (Envoy flags it NR, "no route") say why, by the "service" header the app sent:
// missing or empty, repeated (Envoy matches a repeated header against its values
// joined with a comma, and no Service name holds one), or naming no meshed Service.
// The first mapper that matches wins:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-headermatcher
func scopeReplies() []*hcmv3.ResponseMapper {
	noRoute := &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ResponseFlagFilter{
		ResponseFlagFilter: &accesslogv3.ResponseFlagFilter{Flags: []string{"NR"}},
	}}
	header := func(m *routev3.HeaderMatcher) *accesslogv3.AccessLogFilter {
		m.Name = mesh.ServiceHeader
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_AndFilter{AndFilter: &accesslogv3.AndFilter{
			Filters: []*accesslogv3.AccessLogFilter{noRoute, {FilterSpecifier: &accesslogv3.AccessLogFilter_HeaderFilter{HeaderFilter: &accesslogv3.HeaderFilter{Header: m}}}},
		}}}
	}
	mapper := func(f *accesslogv3.AccessLogFilter, body string) *hcmv3.ResponseMapper {
		return &hcmv3.ResponseMapper{
			Filter:     f,
			StatusCode: wrapperspb.UInt32(404),
			BodyFormatOverride: &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
				// "%" starts a command in a format string: doubled, it is itself.
				Specifier: &corev3.DataSource_InlineString{InlineString: strings.ReplaceAll(body, "%", "%%")},
			}}},
		}
	}
	return []*hcmv3.ResponseMapper{
		mapper(header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: false}}), MissingServiceHeaderBody),
		mapper(header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact("")}}), MissingServiceHeaderBody),
		mapper(header(&routev3.HeaderMatcher{HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Contains{Contains: ","},
		}}}), RepeatedServiceHeaderBody),
		mapper(noRoute, UnknownServiceBody),
	}
}

// serviceRouting is a Service's route configuration and full-name scope, marshalled.
type serviceRouting struct{ routes, scope *resource.Resource }

// routings holds the serviceRouting of each live *mesh.Service, weakly: an entry goes
// when its Service is collected.
//
// Why: every snapshot holds every Service, so a Translator would marshal two resources
// per Service on every change, about as much work again as its clusters and endpoints.
// Snapshots are immutable and discovery's incremental builds hand the next snapshot the
// very *mesh.Service of each Service the change did not touch, so its routing is reused
// as it is: a change costs the routing of the Services it touched. Both resources depend
// on the Service alone (ServiceRouteConfiguration, ServiceScope), so a reused one is
// byte for byte what building it again would give.
var routings perService[weak.Pointer[mesh.Service], *serviceRouting]

// routingOf returns svc's routing, built once per *mesh.Service (wp is weak.Make(svc)).
func routingOf(svc *mesh.Service, wp weak.Pointer[mesh.Service]) (*serviceRouting, error) {
	return routings.get(svc, wp, func() (*serviceRouting, error) {
		routes, err := resource.New(resource.Route, ServiceRouteName(svc), ServiceRouteConfiguration(svc))
		if err != nil {
			return nil, err
		}
		k := ServiceScopeKey(svc)
		scope, err := resource.New(resource.ScopedRoute, k, ServiceScope(k, svc))
		if err != nil {
			return nil, err
		}
		return &serviceRouting{routes: routes, scope: scope}, nil
	})
}

// perService holds values built from a *mesh.Service (their key holds a weak pointer to
// it, and whatever else they depend on) while the Service lives: an entry goes when its
// Service is collected. For values that are a function of their key alone.
type perService[K comparable, V any] struct {
	m sync.Map // K -> V
}

// get returns the value filed under key, or build's, then filed there until svc goes.
func (c *perService[K, V]) get(svc *mesh.Service, key K, build func() (V, error)) (V, error) {
	if v, ok := c.m.Load(key); ok {
		return v.(V), nil
	}
	v, err := build()
	if err != nil {
		return v, err
	}
	actual, loaded := c.m.LoadOrStore(key, v)
	if !loaded {
		runtime.AddCleanup(svc, func(key K) { c.m.Delete(key) }, key)
	}
	return actual.(V), nil
}
