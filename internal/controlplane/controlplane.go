// Package controlplane wires bearkong together: snapshots from discovery go through
// translate into the ADS server, which Envoys reach over gRPC; metrics, debug and health
// are served over HTTP. It holds no mesh logic of its own.
package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// Source produces mesh snapshots: pkg/discovery in production, anything in tests.
type Source interface {
	// Run produces snapshots until ctx ends.
	Run(ctx context.Context) error
	// Snapshots delivers the newest snapshot; a slow reader skips to the latest.
	Snapshots() <-chan *mesh.Snapshot
	// HasSynced reports whether the source has seen the whole initial state.
	HasSynced() bool
}

// APIHealthReporter is a Source that can tell whether the Kubernetes API answers it
// (pkg/discovery). /readyz shows an unreachable API as a condition, not a failure: the
// replica keeps serving the last config it built, which is what the proxies need.
type APIHealthReporter interface {
	// APIUnreachableSince returns when the API stopped answering, and why; a zero time
	// while it answers.
	APIUnreachableSince() (time.Time, error)
}

// Quarantiner is a Source that can leave out of the config the objects behind what the
// proxies reject (pkg/discovery). The control plane tells it which snapshots the NACKed
// and ACKed configs were built from.
type Quarantiner interface {
	Rejected(part mesh.ConfigPart, accepted, rejected *mesh.Snapshot, message string)
	Accepted(part mesh.ConfigPart, snap *mesh.Snapshot)
	// WantsAcks reports whether Accepted has anything to do right now; ACKs are many.
	WantsAcks() bool
}

// historySize is how many recent configs the control plane remembers, to find the
// snapshot behind the version a proxy ACKs or NACKs. Each keeps its snapshot, which
// shares what did not change with the next one (pkg/discovery), and only a weak
// reference to its translation (see configEntry). A proxy that last accepted a version
// older than that counts as one that never accepted any: every object is then a
// suspect, and the innocent ones are re-admitted one by one.
const historySize = 8

// Options configure a ControlPlane.
type Options struct {
	// XDSAddr and HTTPAddr are host:port to listen on; port 0 picks a free port.
	XDSAddr  string
	HTTPAddr string
	// DebugAddr, when set, is host:port of a listener of its own that serves
	// net/http/pprof under /debug/pprof/; never on HTTPAddr, which a Service may expose.
	DebugAddr string
	// MaxConnectionAge, when positive, closes each xDS connection after about that long
	// (gRPC adds ±10% jitter), MaxConnectionAgeGrace after telling the client so with a
	// GOAWAY: the proxy reconnects, and through a Service may land on another replica,
	// so that replicas rebalance after a rollout. Zero keeps connections forever.
	MaxConnectionAge      time.Duration
	MaxConnectionAgeGrace time.Duration
	// KeepaliveTimeout is how long an HTTP/2 ping of an idle xDS connection may go
	// unanswered before the connection is closed; zero is DefaultKeepaliveTimeout.
	KeepaliveTimeout time.Duration
	// DrainTimeout bounds the graceful stop of the gRPC server. xDS streams never end
	// by themselves, so after it the remaining streams are cut.
	DrainTimeout time.Duration
	Logger       *slog.Logger
	// Registry receives every metric; a new one is made when nil.
	Registry *prometheus.Registry
	// Translate are the translator's options (the cluster domain).
	Translate translate.Options
	// Certificates, when set, issues every proxy its workload certificate and the
	// trust bundle over SDS, renewed at each rotation.
	Certificates Certificates
	// Authenticate, when set, checks each stream's node before anything is served (see
	// ads.Options.Authenticate); the service_account and pod_uid metadata of the node it
	// returns are then believed.
	Authenticate func(ctx context.Context, node *corev3.Node) (*corev3.Node, error)
	// Limits bound what one xDS client can make the control plane hold, log or do (see
	// ads.Limits); zero fields take their defaults.
	Limits ads.Limits
	// ServerOptions are added to the gRPC server's options: its TLS credentials.
	ServerOptions []grpc.ServerOption
	// OnSnapshot, when set, is told of every snapshot that became the config, from the
	// translate loop: it must not block.
	OnSnapshot func(*mesh.Snapshot)
	// PrometheusURL, when set, is the base URL of a Prometheus that scrapes the
	// sidecars: /debug/signals (and the page at /debug/) asks it for each Service's
	// golden signals.
	PrometheusURL string
	// TestHooks turns on the test hooks of testhooks.go on the debug listener. Tests only.
	TestHooks bool
}

// ControlPlane is one running bearkong.
type ControlPlane struct {
	opts    Options
	src     Source
	log     *slog.Logger
	reg     *prometheus.Registry
	ads     *ads.Server
	metrics *metrics

	xdsLis, httpLis, debugLis net.Listener

	// snapshot is the latest snapshot received, for /debug/diagnostics.
	snapshot atomic.Pointer[mesh.Snapshot]
	// current is the config last handed to the ADS server, handed again at each
	// certificate rotation.
	current atomic.Pointer[ads.Config]
	// intended is the current config before the test hooks, for /debug/config.
	intended atomic.Pointer[intendedConfig]
	hooks    *testHooks // nil unless Options.TestHooks
	// secrets, when certificates are on, builds each proxy's SDS view.
	secrets *secrets

	// quarantine, when the source is one, hears about NACKs (and ACKs while it asks),
	// through reports, handled off the stream loops by handleReports.
	quarantine Quarantiner
	reports    chan ads.Report
	histMu     sync.Mutex
	history    []*configEntry // oldest first, at most historySize
}

// configEntry is one config handed to the ADS server and the snapshot it came from.
//
// The translation is held weakly: a Translator holds every shared resource of its
// snapshot and every proxy's own listeners and routes, and a history of strong ones kept
// historySize generations of them alive after a series of changes (issue 14: heap 96 ->
// 139 MiB at S=1000, N=1000 after 10 new Services). While the config is in force the ADS
// server holds its Translator; an older one is translated again from its snapshot when a
// report names it, which gives the same versions (translation is deterministic).
type configEntry struct {
	snap *mesh.Snapshot
	tr   weak.Pointer[translate.Translator]
}

// translator returns e's translation, translating e's snapshot again if it was
// collected; nil if that fails (it did not fail the first time, so it does not).
func (cp *ControlPlane) translator(e *configEntry) *translate.Translator {
	cp.histMu.Lock()
	tr := e.tr.Value()
	cp.histMu.Unlock()
	if tr != nil {
		return tr
	}
	tr, err := translate.NewWithOptions(e.snap, cp.opts.Translate)
	if err != nil {
		return nil
	}
	cp.histMu.Lock()
	// Weak again: a burst of reports about this config shares the translation while it
	// lasts, and nothing keeps it afterwards.
	e.tr = weak.Make(tr)
	cp.histMu.Unlock()
	return tr
}

type metrics struct {
	translations  prometheus.Counter
	translateTime prometheus.Histogram
	translateErrs prometheus.Counter
	generation    prometheus.Gauge
}

// NewRegistry returns a registry with the Go runtime and process collectors: memory, CPU
// and goroutines are what a user looks at first.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// New prepares a control plane; Listen and Serve run it.
func New(src Source, o Options) *ControlPlane {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Registry == nil {
		o.Registry = NewRegistry()
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 5 * time.Second
	}
	m := &metrics{
		translations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bearkong_translations_total", Help: "Snapshots translated into Envoy resources.",
		}),
		translateTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "bearkong_translate_seconds", Help: "Time to build and marshal the shared resources of one snapshot.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		translateErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bearkong_translate_errors_total", Help: "Snapshots that could not be translated; the previous config stays in force.",
		}),
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bearkong_config_generation", Help: "Number of configs handed to the xDS server since start.",
		}),
	}
	o.Registry.MustRegister(m.translations, m.translateTime, m.translateErrs, m.generation)
	cp := &ControlPlane{opts: o, src: src, log: o.Logger, reg: o.Registry, metrics: m}
	ao := ads.Options{Logger: o.Logger, Metrics: ads.NewMetrics(o.Registry), Authenticate: o.Authenticate, Limits: o.Limits}
	if o.Certificates != nil {
		cp.secrets = newSecrets(o.Certificates, o.Authenticate != nil)
	}
	if q, ok := src.(Quarantiner); ok {
		cp.quarantine = q
		cp.reports = make(chan ads.Report, 4096)
		ao.Observe = cp.observe
	}
	cp.ads = ads.NewServer(ao)
	// Streams by status, for the dashboard and the NACKED/STALE alerts (manifests/).
	o.Registry.MustRegister(ads.NewStatusCollector(cp.ads))
	if o.TestHooks {
		cp.hooks = newTestHooks(cp)
	}
	return cp
}

// observe is the ADS server's Observe hook, called from the stream loops: it only queues.
func (cp *ControlPlane) observe(r ads.Report) {
	if r.Kind == ads.ACK && !cp.quarantine.WantsAcks() {
		return
	}
	select {
	case cp.reports <- r:
	default:
		cp.log.Warn("too many xDS reports at once; dropping one", "node", r.Node.GetId(), "type", r.Type, "kind", r.Kind)
	}
}

// handleReports turns ACKs and NACKs into the snapshots they concern, for the quarantine.
func (cp *ControlPlane) handleReports(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-cp.reports:
			cp.handleReport(r)
		}
	}
}

// configPart is the part of the config a type carries that objects contribute to; 0 for
// the types bearkong cannot attribute to an object (listeners and endpoints come from
// the mesh contract and from pods, not from user policy).
func configPart(t resource.Type) mesh.ConfigPart {
	switch t {
	case resource.Route, resource.ScopedRoute:
		return mesh.RoutesPart
	case resource.Cluster:
		return mesh.ClustersPart
	}
	return 0
}

func (cp *ControlPlane) handleReport(r ads.Report) {
	part := configPart(r.Type)
	if part == 0 {
		if r.Kind == ads.NACK {
			cp.log.Warn("proxy rejected a config no object can be blamed for", "node", r.Node.GetId(), "type", r.Type, "error", r.Message)
		}
		return
	}
	node, err := translate.ParseNode(r.Node)
	if err != nil {
		return
	}
	switch r.Kind {
	case ads.NACK:
		bad := cp.snapshotOf(node, r.Type, r.Version)
		if bad == nil {
			cp.log.Warn("proxy rejected a config too old to examine", "node", r.Node.GetId(), "type", r.Type, "version", r.Version)
			return
		}
		cp.quarantine.Rejected(part, cp.snapshotOf(node, r.Type, r.AckedVersion), bad, r.Message)
	case ads.ACK:
		if snap := cp.snapshotOf(node, r.Type, r.Version); snap != nil {
			cp.quarantine.Accepted(part, snap)
		}
	}
}

// snapshotOf returns the newest remembered snapshot from which node's resources of type
// t have version, or nil.
func (cp *ControlPlane) snapshotOf(node translate.Node, t resource.Type, version string) *mesh.Snapshot {
	if version == "" {
		return nil
	}
	cp.histMu.Lock()
	hist := slices.Clone(cp.history)
	cp.histMu.Unlock()
	for i := len(hist) - 1; i >= 0; i-- {
		tr := cp.translator(hist[i])
		if tr == nil {
			continue
		}
		p, err := tr.Proxy(node)
		if err == nil && p.Views[t].Version() == version {
			return hist[i].snap
		}
	}
	return nil
}

// ADS returns the xDS server, for tests.
func (cp *ControlPlane) ADS() *ads.Server { return cp.ads }

// Listen binds the xDS and HTTP addresses.
func (cp *ControlPlane) Listen() error {
	var err error
	if cp.xdsLis, err = net.Listen("tcp", cp.opts.XDSAddr); err != nil {
		return fmt.Errorf("listen for xDS on %s: %w", cp.opts.XDSAddr, err)
	}
	if cp.httpLis, err = net.Listen("tcp", cp.opts.HTTPAddr); err != nil {
		cp.xdsLis.Close()
		return fmt.Errorf("listen for HTTP on %s: %w", cp.opts.HTTPAddr, err)
	}
	if cp.opts.DebugAddr != "" {
		if cp.debugLis, err = net.Listen("tcp", cp.opts.DebugAddr); err != nil {
			cp.xdsLis.Close()
			cp.httpLis.Close()
			return fmt.Errorf("listen for debug on %s: %w", cp.opts.DebugAddr, err)
		}
	}
	return nil
}

// DebugAddr is the bound pprof address (after Listen), or "" when there is none.
func (cp *ControlPlane) DebugAddr() string {
	if cp.debugLis == nil {
		return ""
	}
	return cp.debugLis.Addr().String()
}

// XDSAddr is the bound xDS address (after Listen).
func (cp *ControlPlane) XDSAddr() string { return cp.xdsLis.Addr().String() }

// HTTPAddr is the bound HTTP address (after Listen).
func (cp *ControlPlane) HTTPAddr() string { return cp.httpLis.Addr().String() }

// DefaultKeepaliveTimeout is Options.KeepaliveTimeout's default.
const DefaultKeepaliveTimeout = 10 * time.Second

// newXDSServer is the gRPC server of the xDS API, with opts' limits and keepalive.
func newXDSServer(opts Options) *grpc.Server {
	timeout := opts.KeepaliveTimeout
	if timeout <= 0 {
		timeout = DefaultKeepaliveTimeout
	}
	return grpc.NewServer(append(append(ads.ServerOptionsWith(opts.Limits), opts.ServerOptions...),
		// Envoy pings its ADS connection (the bootstrap sets connection_keepalive);
		// grpc-go's default policy would answer pings more often than every 5 minutes
		// with GOAWAY and drop the stream.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: 30 * time.Second, Timeout: timeout,
			// Zero is infinity to grpc-go.
			MaxConnectionAge: opts.MaxConnectionAge, MaxConnectionAgeGrace: opts.MaxConnectionAgeGrace,
		}),
	)...)
}

// Serve runs until ctx ends, then stops within the drain timeout. Listen must come first.
func (cp *ControlPlane) Serve(ctx context.Context) error {
	if cp.xdsLis == nil {
		if err := cp.Listen(); err != nil {
			return err
		}
	}
	g := newXDSServer(cp.opts)
	cp.ads.Register(g)
	httpSrv := &http.Server{Handler: cp.Handler(), ReadHeaderTimeout: 10 * time.Second}
	var debugSrv *http.Server
	if cp.debugLis != nil {
		debugSrv = &http.Server{Handler: cp.debugHandler(), ReadHeaderTimeout: 10 * time.Second}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, 7)
	go func() { errs <- wrap("xDS server", g.Serve(xdsListener(cp.xdsLis, cp.opts))) }()
	go func() {
		if err := httpSrv.Serve(cp.httpLis); !errors.Is(err, http.ErrServerClosed) {
			errs <- wrap("HTTP server", err)
			return
		}
		errs <- nil
	}()
	if debugSrv != nil {
		go func() {
			if err := debugSrv.Serve(cp.debugLis); !errors.Is(err, http.ErrServerClosed) {
				errs <- wrap("debug server", err)
				return
			}
			errs <- nil
		}()
	}
	go func() { errs <- wrap("discovery", cp.src.Run(ctx)) }()
	go func() { cp.translateLoop(ctx); errs <- nil }()
	if cp.reports != nil {
		go func() { cp.handleReports(ctx); errs <- nil }()
	}
	if cp.secrets != nil {
		go func() { cp.rotate(ctx); errs <- nil }()
	}
	cp.log.Info("control plane serving", "xds", cp.XDSAddr(), "http", cp.HTTPAddr(), "debug", cp.DebugAddr())

	var first error
	select {
	case <-ctx.Done():
	case first = <-errs:
		// One part stopped on its own: that is fatal for the whole.
		if first == nil {
			first = errors.New("a component stopped unexpectedly")
		}
	}
	cancel()
	cp.stop(g, httpSrv, debugSrv)
	return first
}

func wrap(what string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (cp *ControlPlane) stop(g *grpc.Server, httpSrv, debugSrv *http.Server) {
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(cp.opts.DrainTimeout):
		g.Stop()
	}
	sctx, cancel := context.WithTimeout(context.Background(), cp.opts.DrainTimeout)
	defer cancel()
	_ = httpSrv.Shutdown(sctx)
	if debugSrv != nil {
		// A profile may take its ?seconds= to finish: cut it rather than wait.
		_ = debugSrv.Close()
	}
	cp.log.Info("control plane stopped")
}

// translateLoop turns every snapshot into a config for the ADS server.
func (cp *ControlPlane) translateLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case snap := <-cp.src.Snapshots():
			cp.apply(snap)
		}
	}
}

func (cp *ControlPlane) apply(snap *mesh.Snapshot) {
	cp.snapshot.Store(snap)
	start := time.Now()
	tr, err := translate.NewWithOptions(snap, cp.opts.Translate)
	if err != nil {
		// Keep the last good config: a bad snapshot must not take the mesh down.
		cp.metrics.translateErrs.Inc()
		cp.log.Error("cannot translate snapshot; keeping the previous config", "err", err)
		return
	}
	cp.metrics.translateTime.Observe(time.Since(start).Seconds())
	cp.metrics.translations.Inc()
	cp.metrics.generation.Inc()
	if cp.quarantine != nil {
		cp.histMu.Lock()
		cp.history = append(cp.history, &configEntry{snap: snap, tr: weak.Make(tr)})
		if len(cp.history) > historySize {
			cp.history = slices.Delete(cp.history, 0, len(cp.history)-historySize)
		}
		cp.histMu.Unlock()
	}
	c := &ads.Config{
		ChangedAt: snap.ChangedAt,
		Resolve: func(node *corev3.Node) (*resource.Proxy, error) {
			n, err := translate.ParseNode(node)
			if err != nil {
				return nil, err
			}
			p, err := tr.Proxy(n)
			if err != nil || cp.secrets == nil {
				return p, err
			}
			if p.Views[resource.Secret], err = cp.secrets.view(n, snap); err != nil {
				return nil, err
			}
			return p, nil
		},
	}
	cp.intended.Store(&intendedConfig{resolve: c.Resolve, snap: snap})
	if cp.hooks != nil {
		c.Resolve = cp.hooks.wrap(c.Resolve)
	}
	cp.current.Store(c)
	cp.ads.SetConfig(c)
	if cp.opts.OnSnapshot != nil {
		cp.opts.OnSnapshot(snap)
	}
	cp.log.Info("config updated", "services", len(snap.Services), "proxies", len(snap.Proxies), "translate", time.Since(start))
}

// Handler serves /metrics, /debug/streams, /debug/config, /debug/diagnostics, /debug/signals,
// the page /debug/, /healthz and /readyz.
func (cp *ControlPlane) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(cp.reg, promhttp.HandlerOpts{}))
	mux.Handle("GET /debug/streams", cp.ads.DebugHandler())
	mux.HandleFunc("GET /debug/diagnostics", cp.diagnostics)
	mux.HandleFunc("GET /debug/signals", cp.signals)
	// {$} matches /debug/ alone: a bare "/debug/" pattern would answer every unknown
	// /debug/... path with the page instead of a 404.
	mux.HandleFunc("GET /debug/{$}", cp.ui)
	mux.HandleFunc("GET /debug/config", cp.debugConfig)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		// An unreachable API does not make a replica unready once it has a config: taking
		// every replica out of its Service during an API outage would cut the proxies off
		// the config they still need. It is a line of the body (and the
		// bearkong_kube_api_reachable gauge) instead.
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		var condition string
		if h, ok := cp.src.(APIHealthReporter); ok {
			if since, err := h.APIUnreachableSince(); !since.IsZero() {
				condition = fmt.Sprintf("Kubernetes API unreachable since %s (%s): %v; serving the last config built\n",
					since.UTC().Format(time.RFC3339), time.Since(since).Round(time.Second), err)
			}
		}
		switch {
		case !cp.src.HasSynced():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, "not ready: Kubernetes caches not synced\n"+condition)
		case !cp.ads.HasConfig():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, "not ready: no config built yet\n"+condition)
		default:
			fmt.Fprint(w, "ok\n"+condition)
		}
	})
	return mux
}

// DebugHandler serves Go's profiles (net/http/pprof) under /debug/pprof/, on a mux of its
// own: importing net/http/pprof also registers them on http.DefaultServeMux, which
// bearkong never serves. https://pkg.go.dev/net/http/pprof
func DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // the named profiles: heap, goroutine, allocs...
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// debugHandler is what the debug listener serves: DebugHandler, and the test hooks when
// they are on.
func (cp *ControlPlane) debugHandler() http.Handler {
	if cp.hooks == nil {
		return DebugHandler()
	}
	mux := http.NewServeMux()
	mux.Handle("/debug/pprof/", DebugHandler())
	mux.Handle("/debug/testing/", cp.hooks)
	return mux
}

// diagnostics serves /debug/diagnostics: the problems found in the mesh's objects, as
// JSON, optionally filtered by ?namespace= and ?name=.
func (cp *ControlPlane) diagnostics(w http.ResponseWriter, r *http.Request) {
	out := []mesh.Diagnostic{}
	if snap := cp.snapshot.Load(); snap != nil {
		ns, name := r.URL.Query().Get("namespace"), r.URL.Query().Get("name")
		for _, d := range snap.Diagnostics {
			if (ns == "" || d.Namespace == ns) && (name == "" || d.Name == name) {
				out = append(out, d)
			}
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(struct {
		Diagnostics []mesh.Diagnostic `json:"diagnostics"`
	}{out})
}
