package translate

import (
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

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
	routes = append(routes, fullNameRoutes(snap.Services)...)
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
		// Routes may name clusters that do not exist: the backends an HTTPRoute names
		// but cannot use, whose share of traffic Envoy answers with 500. That is RDS's
		// default; saying it keeps an inlined copy of this config valid too.
		ValidateClusters: wrapperspb.Bool(false),
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
			routes = append(routes, serviceRoutes(svc.Name, svc)...)
		}
	}
	return routes
}

// serviceRoutes returns the full-name route of every Service, in order. These routes are
// the same in every namespace.
func fullNameRoutes(services []*mesh.Service) []*routev3.Route {
	routes := make([]*routev3.Route, 0, len(services))
	for _, svc := range services {
		routes = append(routes, serviceRoutes(ClusterName(svc), svc)...)
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

// noTimeout disables a route's timeout. Envoy's default, when a route sets none, is
// 15 s, which would end long requests, long polls and gRPC or WebSocket streams that no
// policy limits; 0 means no timeout:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-timeout
// Time limits come from policy only: mesh-timeout on the callee's side, HTTPRoute
// timeouts on the caller's. The connection managers' stream idle timeout ends streams
// on which nothing moves (see streamIdleTimeout). Read-only: shared by every route.
var noTimeout = durationpb.New(0)

// serviceRoutes returns the routes for requests whose "service" header equals value:
// one route to svc's cluster, or, when HTTPRoutes are attached to svc, a route per rule
// match in precedence order and then a 404 for requests that match no rule.
func serviceRoutes(value string, svc *mesh.Service) []*routev3.Route {
	if len(svc.Routes) == 0 {
		return []*routev3.Route{{
			Name: value,
			Match: &routev3.RouteMatch{
				PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
				Headers:       []*routev3.HeaderMatcher{serviceHeader(value)},
			},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: ClusterName(svc)},
				Timeout:          noTimeout,
			}},
		}}
	}
	routes := make([]*routev3.Route, 0, len(svc.Routes)+1)
	for _, r := range svc.Routes {
		routes = append(routes, ruleRoute(value, r))
	}
	return append(routes, notFoundRoute(value+"|no-rule",
		fmt.Sprintf("bearkong: no rule of the HTTPRoutes attached to service %s matches this request\n", svc.Key()),
		serviceHeader(value)))
}

// serviceHeader matches the "service" header exactly. string_match, not the deprecated
// exact_match:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-headermatcher
func serviceHeader(value string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{
		Name:                 mesh.ServiceHeader,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact(value)},
	}
}

func exact(v string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func stringMatcher(typ, v string) *matcherv3.StringMatcher {
	if typ == "RegularExpression" {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v}}}
	}
	return exact(v)
}

// ruleRoute is the Envoy route of one HTTPRoute rule match, for requests to the Service
// named value. Gateway API semantics map onto Envoy's route match and action:
// https://gateway-api.sigs.k8s.io/reference/spec/#httproutematch
func ruleRoute(value string, r mesh.RouteRule) *routev3.Route {
	m := &routev3.RouteMatch{Headers: []*routev3.HeaderMatcher{serviceHeader(value)}}
	switch r.Path.Type {
	case "Exact":
		m.PathSpecifier = &routev3.RouteMatch_Path{Path: r.Path.Value}
	case "RegularExpression":
		m.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: r.Path.Value}}
	default:
		// PathPrefix matches whole path elements: "/foo" matches "/foo" and "/foo/bar",
		// not "/foobar"; a trailing slash is ignored.
		if p := strings.TrimRight(r.Path.Value, "/"); p != "" {
			m.PathSpecifier = &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: p}
		} else {
			m.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: "/"}
		}
	}
	if r.Method != "" {
		m.Headers = append(m.Headers, &routev3.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact(r.Method)}})
	}
	for _, h := range r.Headers {
		// Envoy keeps header names in lower case; Gateway API header names are case-insensitive.
		m.Headers = append(m.Headers, &routev3.HeaderMatcher{Name: strings.ToLower(h.Name), HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: stringMatcher(h.Type, h.Value)}})
	}
	for _, q := range r.QueryParams {
		m.QueryParameters = append(m.QueryParameters, &routev3.QueryParameterMatcher{Name: q.Name, QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: stringMatcher(q.Type, q.Value)}})
	}
	name := fmt.Sprintf("%s|%s|rule-%d|match-%d", value, r.Route, r.Rule, r.Match)

	var clusters []*routev3.WeightedCluster_ClusterWeight
	for _, b := range r.Backends {
		if b.Weight <= 0 {
			continue
		}
		cluster := b.Name + "." + b.Namespace
		if !b.Valid {
			// A cluster that never exists: Envoy answers its share with
			// cluster_not_found_response_code, 500, as the Gateway API asks of an
			// invalid backendRef.
			cluster = "unresolved-backend|" + b.Key()
		}
		clusters = append(clusters, &routev3.WeightedCluster_ClusterWeight{Name: cluster, Weight: wrapperspb.UInt32(uint32(b.Weight))})
	}
	if len(clusters) == 0 {
		return &routev3.Route{Name: name, Match: m, Action: &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{
			Status: 500,
			Body:   &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: fmt.Sprintf("bearkong: HTTPRoute %s rule %d has no backend with a weight\n", r.Route, r.Rule)}},
		}}}
	}
	// timeouts.request bounds the whole request, retries included, as Envoy's route
	// timeout does; "0s" and no value both mean none (the Gateway API lets the
	// implementation pick the default, and bearkong's is none, as for a plain route):
	// https://gateway-api.sigs.k8s.io/reference/spec/#httproutetimeouts
	a := &routev3.RouteAction{ClusterNotFoundResponseCode: routev3.RouteAction_INTERNAL_SERVER_ERROR, Timeout: noTimeout}
	if len(clusters) == 1 {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: clusters[0].Name}
	} else {
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: clusters}}
	}
	if r.TimeoutSet && r.Timeout > 0 {
		a.Timeout = durationpb.New(r.Timeout)
	}
	if r.Retry.Set() || r.BackendTimeout > 0 {
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy
		rp := &routev3.RetryPolicy{RetryOn: "5xx"}
		if len(r.Retry.Codes) > 0 {
			rp.RetryOn = "retriable-status-codes"
			for _, c := range r.Retry.Codes {
				rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, uint32(c))
			}
		}
		if r.Retry.Attempts > 0 {
			rp.NumRetries = wrapperspb.UInt32(uint32(r.Retry.Attempts))
		} else if !r.Retry.Set() {
			rp.NumRetries = wrapperspb.UInt32(0) // only the per-try timeout was asked for
		}
		if r.Retry.Backoff > 0 {
			rp.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(r.Retry.Backoff)}
		}
		if r.BackendTimeout > 0 {
			// timeouts.backendRequest bounds each try; "0s" means none, which is
			// Envoy's default for per_try_timeout.
			rp.PerTryTimeout = durationpb.New(r.BackendTimeout)
		}
		a.RetryPolicy = rp
	}
	return &routev3.Route{Name: name, Match: m, Action: &routev3.Route_Route{Route: a}}
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
// (https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-timeout);
// without it the route has no timeout (noTimeout), not Envoy's 15 s. A pod served by
// several Services with different timeouts gets the shortest: each Service's promise
// holds.
//
// It depends only on services (the result is cached by their keys and shared by
// proxies) and never fails: discovery validated the policy, keeping the last good value
// of an invalid annotation.
func inboundRouteAction(services []*mesh.Service) *routev3.RouteAction {
	a := &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: LocalAppClusterName},
		Timeout:          noTimeout,
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
