package discovery

import (
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	gwlisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// meshedSelector selects the Services that joined the mesh.
var meshedSelector = labels.SelectorFromSet(labels.Set{mesh.MeshedLabel: mesh.MeshedValue})

// build reads the listers and returns a snapshot of the mesh, without ChangedAt. It
// reads only; the objects in a lister's cache are shared and must not be modified, so
// everything in the snapshot is copied out of them. prev is the last published snapshot
// (or nil): an invalid policy annotation keeps the value it had there.
//
// o (may be nil) holds the quarantined objects, left out, and the testing hook that
// skips bearkong's own regex checks.
func build(services corelisters.ServiceLister, endpointSlices discoverylisters.EndpointSliceLister, pods corelisters.PodLister, routes gwlisters.HTTPRouteLister, prev *mesh.Snapshot, o *buildOptions) (*mesh.Snapshot, []routeStatus, error) {
	if o == nil {
		o = &buildOptions{}
	}
	svcs, err := services.List(meshedSelector)
	if err != nil {
		return nil, nil, fmt.Errorf("list services: %w", err)
	}
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].Namespace != svcs[j].Namespace {
			return svcs[i].Namespace < svcs[j].Namespace
		}
		return svcs[i].Name < svcs[j].Name
	})

	snap := &mesh.Snapshot{
		Services: make([]*mesh.Service, 0, len(svcs)),
		Proxies:  map[string]*mesh.Proxy{},
	}
	for _, svc := range svcs {
		ms := &mesh.Service{
			Namespace:   svc.Namespace,
			Name:        svc.Name,
			Annotations: meshAnnotations(svc.Annotations),
			Ports:       servicePorts(svc.Spec.Ports),
		}
		var lastGood mesh.Policy
		if p := prev.Service(svc.Namespace, svc.Name); p != nil {
			lastGood = p.Policy
		}
		var diags []mesh.Diagnostic
		ms.Policy, diags = mesh.ParsePolicy(svc.Namespace, svc.Name, ms.Annotations, lastGood)
		snap.Diagnostics = append(snap.Diagnostics, diags...)
		if h := o.held[ObjectRef{KindService, svc.Namespace, svc.Name}]; h != nil {
			// Quarantined: the part of the policy the proxies rejected stays as it was
			// in the last config they accepted.
			ms.Policy = withPolicyPart(h.part, ms.Policy, h.lastGood)
			if h.confirmed {
				snap.Diagnostics = append(snap.Diagnostics, mesh.Diagnostic{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name,
					Reason: mesh.ReasonRejectedByEnvoy, Message: rejectedMessage(h), Event: true})
			}
		}
		snap.Diagnostics = append(snap.Diagnostics, mesh.CheckTargetPorts(ms)...)
		ms.Endpoints, err = readyEndpoints(endpointSlices, svc.Namespace, svc.Name)
		if err != nil {
			return nil, nil, err
		}
		snap.Services = append(snap.Services, ms)

		// A Service without a selector (endpoints managed by hand) selects no pods: an
		// empty selector would otherwise match every pod in the namespace.
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		selected, err := pods.Pods(svc.Namespace).List(labels.SelectorFromSet(svc.Spec.Selector))
		if err != nil {
			return nil, nil, fmt.Errorf("list pods for service %s: %w", ms.Key(), err)
		}
		for _, pod := range selected {
			key := pod.Namespace + "/" + pod.Name
			p := snap.Proxies[key]
			if p == nil {
				p = &mesh.Proxy{Namespace: pod.Namespace, Name: pod.Name, IP: pod.Status.PodIP}
				snap.Proxies[key] = p
			}
			p.Services = append(p.Services, ms.Key())
		}
	}
	// Services were visited in sorted order, so each proxy's keys are already sorted;
	// sorting again keeps that true if the loop above ever changes.
	for _, p := range snap.Proxies {
		sort.Strings(p.Services)
	}
	var statuses []routeStatus
	if routes != nil {
		list, err := routes.List(labels.Everything())
		if err != nil {
			return nil, nil, fmt.Errorf("list httproutes: %w", err)
		}
		meshed := make(map[string]*mesh.Service, len(snap.Services))
		for _, s := range snap.Services {
			meshed[s.Key()] = s
		}
		var rules map[string][]mesh.RouteRule
		var diags []mesh.Diagnostic
		rules, statuses, diags = routeRules(list, meshed, o)
		for k, rs := range rules {
			meshed[k].Routes = rs
		}
		snap.Diagnostics = append(snap.Diagnostics, diags...)
	}
	mesh.SortDiagnostics(snap.Diagnostics)
	return snap, statuses, nil
}

// buildOptions are the inputs of build beyond the listers.
type buildOptions struct {
	held map[ObjectRef]*hold
	// skipValidation honours SkipValidationAnnotation (Options.AllowSkipValidation).
	skipValidation bool
}

// meshAnnotations keeps only the annotations that carry mesh policy, so that changing
// any other annotation (kubectl's last-applied, tooling) changes nothing.
func meshAnnotations(in map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		if strings.HasPrefix(k, mesh.AnnotationPrefix) {
			out[k] = v
		}
	}
	return out
}

func servicePorts(in []corev1.ServicePort) []mesh.ServicePort {
	out := make([]mesh.ServicePort, 0, len(in))
	for _, p := range in {
		out = append(out, mesh.ServicePort{
			Name:       p.Name,
			Port:       p.Port,
			TargetPort: targetPort(p.TargetPort),
			Protocol:   string(p.Protocol),
		})
	}
	return out
}

// targetPort renders a targetPort as the user wrote it. The zero value means unset
// (the API server would default it to the port), which the mesh model spells "".
func targetPort(tp intstr.IntOrString) string {
	if tp.Type == intstr.String {
		return tp.StrVal
	}
	if tp.IntVal == 0 {
		return ""
	}
	return strconv.Itoa(int(tp.IntVal))
}

// readyEndpoints collects the ready endpoints of one Service from all of its
// EndpointSlices: a Service can have several (more than 100 endpoints, one per address
// family, or old and new slices during a handover), and the same address may appear
// in more than one.
func readyEndpoints(lister discoverylisters.EndpointSliceLister, namespace, name string) ([]mesh.Endpoint, error) {
	list, err := lister.EndpointSlices(namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	if err != nil {
		return nil, fmt.Errorf("list endpointslices for service %s/%s: %w", namespace, name, err)
	}
	// Visit slices in name order so that which duplicate wins does not depend on the
	// cache's map order.
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })

	byIP := map[netip.Addr]mesh.Endpoint{}
	for _, slice := range list {
		// FQDN slices name hosts, not pods; the mesh routes to pod sidecars by IP.
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, ep := range slice.Endpoints {
			// Ready nil means ready (the API's own rule). The endpoint controller sets
			// ready=false for terminating endpoints and for serving-but-not-ready ones.
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			// The API calls an endpoint's addresses fungible and allows consumers to
			// use only the first, as kube-proxy does; using all would count one pod
			// twice.
			if len(ep.Addresses) == 0 {
				continue
			}
			addr, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil {
				continue // the API server validates addresses; skip anything else
			}
			pod := ""
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				pod = ep.TargetRef.Name
			}
			if prev, ok := byIP[addr]; ok && (prev.Pod != "" || pod == "") {
				continue // keep the first, unless only a later one names the pod
			}
			byIP[addr] = mesh.Endpoint{IP: addr.String(), Pod: pod}
		}
	}
	// Sort by address, numerically (10.0.0.9 before 10.0.0.10; IPv4 before IPv6).
	addrs := slices.SortedFunc(maps.Keys(byIP), func(a, b netip.Addr) int { return a.Compare(b) })
	out := make([]mesh.Endpoint, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, byIP[a])
	}
	return out, nil
}

// sameMeaning reports whether two snapshots describe the same mesh: everything but
// ChangedAt. Nil and empty collections are the same.
func sameMeaning(a, b *mesh.Snapshot) bool {
	if a == nil || b == nil {
		return a == b
	}
	if len(a.Services) != len(b.Services) || len(a.Proxies) != len(b.Proxies) || !slices.Equal(a.Diagnostics, b.Diagnostics) {
		return false
	}
	for i := range a.Services {
		if !sameService(a.Services[i], b.Services[i]) {
			return false
		}
	}
	for k, pa := range a.Proxies {
		pb, ok := b.Proxies[k]
		if !ok || !sameProxy(pa, pb) {
			return false
		}
	}
	return true
}

func sameService(a, b *mesh.Service) bool {
	return a.Namespace == b.Namespace &&
		a.Name == b.Name &&
		maps.Equal(a.Annotations, b.Annotations) &&
		a.Policy == b.Policy &&
		reflect.DeepEqual(a.Routes, b.Routes) &&
		slices.Equal(a.Ports, b.Ports) &&
		slices.Equal(a.Endpoints, b.Endpoints)
}

func sameProxy(a, b *mesh.Proxy) bool {
	return a.Namespace == b.Namespace &&
		a.Name == b.Name &&
		a.IP == b.IP &&
		slices.Equal(a.Services, b.Services)
}
