package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// How often the API server is probed (GET /readyz), and how long a probe may take.
// While the API answers, a slow probe only notices an outage that the informers do not
// (a server that stops answering without closing its connections). While it does not,
// the informers wait for the fast probe rather than for client-go's reflector backoff,
// which doubles from 0.8 s to 30 s with up to 100 % jitter and is not configurable
// through an informer (k8s.io/client-go/tools/cache/reflector.go,
// NewReflectorWithOptions): after a 20-30 s outage it left the first change 6-7 s behind
// the API being back. A probe of a server that is down is a refused connection, which
// costs the server nothing.
const (
	apiProbeInterval = 5 * time.Second
	apiProbeRetry    = 250 * time.Millisecond
	apiProbeTimeout  = 2 * time.Second
	// apiWaitMax bounds how long an informer's list or watch waits for the prober before
	// it tries again by itself, in case the prober and the informers disagree (a load
	// balancer whose instances differ).
	apiWaitMax = 10 * time.Second
)

// APIHealth is whether the Kubernetes API server answers, as this replica last saw it.
// An unreachable API is a condition, not a failure: discovery keeps the last snapshot
// it built, which the proxies keep being served, and catches up when the API is back.
type APIHealth struct {
	// Reachable is false from the first request or probe that could not reach the API
	// server (or found it not ready) until a probe gets an answer again.
	Reachable bool
	// Since is when Reachable last changed; zero if it never did.
	Since time.Time
	// Err is why the API is unreachable; nil while it is reachable.
	Err error
}

// apiHealth tracks APIHealth. The informers' lists and watches report connection
// failures to it and, while the API is unreachable, wait for its probe to see the API
// back; the probe runs in run.
type apiHealth struct {
	// probe is nil when there is no API server to probe (a fake clientset): the state
	// then stays reachable and the informers never wait.
	probe func(context.Context) error
	gauge prometheus.Gauge
	log   *slog.Logger

	mu    sync.Mutex
	state APIHealth
	back  chan struct{} // closed when the API is reachable again; nil while it is
	wake  chan struct{} // capacity 1: a failed request asks for a probe now
}

func newAPIHealth(client kubernetes.Interface, reg prometheus.Registerer, log *slog.Logger) *apiHealth {
	var probe func(context.Context) error
	if rc := client.Discovery().RESTClient(); rc != nil {
		probe = func(ctx context.Context) error { return probeReadyz(ctx, rc) }
	}
	return newAPIHealthProbe(probe, reg, log)
}

// newAPIHealthProbe is newAPIHealth with the probe given.
func newAPIHealthProbe(probe func(context.Context) error, reg prometheus.Registerer, log *slog.Logger) *apiHealth {
	h := &apiHealth{
		probe: probe,
		gauge: register(reg, prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bearkong_kube_api_reachable",
			Help: "1 while the Kubernetes API server answers this replica (its /readyz, probed every few seconds, and every list and watch of its informers), else 0. While 0 the replica keeps serving the last config it built.",
		})),
		log:   log,
		state: APIHealth{Reachable: true},
		wake:  make(chan struct{}, 1),
	}
	h.gauge.Set(1)
	return h
}

// probeReadyz asks the API server whether it is ready. Any answer below 500 counts as
// reachable: a cluster may deny /readyz to bearkong's ServiceAccount (it is normally
// open to every authenticated user, through system:public-info-viewer), and a server
// that answers 403 is up.
// https://kubernetes.io/docs/reference/using-api/health-checks/
func probeReadyz(ctx context.Context, rc rest.Interface) error {
	ctx, cancel := context.WithTimeout(ctx, apiProbeTimeout)
	defer cancel()
	res := rc.Get().AbsPath("/readyz").Do(ctx)
	var code int
	res.StatusCode(&code)
	switch {
	case code == 0:
		return res.Error()
	case code >= 500:
		return fmt.Errorf("GET /readyz: HTTP %d (not ready)", code)
	}
	return nil
}

// health returns the current state.
func (h *apiHealth) health() APIHealth {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.state
}

// failed records that the API could not be reached and asks for a probe now.
func (h *apiHealth) failed(err error) {
	h.mu.Lock()
	if h.state.Reachable {
		h.state = APIHealth{Since: time.Now(), Err: err}
		h.back = make(chan struct{})
		h.gauge.Set(0)
		h.log.Warn("the Kubernetes API server is unreachable: serving the last config until it is back", "err", err)
	}
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// answered records a probe that reached the API, and releases the waiting informers.
func (h *apiHealth) answered() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state.Reachable {
		return
	}
	h.log.Info("the Kubernetes API server is reachable again", "unreachable_for", time.Since(h.state.Since).Round(time.Millisecond))
	h.state = APIHealth{Reachable: true, Since: time.Now()}
	close(h.back)
	h.back = nil
	h.gauge.Set(1)
}

// run probes the API server until ctx is done: every apiProbeInterval while it answers,
// every apiProbeRetry while it does not, and at once when a request failed.
func (h *apiHealth) run(ctx context.Context) {
	if h.probe == nil {
		return
	}
	timer := time.NewTimer(apiProbeInterval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		case <-timer.C:
		}
		if err := h.probe(ctx); err == nil {
			h.answered()
		} else if ctx.Err() == nil {
			h.failed(err)
		}
		next := apiProbeInterval
		if !h.health().Reachable {
			next = apiProbeRetry
		}
		timer.Reset(next)
	}
}

// unreachable reports whether err says the request never reached a working API server:
// a network error (refused, reset, timed out, closed) or 503 (a server starting or
// stopping). Any other answer came from the server and is left to client-go.
func unreachable(err error) bool {
	if err == nil {
		return false
	}
	var op *net.OpError
	return errors.As(err, &op) || utilnet.IsProbableEOF(err) || utilnet.IsConnectionRefused(err) ||
		apierrors.IsServiceUnavailable(err)
}

// wait waits until the prober sees the API back, at most apiWaitMax. It returns false
// if ctx ended first.
func (h *apiHealth) wait(ctx context.Context) bool {
	h.mu.Lock()
	back := h.back
	h.mu.Unlock()
	wait := apiWaitMax
	if back == nil {
		// The prober saw the API back while this request failed: pause for a probe
		// interval rather than spin.
		wait = apiProbeRetry
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-back:
	case <-timer.C:
	}
	return true
}

// listWatch wraps an informer's lists and watches: one that cannot reach the API
// reports it and waits for the prober to see the API back, then tries again, instead of
// returning the error to the reflector, whose backoff would then grow for as long as
// the outage lasts. Other errors pass through as they are.
func (h *apiHealth) listWatch(lw cache.ListerWatcherWithContext) cache.ListerWatcher {
	return &patientListWatch{lw: lw, h: h}
}

type patientListWatch struct {
	lw cache.ListerWatcherWithContext
	h  *apiHealth
}

func (p *patientListWatch) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	for {
		obj, err := p.lw.ListWithContext(ctx, opts)
		if p.h.probe == nil || !unreachable(err) {
			return obj, err
		}
		p.h.failed(err)
		if !p.h.wait(ctx) {
			return obj, err
		}
	}
}

func (p *patientListWatch) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	for {
		w, err := p.lw.WatchWithContext(ctx, opts)
		if p.h.probe == nil || !unreachable(err) {
			return w, err
		}
		p.h.failed(err)
		if !p.h.wait(ctx) {
			return w, err
		}
	}
}

// List and Watch make patientListWatch a cache.ListerWatcher; the reflector calls the
// context-aware methods above (cache.ToListerWatcherWithContext).
func (p *patientListWatch) List(opts metav1.ListOptions) (runtime.Object, error) {
	return p.ListWithContext(context.Background(), opts)
}

func (p *patientListWatch) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return p.WatchWithContext(context.Background(), opts)
}

// informer is a shared informer on one namespaced or cluster-scoped kind whose lists
// and watches go through listWatch; indexed by namespace, as client-go's generated
// informers are.
func (h *apiHealth) informer(obj runtime.Object, resync time.Duration,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error),
	watchFn func(context.Context, metav1.ListOptions) (watch.Interface, error)) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(h.listWatch(&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: watchFn}),
		obj, resync, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}
