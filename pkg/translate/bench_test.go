package translate

import (
	"fmt"
	"slices"
	"sort"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// benchSnapshot returns a snapshot of services Services spread over namespaces
// namespaces, each with endpoints ready endpoints and one proxy per endpoint.
func benchSnapshot(services, namespaces, endpoints int) *mesh.Snapshot {
	snap := &mesh.Snapshot{Proxies: make(map[string]*mesh.Proxy, services*endpoints)}
	for i := range services {
		svc := &mesh.Service{
			Namespace: fmt.Sprintf("ns-%03d", i%namespaces),
			Name:      fmt.Sprintf("svc-%05d", i),
			Ports:     []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "9090", Protocol: "TCP"}},
		}
		for e := range endpoints {
			ip := fmt.Sprintf("10.%d.%d.%d", e, i/250, i%250+1)
			pod := fmt.Sprintf("%s-%d", svc.Name, e)
			svc.Endpoints = append(svc.Endpoints, mesh.Endpoint{IP: ip, Pod: pod})
			p := &mesh.Proxy{Namespace: svc.Namespace, Name: pod, IP: ip, Services: []string{svc.Key()}}
			snap.Proxies[p.Key()] = p
		}
		sort.Slice(svc.Endpoints, func(a, b int) bool { return svc.Endpoints[a].IP < svc.Endpoints[b].IP })
		snap.Services = append(snap.Services, svc)
	}
	sort.Slice(snap.Services, func(a, b int) bool {
		x, y := snap.Services[a], snap.Services[b]
		if x.Namespace != y.Namespace {
			return x.Namespace < y.Namespace
		}
		return x.Name < y.Name
	})
	return snap
}

// benchSizes are the mesh sizes of the benchmarks: 100 services per namespace.
var benchSizes = []int{1000, 10000}

// BenchmarkNew measures what every snapshot costs before any proxy asks: building and
// marshalling the shared clusters, ClusterLoadAssignments, route configurations and
// scopes. Each iteration's snapshot has new *mesh.Service objects (copies), as when every
// Service changed; "unchanged" hands New the same objects every time, as discovery does
// for the Services a change did not touch, whose resources New reuses.
//
// The Services of benchSnapshot know no ServiceAccount, so their clusters share one
// transport socket; "own-sa" gives each Service a ServiceAccount of its own, the worst
// case, where every cluster packs its own.
func BenchmarkNew(b *testing.B) {
	for _, n := range benchSizes {
		snap := benchSnapshot(n, n/100, 3)
		own := benchSnapshot(n, n/100, 3)
		for _, svc := range own.Services {
			svc.ServiceAccounts = []string{svc.Name}
		}
		for _, tc := range []struct {
			name string
			snap *mesh.Snapshot
		}{{"", snap}, {"/own-sa", own}} {
			b.Run(fmt.Sprintf("services=%d%s", n, tc.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					b.StopTimer()
					fresh := &mesh.Snapshot{Services: make([]*mesh.Service, len(tc.snap.Services)), Proxies: tc.snap.Proxies}
					for i, svc := range tc.snap.Services {
						c := *svc
						fresh.Services[i] = &c
					}
					b.StartTimer()
					if _, err := New(fresh); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run(fmt.Sprintf("services=%d%s/unchanged", n, tc.name), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := New(tc.snap); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkNewPerChange measures New for one endpoint change, as discovery hands the
// snapshots: a new *mesh.Service for the Service whose endpoint went away or came back,
// the same objects for every other, after a Translator of the snapshot before; and for a
// Service created or deleted. With
// BenchmarkBuildPerChange in pkg/discovery, it is what one change costs the control plane
// before any proxy asks, at S = 1,000, 5,000 and 10,000.
func BenchmarkNewPerChange(b *testing.B) {
	for _, n := range []int{1000, 5000, 10000} {
		snap := benchSnapshot(n, n/100, 3)
		k := len(snap.Services) / 2
		svc := snap.Services[k]
		fewer := *svc
		fewer.Endpoints = svc.Endpoints[1:]
		var snaps [2]*mesh.Snapshot
		for i, s := range []*mesh.Service{&fewer, svc} {
			snaps[i] = &mesh.Snapshot{Services: slices.Clone(snap.Services), Proxies: snap.Proxies}
			snaps[i].Services[k] = s
		}
		// A Service created next to it, and deleted, in turn.
		added := &mesh.Service{Namespace: svc.Namespace, Name: svc.Name + "-b", Ports: svc.Ports, Endpoints: svc.Endpoints}
		withAdded := [2]*mesh.Snapshot{snap, {Services: slices.Insert(slices.Clone(snap.Services), k+1, added), Proxies: snap.Proxies}}
		for _, c := range []struct {
			name  string
			snaps [2]*mesh.Snapshot
		}{{"", snaps}, {"/service-add-or-delete", withAdded}} {
			b.Run(fmt.Sprintf("services=%d%s", n, c.name), func(b *testing.B) {
				if _, err := New(c.snaps[1]); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, err := New(c.snaps[i%2]); err != nil {
						b.Fatal(err)
					}
					i++
				}
			})
		}
	}
}

// BenchmarkProxy measures Proxy: "cached" is the common case (every piece already built
// by an earlier proxy, as for all but the first proxy of a namespace), "parallel" the
// same from many goroutines, "first" the first proxy after a snapshot, which marshals the
// pieces shared by every namespace (its listeners and local-app cluster are the last
// snapshot's, still alive: see liveSets), and "new-namespace" the first proxy of each
// further namespace, which builds its namespace's short-name scopes.
func BenchmarkProxy(b *testing.B) {
	for _, n := range benchSizes {
		snap := benchSnapshot(n, n/100, 3)
		nodes := make([]Node, 0, len(snap.Services))
		for _, svc := range snap.Services {
			nodes = append(nodes, Node{
				ID:           svc.Name + "-0." + svc.Namespace,
				PodNamespace: svc.Namespace,
				PodName:      svc.Name + "-0",
				ListenIP:     "0.0.0.0",
				AppAddress:   "127.0.0.1:9090",
			})
		}
		tr, err := New(snap)
		if err != nil {
			b.Fatal(err)
		}
		for _, nd := range nodes {
			if _, err := tr.Proxy(nd); err != nil {
				b.Fatal(err)
			}
		}

		b.Run(fmt.Sprintf("services=%d/cached", n), func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if _, err := tr.Proxy(nodes[i%len(nodes)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("services=%d/parallel", n), func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, err := tr.Proxy(nodes[i%len(nodes)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
		})
		b.Run(fmt.Sprintf("services=%d/first", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				fresh, err := New(snap)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := fresh.Proxy(nodes[i%len(nodes)]); err != nil {
					b.Fatal(err)
				}
			}
		})
		// What a change costs the proxies that it did not touch: the next snapshot holds
		// the same *mesh.Service objects (discovery hands over those of the Services that
		// did not change) and one Service more, and every proxy asks for its config again.
		// Reported per snapshot, for one proxy of each Service.
		b.Run(fmt.Sprintf("services=%d/next-snapshot", n), func(b *testing.B) {
			b.ReportAllocs()
			extra := &mesh.Service{Namespace: "zz-new", Name: "svc-new", Ports: snap.Services[0].Ports}
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				next := &mesh.Snapshot{Services: append(slices.Clone(snap.Services), extra), Proxies: snap.Proxies}
				if i%2 == 1 {
					next.Services = slices.Clone(snap.Services)
				}
				fresh, err := New(next)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for _, nd := range nodes {
					if _, err := fresh.Proxy(nd); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
		b.Run(fmt.Sprintf("services=%d/new-namespace", n), func(b *testing.B) {
			b.ReportAllocs()
			// The size of what every proxy holds and is sent on each route change.
			p, err := tr.Proxy(nodes[0])
			if err != nil {
				b.Fatal(err)
			}
			size := 0
			for _, r := range p.Views[resource.ScopedRoute].All() {
				size += len(r.Any.GetValue())
			}
			b.ReportMetric(float64(size), "srds-bytes")
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				fresh, err := New(snap)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := fresh.Proxy(nodes[0]); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				// The last service is in another namespace than the first.
				if _, err := fresh.Proxy(nodes[len(nodes)-1]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkInboundAuthz builds and marshals the inbound route configuration of a Service
// with the most a policy may hold (64 rules, here each with 10 callers and a path), the
// resource a policy change sends to the Service's proxies, and reports its size.
func BenchmarkInboundAuthz(b *testing.B) {
	rules := make([]mesh.AuthzRule, 64)
	for i := range rules {
		callers := make([]string, 10)
		for j := range callers {
			callers[j] = fmt.Sprintf("team-%d/caller-%d", i, j)
		}
		rules[i] = mesh.AuthzRule{Callers: callers, Paths: []mesh.PathMatch{{Type: "PathPrefix", Value: fmt.Sprintf("/api/v%d", i)}}}
	}
	svc := &mesh.Service{Namespace: "shop", Name: "payments", Authz: []mesh.AuthzPolicy{
		{Namespace: "shop", Name: "payments-callers", Action: mesh.AuthzAllow, Rules: rules},
	}}
	var size int
	for b.Loop() {
		r, err := resource.New(resource.Route, "inbound", InboundRouteConfiguration([]*mesh.Service{svc}, DefaultTrustDomain, false))
		if err != nil {
			b.Fatal(err)
		}
		size = len(r.Any.GetValue())
	}
	b.ReportMetric(float64(size), "bytes")
}

// BenchmarkNewServiceBytes reports what one new Service costs a proxy on the wire at
// 1000 Services (benchSnapshot, 3 endpoints each), in the new Service's namespace and in
// another: under state of the world, the whole set of each wildcard type (CDS, LDS,
// SRDS) and the new or changed resources of the others; under delta xDS, the new or
// changed resources alone. Sizes are those of the DiscoveryResponse and
// DeltaDiscoveryResponse messages, type URLs and framing of each resource included.
func BenchmarkNewServiceBytes(b *testing.B) {
	const services = 1000
	before := benchSnapshot(services, services/100, 3)
	after := benchSnapshot(services, services/100, 3)
	added := &mesh.Service{Namespace: "ns-003", Name: "svc-new", Ports: []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "9090", Protocol: "TCP"}},
		Endpoints: []mesh.Endpoint{{IP: "10.0.9.1", Pod: "svc-new-0"}, {IP: "10.1.9.1", Pod: "svc-new-1"}, {IP: "10.2.9.1", Pod: "svc-new-2"}}}
	i := sort.Search(len(after.Services), func(i int) bool { return after.Services[i].Key() >= added.Key() })
	after.Services = append(after.Services[:i], append([]*mesh.Service{added}, after.Services[i:]...)...)
	trBefore, err := New(before)
	if err != nil {
		b.Fatal(err)
	}
	trAfter, err := New(after)
	if err != nil {
		b.Fatal(err)
	}
	for _, ns := range []string{"ns-003", "ns-004"} {
		var pod string
		for _, svc := range before.Services {
			if svc.Namespace == ns {
				pod = svc.Endpoints[0].Pod
				break
			}
		}
		n := Node{ID: pod + "." + ns, PodNamespace: ns, PodName: pod, ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
		old, err := trBefore.Proxy(n)
		if err != nil {
			b.Fatal(err)
		}
		cur, err := trAfter.Proxy(n)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("namespace="+ns, func(b *testing.B) {
			var sotw, delta int
			for b.Loop() {
				sotw, delta = 0, 0
				for _, typ := range resource.Types {
					var changed, all []*anypb.Any
					var named []*discoveryv3.Resource
					for _, r := range cur.Views[typ].All() {
						all = append(all, r.Any)
						if o, ok := old.Views[typ].Get(r.Name); ok && o.Hash == r.Hash {
							continue
						}
						changed = append(changed, r.Any)
						named = append(named, &discoveryv3.Resource{Name: r.Name, Version: r.Hash, Resource: r.Any})
					}
					if len(changed) == 0 {
						continue
					}
					send := changed
					if typ.Wildcard() {
						send = all
					}
					sotw += proto.Size(&discoveryv3.DiscoveryResponse{VersionInfo: cur.Views[typ].Version(), TypeUrl: typ.URL(), Nonce: "1000", Resources: send})
					delta += proto.Size(&discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: cur.Views[typ].Version(), TypeUrl: typ.URL(), Nonce: "1000", Resources: named})
				}
			}
			b.ReportMetric(float64(sotw), "sotw-bytes")
			b.ReportMetric(float64(delta), "delta-bytes")
		})
	}
}
