package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/bearkong/bearkong/bench/workload"
)

type report struct {
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished"`
	Machine  string          `json:"machine"`
	Command  string          `json:"command"`
	Workload workload.Config `json:"workload"`
	Runs     []*Run          `json:"runs"`
	Stuck    []*Run          `json:"stuck"`
	Kube     *Run            `json:"kube,omitempty"`
}

func (r *report) save(dir string) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		_ = os.WriteFile(filepath.Join(dir, "results.json"), b, 0o644)
	}
	_ = os.WriteFile(filepath.Join(dir, "results.md"), []byte(r.markdown()), 0o644)
}

// machine describes the host: cores, CPU model, memory, OS, Go.
func machine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	mem := "unknown memory"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
				var kb float64
				fmt.Sscan(f[1], &kb)
				mem = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%d cores (nproc), %s, %s memory, %s/%s, %s", runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// pooled merges the runs' changes of one kind: latency samples pooled, the rest averaged.
func (r *Run) pooled(kind string) *Change {
	var out *Change
	k := 0
	for _, c := range r.Changes {
		if c.Kind != kind {
			continue
		}
		k++
		if out == nil {
			cp := *c
			cp.Samples = slices.Clone(c.Samples)
			cp.ResourcesPerResponse = map[string][2]int{}
			for t, mm := range c.ResourcesPerResponse {
				cp.ResourcesPerResponse[t] = mm
			}
			out = &cp
			continue
		}
		out.Clients += c.Clients
		out.Reached += c.Reached
		out.Got += c.Got
		out.Samples = append(out.Samples, c.Samples...)
		out.Responses += c.Responses
		out.Resources += c.Resources
		out.Bytes += c.Bytes
		out.ServerCPU += c.ServerCPU
		out.ClientCPU += c.ClientCPU
		out.StuckGot += c.StuckGot
		for t, mm := range c.ResourcesPerResponse {
			if o, ok := out.ResourcesPerResponse[t]; ok {
				mm = [2]int{min(o[0], mm[0]), max(o[1], mm[1])}
			}
			out.ResourcesPerResponse[t] = mm
		}
	}
	if out == nil || k == 1 {
		return out
	}
	f := float64(k)
	out.Responses /= f
	out.Resources /= f
	out.Bytes /= f
	out.ServerCPU /= f
	out.ClientCPU /= f
	slices.Sort(out.Samples)
	if n := len(out.Samples); n > 0 {
		out.P50, out.P99, out.Max = percentile(out.Samples, 50), percentile(out.Samples, 99), out.Samples[n-1]
	}
	return out
}

// row is one metric: a label, how to read it from a run, how to print it, and whether
// lower is better (ratios are then peer ÷ bearkong, so > 1 means bearkong is ahead).
type row struct {
	label string
	get   func(*Run) (float64, bool)
	unit  string
	ratio bool
}

func changeMetric(kind string, f func(*Change) float64) func(*Run) (float64, bool) {
	return func(r *Run) (float64, bool) {
		c := r.pooled(kind)
		if c == nil {
			return 0, false
		}
		return f(c), true
	}
}

func stat(f func(*Run) float64) func(*Run) (float64, bool) {
	return func(r *Run) (float64, bool) { return f(r), true }
}

const kib, mibf = 1 << 10, 1 << 20

var rows = []row{
	{"initial sync: all N proxies ACKed all 4 types (s)", stat(func(r *Run) float64 { return r.SyncAll }), "%.1f", true},
	{"initial sync: median proxy (s)", stat(func(r *Run) float64 { return r.SyncP50 }), "%.1f", true},
	{"endpoint change ACKed by all: p50 (ms)", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.P50 }), "%.0f", true},
	{"endpoint change ACKed by all: p99 (ms)", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.P99 }), "%.0f", true},
	{"endpoint change ACKed by all: max (ms)", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.Max }), "%.0f", true},
	{"new service ACKed by all (CDS+EDS+RDS): p50 (ms)", changeMetric(workload.NewService, func(c *Change) float64 { return c.P50 }), "%.0f", true},
	{"new service ACKed by all (CDS+EDS+RDS): max (ms)", changeMetric(workload.NewService, func(c *Change) float64 { return c.Max }), "%.0f", true},
	{"policy change ACKed by all (CDS+EDS): p50 (ms)", changeMetric(workload.Policy, func(c *Change) float64 { return c.P50 }), "%.0f", true},
	{"policy change ACKed by all (CDS+EDS): max (ms)", changeMetric(workload.Policy, func(c *Change) float64 { return c.Max }), "%.0f", true},
	{"bytes sent per proxy: endpoint change", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.Bytes }), "%.0f", true},
	{"bytes sent per proxy: new service", changeMetric(workload.NewService, func(c *Change) float64 { return c.Bytes }), "%.0f", true},
	{"bytes sent per proxy: annotation change", changeMetric(workload.Annotation, func(c *Change) float64 { return c.Bytes }), "%.0f", false},
	{"bytes sent per proxy: policy change (mesh-max-connections)", changeMetric(workload.Policy, func(c *Change) float64 { return c.Bytes }), "%.0f", true},
	{"bytes sent per proxy: no-op", changeMetric(workload.NoOp, func(c *Change) float64 { return c.Bytes }), "%.0f", false},
	{"resources per proxy: endpoint change", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.Resources }), "%.1f", true},
	{"control-plane CPU per change: endpoint (s)", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.ServerCPU }), "%.2f", true},
	{"control-plane CPU per change: new service (s)", changeMetric(workload.NewService, func(c *Change) float64 { return c.ServerCPU }), "%.2f", true},
	{"control-plane CPU per change: annotation (s)", changeMetric(workload.Annotation, func(c *Change) float64 { return c.ServerCPU }), "%.2f", true},
	{"control-plane CPU per change: policy (s)", changeMetric(workload.Policy, func(c *Change) float64 { return c.ServerCPU }), "%.2f", true},
	{"control-plane CPU per change: no-op (s)", changeMetric(workload.NoOp, func(c *Change) float64 { return c.ServerCPU }), "%.2f", true},
	{"control-plane CPU for the initial sync (s)", stat(func(r *Run) float64 { return r.SyncCPU }), "%.1f", true},
	{"heap in use after sync (MiB)", stat(func(r *Run) float64 { return float64(r.AfterSync.HeapInuse) / mibf }), "%.0f", true},
	{"RSS after sync (MiB)", stat(func(r *Run) float64 { return float64(r.AfterSync.RSS) / mibf }), "%.0f", true},
	{"peak RSS over the run (MiB)", stat(func(r *Run) float64 { return float64(r.PeakRSS()) / mibf }), "%.0f", true},
	{"heap per proxy beyond the shared config (KiB)", stat(func(r *Run) float64 {
		return (float64(r.AfterSync.HeapInuse) - float64(r.Baseline.HeapInuse)) / float64(r.N) / kib
	}), "%.1f", true},
	{"RSS per proxy beyond the shared config (KiB)", stat(func(r *Run) float64 {
		return (float64(r.AfterSync.RSS) - float64(r.Baseline.RSS)) / float64(r.N) / kib
	}), "%.1f", true},
	{"simulator CPU per endpoint change (s)", changeMetric(workload.Endpoint, func(c *Change) float64 { return c.ClientCPU }), "%.2f", false},
}

func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s\n\nWorkload: S=%d services x E=%d endpoints\n\n", r.Machine, r.Workload.Services, r.Workload.Endpoints)
	// Group runs by N, in order.
	var ns []int
	byKey := map[string]*Run{}
	for _, run := range r.Runs {
		if !slices.Contains(ns, run.N) {
			ns = append(ns, run.N)
		}
		byKey[fmt.Sprint(run.Impl, run.N)] = run
	}
	if len(ns) > 0 {
		b.WriteString("| metric |")
		sep := "| --- |"
		for _, n := range ns {
			fmt.Fprintf(&b, " bearkong N=%d | peer N=%d | peer ÷ bearkong |", n, n)
			sep += " ---: | ---: | ---: |"
		}
		b.WriteString("\n" + sep + "\n")
		for _, rw := range rows {
			fmt.Fprintf(&b, "| %s |", rw.label)
			for _, n := range ns {
				bk, pe := byKey[fmt.Sprint("bearkong", n)], byKey[fmt.Sprint("peer", n)]
				bv, bok := get(rw, bk)
				pv, pok := get(rw, pe)
				fmt.Fprintf(&b, " %s | %s | %s |", cell(rw.unit, bv, bok), cell(rw.unit, pv, pok), ratio(rw, bv, pv, bok && pok))
			}
			b.WriteString("\n")
		}
		b.WriteString("\nResources per response (min–max) by type:\n\n")
		for _, n := range ns {
			for _, impl := range []string{"bearkong", "peer"} {
				run := byKey[fmt.Sprint(impl, n)]
				if run == nil {
					continue
				}
				fmt.Fprintf(&b, "- %s N=%d:", impl, n)
				for _, kind := range []string{workload.Endpoint, workload.NewService, workload.Annotation, workload.Policy, workload.NoOp} {
					c := run.pooled(kind)
					if c == nil {
						continue
					}
					fmt.Fprintf(&b, " %s %s;", kind, perType(c))
				}
				got, all := reachedOf(run, workload.Endpoint)
				fmt.Fprintf(&b, " endpoint changes reached %d/%d proxies\n", got, all)
			}
		}
	}
	if len(r.Stuck) > 0 {
		b.WriteString("\n1% of the proxies never ACK (endpoint changes, latencies over the proxies that do ACK):\n\n")
		b.WriteString("| run | proxies | never ACK | p50 (ms) | p99 (ms) | max (ms) | reached | stuck proxies that got the push |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, s := range r.Stuck {
			if clean := byKey[fmt.Sprint(s.Impl, s.N)]; clean != nil {
				if c := clean.pooled(workload.Endpoint); c != nil {
					fmt.Fprintf(&b, "| %s, all ACK | %d | 0 | %.0f | %.0f | %.0f | %d/%d | – |\n", s.Impl, clean.N, c.P50, c.P99, c.Max, c.Reached, c.Clients)
				}
			}
			if c := s.pooled(workload.Endpoint); c != nil {
				fmt.Fprintf(&b, "| %s, 1%% stuck | %d | %d | %.0f | %.0f | %.0f | %d/%d | %d/%d |\n", s.Impl, s.N, s.NeverACK, c.P50, c.P99, c.Max, c.Reached, c.Clients, c.StuckGot, s.NeverACK*r.countKind(s, workload.Endpoint))
			}
		}
	}
	if k := r.Kube; k != nil {
		fmt.Fprintf(&b, "\nInformer path (bearkong, real kube-apiserver and etcd, discovery defaults: quiet period 100ms, max delay 1s), S=%d, E=%d, N=%d; latencies from the API write to the ACK:\n\n", k.S, k.E, k.N)
		b.WriteString("| change | reached | p50 (ms) | p99 (ms) | max (ms) | bytes per proxy | control-plane CPU (s) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		fmt.Fprintf(&b, "| initial sync (%d proxies) | %d/%d | %.0f | | %.0f | | %.1f |\n", k.N, k.N, k.N, k.SyncP50*1000, k.SyncAll*1000, k.SyncCPU)
		for _, kind := range []string{workload.Endpoint, workload.NewService, workload.Annotation, kubeUnrelated} {
			c := k.pooled(kind)
			if c == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %d/%d | %.0f | %.0f | %.0f | %.0f | %.2f |\n", kind, c.Reached, c.Clients, c.P50, c.P99, c.Max, c.Bytes, c.ServerCPU)
		}
		fmt.Fprintf(&b, "\nControl plane (informer caches included): after sync heap %.0f MiB, RSS %.0f MiB; peak RSS over the run %.0f MiB; before any proxy connected (baseline) RSS %.0f MiB.\n",
			float64(k.AfterSync.HeapInuse)/mibf, float64(k.AfterSync.RSS)/mibf, float64(k.PeakRSS())/mibf, float64(k.Baseline.RSS)/mibf)
	}
	for _, run := range r.Runs {
		if len(run.Pushes) == 0 {
			continue
		}
		last := run.Pushes[len(run.Pushes)-1]
		reached := 0
		for _, p := range run.Pushes {
			reached += p.Reached
		}
		fmt.Fprintf(&b, "\n%s, N=%d, %d full pushes (a new Service each, awaited; RSS as the process runs, no forced GC): RSS after sync %.0f MiB; after each push",
			run.Impl, run.N, len(run.Pushes), float64(run.AfterSyncNoGC.RSS)/mibf)
		for _, p := range run.Pushes {
			fmt.Fprintf(&b, " %.0f", float64(p.RSS)/mibf)
		}
		fmt.Fprintf(&b, " MiB; after %d pushes %+.0f %% of after sync; heap in use after sync %.0f, after the last push %.0f MiB; peak RSS over the run %.0f MiB; %d of %d proxy-pushes reached.\n",
			len(run.Pushes), 100*(float64(last.RSS)/float64(run.AfterSyncNoGC.RSS)-1), float64(run.AfterSyncNoGC.HeapInuse)/mibf, float64(last.HeapInuse)/mibf,
			float64(run.PeakRSS())/mibf, reached, len(run.Pushes)*last.Clients)
	}
	if !r.Finished.IsZero() {
		fmt.Fprintf(&b, "\nRun %s, %s.\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second))
	}
	return b.String()
}

func (r *report) countKind(run *Run, kind string) int {
	n := 0
	for _, c := range run.Changes {
		if c.Kind == kind {
			n++
		}
	}
	return n
}

func reachedOf(r *Run, kind string) (int, int) {
	c := r.pooled(kind)
	if c == nil {
		return 0, 0
	}
	return c.Reached, c.Clients
}

func perType(c *Change) string {
	if len(c.ResourcesPerResponse) == 0 {
		return "nothing sent"
	}
	var parts []string
	for _, t := range []string{"cds", "eds", "lds", "rds"} {
		if mm, ok := c.ResourcesPerResponse[t]; ok {
			if mm[0] == mm[1] {
				parts = append(parts, fmt.Sprintf("%s %d", t, mm[0]))
			} else {
				parts = append(parts, fmt.Sprintf("%s %d–%d", t, mm[0], mm[1]))
			}
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

func get(rw row, r *Run) (float64, bool) {
	if r == nil {
		return 0, false
	}
	return rw.get(r)
}

func cell(unit string, v float64, ok bool) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf(unit, v)
}

func ratio(rw row, b, p float64, ok bool) string {
	if !ok || !rw.ratio {
		return ""
	}
	switch {
	case b == 0 && p == 0:
		return "="
	case b <= 0 || p < 0:
		return "–"
	}
	return fmt.Sprintf("%.1f×", p/b)
}
