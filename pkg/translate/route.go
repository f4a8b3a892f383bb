package translate

import (
	"fmt"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Bodies of the outbound listener's 404s. They name the header, so that a user who gets
// one from curl knows what to change without reading Envoy's config.
const (
	UnknownServiceBody = `bearkong: no meshed service matches the "service" header` +
		` (use "<name>" for a service in this namespace, or "<name>.<namespace>",` +
		` "<name>.<namespace>.svc" or the service's full DNS name)` + "\n"
	MissingServiceHeaderBody = `bearkong: the "service" header is missing;` +
		` set it to the meshed service to call, for example "service: app-1"` + "\n"
	RepeatedServiceHeaderBody = `bearkong: the "service" header appears more than once (or holds a comma);` +
		` send it once, naming one meshed service` + "\n"
)

// noTimeout disables a route's timeout. Envoy's default, when a route sets none, is
// 15 s, which would end long requests, long polls and gRPC or WebSocket streams that no
// policy limits; 0 means no timeout:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-routeaction-timeout
// Time limits come from policy only: mesh-timeout on the callee's side, HTTPRoute
// timeouts on the caller's. The connection managers' stream idle timeout ends streams
// on which nothing moves (see streamIdleTimeout). Read-only: shared by every route.
var noTimeout = durationpb.New(0)

// MaxClusterDomainLength bounds the cluster domain, which the outbound listener's Lua
// filter matches (scopeKeyLua), to the length it always had.
const MaxClusterDomainLength = 40

// ValidateClusterDomain checks a cluster domain: a DNS name (lowercase RFC 1123
// subdomain) of at most MaxClusterDomainLength characters, such as "cluster.local".
func ValidateClusterDomain(d string) error {
	if !isDNSSubdomain(d) || len(d) > MaxClusterDomainLength {
		return fmt.Errorf("cluster domain %q is not a lowercase DNS name of at most %d characters", d, MaxClusterDomainLength)
	}
	return nil
}

// serviceRoutes returns the routes of requests for svc: one route to svc's cluster, or,
// when HTTPRoutes are attached to svc, a route per rule match in precedence order and
// then a 404 for requests that match no rule. They need not look at the "service"
// header: the scope that led to them did (see ServiceScope).
func serviceRoutes(svc *mesh.Service) []*routev3.Route {
	name := ClusterName(svc)
	if len(svc.Routes) == 0 {
		return []*routev3.Route{{
			Name:  name,
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
				Timeout:          noTimeout,
			}},
		}}
	}
	routes := make([]*routev3.Route, 0, len(svc.Routes)+1)
	for _, r := range svc.Routes {
		routes = append(routes, ruleRoute(name, r))
	}
	return append(routes, notFoundRoute(name+"|no-rule",
		fmt.Sprintf("bearkong: no rule of the HTTPRoutes attached to service %s matches this request\n", svc.Key())))
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
// whose cluster is named value. Gateway API semantics map onto Envoy's route match and
// action: https://gateway-api.sigs.k8s.io/reference/spec/#httproutematch
func ruleRoute(value string, r mesh.RouteRule) *routev3.Route {
	m := &routev3.RouteMatch{}
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
		retryOtherHosts(rp)
		a.RetryPolicy = rp
	}
	return &routev3.Route{Name: name, Match: m, Action: &routev3.Route_Route{Route: a}}
}

// hostSelectionRetryMaxAttempts is how many times Envoy may pick a host for a retry
// before it settles for one the previous_hosts predicate rejects.
const hostSelectionRetryMaxAttempts = 5

// previousHostsPredicate is Envoy's previous_hosts retry host predicate. Shared,
// read-only.
var previousHostsPredicate = &routev3.RetryPolicy_RetryHostPredicate{
	Name:       "envoy.retry_host_predicates.previous_hosts",
	ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: mustAny(&previoushostsv3.PreviousHostsPredicate{})},
}

// retryOtherHosts makes a retry go to another endpoint than the attempts before it, when
// there is one: a retry sent back to the endpoint that just failed is the one most
// likely to fail again. Envoy tries up to hostSelectionRetryMaxAttempts picks per retry:
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/http/http_connection_management#retry-plugin-configuration
func retryOtherHosts(rp *routev3.RetryPolicy) {
	rp.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{previousHostsPredicate}
	rp.HostSelectionRetryMaxAttempts = hostSelectionRetryMaxAttempts
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
// goes to the local app, once the services' AuthorizationPolicies allow it (authzRoute;
// defaultDeny is Options.DefaultDeny, trustDomain Options.TrustDomain).
//
// It depends on services and the control plane's options only, so a Translator shares
// it among every proxy that serves the same Services (the replicas of one app), and a
// policy change reaches those proxies alone.
func InboundRouteConfiguration(services []*mesh.Service, trustDomain string, defaultDeny bool) *routev3.RouteConfiguration {
	rc := inboundRouteConfiguration(services)
	authzRoute(rc.VirtualHosts[0].Routes[0], services, trustDomain, defaultDeny)
	return rc
}

func inboundRouteConfiguration(services []*mesh.Service) *routev3.RouteConfiguration {
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
// proxies) and never fails: discovery validated the policy, ignoring an invalid
// annotation as if absent.
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
