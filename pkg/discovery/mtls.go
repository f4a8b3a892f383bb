package discovery

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// KindNamespace is the Kind of the diagnostics (and Events) about a Namespace.
const KindNamespace = "Namespace"

// namespaceMode is what a Namespace's mesh-mtls annotation says.
type namespaceMode struct {
	mode mesh.MTLSMode // "" when the annotation is absent or invalid
	// invalid: the annotation is set but invalid; the Namespace's Services keep their
	// last good mode.
	invalid bool
}

// namespaceModes reads the mesh-mtls annotation of every Namespace, and reports the
// invalid ones, whether or not they hold meshed Services yet: the user annotated the
// Namespace for the mesh, so a typo deserves an answer now.
func namespaceModes(lister corelisters.NamespaceLister) (map[string]namespaceMode, []mesh.Diagnostic, error) {
	out := map[string]namespaceMode{}
	if lister == nil {
		return out, nil, nil
	}
	list, err := lister.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("list namespaces: %w", err)
	}
	var diags []mesh.Diagnostic
	for _, ns := range list {
		v, ok := ns.Annotations[mesh.AnnotationMTLS]
		if !ok {
			continue
		}
		m, err := mesh.ParseMTLSMode(v)
		if err != nil {
			out[ns.Name] = namespaceMode{invalid: true}
			diags = append(diags, mesh.Diagnostic{
				Kind: KindNamespace, Name: ns.Name, Reason: mesh.ReasonInvalidAnnotation, Event: true,
				Message: fmt.Sprintf("annotation %s=%q is invalid: %v; the Namespace's Services without a %s of their own keep their last valid mode",
					mesh.AnnotationMTLS, v, err, mesh.AnnotationMTLS),
			})
			continue
		}
		out[ns.Name] = namespaceMode{mode: m}
	}
	return out, diags, nil
}

// serviceMTLS works out a Service's mode: its own mesh-mtls, else its Namespace's, else
// the control plane's default. An invalid value, on the Service or on the Namespace,
// keeps the mode the Service had in the last snapshot (prev, "" for a new Service), as
// the other policy annotations keep their last good value: a typo must not switch
// encryption on or off. Without a last mode, an invalid value counts as absent.
func serviceMTLS(svc *mesh.Service, ns namespaceMode, defaultMode, prev mesh.MTLSMode) (mesh.MTLSMode, []mesh.Diagnostic) {
	inherited := defaultMode
	switch {
	case ns.mode != "":
		inherited = ns.mode
	case ns.invalid && prev != "":
		inherited = prev
	}
	v, ok := svc.Annotations[mesh.AnnotationMTLS]
	if !ok {
		return inherited, nil
	}
	m, err := mesh.ParseMTLSMode(v)
	if err == nil {
		return m, nil
	}
	keep := inherited
	if prev != "" {
		keep = prev
	}
	return keep, []mesh.Diagnostic{{
		Kind: KindService, Namespace: svc.Namespace, Name: svc.Name, Reason: mesh.ReasonInvalidAnnotation, Event: true,
		Message: fmt.Sprintf("annotation %s=%q is invalid: %v; keeping the last valid value (%s)", mesh.AnnotationMTLS, v, err, keep),
	}}
}

// serviceAccountOf is the pod's ServiceAccount: spec.serviceAccountName, which the API
// server sets to "default" when the pod leaves it empty
// (https://kubernetes.io/docs/concepts/security/service-accounts/#default-service-accounts).
func serviceAccountOf(pod *corev1.Pod) string {
	if pod.Spec.ServiceAccountName == "" {
		return "default"
	}
	return pod.Spec.ServiceAccountName
}

// endpointServiceAccounts returns the sorted, unique ServiceAccounts of the pods behind
// eps: the identities a caller may accept from the Service's endpoints. An endpoint that
// names no pod, or a pod the cache does not hold (yet), contributes none: an identity
// bearkong cannot see is one it cannot vouch for.
func endpointServiceAccounts(pods corelisters.PodLister, namespace string, eps []mesh.Endpoint) []string {
	var out []string
	for _, ep := range eps {
		if ep.Pod == "" {
			continue
		}
		pod, err := pods.Pods(namespace).Get(ep.Pod)
		if err != nil {
			continue
		}
		out = append(out, serviceAccountOf(pod))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// proxyModes sets each proxy's inbound mode and reports the Services whose modes
// differ on a shared pod. A pod has one inbound listener for every Service that selects
// it, and a connection arriving there does not say which Service the caller meant. So
// when the modes differ the pod accepts both mutual TLS and plaintext (PERMISSIVE):
// callers of a DISABLE Service send plaintext, the others mutual TLS, and all keep
// working; the price is that the STRICT Services' pods also take plaintext, which is
// why both sides are reported, as a Warning Event too.
func proxyModes(snap *mesh.Snapshot) []mesh.Diagnostic {
	services := make(map[string]*mesh.Service, len(snap.Services))
	for _, s := range snap.Services {
		services[s.Key()] = s
	}
	// others[k] holds the Services that share a pod with k and have another mode.
	others := map[string]map[string]bool{}
	for _, p := range snap.Proxies {
		p.MTLS = ""
		for _, k := range p.Services {
			s := services[k]
			if s == nil {
				continue
			}
			switch p.MTLS {
			case "":
				p.MTLS = s.MTLS
			case s.MTLS:
			default:
				p.MTLS = mesh.MTLSPermissive
			}
			for _, o := range p.Services {
				if so := services[o]; so != nil && so.MTLS != s.MTLS {
					if others[k] == nil {
						others[k] = map[string]bool{}
					}
					others[k][o] = true
				}
			}
		}
	}
	var out []mesh.Diagnostic
	for _, k := range slices.Sorted(maps.Keys(others)) {
		s := services[k]
		var names []string
		for _, o := range slices.Sorted(maps.Keys(others[k])) {
			names = append(names, fmt.Sprintf("Service %s (%s)", o, services[o].MTLS))
		}
		verb := "selects"
		if len(names) > 1 {
			verb = "select"
		}
		out = append(out, mesh.Diagnostic{
			Kind: KindService, Namespace: s.Namespace, Name: s.Name, Reason: mesh.ReasonConflictingMTLSModes, Event: true,
			Message: fmt.Sprintf("%s %s some of the same pods as this Service (%s); a pod has one inbound listener for all its Services, so those pods accept both mutual TLS and plaintext (%s); give the Services separate pods or the same %s",
				strings.Join(names, ", "), verb, s.MTLS, mesh.MTLSPermissive, mesh.AnnotationMTLS),
		})
	}
	return out
}
