package sim

import (
	"fmt"
	"slices"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/bearkong/bearkong/internal/xdsclient"
)

// deltaProto is the protocol half of a simulated Envoy on an incremental ADS stream
// (DeltaAggregatedResources), free of gRPC so that it can be table-tested. It follows the
// xds_protocol document's "Incremental xDS" section
// (https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds) and
// does what the state-of-the-world client (internal/xdsclient) does where the two
// protocols agree:
//
//   - CDS and LDS by wildcard: the legacy form, a first request with no names;
//   - SRDS by wildcard (no names), asked for only from the first LDS response, when one of
//     its listeners takes scoped routes, as internal/xdsclient does after Envoy 1.36
//     (a listener that takes scopes later shares that subscription or, with none,
//     never starts one);
//   - EDS by the names the clusters refer to, RDS by the names the listeners and the
//     scopes refer to, SDS by the secrets clusters and listeners name: resource_names_subscribe for names
//     that are new, resource_names_unsubscribe for names no longer referred to, and the
//     unsubscribed resources dropped from the cache (a later subscribe waits for the
//     server to send them again);
//   - removed_resources drop the named resources (and, for a cluster, its EDS interest);
//   - one ACK (or NACK) per response, carrying its nonce; the requests a response calls
//     for go before its ACK, as on SotW;
//   - a cluster that is new or whose config changed warms until a ClusterLoadAssignment
//     arrives after it: Envoy waits for one after a cluster update on either protocol,
//     up to initial_fetch_timeout (envoyproxy/envoy#26749, #28877), so servers resend it;
//   - LDS is asked for once the clusters of the first CDS response are warm;
//   - on a new stream (Reconnect), every type asked for before is asked for again with
//     its current subscription and initial_resource_versions: the versions of what the
//     cache holds, so that the server sends only what differs.
type deltaProto struct {
	types [NumTypes]deltaType
	// The cache is kept by sym (see sym.go): maps of numbers, one small entry per
	// resource, so that 5000 clients' caches fit beside the rest of a run.
	clusters map[sym]deltaCluster
	// warming maps an EDS name to the clusters that wait for it.
	warming      map[sym][]sym
	initializing bool
	// listenerRefs are the cached listeners' route configurations, by name, and
	// scopeRefs the cached scopes'.
	listenerRefs, scopeRefs map[sym]deltaRefs
	// edsRefs counts the clusters that refer to each EDS name, routeRefs the listeners
	// and scopes that refer to each route configuration: an update changes the
	// subscriptions of the names its resources refer to, as Envoy adds and removes one
	// watch per cluster or listener, instead of working the subscription out again from
	// every cached resource (which made the simulator, not the server, the bound of a
	// one-Service change at N=5000).
	edsRefs, routeRefs map[sym]int32
	// listenersSeen: an LDS response was applied (see Response's SRDS rule).
	listenersSeen bool
}

type deltaType struct {
	requested bool
	// names is the explicit subscription (EDS, RDS, SDS); CDS and LDS are wildcard.
	names map[sym]bool
	// cache is what the cache holds, by name: the version the server gave and the
	// hash of the bytes.
	cache map[sym]version
}

type deltaCluster struct {
	hash    uint64
	eds     sym
	warming bool
}

type deltaRefs struct {
	routes symList
	scoped bool
}

// deltaResource is one resource of a response.
type deltaResource struct {
	xdsclient.Resource
	Version string
}

func newDeltaProto() *deltaProto {
	p := &deltaProto{clusters: map[sym]deltaCluster{}, warming: map[sym][]sym{}, listenerRefs: map[sym]deltaRefs{}, scopeRefs: map[sym]deltaRefs{},
		edsRefs: map[sym]int32{}, routeRefs: map[sym]int32{}}
	for i := range p.types {
		p.types[i].names = map[sym]bool{}
		p.types[i].cache = map[sym]version{}
	}
	return p
}

// Start returns the first request of a stream: CDS by wildcard, with no names (the
// legacy wildcard form). The caller adds the node.
func (p *deltaProto) Start() *discoveryv3.DeltaDiscoveryRequest {
	p.types[CDS].requested = true
	p.initializing = true
	return &discoveryv3.DeltaDiscoveryRequest{TypeUrl: CDS.URL()}
}

// Reconnect returns the first requests of a new stream after a lost one: each type asked
// for before, in Envoy's order, with its subscription and the versions the cache holds.
// The caller adds the node to the first.
func (p *deltaProto) Reconnect() []*discoveryv3.DeltaDiscoveryRequest {
	var out []*discoveryv3.DeltaDiscoveryRequest
	for _, t := range []Type{CDS, EDS, LDS, SRDS, RDS, SDS} {
		ts := &p.types[t]
		if !ts.requested {
			continue
		}
		initial := make(map[string]string, len(ts.cache))
		for n, v := range ts.cache {
			initial[n.String()] = v.held().version.String()
		}
		r := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), InitialResourceVersions: initial}
		if !t.Wildcard() {
			r.ResourceNamesSubscribe = sortedNames(ts.names)
		}
		out = append(out, r)
	}
	return out
}

// Response applies one response: its resources, the names it removes, and returns the
// requests to send: what the new state calls for, then the ACK (or the NACK, when nack is
// not empty, which leaves the cache as it was).
func (p *deltaProto) Response(t Type, nonce string, rs []deltaResource, removed []string, nack string) ([]*discoveryv3.DeltaDiscoveryRequest, error) {
	ts := &p.types[t]
	if !ts.requested {
		return nil, fmt.Errorf("%s response before any %s request", t, t)
	}
	names := make([]sym, len(rs))
	for i, r := range rs {
		names[i] = intern(r.Name)
	}
	if len(names) > 1 {
		sorted := slices.Clone(names)
		slices.Sort(sorted)
		for i := 1; i < len(sorted); i++ {
			if sorted[i] == sorted[i-1] {
				return nil, fmt.Errorf("duplicate %s resource %q in one response", t, sorted[i])
			}
		}
	}
	if nack != "" {
		return []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: t.URL(), ResponseNonce: nonce,
			ErrorDetail: &rpcstatus.Status{Code: 3, Message: nack}}}, nil
	}
	for i, r := range rs {
		if !t.Wildcard() && !ts.names[names[i]] {
			continue // not subscribed: Envoy ignores it
		}
		ts.cache[names[i]] = internVersion(held{version: intern(r.Version), hash: r.Hash})
	}
	gone := make([]sym, len(removed))
	for i, n := range removed {
		gone[i] = intern(n)
		delete(ts.cache, gone[i])
	}
	var out []*discoveryv3.DeltaDiscoveryRequest
	switch t {
	case CDS:
		out = p.applyClusters(rs, names, gone)
	case EDS:
		for _, n := range names {
			if ts.names[n] {
				for _, cn := range p.warming[n] {
					cl := p.clusters[cn]
					cl.warming = false
					p.clusters[cn] = cl
				}
				delete(p.warming, n)
			}
		}
		if len(p.warming) == 0 {
			// A map keeps the room it grew to: the thousand clusters that warmed at
			// sync would hold 64 KB a client for good.
			p.warming = map[sym][]sym{}
		}
	case LDS:
		out = p.applyRefs(p.listenerRefs, rs, names, gone)
		scoped := false
		for _, l := range p.listenerRefs {
			scoped = scoped || l.scoped
		}
		if scoped && !p.types[SRDS].requested && !p.listenersSeen {
			// Only from the first LDS response, as Envoy 1.36 does (see
			// xdsclient.Client.applyListeners): a wildcard subscription, the legacy
			// form with no names.
			p.types[SRDS].requested = true
			out = append(out, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: SRDS.URL()})
		}
		p.listenersSeen = true
	case SRDS:
		out = p.applyRefs(p.scopeRefs, rs, names, gone)
	}
	if p.initializing && (t == CDS || t == EDS) && len(p.warming) == 0 {
		p.initializing = false
		p.types[LDS].requested = true
		out = append(out, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: LDS.URL()})
	}
	return append(out, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResponseNonce: nonce}), nil
}

func (p *deltaProto) applyClusters(rs []deltaResource, names, removed []sym) []*discoveryv3.DeltaDiscoveryRequest {
	var touched []sym
	var secrets []string
	for i, r := range rs {
		name := names[i]
		old, ok := p.clusters[name]
		if ok && old.hash == r.Hash {
			continue
		}
		if ok {
			if old.warming {
				p.unwarm(old.eds, name)
			}
			touched = p.unref(p.edsRefs, old.eds, touched)
		}
		cl := deltaCluster{hash: r.Hash, eds: intern(r.EDS)}
		if cl.eds != 0 {
			cl.warming = true
			p.warming[cl.eds] = append(p.warming[cl.eds], name)
		}
		p.clusters[name] = cl
		touched = p.ref(p.edsRefs, cl.eds, touched)
		secrets = append(secrets, r.Secrets...)
	}
	for _, n := range removed {
		if cl, ok := p.clusters[n]; ok {
			if cl.warming {
				p.unwarm(cl.eds, n)
			}
			touched = p.unref(p.edsRefs, cl.eds, touched)
			delete(p.clusters, n)
		}
	}
	out := p.resubscribe(EDS, p.edsRefs, touched)
	return append(out, p.subscribeMore(SDS, secrets)...)
}

// ref and unref count a reference to name in refs, and note it in touched.
func (p *deltaProto) ref(refs map[sym]int32, name sym, touched []sym) []sym {
	if name == 0 {
		return touched
	}
	refs[name]++
	return append(touched, name)
}

func (p *deltaProto) unref(refs map[sym]int32, name sym, touched []sym) []sym {
	if name == 0 {
		return touched
	}
	if refs[name]--; refs[name] <= 0 {
		delete(refs, name)
	}
	return append(touched, name)
}

func (p *deltaProto) unwarm(eds, name sym) {
	l := slices.DeleteFunc(slices.Clone(p.warming[eds]), func(n sym) bool { return n == name })
	if len(l) == 0 {
		delete(p.warming, eds)
	} else {
		p.warming[eds] = l
	}
}

// applyRefs applies an LDS or SRDS update to the cached listeners' or scopes' references
// (cache): it subscribes to the route configurations and secrets they name, and
// unsubscribes from the route configurations none names any more. A scope's route
// configuration stays while the scope does, even when the listener that took scopes
// goes, as on SotW (xdsclient).
func (p *deltaProto) applyRefs(cache map[sym]deltaRefs, rs []deltaResource, names, removed []sym) []*discoveryv3.DeltaDiscoveryRequest {
	var touched []sym
	var secrets []string
	drop := func(name sym) {
		if old, ok := cache[name]; ok {
			for _, r := range old.routes.syms() {
				touched = p.unref(p.routeRefs, r, touched)
			}
			delete(cache, name)
		}
	}
	for i, r := range rs {
		drop(names[i])
		refs := deltaRefs{routes: internList(r.Routes), scoped: r.Scoped}
		cache[names[i]] = refs
		for _, rt := range refs.routes.syms() {
			touched = p.ref(p.routeRefs, rt, touched)
		}
		secrets = append(secrets, r.Secrets...)
	}
	for _, n := range removed {
		drop(n)
	}
	out := p.resubscribe(RDS, p.routeRefs, touched)
	return append(out, p.subscribeMore(SDS, secrets)...)
}

// resubscribe brings the subscription of t to refs for the touched names (which may
// repeat): those now referred to subscribed, those no longer referred to unsubscribed and
// dropped from the cache. It returns the request, if any.
func (p *deltaProto) resubscribe(t Type, refs map[sym]int32, touched []sym) []*discoveryv3.DeltaDiscoveryRequest {
	ts := &p.types[t]
	var sub, unsub []string
	for _, n := range touched {
		switch want := refs[n] > 0; {
		case want && !ts.names[n]:
			ts.names[n] = true
			sub = append(sub, n.String())
		case !want && ts.names[n]:
			delete(ts.names, n)
			delete(ts.cache, n)
			unsub = append(unsub, n.String())
		}
	}
	return p.request(t, sub, unsub)
}

// request returns the request that says sub and unsub were applied to the subscription
// of t, if any.
func (p *deltaProto) request(t Type, sub, unsub []string) []*discoveryv3.DeltaDiscoveryRequest {
	if len(sub) == 0 && len(unsub) == 0 {
		return nil
	}
	slices.Sort(sub)
	slices.Sort(unsub)
	p.types[t].requested = true
	return []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: t.URL(), ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}}
}

// subscribeMore subscribes to the names of want that are not subscribed yet; secrets
// stay subscribed once named (as on SotW, see internal/xdsclient's secrets section).
func (p *deltaProto) subscribeMore(t Type, want []string) []*discoveryv3.DeltaDiscoveryRequest {
	ts := &p.types[t]
	var sub []string
	for i, n := range want {
		if i > 0 && n == want[i-1] {
			continue // every cluster names the same few secrets
		}
		if s := intern(n); !ts.names[s] {
			ts.names[s] = true
			sub = append(sub, s.String())
		}
	}
	return p.request(t, sub, nil)
}

// Has returns the version and hash of the cached resource of t named name.
func (p *deltaProto) Has(t Type, name string) (string, uint64, bool) {
	v, ok := p.types[t].cache[intern(name)]
	h := v.held()
	return h.version.String(), h.hash, ok
}

// Names returns the subscription of t, sorted.
func (p *deltaProto) Names(t Type) []string { return sortedNames(p.types[t].names) }

// Warming returns the clusters that wait for their ClusterLoadAssignment, sorted.
func (p *deltaProto) Warming() []string {
	var out []string
	for n, cl := range p.clusters {
		if cl.warming {
			out = append(out, n.String())
		}
	}
	slices.Sort(out)
	return out
}

func sortedNames(m map[sym]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}
