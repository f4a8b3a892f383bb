package translate

import (
	"fmt"
	"sort"
	"strings"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Authorization (mesh.AuthzPolicy) is enforced by the callee: its inbound connection
// manager runs two RBAC HTTP filters before the router, one per action, because an RBAC
// engine has a single action:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter
//
//   - AuthzDenyFilterName (action DENY) denies what an enforced DENY policy matches;
//   - AuthzAllowFilterName (action ALLOW) then denies what no enforced ALLOW policy
//     matches, when the pod's Services have one (or the mesh denies by default).
//
// DENY runs first, so DENY wins. Each filter's shadow_rules hold the shadow policies of
// its action: evaluated and counted, never enforced.
//
// The listener's filters carry no rules (an RBAC filter without rules lets everything
// through); the rules live in per-route config (RBACPerRoute) on the inbound route, which
// is built per set of served Services (InboundRouteConfiguration). So a policy change
// re-sends RDS to the target Service's proxies only, never LDS and never to anyone else.
const (
	AuthzDenyFilterName  = "bearkong.authz.deny"
	AuthzAllowFilterName = "bearkong.authz.allow"
)

// Stat prefixes of the two filters (rules and shadow rules alike). Envoy names the
// counters http.inbound.rbac.<prefix>{allowed,denied,shadow_allowed,shadow_denied} and,
// per policy (track_per_rule_stats), http.inbound.rbac.<prefix>policy.<ns>/<name>.<counter>;
// its Prometheus output takes the policy out as the label envoy_rbac_policy_name and the
// prefix as envoy_rbac_http_prefix ("deny" or "allow"):
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter#statistics
const (
	authzDenyStatPrefix  = "deny."
	authzAllowStatPrefix = "allow."
)

// Bodies of the 403 a denied request gets, %s the policy ("<namespace>/<name>") or, for
// NoAllowRuleBodyFormat, the ALLOW policies of the pod's Services joined by ", ".
const (
	DeniedByPolicyBodyFormat = "bearkong: denied by AuthorizationPolicy %s\n"
	NoAllowRuleBodyFormat    = "bearkong: denied: no ALLOW rule of AuthorizationPolicy %s matches\n"
	DefaultDenyBody          = "bearkong: denied: the mesh denies by default\n"
)

// AuthzMetadataNamespace is the inbound route's metadata namespace that maps each
// response code detail an RBAC denial can carry to the 403's body (see authzReply).
const AuthzMetadataNamespace = "bearkong.authz"

// rbacDeniedDetail is the response code detail Envoy's RBAC filter sets when it denies,
// id being the matched policy, or "none" when an ALLOW engine matched no policy:
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter#dynamic-metadata
// (Envoy replaces whitespace with '_'; policy keys have none.)
func rbacDeniedDetail(id string) string { return "rbac_access_denied_matched_policy[" + id + "]" }

// authzFilters are the inbound connection manager's RBAC filters, without rules: the
// rules come per route. track_per_rule_stats must be on here and per route: Envoy reads
// it from the per-route config when there is one, and counts under this config's prefixes.
func authzFilters() []*hcmv3.HttpFilter {
	filter := func(name, prefix string) *hcmv3.HttpFilter {
		return &hcmv3.HttpFilter{
			Name: name,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbacfilterv3.RBAC{
				RulesStatPrefix:       prefix,
				ShadowRulesStatPrefix: prefix,
				TrackPerRuleStats:     true,
			})},
		}
	}
	return []*hcmv3.HttpFilter{filter(AuthzDenyFilterName, authzDenyStatPrefix), filter(AuthzAllowFilterName, authzAllowStatPrefix)}
}

// authzReply gives an RBAC denial its body. The RBAC filter answers "RBAC: access
// denied" and sets a response code detail naming the matched policy
// (rbacDeniedDetail); the inbound route's metadata maps each detail it can produce to
// the body (authzRouteMetadata), and this mapper, on the listener, looks the detail up
// with a CEL expression, so that the texts change with RDS only. Only RBAC sends local
// 403s on the inbound listener; the app's own 403s are not local replies and pass
// untouched. A gRPC request still gets a trailers-only answer with grpc-status 7
// (PERMISSION_DENIED, Envoy's mapping of 403) and this body as grpc-message.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_conn_man/local_reply
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/advanced/attributes
var authzReply = &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{{
	Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{
		StatusCodeFilter: &accesslogv3.StatusCodeFilter{Comparison: &accesslogv3.ComparisonFilter{
			Op:    accesslogv3.ComparisonFilter_EQ,
			Value: &corev3.RuntimeUInt32{DefaultValue: 403, RuntimeKey: "bearkong.authz.status"},
		}},
	}},
	BodyFormatOverride: &corev3.SubstitutionFormatString{
		Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
			Specifier: &corev3.DataSource_InlineString{
				InlineString: "%CEL(xds.route_metadata.filter_metadata['" + AuthzMetadataNamespace + "'][response.code_details])%",
			},
		}},
	},
}}}

// ShadowLogPrefix starts the line a sidecar writes to its standard output for each
// request that a shadow policy would have denied (see shadowAccessLog).
const ShadowLogPrefix = "[bearkong authz shadow]"

// shadowAccessLog logs the requests that shadow policies would deny, so that a dry run
// says which requests it would have stopped, not only how many. The RBAC filters record
// their shadow verdicts as dynamic metadata under "envoy.filters.http.rbac", each key
// prefixed with its filter's shadow_rules_stat_prefix: "deny.shadow_engine_result" is
// "denied" when a shadow DENY policy matched (named by "deny.shadow_effective_policy_id"),
// "allow.shadow_engine_result" when no shadow ALLOW policy matched. Envoy writes the
// lines out every 10 s (its --file-flush-interval-msec).
// https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/rbac_filter#dynamic-metadata
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/accesslog/v3/accesslog.proto#envoy-v3-api-msg-config-accesslog-v3-metadatafilter
var shadowAccessLog = func() *accesslogv3.AccessLog {
	denied := func(prefix string) *accesslogv3.AccessLogFilter {
		return &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_MetadataFilter{MetadataFilter: &accesslogv3.MetadataFilter{
			Matcher: &matcherv3.MetadataMatcher{
				Filter: rbacMetadataNamespace,
				Path:   []*matcherv3.MetadataMatcher_PathSegment{{Segment: &matcherv3.MetadataMatcher_PathSegment_Key{Key: prefix + "shadow_engine_result"}}},
				Value:  &matcherv3.ValueMatcher{MatchPattern: &matcherv3.ValueMatcher_StringMatch{StringMatch: exact("denied")}},
			},
			MatchIfKeyNotFound: wrapperspb.Bool(false),
		}}}
	}
	md := func(key string) string { return "%DYNAMIC_METADATA(" + rbacMetadataNamespace + ":" + key + ")%" }
	format := ShadowLogPrefix + " %START_TIME% %REQ(:METHOD)% %REQ(:PATH)% caller=%DOWNSTREAM_PEER_URI_SAN%" +
		" shadow_deny=" + md(authzDenyStatPrefix+"shadow_effective_policy_id") +
		" shadow_allow=" + md(authzAllowStatPrefix+"shadow_engine_result") + " status=%RESPONSE_CODE%\n"
	return &accesslogv3.AccessLog{
		Name: "envoy.access_loggers.stdout",
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_OrFilter{OrFilter: &accesslogv3.OrFilter{
			Filters: []*accesslogv3.AccessLogFilter{denied(authzDenyStatPrefix), denied(authzAllowStatPrefix)},
		}}},
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&streamv3.StdoutAccessLog{
			AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: &corev3.SubstitutionFormatString{
				Format: &corev3.SubstitutionFormatString_TextFormatSource{TextFormatSource: &corev3.DataSource{
					Specifier: &corev3.DataSource_InlineString{InlineString: format},
				}},
			}},
		})},
	}
}()

// rbacMetadataNamespace is where Envoy's RBAC filter records its verdicts.
const rbacMetadataNamespace = "envoy.filters.http.rbac"

// authzPolicies are the policies a pod enforces: those of every Service it serves (the
// inbound listener cannot tell which Service a caller meant), sorted by key, each once.
func authzPolicies(services []*mesh.Service) []*mesh.AuthzPolicy {
	seen := map[string]bool{}
	var out []*mesh.AuthzPolicy
	for _, s := range services {
		for i := range s.Authz {
			p := &s.Authz[i]
			if !seen[p.Key()] {
				seen[p.Key()] = true
				out = append(out, p)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// authzRoute adds the authorization of services to the inbound route r: RBACPerRoute
// for each filter that has something to do, and the 403 bodies in r's metadata. With no
// policy and no default deny, r is left as it was.
func authzRoute(r *routev3.Route, services []*mesh.Service, trustDomain string, defaultDeny bool) {
	policies := authzPolicies(services)
	rules := func(action rbacv3.RBAC_Action, shadow bool) *rbacv3.RBAC {
		var rb *rbacv3.RBAC
		for _, p := range policies {
			if p.Shadow != shadow || (p.Action == mesh.AuthzDeny) != (action == rbacv3.RBAC_DENY) {
				continue
			}
			if rb == nil {
				rb = &rbacv3.RBAC{Action: action, Policies: map[string]*rbacv3.Policy{}}
			}
			rb.Policies[rbacPolicyID(p)] = rbacPolicy(p, trustDomain)
		}
		return rb
	}
	bodies := map[string]*structpb.Value{}
	perRoute := map[string]*anypb.Any{}
	if deny, shadow := rules(rbacv3.RBAC_DENY, false), rules(rbacv3.RBAC_DENY, true); deny != nil || shadow != nil {
		for _, p := range policies {
			if p.Action == mesh.AuthzDeny && !p.Shadow {
				bodies[rbacDeniedDetail(rbacPolicyID(p))] = structpb.NewStringValue(fmt.Sprintf(DeniedByPolicyBodyFormat, p.Key()))
			}
		}
		perRoute[AuthzDenyFilterName] = mustAny(&rbacfilterv3.RBACPerRoute{Rbac: &rbacfilterv3.RBAC{
			Rules: deny, ShadowRules: shadow,
			RulesStatPrefix: authzDenyStatPrefix, ShadowRulesStatPrefix: authzDenyStatPrefix, TrackPerRuleStats: true,
		}})
	}
	allow, shadow := rules(rbacv3.RBAC_ALLOW, false), rules(rbacv3.RBAC_ALLOW, true)
	switch {
	case allow != nil:
		var keys []string
		for _, p := range policies {
			if p.Action == mesh.AuthzAllow && !p.Shadow {
				keys = append(keys, p.Key())
			}
		}
		bodies[rbacDeniedDetail("none")] = structpb.NewStringValue(fmt.Sprintf(NoAllowRuleBodyFormat, strings.Join(keys, ", ")))
	case defaultDeny:
		// An ALLOW engine without policies denies every request.
		allow = &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}
		bodies[rbacDeniedDetail("none")] = structpb.NewStringValue(DefaultDenyBody)
	}
	if allow != nil || shadow != nil {
		perRoute[AuthzAllowFilterName] = mustAny(&rbacfilterv3.RBACPerRoute{Rbac: &rbacfilterv3.RBAC{
			Rules: allow, ShadowRules: shadow,
			RulesStatPrefix: authzAllowStatPrefix, ShadowRulesStatPrefix: authzAllowStatPrefix, TrackPerRuleStats: true,
		}})
	}
	if len(perRoute) == 0 {
		return
	}
	r.TypedPerFilterConfig = perRoute
	if len(bodies) > 0 {
		r.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{AuthzMetadataNamespace: {Fields: bodies}}}
	}
}

// rbacPolicyID is the name of a policy in the RBAC filter, and so in its stats:
// "<namespace>/<name>" with the name's dots (a Kubernetes name may have some) as '_',
// which no Kubernetes name holds. Envoy's Prometheus output takes the policy out of a
// stat name as the label envoy_rbac_policy_name only when it has no dot; with one, the
// policy would end up in the metric's name. The 403 bodies name the policy as it is.
func rbacPolicyID(p *mesh.AuthzPolicy) string {
	return p.Namespace + "/" + strings.ReplaceAll(p.Name, ".", "_")
}

// rbacPolicy is one AuthorizationPolicy as an RBAC policy: it matches when any of its
// rules does. A rule ANDs its caller with its request conditions, and RBAC's Policy
// ANDs principals with permissions only once per policy, so each rule is one principal
// (and_ids) holding both: the peer's identity and the request's headers and path, which
// principals can match as well as permissions can.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/rbac/v3/rbac.proto#envoy-v3-api-msg-config-rbac-v3-principal
func rbacPolicy(p *mesh.AuthzPolicy, trustDomain string) *rbacv3.Policy {
	ids := make([]*rbacv3.Principal, 0, len(p.Rules))
	for _, r := range p.Rules {
		ids = append(ids, ruleAnd(append([]*rbacv3.Principal{callers(r, trustDomain)}, requestConditions(r)...)))
	}
	if len(ids) == 0 {
		ids = append(ids, nobody) // a policy without rules matches nothing
	}
	return &rbacv3.Policy{
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals:  ids,
	}
}

// nobody matches no request. A rule whose callers resolved to no identity (a Service
// with no known pod) must match nothing, never anyone.
var nobody = &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}}}

// callers matches the peer certificate's URI SAN: any workload of the trust domain
// ("spiffe://<td>/" prefix, the trailing slash keeping "<td>.evil" out), or one of the
// rule's identities exactly. A plaintext connection (a PERMISSIVE or DISABLE listener)
// has no peer certificate, so it matches neither. Envoy advises the mtls_authenticated
// extension over `authenticated` because the latter does not itself check that the
// certificate was validated; here the TLS chain requires a client certificate that
// chains to the mesh's roots (downstreamTLS), so every certificate it sees was.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/rbac/v3/rbac.proto#envoy-v3-api-msg-config-rbac-v3-principal-authenticated
func callers(r mesh.AuthzRule, trustDomain string) *rbacv3.Principal {
	peer := func(m *matcherv3.StringMatcher) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
	}
	if r.AnyCaller {
		return peer(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}})
	}
	var ids []*rbacv3.Principal
	for _, c := range r.Callers {
		ns, sa := mesh.SplitKey(c)
		ids = append(ids, peer(exact(mesh.SPIFFEID(trustDomain, ns, sa))))
	}
	switch len(ids) {
	case 0:
		return nobody
	case 1:
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

// requestConditions are a rule's conditions on the request, each of which must hold:
// any of the methods, any of the paths, every header, any of the gRPC methods. Empty
// lists add nothing. Paths are matched after the connection manager normalised them
// (see harden), without the query string.
func requestConditions(r mesh.AuthzRule) []*rbacv3.Principal {
	var out []*rbacv3.Principal
	if len(r.Methods) > 0 {
		ms := make([]*rbacv3.Principal, len(r.Methods))
		for i, m := range r.Methods {
			ms[i] = headerID(":method", m)
		}
		out = append(out, ruleOr(ms))
	}
	if len(r.Paths) > 0 {
		var ps []*rbacv3.Principal
		for _, p := range r.Paths {
			ps = append(ps, pathIDs(p)...)
		}
		out = append(out, ruleOr(ps))
	}
	for _, h := range r.Headers {
		// Envoy keeps header names in lower case.
		out = append(out, headerID(strings.ToLower(h.Name), h.Value))
	}
	if len(r.GRPC) > 0 {
		gs := make([]*rbacv3.Principal, len(r.GRPC))
		for i, g := range r.GRPC {
			// A gRPC call is a POST to /<package.Service>/<Method>.
			// https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md#requests
			m := &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/" + g.Service + "/"}}
			if g.Method != "" && g.Method != "*" {
				m = exact("/" + g.Service + "/" + g.Method)
			}
			gs[i] = urlPathID(m)
		}
		out = append(out, ruleOr(gs))
	}
	return out
}

// pathIDs match a path as an HTTPRoute does (ruleRoute): Exact is the whole path;
// PathPrefix matches whole path elements, "/admin" matching "/admin" and "/admin/x" but
// not "/administrator", a trailing slash ignored.
func pathIDs(p mesh.PathMatch) []*rbacv3.Principal {
	if p.Type == "Exact" {
		return []*rbacv3.Principal{urlPathID(exact(p.Value))}
	}
	v := strings.TrimRight(p.Value, "/")
	if v == "" {
		return []*rbacv3.Principal{urlPathID(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "/"}})}
	}
	return []*rbacv3.Principal{
		urlPathID(exact(v)),
		urlPathID(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v + "/"}}),
	}
}

func urlPathID(m *matcherv3.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: m}}}}
}

func headerID(name, value string) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Header{Header: &routev3.HeaderMatcher{
		Name:                 name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: exact(value)},
	}}}
}

// ruleOr and ruleAnd combine principals, a single one standing for itself.
func ruleOr(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func ruleAnd(ids []*rbacv3.Principal) *rbacv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}
}
