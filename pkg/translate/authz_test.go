package translate

import (
	"fmt"
	"testing"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// authzService is a Service of namespace "default" with policies.
func authzService(name string, policies ...mesh.AuthzPolicy) *mesh.Service {
	return &mesh.Service{Namespace: "default", Name: name, ServiceAccounts: []string{name}, Authz: policies}
}

// authzGoldenServices hold every construct of a policy: callers by identity and any
// caller, a rule with no caller, methods, exact and prefix paths, headers, gRPC methods
// and services, DENY and ALLOW, enforced and shadow.
func authzGoldenServices() []*mesh.Service {
	return []*mesh.Service{
		authzService("app-3",
			mesh.AuthzPolicy{Namespace: "default", Name: "app-3-callers", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{
				{Callers: []string{"default/app-1", "team-b/api"}},
				{AnyCaller: true, Methods: []string{"GET", "HEAD"}, Paths: []mesh.PathMatch{{Type: "Exact", Value: "/healthz"}, {Type: "PathPrefix", Value: "/public/"}}},
				{}, // callers that resolved to nobody
			}},
			mesh.AuthzPolicy{Namespace: "default", Name: "deny.admin", Action: mesh.AuthzDeny, Rules: []mesh.AuthzRule{
				{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/admin"}}, Headers: []mesh.ValueMatch{{Type: "Exact", Name: "X-User", Value: "mallory"}}},
			}},
			mesh.AuthzPolicy{Namespace: "default", Name: "grpc-only", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{
				{Callers: []string{"default/app-2"}, GRPC: []mesh.GRPCMethod{{Service: "currency.Currency", Method: "Convert"}, {Service: "grpc.reflection.v1alpha.ServerReflection", Method: "*"}}},
			}},
			mesh.AuthzPolicy{Namespace: "default", Name: "try-deny", Action: mesh.AuthzDeny, Shadow: true, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-2"}}}},
			mesh.AuthzPolicy{Namespace: "default", Name: "try-allow", Action: mesh.AuthzAllow, Shadow: true, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-1"}}}},
		),
	}
}

// TestAuthzGolden writes the inbound route configuration with every construct, and with
// the mesh's default deny, to testdata/authz-<case>.rds.golden.json.
func TestAuthzGolden(t *testing.T) {
	for _, tc := range []struct {
		name     string
		services []*mesh.Service
		deny     bool
	}{
		{"policies", authzGoldenServices(), false},
		{"default-deny", []*mesh.Service{authzService("app-1")}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden(t, "authz-"+tc.name+".rds.golden.json", stableJSON(t, InboundRouteConfiguration(tc.services, DefaultTrustDomain, tc.deny)))
		})
	}
}

// perRoute decodes the RBACPerRoute of filter on the inbound route, nil if none.
func perRoute(t *testing.T, rc *routev3.RouteConfiguration, filter string) *rbacfilterv3.RBAC {
	t.Helper()
	a, ok := rc.GetVirtualHosts()[0].GetRoutes()[0].GetTypedPerFilterConfig()[filter]
	if !ok {
		return nil
	}
	var pr rbacfilterv3.RBACPerRoute
	if err := a.UnmarshalTo(&pr); err != nil {
		t.Fatal(err)
	}
	return pr.GetRbac()
}

// bodies returns the inbound route's map of response code details to 403 bodies.
func bodies(rc *routev3.RouteConfiguration) map[string]any {
	return rc.GetVirtualHosts()[0].GetRoutes()[0].GetMetadata().GetFilterMetadata()[AuthzMetadataNamespace].AsMap()
}

func TestAuthzRouteConfig(t *testing.T) {
	allowApp1 := mesh.AuthzPolicy{Namespace: "default", Name: "a", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-1"}}}}
	allowAny := mesh.AuthzPolicy{Namespace: "default", Name: "b", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{{AnyCaller: true, Methods: []string{"GET"}}}}
	denyAdmin := mesh.AuthzPolicy{Namespace: "default", Name: "deny-admin", Action: mesh.AuthzDeny, Rules: []mesh.AuthzRule{{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/admin"}}}}}
	shadowAllow := mesh.AuthzPolicy{Namespace: "default", Name: "s", Action: mesh.AuthzAllow, Shadow: true, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-1"}}}}
	for _, tc := range []struct {
		name        string
		services    []*mesh.Service
		defaultDeny bool
		// Policy names per filter and mode; nil: the filter has no per-route config.
		deny, denyShadow, allow, allowShadow []string
		noPerRoute                           []string
		bodies                               map[string]any
	}{
		{name: "no policy", services: []*mesh.Service{authzService("x")},
			noPerRoute: []string{AuthzDenyFilterName, AuthzAllowFilterName}},
		{name: "no service", noPerRoute: []string{AuthzDenyFilterName, AuthzAllowFilterName}},
		{name: "default deny without policy", services: []*mesh.Service{authzService("x")}, defaultDeny: true,
			allow: []string{}, noPerRoute: []string{AuthzDenyFilterName},
			bodies: map[string]any{"rbac_access_denied_matched_policy[none]": DefaultDenyBody}},
		{name: "default deny, no service", defaultDeny: true, allow: []string{}, noPerRoute: []string{AuthzDenyFilterName},
			bodies: map[string]any{"rbac_access_denied_matched_policy[none]": DefaultDenyBody}},
		{name: "default deny gives way to an ALLOW policy", services: []*mesh.Service{authzService("x", allowApp1)}, defaultDeny: true,
			allow: []string{"default/a"}, noPerRoute: []string{AuthzDenyFilterName},
			bodies: map[string]any{"rbac_access_denied_matched_policy[none]": "bearkong: denied: no ALLOW rule of AuthorizationPolicy default/a matches\n"}},
		{name: "default deny with only a shadow ALLOW", services: []*mesh.Service{authzService("x", shadowAllow)}, defaultDeny: true,
			allow: []string{}, allowShadow: []string{"default/s"}, noPerRoute: []string{AuthzDenyFilterName},
			bodies: map[string]any{"rbac_access_denied_matched_policy[none]": DefaultDenyBody}},
		{name: "DENY only", services: []*mesh.Service{authzService("x", denyAdmin)},
			deny: []string{"default/deny-admin"}, noPerRoute: []string{AuthzAllowFilterName},
			bodies: map[string]any{"rbac_access_denied_matched_policy[default/deny-admin]": "bearkong: denied by AuthorizationPolicy default/deny-admin\n"}},
		{name: "dots in names read as _ in the RBAC policy, not in the body",
			services: []*mesh.Service{authzService("x", mesh.AuthzPolicy{Namespace: "default", Name: "no.admin", Action: mesh.AuthzDeny, Rules: denyAdmin.Rules},
				mesh.AuthzPolicy{Namespace: "default", Name: "a.v2", Action: mesh.AuthzAllow, Rules: allowApp1.Rules})},
			deny: []string{"default/no_admin"}, allow: []string{"default/a_v2"},
			bodies: map[string]any{
				"rbac_access_denied_matched_policy[default/no_admin]": "bearkong: denied by AuthorizationPolicy default/no.admin\n",
				"rbac_access_denied_matched_policy[none]":             "bearkong: denied: no ALLOW rule of AuthorizationPolicy default/a.v2 matches\n",
			}},
		{name: "shadow ALLOW only: nothing enforced", services: []*mesh.Service{authzService("x", shadowAllow)},
			allowShadow: []string{"default/s"}, noPerRoute: []string{AuthzDenyFilterName}},
		{name: "union of two Services' policies", services: []*mesh.Service{authzService("x", allowApp1, denyAdmin), authzService("y", allowAny)},
			deny: []string{"default/deny-admin"}, allow: []string{"default/a", "default/b"},
			bodies: map[string]any{
				"rbac_access_denied_matched_policy[default/deny-admin]": "bearkong: denied by AuthorizationPolicy default/deny-admin\n",
				"rbac_access_denied_matched_policy[none]":               "bearkong: denied: no ALLOW rule of AuthorizationPolicy default/a, default/b matches\n",
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := InboundRouteConfiguration(tc.services, DefaultTrustDomain, tc.defaultDeny)
			for _, f := range tc.noPerRoute {
				if perRoute(t, rc, f) != nil {
					t.Errorf("%s has per-route config, want none", f)
				}
			}
			names := func(r *rbacv3.RBAC, action rbacv3.RBAC_Action) []string {
				if r == nil {
					return nil
				}
				if r.GetAction() != action {
					t.Errorf("action %v, want %v", r.GetAction(), action)
				}
				out := []string{}
				for k := range r.GetPolicies() {
					out = append(out, k)
				}
				return out
			}
			sorted := cmpSortStrings()
			if d := perRoute(t, rc, AuthzDenyFilterName); d != nil {
				if diff := cmp.Diff(tc.deny, names(d.GetRules(), rbacv3.RBAC_DENY), sorted); diff != "" {
					t.Errorf("DENY rules (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tc.denyShadow, names(d.GetShadowRules(), rbacv3.RBAC_DENY), sorted); diff != "" {
					t.Errorf("DENY shadow rules (-want +got):\n%s", diff)
				}
				if d.GetRulesStatPrefix() != "deny." || !d.GetTrackPerRuleStats() {
					t.Errorf("stats: prefix %q per rule %v", d.GetRulesStatPrefix(), d.GetTrackPerRuleStats())
				}
			}
			if a := perRoute(t, rc, AuthzAllowFilterName); a != nil {
				if diff := cmp.Diff(tc.allow, names(a.GetRules(), rbacv3.RBAC_ALLOW), sorted); diff != "" {
					t.Errorf("ALLOW rules (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tc.allowShadow, names(a.GetShadowRules(), rbacv3.RBAC_ALLOW), sorted); diff != "" {
					t.Errorf("ALLOW shadow rules (-want +got):\n%s", diff)
				}
				if a.GetRulesStatPrefix() != "allow." || !a.GetTrackPerRuleStats() {
					t.Errorf("stats: prefix %q per rule %v", a.GetRulesStatPrefix(), a.GetTrackPerRuleStats())
				}
			}
			if diff := cmp.Diff(tc.bodies, bodies(rc), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("403 bodies (-want +got):\n%s", diff)
			}
		})
	}
}

func cmpSortStrings() cmp.Option {
	return cmp.Transformer("sort", func(in []string) []string {
		out := append([]string(nil), in...)
		for i := range out {
			for j := i + 1; j < len(out); j++ {
				if out[j] < out[i] {
					out[i], out[j] = out[j], out[i]
				}
			}
		}
		return out
	})
}

// TestAuthzRule checks each construct of a rule as the RBAC principal it becomes.
func TestAuthzRule(t *testing.T) {
	id := func(p *rbacv3.Principal) *rbacv3.Principal { return p }
	peer := func(m *matcherv3.StringMatcher) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
	}
	prefix := func(p string) *matcherv3.StringMatcher {
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}
	}
	or := func(ids ...*rbacv3.Principal) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
	}
	and := func(ids ...*rbacv3.Principal) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}
	}
	app1 := peer(exact("spiffe://example.org/ns/default/sa/app-1"))
	anyone := peer(prefix("spiffe://example.org/"))
	for _, tc := range []struct {
		name string
		rule mesh.AuthzRule
		want *rbacv3.Principal
	}{
		{"one caller", mesh.AuthzRule{Callers: []string{"default/app-1"}}, app1},
		{"two callers", mesh.AuthzRule{Callers: []string{"default/app-1", "team-b/api"}},
			or(app1, peer(exact("spiffe://example.org/ns/team-b/sa/api")))},
		{"any caller of the trust domain", mesh.AuthzRule{AnyCaller: true}, anyone},
		{"no caller matches nothing", mesh.AuthzRule{Methods: []string{"GET"}}, and(nobody, headerID(":method", "GET"))},
		{"methods", mesh.AuthzRule{AnyCaller: true, Methods: []string{"GET", "POST"}},
			and(anyone, or(headerID(":method", "GET"), headerID(":method", "POST")))},
		{"exact path", mesh.AuthzRule{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "Exact", Value: "/a"}}},
			and(anyone, urlPathID(exact("/a")))},
		{"path prefix: whole elements", mesh.AuthzRule{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/admin/"}}},
			and(anyone, or(urlPathID(exact("/admin")), urlPathID(prefix("/admin/"))))},
		{"path prefix /", mesh.AuthzRule{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/"}}},
			and(anyone, urlPathID(prefix("/")))},
		{"headers, all of them, names in lower case", mesh.AuthzRule{AnyCaller: true, Headers: []mesh.ValueMatch{{Type: "Exact", Name: "X-User", Value: "alice"}, {Type: "Exact", Name: "x-team", Value: "b"}}},
			and(anyone, headerID("x-user", "alice"), headerID("x-team", "b"))},
		{"gRPC method and service", mesh.AuthzRule{AnyCaller: true, GRPC: []mesh.GRPCMethod{{Service: "currency.Currency", Method: "Convert"}, {Service: "grpc.reflection.v1alpha.ServerReflection", Method: "*"}, {Service: "pkg.Svc"}}},
			and(anyone, or(urlPathID(exact("/currency.Currency/Convert")), urlPathID(prefix("/grpc.reflection.v1alpha.ServerReflection/")), urlPathID(prefix("/pkg.Svc/"))))},
		{"everything", mesh.AuthzRule{Callers: []string{"default/app-1"}, Methods: []string{"POST"}, Paths: []mesh.PathMatch{{Type: "Exact", Value: "/x"}}, Headers: []mesh.ValueMatch{{Type: "Exact", Name: "h", Value: "v"}}, GRPC: []mesh.GRPCMethod{{Service: "s", Method: "M"}}},
			and(app1, headerID(":method", "POST"), urlPathID(exact("/x")), headerID("h", "v"), urlPathID(exact("/s/M")))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := rbacPolicy(&mesh.AuthzPolicy{Namespace: "default", Name: "p", Rules: []mesh.AuthzRule{tc.rule}}, "example.org")
			want := &rbacv3.Policy{Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}, Principals: []*rbacv3.Principal{id(tc.want)}}
			if diff := cmp.Diff(want, p, protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	t.Run("a policy matches when any rule does", func(t *testing.T) {
		p := rbacPolicy(&mesh.AuthzPolicy{Rules: []mesh.AuthzRule{{AnyCaller: true}, {Callers: []string{"default/app-1"}}}}, "example.org")
		if diff := cmp.Diff([]*rbacv3.Principal{anyone, app1}, p.GetPrincipals(), protocmp.Transform()); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
	t.Run("a policy without rules matches nothing", func(t *testing.T) {
		p := rbacPolicy(&mesh.AuthzPolicy{}, "example.org")
		if diff := cmp.Diff([]*rbacv3.Principal{nobody}, p.GetPrincipals(), protocmp.Transform()); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})
}

// TestAuthzChangeReachesTargetOnly: a policy on app-3 changes the route view of app-3's
// proxies alone; every other proxy's views, and app-3's other views, keep their
// versions (so no LDS, and nothing for anyone else).
func TestAuthzChangeReachesTargetOnly(t *testing.T) {
	snap := func(withPolicy bool) *mesh.Snapshot {
		s := &mesh.Snapshot{Proxies: map[string]*mesh.Proxy{}}
		for i := 1; i <= 3; i++ {
			name := fmt.Sprintf("app-%d", i)
			svc := &mesh.Service{Namespace: "default", Name: name, ServiceAccounts: []string{name}}
			for j := range 2 {
				pod := fmt.Sprintf("%s-%d", name, j)
				ip := fmt.Sprintf("10.0.%d.%d", i, j+1)
				svc.Endpoints = append(svc.Endpoints, mesh.Endpoint{IP: ip, Pod: pod})
				s.Proxies["default/"+pod] = &mesh.Proxy{Namespace: "default", Name: pod, IP: ip, Services: []string{"default/" + name}, ServiceAccount: name}
			}
			if withPolicy && i == 3 {
				svc.Authz = []mesh.AuthzPolicy{{Namespace: "default", Name: "app-3-callers", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{{Callers: []string{"default/app-1"}}}}}
			}
			s.Services = append(s.Services, svc)
		}
		return s
	}
	before, after, again := mustNew(t, snap(false)), mustNew(t, snap(true)), mustNew(t, snap(true))
	for key := range snap(false).Proxies {
		ns, pod := mesh.SplitKey(key)
		n := Node{ID: pod + "." + ns, PodNamespace: ns, PodName: pod, ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
		p1, p2, p3 := mustProxy(t, before, n), mustProxy(t, after, n), mustProxy(t, again, n)
		target := pod == "app-3-0" || pod == "app-3-1"
		for _, typ := range resource.Types {
			if typ == resource.Secret {
				continue
			}
			// Equal snapshots give equal bytes, policies and all.
			if p2.Views[typ].Version() != p3.Views[typ].Version() {
				t.Errorf("%s %s view: two translations of one snapshot differ", pod, typ)
			}
			changed := p1.Views[typ].Version() != p2.Views[typ].Version()
			if want := target && typ == resource.Route; changed != want {
				t.Errorf("%s %s view changed = %v, want %v", pod, typ, changed, want)
			}
			if typ == resource.Route && target {
				names, ok := p2.Views[typ].Changed(p1.Views[typ])
				if !ok || fmt.Sprint(names) != "["+InboundRouteName+"]" {
					t.Errorf("%s: changed routes %v (ok %v), want only %q", pod, names, ok, InboundRouteName)
				}
			}
		}
	}
}
