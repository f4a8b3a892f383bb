// Package server is the server side of the fleet benchmark. It runs in a process of its
// own, so that its CPU time and memory are the control plane's alone: the simulated
// proxies live in the driver process.
//
// Two implementations serve the same workload:
//   - bearkong: the real control plane (internal/controlplane), fed mesh snapshots
//     through its Source, so each goes through translate.New and ads.Server.SetConfig;
//   - peer: go-control-plane's snapshot cache (ADS mode) and SotW server, given the very
//     same Envoy resources that translate built, one SetSnapshot per node.
//
// A third, kube, runs bearkong on the real informer path against an API server.
//
// The driver talks to it over HTTP on 127.0.0.1: POST /prepare and /commit make a change, GET /stats
// reports CPU and memory, /debug/pprof profiles.
package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	rpprof "runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/bearkong/bearkong/bench/workload"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Impl is a control plane under test.
type Impl interface {
	// Start listens for ADS on 127.0.0.1 and serves until ctx ends; it returns the
	// address once listening.
	Start(ctx context.Context) (addr string, err error)
	// Apply hands a new mesh snapshot to the control plane. It may return before the
	// proxies have it.
	Apply(snap *mesh.Snapshot) error
}

// Ready is what the server process prints on its first line of stdout.
type Ready struct {
	XDS     string `json:"xds"`
	Control string `json:"control"`
	Pid     int    `json:"pid"`
}

// Options configure Run.
type Options struct {
	Impl     string // bearkong, peer or kube
	Workload workload.Config
	// Kubeconfig is for the kube implementation.
	Kubeconfig string
}

// Run serves until ctx ends.
func Run(ctx context.Context, o Options) error {
	var impl Impl
	switch o.Impl {
	case "bearkong":
		impl = newBearkong()
	case "peer", "peer-linear":
		p, err := newPeer(o.Impl == "peer-linear")
		if err != nil {
			return err
		}
		impl = p
	case "kube":
		k, err := newKube(o.Kubeconfig)
		if err != nil {
			return err
		}
		impl = k
	default:
		return fmt.Errorf("unknown implementation %q", o.Impl)
	}
	var state *workload.State
	if o.Impl != "kube" {
		state = workload.New(o.Workload)
		if err := impl.Apply(state.Snapshot()); err != nil {
			return fmt.Errorf("initial snapshot: %w", err)
		}
	}
	addr, err := impl.Start(ctx)
	if err != nil {
		return err
	}

	// A change comes in two steps, so that the driver knows what to look for before
	// the proxies can get it: /prepare changes the mesh and says what changed, /commit
	// builds the snapshot and hands it to the control plane.
	var mu sync.Mutex
	seq := 0
	mux := http.NewServeMux()
	mux.HandleFunc("POST /prepare", func(w http.ResponseWriter, r *http.Request) {
		if state == nil {
			http.Error(w, "this implementation takes its changes from the API server", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		ch, err := state.Apply(r.URL.Query().Get("kind"), seq)
		seq++
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, ch)
	})
	mux.HandleFunc("POST /commit", func(w http.ResponseWriter, r *http.Request) {
		if state == nil {
			http.Error(w, "this implementation takes its changes from the API server", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		snap := state.Snapshot()
		snap.ChangedAt = time.Now()
		if err := impl.Apply(snap); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, struct{}{})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, ReadStats(r.URL.Query().Get("gc") != ""))
	})
	// CPU profiles of a change, started and stopped by the driver (-profile).
	mux.HandleFunc("POST /cpuprofile/start", func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Create(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := rpprof.StartCPUProfile(f); err != nil {
			f.Close()
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		profFile = f
		writeJSON(w, struct{}{})
	})
	mux.HandleFunc("POST /cpuprofile/stop", func(w http.ResponseWriter, r *http.Request) {
		rpprof.StopCPUProfile()
		if profFile != nil {
			profFile.Close()
			profFile = nil
		}
		writeJSON(w, struct{}{})
	})
	mux.HandleFunc("POST /heapprofile", func(w http.ResponseWriter, r *http.Request) {
		runtime.GC()
		f, err := os.Create(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer f.Close()
		if err := rpprof.Lookup("heap").WriteTo(f, 0); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, struct{}{})
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	defer hs.Close()

	b, _ := json.Marshal(Ready{XDS: addr, Control: lis.Addr().String(), Pid: os.Getpid()})
	fmt.Println(string(b))
	<-ctx.Done()
	return nil
}

var profFile *os.File

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// Stats is what a process reports about itself.
type Stats struct {
	// CPU is user plus system time since the process started, in seconds.
	CPU float64 `json:"cpu"`
	// HeapInuse and HeapAlloc are from runtime.MemStats; StackInuse is goroutine stacks.
	HeapInuse  uint64 `json:"heap_inuse"`
	HeapAlloc  uint64 `json:"heap_alloc"`
	StackInuse uint64 `json:"stack_inuse"`
	GoSys      uint64 `json:"go_sys"`
	// RSS and HWM are VmRSS and VmHWM (peak RSS) from /proc/self/status.
	RSS        uint64 `json:"rss"`
	HWM        uint64 `json:"hwm"`
	Goroutines int    `json:"goroutines"`
}

// ReadStats reads the process's CPU time and memory. With gc, it first collects
// garbage and returns freed memory to the OS, so that heap and RSS show live memory.
func ReadStats(gc bool) Stats {
	if gc {
		runtime.GC()
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	st := Stats{
		CPU:        tv(ru.Utime) + tv(ru.Stime),
		HeapInuse:  ms.HeapInuse,
		HeapAlloc:  ms.HeapAlloc,
		StackInuse: ms.StackInuse,
		GoSys:      ms.Sys,
		Goroutines: runtime.NumGoroutine(),
	}
	st.RSS, st.HWM = procStatus("self")
	return st
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// procStatus returns VmRSS and VmHWM of /proc/<pid>/status, in bytes.
func procStatus(pid string) (rss, hwm uint64) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := bytes.Fields(sc.Bytes())
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseUint(string(f[1]), 10, 64)
		switch string(f[0]) {
		case "VmRSS:":
			rss = kb << 10
		case "VmHWM:":
			hwm = kb << 10
		}
	}
	return rss, hwm
}
