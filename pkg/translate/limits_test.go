package translate

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/bearkong/bearkong/pkg/resource"
)

// heapAfterGC returns the live heap after a forced collection.
func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestInventedNodesLeaveNothing plays a client that invents what no pod has: a namespace
// without a meshed Service, listen and outbound IPs and app addresses no pod uses. Each
// must cost what a valid node costs and leave at most a bounded number of cache entries
// behind, while the proxies the snapshot knows keep sharing their sets.
func TestInventedNodesLeaveNothing(t *testing.T) {
	const invented = 2000
	tr := mustNew(t, benchSnapshot(300, 3, 1))
	honest := func(i int) Node {
		return Node{PodNamespace: fmt.Sprintf("ns-%03d", i%3), PodName: fmt.Sprintf("svc-%05d-0", i)}
	}
	h1 := mustProxy(t, tr, honest(0))
	entriesBefore := tr.cacheEntries()
	invent := func(i int) Node {
		return Node{
			PodNamespace: fmt.Sprintf("invented-%d", i),
			PodName:      "p",
			ListenIP:     fmt.Sprintf("10.%d.%d.%d", 200+i/62500, i/250%250, i%250+1),
			OutboundIP:   fmt.Sprintf("10.%d.%d.%d", 210+i/62500, i/250%250, i%250+1),
			AppAddress:   fmt.Sprintf("10.%d.%d.%d:9090", 220+i/62500, i/250%250, i%250+1),
		}
	}
	// Warm what every node shares and fill the bounded caches
	// (their entries are counted below) before measuring.
	for i := range unknownEntries {
		mustProxy(t, tr, invent(100000+i))
	}
	before := heapAfterGC()

	for i := range invented {
		mustProxy(t, tr, invent(i))
	}
	if got, limit := tr.cacheEntries(), entriesBefore+3*unknownEntries; got > limit {
		t.Errorf("after %d invented nodes the caches hold %d entries, want at most %d", invented, got, limit)
	}
	after := heapAfterGC()
	t.Logf("heap after GC: %d KiB before, %d KiB after %d invented nodes", before/1024, after/1024, invented)
	if after > before+before/10 {
		t.Errorf("heap grew from %d KiB to %d KiB (more than 10 %%)", before/1024, after/1024)
	}

	// Honest proxies still share: replicas in one namespace get the very same short-name
	// scopes, and the same listeners (all take the default addresses).
	h2 := mustProxy(t, tr, honest(3))
	for _, c := range []struct {
		typ  resource.Type
		name string
	}{{resource.ScopedRoute, "svc-00000"}, {resource.Listener, InboundListenerName}, {resource.Cluster, LocalAppClusterName}} {
		a, _ := h1.Views[c.typ].Get(c.name)
		b, _ := h2.Views[c.typ].Get(c.name)
		if a == nil || a != b {
			t.Errorf("%s %q: honest proxies of one namespace do not share it", c.typ, c.name)
		}
	}
}

// TestUnknownNamespacesShareOutboundRoutes checks that every namespace without a meshed
// Service shares one set of short-name scopes (an empty one), byte for byte what its own
// would be.
func TestUnknownNamespacesShareOutboundRoutes(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	var first *resource.Set
	for _, ns := range []string{"nowhere", "elsewhere", "kube-system"} {
		t.Run(ns, func(t *testing.T) {
			v := mustProxy(t, tr, Node{PodName: "p", PodNamespace: ns}).Views[resource.ScopedRoute]
			if len(v) != 2 {
				t.Fatalf("%d sets of scopes, want 2", len(v))
			}
			fresh := mustProxy(t, mustNew(t, sampleSnapshot()), Node{PodName: "p", PodNamespace: ns})
			if v.Version() != fresh.Views[resource.ScopedRoute].Version() {
				t.Errorf("shared scopes differ from the namespace's own")
			}
			if first == nil {
				first = v[1]
			} else if v[1] != first {
				t.Errorf("namespace %q does not share the unknown namespaces' short-name scopes", ns)
			}
		})
	}
	// A namespace with Services keeps its own (its short names).
	if d := mustProxy(t, tr, nodeApp1A).Views[resource.ScopedRoute]; d[1] == first || d[1].Len() != 2 {
		t.Error("namespace default shares the unknown namespaces' short-name scopes")
	}
}

// TestInventedNodesConcurrent runs invented and honest nodes at once (run it with -race):
// the LRU is shared, and concurrent callers of one unknown key get equal bytes.
func TestInventedNodesConcurrent(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	want := mustProxy(t, tr, Node{PodNamespace: "nowhere", PodName: "p", ListenIP: "10.9.9.9"})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				n := Node{PodNamespace: "nowhere", PodName: "p", ListenIP: fmt.Sprintf("10.%d.%d.1", g, i%100)}
				if i%10 == 0 {
					n.ListenIP = "10.9.9.9"
				}
				p, err := tr.Proxy(n)
				if err != nil {
					errs <- err
					return
				}
				if n.ListenIP == "10.9.9.9" && p.Views[resource.Listener].Version() != want.Views[resource.Listener].Version() {
					errs <- fmt.Errorf("listeners of 10.9.9.9 differ from the first build")
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := tr.cacheEntries(); got > 4+2*unknownEntries {
		t.Errorf("%d cache entries", got)
	}
}
