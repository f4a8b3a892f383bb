// Command localmesh runs the whole mesh on this machine, for `make run`: a real etcd and
// kube-apiserver, the bearkong control plane (two replicas by default, electing the one
// that writes to the API through a Lease), Prometheus, and three demo apps (app-1 with
// one replica, app-2 and app-3 with two), each replica a demo app plus an Envoy sidecar on
// its own loopback address 127.0.1.N. It prints who answers whom, and how to poke at it,
// then runs until SIGINT or SIGTERM, when it stops everything it started.
//
// It builds nothing: the Makefile builds the binaries into .cache/bin first.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "localmesh: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	binDir, stateDir string
	promAddr         string
	xdsAddr          string
	httpAddr         string
	replicas         int
	noPrometheus     bool
	envoyLogLevel    string
	xdsProtocol      string
}

func parseFlags(args []string) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("localmesh", flag.ContinueOnError)
	fs.StringVar(&cfg.binDir, "bin-dir", "", "directory with bearkong, demo-app, envoy, etcd and kube-apiserver (default <repo>/.cache/bin)")
	fs.StringVar(&cfg.stateDir, "state-dir", "", "directory for the cluster's data and every log; wiped at start (default <repo>/.cache/run)")
	fs.StringVar(&cfg.promAddr, "prometheus-addr", "127.0.0.1:9091", "Prometheus listen address")
	fs.StringVar(&cfg.xdsAddr, "xds-addr", "127.0.0.1:5000", "the xDS address of the control plane's replica 0 (the others take free ports)")
	fs.StringVar(&cfg.httpAddr, "http-addr", "127.0.0.1:9000", "the HTTP address (/metrics, /debug/streams, /debug/diagnostics) of the control plane's replica 0 (the others take free ports)")
	fs.IntVar(&cfg.replicas, "replicas", 2, "how many control-plane replicas to run: each serves xDS, the holder of the Lease writes to the API")
	fs.BoolVar(&cfg.noPrometheus, "no-prometheus", false, "do not start Prometheus")
	fs.StringVar(&cfg.envoyLogLevel, "envoy-log-level", "warn", "Envoy --log-level")
	fs.StringVar(&cfg.xdsProtocol, "xds-protocol", "", "xDS protocol of every sidecar: "+strings.Join(translate.XDSProtocols, " or ")+" (default: the bootstrap's, "+translate.DefaultXDSProtocol+")")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if cfg.replicas < 1 {
		return config{}, fmt.Errorf("-replicas %d: want at least 1", cfg.replicas)
	}
	if cfg.xdsProtocol != "" && !slices.Contains(translate.XDSProtocols, cfg.xdsProtocol) {
		return config{}, fmt.Errorf("-xds-protocol %q: want one of %s", cfg.xdsProtocol, strings.Join(translate.XDSProtocols, ", "))
	}
	if cfg.binDir == "" || cfg.stateDir == "" {
		root, err := kubeenv.RepoRoot()
		if err != nil {
			return config{}, fmt.Errorf("%w; run from the repository, or pass -bin-dir and -state-dir", err)
		}
		if cfg.binDir == "" {
			cfg.binDir = filepath.Join(root, ".cache", "bin")
		}
		if cfg.stateDir == "" {
			cfg.stateDir = filepath.Join(root, ".cache", "run")
		}
	}
	return cfg, nil
}

func run(args []string, out io.Writer) (err error) {
	cfg, err := parseFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	defer func() { // runs last: an interrupted start fails with noise, not news
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("interrupted (logs under %s)", cfg.stateDir)
		}
	}()

	if err := os.MkdirAll(cfg.stateDir, 0o755); err != nil {
		return err
	}
	unlock, err := lock(filepath.Join(cfg.stateDir, "lock"))
	if err != nil {
		return err
	}
	defer unlock()
	defer func() { // runs after every process has stopped
		if err == nil {
			fmt.Fprintln(out, "==> stopped; no process of this run is left")
		}
	}()
	if err := wipeState(cfg.stateDir, "lock"); err != nil {
		return err
	}
	for _, b := range []string{"bearkong", "demo-app", "envoy"} {
		if _, err := os.Stat(filepath.Join(cfg.binDir, b)); err != nil {
			return fmt.Errorf("%w (run `make build install` first)", err)
		}
	}
	for _, a := range []struct{ addr, flag string }{{cfg.xdsAddr, "-xds-addr"}, {cfg.httpAddr, "-http-addr"}, {cfg.promAddr, "-prometheus-addr"}} {
		if a.flag == "-prometheus-addr" && cfg.noPrometheus {
			continue
		}
		l, err := net.Listen("tcp", a.addr)
		if err != nil {
			return fmt.Errorf("address %s is taken (%w); pass %s to use another", a.addr, err, a.flag)
		}
		l.Close()
	}

	logf := func(format string, args ...any) { fmt.Fprintf(out, "    "+format+"\n", args...) }
	step := func(format string, args ...any) { fmt.Fprintf(out, "==> "+format+"\n", args...) }
	started := time.Now()

	step("starting etcd and kube-apiserver (state in %s)", cfg.stateDir)
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(cfg.stateDir, "kube"), BinDir: cfg.binDir, Logf: logf})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, env.Stop()) }()

	m, err := localmesh.New(ctx, localmesh.Options{
		Env:           env,
		Dir:           filepath.Join(cfg.stateDir, "mesh"),
		BearkongBin:   filepath.Join(cfg.binDir, "bearkong"),
		EnvoyBin:      filepath.Join(cfg.binDir, "envoy"),
		DemoAppBin:    filepath.Join(cfg.binDir, "demo-app"),
		EnvoyLogLevel: cfg.envoyLogLevel,
		XDSProtocol:   cfg.xdsProtocol,
		XDSAddr:       cfg.xdsAddr,
		HTTPAddr:      cfg.httpAddr,
		Logf:          logf,

		ControlPlaneReplicas: cfg.replicas,
		ControlPlaneArgs:     controlPlaneArgs(cfg),
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "==> stopping everything")
		err = errors.Join(err, m.Close())
	}()

	step("starting the control plane: %d × bearkong cp", cfg.replicas)
	if err := m.StartControlPlane(ctx); err != nil {
		return err
	}
	promURL := ""
	if !cfg.noPrometheus {
		step("starting Prometheus on %s", cfg.promAddr)
		if promURL, err = m.StartPrometheus(ctx, "", cfg.promAddr); err != nil {
			return err
		}
	}

	step("creating services and starting pods (demo app + Envoy each, xDS protocol %s)", cmp.Or(cfg.xdsProtocol, translate.DefaultXDSProtocol))
	if err := m.AddApps(ctx, localmesh.DemoApps); err != nil {
		return err
	}
	step("waiting until every pod reaches every app")
	if err := m.WaitAllReachable(ctx, 60*time.Second); err != nil {
		return err
	}
	step("mesh ready after %s", time.Since(started).Round(100*time.Millisecond))

	printTable(ctx, out, m)
	printHowTo(ctx, out, m, env, promURL, cfg.stateDir)

	<-ctx.Done()
	fmt.Fprintln(out)
	return nil
}

// controlPlaneArgs are the extra flags of every `bearkong cp`: the URL of the Prometheus
// that run starts after the control plane (its address is fixed by -prometheus-addr), so
// that the page at /debug/ shows each Service's golden signals.
func controlPlaneArgs(cfg config) []string {
	if cfg.noPrometheus {
		return nil
	}
	return []string{"--prometheus-url", "http://" + cfg.promAddr}
}

// printTable prints who answers a request from each app's first pod to each app.
func printTable(ctx context.Context, out io.Writer, m *localmesh.Mesh) {
	fmt.Fprintf(out, "\nRequests through each app's outbound listener (its pod's own loopback address, :%d, header %q):\n\n", mesh.OutboundPort, mesh.ServiceHeader+": <to>")
	tw := tabwriter.NewWriter(out, 0, 0, 3, ' ', 0)
	fmt.Fprint(tw, "from \\ to")
	for _, to := range localmesh.DemoApps {
		fmt.Fprintf(tw, "\t%s", to.Name)
	}
	fmt.Fprintln(tw)
	for _, from := range localmesh.DemoApps {
		pods := m.PodsOf(from.Name)
		if len(pods) == 0 {
			continue
		}
		p := pods[0]
		fmt.Fprintf(tw, "%s (%s)", p.Name, p.OutboundAddr())
		for _, to := range localmesh.DemoApps {
			c := m.Call(ctx, p.Name, to.Name)
			switch {
			case c.Err != nil:
				fmt.Fprintf(tw, "\terror: %v", c.Err)
			case c.Pod != "":
				fmt.Fprintf(tw, "\t%d %s (%s)", c.Status, c.Pod, c.Answer.IP())
			default:
				fmt.Fprintf(tw, "\t%d %.40q", c.Status, c.Body)
			}
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// printHowTo prints copy-pasteable commands to poke at the mesh.
func printHowTo(ctx context.Context, out io.Writer, m *localmesh.Mesh, env *kubeenv.Env, promURL, stateDir string) {
	pods := m.Pods()
	first := pods[0]
	cp := m.ControlPlaneURL()
	fmt.Fprintf(out, `
Poke at it (from %[1]s, whose outbound listener is %[2]s):
  curl -s -H 'service: app-3' %[2]s
  curl -s -o /dev/null -w '%%{http_code}\n' -H 'service: no-such-app' %[2]s    # 404
  curl -s http://%[4]s/          # refused: a pod's inbound port takes mutual TLS only (mesh-mtls: STRICT)
  curl -s %[5]s/certs    # its workload certificate: spiffe://cluster.local/ns/%[6]s/sa/%[7]s

Control plane:
  %[3]s/debug/    (in a browser: proxies, services, diagnostics)
  curl -s %[3]s/debug/streams
  curl -s %[3]s/debug/diagnostics     # app-3's targetPort 5080 misses the sidecar
  curl -s %[3]s/metrics | grep ^bearkong_
`, first.Name, first.OutboundURL(), cp, first.InboundAddr(), first.AdminURL(), first.Namespace, first.ServiceAccount)
	printReplicas(ctx, out, m)
	printStatusHowTo(out, m)
	if promURL != "" {
		fmt.Fprintf(out, `
Prometheus: %[1]s
  curl -s %[1]s/api/v1/query --data-urlencode 'query=sum by (type) (bearkong_xds_ack_total)'
  curl -s %[1]s/api/v1/query --data-urlencode 'query=sum by (type) (bearkong_xds_nack_total)'
  curl -s %[1]s/api/v1/query --data-urlencode 'query=sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total[1m]))'
`, promURL)
	}
	fmt.Fprintf(out, "\nEnvoy admin (/config_dump, /clusters, /stats):\n")
	for _, p := range pods {
		fmt.Fprintf(out, "  %-9s %s/\n", p.Name, p.AdminURL())
	}
	fmt.Fprintf(out, `
Kubernetes API: %s
  export KUBECONFIG=%s
  kubectl get pods,services,endpointslices -o wide
  kubectl annotate service app-2 mesh-timeout=2s    # only app-2's proxies get a new RDS version
  kubectl annotate --overwrite service app-2 mesh-timeout=banana    # refused by the admission policy

Logs under %s. Press Ctrl-C to stop everything.
`, env.Host, env.Kubeconfig, stateDir)
}

// printStatusHowTo prints the bearkong status and config commands for this mesh: with
// every replica, since a proxy's stream is on one of them.
func printStatusHowTo(out io.Writer, m *localmesh.Mesh) {
	bin := "bearkong"
	if exe, err := os.Executable(); err == nil {
		bin = filepath.Join(filepath.Dir(exe), "bearkong")
	}
	servers := strings.Join(m.ControlPlaneURLs(), ",")
	fmt.Fprintf(out, `
Every proxy's xDS state, and one proxy's config against its Envoy's:
  %[1]s status --server %[2]s
  %[1]s config app-1-0.default --diff --server %[2]s
`, bin, servers)
}

// printReplicas lists the control plane's replicas and says which one holds the Lease.
func printReplicas(ctx context.Context, out io.Writer, m *localmesh.Mesh) {
	if m.ControlPlaneReplicas() == 1 {
		fmt.Fprintf(out, "  curl -s %s/debug/pprof/heap > heap.pprof && go tool pprof -top heap.pprof\n", m.DebugURL(0))
		return
	}
	leader, holder := -1, ""
	// The first replica ready takes the free Lease at once; give it a moment.
	for range 50 {
		var err error
		if leader, holder, err = m.LeaderReplica(ctx); err != nil || leader >= 0 || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Fprintf(out, "\n%d replicas; every one serves xDS, and the one holding Lease %s writes Events and statuses:\n", m.ControlPlaneReplicas(), localmesh.LeaseName)
	xds := m.XDSAddrs()
	for i, u := range m.ControlPlaneURLs() {
		role := ""
		if i == leader {
			role = "   <- leader"
		}
		fmt.Fprintf(out, "  replica %d (%s, pid %d): xDS %s, HTTP %s, pprof %s/debug/pprof/, log %s%s\n", i, localmesh.ReplicaIdentity(i), m.ControlPlanePid(i), xds[i], u, m.DebugURL(i), m.ControlPlaneReplicaLog(i), role)
	}
	if leader < 0 {
		fmt.Fprintf(out, "  (the Lease names %q, none of them, for now)\n", holder)
	}
	fmt.Fprintln(out, "  kubectl -n bearkong-system get lease bearkong    # who leads; kill -9 the leader's pid and another replica takes over")
}

// lock takes an exclusive, non-blocking flock on path, so that a second localmesh fails at
// once instead of fighting over addresses and state. The lock goes with the process.
func lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another localmesh is already running (it holds %s); stop it with Ctrl-C first", path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

// wipeState removes everything in dir except keep: each run starts a fresh cluster.
func wipeState(dir, keep string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Name() == keep {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("wipe state: %w", err)
		}
	}
	return nil
}
