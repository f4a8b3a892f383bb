package discovery

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// The ConfigMap through which sidecars get the CA's root. A pod's init container needs
// the root to verify bearkong's xDS server before it trusts anything that server says,
// and it cannot fetch it over the network without already trusting something; a
// ConfigMap volume is delivered by the kubelet from the API server, which the pod already
// trusts. Istio publishes its root the same way (istio-ca-root-cert). The key is the one
// kube-root-ca.crt uses.
const (
	RootConfigMapName = "bearkong-ca-root"
	RootConfigMapKey  = "ca.crt"
)

// The label that marks the ConfigMaps bearkong writes (the well-known label of
// https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "bearkong"
)

// Defaults for RootPublisherOptions.
const (
	DefaultRootRetryInterval  = 5 * time.Second
	DefaultRootResyncInterval = time.Minute
)

// rootRequestTimeout bounds each namespace's reads and writes, so that one slow request
// does not hold up the others for long.
const rootRequestTimeout = 10 * time.Second

// RootPublisherOptions tune a RootPublisher. The zero value is usable.
type RootPublisherOptions struct {
	// Logger receives the publisher's logs. Nil discards them.
	Logger *slog.Logger
	// Registerer receives its metrics. Nil leaves them unregistered. The write counter
	// is bearkong_kube_api_writes_total, shared with a Discovery on the same registry.
	Registerer prometheus.Registerer
	// RetryInterval is how often Run retries the namespaces whose last write failed.
	// Default DefaultRootRetryInterval.
	RetryInterval time.Duration
	// ResyncInterval is how often Run reads every ConfigMap back and puts back the ones
	// that were edited or deleted. bearkong does not watch ConfigMaps (that would take
	// list and watch on top of get, create and update), so this is how a change made by
	// someone else is undone. Each resync costs one GET per namespace and no write when
	// all is well. Default DefaultRootResyncInterval.
	ResyncInterval time.Duration
	// Leadership gates the writes: with it, the publisher writes only while this
	// replica leads (Discovery.Leadership), and checks every namespace when a term
	// begins; Publish between terms only remembers what to publish. Nil means it
	// always writes.
	Leadership *Leadership
}

// RootPublisher keeps ConfigMap bearkong-ca-root, key ca.crt, equal to the CA's trust
// bundle in every namespace it is given. It writes only what is missing or differs, and
// remembers what it wrote, so that publishing the same bundle to the same namespaces
// again costs no request at all. It never deletes: a namespace that leaves the set keeps
// its ConfigMap (the pods still running there may need it, and the namespace's deletion
// takes it), and ConfigMaps of other names are never touched.
//
// Its methods are safe for concurrent use; they serialize on one lock, held across the
// API requests, so call Publish off any latency-sensitive path.
type RootPublisher struct {
	client kubernetes.Interface
	log    *slog.Logger
	opts   RootPublisherOptions

	writes  *prometheus.CounterVec
	pending prometheus.Gauge

	mu         sync.Mutex
	bundle     []byte
	namespaces []string        // sorted, unique
	synced     map[string]bool // namespaces whose ConfigMap is known to hold bundle
	failing    map[string]bool // namespaces whose last attempt failed (logged once per streak)
}

// NewRootPublisher returns a publisher that writes with client. It needs get, create and
// update on the ConfigMap bearkong-ca-root in the namespaces it publishes to.
func NewRootPublisher(client kubernetes.Interface, opts RootPublisherOptions) *RootPublisher {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = DefaultRootRetryInterval
	}
	if opts.ResyncInterval <= 0 {
		opts.ResyncInterval = DefaultRootResyncInterval
	}
	p := &RootPublisher{
		client:  client,
		log:     opts.Logger.With("component", "ca-root"),
		opts:    opts,
		synced:  map[string]bool{},
		failing: map[string]bool{},
	}
	// Discovery's definition (metrics.go), so that both share one collector when they
	// are registered on the same registry.
	p.writes = register(opts.Registerer, newAPIWrites())
	p.pending = register(opts.Registerer, prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "bearkong_ca_root_pending_namespaces",
		Help: "Namespaces whose ConfigMap " + RootConfigMapName + " could not be brought up to date with the CA's trust bundle at the last attempt (retried; see the log). New sidecars there cannot start, or get a stale root, until it is 0.",
	}))
	for _, verb := range []string{"create", "update"} {
		for _, result := range []string{"ok", "conflict", "error"} {
			p.writes.WithLabelValues("configmaps", verb, result)
		}
	}
	return p
}

// Publish makes ConfigMap bearkong-ca-root hold bundle in each of namespaces (typically
// those of the mesh's Services), creating or updating it where it is missing or differs.
// Namespaces already published with this bundle, by this publisher, cost nothing; a
// namespace that failed is retried on the next call and by Run. It returns the
// failures, joined; they are also logged and counted.
//
// Between terms of leadership (RootPublisherOptions.Leadership) it writes nothing: it
// remembers bundle and namespaces for Run to publish when this replica leads.
func (p *RootPublisher) Publish(ctx context.Context, bundle []byte, namespaces []string) error {
	if len(bundle) == 0 {
		return errors.New("publish the CA root: empty trust bundle")
	}
	want := slices.Clone(namespaces)
	want = slices.DeleteFunc(want, func(ns string) bool { return ns == "" })
	slices.Sort(want)
	want = slices.Compact(want)

	p.mu.Lock()
	defer p.mu.Unlock()
	if !bytes.Equal(bundle, p.bundle) {
		p.bundle = bytes.Clone(bundle)
		clear(p.synced)
	}
	p.namespaces = want
	// Forget the namespaces that left: if one comes back (perhaps deleted and created
	// again), its ConfigMap is checked afresh.
	for _, m := range []map[string]bool{p.synced, p.failing} {
		for ns := range m {
			if _, found := slices.BinarySearch(want, ns); !found {
				delete(m, ns)
			}
		}
	}
	ctx, done, leading := p.term(ctx)
	defer done()
	if !leading {
		return nil
	}
	return p.syncLocked(ctx, false)
}

// term returns ctx bounded by the current term of leadership, and whether this replica
// leads: requests made for a term stop when it ends.
func (p *RootPublisher) term(ctx context.Context) (context.Context, context.CancelFunc, bool) {
	l := p.opts.Leadership
	if l == nil {
		return ctx, func() {}, true
	}
	if !l.Leading() {
		return ctx, func() {}, false
	}
	// Leading now, so Await returns at once.
	term, cancel := l.Await(ctx)
	if term == nil {
		return ctx, func() {}, false
	}
	return term, cancel, true
}

// Resync reads every published ConfigMap back and puts back any that was edited or
// deleted since it was written. Run calls it every ResyncInterval.
func (p *RootPublisher) Resync(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ctx, done, leading := p.term(ctx)
	defer done()
	if !leading {
		return nil
	}
	return p.syncLocked(ctx, true)
}

// Run retries failed namespaces every RetryInterval and resyncs every ResyncInterval,
// until ctx ends. It returns nil then. With a Leadership, it does so only while this
// replica leads, and at the start of each term it checks every namespace (another
// leader may have published meanwhile, or not at all).
func (p *RootPublisher) Run(ctx context.Context) error {
	if p.opts.Leadership == nil {
		p.runTerm(ctx)
		return nil
	}
	for {
		term, cancel := p.opts.Leadership.Await(ctx)
		if term == nil {
			return nil
		}
		_ = p.Resync(term) // already logged and counted
		p.runTerm(term)
		cancel()
	}
}

// runTerm retries and resyncs until ctx ends.
func (p *RootPublisher) runTerm(ctx context.Context) {
	retryTick := time.NewTicker(p.opts.RetryInterval)
	defer retryTick.Stop()
	resyncTick := time.NewTicker(p.opts.ResyncInterval)
	defer resyncTick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-retryTick.C:
			p.mu.Lock()
			_ = p.syncLocked(ctx, false) // already logged and counted
			p.mu.Unlock()
		case <-resyncTick.C:
			_ = p.Resync(ctx)
		}
	}
}

// syncLocked brings each wanted namespace up to date: all of them when recheck is set,
// else those not known to be. p.mu is held.
func (p *RootPublisher) syncLocked(ctx context.Context, recheck bool) error {
	if len(p.bundle) == 0 {
		return nil // nothing published yet
	}
	var errs []error
	for _, ns := range p.namespaces {
		if !recheck && p.synced[ns] {
			continue
		}
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		err := p.ensure(ctx, ns, p.synced[ns])
		switch {
		case err != nil:
			delete(p.synced, ns)
			if !p.failing[ns] {
				p.log.Warn("cannot publish the CA root; sidecars in this namespace cannot start (or get a stale root) until it is; retrying",
					"namespace", ns, "configmap", RootConfigMapName, "err", err)
			} else {
				p.log.Debug("still cannot publish the CA root", "namespace", ns, "err", err)
			}
			p.failing[ns] = true
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
		default:
			if p.failing[ns] {
				p.log.Info("CA root published after earlier failures", "namespace", ns, "configmap", RootConfigMapName)
			}
			delete(p.failing, ns)
			p.synced[ns] = true
		}
	}
	p.pending.Set(float64(len(p.failing)))
	return errors.Join(errs...)
}

// ensure makes the namespace's ConfigMap hold p.bundle. wasSynced says the publisher
// had written it already, so a difference means someone else changed it.
func (p *RootPublisher) ensure(ctx context.Context, ns string, wasSynced bool) error {
	ctx, cancel := context.WithTimeout(ctx, rootRequestTimeout)
	defer cancel()
	cms := p.client.CoreV1().ConfigMaps(ns)
	// A conflict (someone updated it between our read and our write) and AlreadyExists
	// (another bearkong replica created it first) both mean: read again and retry.
	retriable := func(err error) bool { return apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) }
	return retry.OnError(retry.DefaultRetry, retriable, func() error {
		cm, err := cms.Get(ctx, RootConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{
					Name:      RootConfigMapName,
					Namespace: ns,
					Labels:    map[string]string{ManagedByLabel: ManagedByValue},
				},
				Data: map[string]string{RootConfigMapKey: string(p.bundle)},
			}, metav1.CreateOptions{})
			p.count("create", err)
			if err == nil {
				if wasSynced {
					p.log.Warn("ConfigMap was deleted by someone else; created it again", "namespace", ns, "configmap", RootConfigMapName)
				} else {
					p.log.Info("CA root published", "namespace", ns, "configmap", RootConfigMapName, "verb", "create")
				}
			}
			return err
		}
		if err != nil {
			return err
		}
		if p.upToDate(cm) {
			return nil
		}
		// Only the data and bearkong's label are bearkong's; other labels and
		// annotations someone put on it stay.
		if cm.Labels == nil {
			cm.Labels = map[string]string{}
		}
		cm.Labels[ManagedByLabel] = ManagedByValue
		cm.Data = map[string]string{RootConfigMapKey: string(p.bundle)}
		cm.BinaryData = nil
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		p.count("update", err)
		if err == nil {
			if wasSynced {
				p.log.Warn("ConfigMap was changed by someone else; put the CA root back", "namespace", ns, "configmap", RootConfigMapName)
			} else {
				p.log.Info("CA root published", "namespace", ns, "configmap", RootConfigMapName, "verb", "update")
			}
		}
		return err
	})
}

// upToDate says whether cm holds exactly the bundle, under bearkong's label.
func (p *RootPublisher) upToDate(cm *corev1.ConfigMap) bool {
	return cm.Labels[ManagedByLabel] == ManagedByValue &&
		len(cm.Data) == 1 && cm.Data[RootConfigMapKey] == string(p.bundle) &&
		len(cm.BinaryData) == 0
}

func (p *RootPublisher) count(verb string, err error) {
	result := "ok"
	switch {
	case apierrors.IsConflict(err), apierrors.IsAlreadyExists(err):
		result = "conflict"
	case err != nil:
		result = "error"
	}
	p.writes.WithLabelValues("configmaps", verb, result).Inc()
}

// RootNamespaces returns the namespaces the CA root goes to for a snapshot: those of its
// meshed Services, sorted and unique. A sidecar in a namespace without a meshed Service
// (a client only) gets no root, and cannot start until one is meshed there.
func RootNamespaces(s *mesh.Snapshot) []string {
	if s == nil {
		return nil
	}
	var out []string
	for _, svc := range s.Services {
		out = append(out, svc.Namespace)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
