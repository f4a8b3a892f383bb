package workload

import (
	"reflect"
	"testing"
)

// TestSnapshotSharesUnchanged: after each change, the snapshot holds the same content as
// one built from scratch by a State that went through the same changes, and the last
// snapshot's objects for every Service and proxy the change did not touch, as
// pkg/discovery's builds do.
func TestSnapshotSharesUnchanged(t *testing.T) {
	cfg := Config{Services: 20, Endpoints: 3, Proxies: 50}
	s := New(cfg)
	prev := s.Snapshot()
	kinds := []string{Endpoint, Annotation, Policy, NewService, NoOp, Endpoint}
	for seq, kind := range kinds {
		chg, err := s.Apply(kind, seq)
		if err != nil {
			t.Fatal(err)
		}
		snap := s.Snapshot()

		fresh := New(cfg)
		for k := range kinds[:seq+1] {
			if _, err := fresh.Apply(kinds[k], k); err != nil {
				t.Fatal(err)
			}
		}
		if want := fresh.Snapshot(); !reflect.DeepEqual(snap, want) {
			t.Fatalf("%s: the snapshot differs from one built from scratch", kind)
		}

		old := map[string]any{}
		for _, svc := range prev.Services {
			old[svc.Name+"."+svc.Namespace] = svc
		}
		for _, svc := range snap.Services {
			changed := svc.Name+"."+svc.Namespace == chg.Cluster
			if same := old[svc.Name+"."+svc.Namespace] == any(svc); same == changed {
				t.Errorf("%s: Service %s shared with the last snapshot: %v", kind, svc.Name, same)
			}
		}
		for key, p := range snap.Proxies {
			if prev.Proxies[key] != p && prev.Proxies[key].IP == p.IP {
				t.Errorf("%s: proxy %s is a new object with the same address", kind, key)
			}
		}
		prev = snap
	}
}
