package controlplane

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"weak"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// quarantiningSource is a Source that is also a Quarantiner, so that the control plane
// keeps its history of configs; it produces nothing by itself (tests call apply).
type quarantiningSource struct{}

func (quarantiningSource) Run(ctx context.Context) error                                    { <-ctx.Done(); return nil }
func (quarantiningSource) Snapshots() <-chan *mesh.Snapshot                                 { return nil }
func (quarantiningSource) HasSynced() bool                                                  { return true }
func (quarantiningSource) Rejected(mesh.ConfigPart, *mesh.Snapshot, *mesh.Snapshot, string) {}
func (quarantiningSource) Accepted(mesh.ConfigPart, *mesh.Snapshot)                         {}
func (quarantiningSource) WantsAcks() bool                                                  { return false }

// generation is a snapshot of services Services whose endpoints are all different in
// each generation g: no resource of one generation's ClusterLoadAssignments can be
// shared with another's.
func generation(g, services int) *mesh.Snapshot {
	snap := &mesh.Snapshot{Proxies: map[string]*mesh.Proxy{}}
	for i := range services {
		name := fmt.Sprintf("svc-%03d", i)
		ip := fmt.Sprintf("10.%d.%d.%d", g, i/250, i%250+1)
		snap.Services = append(snap.Services, &mesh.Service{
			Namespace: "default", Name: name,
			Ports:     []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "9090", Protocol: "TCP"}},
			Endpoints: []mesh.Endpoint{{IP: ip, Pod: name + "-0"}},
		})
		p := &mesh.Proxy{Namespace: "default", Name: name + "-0", IP: ip, Services: []string{"default/" + name}}
		snap.Proxies[p.Key()] = p
	}
	return snap
}

func historyNode(t *testing.T) *corev3.Node {
	t.Helper()
	md, err := structpb.NewStruct(map[string]any{
		"pod_name": "svc-000-0", "pod_namespace": "default", "listen_ip": "10.0.0.1", "app_address": "10.0.0.1:9090",
	})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Node{Id: "svc-000-0.default", Cluster: "bearkong-mesh", Metadata: md}
}

// TestHistoryKeepsNoOldConfig is issue 14's memory step on the informer path: the
// history of configs that the quarantine reads (a proxy's ACKed or NACKed version back
// to its snapshot) held each config's translated resources, so after a series of
// changes the heap carried historySize generations of every shared cluster, assignment,
// route and scope, and of every proxy's own listeners and routes. A config that no proxy
// and no stream uses any more must be collectable; the history may keep its snapshot,
// and must still find it from a version.
func TestHistoryKeepsNoOldConfig(t *testing.T) {
	cp := New(quarantiningSource{}, Options{})
	node := historyNode(t)
	n, err := translate.ParseNode(node)
	if err != nil {
		t.Fatal(err)
	}

	first := generation(1, 50)
	cp.apply(first)
	p, err := cp.current.Load().Resolve(node)
	if err != nil {
		t.Fatal(err)
	}
	old := weak.Make(p.Views[resource.Endpoint][0])
	oldVersion := p.Views[resource.Endpoint].Version()
	p = nil

	// Fewer changes than historySize: the first snapshot is still in the history.
	for g := 2; g <= 4; g++ {
		cp.apply(generation(g, 50))
		// As every stream does with a new config.
		if _, err := cp.current.Load().Resolve(node); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.GC()
	if old.Value() != nil {
		t.Error("the first config's ClusterLoadAssignments are still reachable after three newer configs: the history holds its translation")
	}
	if got := cp.snapshotOf(n, resource.Endpoint, oldVersion); got != first {
		t.Errorf("snapshotOf(first config's EDS version) = %p, want the first snapshot %p", got, first)
	}
	if got := cp.snapshotOf(n, resource.Endpoint, "no-such-version"); got != nil {
		t.Errorf("snapshotOf(unknown version) = %p, want nil", got)
	}
}
