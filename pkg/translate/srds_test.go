package translate

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// changedBytes sums the serialized size of the resources of v that old lacks or holds
// with other content: what a proxy that holds old must receive (under delta xDS) to
// hold v, and the names that went away.
func changedBytes(v, old resource.View) (size int, changed, removed []string) {
	for _, r := range v.All() {
		if o, ok := old.Get(r.Name); ok && o.Hash == r.Hash {
			continue
		}
		size += len(r.Any.Value)
		changed = append(changed, r.Name)
	}
	for _, r := range old.All() {
		if _, ok := v.Get(r.Name); !ok {
			removed = append(removed, r.Name)
		}
	}
	return size, changed, removed
}

// TestNewServiceRoutesScale holds issue 14's promise for routes: at 1000 Services, a
// new Service changes a proxy's route resources (SRDS and RDS) by a few small
// resources, not by one resource holding every Service's routes. A proxy in the new
// Service's namespace gets two scopes (its short and its full name), a proxy elsewhere
// one, and both the Service's own RouteConfiguration.
func TestNewServiceRoutesScale(t *testing.T) {
	const services = 1000
	before := benchSnapshot(services, services/100, 3)
	after := benchSnapshot(services, services/100, 3)
	added := &mesh.Service{Namespace: "ns-003", Name: "svc-new", Ports: []mesh.ServicePort{{Name: "http", Port: 80, Protocol: "TCP"}},
		Endpoints: []mesh.Endpoint{{IP: "10.9.9.9", Pod: "svc-new-0"}}}
	i := 0
	for i < len(after.Services) && after.Services[i].Key() < added.Key() {
		i++
	}
	after.Services = append(after.Services[:i], append([]*mesh.Service{added}, after.Services[i:]...)...)
	trBefore, trAfter := mustNew(t, before), mustNew(t, after)
	for _, tc := range []struct {
		ns         string
		wantScopes int
	}{{"ns-003", 2}, {"ns-004", 1}} {
		t.Run(tc.ns, func(t *testing.T) {
			var pod string
			for _, svc := range before.Services {
				if svc.Namespace == tc.ns {
					pod = svc.Endpoints[0].Pod
					break
				}
			}
			n := Node{ID: pod + "." + tc.ns, PodNamespace: tc.ns, PodName: pod, ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
			old, cur := mustProxy(t, trBefore, n), mustProxy(t, trAfter, n)
			total := 0
			for _, typ := range []resource.Type{resource.ScopedRoute, resource.Route} {
				size, changed, removed := changedBytes(cur.Views[typ], old.Views[typ])
				t.Logf("%s: %d bytes in %v, removed %v (the whole view: %d resources)", typ, size, changed, removed, cur.Views[typ].Len())
				if len(removed) > 0 {
					t.Errorf("%s: removed %v", typ, removed)
				}
				want := 1
				if typ == resource.ScopedRoute {
					want = tc.wantScopes
				}
				if len(changed) != want {
					t.Errorf("%s: %d resources changed (%v), want %d", typ, len(changed), changed, want)
				}
				total += size
			}
			// One scope is about a hundred bytes, a plain Service's routes about as many.
			if total > 1024 {
				t.Errorf("a new Service changes %d bytes of routes, want at most 1 KiB", total)
			}
		})
	}
}

// TestScopesPerNamespace: the full-name scopes are the same resources in every
// namespace; the short-name scopes are only those of the proxy's namespace.
func TestScopesPerNamespace(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	names := func(n Node) []string {
		var out []string
		for _, r := range mustProxy(t, tr, n).Views[resource.ScopedRoute].All() {
			out = append(out, r.Name)
		}
		return out
	}
	for _, tc := range []struct {
		n    Node
		want string
	}{
		{nodeApp1A, "[app-1.default app-2.default app-3.team-b app-1 app-2]"},
		{nodeLocal, "[app-1.default app-2.default app-3.team-b app-3]"},
	} {
		if got := fmt.Sprint(names(tc.n)); got != tc.want {
			t.Errorf("%s: scopes %s, want %s", tc.n.ID, got, tc.want)
		}
	}
}

// TestServiceRoutingReused: a snapshot that shares a *mesh.Service with an earlier one
// (as discovery's incremental builds do for the Services a change did not touch) shares
// its route configuration and scope, the very resources; a Service that changed gets its
// own, equal to building them afresh.
func TestServiceRoutingReused(t *testing.T) {
	a := sampleSnapshot()
	b := &mesh.Snapshot{Services: slices.Clone(a.Services), Proxies: a.Proxies}
	changed := *b.Services[1]
	changed.Routes = nil
	b.Services[1] = &changed
	pa, pb := mustProxy(t, mustNew(t, a), nodeLocal), mustProxy(t, mustNew(t, b), nodeLocal)
	for _, typ := range []resource.Type{resource.Route, resource.ScopedRoute} {
		ra, _ := pa.Views[typ].Get("app-1.default")
		rb, _ := pb.Views[typ].Get("app-1.default")
		if ra == nil || ra != rb {
			t.Errorf("%s of the unchanged app-1.default: not the same resource in both snapshots", typ)
		}
	}
	old, _ := pa.Views[resource.Route].Get("app-2.default")
	got, _ := pb.Views[resource.Route].Get("app-2.default")
	want, err := resource.New(resource.Route, "app-2.default", ServiceRouteConfiguration(&changed))
	if err != nil {
		t.Fatal(err)
	}
	if got == nil || got.Hash == old.Hash || got.Hash != want.Hash {
		t.Errorf("routes of the changed app-2.default: hash %v, want %s (was %s)", got, want.Hash, old.Hash)
	}
}

// TestServiceClustersReused is TestServiceRoutingReused for the cluster and the
// ClusterLoadAssignment: an unchanged *mesh.Service gives the very resources again under
// the same options, so that consecutive Translators (and the configs the control plane
// remembers) share them and a change costs the marshalling of what it touched; a Service
// that changed, or other options, give resources equal to building them afresh.
func TestServiceClustersReused(t *testing.T) {
	a := sampleSnapshot()
	b := &mesh.Snapshot{Services: slices.Clone(a.Services), Proxies: a.Proxies}
	changed := *b.Services[1]
	changed.Endpoints = append(slices.Clone(changed.Endpoints), mesh.Endpoint{IP: "10.9.9.9", Pod: "new"})
	b.Services[1] = &changed
	ta, tb := mustNew(t, a), mustNew(t, b)
	other, err := NewWithOptions(b, Options{TrustDomain: "other.example"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		typ     resource.Type
		a, b, o *resource.Set
		fresh   func(*mesh.Service, Options) proto.Message
	}{
		{resource.Cluster, ta.clusters, tb.clusters, other.clusters, func(svc *mesh.Service, o Options) proto.Message {
			return setClusterAccessLog(clusterWith(svc, upstreamTLS(svc, o.TrustDomain)), ServiceAccessLog(svc, o.DefaultAccessLog))
		}},
		{resource.Endpoint, ta.endpoints, tb.endpoints, other.endpoints, func(svc *mesh.Service, _ Options) proto.Message {
			return ClusterLoadAssignment(svc)
		}},
	} {
		ra, _ := tc.a.Get("app-1.default")
		rb, _ := tc.b.Get("app-1.default")
		if ra == nil || ra != rb {
			t.Errorf("%s of the unchanged app-1.default: not the same resource in both snapshots", tc.typ)
		}
		for _, c := range []struct {
			set  *resource.Set
			opts Options
		}{{tc.b, Options{TrustDomain: DefaultTrustDomain}}, {tc.o, Options{TrustDomain: "other.example"}}} {
			for _, svc := range b.Services {
				got, _ := c.set.Get(ClusterName(svc))
				want, err := resource.New(tc.typ, ClusterName(svc), tc.fresh(svc, c.opts))
				if err != nil {
					t.Fatal(err)
				}
				if got == nil || got.Hash != want.Hash {
					t.Errorf("%s of %s with trust domain %s: hash %v, want %s", tc.typ, svc.Key(), c.opts.TrustDomain, got, want.Hash)
				}
			}
		}
	}
}

// TestProxySetsSharedAcrossSnapshots: a proxy's listeners and local-app cluster depend on
// its addresses, its mode and the options alone, so the Translator of the next snapshot
// gives the proxy the very sets of the last one while any of them lives. Each change
// otherwise built and marshalled them again for every proxy, and the new ones, kept
// while the old ones went, left the heap fragmented after a series of changes.
func TestProxySetsSharedAcrossSnapshots(t *testing.T) {
	a := sampleSnapshot()
	b := &mesh.Snapshot{Services: slices.Clone(a.Services), Proxies: a.Proxies}
	changed := *b.Services[1]
	changed.Endpoints = append(slices.Clone(changed.Endpoints), mesh.Endpoint{IP: "10.9.9.9", Pod: "new"})
	b.Services[1] = &changed
	for _, n := range []Node{nodeApp1A, nodeApp2A, nodeLocal} {
		pa, pb := mustProxy(t, mustNew(t, a), n), mustProxy(t, mustNew(t, b), n)
		if n.ID == nodeApp2A.ID {
			// It serves app-2, which changed: its inbound routes are built again, the
			// same, as the endpoints are not in them.
			if pa.Views[resource.Route][1] == pb.Views[resource.Route][1] || pa.Views[resource.Route][1].Version() != pb.Views[resource.Route][1].Version() {
				t.Errorf("%s: the inbound routes of a changed Service are not built again, or differ", n.ID)
			}
			continue
		}
		if pa.Views[resource.Listener][0] != pb.Views[resource.Listener][0] {
			t.Errorf("%s: the listeners are a new set in the next snapshot", n.ID)
		}
		if pa.Views[resource.Cluster][1] != pb.Views[resource.Cluster][1] {
			t.Errorf("%s: the local-app cluster is a new set in the next snapshot", n.ID)
		}
		if n.ID == nodeApp1A.ID {
			// It serves app-1, which the change did not touch: its inbound routes are the
			// same set, its namespace's short-name scopes the same resources.
			if pa.Views[resource.Route][1] != pb.Views[resource.Route][1] {
				t.Errorf("%s: the inbound routes are a new set in the next snapshot", n.ID)
			}
			if ra, rb := pa.Views[resource.ScopedRoute][1].All(), pb.Views[resource.ScopedRoute][1].All(); len(ra) != 2 || len(rb) != 2 || ra[0] != rb[0] {
				t.Errorf("%s: app-1's short-name scope is a new resource in the next snapshot", n.ID)
			}
			deny, err := NewWithOptions(b, Options{DefaultDeny: true})
			if err != nil {
				t.Fatal(err)
			}
			pd := mustProxy(t, deny, n)
			if pd.Views[resource.Route][1] == pb.Views[resource.Route][1] || pd.Views[resource.Route].Version() == pb.Views[resource.Route].Version() {
				t.Errorf("%s: the inbound routes under default deny are those without", n.ID)
			}
		}
		other, err := NewWithOptions(b, Options{ClusterDomain: "other.example"})
		if err != nil {
			t.Fatal(err)
		}
		po := mustProxy(t, other, n)
		if po.Views[resource.Listener][0] == pa.Views[resource.Listener][0] || po.Views[resource.Listener].Version() == pa.Views[resource.Listener].Version() {
			t.Errorf("%s: the listeners under another cluster domain are the first snapshot's", n.ID)
		}
	}
}

// TestProxySetsForgotten: the sets filed for sharing across snapshots (liveSets) are
// forgotten once nothing holds them, so that invented addresses (issue 16) leave nothing
// behind once their Translator is gone.
func TestProxySetsForgotten(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	before := listenerSets.len() + localAppSets.len()
	for i := range 200 {
		ip := fmt.Sprintf("10.77.%d.%d", i/250, i%250+1)
		mustProxy(t, tr, Node{ID: fmt.Sprintf("p%d.invented", i), PodNamespace: "invented", PodName: fmt.Sprint("p", i), ListenIP: ip, AppAddress: ip + ":9090"})
	}
	if got := listenerSets.len() + localAppSets.len(); got < before+2*unknownEntries {
		t.Fatalf("%d entries after 200 invented nodes, want at least %d", got, before+2*unknownEntries)
	}
	// tr is not used from here on: the sets' only holder goes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		got := listenerSets.len() + localAppSets.len()
		if got <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries 5 s after the Translator went, want at most %d", got, before)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
