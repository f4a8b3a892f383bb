package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Bodies of the outbound listener's 404s. They name the header, so that a user who gets
// one from curl knows what to change without reading Envoy's config.
const (
	UnknownServiceBody = `bearkong: no meshed service matches the "service" header` +
		` (use "<name>" for a service in this namespace or "<name>.<namespace>")` + "\n"
	MissingServiceHeaderBody = `bearkong: the "service" header is missing;` +
		` set it to the meshed service to call, for example "service: app-1"` + "\n"
)

// OutboundRouteConfiguration returns the "outbound" route configuration of the proxies in
// namespace: a route per meshed Service that matches the header "service" exactly,
// against "<name>.<namespace>" for every Service and also against "<name>" for Services
// in the proxy's own namespace, the way a short DNS name resolves in Kubernetes.
// A request whose header names no meshed Service, or that has no such header, gets a
// 404 with a readable body instead of hanging or reaching a random cluster.
//
// Envoy takes the first route that matches, in order:
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_routing
// The service routes cannot overlap (a short name has no dot, a full name has one), so
// their order does not matter; the two 404 routes come last.
func OutboundRouteConfiguration(snap *mesh.Snapshot, namespace string) *routev3.RouteConfiguration {
	var routes []*routev3.Route
	routes = append(routes, localRoutes(snap.Services, namespace)...)
	routes = append(routes, serviceRoutes(snap.Services)...)
	routes = append(routes, notFoundRoutes...)
	vh := outboundVirtualHost()
	vh.Routes = routes
	return outboundRouteConfiguration(vh)
}

// outboundRouteConfiguration wraps the outbound virtual host. OutboundRouteConfiguration
// is built from this and the helpers below so that a Translator can assemble the very
// same bytes from pre-marshalled parts (see Translator.outboundRoutes).
func outboundRouteConfiguration(vh *routev3.VirtualHost) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name:         OutboundRouteName,
		VirtualHosts: []*routev3.VirtualHost{vh},
	}
}

// outboundVirtualHost is the outbound virtual host without its routes.
func outboundVirtualHost() *routev3.VirtualHost {
	return &routev3.VirtualHost{
		Name: OutboundRouteName,
		// Routing is by header, not by authority: any Host goes.
		Domains: []string{"*"},
	}
}

// localRoutes returns the short-name routes of the Services in namespace.
func localRoutes(services []*mesh.Service, namespace string) []*routev3.Route {
	var routes []*routev3.Route
	for _, svc := range services {
		if svc.Namespace == namespace {
			routes = append(routes, serviceRoute(svc.Name, svc))
		}
	}
	return routes
}

// serviceRoutes returns the full-name route of every Service, in order. These routes are
// the same in every namespace.
func serviceRoutes(services []*mesh.Service) []*routev3.Route {
	routes := make([]*routev3.Route, len(services))
	for i, svc := range services {
		routes[i] = serviceRoute(ClusterName(svc), svc)
	}
	return routes
}

// notFoundRoutes end the outbound routes: a request that names no meshed Service, then a
// request that names none at all. Read-only: shared by every route configuration.
var notFoundRoutes = []*routev3.Route{
	notFoundRoute("unknown-service", UnknownServiceBody, &routev3.HeaderMatcher{
		Name:                 mesh.ServiceHeader,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true},
	}),
	notFoundRoute("missing-service-header", MissingServiceHeaderBody),
}

// serviceRoute sends requests whose "service" header equals value to svc's cluster.
// Per-service outbound policy (retries, timeouts seen by the caller) would plug in here.
func serviceRoute(value string, svc *mesh.Service) *routev3.Route {
	return &routev3.Route{
		Name: value,
		Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			// string_match, not the deprecated exact_match:
			// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-headermatcher
			Headers: []*routev3.HeaderMatcher{{
				Name: mesh.ServiceHeader,
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
					MatchPattern: &matcherv3.StringMatcher_Exact{Exact: value},
				}},
			}},
		},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(svc)},
		}},
	}
}

// notFoundRoute answers 404 with body to every request that matches headers.
func notFoundRoute(name, body string, headers ...*routev3.HeaderMatcher) *routev3.Route {
	return &routev3.Route{
		Name: name,
		Match: &routev3.RouteMatch{
			PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers:       headers,
		},
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-directresponseaction
		Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 404,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: body}},
		}},
	}
}

// InboundRouteConfiguration returns the "inbound" route configuration of a proxy that
// serves services (the Services of snapshot.Proxy(ns, name), possibly none): everything
// goes to the local app.
//
// It depends on services and nothing else, so a Translator shares it among every proxy
// that serves the same Services (the replicas of one app).
func InboundRouteConfiguration(services []*mesh.Service) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: InboundRouteName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    InboundRouteName,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:   LocalAppClusterName,
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: inboundRouteAction(services)},
			}},
		}},
	}
}

// inboundRouteAction carries the policy of the Services a proxy serves for the traffic
// it receives. `mesh-timeout` sets the route timeout, so the callee's sidecar answers
// 504 when its app is too slow
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-timeout).
// A pod served by several Services with different timeouts gets the shortest: each
// Service's promise holds.
//
// It depends only on services (the result is cached by their keys and shared by
// proxies) and never fails: discovery validated the policy, keeping the last good value
// of an invalid annotation.
func inboundRouteAction(services []*mesh.Service) *routev3.RouteAction {
	a := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: LocalAppClusterName},
	}
	var timeout time.Duration
	for _, s := range services {
		if t := s.Policy.Timeout; t > 0 && (timeout == 0 || t < timeout) {
			timeout = t
		}
	}
	if timeout > 0 {
		a.Timeout = durationpb.New(timeout)
	}
	return a
}
