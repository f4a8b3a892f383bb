package sim

import (
	"fmt"
	"maps"
	"runtime"
	"slices"
	"testing"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/internal/xdsclient"
)

// fleetResponses are the responses of a bearkong-shaped initial sync at S services:
// clusters (each naming its assignment and the two secrets), assignments, a scoped
// outbound listener and an inbound one, a scope per Service and one per Service of the
// namespace, and a route configuration per Service. Versions are 16 hex digits, as
// bearkong's content hashes. Each call builds new strings, as each client's decoding
// would without sharing.
func fleetResponses(services int) map[Type][]deltaResource {
	version := func(t Type, i int) string { return fmt.Sprintf("%08x%08x", int(t), i) }
	name := func(i int) string { return fmt.Sprintf("svc-%05d.ns-%03d", i, i/100) }
	rs := map[Type][]deltaResource{}
	for i := range services {
		rs[CDS] = append(rs[CDS], deltaResource{Resource: xdsclient.Resource{Name: name(i), Hash: uint64(i), EDS: name(i),
			Secrets: []string{"default", "ROOTCA"}}, Version: version(CDS, i)})
		rs[EDS] = append(rs[EDS], deltaResource{Resource: xdsclient.Resource{Name: name(i), Hash: uint64(i)}, Version: version(EDS, i)})
		rs[SRDS] = append(rs[SRDS], deltaResource{Resource: xdsclient.Resource{Name: "scope/" + name(i), Hash: uint64(i), Routes: []string{name(i)}}, Version: version(SRDS, i)})
		if i < 100 {
			rs[SRDS] = append(rs[SRDS], deltaResource{Resource: xdsclient.Resource{Name: fmt.Sprintf("scope/svc-%05d", i), Hash: uint64(i), Routes: []string{name(i)}}, Version: version(SRDS, i+services)})
		}
		rs[RDS] = append(rs[RDS], deltaResource{Resource: xdsclient.Resource{Name: name(i), Hash: uint64(i)}, Version: version(RDS, i)})
	}
	rs[LDS] = []deltaResource{
		{Resource: xdsclient.Resource{Name: "outbound", Hash: 1, Scoped: true, Secrets: []string{"default", "ROOTCA"}}, Version: version(LDS, 0)},
		{Resource: xdsclient.Resource{Name: "inbound", Hash: 2, Routes: []string{"inbound"}, Secrets: []string{"default", "ROOTCA"}}, Version: version(LDS, 1)},
	}
	rs[RDS] = append(rs[RDS], deltaResource{Resource: xdsclient.Resource{Name: "inbound", Hash: 1}, Version: version(RDS, services)})
	return rs
}

// syncDelta walks p through an initial sync with rs, in Envoy's order.
func syncDelta(t testing.TB, p *deltaProto, rs map[Type][]deltaResource) {
	t.Helper()
	p.Start()
	for _, typ := range []Type{CDS, EDS, LDS, SRDS, RDS} {
		if _, err := p.Response(typ, "n", rs[typ], nil, ""); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDeltaProtoInterned: clients that hold the same resources share one copy of each
// name and version (sym.go), and still ask and answer as before: a reconnect sends back
// exactly the names and versions the server gave, and the subscriptions they made.
func TestDeltaProtoInterned(t *testing.T) {
	const services = 50
	var protos [2]*deltaProto
	var reqs [2][]*discoveryv3.DeltaDiscoveryRequest
	for i := range protos {
		protos[i] = newDeltaProto()
		syncDelta(t, protos[i], fleetResponses(services)) // separate strings each
		reqs[i] = protos[i].Reconnect()
	}
	want := fleetResponses(services)
	wantTypes := []Type{CDS, EDS, LDS, SRDS, RDS, SDS}
	if len(reqs[0]) != len(wantTypes) {
		t.Fatalf("reconnect: %d requests, want %d", len(reqs[0]), len(wantTypes))
	}
	for i, typ := range wantTypes {
		r := reqs[0][i]
		if r.TypeUrl != typ.URL() {
			t.Fatalf("request %d is %s, want %s", i, r.TypeUrl, typ)
		}
		versions := map[string]string{}
		for _, res := range want[typ] {
			versions[res.Name] = res.Version
		}
		if !maps.Equal(r.InitialResourceVersions, versions) {
			t.Errorf("%s: initial_resource_versions differ from what the server sent (%d names, want %d)", typ, len(r.InitialResourceVersions), len(versions))
		}
		var sub []string
		switch typ {
		case EDS:
			sub = slices.Sorted(maps.Keys(versions))
		case RDS:
			sub = slices.Sorted(maps.Keys(versions))
		case SDS:
			sub = []string{"ROOTCA", "default"}
		}
		if !slices.Equal(r.ResourceNamesSubscribe, sub) {
			t.Errorf("%s: resource_names_subscribe = %d names, want %d", typ, len(r.ResourceNamesSubscribe), len(sub))
		}
		if !proto.Equal(r, reqs[1][i]) {
			t.Errorf("%s: two clients with the same resources ask differently", typ)
		}
	}
	// One copy: both clients' versions of a cluster point to the same bytes.
	name := want[CDS][7].Name
	v0, h0, ok0 := protos[0].Has(CDS, name)
	v1, h1, ok1 := protos[1].Has(CDS, name)
	if !ok0 || !ok1 || v0 != want[CDS][7].Version || h0 != h1 {
		t.Fatalf("Has(CDS, %q) = %q %v / %q %v, want %q", name, v0, ok0, v1, ok1, want[CDS][7].Version)
	}
	if unsafe.StringData(v0) != unsafe.StringData(v1) {
		t.Errorf("the two clients hold a copy each of version %q", v0)
	}
}

// TestDeltaProtoStateSize: a client's cache at S=1000 (about 4,100 resources) takes
// about fifty bytes a resource, so that 5000 clients fit in about 1 GB beside the
// server: with maps of strings it took 1.3 MB (6.6 GB for the fleet, most of the
// simulator's CPU spent by the GC scanning it).
func TestDeltaProtoStateSize(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 20 clients' caches at S=1000")
	}
	rs := fleetResponses(1000) // shared by the clients, as decoded resources are
	syncDelta(t, newDeltaProto(), rs)
	const clients = 20
	protos := make([]*deltaProto, clients)
	before := liveHeap()
	for i := range protos {
		protos[i] = newDeltaProto()
		syncDelta(t, protos[i], rs)
	}
	perClient := (liveHeap() - before) / clients
	runtime.KeepAlive(protos)
	t.Logf("%d bytes per client", perClient)
	if perClient > 256<<10 {
		t.Errorf("a client's cache at S=1000 takes %d KiB, want at most 256 KiB", perClient>>10)
	}
}

func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// TestCodecMarshalOwnSize: a request is marshaled into a slice of its own size, not a
// buffer of gRPC's pool (1 MiB for anything above 32 KiB), and says what it said.
func TestCodecMarshalOwnSize(t *testing.T) {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: CDS.URL(), InitialResourceVersions: map[string]string{}}
	for i := range 1000 {
		req.InitialResourceVersions[fmt.Sprintf("svc-%05d.ns-%03d", i, i/100)] = fmt.Sprintf("%016x", i)
	}
	bs, err := codec{}.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	defer bs.Free()
	held := 0
	for _, b := range bs {
		held += cap(b.ReadOnlyData())
	}
	if n := proto.Size(req); bs.Len() != n || held != n {
		t.Errorf("marshaled %d bytes into %d, want %d in %d", bs.Len(), held, n, n)
	}
	var got discoveryv3.DeltaDiscoveryRequest
	if err := proto.Unmarshal(bs.Materialize(), &got); err != nil || !proto.Equal(&got, req) {
		t.Errorf("the marshaled request reads back as another (%v)", err)
	}
}
