package discovery

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// KindAuthorizationPolicy is the kind of bearkong's policy resource in diagnostics.
const KindAuthorizationPolicy = "AuthorizationPolicy"

// policyStatus is the Accepted condition bearkong wants on one AuthorizationPolicy.
type policyStatus struct {
	Namespace, Name string
	Accepted        metav1.Condition
}

// authorize resolves the AuthorizationPolicies into the snapshot: each accepted policy
// joins the Authz of its target Service (sorted by name), with its callers resolved to
// identities ("namespace/serviceaccount"). It returns the Accepted condition each policy
// should carry, and adds a diagnostic for each policy not accepted or accepted with a
// caller that resolves to nobody. It must run after build, which fills in the meshed
// Services and their ServiceAccounts; services is read to tell a Service that does not
// exist from one that is not meshed.
//
// A policy bearkong cannot enforce exactly as written never reaches the model: its
// target is missing or not meshed, or it fails the checks the CRD's schema makes (run
// again here, for a CRD installed without its schema) or those the schema cannot make.
// A caller that does not exist is not such a case: the policy is enforced, that caller
// matches nobody (for an ALLOW policy: it is not allowed; for a DENY: nothing more is
// denied), and the condition says so with reason CallerNotFound and status True.
func authorize(snap *mesh.Snapshot, services corelisters.ServiceLister, policies []*v1alpha1.AuthorizationPolicy) []policyStatus {
	policies = slices.Clone(policies)
	slices.SortFunc(policies, func(a, b *v1alpha1.AuthorizationPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	statuses := make([]policyStatus, 0, len(policies))
	var diags []mesh.Diagnostic
	for _, p := range policies {
		target := p.Namespace + "/" + p.Spec.TargetRef.Name
		reason, msg := v1alpha1.ReasonAccepted, "enforced on the inbound listeners of meshed Service "+target
		var model mesh.AuthzPolicy
		var missing []string
		svc := snap.Service(p.Namespace, p.Spec.TargetRef.Name)
		err := validatePolicy(&p.Spec)
		switch {
		case err != nil:
			reason, msg = v1alpha1.ReasonInvalid, err.Error()
		case svc == nil && serviceExists(services, p.Namespace, p.Spec.TargetRef.Name):
			reason, msg = v1alpha1.ReasonTargetNotMeshed,
				fmt.Sprintf("target Service %s is not meshed (label %s: %s)", target, mesh.MeshedLabel, mesh.MeshedValue)
		case svc == nil:
			reason, msg = v1alpha1.ReasonTargetNotFound, fmt.Sprintf("target Service %s does not exist", target)
		default:
			model, missing = resolvePolicy(snap, services, p)
			if model.Shadow {
				msg = "evaluated, logged and counted (Shadow: never enforced) on the inbound listeners of meshed Service " + target
			}
			svc.Authz = append(svc.Authz, model) // policies come in name order
			if len(missing) > 0 {
				reason = v1alpha1.ReasonCallerNotFound
				msg += "; these callers match nobody: " + strings.Join(missing, ", ")
			}
		}
		ok := reason == v1alpha1.ReasonAccepted || reason == v1alpha1.ReasonCallerNotFound
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		statuses = append(statuses, policyStatus{Namespace: p.Namespace, Name: p.Name, Accepted: metav1.Condition{
			Type: v1alpha1.ConditionAccepted, Status: status, Reason: reason, Message: truncate(msg, 1024), ObservedGeneration: p.Generation,
		}})
		if reason != v1alpha1.ReasonAccepted {
			diags = append(diags, mesh.Diagnostic{Kind: KindAuthorizationPolicy, Namespace: p.Namespace, Name: p.Name, Reason: reason, Message: msg})
		}
	}
	addDiagnostics(snap, diags...)
	return statuses
}

func serviceExists(services corelisters.ServiceLister, ns, name string) bool {
	_, err := services.Services(ns).Get(name)
	return err == nil || !apierrors.IsNotFound(err)
}

// resolvePolicy turns a valid policy into the model, copying everything out of the
// cached object. missing lists, sorted, the caller Services that resolve to nobody
// because they do not exist or are not meshed.
func resolvePolicy(snap *mesh.Snapshot, services corelisters.ServiceLister, p *v1alpha1.AuthorizationPolicy) (mesh.AuthzPolicy, []string) {
	out := mesh.AuthzPolicy{Namespace: p.Namespace, Name: p.Name, Action: mesh.AuthzAction(p.Spec.Action), Shadow: p.Spec.Mode == v1alpha1.ModeShadow}
	var missing []string
	for _, r := range p.Spec.Rules {
		var mr mesh.AuthzRule
		mr.AnyCaller = len(r.From) == 0
		for _, src := range r.From {
			switch {
			case src.AnyWorkload:
				mr.AnyCaller = true
			case src.ServiceAccount != nil:
				mr.Callers = append(mr.Callers, cmp.Or(src.ServiceAccount.Namespace, p.Namespace)+"/"+src.ServiceAccount.Name)
			case src.Service != nil:
				ns := cmp.Or(src.Service.Namespace, p.Namespace)
				// A Service's identities are those of the pods behind its endpoints,
				// which build worked out for meshed Services only: the pods of one
				// that is not meshed have no sidecar to present an identity.
				if s := snap.Service(ns, src.Service.Name); s != nil {
					for _, a := range s.ServiceAccounts {
						mr.Callers = append(mr.Callers, ns+"/"+a)
					}
				} else if serviceExists(services, ns, src.Service.Name) {
					missing = append(missing, fmt.Sprintf("Service %s/%s (not meshed)", ns, src.Service.Name))
				} else {
					missing = append(missing, fmt.Sprintf("Service %s/%s (not found)", ns, src.Service.Name))
				}
			}
		}
		if mr.AnyCaller {
			mr.Callers = nil // any caller matches: a list would add nothing
		} else {
			slices.Sort(mr.Callers)
			mr.Callers = slices.Compact(mr.Callers)
		}
		if to := r.To; to != nil {
			mr.Methods = slices.Clone(to.Methods)
			for _, pm := range to.Paths {
				typ := string(pm.Type)
				if typ == "" {
					typ = string(v1alpha1.PathMatchPathPrefix) // the schema's default
				}
				mr.Paths = append(mr.Paths, mesh.PathMatch{Type: typ, Value: pm.Value})
			}
			for _, h := range to.Headers {
				mr.Headers = append(mr.Headers, mesh.ValueMatch{Type: "Exact", Name: h.Name, Value: h.Value})
			}
			for _, g := range to.GRPC {
				m := g.Method
				if m == "*" {
					m = "" // one spelling of "every method", so equal meaning is equal model
				}
				mr.GRPC = append(mr.GRPC, mesh.GRPCMethod{Service: g.Service, Method: m})
			}
		}
		out.Rules = append(out.Rules, mr)
	}
	slices.Sort(missing)
	return out, slices.Compact(missing)
}

// The patterns of the CRD's schema (manifests/crds), checked again by validatePolicy.
var (
	grpcServiceRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.]*$`)
	grpcMethodRE  = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*|\*)$`)
	// An HTTP header name is a token (RFC 9110, section 5.1); pseudo-headers such as
	// :path are not allowed: paths and methods have fields of their own.
	headerNameRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
	httpMethods  = []string{"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)

// validatePolicy checks what the schema checks, for a policy that got past no schema,
// and what it cannot: two header conditions on the same name (header names are
// case-insensitive), which could match only if their values were equal, so are a
// mistake either way.
func validatePolicy(s *v1alpha1.AuthorizationPolicySpec) error {
	if s.TargetRef.Name == "" {
		return fmt.Errorf("targetRef.name is empty")
	}
	if s.Action != v1alpha1.ActionAllow && s.Action != v1alpha1.ActionDeny {
		return fmt.Errorf("action %q: want ALLOW or DENY", s.Action)
	}
	if s.Mode != "" && s.Mode != v1alpha1.ModeEnforce && s.Mode != v1alpha1.ModeShadow {
		return fmt.Errorf("mode %q: want Enforce or Shadow", s.Mode)
	}
	if len(s.Rules) == 0 || len(s.Rules) > 64 {
		return fmt.Errorf("%d rules: want 1 to 64", len(s.Rules))
	}
	for i, r := range s.Rules {
		for j, src := range r.From {
			n := 0
			for _, set := range []bool{src.ServiceAccount != nil, src.Service != nil, src.AnyWorkload} {
				if set {
					n++
				}
			}
			if n != 1 {
				return fmt.Errorf("rules[%d].from[%d]: each from entry names exactly one of serviceAccount, service or anyWorkload: true", i, j)
			}
			for _, ref := range []*v1alpha1.ObjectRef{src.ServiceAccount, src.Service} {
				if ref != nil && ref.Name == "" {
					return fmt.Errorf("rules[%d].from[%d]: name is empty", i, j)
				}
			}
		}
		if r.To == nil {
			continue
		}
		for _, m := range r.To.Methods {
			if !slices.Contains(httpMethods, m) {
				return fmt.Errorf("rules[%d].to: method %q: want one of %s", i, m, strings.Join(httpMethods, ", "))
			}
		}
		for _, p := range r.To.Paths {
			if p.Type != "" && p.Type != v1alpha1.PathMatchExact && p.Type != v1alpha1.PathMatchPathPrefix {
				return fmt.Errorf("rules[%d].to: path type %q: want Exact or PathPrefix", i, p.Type)
			}
			if !strings.HasPrefix(p.Value, "/") || strings.ContainsAny(p.Value, "?#") {
				return fmt.Errorf("rules[%d].to: path %q: want an absolute path without query or fragment", i, p.Value)
			}
		}
		if len(r.To.Paths) > 0 && len(r.To.GRPC) > 0 {
			return fmt.Errorf("rules[%d].to: paths and grpc both match the request path: a rule gives one or the other", i)
		}
		seen := map[string]bool{}
		for _, h := range r.To.Headers {
			if !headerNameRE.MatchString(h.Name) {
				return fmt.Errorf("rules[%d].to: header name %q is not an HTTP header name", i, h.Name)
			}
			k := strings.ToLower(h.Name)
			if seen[k] {
				return fmt.Errorf("rules[%d].to: header %s is given twice; a request carries one value to match", i, k)
			}
			seen[k] = true
		}
		for _, g := range r.To.GRPC {
			if !grpcServiceRE.MatchString(g.Service) {
				return fmt.Errorf("rules[%d].to: gRPC service %q: want a name such as currency.Currency", i, g.Service)
			}
			if g.Method != "" && !grpcMethodRE.MatchString(g.Method) {
				return fmt.Errorf("rules[%d].to: gRPC method %q: want a method name or *", i, g.Method)
			}
		}
	}
	return nil
}
