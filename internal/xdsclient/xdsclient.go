// Package xdsclient is the protocol half of an ADS client that behaves like Envoy 1.36 on a
// state-of-the-world stream, free of gRPC and of proto decoding so that the test client
// (internal/xdstest), the fleet simulator (bench/sim) and the fuzz test of pkg/ads share
// it. Where it matters to a control plane, it does what Envoy does:
//
//   - CDS and LDS by wildcard (the legacy form: no names), EDS and RDS by the names the
//     clusters and listeners refer to, listed in Envoy's watch order: newest first, not
//     sorted (Envoy's gRPC mux puts a new watch at the front of its list and builds
//     resource_names from the watches in order, dropping repeats). A modified EDS
//     cluster gets a new watch, so its name moves to the front.
//   - The requests a response calls for (EDS after CDS, RDS and SDS after LDS, SDS after
//     EDS, LDS once the initial clusters are warm) go before its ACK: Envoy makes them
//     while it applies the response and ACKs it after (seen on Envoy 1.36.4 by
//     TestClientMatchesEnvoy in test/e2e, which compares the order of the types).
//   - LDS is asked for once the clusters of the first CDS response are warm.
//   - After the initial clusters, a CDS response that leaves clusters warming is ACKed
//     only once they are all warm: that ACK goes just before the ACK of the EDS or SDS
//     response that warmed the last one.
//   - An EDS cluster that is new or whose config changed is warming until a
//     ClusterLoadAssignment for it arrives after the cluster did; while a modified
//     cluster warms, its previous version stays in use.
//   - Resources of EDS and RDS that leave the subscription are dropped from the cache: a
//     later subscribe to them waits for the server to send them again.
//   - A NACK keeps the last accepted version and state, and says so in version_info.
//   - SDS by the names of the secrets that clusters' and listeners' TLS transport sockets
//     take from ADS (see Resource.Secrets and the secrets section below); a cluster
//     warms until its ClusterLoadAssignment and then its secrets have arrived.
//
// See https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol.
package xdsclient

import (
	"cmp"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"weak"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/bearkong/bearkong/pkg/resource"
)

// Type is an xDS type: pkg/resource's vocabulary, whose short names (cds, eds, lds,
// srds, rds, sds) and type URLs the client shares.
type Type = resource.Type

// The types, in the order Envoy initializes them.
const (
	CDS      = resource.Cluster
	EDS      = resource.Endpoint
	LDS      = resource.Listener
	SRDS     = resource.ScopedRoute
	RDS      = resource.Route
	SDS      = resource.Secret
	NumTypes = resource.NumTypes
)

// TypeOf returns the Type of a type URL.
func TypeOf(url string) (Type, bool) { return resource.TypeFromURL(url) }

// Resource is one decoded resource, as far as the protocol cares.
type Resource struct {
	Name string
	// Hash identifies the content: equal bytes, equal hash.
	Hash uint64
	// EDS is, for a cluster of type EDS, the name of the ClusterLoadAssignment it
	// waits for (its eds service_name, else its name).
	EDS string
	// Routes are, for a listener, the route configurations its HTTP connection
	// managers take from RDS; for a scope (SRDS), the route configuration it names.
	Routes []string
	// Scoped is, for a listener, whether one of its HTTP connection managers takes its
	// scopes from SRDS (see ListenerRoutes).
	Scoped bool
	// Secrets are, for a cluster or a listener, the names of the secrets its TLS
	// transport sockets take from SDS over ADS, in the order Envoy creates their
	// providers (see ClusterSecrets and ListenerSecrets).
	Secrets []string
}

// cluster is a cluster as the client's cluster manager holds it.
type cluster struct {
	res Resource
	// active: a version of the cluster is in use (the first version has warmed).
	active bool
	// warming: the latest version waits for its ClusterLoadAssignment or its secrets.
	warming bool
	// preInit: the latest version's own initialization is done (its
	// ClusterLoadAssignment came, or it needs none); what is left is its secrets.
	preInit bool
}

type typeState struct {
	requested bool
	acked     string // version_info of the last accepted response
	nonce     string // of the latest response
	// names is the current subscription (EDS, RDS) in watch order; shared by the
	// clients that subscribe to the same list, and never modified in place.
	names *nameList
	// cache holds the accepted content by name: for CDS and LDS the latest state of
	// the world, for EDS and RDS what was received for the names subscribed.
	cache map[string]uint64
}

// Client is one proxy's protocol state. It is not safe for concurrent use.
type Client struct {
	types    [NumTypes]typeState
	clusters map[string]cluster
	// warming maps an EDS name to the clusters that wait for it.
	warming map[string][]string
	// initializing: the clusters of the first CDS response are not all warm yet, and
	// LDS waits.
	initializing bool
	// routes are the route configuration names the listeners refer to, scopeRoutes
	// those the scopes refer to.
	routes, scopeRoutes map[string]bool
	// listenersSeen: an LDS response was applied; Envoy's server initialization ends
	// with the first.
	listenersSeen bool
	// heldAck is the ACK of the latest CDS response, held while its clusters warm.
	heldAck *discoveryv3.DiscoveryRequest
	// secretWait counts the clusters whose own initialization is done and that wait
	// for their secrets.
	secretWait int
	// started are the secrets whose SDS subscription started (see the secrets section).
	started map[string]bool
	// clusterNamed are the secrets any cluster ever named; listenerNamed those the
	// current listeners name.
	clusterNamed, listenerNamed map[string]bool
}

// New returns a client that has sent nothing.
func New() *Client {
	c := &Client{clusters: map[string]cluster{}, warming: map[string][]string{}, routes: map[string]bool{}, scopeRoutes: map[string]bool{},
		started: map[string]bool{}, clusterNamed: map[string]bool{}, listenerNamed: map[string]bool{}}
	for i := range c.types {
		c.types[i].cache = map[string]uint64{}
	}
	return c
}

// Start returns the first request of the stream: CDS by wildcard. The caller adds the node.
func (c *Client) Start() *discoveryv3.DiscoveryRequest {
	c.types[CDS].requested = true
	c.initializing = true
	return &discoveryv3.DiscoveryRequest{TypeUrl: CDS.URL()}
}

// Requested reports whether the client has asked for type t.
func (c *Client) Requested(t Type) bool { return c.types[t].requested }

// Response applies one response whose resources are rs (in response order) and returns
// the requests to send, in order: its ACK (or NACK, when nack is not empty), then what the
// new state calls for. It fails on a response that the protocol forbids: a type that was
// not requested, or a name twice.
func (c *Client) Response(t Type, version, nonce string, rs []Resource, nack string) ([]*discoveryv3.DiscoveryRequest, error) {
	ts := &c.types[t]
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
	ts.nonce = nonce
	if nack != "" {
		// The last accepted version stays in force; the NACK says which it is.
		return []*discoveryv3.DiscoveryRequest{{
			TypeUrl: t.URL(), VersionInfo: ts.acked, ResponseNonce: nonce, ResourceNames: ts.names.get(),
			ErrorDetail: &rpcstatus.Status{Code: 3, Message: nack},
		}}, nil
	}
	ts.acked = version
	// out are the requests the response calls for, then its ACK.
	var out []*discoveryv3.DiscoveryRequest
	switch t {
	case CDS:
		out = c.applyClusters(rs)
	case EDS:
		c.applyNamed(ts, rs)
		out = c.applyEndpoints(ts, rs)
	case LDS:
		out = c.applyListeners(rs)
	case SRDS:
		out = c.applyScopes(rs)
	case RDS:
		c.applyNamed(ts, rs)
	case SDS:
		c.applyNamed(ts, rs)
		c.secretsArrived()
	}
	ack := &discoveryv3.DiscoveryRequest{TypeUrl: t.URL(), VersionInfo: version, ResponseNonce: nonce, ResourceNames: ts.names.get()}
	switch {
	case t == CDS && !c.initializing && !c.allWarm():
		c.heldAck, ack = ack, nil // sent once the clusters are warm
	case t == CDS:
		c.heldAck = nil
	}
	if (t == EDS || t == SDS) && c.heldAck != nil && c.allWarm() {
		out = append(out, c.heldAck)
		c.heldAck = nil
	}
	// Envoy asks for listeners once its initial clusters are warm.
	if c.initializing && (t == CDS || t == EDS || t == SDS) && c.allWarm() {
		c.initializing = false
		c.types[LDS].requested = true
		out = append(out, &discoveryv3.DiscoveryRequest{TypeUrl: LDS.URL()})
	}
	if ack != nil {
		out = append(out, ack)
	}
	return out, nil
}

// applyNamed stores the subscribed resources of an EDS or RDS response. Resources not
// subscribed to are ignored, as Envoy does.
func (c *Client) applyNamed(ts *typeState, rs []Resource) {
	for _, r := range rs {
		if ts.names.has(r.Name) {
			ts.cache[r.Name] = r.Hash
		}
	}
}

func (c *Client) applyClusters(rs []Resource) []*discoveryv3.DiscoveryRequest {
	var added []string // new watches, in the order they are made
	var startedSecrets []string
	next := make(map[string]uint64, len(rs))
	for _, r := range rs {
		next[r.Name] = r.Hash
		for _, sn := range r.Secrets {
			c.clusterNamed[sn] = true
		}
		old, ok := c.clusters[r.Name]
		if ok && old.res.Hash == r.Hash {
			continue // unchanged: Envoy keeps the cluster as it is
		}
		cl := cluster{res: r, active: ok && old.active}
		if ok && old.warming {
			c.unwarm(old, r.Name)
		}
		cl.warming = true
		if r.EDS != "" {
			// A new EDS watch, which waits for a ClusterLoadAssignment.
			c.warming[r.EDS] = append(c.warming[r.EDS], r.Name)
			added = append(added, r.EDS)
		} else {
			// Nothing of its own to wait for: its secrets start now. (Not held to
			// Envoy by TestClientMatchesEnvoy: bearkong's TLS clusters are all EDS.)
			cl = c.preInitDone(cl, &startedSecrets)
		}
		c.clusters[r.Name] = cl
	}
	want := map[string]bool{}
	for n, cl := range c.clusters {
		if _, ok := next[n]; !ok {
			if cl.warming {
				c.unwarm(cl, n)
			}
			delete(c.clusters, n)
			continue
		}
		if cl.res.EDS != "" {
			want[cl.res.EDS] = true
		}
	}
	c.types[CDS].cache = next
	return append(c.resubscribe(EDS, added, want), c.resubscribeSecrets(startedSecrets)...)
}

// unwarm forgets that the cluster named name, in state cl, is warming.
func (c *Client) unwarm(cl cluster, name string) {
	if cl.preInit {
		c.secretWait--
		return
	}
	eds := cl.res.EDS
	l := slices.DeleteFunc(slices.Clone(c.warming[eds]), func(n string) bool { return n == name })
	if len(l) == 0 {
		delete(c.warming, eds)
	} else {
		c.warming[eds] = l
	}
}

func (c *Client) applyListeners(rs []Resource) []*discoveryv3.DiscoveryRequest {
	var added []string
	next := make(map[string]uint64, len(rs))
	want := map[string]bool{}
	scoped := false
	for _, r := range rs {
		next[r.Name] = r.Hash
		scoped = scoped || r.Scoped
		for _, rn := range r.Routes {
			if !c.routes[rn] && !want[rn] {
				// Route configuration providers are shared by name: a name no
				// listener used before is a new watch.
				added = append(added, rn)
			}
			want[rn] = true
		}
	}
	c.routes = want
	// The scopes' route configurations stay subscribed when the listener that took
	// scopes goes: Envoy keeps the SRDS subscription, and the RDS ones it made, after
	// the listener (seen on Envoy 1.36.4 by TestClientMatchesEnvoy).
	want = c.wantRoutes()
	c.types[LDS].cache = next
	// A listener's secrets start when Envoy creates the listener: at once, since it
	// waits for nothing else first; RDS first. Secrets no listener names any more go,
	// unless a cluster ever named them.
	var startedSecrets []string
	named := map[string]bool{}
	for _, r := range rs {
		for _, sn := range r.Secrets {
			named[sn] = true
			if !c.started[sn] {
				c.started[sn] = true
				startedSecrets = append(startedSecrets, sn)
			}
		}
	}
	var dropped bool
	for sn := range c.listenerNamed {
		if !named[sn] && !c.clusterNamed[sn] && c.started[sn] {
			delete(c.started, sn)
			dropped = true
		}
	}
	c.listenerNamed = named
	out := c.resubscribe(RDS, added, want)
	if scoped && !c.types[SRDS].requested && !c.listenersSeen {
		// A connection manager with scoped_rds subscribes to the scopes, with no names:
		// Envoy takes each SRDS response as the whole set of scopes, as for LDS.
		//
		// Only from the first LDS response: Envoy 1.36 starts an SRDS subscription
		// through the server's init manager, so one created by a listener that came
		// after the server initialized never starts, and never asks for anything
		// (seen on Envoy 1.36.4; fixed upstream by envoyproxy/envoy#43392). Listeners
		// that come later share the subscription the first one started.
		c.types[SRDS].requested = true
		out = append(out, &discoveryv3.DiscoveryRequest{TypeUrl: SRDS.URL()})
	}
	c.listenersSeen = true
	if dropped {
		return append(out, c.resubscribe(SDS, startedSecrets, c.started)...)
	}
	return append(out, c.resubscribeSecrets(startedSecrets)...)
}

// wantRoutes is the RDS subscription the listeners and scopes call for.
func (c *Client) wantRoutes() map[string]bool {
	want := make(map[string]bool, len(c.routes)+len(c.scopeRoutes))
	for n := range c.routes {
		want[n] = true
	}
	for n := range c.scopeRoutes {
		want[n] = true
	}
	return want
}

// applyScopes takes an SRDS response, the whole set of scopes, and subscribes to the
// route configurations they name.
func (c *Client) applyScopes(rs []Resource) []*discoveryv3.DiscoveryRequest {
	var added []string
	next := make(map[string]uint64, len(rs))
	scopeRoutes := map[string]bool{}
	for _, r := range rs {
		next[r.Name] = r.Hash
		for _, rn := range r.Routes {
			if !c.routes[rn] && !c.scopeRoutes[rn] && !scopeRoutes[rn] {
				added = append(added, rn)
			}
			scopeRoutes[rn] = true
		}
	}
	c.scopeRoutes = scopeRoutes
	c.types[SRDS].cache = next
	return c.resubscribe(RDS, added, c.wantRoutes())
}

// ListenerRoutes returns the route configurations the HTTP connection managers of l take
// from RDS, and whether one of them takes scopes from SRDS.
func ListenerRoutes(l *listenerv3.Listener) (routes []string, scoped bool) {
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			var hcm hcmv3.HttpConnectionManager
			if f.GetTypedConfig() == nil || f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
				continue
			}
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				routes = append(routes, n)
			}
			if hcm.GetScopedRoutes().GetScopedRds() != nil {
				scoped = true
			}
		}
	}
	return routes, scoped
}

// Secrets, as Envoy 1.36 handles them:
//
//   - A TLS transport socket that names a secret with an sds_config creates, or shares,
//     the secret's provider, one per config source and name (SecretManagerImpl's
//     DynamicSecretProviders::findOrCreate), and adds the provider's init target to
//     the init manager of its cluster or listener, whether the provider is new or not:
//     https://github.com/envoyproxy/envoy/blob/v1.36.4/source/common/secret/secret_manager_impl.h
//   - The provider's subscription starts (its watch, hence its name in the SDS request)
//     the first time one of those init managers initializes it; the target is shared,
//     so the later ones only wait for the secret, or not at all once it came
//     (SdsApi, https://github.com/envoyproxy/envoy/blob/v1.36.4/source/common/secret/sds_api.cc).
//   - A cluster initializes its init manager when its own initialization is done
//     (ClusterImplBase::onPreInitComplete): for an EDS cluster, once its
//     ClusterLoadAssignment came; so a new EDS cluster asks for its secrets only then,
//     and stays warming until they came too
//     (https://github.com/envoyproxy/envoy/blob/v1.36.4/source/common/upstream/upstream_impl.cc).
//     A listener initializes at once.
//   - A secret a cluster named stays subscribed for the life of the stream, even when
//     no cluster names it any more: seen on Envoy 1.36.4 by TestClientMatchesEnvoy in
//     test/e2e, where removing every TLS cluster sends no SDS request, and a TLS cluster
//     that comes back later warms on its ClusterLoadAssignment alone, with the secret
//     Envoy kept (something still holds the provider; the docs promise nothing either
//     way). So a control plane keeps sending such a secret's rotations. A secret only
//     listeners named leaves the subscription with the last listener that names it
//     (seen there too).
//   - A secret that comes again (a rotation) changes nothing else: an ACK.
//   - An SDS NACK leaves the rejected secret in the provider (seen on Envoy 1.36.4:
//     a TLS cluster created after a NACKed key is rejected with the NACK's error).
//
// Names are listed newest watch first, as for EDS and RDS.

// preInitDone marks the cluster's own initialization as done, starts the subscription
// of its secrets that have none yet (appending them to started), and returns the
// cluster, active if every secret it needs is already here.
func (c *Client) preInitDone(cl cluster, started *[]string) cluster {
	cl.preInit = true
	for _, sn := range cl.res.Secrets {
		if !c.started[sn] {
			c.started[sn] = true
			*started = append(*started, sn)
		}
	}
	if c.secretsReady(cl.res.Secrets) {
		cl.warming, cl.active = false, true
	} else {
		c.secretWait++
	}
	return cl
}

// secretsReady reports whether every named secret has arrived.
func (c *Client) secretsReady(names []string) bool {
	for _, n := range names {
		if _, ok := c.types[SDS].cache[n]; !ok {
			return false
		}
	}
	return true
}

// applyEndpoints ends the own initialization of the clusters that the EDS response rs
// warms, and returns the SDS request their secrets call for, if any.
func (c *Client) applyEndpoints(ts *typeState, rs []Resource) []*discoveryv3.DiscoveryRequest {
	if len(c.warming) == 0 {
		return nil
	}
	var started []string
	for _, r := range rs {
		if !ts.names.has(r.Name) {
			continue
		}
		for _, n := range c.warming[r.Name] {
			c.clusters[n] = c.preInitDone(c.clusters[n], &started)
		}
		delete(c.warming, r.Name)
	}
	return c.resubscribeSecrets(started)
}

// secretsArrived activates the clusters that waited only for secrets that are all here
// now.
func (c *Client) secretsArrived() {
	if c.secretWait == 0 {
		return
	}
	for n, cl := range c.clusters {
		if cl.warming && cl.preInit && c.secretsReady(cl.res.Secrets) {
			cl.warming, cl.active = false, true
			c.clusters[n] = cl
			c.secretWait--
		}
	}
}

// allWarm reports whether no cluster is warming.
func (c *Client) allWarm() bool { return len(c.warming) == 0 && c.secretWait == 0 }

// resubscribeSecrets puts the secrets whose subscription just started (in the order
// they started) at the front of the SDS subscription, and returns the SDS request that
// announces the new list, if there is one. Names never leave it: see the secrets
// section.
func (c *Client) resubscribeSecrets(started []string) []*discoveryv3.DiscoveryRequest {
	if len(started) == 0 {
		return nil
	}
	return c.resubscribe(SDS, started, c.started)
}

// resubscribe puts the new watches (in the order they were made) at the front of the
// subscription of t, keeps only the names in want, drops the cache of names that left,
// and returns the request that announces the new list, if it changed.
func (c *Client) resubscribe(t Type, added []string, want map[string]bool) []*discoveryv3.DiscoveryRequest {
	ts := &c.types[t]
	var list []string
	seen := make(map[string]bool, len(want))
	keep := func(n string) {
		if want[n] && !seen[n] {
			seen[n] = true
			list = append(list, n)
		}
	}
	for i := len(added) - 1; i >= 0; i-- {
		keep(added[i])
	}
	for _, n := range ts.names.get() {
		keep(n)
	}
	if slices.Equal(list, ts.names.get()) {
		if len(added) == 0 {
			return nil
		}
		// A new watch on names already subscribed (a modified cluster whose name was
		// first already): Envoy still sends the list again.
		return []*discoveryv3.DiscoveryRequest{{TypeUrl: t.URL(), ResourceNames: ts.names.get(), VersionInfo: ts.acked, ResponseNonce: ts.nonce}}
	}
	ts.names = intern(list)
	for n := range ts.cache {
		if !want[n] {
			delete(ts.cache, n) // unsubscribed: Envoy drops it
		}
	}
	req := &discoveryv3.DiscoveryRequest{TypeUrl: t.URL(), ResourceNames: ts.names.get()}
	if req.ResourceNames == nil {
		req.ResourceNames = []string{}
	}
	if ts.requested {
		req.VersionInfo, req.ResponseNonce = ts.acked, ts.nonce
	}
	ts.requested = true
	return []*discoveryv3.DiscoveryRequest{req}
}

// Names returns the subscription of t (EDS, RDS, SDS) in the order the client sends it.
func (c *Client) Names(t Type) []string { return c.types[t].names.get() }

// Acked returns the version of the last accepted response of t.
func (c *Client) Acked(t Type) string { return c.types[t].acked }

// Nonce returns the nonce of the latest response of t.
func (c *Client) Nonce(t Type) string { return c.types[t].nonce }

// Has returns the hash of the cached resource of t named name.
func (c *Client) Has(t Type, name string) (uint64, bool) {
	h, ok := c.types[t].cache[name]
	return h, ok
}

// Cache returns the names and hashes the client holds for t, sorted by name.
func (c *Client) Cache(t Type) []Resource {
	out := make([]Resource, 0, len(c.types[t].cache))
	for n, h := range c.types[t].cache {
		out = append(out, Resource{Name: n, Hash: h})
	}
	slices.SortFunc(out, func(a, b Resource) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

// ClusterState is a cluster as the client's cluster manager sees it.
type ClusterState struct {
	// Active: a version of the cluster is in use.
	Active bool
	// Warming: the latest version waits for its ClusterLoadAssignment or its secrets.
	Warming bool
}

// Cluster returns the state of a cluster; ok is false for a cluster the client does not
// have.
func (c *Client) Cluster(name string) (st ClusterState, ok bool) {
	cl, ok := c.clusters[name]
	if !ok {
		return ClusterState{}, false
	}
	return ClusterState{Active: cl.active, Warming: cl.warming}, true
}

// Warming returns the names of the clusters that are warming (for their
// ClusterLoadAssignment or their secrets), sorted.
func (c *Client) Warming() []string {
	var out []string
	for n, cl := range c.clusters {
		if cl.warming {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// nameList is a subscription in watch order, with a set for lookups. Clients that
// subscribe to the same list share one: a fleet of thousands should not cost more memory
// than the proxies it stands for.
type nameList struct {
	list []string
	set  map[string]struct{}
}

func (l *nameList) get() []string {
	if l == nil {
		return nil
	}
	return l.list
}

func (l *nameList) has(n string) bool {
	if l == nil {
		return false
	}
	_, ok := l.set[n]
	return ok
}

var interned = struct {
	sync.Mutex
	seed  maphash.Seed
	lists map[uint64][]weak.Pointer[nameList]
}{seed: maphash.MakeSeed(), lists: map[uint64][]weak.Pointer[nameList]{}}

func intern(list []string) *nameList {
	if len(list) == 0 {
		return nil
	}
	var h maphash.Hash
	h.SetSeed(interned.seed)
	for _, n := range list {
		h.WriteString(n)
		h.WriteByte(0)
	}
	key := h.Sum64()
	interned.Lock()
	defer interned.Unlock()
	live := interned.lists[key][:0]
	for _, wp := range interned.lists[key] {
		if l := wp.Value(); l != nil {
			if slices.Equal(l.list, list) {
				return l
			}
			live = append(live, wp)
		}
	}
	l := &nameList{list: list, set: make(map[string]struct{}, len(list))}
	for _, n := range list {
		l.set[n] = struct{}{}
	}
	interned.lists[key] = append(live, weak.Make(l))
	return l
}
