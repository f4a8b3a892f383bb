// Package translate turns a mesh snapshot and a proxy's identity into the Envoy resources
// the proxy gets over ADS (clusters, endpoints, listeners, routes), and writes the Envoy
// bootstrap that points a sidecar at the control plane.
//
// It is the only package that builds Envoy config, and it knows neither gRPC nor
// Kubernetes: every builder is a pure function of its inputs, named for what it returns
// (Cluster, ClusterLoadAssignment, InboundListener, OutboundRouteConfiguration, ...).
//
// Sidecars talk mutual TLS to each other: clusters and inbound listeners refer to two
// SDS secrets by name (WorkloadSecretName, TrustBundleSecretName) on the ADS stream. The
// secrets' content is per proxy and comes from the certificate authority, not from the
// snapshot, so a Translator does not hold them; the control plane builds them with
// WorkloadSecret and TrustBundleSecret.
//
// A Translator is built once per snapshot. It builds and marshals the resources that
// every proxy shares (one cluster and one ClusterLoadAssignment per meshed Service) once,
// and the per-proxy pieces lazily, cached by exactly what they depend on, so that proxies
// that would get identical bytes share one *resource.Resource: every proxy with the same
// listen and outbound IPs and mTLS mode shares its listeners (and, once some Service
// logs its requests, the same Services too: the lines name them), every proxy in a namespace shares its short-name scopes,
// the replicas of an app share their inbound routes. Those keys come from the client, so
// the caches are bounded by what the snapshot holds: every namespace without a meshed
// Service shares one outbound entry, and the addresses of pods the snapshot does not know
// share a small LRU (see boundedMemo). Output is sorted and marshalled
// deterministically, so equal snapshots give equal versions, across restarts too.
//
// Consecutive Translators share what did not change: a Service's resources are built
// once per *mesh.Service (which discovery hands every snapshot until the Service
// changes: routingOf, clusterOf), the shared sets are edited from the last Translator's
// (reuse), and a proxy's listeners and local-app cluster are built once per key while
// they live (liveSets). A change costs what it touched, and the Translators still held
// (a config some stream has not left yet) hold one copy of the rest.
package translate

import (
	"container/list"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"weak"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// Translator holds the Envoy resources of one snapshot. It is immutable apart from its
// caches, and safe for concurrent use.
type Translator struct {
	snap *mesh.Snapshot
	opts Options

	// Shared by every proxy.
	clusters  *resource.Set // one EDS cluster per Service
	endpoints *resource.Set // one ClusterLoadAssignment per Service
	routes    *resource.Set // one route configuration per Service (ServiceRouteConfiguration)
	scopes    *resource.Set // one "<name>.<namespace>" scope per Service (ServiceScope)

	// Per-proxy pieces, keyed by what they depend on. A key is part of what a client
	// sends, so no cache may grow with what a client invents (issue 16): the addresses
	// of nodes whose pod the snapshot does not know go to a small LRU, a namespace
	// without a meshed Service reads as the one unknown namespace, and inbound routes
	// are keyed by what the snapshot says the pod serves.
	listeners boundedMemo[*resource.Set] // by Node.ListenIP, Node.OutboundIP and the inbound mTLS mode
	localApps boundedMemo[*resource.Set] // by Node.AppAddress
	local     memo[*resource.Set]        // short-name scopes, by Node.PodNamespace if it has Services, else unknownNamespace
	inbound   memo[*resource.Set]        // by the keys of the Services the proxy serves
	// knownLimit bounds the entries of known pods' addresses: one per pod at most
	// (replicas usually share one), plus some slack for a pod that restarts with a
	// new address before the snapshot says so.
	knownLimit int
	// accessLogs: some Service of the snapshot logs its requests (accesslog.go).
	accessLogs bool

	// built holds, in the order of snap.Services, each Service's cluster, assignment,
	// route configuration and scope: the lists the shared sets were made from, which the
	// next Translator takes for the Services its snapshot shares with this one.
	built serviceResources
}

// serviceResources are the shared resources of a snapshot's Services, one slice per
// set, each in the order of the Services.
type serviceResources struct{ clusters, clas, routes, scopes []*resource.Resource }

// last is the Translator built most recently, weakly, with its options: the next
// NewWithOptions with the same options starts from it (see reuse).
var last struct {
	sync.Mutex
	tr   weak.Pointer[Translator]
	opts Options
}

// Options are the inputs of a Translator that do not come from Kubernetes objects: the
// control plane's own settings.
type Options struct {
	// ClusterDomain is the cluster's DNS domain (default DefaultClusterDomain): the
	// outbound routes accept "service: <name>.<namespace>.svc.<ClusterDomain>".
	ClusterDomain string
	// TrustDomain is the SPIFFE trust domain of workload identities (default
	// DefaultTrustDomain): callers check that a callee's certificate names
	// spiffe://<TrustDomain>/ns/<namespace>/sa/<serviceaccount>, and inbound listeners
	// accept any client certificate under spiffe://<TrustDomain>/.
	TrustDomain string
	// DefaultMTLS is the inbound mTLS mode of a proxy whose pod the snapshot does not
	// know ("" reads as mesh.MTLSStrict). A known pod takes its mesh.Proxy.MTLS.
	DefaultMTLS mesh.MTLSMode
	// DefaultDeny makes the mesh deny by default: a proxy whose Services have no
	// enforced ALLOW AuthorizationPolicy denies every request (DefaultDenyBody). Off, a
	// Service without policy lets every caller in.
	DefaultDeny bool
	// DefaultAccessLog is the access-log format of a Service without a valid
	// mesh-access-log annotation ("" reads as off); see accesslog.go.
	DefaultAccessLog mesh.AccessLogFormat
}

// DefaultClusterDomain is Kubernetes' default cluster domain (the kubelet's
// --cluster-domain).
const DefaultClusterDomain = "cluster.local"

// New is NewWithOptions with the default options.
func New(snap *mesh.Snapshot) (*Translator, error) { return NewWithOptions(snap, Options{}) }

// NewWithOptions checks snap and builds the resources every proxy shares. It fails on a snapshot
// that breaks the mesh model's promises (unsorted or duplicate Services, names that
// would make ambiguous cluster names, endpoint addresses that are not IPs): that is a bug
// upstream, and config built on it would be wrong or rejected by Envoy.
func NewWithOptions(snap *mesh.Snapshot, opts Options) (*Translator, error) {
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = DefaultClusterDomain
	}
	if err := ValidateClusterDomain(opts.ClusterDomain); err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = DefaultTrustDomain
	}
	if err := ValidateTrustDomain(opts.TrustDomain); err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}
	if err := ValidateMTLSMode(opts.DefaultMTLS); err != nil {
		return nil, fmt.Errorf("translate: default mode: %w", err)
	}
	opts.DefaultMTLS = opts.DefaultMTLS.Effective()
	if snap == nil {
		return nil, errors.New("translate: nil snapshot")
	}
	var prev *Translator
	last.Lock()
	if last.opts == opts {
		prev = last.tr.Value()
	}
	last.Unlock()
	from := reuse(prev, snap.Services)
	if err := checkServices(snap.Services, from); err != nil {
		return nil, fmt.Errorf("translate: snapshot: %w", err)
	}
	// Transport sockets are built and packed once per distinct upstreamTLSKey, not once
	// per Service: the packing is most of a cluster's cost.
	var sockets memo[*corev3.TransportSocket]
	n := len(snap.Services)
	b := serviceResources{
		clusters: make([]*resource.Resource, n),
		clas:     make([]*resource.Resource, n),
		routes:   make([]*resource.Resource, n),
		scopes:   make([]*resource.Resource, n),
	}
	var todo []int
	for i, j := range from {
		if j < 0 {
			todo = append(todo, i)
			continue
		}
		b.clusters[i], b.clas[i] = prev.built.clusters[j], prev.built.clas[j]
		b.routes[i], b.scopes[i] = prev.built.routes[j], prev.built.scopes[j]
	}
	if err := parallelChunks(len(todo), func(lo, hi int) error {
		for _, i := range todo[lo:hi] {
			svc := snap.Services[i]
			// One weak pointer for both caches: making one looks the Service's span up.
			wp := weak.Make(svc)
			c, err := clusterOf(svc, wp, opts, &sockets)
			if err != nil {
				return err
			}
			b.clusters[i], b.clas[i] = c.cluster, c.cla
			r, err := routingOf(svc, wp)
			if err != nil {
				return err
			}
			b.routes[i], b.scopes[i] = r.routes, r.scope
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("translate: %w", err)
	}
	var sets [4]*resource.Set
	if prev != nil {
		sets = [4]*resource.Set{prev.clusters, prev.endpoints, prev.routes, prev.scopes}
	}
	t := &Translator{
		snap:       snap,
		opts:       opts,
		clusters:   resource.NewSetFrom(sets[0], b.clusters),
		endpoints:  resource.NewSetFrom(sets[1], b.clas),
		routes:     resource.NewSetFrom(sets[2], b.routes),
		scopes:     resource.NewSetFrom(sets[3], b.scopes),
		knownLimit: len(snap.Proxies) + unknownEntries,
		accessLogs: anyAccessLog(snap.Services, opts.DefaultAccessLog),
		built:      b,
	}
	last.Lock()
	last.tr, last.opts = weak.Make(t), opts
	last.Unlock()
	return t, nil
}

// reuse returns, for each of services, the position in prev's snapshot of the very
// same *mesh.Service, or -1: a Service whose resources prev built. Both lists are sorted
// by namespace then name (prev's was checked; an unsorted services finds less, and
// checkServices rejects it).
//
// Why: discovery hands every snapshot the same *mesh.Service for each Service a change
// did not touch, and nearly every change touches one. Looking every Service up in the
// caches of its resources (a weak pointer, two maps) and building the four shared sets
// anew cost 43 ms per endpoint change at S=10,000 (BenchmarkNew); comparing pointers
// costs next to nothing, and the sets are edited from prev's (resource.NewSetFrom):
// 2 ms.
func reuse(prev *Translator, services []*mesh.Service) []int {
	from := make([]int, len(services))
	var old []*mesh.Service
	if prev != nil {
		old = prev.snap.Services
	}
	j := 0
	for i, svc := range services {
		from[i] = -1
		if svc == nil {
			continue
		}
		for j < len(old) && old[j] != svc && serviceLess(old[j], svc) {
			j++
		}
		if j < len(old) && old[j] == svc {
			from[i] = j
			j++
		}
	}
	return from
}

// serviceLess orders Services by namespace then name, as a snapshot lists them.
func serviceLess(a, b *mesh.Service) bool {
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// serviceCluster is a Service's cluster and ClusterLoadAssignment, marshalled.
type serviceCluster struct{ cluster, cla *resource.Resource }

// clusterKey is what a serviceCluster depends on: the Service, and the options its
// cluster reads (the trust domain of its upstream TLS, the default access log).
type clusterKey struct {
	svc         weak.Pointer[mesh.Service]
	trustDomain string
	accessLog   mesh.AccessLogFormat
}

// serviceClusters holds the serviceCluster of each live *mesh.Service (and options),
// weakly, as routings does the routing: an entry goes when its Service is collected.
//
// Why: a Translator would otherwise marshal every Service's cluster and assignment
// again on every change (11 ms at S=1000, 170 ms at S=10,000, BenchmarkNew), and every
// Translator still alive (a config some stream has not left yet, one the control plane
// translates again for the quarantine) would hold a copy of all of them. Discovery hands
// the next snapshot the very *mesh.Service of each Service that did not change, so a
// change costs the resources of what it touched, and consecutive Translators share the
// rest. Both resources depend on the key alone (clusterWith, upstreamTLS,
// ServiceAccessLog, ClusterLoadAssignment), so a reused one is byte for byte what
// building it again would give.
var serviceClusters perService[clusterKey, *serviceCluster]

// clusterOf returns svc's cluster and assignment under opts, built once per
// *mesh.Service (wp is weak.Make(svc)) and options; sockets shares transport sockets
// within one New.
func clusterOf(svc *mesh.Service, wp weak.Pointer[mesh.Service], opts Options, sockets *memo[*corev3.TransportSocket]) (*serviceCluster, error) {
	key := clusterKey{svc: wp, trustDomain: opts.TrustDomain, accessLog: opts.DefaultAccessLog}
	return serviceClusters.get(svc, key, func() (*serviceCluster, error) {
		name := ClusterName(svc)
		var ts *corev3.TransportSocket
		if svc.MTLS.Effective() != mesh.MTLSDisable {
			ts, _ = sockets.get(upstreamTLSKey(svc), func() (*corev3.TransportSocket, error) {
				return upstreamTLS(svc, opts.TrustDomain), nil
			})
		}
		cluster, err := resource.New(resource.Cluster, name, setClusterAccessLog(clusterWith(svc, ts), ServiceAccessLog(svc, opts.DefaultAccessLog)))
		if err != nil {
			return nil, err
		}
		cla, err := resource.New(resource.Endpoint, name, ClusterLoadAssignment(svc))
		if err != nil {
			return nil, err
		}
		return &serviceCluster{cluster: cluster, cla: cla}, nil
	})
}

// Snapshot returns the snapshot t was built from.
func (t *Translator) Snapshot() *mesh.Snapshot { return t.snap }

// Proxy returns the whole config of the proxy n: its views per type are
//
//	Cluster:     [service clusters (shared), local-app (per AppAddress)]
//	Endpoint:    [service ClusterLoadAssignments (shared)]
//	Listener:    [inbound and outbound listeners (per ListenIP, OutboundIP and mTLS mode)]
//	ScopedRoute: [full-name scopes (shared), short-name scopes (per namespace)]
//	Route:       [service route configurations (shared), inbound routes (per served Services)]
//
// Names never repeat across the sets of a view. A proxy whose pod is not in the snapshot
// (not yet seen, or selected by no meshed Service) still gets everything, with inbound
// routes for no Service and an empty Serves.
//
// Proxy is safe for concurrent use; each shared piece is built once, by whichever call
// needs it first, while concurrent callers for the same piece wait for it.
func (t *Translator) Proxy(n Node) (*resource.Proxy, error) {
	n = n.withDefaults()
	if err := n.Validate(); err != nil {
		return nil, fmt.Errorf("translate: node %q: %w", n.ID, err)
	}
	var serves []string
	mode := t.opts.DefaultMTLS
	p := t.snap.Proxy(n.PodNamespace, n.PodName)
	if p != nil {
		serves = slices.Clone(p.Services)
		mode = p.MTLS.Effective()
	}
	known := p != nil

	listenIP, outboundIP, appAddress, namespace, td, defaultDeny, domain := n.ListenIP, n.OutboundIP, n.AppAddress, n.PodNamespace, t.opts.TrustDomain, t.opts.DefaultDeny, t.opts.ClusterDomain
	// With access logs anywhere in the mesh, the listeners name the Services the proxy
	// serves in their lines (accesslog.go), so they are shared by the proxies that serve
	// the same Services; without, by address and mode alone.
	listenerKey := listenIP + " " + outboundIP + " " + string(mode)
	var inLog mesh.AccessLogFormat
	logs := t.accessLogs
	if logs {
		inLog = inboundAccessLogFormat(t.services(serves), t.opts.DefaultAccessLog)
		listenerKey += " " + string(inLog) + " " + strings.Join(serves, "\x00")
	}
	listeners, err := t.listeners.get(listenerKey, known, t.knownLimit, func() (*resource.Set, error) {
		// Everything the listeners depend on: the key, and the options it leaves out.
		key := listenerKey + "\x00" + td + "\x00" + domain + "\x00" + strconv.FormatBool(logs)
		return listenerSets.get(key, func() (*resource.Set, error) {
			n := Node{ListenIP: listenIP, OutboundIP: outboundIP}
			in, out := InboundListener(n, mode, td), OutboundListener(n, domain)
			if logs {
				in, out = withAccessLogs(in, inboundAccessLogs(inLog, serves)), withAccessLogs(out, outboundAccessLogs(serves))
			}
			return newSet(resource.Listener, in, out)
		})
	})
	if err != nil {
		return nil, err
	}
	localApp, err := t.localApps.get(appAddress, known, t.knownLimit, func() (*resource.Set, error) {
		return localAppSets.get(appAddress, func() (*resource.Set, error) {
			return newSet(resource.Cluster, LocalAppCluster(Node{AppAddress: appAddress}))
		})
	})
	if err != nil {
		return nil, err
	}
	// Only the short-name scopes depend on the namespace, and a namespace without
	// Services has none: every such namespace gets the same (empty) set, so they share
	// one entry, whatever a client names (TestUnknownNamespacesShareOutboundRoutes).
	if !t.hasServices(namespace) {
		namespace = unknownNamespace
	}
	local, err := t.local.get(namespace, func() (*resource.Set, error) {
		return t.localScopes(namespace)
	})
	if err != nil {
		return nil, err
	}
	inbound, err := t.inbound.get(strings.Join(serves, "\x00"), func() (*resource.Set, error) {
		svcs := t.services(serves)
		build := func() (*resource.Set, error) {
			return newSet(resource.Route, InboundRouteConfiguration(svcs, td, defaultDeny))
		}
		if len(svcs) != 1 {
			return build()
		}
		return inboundSets.get(svcs[0], inboundKey{svc: weak.Make(svcs[0]), trustDomain: td, defaultDeny: defaultDeny}, build)
	})
	if err != nil {
		return nil, err
	}

	return &resource.Proxy{
		Views: [resource.NumTypes]resource.View{
			resource.Cluster:     {t.clusters, localApp},
			resource.Endpoint:    {t.endpoints},
			resource.Listener:    {listeners},
			resource.ScopedRoute: {t.scopes, local},
			resource.Route:       {t.routes, inbound},
		},
		Serves: serves,
	}, nil
}

// localScopes returns the short-name scopes of the proxies in namespace: one per
// Service of the namespace, keyed by its name (see ServiceScope). Short names have no
// dot and full names one, so they never clash with the shared full-name scopes.
func (t *Translator) localScopes(namespace string) (*resource.Set, error) {
	var rs []*resource.Resource
	svcs := t.snap.Services // sorted by namespace (checkServices)
	for i := sort.Search(len(svcs), func(i int) bool { return svcs[i].Namespace >= namespace }); i < len(svcs) && svcs[i].Namespace == namespace; i++ {
		r, err := shortScopeOf(svcs[i])
		if err != nil {
			return nil, fmt.Errorf("translate: %w", err)
		}
		rs = append(rs, r)
	}
	return resource.NewSet(rs...), nil
}

// inboundKey is what the inbound routes of a proxy that serves one Service depend on
// (InboundRouteConfiguration): the Service, and the options they read.
type inboundKey struct {
	svc         weak.Pointer[mesh.Service]
	trustDomain string
	defaultDeny bool
}

// inboundSets holds the inbound routes of the proxies of each live *mesh.Service that
// serve it alone, and shortScopes the short-name scope of each, weakly, as
// serviceClusters does the clusters: an entry goes when its Service is collected.
//
// Why: every change made every proxy's next config, and a Translator built each proxy's
// inbound routes and its namespace's short-name scopes again, marshalled: 16 ms for one
// proxy of each of 1000 Services, 150-230 ms at 10,000 (BenchmarkProxy's next-snapshot),
// whatever the change touched. Discovery hands the next snapshot the very *mesh.Service
// of each Service that did not change, so those are now built once per Service.
var (
	inboundSets perService[inboundKey, *resource.Set]
	shortScopes perService[weak.Pointer[mesh.Service], *resource.Resource]
)

// shortScopeOf returns svc's scope keyed by its name alone (ServiceScope), for the
// proxies of its namespace, built once per *mesh.Service.
func shortScopeOf(svc *mesh.Service) (*resource.Resource, error) {
	return shortScopes.get(svc, weak.Make(svc), func() (*resource.Resource, error) {
		return resource.New(resource.ScopedRoute, svc.Name, ServiceScope(svc.Name, svc))
	})
}

// services looks up Service keys in the snapshot, skipping unknown ones.
func (t *Translator) services(keys []string) []*mesh.Service {
	out := make([]*mesh.Service, 0, len(keys))
	for _, k := range keys {
		if svc := t.snap.Service(mesh.SplitKey(k)); svc != nil {
			out = append(out, svc)
		}
	}
	return out
}

// named is every resource message this package builds: each has a name.
type named interface {
	proto.Message
	GetName() string
}

// newSet marshals msgs into a set of type t.
func newSet(t resource.Type, msgs ...named) (*resource.Set, error) {
	rs := make([]*resource.Resource, len(msgs))
	for i, m := range msgs {
		r, err := resource.New(t, m.GetName(), m)
		if err != nil {
			return nil, fmt.Errorf("translate: %w", err)
		}
		rs[i] = r
	}
	return resource.NewSet(rs...), nil
}

// checkServices checks what the translation relies on: Services sorted by namespace then
// name without duplicates (mesh.Snapshot.Service searches them, and cluster names must
// be unique), dot-free names (cluster names are "<name>.<namespace>") and IP endpoints.
// from is reuse's: a Service that the last snapshot held was checked with it, and two
// such Services are in that snapshot's order (reuse walks it forwards), which was checked.
func checkServices(services []*mesh.Service, from []int) error {
	var prev *mesh.Service
	for i, svc := range services {
		if svc == nil {
			return fmt.Errorf("service %d is nil", i)
		}
		if i > 0 && from[i] >= 0 && from[i-1] >= 0 {
			prev = svc
			continue
		}
		if prev != nil && !serviceLess(prev, svc) {
			return fmt.Errorf("services are not sorted by namespace then name without duplicates: %q comes after %q", svc.Key(), prev.Key())
		}
		prev = svc
		if from[i] >= 0 {
			continue
		}
		if !isDNSLabel(svc.Namespace) {
			return fmt.Errorf("service %q: namespace %q is not an RFC 1123 label", svc.Key(), svc.Namespace)
		}
		if !isDNSLabel(svc.Name) {
			return fmt.Errorf("service %q: name %q is not an RFC 1123 label", svc.Key(), svc.Name)
		}
		for _, ep := range svc.Endpoints {
			if a, err := netip.ParseAddr(ep.IP); err != nil || a.Zone() != "" {
				return fmt.Errorf("service %q: endpoint %q (pod %q) is not an IP address", svc.Key(), ep.IP, ep.Pod)
			}
		}
	}
	return nil
}

// minChunk is the fewest Services worth a goroutine of their own in New.
const minChunk = 256

// parallelChunks calls f on consecutive chunks of [0, n), one goroutine per chunk and at
// most GOMAXPROCS chunks, and returns the first error. Building the shared resources of
// a large mesh is CPU-bound and sits on the path from a Kubernetes change to the
// proxies, so it uses every core.
func parallelChunks(n int, f func(lo, hi int) error) error {
	chunks := min(runtime.GOMAXPROCS(0), n/minChunk)
	if chunks <= 1 {
		return f(0, n)
	}
	errs := make([]error, chunks)
	var wg sync.WaitGroup
	for c := range chunks {
		lo, hi := n*c/chunks, n*(c+1)/chunks
		wg.Go(func() { errs[c] = f(lo, hi) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// memo builds each value once per key and shares it. Concurrent callers of a key that is
// being built wait for it. A failed build is not retried: builds are deterministic, so it
// would fail again; a build that panics panics again for every caller of its key.
type memo[V any] struct {
	m sync.Map // key string -> func() (V, error), from sync.OnceValues
}

func (c *memo[V]) get(key string, build func() (V, error)) (V, error) {
	f, ok := c.m.Load(key)
	if !ok {
		f, _ = c.m.LoadOrStore(key, sync.OnceValues(build))
	}
	return f.(func() (V, error))()
}

// liveSets files the sets built for a key while they live, so that the Translators of
// consecutive snapshots give a proxy the same set for the same key: each entry is weak,
// and goes when its set is collected (when no Translator's cache and no stream holds it
// any more), so it holds no more than the Translators' bounded caches do (see
// boundedMemo). Only for sets that are a function of their key alone.
type liveSets struct {
	m sync.Map // key string -> weak.Pointer[resource.Set]
}

// Why: a proxy's listeners and local-app cluster depend on its addresses, its mode and
// the options, not on the snapshot; a Translator is built per snapshot, and each one
// built and marshalled them again for every proxy on every change. The new sets lived
// on while the old ones went, which after a series of changes left the heap fragmented
// (issue 14) besides the CPU.
var listenerSets, localAppSets liveSets

type liveEntry struct {
	key string
	wp  weak.Pointer[resource.Set]
}

// get returns the live set filed under key, or build's, then filed there.
func (c *liveSets) get(key string, build func() (*resource.Set, error)) (*resource.Set, error) {
	if v, ok := c.m.Load(key); ok {
		if s := v.(weak.Pointer[resource.Set]).Value(); s != nil {
			return s, nil
		}
	}
	s, err := build()
	if err != nil {
		return nil, err
	}
	wp := weak.Make(s)
	for {
		v, loaded := c.m.LoadOrStore(key, wp)
		if !loaded {
			runtime.AddCleanup(s, func(e liveEntry) { c.m.CompareAndDelete(e.key, e.wp) }, liveEntry{key, wp})
			return s, nil
		}
		if live := v.(weak.Pointer[resource.Set]).Value(); live != nil {
			return live, nil // another caller filed one first
		}
		c.m.CompareAndDelete(key, v) // a dead entry whose cleanup has not run yet
	}
}

// len counts the entries, for tests.
func (c *liveSets) len() int {
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	return n
}

// unknownNamespace is the short-name scopes' cache key of every namespace without a
// meshed Service. It is no valid namespace (Node.Validate refuses an empty one), and
// localScopes finds no Service in it.
const unknownNamespace = ""

// hasServices reports whether the snapshot has a meshed Service in namespace.
func (t *Translator) hasServices(namespace string) bool {
	svcs := t.snap.Services
	i := sort.Search(len(svcs), func(i int) bool { return svcs[i].Namespace >= namespace })
	return i < len(svcs) && svcs[i].Namespace == namespace
}

// unknownEntries bounds the cache entries of addresses that no known pod sent: enough
// for the proxies that connect before the snapshot knows their pod, few enough that a
// client inventing addresses costs a handful of KiB in all.
const unknownEntries = 64

// boundedMemo is a memo whose entries are bounded: keys of known pods (first come, up to
// a limit the caller gives) are kept for the snapshot's life and shared; every other key
// lives in a small LRU, so an invented one is built, used and soon forgotten. Dropping an
// entry costs only a rebuild: versions are content hashes, so an equal set built again
// pushes nothing.
type boundedMemo[V any] struct {
	known memo[V]
	n     atomic.Int64 // keys admitted to known, an upper bound on its entries
	other lru[V]
}

func (b *boundedMemo[V]) get(key string, known bool, limit int, build func() (V, error)) (V, error) {
	if known {
		if f, ok := b.known.m.Load(key); ok {
			return f.(func() (V, error))()
		}
		if b.n.Add(1) <= int64(limit) {
			return b.known.get(key, build)
		}
	}
	return b.other.get(key, build)
}

func (b *boundedMemo[V]) len() int {
	n := 0
	b.known.m.Range(func(any, any) bool { n++; return true })
	b.other.mu.Lock()
	n += len(b.other.m)
	b.other.mu.Unlock()
	return n
}

// lru is a memo of at most unknownEntries keys, least recently used first out.
type lru[V any] struct {
	mu sync.Mutex
	ll list.List // of *lruEntry[V], most recent first
	m  map[string]*list.Element
}

type lruEntry[V any] struct {
	key string
	f   func() (V, error)
}

func (c *lru[V]) get(key string, build func() (V, error)) (V, error) {
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[string]*list.Element)
	}
	e, ok := c.m[key]
	if ok {
		c.ll.MoveToFront(e)
	} else {
		e = c.ll.PushFront(&lruEntry[V]{key: key, f: sync.OnceValues(build)})
		c.m[key] = e
		if c.ll.Len() > unknownEntries {
			old := c.ll.Remove(c.ll.Back()).(*lruEntry[V])
			delete(c.m, old.key)
		}
	}
	f := e.Value.(*lruEntry[V]).f
	c.mu.Unlock()
	return f()
}

// cacheEntries counts the entries of the per-proxy caches, for tests.
func (t *Translator) cacheEntries() int {
	n := t.listeners.len() + t.localApps.len()
	for _, m := range []*sync.Map{&t.local.m, &t.inbound.m} {
		m.Range(func(any, any) bool { n++; return true })
	}
	return n
}
