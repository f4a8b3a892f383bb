package e2e

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// xDS protocol behaviour that only a real Envoy shows.

// TestRelabelLastMeshedService takes every Service out of the mesh and puts them back, as
// a relabel or a redeploy does. Every proxy gets a cluster for every meshed Service, so
// with all of them out, each proxy's EDS subscription goes empty (an unsubscribe) and
// Envoy drops its ClusterLoadAssignments; when the Services come back, the control plane
// must send them again "even if it previously sent those resources", or the clusters warm
// until Envoy's initial_fetch_timeout (15 s) and then answer 503.
//
// In this mesh the assignments leave the control plane's view together with the clusters,
// so even a server that remembered what it sent across the unsubscribe would resend them
// as changed; the resubscribe rule itself is pinned by pkg/ads's TestSubscriptions and
// TestResubscribeOverGRPC. This test holds the whole path to a real Envoy.
func TestRelabelLastMeshedService(t *testing.T) {
	m := sharedMesh(t)
	ctx := ctxT(t, 3*time.Minute)
	const from, to = "app-1-0", "app-3"
	eventually(t, 20*time.Second, func(ctx context.Context) error { return m.WaitReachable(ctx, 10*time.Second, from, to) })

	labels := map[string]map[string]string{}
	for _, name := range m.Services() {
		svc, err := shared.env.Client.CoreV1().Services(m.Namespace()).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if svc.Labels[mesh.MeshedLabel] == mesh.MeshedValue {
			labels[name] = svc.Labels
		}
	}
	restore := func() error {
		for name, l := range labels {
			if err := m.SetServiceLabels(context.Background(), name, l); err != nil {
				return err
			}
		}
		return nil
	}
	t.Cleanup(func() { _ = restore() })
	for name, l := range labels {
		out := maps.Clone(l)
		delete(out, mesh.MeshedLabel)
		if err := m.SetServiceLabels(ctx, name, out); err != nil {
			t.Fatal(err)
		}
	}
	// The proxy's EDS subscription is empty: Envoy unsubscribed from every assignment.
	node := from + "." + m.Namespace()
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		ss, err := streams(ctx, m)
		if err != nil {
			return err
		}
		for _, s := range ss {
			if s.Node == node {
				if n := s.Types.EDS.SubscribedCount; n != 0 {
					return fmt.Errorf("%s still subscribes to %d assignments", node, n)
				}
				return nil
			}
		}
		return fmt.Errorf("no stream for %s", node)
	})

	if err := restore(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// Within the usual convergence time, well under Envoy's 15 s initial_fetch_timeout.
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		status, name, _, err := get(ctx, m, from, to, "/")
		if err != nil || status != 200 || name != to {
			return fmt.Errorf("%s -> %s: %d %q %v", from, to, status, name, err)
		}
		return nil
	})
	t.Logf("%s reached %s again %s after the relabel", from, to, time.Since(start).Round(time.Millisecond))
	// Nothing is left warming, and the calls keep working.
	eventually(t, 5*time.Second, func(ctx context.Context) error {
		st, err := m.EnvoyStats(ctx, from)
		if err != nil {
			return err
		}
		if w := st["cluster_manager.warming_clusters"]; w != 0 {
			return fmt.Errorf("cluster_manager.warming_clusters = %d", w)
		}
		return nil
	})
	for i := range 20 {
		status, name, _, err := get(ctx, m, from, to, "/")
		if err != nil || status != 200 || name != to {
			t.Fatalf("call %d after the relabel: %d %q %v", i, status, name, err)
		}
	}
}

// TestRouteMovesOffDeletedBackend moves an HTTPRoute's whole weight from one backend to
// another and deletes the old backend's Service right away, under a steady stream of
// requests: the routes must stop naming the old cluster before it goes (make before
// break: removals go LDS, RDS, then CDS), so not one request fails.
func TestRouteMovesOffDeletedBackend(t *testing.T) {
	m := sharedMesh(t)
	withService(t, m, "mover", nil, map[string]string{})
	withService(t, m, "mover-old", nil, map[string]string{})
	withService(t, m, "mover-new", nil, map[string]string{})
	withRoute(t, "mover", "mover", gwv1.HTTPRouteRule{BackendRefs: []gwv1.HTTPBackendRef{backendRef("mover-old", 1)}})
	const from = "app-1-0"
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		if status, name, _, err := get(ctx, m, from, "mover", "/"); err != nil || status != 200 || name != "mover-old" {
			return fmt.Errorf("route not in force yet: %d %q %v", status, name, err)
		}
		return nil
	})

	ctx := ctxT(t, 2*time.Minute)
	loopCtx, stop := context.WithCancel(ctx)
	var (
		mu      sync.Mutex
		total   int
		failed  []string
		lastOld time.Time
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		deadline := time.Now().Add(90 * time.Second)
		for loopCtx.Err() == nil && time.Now().Before(deadline) {
			status, name, _, err := get(loopCtx, m, from, "mover", "/")
			if loopCtx.Err() != nil {
				return
			}
			mu.Lock()
			total++
			switch {
			case err != nil:
				failed = append(failed, err.Error())
			case status/100 != 2:
				failed = append(failed, fmt.Sprintf("%d %s", status, name))
			case name == "mover-old":
				lastOld = time.Now()
			}
			mu.Unlock()
		}
	})
	time.Sleep(500 * time.Millisecond)

	gw := gateway(t)
	rt, err := gw.GatewayV1().HTTPRoutes("default").Get(ctx, "mover", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt.Spec.Rules = []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{backendRef("mover-new", 1)}}}
	if _, err := gw.GatewayV1().HTTPRoutes("default").Update(ctx, rt, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Right away, so that both changes land in one snapshot and one push.
	if err := m.DeleteService(ctx, "mover-old"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		if status, name, _, err := get(ctx, m, from, "mover", "/"); err != nil || status != 200 || name != "mover-new" {
			return fmt.Errorf("not moved yet: %d %q %v", status, name, err)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // keep the loop running past the push
	stop()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d requests during the move; the last one answered by mover-old at %s", total, lastOld.Format(time.StampMilli))
	if total < 50 {
		t.Fatalf("only %d requests made during the move", total)
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d requests failed during the move, first: %s", len(failed), total, failed[0])
	}
}
