package server

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/bearkong/bearkong/bench/sim"
	"github.com/bearkong/bearkong/bench/workload"
)

// TestSimAgainstPeers runs the simulated proxies, on both protocols, against
// go-control-plane's servers (an implementation independent of bearkong's): every proxy
// syncs, and an endpoint change reaches every proxy as what each peer promises: one
// ClusterLoadAssignment from the LinearCache, all of them from the snapshot cache; a
// cluster change brings the changed cluster and a fresh assignment on SotW.
func TestSimAgainstPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts gRPC servers and a fleet")
	}
	cfg := workload.Config{Services: 20, Endpoints: 3, Proxies: 4}
	for _, tc := range []struct {
		name            string
		linear, delta   bool
		endpointEDS     int32 // resources in the EDS response of an endpoint change
		policyRefreshes bool  // the changed cluster's assignment comes again
	}{
		{name: "snapshot/sotw", endpointEDS: 20, policyRefreshes: true},
		{name: "linear/sotw", linear: true, endpointEDS: 1, policyRefreshes: true},
		{name: "linear/delta", linear: true, delta: true, endpointEDS: 1},
		{name: "snapshot/delta", delta: true, endpointEDS: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := newPeer(tc.linear)
			if err != nil {
				t.Fatal(err)
			}
			state := workload.New(cfg)
			if err := p.Apply(state.Snapshot()); err != nil {
				t.Fatal(err)
			}
			addr, err := p.Start(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var nodes []*corev3.Node
			for _, pod := range workload.Pods(cfg) {
				nodes = append(nodes, pod.Node())
			}
			f, err := sim.Dial(ctx, addr, nodes, sim.Options{Delta: tc.delta})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			waitFor(t, ctx, "sync", func() bool { return f.Status().Synced == len(nodes) })

			change := func(kind string) []sim.Event {
				f.Mark()
				ch, err := state.Apply(kind, 1)
				if err != nil {
					t.Fatal(err)
				}
				f.Watch(ch.Cluster)
				if err := p.Apply(state.Snapshot()); err != nil {
					t.Fatal(err)
				}
				var evs []sim.Event
				waitFor(t, ctx, kind, func() bool {
					for _, c := range f.Clients {
						evs = c.Events()
						got := false
						for _, ev := range evs {
							got = got || ev.Type == sim.EDS && ev.Hit && ev.Ack != 0
						}
						if !got {
							return false
						}
					}
					return true
				})
				return evs
			}
			evs := change(workload.Endpoint)
			if len(evs) != 1 || evs[0].Type != sim.EDS || evs[0].N != tc.endpointEDS {
				t.Errorf("endpoint change: events %+v, want one EDS response of %d", evs, tc.endpointEDS)
			}
			if !tc.policyRefreshes {
				return
			}
			evs = change(workload.Policy)
			if len(evs) != 2 || evs[0].Type != sim.CDS || evs[1].Type != sim.EDS || !evs[1].Hit {
				t.Errorf("policy change: events %+v, want CDS then the changed cluster's assignment", evs)
			}
			if st := f.Status(); st.Done != 0 {
				t.Errorf("%d streams ended: %v", st.Done, st.Err)
			}
		})
	}
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not done before the deadline", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
