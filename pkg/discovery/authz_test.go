package discovery

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// authzCluster: app-1, app-2 and app-3 meshed in "default" (pods of ServiceAccounts
// sa-1, sa-2 and sa-3; app-2 has two pods of two accounts), "plain" unmeshed, and app-9
// meshed in "other" (sa-9).
func authzCluster() []runtime.Object {
	ipv4 := discoveryv1.AddressTypeIPv4
	var objs []runtime.Object
	add := func(ns, name string, svcOpts []func(*corev1.Service), pods ...[3]string) {
		objs = append(objs, service(ns, name, svcOpts...))
		var eps []discoveryv1.Endpoint
		for _, p := range pods { // name, ip, service account
			po := pod(ns, p[0], p[1], map[string]string{"app": name})
			po.Spec.ServiceAccountName = p[2]
			objs = append(objs, po)
			eps = append(eps, endpoint(p[1], p[0]))
		}
		objs = append(objs, endpointSlice(ns, name+"-x", name, ipv4, eps...))
	}
	m := []func(*corev1.Service){meshed}
	add("default", "app-1", m, [3]string{"app-1-0", "10.0.0.1", "sa-1"})
	add("default", "app-2", m, [3]string{"app-2-0", "10.0.0.2", "sa-2"}, [3]string{"app-2-1", "10.0.0.3", "sa-2b"})
	add("default", "app-3", m, [3]string{"app-3-0", "10.0.0.4", "sa-3"})
	add("default", "plain", nil, [3]string{"plain-0", "10.0.0.5", "sa-p"})
	add("other", "app-9", m, [3]string{"app-9-0", "10.0.1.1", "sa-9"})
	return objs
}

// authorizeFrom builds the snapshot of objs and applies the policies to it.
func authorizeFrom(t *testing.T, objs []runtime.Object, pols ...*v1alpha1.AuthorizationPolicy) (*mesh.Snapshot, []policyStatus) {
	t.Helper()
	snap := buildFrom(t, objs...)
	svcs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	for _, o := range objs {
		if s, ok := o.(*corev1.Service); ok {
			if err := svcs.Add(s); err != nil {
				t.Fatal(err)
			}
		}
	}
	return snap, authorize(snap, corelisters.NewServiceLister(svcs), pols)
}

func policy(name, target string, action v1alpha1.Action, rules ...v1alpha1.Rule) *v1alpha1.AuthorizationPolicy {
	return &v1alpha1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Generation: 3, ResourceVersion: "1"},
		Spec:       v1alpha1.AuthorizationPolicySpec{TargetRef: v1alpha1.TargetRef{Name: target}, Action: action, Rules: rules},
	}
}

func from(srcs ...v1alpha1.Source) v1alpha1.Rule { return v1alpha1.Rule{From: srcs} }
func sa(name, ns string) v1alpha1.Source {
	return v1alpha1.Source{ServiceAccount: &v1alpha1.ObjectRef{Name: name, Namespace: ns}}
}
func svcCaller(name, ns string) v1alpha1.Source {
	return v1alpha1.Source{Service: &v1alpha1.ObjectRef{Name: name, Namespace: ns}}
}

func TestAuthorize(t *testing.T) {
	anyW := v1alpha1.Source{AnyWorkload: true}
	shadow := func(p *v1alpha1.AuthorizationPolicy) *v1alpha1.AuthorizationPolicy {
		p.Spec.Mode = v1alpha1.ModeShadow
		return p
	}
	tests := []struct {
		name     string
		policies []*v1alpha1.AuthorizationPolicy
		// want is app-3's Authz.
		want []mesh.AuthzPolicy
		// reason and status of each policy's Accepted condition, by name.
		accepted map[string]string
		// message must contain, by policy name.
		message map[string]string
	}{
		{
			name:     "no policy",
			accepted: map[string]string{},
		},
		{
			name: "service accounts: namespace defaults to the policy's, sorted and unique",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "app-3", v1alpha1.ActionAllow,
				from(sa("sa-1", ""), sa("robot", "other"), sa("sa-1", "default")))},
			want: []mesh.AuthzPolicy{{Namespace: "default", Name: "p", Action: mesh.AuthzAllow,
				Rules: []mesh.AuthzRule{{Callers: []string{"default/sa-1", "other/robot"}}}}},
			accepted: map[string]string{"p": "True/Accepted"},
		},
		{
			name: "a service stands for its pods' service accounts, in any namespace",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "app-3", v1alpha1.ActionAllow,
				from(svcCaller("app-2", ""), svcCaller("app-9", "other")))},
			want: []mesh.AuthzPolicy{{Namespace: "default", Name: "p", Action: mesh.AuthzAllow,
				Rules: []mesh.AuthzRule{{Callers: []string{"default/sa-2", "default/sa-2b", "other/sa-9"}}}}},
			accepted: map[string]string{"p": "True/Accepted"},
		},
		{
			name: "anyWorkload, and a rule without from, match any caller",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "app-3", v1alpha1.ActionDeny,
				from(sa("sa-1", ""), anyW),
				v1alpha1.Rule{To: &v1alpha1.Operation{Paths: []v1alpha1.PathMatch{{Value: "/admin"}}}})},
			want: []mesh.AuthzPolicy{{Namespace: "default", Name: "p", Action: mesh.AuthzDeny, Rules: []mesh.AuthzRule{
				{AnyCaller: true},
				{AnyCaller: true, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: "/admin"}}},
			}}},
			accepted: map[string]string{"p": "True/Accepted"},
		},
		{
			name: "L7 conditions, shadow mode, several policies sorted by name",
			policies: []*v1alpha1.AuthorizationPolicy{
				shadow(policy("z", "app-3", v1alpha1.ActionDeny, v1alpha1.Rule{To: &v1alpha1.Operation{
					Methods: []string{"GET", "POST"},
					Paths:   []v1alpha1.PathMatch{{Type: v1alpha1.PathMatchExact, Value: "/x"}},
					Headers: []v1alpha1.HeaderMatch{{Name: "x-user", Value: "alice"}},
				}})),
				policy("a", "app-3", v1alpha1.ActionAllow, v1alpha1.Rule{To: &v1alpha1.Operation{
					GRPC: []v1alpha1.GRPCMethod{{Service: "currency.Currency", Method: "Convert"}, {Service: "grpc.reflection.v1alpha.ServerReflection", Method: "*"}, {Service: "x.Y"}},
				}}),
			},
			want: []mesh.AuthzPolicy{
				{Namespace: "default", Name: "a", Action: mesh.AuthzAllow, Rules: []mesh.AuthzRule{{AnyCaller: true,
					GRPC: []mesh.GRPCMethod{{Service: "currency.Currency", Method: "Convert"}, {Service: "grpc.reflection.v1alpha.ServerReflection"}, {Service: "x.Y"}}}}},
				{Namespace: "default", Name: "z", Action: mesh.AuthzDeny, Shadow: true, Rules: []mesh.AuthzRule{{AnyCaller: true,
					Methods: []string{"GET", "POST"},
					Paths:   []mesh.PathMatch{{Type: "Exact", Value: "/x"}},
					Headers: []mesh.ValueMatch{{Type: "Exact", Name: "x-user", Value: "alice"}}}}},
			},
			accepted: map[string]string{"a": "True/Accepted", "z": "True/Accepted"},
			message:  map[string]string{"a": "enforced", "z": "Shadow: never enforced"},
		},
		{
			name: "a caller Service that does not exist matches nobody; the policy is enforced",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "app-3", v1alpha1.ActionAllow,
				from(svcCaller("ghost", "")), from(svcCaller("app-1", "")))},
			want: []mesh.AuthzPolicy{{Namespace: "default", Name: "p", Action: mesh.AuthzAllow,
				Rules: []mesh.AuthzRule{{}, {Callers: []string{"default/sa-1"}}}}},
			accepted: map[string]string{"p": "True/CallerNotFound"},
			message:  map[string]string{"p": "default/ghost"},
		},
		{
			name: "a caller Service that is not meshed matches nobody",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "app-3", v1alpha1.ActionAllow,
				from(svcCaller("plain", ""), sa("sa-1", "")))},
			want: []mesh.AuthzPolicy{{Namespace: "default", Name: "p", Action: mesh.AuthzAllow,
				Rules: []mesh.AuthzRule{{Callers: []string{"default/sa-1"}}}}},
			accepted: map[string]string{"p": "True/CallerNotFound"},
			message:  map[string]string{"p": "not meshed"},
		},
		{
			name:     "target not found",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "nope", v1alpha1.ActionAllow, from(anyW))},
			accepted: map[string]string{"p": "False/TargetNotFound"},
			message:  map[string]string{"p": "default/nope"},
		},
		{
			name:     "target not meshed",
			policies: []*v1alpha1.AuthorizationPolicy{policy("p", "plain", v1alpha1.ActionAllow, from(anyW))},
			accepted: map[string]string{"p": "False/TargetNotMeshed"},
			message:  map[string]string{"p": mesh.MeshedLabel},
		},
		{
			name: "contradictory headers are invalid, and the valid policy beside it still applies",
			policies: []*v1alpha1.AuthorizationPolicy{
				policy("bad", "app-3", v1alpha1.ActionDeny, v1alpha1.Rule{To: &v1alpha1.Operation{
					Headers: []v1alpha1.HeaderMatch{{Name: "x-user", Value: "a"}, {Name: "X-User", Value: "b"}}}}),
				policy("good", "app-3", v1alpha1.ActionDeny, from(sa("sa-1", ""))),
			},
			want: []mesh.AuthzPolicy{{Namespace: "default", Name: "good", Action: mesh.AuthzDeny,
				Rules: []mesh.AuthzRule{{Callers: []string{"default/sa-1"}}}}},
			accepted: map[string]string{"bad": "False/Invalid", "good": "True/Accepted"},
			message:  map[string]string{"bad": "x-user"},
		},
	}
	// What the schema refuses, should a policy get past it (a CRD installed without
	// its schema, or an older one): invalid, never in the model.
	for _, bad := range []struct {
		name string
		edit func(*v1alpha1.AuthorizationPolicy)
		msg  string
	}{
		{"action BLOCK", func(p *v1alpha1.AuthorizationPolicy) { p.Spec.Action = "BLOCK" }, "action"},
		{"mode Audit", func(p *v1alpha1.AuthorizationPolicy) { p.Spec.Mode = "Audit" }, "mode"},
		{"no rules", func(p *v1alpha1.AuthorizationPolicy) { p.Spec.Rules = nil }, "rules"},
		{"a from entry of two kinds", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{from(v1alpha1.Source{ServiceAccount: &v1alpha1.ObjectRef{Name: "a"}, AnyWorkload: true})}
		}, "exactly one"},
		{"an empty from entry", func(p *v1alpha1.AuthorizationPolicy) { p.Spec.Rules = []v1alpha1.Rule{from(v1alpha1.Source{})} }, "exactly one"},
		{"path type Regex", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{{To: &v1alpha1.Operation{Paths: []v1alpha1.PathMatch{{Type: "Regex", Value: "/a"}}}}}
		}, "path"},
		{"relative path", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{{To: &v1alpha1.Operation{Paths: []v1alpha1.PathMatch{{Value: "a"}}}}}
		}, "path"},
		{"paths and grpc", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{{To: &v1alpha1.Operation{Paths: []v1alpha1.PathMatch{{Value: "/a"}}, GRPC: []v1alpha1.GRPCMethod{{Service: "a.B"}}}}}
		}, "grpc"},
		{"grpc service with a slash", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{{To: &v1alpha1.Operation{GRPC: []v1alpha1.GRPCMethod{{Service: "a/B"}}}}}
		}, "gRPC service"},
		{"method get", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{{To: &v1alpha1.Operation{Methods: []string{"get"}}}}
		}, "method"},
		{"header name with a colon", func(p *v1alpha1.AuthorizationPolicy) {
			p.Spec.Rules = []v1alpha1.Rule{{To: &v1alpha1.Operation{Headers: []v1alpha1.HeaderMatch{{Name: ":path", Value: "/"}}}}}
		}, "header"},
	} {
		p := policy("bad", "app-3", v1alpha1.ActionAllow, from(anyW))
		bad.edit(p)
		tests = append(tests, struct {
			name     string
			policies []*v1alpha1.AuthorizationPolicy
			want     []mesh.AuthzPolicy
			accepted map[string]string
			message  map[string]string
		}{name: "invalid: " + bad.name, policies: []*v1alpha1.AuthorizationPolicy{p},
			accepted: map[string]string{"bad": "False/Invalid"}, message: map[string]string{"bad": bad.msg}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, statuses := authorizeFrom(t, authzCluster(), tt.policies...)
			if diff := cmp.Diff(tt.want, snap.Service("default", "app-3").Authz); diff != "" {
				t.Errorf("app-3 Authz (-want +got):\n%s", diff)
			}
			for _, s := range snap.Services {
				if s.Name != "app-3" && s.Authz != nil {
					t.Errorf("%s has policies %+v", s.Key(), s.Authz)
				}
			}
			got := map[string]string{}
			for _, st := range statuses {
				c := st.Accepted
				got[st.Name] = string(c.Status) + "/" + c.Reason
				if c.Type != v1alpha1.ConditionAccepted || c.ObservedGeneration != 3 || st.Namespace != "default" {
					t.Errorf("%s: condition %+v", st.Name, c)
				}
				if want := tt.message[st.Name]; !strings.Contains(c.Message, want) {
					t.Errorf("%s: message %q, want it to contain %q", st.Name, c.Message, want)
				}
				// Not accepted, or accepted with a caller that resolves to nobody: a
				// diagnostic says so too.
				if c.Reason != v1alpha1.ReasonAccepted && !hasDiagnostic(snap, st.Name, c.Reason) {
					t.Errorf("%s: no diagnostic %s in %+v", st.Name, c.Reason, snap.Diagnostics)
				}
			}
			if diff := cmp.Diff(tt.accepted, got); diff != "" {
				t.Errorf("Accepted (-want +got):\n%s", diff)
			}
		})
	}
}

func hasDiagnostic(s *mesh.Snapshot, name, reason string) bool {
	for _, d := range s.Diagnostics {
		if d.Kind == KindAuthorizationPolicy && d.Name == name && d.Reason == reason {
			return true
		}
	}
	return false
}

// TestAuthorizeDoesNotShareCacheObjects: the model holds copies, so that a later change
// of the cached policy cannot reach a published snapshot.
func TestAuthorizeDoesNotShareCacheObjects(t *testing.T) {
	p := policy("p", "app-3", v1alpha1.ActionAllow, v1alpha1.Rule{To: &v1alpha1.Operation{Methods: []string{"GET"}}})
	snap, _ := authorizeFrom(t, authzCluster(), p)
	p.Spec.Rules[0].To.Methods[0] = "PUT"
	if got := snap.Service("default", "app-3").Authz[0].Rules[0].Methods[0]; got != "GET" {
		t.Errorf("the snapshot changed with the cache: %s", got)
	}
}

// TestSameMeaningSeesPolicies: a policy change is a change of the snapshot.
func TestSameMeaningSeesPolicies(t *testing.T) {
	a, _ := authorizeFrom(t, authzCluster())
	b, _ := authorizeFrom(t, authzCluster(), policy("p", "app-3", v1alpha1.ActionAllow, from(sa("sa-1", ""))))
	c, _ := authorizeFrom(t, authzCluster(), policy("p", "app-3", v1alpha1.ActionAllow, from(sa("sa-1", ""))))
	if sameMeaning(a, b) {
		t.Error("a policy added: same meaning")
	}
	if !sameMeaning(b, c) {
		t.Error("equal policies: different meaning")
	}
}

// TestPoliciesWithoutTheCRD: with an AuthzClient but no AuthorizationPolicy CRD in the
// cluster, discovery says so once, never lists or watches policies (an informer on a
// resource that is not served would never sync, and bearkong would never be ready),
// and publishes its snapshots as before.
func TestPoliciesWithoutTheCRD(t *testing.T) {
	var requests atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.NotFound(w, r)
	}))
	defer srv.Close()
	authz, err := v1alpha1.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	opts := fastOptions()
	opts.AuthzClient = authz
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	svc, slice, p := app1()
	h := newHarness(t, opts, svc, slice, p)
	first := h.start()
	if first.Service("default", "app-1") == nil || !h.d.HasSynced() {
		t.Fatalf("first snapshot: %s", describe(first))
	}
	if n := strings.Count(logs.String(), "the AuthorizationPolicy CRD is not installed"); n != 1 {
		t.Errorf("%d log lines about the missing CRD, want 1:\n%s", n, logs.String())
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests for policies, want none", n)
	}
}
