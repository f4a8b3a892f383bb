package sim

import (
	"fmt"
	"maps"
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
	types    [NumTypes]deltaType
	clusters map[string]deltaCluster
	// warming maps an EDS name to the clusters that wait for it.
	warming      map[string][]string
	initializing bool
	// listenerRefs are the cached listeners' references (routes, secrets), by name, and
	// scopeRefs the cached scopes' (their route configuration).
	listenerRefs, scopeRefs map[string]xdsclient.Resource
	// edsRefs counts the clusters that refer to each EDS name, routeRefs the listeners
	// and scopes that refer to each route configuration: an update changes the
	// subscriptions of the names its resources refer to, as Envoy adds and removes one
	// watch per cluster or listener, instead of working the subscription out again from
	// every cached resource (which made the simulator, not the server, the bound of a
	// one-Service change at N=5000).
	edsRefs, routeRefs map[string]int
	// listenersSeen: an LDS response was applied (see Response's SRDS rule).
	listenersSeen bool
}

type deltaType struct {
	requested bool
	// names is the explicit subscription (EDS, RDS, SDS); CDS and LDS are wildcard.
	names map[string]bool
	// versions and hashes are what the cache holds, by name.
	versions map[string]string
	hashes   map[string]uint64
}

type deltaCluster struct {
	res     xdsclient.Resource
	warming bool
}

// deltaResource is one resource of a response.
type deltaResource struct {
	xdsclient.Resource
	Version string
}

func newDeltaProto() *deltaProto {
	p := &deltaProto{clusters: map[string]deltaCluster{}, warming: map[string][]string{}, listenerRefs: map[string]xdsclient.Resource{}, scopeRefs: map[string]xdsclient.Resource{},
		edsRefs: map[string]int{}, routeRefs: map[string]int{}}
	for i := range p.types {
		p.types[i].names = map[string]bool{}
		p.types[i].versions = map[string]string{}
		p.types[i].hashes = map[string]uint64{}
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
		r := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), InitialResourceVersions: maps.Clone(ts.versions)}
		if !t.Wildcard() {
			r.ResourceNamesSubscribe = sortedKeys(ts.names)
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
	seen := make(map[string]bool, len(rs))
	for _, r := range rs {
		if seen[r.Name] {
			return nil, fmt.Errorf("duplicate %s resource %q in one response", t, r.Name)
		}
		seen[r.Name] = true
	}
	if nack != "" {
		return []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: t.URL(), ResponseNonce: nonce,
			ErrorDetail: &rpcstatus.Status{Code: 3, Message: nack}}}, nil
	}
	for _, r := range rs {
		if !t.Wildcard() && !ts.names[r.Name] {
			continue // not subscribed: Envoy ignores it
		}
		ts.versions[r.Name] = r.Version
		ts.hashes[r.Name] = r.Hash
	}
	for _, n := range removed {
		delete(ts.versions, n)
		delete(ts.hashes, n)
	}
	var out []*discoveryv3.DeltaDiscoveryRequest
	switch t {
	case CDS:
		out = p.applyClusters(rs, removed)
	case EDS:
		for _, r := range rs {
			if ts.names[r.Name] {
				for _, cn := range p.warming[r.Name] {
					cl := p.clusters[cn]
					cl.warming = false
					p.clusters[cn] = cl
				}
				delete(p.warming, r.Name)
			}
		}
	case LDS:
		out = p.applyRefs(p.listenerRefs, rs, removed)
		scoped := false
		for _, l := range p.listenerRefs {
			scoped = scoped || l.Scoped
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
		out = p.applyRefs(p.scopeRefs, rs, removed)
	}
	if p.initializing && (t == CDS || t == EDS) && len(p.warming) == 0 {
		p.initializing = false
		p.types[LDS].requested = true
		out = append(out, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: LDS.URL()})
	}
	return append(out, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: t.URL(), ResponseNonce: nonce}), nil
}

func (p *deltaProto) applyClusters(rs []deltaResource, removed []string) []*discoveryv3.DeltaDiscoveryRequest {
	touched := map[string]bool{}
	var secrets []string
	for _, r := range rs {
		old, ok := p.clusters[r.Name]
		if ok && old.res.Hash == r.Hash {
			continue
		}
		if ok {
			if old.warming {
				p.unwarm(old.res.EDS, r.Name)
			}
			p.unref(p.edsRefs, old.res.EDS, touched)
		}
		cl := deltaCluster{res: r.Resource}
		if r.EDS != "" {
			cl.warming = true
			p.warming[r.EDS] = append(p.warming[r.EDS], r.Name)
		}
		p.clusters[r.Name] = cl
		p.ref(p.edsRefs, r.EDS, touched)
		secrets = append(secrets, r.Secrets...)
	}
	for _, n := range removed {
		if cl, ok := p.clusters[n]; ok {
			if cl.warming {
				p.unwarm(cl.res.EDS, n)
			}
			p.unref(p.edsRefs, cl.res.EDS, touched)
			delete(p.clusters, n)
		}
	}
	out := p.resubscribe(EDS, p.edsRefs, touched)
	return append(out, p.subscribeMore(SDS, secrets)...)
}

// ref and unref count a reference to name in refs, and note it in touched.
func (p *deltaProto) ref(refs map[string]int, name string, touched map[string]bool) {
	if name != "" {
		refs[name]++
		touched[name] = true
	}
}

func (p *deltaProto) unref(refs map[string]int, name string, touched map[string]bool) {
	if name == "" {
		return
	}
	if refs[name]--; refs[name] <= 0 {
		delete(refs, name)
	}
	touched[name] = true
}

func (p *deltaProto) unwarm(eds, name string) {
	l := slices.DeleteFunc(slices.Clone(p.warming[eds]), func(n string) bool { return n == name })
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
func (p *deltaProto) applyRefs(cache map[string]xdsclient.Resource, rs []deltaResource, removed []string) []*discoveryv3.DeltaDiscoveryRequest {
	touched := map[string]bool{}
	var secrets []string
	drop := func(name string) {
		if old, ok := cache[name]; ok {
			for _, r := range old.Routes {
				p.unref(p.routeRefs, r, touched)
			}
			delete(cache, name)
		}
	}
	for _, r := range rs {
		drop(r.Name)
		cache[r.Name] = r.Resource
		for _, rt := range r.Routes {
			p.ref(p.routeRefs, rt, touched)
		}
		secrets = append(secrets, r.Secrets...)
	}
	for _, n := range removed {
		drop(n)
	}
	out := p.resubscribe(RDS, p.routeRefs, touched)
	return append(out, p.subscribeMore(SDS, secrets)...)
}

// resubscribe brings the subscription of t to refs for the touched names: those now
// referred to subscribed, those no longer referred to unsubscribed and dropped from the
// cache. It returns the request, if any.
func (p *deltaProto) resubscribe(t Type, refs map[string]int, touched map[string]bool) []*discoveryv3.DeltaDiscoveryRequest {
	ts := &p.types[t]
	var sub, unsub []string
	for n := range touched {
		switch want := refs[n] > 0; {
		case want && !ts.names[n]:
			sub = append(sub, n)
		case !want && ts.names[n]:
			unsub = append(unsub, n)
		}
	}
	return p.subscription(t, sub, unsub)
}

// subscription applies sub and unsub to the subscription of t and returns the request
// that says so, if any.
func (p *deltaProto) subscription(t Type, sub, unsub []string) []*discoveryv3.DeltaDiscoveryRequest {
	if len(sub) == 0 && len(unsub) == 0 {
		return nil
	}
	ts := &p.types[t]
	for _, n := range sub {
		ts.names[n] = true
	}
	for _, n := range unsub {
		delete(ts.names, n)
		delete(ts.versions, n)
		delete(ts.hashes, n)
	}
	slices.Sort(sub)
	slices.Sort(unsub)
	ts.requested = true
	return []*discoveryv3.DeltaDiscoveryRequest{{TypeUrl: t.URL(), ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub}}
}

// subscribeMore subscribes to the names of want that are not subscribed yet; secrets
// stay subscribed once named (as on SotW, see internal/xdsclient's secrets section).
func (p *deltaProto) subscribeMore(t Type, want []string) []*discoveryv3.DeltaDiscoveryRequest {
	var sub []string
	for _, n := range want {
		if !p.types[t].names[n] && !slices.Contains(sub, n) {
			sub = append(sub, n)
		}
	}
	return p.subscription(t, sub, nil)
}

// Has returns the version and hash of the cached resource of t named name.
func (p *deltaProto) Has(t Type, name string) (string, uint64, bool) {
	v, ok := p.types[t].versions[name]
	return v, p.types[t].hashes[name], ok
}

// Names returns the subscription of t, sorted.
func (p *deltaProto) Names(t Type) []string { return sortedKeys(p.types[t].names) }

// Warming returns the clusters that wait for their ClusterLoadAssignment, sorted.
func (p *deltaProto) Warming() []string {
	var out []string
	for n, cl := range p.clusters {
		if cl.warming {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
