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

// namespaceModes reads the mesh-mtls annotation of every Namespace, and reports the
// invalid ones, whether or not they hold meshed Services yet: the user annotated the
// Namespace for the mesh, so a typo deserves an answer now. A Namespace whose annotation
// is absent or invalid (an invalid value counts as absent) has no entry. defaultMode is the control
// plane's default, which the Namespace's Services get instead.
func namespaceModes(lister corelisters.NamespaceLister, defaultMode mesh.MTLSMode) (map[string]mesh.MTLSMode, []mesh.Diagnostic, error) {
	out := map[string]mesh.MTLSMode{}
	if lister == nil {
		return out, nil, nil
	}
	list, err := lister.List(labels.Everything())
	if err != nil {
		return nil, nil, fmt.Errorf("list namespaces: %w", err)
	}
	var diags []mesh.Diagnostic
	for _, ns := range list {
		m, d := namespaceMode(ns, defaultMode)
		if d != nil {
			diags = append(diags, *d)
		}
		if m != "" {
			out[ns.Name] = m
		}
	}
	return out, diags, nil
}

// namespaceMode is one Namespace's part of namespaceModes: its mode ("" when its
// annotation is absent or invalid) and the diagnostic of an invalid one.
func namespaceMode(ns *corev1.Namespace, defaultMode mesh.MTLSMode) (mesh.MTLSMode, *mesh.Diagnostic) {
	v, ok := ns.Annotations[mesh.AnnotationMTLS]
	if !ok {
		return "", nil
	}
	m, err := mesh.ParseMTLSMode(v)
	if err != nil {
		return "", &mesh.Diagnostic{
			Kind: KindNamespace, Name: ns.Name, Reason: mesh.ReasonInvalidAnnotation, Event: true,
			Message: mesh.InvalidAnnotationMessage(mesh.AnnotationMTLS, v, err,
				fmt.Sprintf("the Namespace's Services without a %s of their own get the control plane's default mode (%s)", mesh.AnnotationMTLS, defaultMode)),
		}
	}
	return m, nil
}

// serviceMTLS works out a Service's mode: its own mesh-mtls, else its Namespace's, else
// the control plane's default. An invalid value, on the Service or on the Namespace,
// counts as absent, as every invalid policy annotation does: the mode is a function of
// the objects the API holds, the same on every replica and after every restart, and the
// admission policy refuses invalid values before they are stored.
func serviceMTLS(svc *mesh.Service, ns mesh.MTLSMode, defaultMode mesh.MTLSMode) (mesh.MTLSMode, []mesh.Diagnostic) {
	inherited, from := defaultMode, "the control plane's default mode"
	if ns != "" {
		inherited, from = ns, "its Namespace's mode"
	}
	v, ok := svc.Annotations[mesh.AnnotationMTLS]
	if !ok {
		return inherited, nil
	}
	m, err := mesh.ParseMTLSMode(v)
	if err == nil {
		return m, nil
	}
	return inherited, []mesh.Diagnostic{{
		Kind: KindService, Namespace: svc.Namespace, Name: svc.Name, Reason: mesh.ReasonInvalidAnnotation, Event: true,
		Message: mesh.InvalidAnnotationMessage(mesh.AnnotationMTLS, v, err, fmt.Sprintf("the Service gets %s (%s)", from, inherited)),
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
