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
	fs.StringVar(&o.Impl, "impl", "bearkong", "bearkong, peer or kube")
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
	proxies             []int
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
}

func driverMain(args []string) error {
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	var c config
	var proxies, impls string
	fs.IntVar(&c.services, "services", 1000, "S: meshed Services")
	fs.IntVar(&c.endpoints, "endpoints", 3, "E: ready endpoints per Service")
	fs.StringVar(&proxies, "proxies", "1000,5000", "N: simulated proxies, one run per value")
	fs.StringVar(&impls, "impls", "bearkong,peer", "control planes to compare")
	var kinds string
	fs.StringVar(&kinds, "changes", "endpoint,endpoint,endpoint,service,annotation,policy,noop", "the changes of each run, in order (latency samples of the same kind are pooled)")
	fs.IntVar(&c.window, "window", 64<<10, "HTTP/2 stream and connection window of each simulated proxy (0: gRPC's default, which grows)")
	fs.IntVar(&c.neverACKProxies, "never-ack-proxies", 5000, "N of the run where 1% of the proxies never ACK (0 skips it)")
	fs.IntVar(&c.kubeProxies, "kube-proxies", 500, "N of the run through a real API server and informers (0 skips it)")
	fs.IntVar(&c.kubeServices, "kube-services", 100, "S of that run (E = N/S)")
	fs.IntVar(&c.conns, "conns", 0, "gRPC connections the simulated proxies share (0: one each, as real Envoys)")
	fs.IntVar(&c.pushes, "pushes", 0, "after the changes, this many new Services in a row (full pushes), each awaited, with the server's RSS after each (0 skips the phase)")
	fs.StringVar(&c.out, "out", "out", "directory for results and logs")
	fs.DurationVar(&c.timeout, "timeout", 14*time.Minute, "the whole run stops after this")
	fs.BoolVar(&c.profile, "profile", false, "write CPU profiles of each change and heap profiles after sync of the server processes to <out>/prof")
	fs.StringVar(&c.binDir, "bin", "", "directory with etcd and kube-apiserver (default: <repo>/.cache/bin)")
	cpuprofile := fs.String("cpuprofile", "", "write the simulator's CPU profile to this file")
	pprofAddr := fs.String("pprof", "", "serve the simulator's own /debug/pprof on this address (e.g. 127.0.0.1:6061)")
	if err := fs.Parse(args); err != nil {
		return err
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
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n <= 0 {
			return fmt.Errorf("-proxies: bad value %q", p)
		}
		c.proxies = append(c.proxies, n)
	}
	c.impls = strings.Split(impls, ",")
	c.kinds = strings.Split(kinds, ",")
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	// The simulator has memory to spare and CPU to save; the server processes run with
	// Go's defaults.
	debug.SetGCPercent(400)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	rep := &report{Started: time.Now(), Machine: machine(), Command: "make bench (go run ./cmd/fleet " + strings.Join(args, " ") + ")",
		Workload: workload.Config{Services: c.services, Endpoints: c.endpoints}}
	for _, n := range c.proxies {
		for _, impl := range c.impls {
			r, err := runFleet(ctx, c, impl, n, 0)
			if err != nil {
				return fmt.Errorf("%s, N=%d: %w", impl, n, err)
			}
			rep.Runs = append(rep.Runs, r)
			rep.save(c.out)
		}
	}
	if c.neverACKProxies > 0 {
		for _, impl := range c.impls {
			r, err := runFleet(ctx, c, impl, c.neverACKProxies, c.neverACKProxies/100)
			if err != nil {
				return fmt.Errorf("%s, N=%d with 1%% never ACKing: %w", impl, c.neverACKProxies, err)
			}
			rep.Stuck = append(rep.Stuck, r)
			rep.save(c.out)
		}
	}
	if c.kubeProxies > 0 {
		r, err := runKube(ctx, c)
		if err != nil {
			return fmt.Errorf("informer path: %w", err)
		}
		rep.Kube = r
	}
	rep.Finished = time.Now()
	rep.save(c.out)
	fmt.Print(rep.markdown())
	return nil
}
