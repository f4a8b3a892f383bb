// Package discovery watches the Kubernetes API and turns what it sees into immutable
// mesh snapshots (pkg/mesh). It is the only bearkong package that imports client-go
// (beside the typed client of bearkong's own API, pkg/apis/bearkong/v1alpha1, which it
// drives).
//
// It follows kubernetes/sample-controller: shared informers on Services, EndpointSlices
// and Pods in all namespaces, and on Namespaces (their mesh-mtls annotation only), and,
// when their CRDs are served, on HTTPRoutes and AuthorizationPolicies; event
// handlers that only record that something changed; state read back from the listers;
// no work before the caches have synced. Like
// Contour's event coalescing, one worker waits for a quiet period (bounded by a maximum
// delay) before it builds a snapshot, so that a burst of changes, such as a rollout,
// costs one snapshot rather than one per event. A snapshot is published only when its
// meaning differs from the previous one, so resyncs and status noise never reach the
// proxies.
//
// Every replica watches and builds; only the one that holds the leader Lease writes to
// the API (leader.go): Events and statuses (report.go), and the CA root (rootca.go,
// through Leadership). Its writes follow sample-controller too: Events through
// client-go's events recorder, statuses through a rate-limited workqueue with retries.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gwlisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Defaults for Options.
const (
	DefaultQuietPeriod = 100 * time.Millisecond
	DefaultMaxDelay    = time.Second
)

// Object kinds and event types, as they appear in logs and metric labels.
const (
	kindService       = "service"
	kindEndpointSlice = "endpointslice"
	kindPod           = "pod"
	kindHTTPRoute     = "httproute"
	kindNamespace     = "namespace"
	kindAuthzPolicy   = "authorizationpolicy"

	eventAdd    = "add"
	eventUpdate = "update"
	eventDelete = "delete"
)

// Options tune a Discovery. The zero value is usable.
type Options struct {
	// QuietPeriod is how long the worker waits after the latest event before it builds
	// a snapshot; every new event restarts the wait. Default DefaultQuietPeriod.
	QuietPeriod time.Duration
	// MaxDelay bounds the time from the first event of a burst to its snapshot, so a
	// stream of events that never goes quiet still converges. Default DefaultMaxDelay.
	MaxDelay time.Duration
	// ResyncPeriod is the informers' resync period. 0 (the default) disables resyncs:
	// everything is rebuilt from the listers, so a resync has nothing to repair, and
	// resync events are ignored anyway. client-go raises any period below 1s to 1s.
	ResyncPeriod time.Duration
	// Logger receives the package's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives the package's metrics. Nil leaves them unregistered.
	Registerer prometheus.Registerer
	// AllowSkipValidation honours SkipValidationAnnotation on HTTPRoutes. Testing only.
	AllowSkipValidation bool
	// GatewayClient, when set, makes discovery watch HTTPRoutes (gateway.networking.k8s.io)
	// attached to meshed Services and write their status. If the Gateway API CRDs are
	// not installed, HTTPRoutes are ignored, with a log line.
	GatewayClient gwclient.Interface
	// AuthzClient, when set, makes discovery watch AuthorizationPolicies (bearkong.dev)
	// in all namespaces, resolve them into the Services they target and write their
	// status. If the CRD is not installed, policies are ignored, with a log line.
	AuthzClient v1alpha1.Interface
	// DefaultMTLS is the mutual-TLS mode of a meshed Service when neither it nor its
	// Namespace carries a valid mesh-mtls annotation. Default mesh.MTLSStrict.
	DefaultMTLS mesh.MTLSMode
	// LeaderElection, when set, makes this replica write to the API (Events, statuses,
	// and the CA root through Leadership) only while it holds the Lease it names
	// (leader.go). Nil means this replica always writes: one replica, or tests.
	LeaderElection *LeaderElectionConfig
}

// Discovery watches Services, EndpointSlices, Pods and Namespaces and publishes mesh snapshots.
type Discovery struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics

	factory  informers.SharedInformerFactory
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	pods     corelisters.PodLister
	// namespaces holds each Namespace's mesh-mtls annotation and nothing else (see
	// keepNamespaceMTLS).
	namespaces corelisters.NamespaceLister
	// routes is nil unless HTTPRoutes are watched (see Run).
	routes       gwlisters.HTTPRouteLister
	client       kubernetes.Interface
	gwFactory    gwinformers.SharedInformerFactory
	routeLister  gwlisters.HTTPRouteLister
	routesSynced cache.InformerSynced
	// policies is nil unless AuthorizationPolicies are watched (see Run).
	policies      cache.Indexer
	authzInformer cache.SharedIndexInformer
	authzSynced   cache.InformerSynced
	// synced reports whether each handler registration has seen its informer's initial
	// list; it is stricter than the informers' own HasSynced.
	synced []cache.InformerSynced
	// regErr is an error from registering a handler or from the options, reported by Run.
	regErr error

	// mu guards the pending-change record the handlers write and the worker takes.
	mu    sync.Mutex
	dirty bool
	// full asks for a full build; otherwise touched names the only Services whose part
	// of the snapshot changed (incremental.go).
	full    bool
	touched map[string]bool
	firstAt time.Time // the first change not yet folded into a build
	lastAt  time.Time // the latest change, for the quiet period
	// kick wakes the worker; capacity 1 because one wake-up covers any number of events.
	kick chan struct{}

	// builder keeps the last build's Service parts; lastFull is when it last built
	// everything. Only the worker uses them.
	builder  builder
	lastFull time.Time
	builds   *prometheus.CounterVec

	reporter   *reporter
	quarantine *quarantine
	leadership *Leadership
	// health tracks whether the API server answers; every informer's lists and watches
	// go through it (apihealth.go).
	health *apiHealth

	out       chan *mesh.Snapshot
	stopped   chan struct{} // closed when Run returns
	latest    atomic.Pointer[mesh.Snapshot]
	hasSynced atomic.Bool
	running   atomic.Bool
}

// New returns a Discovery that watches through client. Nothing happens until Run.
func New(client kubernetes.Interface, opts Options) *Discovery {
	if opts.QuietPeriod <= 0 {
		opts.QuietPeriod = DefaultQuietPeriod
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	var optErr error
	if opts.DefaultMTLS == "" {
		opts.DefaultMTLS = mesh.MTLSStrict
	} else if _, err := mesh.ParseMTLSMode(string(opts.DefaultMTLS)); err != nil {
		optErr = fmt.Errorf("discovery: default mTLS mode %q: %w", opts.DefaultMTLS, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "discovery")
	if opts.MaxDelay < opts.QuietPeriod {
		// A quiet period longer than the maximum delay could never elapse: the maximum
		// delay would always win. Say so, and make the options tell the truth.
		log.Warn("quiet period longer than max delay; using max delay for both",
			"quiet_period", opts.QuietPeriod, "max_delay", opts.MaxDelay)
		opts.QuietPeriod = opts.MaxDelay
	}
	d := &Discovery{
		opts:    opts,
		log:     log,
		metrics: newMetrics(opts.Registerer),
		factory: informers.NewSharedInformerFactory(client, opts.ResyncPeriod),
		kick:    make(chan struct{}, 1),
		out:     make(chan *mesh.Snapshot, 1),
		stopped: make(chan struct{}),

		quarantine: newQuarantine(),
		regErr:     optErr,
	}
	d.leadership = newLeadership(register(opts.Registerer, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bearkong_leader",
		Help: "1 while this replica holds the leader Lease, or runs without leader election, and so writes to the Kubernetes API; else 0. Every replica serves xDS either way.",
	})))
	if opts.LeaderElection == nil {
		d.leadership.begin(context.Background()) // one term, for good
	} else {
		le := *opts.LeaderElection
		if err := ValidateLeaderElection(&le); err != nil {
			d.regErr = errors.Join(d.regErr, err)
		}
		d.opts.LeaderElection = &le
	}
	d.builds = newBuilds(opts.Registerer)
	d.reporter = newReporter(d, client, opts.GatewayClient, opts.AuthzClient)
	d.client = client
	d.health = newAPIHealth(client, opts.Registerer, log)

	// Every informer is built here, before the factory would build its default one, so
	// that its lists and watches wait for the API prober during an outage rather than
	// for the reflector's backoff (apihealth.go). The listers below then read these.
	d.factory.InformerFor(&corev1.Service{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return d.health.informer(&corev1.Service{}, resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Services(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Services(metav1.NamespaceAll).Watch(ctx, o)
			})
	})
	d.factory.InformerFor(&discoveryv1.EndpointSlice{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return d.health.informer(&discoveryv1.EndpointSlice{}, resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.DiscoveryV1().EndpointSlices(metav1.NamespaceAll).Watch(ctx, o)
			})
	})
	d.factory.InformerFor(&corev1.Pod{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return d.health.informer(&corev1.Pod{}, resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o)
			})
	})
	d.factory.InformerFor(&corev1.Namespace{}, func(c kubernetes.Interface, resync time.Duration) cache.SharedIndexInformer {
		return d.health.informer(&corev1.Namespace{}, resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Namespaces().List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Namespaces().Watch(ctx, o)
			})
	})

	svcInf := d.factory.Core().V1().Services()
	sliceInf := d.factory.Discovery().V1().EndpointSlices()
	podInf := d.factory.Core().V1().Pods()
	nsInf := d.factory.Core().V1().Namespaces()
	d.services = svcInf.Lister()
	d.slices = sliceInf.Lister()
	d.pods = podInf.Lister()
	d.namespaces = nsInf.Lister()
	// Every Namespace is watched (a cluster-scoped list and watch) for one annotation;
	// the transform drops the rest before it reaches the cache, so a cluster of many
	// Namespaces costs a name and a short map each.
	// Pods, Services and EndpointSlices are watched cluster-wide too; their transforms
	// (transform.go) keep what discovery reads.
	for _, t := range []struct {
		kind      string
		informer  cache.SharedIndexInformer
		transform cache.TransformFunc
	}{
		{kindNamespace, nsInf.Informer(), keepNamespaceMTLS},
		{kindPod, podInf.Informer(), keepPod},
		{kindService, svcInf.Informer(), keepService},
		{kindEndpointSlice, sliceInf.Informer(), keepEndpointSlice},
	} {
		if err := t.informer.SetTransform(t.transform); err != nil {
			d.regErr = errors.Join(d.regErr, fmt.Errorf("discovery: %s transform: %w", t.kind, err))
		}
	}

	// The handlers ask which meshed Service's slices name a pod (filter.go).
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{podIndex: slicePods}); err != nil {
		d.regErr = errors.Join(d.regErr, fmt.Errorf("discovery: endpointslice pod index: %w", err))
	}

	for _, inf := range []struct {
		kind     string
		informer cache.SharedIndexInformer
	}{
		{kindService, svcInf.Informer()},
		{kindEndpointSlice, sliceInf.Informer()},
		{kindPod, podInf.Informer()},
		{kindNamespace, nsInf.Informer()},
	} {
		reg, err := inf.informer.AddEventHandler(d.handler(inf.kind))
		if err != nil {
			d.regErr = errors.Join(d.regErr, fmt.Errorf("discovery: add %s event handler: %w", inf.kind, err))
			continue
		}
		d.synced = append(d.synced, reg.HasSynced)
	}
	if opts.GatewayClient != nil {
		d.gwFactory = gwinformers.NewSharedInformerFactory(opts.GatewayClient, opts.ResyncPeriod)
		d.gwFactory.InformerFor(&gwv1.HTTPRoute{}, func(c gwclient.Interface, resync time.Duration) cache.SharedIndexInformer {
			return d.health.informer(&gwv1.HTTPRoute{}, resync,
				func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
					return c.GatewayV1().HTTPRoutes(metav1.NamespaceAll).List(ctx, o)
				},
				func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
					return c.GatewayV1().HTTPRoutes(metav1.NamespaceAll).Watch(ctx, o)
				})
		})
		inf := d.gwFactory.Gateway().V1().HTTPRoutes()
		d.routeLister = inf.Lister()
		reg, err := inf.Informer().AddEventHandler(d.handler(kindHTTPRoute))
		if err != nil {
			d.regErr = errors.Join(d.regErr, fmt.Errorf("discovery: add %s event handler: %w", kindHTTPRoute, err))
		} else {
			d.routesSynced = reg.HasSynced
		}
	}
	if opts.AuthzClient != nil {
		d.authzInformer = newPolicyInformer(d.health, opts.AuthzClient, opts.ResyncPeriod)
		reg, err := d.authzInformer.AddEventHandler(d.handler(kindAuthzPolicy))
		if err != nil {
			d.regErr = errors.Join(d.regErr, fmt.Errorf("discovery: add %s event handler: %w", kindAuthzPolicy, err))
		} else {
			d.authzSynced = reg.HasSynced
		}
	}
	return d
}

// newPolicyInformer is a shared informer on the AuthorizationPolicies of every
// namespace, through the typed client: the informer client-go's generators would write,
// without the generators, and with h's patience during an outage like every other.
func newPolicyInformer(h *apiHealth, c v1alpha1.Interface, resync time.Duration) cache.SharedIndexInformer {
	return h.informer(&v1alpha1.AuthorizationPolicy{}, resync,
		func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return c.AuthorizationPolicies(metav1.NamespaceAll).List(ctx, opts)
		},
		func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return c.AuthorizationPolicies(metav1.NamespaceAll).Watch(ctx, opts)
		})
}

// watchPolicies reports whether the cluster serves AuthorizationPolicies. Like
// HTTPRoutes, they are optional: without the CRD an informer would never sync, and
// bearkong would never become ready; without policies every Service keeps its default.
func (d *Discovery) watchPolicies() bool {
	if d.authzInformer == nil {
		return false
	}
	gv := v1alpha1.SchemeGroupVersion.String()
	list, err := d.client.Discovery().ServerResourcesForGroupVersion(gv)
	if err == nil {
		for _, r := range list.APIResources {
			if r.Name == v1alpha1.Resource {
				return true
			}
		}
	}
	d.log.Warn("the AuthorizationPolicy CRD is not installed: no policy applies; install manifests/crds and restart bearkong to use them",
		"group_version", gv, "err", err)
	return false
}

// watchRoutes reports whether the cluster serves HTTPRoutes. Without the Gateway API
// CRDs an informer would never sync, and bearkong would never become ready.
func (d *Discovery) watchRoutes() bool {
	if d.gwFactory == nil {
		return false
	}
	list, err := d.client.Discovery().ServerResourcesForGroupVersion(gwv1.GroupVersion.String())
	if err == nil {
		for _, r := range list.APIResources {
			if r.Name == "httproutes" {
				return true
			}
		}
	}
	d.log.Warn("the Gateway API CRDs are not installed: HTTPRoutes are ignored; install them and restart bearkong to use them",
		"group_version", gwv1.GroupVersion.String(), "err", err)
	return false
}

// Snapshots delivers published snapshots. It holds at most one: a reader that falls
// behind gets the newest snapshot, never a backlog of stale ones.
func (d *Discovery) Snapshots() <-chan *mesh.Snapshot { return d.out }

// HasSynced reports whether the informer caches have synced and the first snapshot has
// been published, which is what /readyz needs: from then on Latest is never nil.
func (d *Discovery) HasSynced() bool { return d.hasSynced.Load() }

// Stopped is closed when Run has returned: by then the Lease is released (when leader
// election is on) and no write is in flight. A process waits for it before it exits,
// so that another replica takes over at once rather than after the lease duration.
func (d *Discovery) Stopped() <-chan struct{} { return d.stopped }

// Leadership is the signal that gates this replica's writes to the API; the CA root's
// RootPublisher shares it (RootPublisherOptions.Leadership).
func (d *Discovery) Leadership() *Leadership { return d.leadership }

// APIHealth reports whether the Kubernetes API server answers this replica. While it
// does not, Latest stays the last snapshot built, and /readyz says so without failing.
func (d *Discovery) APIHealth() APIHealth { return d.health.health() }

// APIUnreachableSince is APIHealth for internal/controlplane's /readyz: when the API
// stopped answering and why, or a zero time while it answers.
func (d *Discovery) APIUnreachableSince() (time.Time, error) {
	if h := d.APIHealth(); !h.Reachable {
		return h.Since, h.Err
	}
	return time.Time{}, nil
}

// Latest returns the last published snapshot, or nil before the first.
func (d *Discovery) Latest() *mesh.Snapshot { return d.latest.Load() }

// Run starts the informers, waits for their caches to sync, publishes the first
// snapshot and then publishes every meaningful change until ctx is done. It returns nil
// when ctx is cancelled after the caches synced, and an error if they never synced (for
// example because ctx was cancelled first). Run may be called once.
func (d *Discovery) Run(ctx context.Context) error {
	if !d.running.CompareAndSwap(false, true) {
		return errors.New("discovery: Run called more than once")
	}
	defer close(d.stopped)
	if d.regErr != nil {
		return d.regErr
	}

	if le := d.opts.LeaderElection; le != nil {
		// Campaign from the start, alongside the caches' sync: the Lease is about
		// writing, and writing waits for the caches anyway (the reporter starts after
		// them). Run waits for it, so that the Lease is released before Run returns.
		var campaigning sync.WaitGroup
		campaigning.Go(func() { campaign(ctx, d.client, *le, d.leadership, d.log) })
		defer campaigning.Wait()
	}

	// The prober runs for as long as the informers do; Run waits for it.
	var probing sync.WaitGroup
	probing.Go(func() { d.health.run(ctx) })
	defer probing.Wait()

	synced := d.synced
	if d.watchRoutes() {
		d.routes = d.routeLister
		synced = append(slices.Clone(synced), d.routesSynced)
		d.gwFactory.Start(ctx.Done())
		defer d.gwFactory.Shutdown()
	}
	if d.watchPolicies() {
		d.policies = d.authzInformer.GetIndexer()
		synced = append(slices.Clone(synced), d.authzSynced)
		var informerDone sync.WaitGroup
		informerDone.Go(func() { d.authzInformer.RunWithContext(ctx) })
		// Like the factories' Shutdown: nothing outlives Run.
		defer informerDone.Wait()
	}
	d.factory.Start(ctx.Done())
	// Shutdown waits for the informer goroutines, so nothing outlives Run. It runs after
	// ctx is done (Run only returns then), which is what stops the informers.
	defer d.factory.Shutdown()

	d.log.Info("waiting for informer caches to sync")
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		err := ctx.Err()
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("discovery: informer caches did not sync: %w", err)
	}
	d.log.Info("informer caches synced")
	reporterDone := make(chan struct{})
	go func() { d.reporter.run(ctx); close(reporterDone) }()
	defer func() { <-reporterDone }()

	// The first snapshot goes out unconditionally, even if empty: consumers wait for it.
	d.flush(true)

	d.loop(ctx)
	d.log.Info("discovery stopped")
	return nil
}

// handler returns the event handler for one kind. It only records the change: building
// happens in the worker, from the listers, so a handler never blocks the informer.
func (d *Discovery) handler(kind string) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { d.observe(kind, eventAdd, nil, obj) },
		UpdateFunc: func(oldObj, newObj any) {
			// Every write to an object bumps its resourceVersion, so equal versions mean
			// a resync replaying the cache: nothing happened, not even an event to count.
			if sameResourceVersion(oldObj, newObj) {
				return
			}
			d.observe(kind, eventUpdate, oldObj, newObj)
		},
		DeleteFunc: func(obj any) { d.observe(kind, eventDelete, nil, obj) },
	}
}

// observe records one event: unless it cannot change the mesh (filter.go), it marks the
// state dirty and wakes the worker. oldObj is the previous state, for updates only.
func (d *Discovery) observe(kind, event string, oldObj, obj any) {
	now := time.Now()
	d.metrics.events.WithLabelValues(kind, event).Inc()

	// A watch that missed a delete delivers a tombstone; the object inside is the last
	// state the cache knew. The worker rebuilds from the listers, which already dropped
	// the object, so an unreadable tombstone is still worth a rebuild.
	if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = tomb.Obj
		if obj == nil {
			d.log.Warn("tombstone without an object", "kind", kind, "key", tomb.Key)
		}
	}
	if d.ignorable(kind, event, oldObj, obj) {
		d.metrics.ignored.WithLabelValues(kind).Inc()
		if d.log.Enabled(context.Background(), slog.LevelDebug) {
			d.log.Debug("event ignored: it cannot change the mesh", "kind", kind, "event", event, "object", objectKey(obj))
		}
		return
	}
	if d.log.Enabled(context.Background(), slog.LevelDebug) {
		d.log.Debug("event", "kind", kind, "event", event, "object", objectKey(obj))
	}
	keys, ok := touchedServices(d.services, d.sliceIndexer(), kind, oldObj, obj)
	d.mark(now, keys, !ok)
}

// markDirty asks the worker for a new build of everything.
func (d *Discovery) markDirty(now time.Time) { d.mark(now, nil, true) }

// mark asks the worker for a new build: of everything when full, else of the Services
// keys names (none is fine: the build then recomputes only what spans Services).
func (d *Discovery) mark(now time.Time, keys []string, full bool) {
	d.mu.Lock()
	if !d.dirty {
		d.dirty = true
		d.firstAt = now
	}
	d.lastAt = now
	if full {
		d.full = true
	} else if !d.full {
		if d.touched == nil {
			d.touched = map[string]bool{}
		}
		for _, k := range keys {
			d.touched[k] = true
		}
	}
	d.mu.Unlock()

	select {
	case d.kick <- struct{}{}:
	default: // a wake-up is already pending; it will see this change too
	}
}

// loop is the single worker. It waits for a burst of events to go quiet (or for
// MaxDelay to pass since the burst began), then builds and maybe publishes.
func (d *Discovery) loop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		d.mu.Lock()
		dirty, first, last := d.dirty, d.firstAt, d.lastAt
		d.mu.Unlock()

		if !dirty {
			select {
			case <-ctx.Done():
				return
			case <-d.kick:
				continue
			}
		}

		deadline := last.Add(d.opts.QuietPeriod)
		if limit := first.Add(d.opts.MaxDelay); limit.Before(deadline) {
			deadline = limit
		}
		if wait := time.Until(deadline); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-d.kick: // a new event moves the quiet deadline; work it out again
			case <-timer.C:
			}
			timer.Stop()
			continue
		}
		d.flush(false)
	}
}

// flush takes the pending changes, builds a snapshot from the listers and publishes it
// if its meaning changed. The first snapshot (first set) is published whatever it holds.
func (d *Discovery) flush(first bool) {
	d.mu.Lock()
	changedAt := d.firstAt
	// Reset the burst before building: an event that lands during the build starts a new
	// burst with its own time, and a burst that turns out to change nothing takes its
	// start time with it instead of leaking it into the next snapshot's ChangedAt.
	d.dirty = false
	d.firstAt = time.Time{}
	dirty := d.touched
	if dirty == nil {
		dirty = map[string]bool{}
	}
	if d.full {
		dirty = nil
	}
	d.full, d.touched = false, nil
	d.mu.Unlock()

	start := time.Now()
	if first || start.Sub(d.lastFull) >= fullBuildEvery {
		dirty = nil // the safety net: a full build now and then
	}
	d.liftQuarantines()
	opts := &buildOptions{held: d.quarantine.view(), skipValidation: d.opts.AllowSkipValidation,
		namespaces: d.namespaces, defaultMTLS: d.opts.DefaultMTLS}
	snap, statuses, err := d.builder.build(dirty, d.services, d.slices, d.pods, d.routes, opts)
	elapsed := time.Since(start)
	d.metrics.buildSeconds.Observe(elapsed.Seconds())
	if d.builder.wasFull {
		d.lastFull = start
		d.builds.WithLabelValues(buildFull).Inc()
	} else {
		d.builds.WithLabelValues(buildIncremental).Inc()
	}
	if err != nil {
		// Listers read an in-memory cache, so this is not expected; keep the last good
		// snapshot in force rather than publish a partial one.
		d.metrics.snapshots.WithLabelValues(resultError).Inc()
		d.log.Error("build snapshot", "err", err)
		return
	}
	if changedAt.IsZero() {
		// The first snapshot of an empty cluster has no event to date it from.
		changedAt = start
	}
	snap.ChangedAt = changedAt
	if d.policies != nil {
		// Policies change only the model of the Services they target, so a policy
		// change reaches only the proxies that serve them (pkg/translate).
		policies := cachedPolicies(d.policies)
		ownTargets(snap, policies)
		d.reporter.syncPolicyStatuses(authorize(snap, d.services, policies))
	}
	d.applyVerdict(d.quarantine.skipProbe(snap))
	// Route statuses are compared with what the routes say on every build, published
	// or not: someone may have changed a status, and only a difference is written.
	d.reporter.syncRouteStatuses(statuses)

	if !first && sameMeaning(d.latest.Load(), snap) {
		d.metrics.snapshots.WithLabelValues(resultUnchanged).Inc()
		d.log.Debug("snapshot unchanged", "build_duration", elapsed)
		return
	}
	d.publish(snap, first)
	d.metrics.snapshots.WithLabelValues(resultPublished).Inc()
	d.log.Info("snapshot published",
		"services", len(snap.Services),
		"proxies", len(snap.Proxies),
		"endpoints", countEndpoints(snap),
		"changed_at", snap.ChangedAt,
		"build_duration", elapsed,
		"full_build", d.builder.wasFull,
	)
}

// publish makes snap the latest and hands it to the reader, replacing any snapshot the
// reader has not taken yet. Only the worker publishes, so after the drain the send
// cannot block. With the first snapshot it also marks Discovery synced, before the
// send, so a reader that has the first snapshot also sees HasSynced and Latest.
func (d *Discovery) publish(snap *mesh.Snapshot, first bool) {
	d.reporter.report(d.latest.Load(), snap)
	d.latest.Store(snap)
	if first {
		d.hasSynced.Store(true)
	}
	select {
	case <-d.out:
	default:
	}
	d.out <- snap
}

// cachedPolicies returns the policies in the informer's cache (shared: read only).
func cachedPolicies(idx cache.Indexer) []*v1alpha1.AuthorizationPolicy {
	objs := idx.List()
	out := make([]*v1alpha1.AuthorizationPolicy, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*v1alpha1.AuthorizationPolicy); ok {
			out = append(out, p)
		}
	}
	return out
}

func sameResourceVersion(oldObj, newObj any) bool {
	o, ok1 := oldObj.(metav1.Object)
	n, ok2 := newObj.(metav1.Object)
	// An empty resourceVersion proves nothing (only fakes and hand-made objects lack
	// one); treat it as a real update, which at worst costs an unchanged rebuild.
	return ok1 && ok2 && o.GetResourceVersion() != "" && o.GetResourceVersion() == n.GetResourceVersion()
}

func objectKey(obj any) string {
	if m, ok := obj.(metav1.Object); ok {
		if m.GetNamespace() == "" {
			return m.GetName()
		}
		return m.GetNamespace() + "/" + m.GetName()
	}
	return fmt.Sprintf("%T", obj)
}

func countEndpoints(s *mesh.Snapshot) int {
	n := 0
	for _, svc := range s.Services {
		n += len(svc.Endpoints)
	}
	return n
}

// keepNamespaceMTLS is the Namespace informer's transform: it keeps what discovery
// reads (the name and the mesh-mtls annotation) and what the informer and the Events
// need (resourceVersion, UID), and drops the rest
// (https://pkg.go.dev/k8s.io/client-go/tools/cache#TransformFunc). A tombstone passes
// as it is: what it holds was transformed on the way in.
func keepNamespaceMTLS(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	out := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name, UID: ns.UID, ResourceVersion: ns.ResourceVersion}}
	if v, ok := ns.Annotations[mesh.AnnotationMTLS]; ok {
		out.Annotations = map[string]string{mesh.AnnotationMTLS: v}
	}
	return out, nil
}

// sameNamespaceMTLS reports whether two states of a Namespace say the same about
// mesh-mtls (both absent counts as the same).
func sameNamespaceMTLS(oldObj, newObj any) bool {
	o, ok1 := oldObj.(*corev1.Namespace)
	n, ok2 := newObj.(*corev1.Namespace)
	if !ok1 || !ok2 {
		return false
	}
	ov, oset := o.Annotations[mesh.AnnotationMTLS]
	nv, nset := n.Annotations[mesh.AnnotationMTLS]
	return ov == nv && oset == nset
}
