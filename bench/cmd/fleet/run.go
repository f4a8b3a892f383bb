package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/bearkong/bearkong/bench/server"
	"github.com/bearkong/bearkong/bench/sim"
	"github.com/bearkong/bearkong/bench/workload"
)

// Run is one server process with one fleet.
type Run struct {
	Impl string `json:"impl"`
	// Protocol is the clients' xDS protocol, sotw or delta; Decode how they decode:
	// all (each client every resource it receives, as each Envoy does) or shared (each
	// distinct resource once for the fleet).
	Protocol string `json:"protocol"`
	Decode   string `json:"decode"`
	// StreamsLost counts the clients whose stream ended during the run; LostErr is the
	// first such error.
	StreamsLost int    `json:"streams_lost"`
	LostErr     string `json:"lost_err,omitempty"`
	// DriverHWM is the simulator's peak RSS at the end of the run (for scale: it holds
	// every proxy's state).
	DriverHWM uint64 `json:"driver_hwm"`
	N         int    `json:"n"`
	NeverACK  int    `json:"never_ack"`
	S         int    `json:"s"`
	E         int    `json:"e"`
	// SyncAll is from the first dial to the moment every proxy had ACKed every type it
	// asked for; SyncP50 is the median proxy's time. Seconds.
	SyncAll float64 `json:"sync_all_s"`
	SyncP50 float64 `json:"sync_p50_s"`
	// Baseline is the server with its config and no proxy; AfterSync with all proxies
	// synced. Both after a GC that returns freed memory to the OS.
	Baseline  server.Stats `json:"baseline"`
	AfterSync server.Stats `json:"after_sync"`
	// AfterSyncNoGC is the server after sync as it runs, before that GC: what the
	// pushes phase compares with.
	AfterSyncNoGC server.Stats `json:"after_sync_no_gc"`
	// AfterPushesGC is the server after the pushes phase and a GC: live memory, to tell
	// growth that a collection returns from growth that stays.
	AfterPushesGC server.Stats `json:"after_pushes_gc"`
	// End is the server at the end of the run, after the last change, without a GC:
	// its HWM is the peak RSS over the whole run (sync and changes).
	End server.Stats `json:"end"`
	// SyncCPU is the server's CPU seconds for the initial sync.
	SyncCPU float64 `json:"sync_cpu_s"`
	// ClientRSS is the simulator's (driver's) RSS after sync, for scale.
	ClientRSS uint64    `json:"client_rss"`
	Changes   []*Change `json:"changes"`
	// Pushes are the pushes phase's new Services, in order (see -pushes).
	Pushes []*Change `json:"pushes,omitempty"`
}

// Change is one change and what it cost.
type Change struct {
	Kind    string `json:"kind"`
	Cluster string `json:"cluster,omitempty"`
	// Clients is the number of normal (ACKing) proxies; Reached those that got the
	// change as expected; Got those that got any response.
	Clients int `json:"clients"`
	Reached int `json:"reached"`
	Got     int `json:"got"`
	// Latencies, over the proxies reached, from the change to the ACK of the last
	// response it caused. Milliseconds.
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
	// Per normal proxy, averaged: responses, resources and DiscoveryResponse bytes.
	Responses float64 `json:"responses_per_proxy"`
	Resources float64 `json:"resources_per_proxy"`
	Bytes     float64 `json:"bytes_per_proxy"`
	// ResourcesPerResponse is the range of resources per response of each type.
	ResourcesPerResponse map[string][2]int `json:"resources_per_response"`
	// ServerCPU and ClientCPU are CPU seconds spent by the server process and by the
	// simulator from the change until all was quiet.
	ServerCPU float64 `json:"server_cpu_s"`
	ClientCPU float64 `json:"client_cpu_s"`
	// RSS and HeapInuse are the server's once all was quiet after the change, without
	// a forced GC: what the process holds as it runs.
	RSS       uint64 `json:"rss"`
	HeapInuse uint64 `json:"heap_inuse"`
	// DriverRSS and DriverHeap are the simulator's (this process's) RSS and heap in use
	// once all was quiet: what the fleet itself holds, watched so that it stays bounded.
	DriverRSS  uint64 `json:"driver_rss"`
	DriverHeap uint64 `json:"driver_heap"`
	// StuckGot is how many never-ACKing proxies got a response for the change.
	StuckGot int `json:"stuck_got"`
	// Samples are the per-proxy latencies (ms), for pooling; not saved.
	Samples []float64 `json:"-"`
}

// child is a server process.
type child struct {
	cmd   *exec.Cmd
	ready server.Ready
	http  *http.Client
}

func startChild(ctx context.Context, c config, logPath string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{"server"}, args...)...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	addChild(cmd.Process.Pid)
	ch := &child{cmd: cmd, http: &http.Client{Timeout: 2 * time.Minute}}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
		}
	}()
	select {
	case l, ok := <-line:
		if !ok || json.Unmarshal([]byte(l), &ch.ready) != nil {
			ch.stop()
			return nil, fmt.Errorf("server process did not start (see %s): %q", logPath, l)
		}
	case <-time.After(3 * time.Minute):
		ch.stop()
		return nil, fmt.Errorf("server process not ready within 3m (see %s)", logPath)
	case <-ctx.Done():
		ch.stop()
		return nil, ctx.Err()
	}
	return ch, nil
}

func (ch *child) stop() {
	defer removeChild(ch.cmd.Process.Pid)
	_ = ch.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = ch.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = ch.cmd.Process.Kill()
		<-done
	}
}

func (ch *child) stats(gc bool) (server.Stats, error) {
	var st server.Stats
	u := "http://" + ch.ready.Control + "/stats"
	if gc {
		u += "?gc=1"
	}
	resp, err := ch.http.Get(u)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (ch *child) post(path string, out any) error {
	resp, err := ch.http.Post("http://"+ch.ready.Control+path, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s: %s", path, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// runFleet starts a server process, syncs n proxies (the last stuck of which never
// ACK), and drives the changes.
func runFleet(ctx context.Context, c config, impl string, size fleetSize, stuck int) (*Run, error) {
	n := size.n
	wc := workload.Config{Services: c.services, Endpoints: c.endpoints, Proxies: n}
	serverImpl, delta := strings.CutSuffix(impl, "-delta")
	r := &Run{Impl: impl, Protocol: "sotw", Decode: size.decode, N: n, NeverACK: stuck, S: wc.Services, E: wc.Endpoints}
	if delta {
		r.Protocol = "delta"
	}
	sim.FullDecode = size.decode == "all"
	name := fmt.Sprintf("%s-n%d-%s", impl, n, size.decode)
	if stuck > 0 {
		name += "-stuck"
	}
	logf("%s: starting the server (S=%d, E=%d, N=%d, never ACK=%d, %s, decode %s)", impl, wc.Services, wc.Endpoints, n, stuck, r.Protocol, r.Decode)
	ch, err := startChild(ctx, c, filepath.Join(c.out, name+".log"), "-impl", serverImpl,
		"-services", strconv.Itoa(wc.Services), "-endpoints", strconv.Itoa(wc.Endpoints), "-proxies", strconv.Itoa(n))
	if err != nil {
		return nil, err
	}
	defer ch.stop()
	// The initial snapshot is applied before the server listens; give an asynchronous
	// translate a moment, then take the baseline.
	if err := waitServerIdle(ctx, ch, 30*time.Second); err != nil {
		return nil, err
	}
	if r.Baseline, err = ch.stats(true); err != nil {
		return nil, err
	}

	pods := workload.Pods(wc)
	nodes := make([]*corev3.Node, len(pods))
	for i, p := range pods {
		nodes[i] = p.Node()
	}
	profDir, _ := filepath.Abs(filepath.Join(c.out, "prof"))
	if c.profile {
		_ = os.MkdirAll(profDir, 0o755)
		_ = ch.post("/cpuprofile/start?path="+filepath.Join(profDir, name+"-sync.cpu.pprof"), &struct{}{})
	}
	f, err := syncFleet(ctx, c, ch, r, nodes, sim.Options{Conns: c.conns, NeverACK: stuck, Window: c.window, Delta: delta}, 5*time.Minute)
	if c.profile {
		_ = ch.post("/cpuprofile/stop", &struct{}{})
	}
	if f != nil {
		defer f.Close()
	}
	if err != nil {
		return nil, err
	}
	prof := func(string) func() { return func() {} }
	if c.profile {
		_ = ch.post("/heapprofile?path="+filepath.Join(profDir, name+".heap.pprof"), &struct{}{})
		prof = func(kind string) func() {
			_ = ch.post("/cpuprofile/start?path="+filepath.Join(profDir, name+"-"+kind+".cpu.pprof"), &struct{}{})
			return func() { _ = ch.post("/cpuprofile/stop", &struct{}{}) }
		}
	}
	self := server.ReadStats(false)
	r.ClientRSS = self.RSS
	logf("%s: %d proxies synced in %.1fs (p50 %.1fs); server heap %s, RSS %s (baseline %s, %s)", impl, n, r.SyncAll, r.SyncP50,
		mib(r.AfterSync.HeapInuse), mib(r.AfterSync.RSS), mib(r.Baseline.HeapInuse), mib(r.Baseline.RSS))

	kinds := c.kinds
	if stuck > 0 {
		// The stuck run is about endpoint changes only.
		kinds = slices.DeleteFunc(slices.Clone(kinds), func(k string) bool { return k != workload.Endpoint })
	}
	for i, kind := range kinds {
		if kind == reconnect && !delta {
			continue // the SotW protocol state (internal/xdsclient) does not reconnect
		}
		stopProf := prof(kind + strconv.Itoa(i))
		var wc workload.Change
		apply := func() error { return ch.post("/commit", &struct{}{}) }
		if kind == reconnect {
			apply = func() error { f.Reconnect(); return nil }
		} else if err := ch.post("/prepare?kind="+kind, &wc); err != nil {
			return nil, err
		}
		chg, err := measureChange(ctx, f, ch, kind, wc.Cluster, apply)
		stopProf()
		if err != nil {
			return nil, err
		}
		r.Changes = append(r.Changes, chg)
		logf("%s: %-10s reached %d/%d  p50 %6.0fms  p99 %6.0fms  max %6.0fms  %8.0f B/proxy  server CPU %.2fs",
			impl, kind, chg.Reached, chg.Clients, chg.P50, chg.P99, chg.Max, chg.Bytes, chg.ServerCPU)
	}
	if stuck == 0 && slices.Contains(c.pushImpls, impl) {
		// Memory over a series of full pushes: each new Service sends every proxy the
		// whole CDS set; the server must not hold more after ten than after the first.
		for i := range c.pushes {
			var wc workload.Change
			if err := ch.post("/prepare?kind="+workload.NewService, &wc); err != nil {
				return nil, err
			}
			chg, err := measureChange(ctx, f, ch, workload.NewService, wc.Cluster, func() error { return ch.post("/commit", &struct{}{}) })
			if err != nil {
				return nil, err
			}
			r.Pushes = append(r.Pushes, chg)
			logf("%s: push %2d reached %d/%d  p50 %6.0fms  p99 %6.0fms  RSS %s (after sync %s)  heap %s; simulator RSS %s heap %s",
				impl, i+1, chg.Reached, chg.Clients, chg.P50, chg.P99, mib(chg.RSS), mib(r.AfterSyncNoGC.RSS), mib(chg.HeapInuse), mib(chg.DriverRSS), mib(chg.DriverHeap))
		}
	}
	if len(r.Pushes) > 0 {
		if r.AfterPushesGC, err = ch.stats(true); err != nil {
			return nil, err
		}
		if c.profile {
			// Beside the one after sync: what the pushes left live.
			_ = ch.post("/heapprofile?path="+filepath.Join(profDir, name+"-pushes.heap.pprof"), &struct{}{})
		}
	}
	if err := r.end(ch, f); err != nil {
		return nil, err
	}
	return r, nil
}

// end records the server's state at the end of the run, with its peak RSS.
func (r *Run) end(ch *child, f *sim.Fleet) error {
	var err error
	if r.End, err = ch.stats(false); err != nil {
		return err
	}
	st := f.Status()
	r.StreamsLost = st.Done
	if st.Err != nil {
		r.LostErr = st.Err.Error()
	}
	r.DriverHWM = server.ReadStats(false).HWM
	logf("%s N=%d: server RSS after sync %s, peak RSS over the run %s", r.Impl, r.N, mib(r.AfterSync.RSS), mib(r.PeakRSS()))
	return nil
}

// PeakRSS is the server's peak RSS (VmHWM) over the run: the high-water mark at its
// end, or after sync for a run that stopped there.
func (r *Run) PeakRSS() uint64 { return max(r.End.HWM, r.AfterSync.HWM) }

// reconnect is the change where every delta client loses its stream and opens a new one.
const reconnect = "reconnect"

// expectation is what each normal proxy must have ACKed before a change counts as done.
func expectation(kind string) []sim.Type {
	switch kind {
	case workload.Endpoint:
		return []sim.Type{sim.EDS}
	case workload.NewService:
		// Its cluster and assignment, its scopes (SRDS) and the route configuration
		// they name, which the proxy subscribes to once the scopes came.
		return []sim.Type{sim.CDS, sim.EDS, sim.SRDS, sim.RDS}
	case workload.Policy:
		// The changed cluster, and its fresh ClusterLoadAssignment, which Envoy waits
		// for before it uses the new cluster.
		return []sim.Type{sim.CDS, sim.EDS}
	}
	return nil
}

// measureChange applies a change, waits until every normal proxy has ACKed what the change
// should bring and all is quiet, and measures.
func measureChange(ctx context.Context, f *sim.Fleet, ch *child, kind, cluster string, apply func() error) (*Change, error) {
	f.Mark()
	f.Watch(cluster)
	defer f.Watch("")
	before, err := ch.stats(false)
	if err != nil {
		return nil, err
	}
	selfBefore := server.ReadStats(false)
	t0 := time.Now()
	if err := apply(); err != nil {
		return nil, err
	}
	want := expectation(kind)
	// Clients that reached the change stay reached: each poll checks only the others.
	pending := slices.Clone(f.Clients)
	hasReached := func(evs []sim.Event) bool { return reached(evs, want) }
	done := func() bool {
		pending = slices.DeleteFunc(pending, func(cl *sim.Client) bool {
			return cl.Mode != sim.Normal || cl.Lost() || cl.EventsMatch(hasReached)
		})
		return len(pending) == 0
	}
	deadline := time.Now().Add(2 * time.Minute)
	if kind == workload.Policy {
		// A proxy that never gets the changed cluster's ClusterLoadAssignment would
		// wait out Envoy's initial_fetch_timeout (15 s) and run it without endpoints.
		deadline = time.Now().Add(20 * time.Second)
	}
	for len(want) > 0 && !done() {
		if time.Now().After(deadline) {
			break // measured below as not reached
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
		if st := f.Status(); st.Done == len(f.Clients) {
			return nil, fmt.Errorf("every stream ended: %w", st.Err)
		}
	}
	if err := waitQuiet(ctx, f, ch, t0.Add(time.Second), time.Minute); err != nil {
		return nil, err
	}
	after, err := ch.stats(false)
	if err != nil {
		return nil, err
	}
	selfAfter := server.ReadStats(false)

	if os.Getenv("FLEET_DEBUG") != "" {
		var firsts []float64
		for _, cl := range f.Clients {
			if evs := cl.Events(); len(evs) > 0 {
				firsts = append(firsts, float64(evs[0].Recv-t0.UnixNano())/1e6)
			}
		}
		slices.Sort(firsts)
		if len(firsts) > 0 {
			logf("  first response: min +%.1fms p50 +%.1fms max +%.1fms", firsts[0], percentile(firsts, 50), firsts[len(firsts)-1])
		}
		for _, ev := range f.Clients[0].Events() {
			logf("  client 0: %s n=%d bytes=%d recv=+%.1fms ack=+%.1fms hit=%v", ev.Type, ev.N, ev.Bytes,
				float64(ev.Recv-t0.UnixNano())/1e6, float64(ev.Ack-t0.UnixNano())/1e6, ev.Hit)
		}
	}
	chg := &Change{Kind: kind, Cluster: cluster, ServerCPU: after.CPU - before.CPU, ClientCPU: selfAfter.CPU - selfBefore.CPU,
		RSS: after.RSS, HeapInuse: after.HeapInuse, ResourcesPerResponse: map[string][2]int{},
		DriverRSS: selfAfter.RSS, DriverHeap: selfAfter.HeapInuse}
	for _, cl := range f.Clients {
		evs := cl.Events()
		if cl.Mode != sim.Normal {
			if len(evs) > 0 {
				chg.StuckGot++
			}
			continue
		}
		chg.Clients++
		if len(evs) > 0 {
			chg.Got++
		}
		var last int64
		for _, ev := range evs {
			chg.Responses++
			chg.Resources += float64(ev.N)
			chg.Bytes += float64(ev.Bytes)
			last = max(last, ev.Ack)
			k := ev.Type.String()
			mm, ok := chg.ResourcesPerResponse[k]
			if !ok {
				mm = [2]int{math.MaxInt, 0}
			}
			chg.ResourcesPerResponse[k] = [2]int{min(mm[0], int(ev.N)), max(mm[1], int(ev.N))}
		}
		if len(want) > 0 && reached(evs, want) {
			chg.Reached++
			chg.Samples = append(chg.Samples, float64(last-t0.UnixNano())/1e6)
		}
	}
	if chg.Clients > 0 {
		chg.Responses /= float64(chg.Clients)
		chg.Resources /= float64(chg.Clients)
		chg.Bytes /= float64(chg.Clients)
	}
	slices.Sort(chg.Samples)
	if len(chg.Samples) > 0 {
		chg.P50, chg.P99, chg.Max = percentile(chg.Samples, 50), percentile(chg.Samples, 99), chg.Samples[len(chg.Samples)-1]
	}
	return chg, nil
}

// reached reports whether evs hold an ACKed response of every wanted type that carries
// cluster (for EDS and CDS) or, for SRDS and RDS, any ACKed response.
func reached(evs []sim.Event, want []sim.Type) bool {
	for _, t := range want {
		ok := false
		for _, ev := range evs {
			if ev.Type != t || ev.Ack == 0 || ev.NACK {
				continue
			}
			if t == sim.RDS || t == sim.SRDS || ev.Hit {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func waitSynced(ctx context.Context, f *sim.Fleet, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := time.Now()
	for {
		st := f.Status()
		if st.Err != nil {
			return st.Err
		}
		if st.Synced == len(f.Clients) {
			return nil
		}
		if st.Done > 0 {
			return fmt.Errorf("%d streams ended during the initial sync: %w", st.Done, st.Err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("initial sync: %d of %d proxies synced after %s", st.Synced, len(f.Clients), timeout)
		}
		if time.Since(last) > 10*time.Second {
			logf("  ... %d of %d proxies synced", st.Synced, len(f.Clients))
			last = time.Now()
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitQuiet waits until no proxy has received anything for 300ms and the server has been
// idle (under 3% of a core) for as long, and not before notBefore.
func waitQuiet(ctx context.Context, f *sim.Fleet, ch *child, notBefore time.Time, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	const window = 300 * time.Millisecond
	prev, err := ch.stats(false)
	if err != nil {
		return err
	}
	prevAt := time.Now()
	for {
		if err := sleep(ctx, window); err != nil {
			return err
		}
		cur, err := ch.stats(false)
		if err != nil {
			return err
		}
		now := time.Now()
		idle := (cur.CPU-prev.CPU)/now.Sub(prevAt).Seconds() < 0.03
		quietClients := now.UnixNano()-f.LastRecv.Load() > int64(window)
		if idle && quietClients && now.After(notBefore) {
			return nil
		}
		if now.After(deadline) {
			return fmt.Errorf("not quiet after %s", timeout)
		}
		prev, prevAt = cur, now
	}
}

// waitServerIdle waits until the server process has been idle for a while.
func waitServerIdle(ctx context.Context, ch *child, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	prev, err := ch.stats(false)
	if err != nil {
		return err
	}
	for {
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
		cur, err := ch.stats(false)
		if err != nil {
			return err
		}
		if cur.CPU-prev.CPU < 0.015 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("server not idle after %s", timeout)
		}
		prev = cur
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// percentile of sorted xs, nearest rank.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(xs)))) - 1
	return xs[max(0, min(i, len(xs)-1))]
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// syncFleet connects a simulated proxy per node to the server in ch, waits until all are
// synced and the server is quiet, and records the initial sync in r: its duration (all
// proxies, median proxy), the server's state after it and the CPU it took. The caller
// closes the fleet, which is returned even with an error when it was dialled.
func syncFleet(ctx context.Context, c config, ch *child, r *Run, nodes []*corev3.Node, opts sim.Options, timeout time.Duration) (*sim.Fleet, error) {
	start := time.Now()
	f, err := sim.Dial(ctx, ch.ready.XDS, nodes, opts)
	if err != nil {
		return f, err
	}
	if err := waitSynced(ctx, f, timeout); err != nil {
		return f, err
	}
	var syncs []float64
	for _, cl := range f.Clients {
		syncs = append(syncs, float64(cl.SyncedAt()-start.UnixNano())/1e9)
	}
	slices.Sort(syncs)
	r.SyncAll, r.SyncP50 = syncs[len(syncs)-1], percentile(syncs, 50)
	if err := waitQuiet(ctx, f, ch, time.Time{}, time.Minute); err != nil {
		return f, err
	}
	if r.AfterSyncNoGC, err = ch.stats(false); err != nil {
		return f, err
	}
	if r.AfterSync, err = ch.stats(true); err != nil {
		return f, err
	}
	r.SyncCPU = r.AfterSync.CPU - r.Baseline.CPU
	return f, nil
}
