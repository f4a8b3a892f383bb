package discovery

import (
	"cmp"
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
	apierrors "k8s.io/apimachinery/pkg/api/errors"
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
// everything in the snapshot is copied out of them. The snapshot is a function of the
// listers' objects (and o) alone, never of an earlier snapshot: every replica, started at
// any time, builds the same snapshot from the same objects. An invalid policy annotation
// counts as absent (mesh.ParsePolicy).
//
// o (may be nil) holds the quarantined objects, left out, and the testing hook that
// skips bearkong's own regex checks.
func build(services corelisters.ServiceLister, endpointSlices discoverylisters.EndpointSliceLister, pods corelisters.PodLister, routes gwlisters.HTTPRouteLister, o *buildOptions) (*mesh.Snapshot, []routeStatus, error) {
	var b builder
	return b.build(nil, services, endpointSlices, pods, routes, o)
}

// builder builds snapshots and keeps, between builds, each meshed Service's part of the
// last one (servicePart) and what spans Services (the proxies, the conflicts between
// Services that share pods), so that a build after an endpoint or pod change recomputes
// only the Services the change touched and the pods they select (incremental.go). Its
// result is the same as a full build's for the same listers: what it reuses is exactly
// what a full build would compute again from unchanged inputs. The zero value builds
// everything. Only one goroutine (the worker) uses a builder.
//
// Everything the builder hands to a snapshot (Services, Proxies) is never modified
// afterwards, so consecutive snapshots share what did not change; the builder's own maps
// and slices are copied into each snapshot.
type builder struct {
	// parts are the last build's Service parts by key; nil after an error or before the
	// first build, which makes the next build a full one.
	parts map[string]*servicePart
	// order holds the meshed Services' keys, sorted; index is the position of each, and
	// svcs the Service at each position. Only a full build changes the set of Services:
	// every Service event calls for one.
	order []string
	index map[string]int
	svcs  []*mesh.Service
	// meshed is svcs by key, for routeRules.
	meshed map[string]*mesh.Service
	// held is the quarantine view the parts were built with; another view calls for a
	// full build.
	held map[ObjectRef]*hold
	// nsModes and nsDiags are the Namespaces' modes and diagnostics; a Namespace event
	// calls for a full build.
	nsModes map[string]mesh.MTLSMode
	nsDiags []mesh.Diagnostic
	// podSvcs holds, by pod key, the sorted keys of the Services that select the pod;
	// proxies the proxy of each such pod. The last snapshot shares proxies (the map)
	// unless ownProxies: a build that changes a proxy copies the map first, so an
	// endpoint change that leaves every proxy as it was costs no copy of it.
	podSvcs    map[string][]string
	proxies    map[string]*mesh.Proxy
	ownProxies bool
	// conflicts holds, by Service key, the diagnostics about the Services that share its
	// pods (mesh.CheckPolicyConflicts and proxyModes).
	conflicts map[string][]mesh.Diagnostic
	// diags are the diagnostics of the Namespaces, of every part and of the conflicts,
	// sorted; staleDiags says that a part's or a conflict's changed since. The slice is
	// replaced when they change, never modified: snapshots share it.
	diags      []mesh.Diagnostic
	staleDiags bool
	// wasFull reports whether the last build was a full one.
	wasFull bool
}

// servicePart is what build computes from one meshed Service, its EndpointSlices and its
// pods, apart from the parts that depend on other Services or on HTTPRoutes and
// AuthorizationPolicies. It is never modified once built: later builds share it.
type servicePart struct {
	// src is the lister's object the part was built from (replaced, never modified, on
	// every change of the Service).
	src *corev1.Service

	// svc has no Routes and no Authz: a snapshot whose HTTPRoutes or
	// AuthorizationPolicies apply to it gets a copy with them set.
	svc   *mesh.Service
	diags []mesh.Diagnostic
	// pods are the pods the Service selects, sorted by name, as proxies without
	// Services or MTLS.
	pods []mesh.Proxy
}

// build builds a snapshot. dirty names the Services to recompute, by key; nil recomputes
// every Service (a full build), and so does a builder that has not built yet or cannot
// tell that its state is still valid.
func (b *builder) build(dirty map[string]bool, services corelisters.ServiceLister, endpointSlices discoverylisters.EndpointSliceLister, pods corelisters.PodLister, routes gwlisters.HTTPRouteLister, o *buildOptions) (*mesh.Snapshot, []routeStatus, error) {
	if o == nil {
		o = &buildOptions{}
	}
	var err error
	ok := false
	if dirty != nil && b.parts != nil {
		ok, err = b.update(dirty, services, endpointSlices, pods, o)
	}
	if err == nil && !ok {
		err = b.rebuild(services, endpointSlices, pods, o)
	}
	b.wasFull = !ok
	if err != nil {
		b.parts = nil
		return nil, nil, err
	}
	snap, statuses, err := b.snapshot(routes, o)
	if err != nil {
		b.parts = nil
	}
	return snap, statuses, err
}

// rebuild computes the builder's state from the listers alone.
func (b *builder) rebuild(services corelisters.ServiceLister, endpointSlices discoverylisters.EndpointSliceLister, pods corelisters.PodLister, o *buildOptions) error {
	svcs, err := services.List(meshedSelector)
	if err != nil {
		return fmt.Errorf("list services: %w", err)
	}
	sort.Slice(svcs, func(i, j int) bool {
		if svcs[i].Namespace != svcs[j].Namespace {
			return svcs[i].Namespace < svcs[j].Namespace
		}
		return svcs[i].Name < svcs[j].Name
	})
	defaultMTLS := o.defaultMTLS.Effective()
	nsModes, nsDiags, err := namespaceModes(o.namespaces, defaultMTLS)
	if err != nil {
		return err
	}
	// The last build's parts and proxies: what comes out the same is taken from them, so
	// that consecutive snapshots share it (see sharePart).
	prevParts, prevProxies, prevDiags := b.parts, b.proxies, b.diags
	*b = builder{
		parts: make(map[string]*servicePart, len(svcs)), order: make([]string, 0, len(svcs)),
		index: make(map[string]int, len(svcs)), svcs: make([]*mesh.Service, 0, len(svcs)),
		meshed: make(map[string]*mesh.Service, len(svcs)),
		held:   o.held, nsModes: nsModes, nsDiags: nsDiags,
		podSvcs: map[string][]string{}, proxies: map[string]*mesh.Proxy{}, ownProxies: true,
		conflicts: map[string][]mesh.Diagnostic{}, diags: prevDiags, staleDiags: true,
	}
	for _, svc := range svcs {
		key := svc.Namespace + "/" + svc.Name
		part, err := buildService(svc, nsModes[svc.Namespace], defaultMTLS, o.held[ObjectRef{KindService, svc.Namespace, svc.Name}], endpointSlices, pods)
		if err != nil {
			return err
		}
		part = sharePart(prevParts[key], part)
		b.parts[key] = part
		b.index[key] = len(b.order)
		b.order = append(b.order, key)
		b.svcs = append(b.svcs, part.svc)
		b.meshed[key] = part.svc
		for _, pp := range part.pods {
			pk := pp.Namespace + "/" + pp.Name
			p := b.proxies[pk]
			if p == nil {
				p = &mesh.Proxy{Namespace: pp.Namespace, Name: pp.Name, IP: pp.IP, ServiceAccount: pp.ServiceAccount}
				b.proxies[pk] = p
			}
			// Services are visited in sorted order, so each proxy's keys are sorted.
			p.Services = append(p.Services, key)
		}
	}
	for pk, p := range b.proxies {
		b.podSvcs[pk] = p.Services
	}
	all := &mesh.Snapshot{Services: b.svcs, Proxies: b.proxies}
	conflicts := mesh.CheckPolicyConflicts(all)
	conflicts = append(conflicts, proxyModes(all)...) // sets each proxy's MTLS too
	for _, d := range conflicts {
		k := d.Namespace + "/" + d.Name
		b.conflicts[k] = append(b.conflicts[k], d)
	}
	b.shareProxies(prevProxies)
	return nil
}

// sharePart returns part, or old's model where part computes the same: old's Service,
// diagnostics and pods, with part's source object. A full build recomputes every
// Service, and without this every snapshot after one (any Service event, and the
// periodic full build) held a generation of the whole mesh of its own: the control plane
// keeps recent snapshots (its history, for the quarantine), and pkg/translate reuses a
// Service's resources only for the same object. Comparing costs less than the build of
// the part did.
func sharePart(old, part *servicePart) *servicePart {
	if old == nil || !sameService(old.svc, part.svc) || !slices.Equal(old.diags, part.diags) ||
		!slices.EqualFunc(old.pods, part.pods, func(a, b mesh.Proxy) bool { return sameProxy(&a, &b) }) {
		return part
	}
	if old.src == part.src {
		return old
	}
	return &servicePart{src: part.src, svc: old.svc, diags: old.diags, pods: old.pods}
}

// shareProxies replaces each proxy of a full build that is the same as in prev (the last
// build's) by prev's, and b.proxies by prev itself when every proxy is the same: for the
// same reason as sharePart.
func (b *builder) shareProxies(prev map[string]*mesh.Proxy) {
	all := len(prev) == len(b.proxies)
	for pk, p := range b.proxies {
		if old := prev[pk]; old != nil && sameProxy(old, p) {
			b.proxies[pk] = old
			b.podSvcs[pk] = old.Services
		} else {
			all = false
		}
	}
	if all && prev != nil {
		// prev is the last snapshot's map (or the builder's own, if it changed since):
		// shared either way, never modified in place (ownProxyMap).
		b.proxies, b.ownProxies = prev, false
	}
}

// update recomputes the dirty Services and what depends on them: the proxies of the pods
// they selected before or select now, and the conflicts of every Service of those pods.
// A dirty Namespace (its name as the key) has its mode read again, and every Service of
// it recomputed. A dirty Service that the lister holds meshed and the builder does not
// is added; one the builder holds and the lister no longer has, or has unmeshed, is
// dropped. It reports false when its state may no longer hold (the quarantine changed,
// or a lister could not be read), which calls for a full build.
func (b *builder) update(dirty map[string]bool, services corelisters.ServiceLister, endpointSlices discoverylisters.EndpointSliceLister, pods corelisters.PodLister, o *buildOptions) (bool, error) {
	if !sameHolds(b.held, o.held) {
		return false, nil
	}
	defaultMTLS := o.defaultMTLS.Effective()
	// A dirty Namespace (a key without a slash): its mode, then every Service of it that
	// the builder holds, recomputed with it.
	dirtySvcs := make(map[string]bool, len(dirty))
	for k := range dirty {
		if strings.Contains(k, "/") {
			dirtySvcs[k] = true
			continue
		}
		if err := b.updateNamespace(k, o.namespaces, defaultMTLS); err != nil {
			return false, nil
		}
		for i := sort.Search(len(b.svcs), func(i int) bool { return b.svcs[i].Namespace >= k }); i < len(b.svcs) && b.svcs[i].Namespace == k; i++ {
			dirtySvcs[b.order[i]] = true
		}
	}
	// Each dirty Service's part before (nil: not in the snapshot) and after (nil: not
	// in it any more).
	type change struct {
		key       string
		old, part *servicePart
	}
	var changes []change
	for k := range dirtySvcs {
		old := b.parts[k]
		ns, name, _ := strings.Cut(k, "/")
		svc, err := services.Services(ns).Get(name)
		switch {
		case apierrors.IsNotFound(err):
			svc = nil
		case err != nil:
			return false, nil
		}
		var part *servicePart
		if svc != nil && isMeshed(svc) {
			part, err = buildService(svc, b.nsModes[svc.Namespace], defaultMTLS, o.held[ObjectRef{KindService, svc.Namespace, svc.Name}], endpointSlices, pods)
			if err != nil {
				return false, err
			}
			part = sharePart(old, part)
		}
		if old != nil || part != nil {
			changes = append(changes, change{k, old, part})
		}
	}
	slices.SortFunc(changes, func(a, b change) int { return strings.Compare(a.key, b.key) })

	// The pods whose proxy may change, with their state as the rebuilt parts saw it.
	touchedPods := map[string]*mesh.Proxy{}
	var added []string
	dropped := false
	for _, c := range changes {
		k := c.key
		if c.old != nil {
			for _, pp := range c.old.pods {
				pk := pp.Namespace + "/" + pp.Name
				if _, ok := touchedPods[pk]; !ok {
					touchedPods[pk] = nil
				}
				b.podSvcs[pk] = slices.DeleteFunc(slices.Clone(b.podSvcs[pk]), func(s string) bool { return s == k })
			}
		}
		if c.part == nil {
			// Dropped: its conflicts go with it; its pods' other Services are
			// recomputed below.
			if len(c.old.diags) > 0 || len(b.conflicts[k]) > 0 {
				b.staleDiags = true
			}
			delete(b.parts, k)
			delete(b.meshed, k)
			delete(b.conflicts, k)
			dropped = true
			continue
		}
		for _, pp := range c.part.pods {
			pk := pp.Namespace + "/" + pp.Name
			if touchedPods[pk] == nil {
				touchedPods[pk] = &pp
			}
			if i, found := slices.BinarySearch(b.podSvcs[pk], k); !found {
				b.podSvcs[pk] = slices.Insert(slices.Clone(b.podSvcs[pk]), i, k)
			}
		}
		if c.old == nil || !slices.Equal(c.old.diags, c.part.diags) {
			b.staleDiags = true
		}
		b.parts[k] = c.part
		b.meshed[k] = c.part.svc
		if c.old == nil {
			added = append(added, k)
		} else {
			b.svcs[b.index[k]] = c.part.svc
		}
	}
	if dropped || len(added) > 0 {
		b.reorder(added)
	}
	// The Services whose conflicts may change: the rebuilt ones and every Service of a
	// touched pod (before the change, a touched pod had the same Services but for
	// rebuilt ones).
	affected := map[string]bool{}
	for _, c := range changes {
		if c.part != nil {
			affected[c.key] = true
		}
	}
	for pk, pp := range touchedPods {
		svcKeys := b.podSvcs[pk]
		if len(svcKeys) == 0 {
			delete(b.podSvcs, pk)
			b.ownProxyMap()
			delete(b.proxies, pk)
			continue
		}
		for _, k := range svcKeys {
			affected[k] = true
		}
		if pp == nil {
			pp = b.proxies[pk] // selected by none of the rebuilt Services: unchanged
		}
		p := &mesh.Proxy{Namespace: pp.Namespace, Name: pp.Name, IP: pp.IP, ServiceAccount: pp.ServiceAccount, Services: svcKeys}
		proxyModes(b.neighbourhood([]*mesh.Proxy{p})) // sets p.MTLS
		if old := b.proxies[pk]; old == nil || !sameProxy(old, p) {
			b.ownProxyMap()
			b.proxies[pk] = p
		}
	}
	for k := range affected {
		b.updateConflicts(k)
	}
	b.held = o.held
	return true, nil
}

// updateNamespace reads Namespace name's mode and diagnostic again (namespaceModes, for
// one), into nsModes and nsDiags.
func (b *builder) updateNamespace(name string, namespaces corelisters.NamespaceLister, defaultMTLS mesh.MTLSMode) error {
	var mode mesh.MTLSMode
	var diag *mesh.Diagnostic
	if namespaces != nil {
		ns, err := namespaces.Get(name)
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			return err
		default:
			mode, diag = namespaceMode(ns, defaultMTLS)
		}
	}
	if mode == "" {
		delete(b.nsModes, name)
	} else {
		b.nsModes[name] = mode
	}
	// A new slice, compared with the old one.
	diags := slices.DeleteFunc(slices.Clone(b.nsDiags), func(d mesh.Diagnostic) bool { return d.Name == name })
	if diag != nil {
		diags = append(diags, *diag)
	}
	if !slices.Equal(diags, b.nsDiags) {
		b.nsDiags, b.staleDiags = diags, true
	}
	return nil
}

// reorder makes order, index and svcs hold the Services of parts again, after update
// dropped some and added those of added: in the order of a full build (by namespace,
// then name).
func (b *builder) reorder(added []string) {
	b.order = slices.DeleteFunc(b.order, func(k string) bool { return b.parts[k] == nil })
	for _, k := range added {
		i, _ := slices.BinarySearchFunc(b.order, k, compareKeys)
		b.order = slices.Insert(b.order, i, k)
	}
	clear(b.index)
	b.svcs = b.svcs[:0]
	for i, k := range b.order {
		b.index[k] = i
		b.svcs = append(b.svcs, b.parts[k].svc)
	}
}

// compareKeys orders Service keys ("namespace/name") by namespace, then name, as
// rebuild sorts the Services: not as strings, where "a-b/x" comes before "a/y".
func compareKeys(x, y string) int {
	xn, xs, _ := strings.Cut(x, "/")
	yn, ys, _ := strings.Cut(y, "/")
	return cmp.Or(strings.Compare(xn, yn), strings.Compare(xs, ys))
}

// ownProxyMap makes b.proxies a map no snapshot shares, so that it can change.
func (b *builder) ownProxyMap() {
	if !b.ownProxies {
		b.proxies = maps.Clone(b.proxies)
		b.ownProxies = true
	}
}

// neighbourhood is a snapshot of the given proxies and every Service they serve: enough
// for the computations that read the Services of one pod or of one Service's pods.
func (b *builder) neighbourhood(proxies []*mesh.Proxy) *mesh.Snapshot {
	n := &mesh.Snapshot{Proxies: make(map[string]*mesh.Proxy, len(proxies))}
	seen := map[string]bool{}
	for _, p := range proxies {
		n.Proxies[p.Namespace+"/"+p.Name] = p
		for _, k := range p.Services {
			if !seen[k] {
				seen[k] = true
				n.Services = append(n.Services, b.svcs[b.index[k]])
			}
		}
	}
	return n
}

// updateConflicts recomputes the conflicts of Service k: the full computations, over
// copies of k's proxies and their Services, keeping what they say about k (what they say
// about the others needs all of their pods).
func (b *builder) updateConflicts(k string) {
	old := b.conflicts[k]
	delete(b.conflicts, k)
	defer func() {
		if !slices.Equal(old, b.conflicts[k]) {
			b.staleDiags = true
		}
	}()
	part := b.parts[k]
	var proxies []*mesh.Proxy
	for _, pp := range part.pods {
		if p := b.proxies[pp.Namespace+"/"+pp.Name]; p != nil {
			c := *p // proxyModes sets MTLS; the proxies are shared with snapshots
			proxies = append(proxies, &c)
		}
	}
	if len(proxies) == 0 {
		return
	}
	n := b.neighbourhood(proxies)
	ds := mesh.CheckPolicyConflicts(n)
	ds = append(ds, proxyModes(n)...)
	for _, d := range ds {
		if d.Namespace == part.svc.Namespace && d.Name == part.svc.Name {
			b.conflicts[k] = append(b.conflicts[k], d)
		}
	}
}

// sameHolds reports whether two quarantine views hold the same holds.
func sameHolds(a, b map[ObjectRef]*hold) bool {
	return maps.EqualFunc(a, b, func(x, y *hold) bool { return x == y })
}

// snapshot assembles a snapshot from the builder's state, and adds the HTTPRoutes.
func (b *builder) snapshot(routes gwlisters.HTTPRouteLister, o *buildOptions) (*mesh.Snapshot, []routeStatus, error) {
	if b.staleDiags {
		diags := slices.Clone(b.nsDiags)
		for _, k := range b.order {
			diags = append(diags, b.parts[k].diags...)
			diags = append(diags, b.conflicts[k]...)
		}
		mesh.SortDiagnostics(diags)
		if !slices.Equal(diags, b.diags) {
			b.diags = diags
		}
		b.staleDiags = false
	}
	// The snapshot's own Services slice: later steps set HTTPRoutes and
	// AuthorizationPolicies in it. The Diagnostics are the builder's, shared with every
	// snapshot since they last changed (b.diags is replaced, never modified, and the
	// control plane keeps recent snapshots: a copy each was a fifth of a MiB per snapshot
	// at S=1000); clipped, so that a later step that adds diagnostics appends to a copy
	// (addDiagnostics).
	snap := &mesh.Snapshot{
		Services:    slices.Clone(b.svcs),
		Proxies:     b.proxies,
		Diagnostics: slices.Clip(b.diags),
	}
	b.ownProxies = false
	var statuses []routeStatus
	if routes != nil {
		list, err := routes.List(labels.Everything())
		if err != nil {
			return nil, nil, fmt.Errorf("list httproutes: %w", err)
		}
		var rules map[string][]mesh.RouteRule
		var diags []mesh.Diagnostic
		// routeRules reads the Services; the Routes go on copies, below.
		rules, statuses, diags = routeRules(list, b.meshed, o)
		for k, rs := range rules {
			// A copy: the Service is shared with other snapshots.
			i := b.index[k]
			c := *snap.Services[i]
			c.Routes = rs
			snap.Services[i] = &c
		}
		addDiagnostics(snap, diags...)
	}
	return snap, statuses, nil
}

// addDiagnostics adds ds to snap's diagnostics, which may be shared with other snapshots
// (see builder.snapshot): into a copy, sorted, and only when there is something to add.
func addDiagnostics(snap *mesh.Snapshot, ds ...mesh.Diagnostic) {
	if len(ds) == 0 {
		return
	}
	all := make([]mesh.Diagnostic, 0, len(snap.Diagnostics)+len(ds))
	all = append(append(all, snap.Diagnostics...), ds...)
	mesh.SortDiagnostics(all)
	snap.Diagnostics = all
}

// buildService computes one meshed Service's part of the snapshot from the Service, its
// Namespace's mode, its quarantine hold, its EndpointSlices and its pods.
func buildService(svc *corev1.Service, nsMode, defaultMTLS mesh.MTLSMode, h *hold, endpointSlices discoverylisters.EndpointSliceLister, pods corelisters.PodLister) (*servicePart, error) {
	part := &servicePart{src: svc}
	ms := &mesh.Service{
		Namespace:   svc.Namespace,
		Name:        svc.Name,
		Annotations: meshAnnotations(svc.Annotations),
		Ports:       servicePorts(svc.Spec.Ports),
	}
	part.svc = ms
	var diags []mesh.Diagnostic
	ms.Policy, diags = mesh.ParsePolicy(svc.Namespace, svc.Name, ms.Annotations)
	part.diags = append(part.diags, diags...)
	ms.MTLS, diags = serviceMTLS(ms, nsMode, defaultMTLS)
	part.diags = append(part.diags, diags...)
	if h != nil {
		// Quarantined: the part of the policy the proxies rejected stays as it was
		// in the last config they accepted.
		ms.Policy = withPolicyPart(h.part, ms.Policy, h.lastGood)
		if h.confirmed {
			part.diags = append(part.diags, mesh.Diagnostic{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name,
				Reason: mesh.ReasonRejectedByEnvoy, Message: rejectedMessage(h), Event: true})
		}
	}
	ms.Protocol, diags = mesh.ServiceProtocol(ms)
	part.diags = append(part.diags, diags...)

	// An ExternalName Service is a DNS alias: Kubernetes ignores its selector and
	// gives it no endpoints, and kube-proxy no rules
	// (https://kubernetes.io/docs/concepts/services-networking/service/#externalname).
	// It stays in the mesh, so that a caller gets an answer that names it, but the
	// mesh has no pod to send its traffic to: say so rather than answer 503 silently.
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		part.diags = append(part.diags, mesh.Diagnostic{
			Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Reason: mesh.ReasonExternalName, Event: true,
			Message: fmt.Sprintf("ExternalName Service (an alias of %q) has no endpoints the mesh can route to: bearkong sends mesh traffic to the sidecars of a Service's pods, so requests for it through the mesh get 503; call %s directly, or give the Service a selector and pods",
				svc.Spec.ExternalName, svc.Spec.ExternalName),
		})
		return part, nil
	}

	eps, err := readyEndpoints(endpointSlices, svc.Namespace, svc.Name, primaryFamily(svc))
	if err != nil {
		return nil, err
	}
	ms.Endpoints = eps.list
	ms.ServiceAccounts = endpointServiceAccounts(pods, svc.Namespace, eps.list)

	// A Service without a selector (endpoints managed by hand) selects no pods: an
	// empty selector would otherwise match every pod in the namespace. Its
	// endpoints are whatever EndpointSlices name it; with none, the mesh has
	// nowhere to send its traffic. That is how such a Service starts, so it is a
	// diagnostic but no Event.
	if len(svc.Spec.Selector) == 0 {
		if eps.slices == 0 {
			part.diags = append(part.diags, mesh.Diagnostic{
				Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Reason: mesh.ReasonNoEndpointSlices,
				Message: fmt.Sprintf("Service has no selector and no EndpointSlice of IP addresses labelled %s=%s: requests for it through the mesh get 503 until one names its endpoints",
					discoveryv1.LabelServiceName, svc.Name),
			})
		}
		part.diags = append(part.diags, mesh.CheckTargetPorts(ms, nil)...)
		return part, nil
	}
	selected, err := pods.Pods(svc.Namespace).List(labels.SelectorFromSet(svc.Spec.Selector))
	if err != nil {
		return nil, fmt.Errorf("list pods for service %s: %w", ms.Key(), err)
	}
	// Pods come from the lister in map order; sort them so that everything built from
	// them is the same for the same objects.
	sort.Slice(selected, func(i, j int) bool { return selected[i].Name < selected[j].Name })
	part.diags = append(part.diags, mesh.CheckTargetPorts(ms, namedPortResolver(selected))...)
	part.pods = make([]mesh.Proxy, 0, len(selected))
	for _, pod := range selected {
		part.pods = append(part.pods, mesh.Proxy{Namespace: pod.Namespace, Name: pod.Name, IP: pod.Status.PodIP, ServiceAccount: serviceAccountOf(pod)})
	}
	return part, nil
}

// buildOptions are the inputs of build beyond the listers.
type buildOptions struct {
	held map[ObjectRef]*hold
	// skipValidation honours SkipValidationAnnotation (Options.AllowSkipValidation).
	skipValidation bool
	// namespaces reads the Namespaces' mesh-mtls annotations; nil reads none.
	namespaces corelisters.NamespaceLister
	// defaultMTLS is Options.DefaultMTLS; "" means mesh.MTLSStrict.
	defaultMTLS mesh.MTLSMode
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
		mp := mesh.ServicePort{
			Name:       p.Name,
			Port:       p.Port,
			TargetPort: targetPort(p.TargetPort),
			Protocol:   string(p.Protocol),
		}
		if p.AppProtocol != nil {
			mp.AppProtocol = *p.AppProtocol
		}
		out = append(out, mp)
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

// namedPortResolver resolves a Service port's named targetPort in each of the selected
// pods, as the endpoint controller does: the first container port with that name and
// the Service port's protocol.
func namedPortResolver(pods []*corev1.Pod) func(mesh.ServicePort) []mesh.PodPort {
	if len(pods) == 0 {
		return nil
	}
	return func(sp mesh.ServicePort) []mesh.PodPort {
		proto := corev1.Protocol(sp.Protocol)
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		out := make([]mesh.PodPort, 0, len(pods))
		for _, pod := range pods {
			pp := mesh.PodPort{Pod: pod.Name}
		find:
			for _, c := range pod.Spec.Containers {
				for _, cp := range c.Ports {
					cpProto := cp.Protocol
					if cpProto == "" {
						cpProto = corev1.ProtocolTCP
					}
					if cp.Name == sp.TargetPort && cpProto == proto {
						pp.Port = cp.ContainerPort
						break find
					}
				}
			}
			out = append(out, pp)
		}
		return out
	}
}

// primaryFamily is the address family the mesh uses for a Service: the first of
// spec.ipFamilies, which the API server sets on every Service that has endpoints and
// which cannot change afterwards; IPv4 when unset
// (https://kubernetes.io/docs/concepts/services-networking/dual-stack/#services).
func primaryFamily(svc *corev1.Service) discoveryv1.AddressType {
	if len(svc.Spec.IPFamilies) > 0 && svc.Spec.IPFamilies[0] == corev1.IPv6Protocol {
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}

// endpoints is what readyEndpoints found.
type endpoints struct {
	list []mesh.Endpoint
	// slices counts the Service's EndpointSlices of IP addresses (of either family).
	slices int
}

// readyEndpoints collects the endpoints of one Service from all of its EndpointSlices: a
// Service can have several (more than 100 endpoints, one per address family, or old and
// new slices during a handover), and the same address may appear in more than one.
//
// One address family per Service: the slices of family (the Service's primary one),
// so that a dual-stack pod is one endpoint, not two. The sidecar's listeners bind one
// address (translate.Node.ListenIP), so the family must be one the sidecars listen on;
// see the README. A Service with slices of the other family only (hand-made slices of a
// selector-less Service, say) uses those rather than nothing.
//
// Ready endpoints are used. When none is ready, the serving ones that are terminating
// are, as kube-proxy does, so that a Service whose pods are all shutting down keeps
// answering until they are gone
// (https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/#conditions).
func readyEndpoints(lister discoverylisters.EndpointSliceLister, namespace, name string, family discoveryv1.AddressType) (endpoints, error) {
	list, err := lister.EndpointSlices(namespace).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	if err != nil {
		return endpoints{}, fmt.Errorf("list endpointslices for service %s/%s: %w", namespace, name, err)
	}
	// Visit slices in name order so that which duplicate wins does not depend on the
	// cache's map order.
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })

	var ipSlices []*discoveryv1.EndpointSlice
	ofFamily := 0
	for _, slice := range list {
		// FQDN slices name hosts, not pods; the mesh routes to pod sidecars by IP.
		if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ipSlices = append(ipSlices, slice)
		if slice.AddressType == family {
			ofFamily++
		}
	}
	if ofFamily == 0 && len(ipSlices) > 0 {
		family = ipSlices[0].AddressType
	}

	ready := map[netip.Addr]mesh.Endpoint{}
	terminating := map[netip.Addr]mesh.Endpoint{}
	for _, slice := range ipSlices {
		if slice.AddressType != family {
			continue
		}
		for _, ep := range slice.Endpoints {
			// The conditions as kube-proxy reads them: ready nil means ready, serving
			// nil means the same as ready, terminating nil means not terminating. The
			// endpoint controller sets ready=false for terminating endpoints and for
			// serving-but-not-ready ones.
			isReady := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			isServing := ep.Conditions.Serving == nil && isReady || ep.Conditions.Serving != nil && *ep.Conditions.Serving
			isTerminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			var into map[netip.Addr]mesh.Endpoint
			switch {
			case isReady:
				into = ready
			case isServing && isTerminating:
				into = terminating
			default:
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
			if prev, ok := into[addr]; ok && (prev.Pod != "" || pod == "") {
				continue // keep the first, unless only a later one names the pod
			}
			into[addr] = mesh.Endpoint{IP: addr.String(), Pod: pod}
		}
	}
	byIP := ready
	if len(ready) == 0 {
		byIP = terminating
	}
	// Sort by address, numerically (10.0.0.9 before 10.0.0.10).
	addrs := slices.SortedFunc(maps.Keys(byIP), func(a, b netip.Addr) int { return a.Compare(b) })
	out := make([]mesh.Endpoint, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, byIP[a])
	}
	return endpoints{list: out, slices: len(ipSlices)}, nil
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
	if a == b {
		return true // shared by consecutive snapshots, which never modify it
	}
	return a.Namespace == b.Namespace &&
		a.Name == b.Name &&
		maps.Equal(a.Annotations, b.Annotations) &&
		a.Policy == b.Policy &&
		a.Protocol == b.Protocol &&
		reflect.DeepEqual(a.Routes, b.Routes) &&
		slices.Equal(a.Ports, b.Ports) &&
		slices.Equal(a.Endpoints, b.Endpoints) &&
		a.MTLS == b.MTLS &&
		slices.Equal(a.ServiceAccounts, b.ServiceAccounts) &&
		reflect.DeepEqual(a.Authz, b.Authz)
}

func sameProxy(a, b *mesh.Proxy) bool {
	if a == b {
		return true
	}
	return a.Namespace == b.Namespace &&
		a.Name == b.Name &&
		a.IP == b.IP &&
		slices.Equal(a.Services, b.Services) &&
		a.ServiceAccount == b.ServiceAccount &&
		a.MTLS == b.MTLS
}
