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
	Started   time.Time       `json:"started"`
	Finished  time.Time       `json:"finished"`
	Machine   string          `json:"machine"`
	Command   string          `json:"command"`
	Workload  workload.Config `json:"workload"`
	Runs      []*Run          `json:"runs"`
	Stuck     []*Run          `json:"stuck"`
	Kube      []*Run          `json:"kube,omitempty"` // the informer path, one run per protocol
	LoadStart string          `json:"load_start"`
	LoadEnd   string          `json:"load_end"`
	// Failed are the runs that did not complete, with why.
	Failed []string `json:"failed,omitempty"`
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
	// kind, for latency rows, is the change whose reach the cell shows when not every
	// proxy was reached.
	kind string
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

// latency is a latency of the change of kind, defined only when some proxy was reached.
func latency(kind string, f func(*Change) float64) func(*Run) (float64, bool) {
	return func(r *Run) (float64, bool) {
		c := r.pooled(kind)
		if c == nil || c.Reached == 0 {
			return 0, false
		}
		return f(c), true
	}
}

func stat(f func(*Run) float64) func(*Run) (float64, bool) {
	return func(r *Run) (float64, bool) { return f(r), true }
}

// afterPushes is f of the last of the run's full pushes (-pushes new Services in a row).
func afterPushes(f func(r *Run, last *Change) float64) func(*Run) (float64, bool) {
	return func(r *Run) (float64, bool) {
		if len(r.Pushes) == 0 {
			return 0, false
		}
		return f(r, r.Pushes[len(r.Pushes)-1]), true
	}
}

const kib, mibf = 1 << 10, 1 << 20

var rows = []row{
	{label: "initial sync: all N proxies ACKed every type (s)", get: stat(func(r *Run) float64 { return r.SyncAll }), unit: "%.1f", ratio: true},
	{label: "initial sync: median proxy (s)", get: stat(func(r *Run) float64 { return r.SyncP50 }), unit: "%.1f", ratio: true},
	{label: "control-plane CPU for the initial sync (s)", get: stat(func(r *Run) float64 { return r.SyncCPU }), unit: "%.1f", ratio: true},
	{label: "endpoint change ACKed by all: p50 (ms)", get: latency(workload.Endpoint, func(c *Change) float64 { return c.P50 }), unit: "%.0f", ratio: true, kind: workload.Endpoint},
	{label: "endpoint change ACKed by all: p99 (ms)", get: latency(workload.Endpoint, func(c *Change) float64 { return c.P99 }), unit: "%.0f", ratio: true, kind: workload.Endpoint},
	{label: "endpoint change ACKed by all: max (ms)", get: latency(workload.Endpoint, func(c *Change) float64 { return c.Max }), unit: "%.0f", ratio: true, kind: workload.Endpoint},
	{label: "new Service ACKed by all (CDS+EDS+SRDS+RDS): p50 (ms)", get: latency(workload.NewService, func(c *Change) float64 { return c.P50 }), unit: "%.0f", ratio: true, kind: workload.NewService},
	{label: "new Service ACKed by all (CDS+EDS+SRDS+RDS): p99 (ms)", get: latency(workload.NewService, func(c *Change) float64 { return c.P99 }), unit: "%.0f", ratio: true, kind: workload.NewService},
	{label: "new Service ACKed by all (CDS+EDS+SRDS+RDS): max (ms)", get: latency(workload.NewService, func(c *Change) float64 { return c.Max }), unit: "%.0f", ratio: true, kind: workload.NewService},
	{label: "`mesh-max-connections` on one Service ACKed by all (CDS+EDS): p50 (ms)", get: latency(workload.Policy, func(c *Change) float64 { return c.P50 }), unit: "%.0f", ratio: true, kind: workload.Policy},
	{label: "`mesh-max-connections` on one Service ACKed by all (CDS+EDS): p99 (ms)", get: latency(workload.Policy, func(c *Change) float64 { return c.P99 }), unit: "%.0f", ratio: true, kind: workload.Policy},
	{label: "`mesh-max-connections` on one Service ACKed by all (CDS+EDS): max (ms)", get: latency(workload.Policy, func(c *Change) float64 { return c.Max }), unit: "%.0f", ratio: true, kind: workload.Policy},
	{label: "bytes per proxy: endpoint change", get: changeMetric(workload.Endpoint, func(c *Change) float64 { return c.Bytes }), unit: "%.0f", ratio: true},
	{label: "bytes per proxy: new Service", get: changeMetric(workload.NewService, func(c *Change) float64 { return c.Bytes }), unit: "%.0f", ratio: true},
	{label: "bytes per proxy: `mesh-max-connections` on one Service", get: changeMetric(workload.Policy, func(c *Change) float64 { return c.Bytes }), unit: "%.0f", ratio: true},
	{label: "bytes per proxy: annotation no rule reads", get: changeMetric(workload.Annotation, func(c *Change) float64 { return c.Bytes }), unit: "%.0f"},
	{label: "bytes per proxy: no-op", get: changeMetric(workload.NoOp, func(c *Change) float64 { return c.Bytes }), unit: "%.0f"},
	{label: "bytes per proxy: reconnect with nothing changed (delta: initial_resource_versions)", get: changeMetric(reconnect, func(c *Change) float64 { return c.Bytes }), unit: "%.0f"},
	{label: "resources per proxy: endpoint change", get: changeMetric(workload.Endpoint, func(c *Change) float64 { return c.Resources }), unit: "%.1f", ratio: true},
	{label: "control-plane CPU per change: endpoint (s)", get: changeMetric(workload.Endpoint, func(c *Change) float64 { return c.ServerCPU }), unit: "%.2f", ratio: true},
	{label: "control-plane CPU per change: new Service (s)", get: changeMetric(workload.NewService, func(c *Change) float64 { return c.ServerCPU }), unit: "%.2f", ratio: true},
	{label: "control-plane CPU per change: `mesh-max-connections` (s)", get: changeMetric(workload.Policy, func(c *Change) float64 { return c.ServerCPU }), unit: "%.2f", ratio: true},
	{label: "control-plane CPU per change: no-op (s)", get: changeMetric(workload.NoOp, func(c *Change) float64 { return c.ServerCPU }), unit: "%.2f", ratio: true},
	{label: "heap in use after sync, after a GC (MiB)", get: stat(func(r *Run) float64 { return float64(r.AfterSync.HeapInuse) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS after sync, after a GC (MiB)", get: stat(func(r *Run) float64 { return float64(r.AfterSync.RSS) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS after sync, as it runs (MiB)", get: stat(func(r *Run) float64 { return float64(r.AfterSyncNoGC.RSS) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS after 10 new Services, as it runs (MiB)", get: afterPushes(func(r *Run, c *Change) float64 { return float64(c.RSS) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS after 10 new Services vs after sync (%)", get: afterPushes(func(r *Run, c *Change) float64 {
		return 100 * (float64(c.RSS)/float64(r.AfterSyncNoGC.RSS) - 1)
	}), unit: "%+.0f"},
	{label: "heap in use after 10 new Services, as it runs (MiB)", get: afterPushes(func(r *Run, c *Change) float64 { return float64(c.HeapInuse) / mibf }), unit: "%.0f", ratio: true},
	{label: "heap in use after 10 new Services, after a GC (MiB)", get: afterPushes(func(r *Run, c *Change) float64 { return float64(r.AfterPushesGC.HeapInuse) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS after 10 new Services, after a GC (MiB)", get: afterPushes(func(r *Run, c *Change) float64 { return float64(r.AfterPushesGC.RSS) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS after 10 new Services vs after sync, both after a GC (%)", get: afterPushes(func(r *Run, c *Change) float64 {
		return 100 * (float64(r.AfterPushesGC.RSS)/float64(r.AfterSync.RSS) - 1)
	}), unit: "%+.0f"},
	{label: "peak RSS up to the end of the initial sync, VmHWM (MiB)", get: stat(func(r *Run) float64 { return float64(r.AfterSyncNoGC.HWM) / mibf }), unit: "%.0f", ratio: true},
	{label: "peak RSS over the whole run, VmHWM (MiB)", get: stat(func(r *Run) float64 { return float64(r.PeakRSS()) / mibf }), unit: "%.0f", ratio: true},
	{label: "RSS per proxy beyond the shared config (KiB)", get: stat(func(r *Run) float64 {
		return (float64(r.AfterSync.RSS) - float64(r.Baseline.RSS)) / float64(r.N) / kib
	}), unit: "%.1f", ratio: true},
	{label: "streams lost during the run", get: stat(func(r *Run) float64 { return float64(r.StreamsLost) }), unit: "%.0f"},
	{label: "simulator: CPU per endpoint change (s)", get: changeMetric(workload.Endpoint, func(c *Change) float64 { return c.ClientCPU }), unit: "%.2f"},
	{label: "simulator: peak RSS of the driver process so far (MiB)", get: stat(func(r *Run) float64 { return float64(r.DriverHWM) / mibf }), unit: "%.0f"},
}

// label names a run's column.
func (r *Run) label() string {
	impl, _ := strings.CutSuffix(r.Impl, "-delta")
	name := map[string]string{"bearkong": "bearkong", "peer": "peer (snapshot cache)", "peer-linear": "peer (LinearCache EDS)"}[impl]
	if name == "" {
		name = impl
	}
	return name + ", " + r.Protocol
}

func isPeer(r *Run) bool { return strings.HasPrefix(r.Impl, "peer") }

func (r *report) markdown() string {
	var b strings.Builder
	// Group runs by N and decode mode, in order.
	type group struct {
		n      int
		decode string
		runs   []*Run
	}
	var groups []*group
	for _, run := range r.Runs {
		var g *group
		for _, x := range groups {
			if x.n == run.N && x.decode == run.Decode {
				g = x
			}
		}
		if g == nil {
			g = &group{n: run.N, decode: run.Decode}
			groups = append(groups, g)
		}
		g.runs = append(g.runs, run)
	}
	for _, g := range groups {
		mode := "each client decodes every resource it receives, as each Envoy does"
		if g.decode == "shared" {
			mode = "shared decode: each distinct resource is decoded once for the whole fleet"
		}
		fmt.Fprintf(&b, "\n### N=%d proxies, S=%d, E=%d; clients: %s\n\n", g.n, r.Workload.Services, r.Workload.Endpoints, mode)
		var bks, peers []*Run
		for _, run := range g.runs {
			if isPeer(run) {
				if run.Protocol == "sotw" {
					peers = append(peers, run)
				}
			} else {
				bks = append(bks, run)
			}
		}
		b.WriteString("| metric |")
		sep := "| --- |"
		for _, run := range g.runs {
			fmt.Fprintf(&b, " %s |", run.label())
			sep += " ---: |"
		}
		for _, bk := range bks {
			for _, p := range peers {
				fmt.Fprintf(&b, " %s ÷ %s |", strings.TrimSuffix(p.label(), ", sotw"), bk.label())
				sep += " ---: |"
			}
		}
		b.WriteString("\n" + sep + "\n")
		for _, rw := range rows {
			fmt.Fprintf(&b, "| %s |", rw.label)
			for _, run := range g.runs {
				v, ok := rw.get(run)
				b.WriteString(" " + cellOf(rw, run, v, ok) + " |")
			}
			for _, bk := range bks {
				for _, p := range peers {
					bv, bok := rw.get(bk)
					pv, pok := rw.get(p)
					b.WriteString(" " + ratio(rw, bv, pv, bok && pok) + " |")
				}
			}
			b.WriteString("\n")
		}
		b.WriteString("\nWhat each change sent (resources per response, min–max, by type):\n\n")
		for _, run := range g.runs {
			fmt.Fprintf(&b, "- %s:", run.label())
			for _, kind := range []string{workload.Endpoint, workload.NewService, workload.Policy, workload.Annotation, workload.NoOp, reconnect} {
				c := run.pooled(kind)
				if c == nil {
					continue
				}
				fmt.Fprintf(&b, " %s %s;", kind, perType(c))
			}
			if run.StreamsLost > 0 {
				fmt.Fprintf(&b, " %d streams lost (first: %s);", run.StreamsLost, run.LostErr)
			}
			b.WriteString("\n")
		}
	}
	if len(r.Stuck) > 0 {
		b.WriteString("\n### 1% of the proxies never ACK (endpoint changes, latencies over the proxies that do ACK)\n\n")
		b.WriteString("| run | proxies | never ACK | p50 (ms) | p99 (ms) | max (ms) | reached | stuck proxies that got the push |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, s := range r.Stuck {
			if c := s.pooled(workload.Endpoint); c != nil {
				fmt.Fprintf(&b, "| %s | %d | %d | %.0f | %.0f | %.0f | %d/%d | %d/%d |\n", s.label(), s.N, s.NeverACK, c.P50, c.P99, c.Max, c.Reached, c.Clients, c.StuckGot, s.NeverACK*r.countKind(s, workload.Endpoint))
			}
		}
	}
	for _, k := range r.Kube {
		fmt.Fprintf(&b, "\n### Through the informer path: API write to all ACKed, %s\n\nbearkong, `bearkong cp`'s discovery defaults (quiet period 100 ms, max delay 1 s) over a real etcd and kube-apiserver of its own; S=%d Services of E=%d pods, N=%d proxies (the first pod of each Service, then the second...) on %s; %s; latencies from just before the API write to each proxy's ACK.\n\n", protocolName(k.Protocol), k.S, k.E, k.N, protocolName(k.Protocol), decodeName(k.Decode))
		b.WriteString("| change | reached | p50 (ms) | p99 (ms) | max (ms) | bytes per proxy | control-plane CPU (s) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		fmt.Fprintf(&b, "| initial sync (%d proxies) | %d/%d | %.0f | | %.0f | | %.1f |\n", k.N, k.N-k.StreamsLost, k.N, k.SyncP50*1000, k.SyncAll*1000, k.SyncCPU)
		names := map[string]string{workload.Endpoint: "endpoint (EndpointSlice update, ×3)", workload.NewService: "new Service (Service + EndpointSlice created)",
			workload.Policy: "`mesh-max-connections` set on one Service", workload.Annotation: "`mesh-bench-note` annotation (no rule reads it)", kubeUnrelated: "unrelated annotation"}
		for _, kind := range []string{workload.Endpoint, workload.NewService, workload.Policy, workload.Annotation, kubeUnrelated} {
			c := k.pooled(kind)
			if c == nil {
				continue
			}
			lat := func(v float64) string {
				if c.Reached == 0 {
					return "–"
				}
				return fmt.Sprintf("%.0f", v)
			}
			fmt.Fprintf(&b, "| %s | %d/%d | %s | %s | %s | %.0f | %.2f |\n", names[kind], c.Reached, c.Clients, lat(c.P50), lat(c.P99), lat(c.Max), c.Bytes, c.ServerCPU)
		}
		fmt.Fprintf(&b, "\nControl plane (informer caches included): before any proxy (baseline) RSS %.0f MiB; after sync, after a GC: heap %.0f MiB, RSS %.0f MiB; as it runs after sync: RSS %.0f MiB",
			float64(k.Baseline.RSS)/mibf, float64(k.AfterSync.HeapInuse)/mibf, float64(k.AfterSync.RSS)/mibf, float64(k.AfterSyncNoGC.RSS)/mibf)
		if n := len(k.Pushes); n > 0 {
			last := k.Pushes[n-1]
			fmt.Fprintf(&b, "; after %d new Services in a row (each awaited): RSS %.0f MiB (%+.0f %%), heap %.0f MiB; RSS after each:", n, float64(last.RSS)/mibf, 100*(float64(last.RSS)/float64(k.AfterSyncNoGC.RSS)-1), float64(last.HeapInuse)/mibf)
			for _, p := range k.Pushes {
				fmt.Fprintf(&b, " %.0f", float64(p.RSS)/mibf)
			}
			fmt.Fprintf(&b, "; then after a GC: heap %.0f MiB, RSS %.0f MiB (%+.0f %% against after sync, after a GC)",
				float64(k.AfterPushesGC.HeapInuse)/mibf, float64(k.AfterPushesGC.RSS)/mibf, 100*(float64(k.AfterPushesGC.RSS)/float64(k.AfterSync.RSS)-1))
		}
		fmt.Fprintf(&b, "; peak RSS over the run %.0f MiB; streams lost %d.\n", float64(k.PeakRSS())/mibf, k.StreamsLost)
	}
	heading := false
	for _, run := range r.Runs {
		if len(run.Pushes) == 0 {
			continue
		}
		if !heading {
			heading = true
			fmt.Fprintf(&b, "\n### Server RSS after each of %d new Services in a row (each awaited until every proxy ACKed it; as the process runs, MiB)\n\n", len(run.Pushes))
		}
		fmt.Fprintf(&b, "- %s, N=%d (%s decode): after sync %.0f; after each:", run.label(), run.N, run.Decode, float64(run.AfterSyncNoGC.RSS)/mibf)
		for _, p := range run.Pushes {
			fmt.Fprintf(&b, " %.0f", float64(p.RSS)/mibf)
		}
		reached := 0
		for _, p := range run.Pushes {
			reached += p.Reached
		}
		fmt.Fprintf(&b, "; %d of %d proxy-pushes reached.\n", reached, len(run.Pushes)*run.Pushes[0].Clients)
	}
	if len(r.Failed) > 0 {
		b.WriteString("\n### Runs that did not complete\n\n")
		for _, f := range r.Failed {
			fmt.Fprintf(&b, "- %s\n", f)
		}
	}
	return b.String()
}

// Markers of the part of BENCHMARKS.md that `make bench` writes.
const (
	beginMarker = "<!-- generated by make bench: begin -->"
	endMarker   = "<!-- generated by make bench: end -->"
)

// writeBenchmarks replaces the generated part of the file at path (between the markers)
// with this report, headed by the command, the dates, the machine and how busy it was.
func (r *report) writeBenchmarks(path string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %q ... %q section", path, beginMarker, endMarker)
	}
	var b strings.Builder
	b.WriteString(beginMarker + "\n\n")
	fmt.Fprintf(&b, "- Command: `%s`\n", r.Command)
	fmt.Fprintf(&b, "- Date: %s to %s UTC (%s in all)\n", r.Started.UTC().Format("2006-01-02 15:04"), r.Finished.UTC().Format("15:04"), r.Finished.Sub(r.Started).Round(time.Second))
	fmt.Fprintf(&b, "- Machine: %s\n", r.Machine)
	fmt.Fprintf(&b, "- Load average (1 min) at the start and at the end: %s and %s, on %d cores: other work shared the machine when above that, so latencies are noisier than bytes and resource counts, which are exact.\n", r.LoadStart, r.LoadEnd, runtime.NumCPU())
	b.WriteString(r.markdown())
	b.WriteString("\n" + endMarker)
	return os.WriteFile(path, []byte(s[:i]+b.String()+s[j+len(endMarker):]), 0o644)
}

// loadAverage is the 1-minute load average.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
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
	for _, t := range []string{"cds", "eds", "lds", "srds", "rds", "sds"} {
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

// cellOf prints a value; a latency of a change that did not reach every proxy says how
// many it reached.
func cellOf(rw row, r *Run, v float64, ok bool) string {
	if rw.kind != "" {
		c := r.pooled(rw.kind)
		if c != nil && c.Reached == 0 && c.Clients > 0 {
			return fmt.Sprintf("not reached (0/%d)", c.Clients)
		}
		if ok && c != nil && c.Reached < c.Clients {
			return fmt.Sprintf(rw.unit+" (%d/%d reached)", v, c.Reached, c.Clients)
		}
	}
	if !ok {
		return "–"
	}
	return fmt.Sprintf(rw.unit, v)
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

// protocolName is how the report names a run's xDS protocol.
func protocolName(p string) string {
	if p == "delta" {
		return "delta xDS"
	}
	return "state of the world"
}

// decodeName says how a run's clients decode.
func decodeName(d string) string {
	if d == "shared" {
		return "the fleet decodes each distinct resource once (shared decode)"
	}
	return "clients decode every resource they receive, as each Envoy does"
}
