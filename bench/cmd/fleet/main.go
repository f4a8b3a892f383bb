// Command fleet is bearkong's fleet benchmark: it runs bearkong and go-control-plane (the
// peer) each in a server process of its own, connects N simulated Envoys to each, drives
// the same mesh changes through both, and prints a table.
//
//	go run ./cmd/fleet [flags]          the benchmark (see -h)
//	go run ./cmd/fleet server [flags]   one server process (started by the benchmark)
//
// Everything listens on 127.0.0.1; every wait is bounded; the run stops by itself.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the driver's own profiles, with -pprof
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bearkong/bearkong/bench/server"
	"github.com/bearkong/bearkong/bench/workload"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "server" {
		if err := serverMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "fleet server:", err)
			os.Exit(1)
		}
		return
	}
	if err := driverMain(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(1)
	}
}

func serverMain(args []string) error {
	fs := flag.NewFlagSet("fleet server", flag.ContinueOnError)
	var o server.Options
	fs.StringVar(&o.Impl, "impl", "bearkong", "bearkong, peer, peer-linear or kube")
	fs.IntVar(&o.Workload.Services, "services", 1000, "S")
	fs.IntVar(&o.Workload.Endpoints, "endpoints", 3, "E")
	fs.IntVar(&o.Workload.Proxies, "proxies", 1000, "N")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "for -impl kube")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return server.Run(ctx, o)
}

type config struct {
	services, endpoints int
	proxies             []fleetSize
	impls               []string
	kinds               []string
	window              int
	neverACKProxies     int
	kubeProxies         int
	kubeServices        int
	conns               int
	out                 string
	timeout             time.Duration
	binDir              string
	profile             bool
	pushes              int
	kubePushes          int
	kubeProtocols       []string
	kubeDecode          string
	pushImpls           []string
	simMemory           int64
	minAvailable        int64
}

// fleetSize is one N of -proxies and how its clients decode.
type fleetSize struct {
	n      int
	decode string // "all" (every client decodes every resource) or "shared"
}

func driverMain(args []string) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	var c config
	var proxies, impls string
	fs.IntVar(&c.services, "services", 1000, "S: meshed Services")
	fs.IntVar(&c.endpoints, "endpoints", 3, "E: ready endpoints per Service")
	fs.StringVar(&proxies, "proxies", "1000", "N: simulated proxies, one run per value and control plane; N/all makes every client decode every resource it receives, as each Envoy does, N/shared decodes each distinct resource once for the fleet (default: -decode)")
	decode := fs.String("decode", "all", "how clients decode when -proxies does not say: all or shared")
	fs.StringVar(&impls, "impls", "bearkong,bearkong-delta,peer,peer-linear", "control planes to compare: bearkong, peer (go-control-plane's snapshot cache), peer-linear (its LinearCache for EDS under a MuxCache); a -delta suffix makes the clients speak incremental xDS to it")
	var kinds string
	fs.StringVar(&kinds, "changes", "endpoint,endpoint,endpoint,service,annotation,policy,noop,reconnect", "the changes of each run, in order (latency samples of the same kind are pooled); reconnect (delta runs only) has every proxy open a new stream with initial_resource_versions")
	fs.IntVar(&c.window, "window", 64<<10, "HTTP/2 stream and connection window of each simulated proxy (0: gRPC's default, which grows)")
	fs.IntVar(&c.neverACKProxies, "never-ack-proxies", 0, "N of the run where 1% of the proxies never ACK (0 skips it)")
	fs.IntVar(&c.kubeProxies, "kube-proxies", 1000, "N of the run through a real API server and informers (0 skips it); the proxies are the first N pods")
	fs.IntVar(&c.kubeServices, "kube-services", 1000, "S of that run, E pods each (-endpoints)")
	fs.IntVar(&c.kubePushes, "kube-pushes", 10, "new Services in a row at the end of the informer run, for memory (0 skips)")
	fs.StringVar(&c.kubeDecode, "kube-decode", "all", "how the informer path's clients decode: all (every client every resource, as each Envoy does) or shared (once for the fleet, for large S)")
	kubeProtocols := fs.String("kube-protocols", "delta,sotw", "the clients' xDS protocols on the informer path, one run each (each with its own API server), the default protocol (delta) first")
	fs.Int64Var(&c.simMemory, "sim-memory", 8<<30, "soft memory limit of the simulator's Go heap, in bytes (runtime/debug.SetMemoryLimit)")
	fs.Int64Var(&c.minAvailable, "min-available", 6<<30, "stop the whole run (servers included) when the machine's MemAvailable drops below this many bytes")
	fs.IntVar(&c.conns, "conns", 0, "gRPC connections the simulated proxies share (0: one each, as real Envoys)")
	pushImpls := fs.String("pushes-impls", "bearkong,bearkong-delta", "the control planes that get the -pushes phase (the peers' full pushes take minutes each with every client decoding)")
	fs.IntVar(&c.pushes, "pushes", 10, "after the changes, this many new Services in a row (full pushes), each awaited, with the server's RSS after each (0 skips the phase)")
	fs.StringVar(&c.out, "out", "out", "directory for results and logs")
	kubeLock := fs.String("kube-lock", "/tmp/bearkong-e2e.lock", "flock held during the informer run, shared with the e2e tests that start API servers (empty: none)")
	kubeLockWait := fs.Duration("kube-lock-wait", 10*time.Minute, "how long to wait for -kube-lock before skipping the informer run")
	benchmarks := fs.String("benchmarks", "", "rewrite the generated part of this BENCHMARKS.md with the results")
	fs.DurationVar(&c.timeout, "timeout", 14*time.Minute, "the whole run stops after this")
	fs.BoolVar(&c.profile, "profile", false, "write CPU profiles of the initial sync and of each change, and heap profiles after sync and after the pushes, of the server processes to <out>/prof (on the informer path too)")
	fs.StringVar(&c.binDir, "bin", "", "directory with etcd and kube-apiserver (default: <repo>/.cache/bin)")
	cpuprofile := fs.String("cpuprofile", "", "write the simulator's CPU profile to this file")
	pprofAddr := fs.String("pprof", "", "serve the simulator's own /debug/pprof on this address (e.g. 127.0.0.1:6061)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.kubeDecode != "all" && c.kubeDecode != "shared" {
		return fmt.Errorf("-kube-decode: %q is neither all nor shared", c.kubeDecode)
	}
	for _, p := range strings.Split(*kubeProtocols, ",") {
		switch p = strings.TrimSpace(p); p {
		case "sotw", "delta":
			c.kubeProtocols = append(c.kubeProtocols, p)
		case "":
		default:
			return fmt.Errorf("-kube-protocols: %q is neither sotw nor delta", p)
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *pprofAddr != "" {
		lis, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return err
		}
		go func() { _ = http.Serve(lis, nil) }()
	}
	for _, p := range strings.Split(proxies, ",") {
		if p == "" {
			continue
		}
		ns, mode, ok := strings.Cut(strings.TrimSpace(p), "/")
		if !ok {
			mode = *decode
		}
		n, err := strconv.Atoi(ns)
		if err != nil || n <= 0 || (mode != "all" && mode != "shared") {
			return fmt.Errorf("-proxies: bad value %q", p)
		}
		c.proxies = append(c.proxies, fleetSize{n: n, decode: mode})
	}
	c.impls = strings.Split(impls, ",")
	c.pushImpls = strings.Split(*pushImpls, ",")
	c.kinds = strings.Split(kinds, ",")
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	// The simulator saves CPU with a lazy GC, but under a memory limit: each simulated
	// proxy holds about 1 MB of live protocol state (its clusters and caches, as an
	// Envoy does), and every full push replaces much of it. With GOGC=400 and no limit
	// the heap grew to five times the live size between collections: 23 GB at N=5000,
	// which froze the machine. The limit makes the GC collect harder as it nears it; the
	// server processes run with Go's defaults.
	debug.SetGCPercent(200)
	debug.SetMemoryLimit(c.simMemory)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	go guardMemory(ctx, uint64(c.minAvailable))

	rep := &report{Started: time.Now(), Machine: machine(), Command: "cd bench && go run ./cmd/fleet " + strings.Join(args, " "), LoadStart: loadAverage(),
		Workload: workload.Config{Services: c.services, Endpoints: c.endpoints}}
runs:
	for _, fs := range c.proxies {
		for _, impl := range c.impls {
			r, err := runFleet(ctx, c, impl, fs, 0)
			if err != nil {
				// One control plane failing (a stream it cannot serve, a timeout)
				// does not stop the others: the table says what is missing.
				logf("%s, N=%d: %v", impl, fs.n, err)
				rep.Failed = append(rep.Failed, fmt.Sprintf("%s, N=%d (%s decode): %v", impl, fs.n, fs.decode, err))
				rep.save(c.out)
				if ctx.Err() != nil {
					break runs // out of time: write what was measured
				}
				continue
			}
			rep.Runs = append(rep.Runs, r)
			rep.save(c.out)
		}
	}
	if c.neverACKProxies > 0 && ctx.Err() == nil {
		for _, impl := range c.impls {
			r, err := runFleet(ctx, c, impl, fleetSize{n: c.neverACKProxies, decode: "shared"}, c.neverACKProxies/100)
			if err != nil {
				return fmt.Errorf("%s, N=%d with 1%% never ACKing: %w", impl, c.neverACKProxies, err)
			}
			rep.Stuck = append(rep.Stuck, r)
			rep.save(c.out)
		}
	}
	for _, protocol := range c.kubeProtocols {
		if c.kubeProxies == 0 || ctx.Err() != nil {
			break
		}
		// kubeenv picks free ports, but an API server is heavy: take the lock the
		// e2e tests share, so as not to run beside them on a small machine.
		unlock := func() {}
		var err error
		if *kubeLock != "" {
			lctx, lcancel := context.WithTimeout(ctx, *kubeLockWait)
			unlock, err = lockFile(lctx, *kubeLock)
			lcancel()
			if err != nil {
				err = fmt.Errorf("not run: %s stayed held by e2e tests for %s", *kubeLock, *kubeLockWait)
			}
		}
		var r *Run
		if err == nil {
			r, err = runKube(ctx, c, protocol)
			unlock()
		}
		if err != nil {
			logf("informer path, %s: %v", protocol, err)
			rep.Failed = append(rep.Failed, fmt.Sprintf("informer path, %s: %v", protocol, err))
			continue
		}
		rep.Kube = append(rep.Kube, r)
		rep.save(c.out)
	}
	rep.Finished = time.Now()
	rep.LoadEnd = loadAverage()
	rep.save(c.out)
	fmt.Print(rep.markdown())
	if *benchmarks != "" {
		return rep.writeBenchmarks(*benchmarks)
	}
	return nil
}

// lockFile takes an exclusive flock on path, waiting for it as long as ctx allows.
func lockFile(ctx context.Context, path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return nil, err
	}
	logged := false
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
		}
		if !logged {
			logf("waiting for %s (an e2e test holds it)", path)
			logged = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
