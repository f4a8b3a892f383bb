package ads

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/resource"
)

// twoSetRoutes is a mesh whose RDS views are two sets, as pkg/translate builds them:
// every Service's route configuration, shared by every proxy, and the proxy's own
// inbound one, whose name is the same for every proxy and whose content is not.
type twoSetRoutes struct {
	base    *resource.Proxy
	routes  *resource.Set
	inbound []*resource.Set
}

func newTwoSetRoutes(t testing.TB, services, inbounds int) *twoSetRoutes {
	var routes []*resource.Resource
	for i := range services {
		name := fmt.Sprintf("svc-%05d.ns-%03d", i, i/100)
		routes = append(routes, res(t, resource.Route, name, "routes of "+name))
	}
	w := &twoSetRoutes{base: proxy(t, baseContent()), routes: resource.NewSet(routes...)}
	for i := range inbounds {
		w.inbound = append(w.inbound, resource.NewSet(res(t, resource.Route, "inbound", fmt.Sprint("inbound routes of workload ", i))))
	}
	return w
}

// proxy is the config of the i-th proxy: baseContent, with the two-set RDS view.
func (w *twoSetRoutes) proxy(i int) *resource.Proxy {
	p := *w.base
	p.Views[resource.Route] = resource.View{w.routes, w.inbound[i%len(w.inbound)]}
	return &p
}

// envoyOrder is the RDS subscription as Envoy lists it: every name of the view, not
// sorted (watch order, newest first).
func (w *twoSetRoutes) envoyOrder() []string {
	names := append(slices.Clone(w.routes.Names()), "inbound")
	slices.Reverse(names)
	return names
}

// syncRDS subscribes a SotW session to names over RDS and ACKs the answer.
func syncRDS(t testing.TB, s *session, p *resource.Proxy, names []string) {
	t.Helper()
	s.onConfig(p, time.Time{})
	_, resps := s.onRequest(resource.Route, req(resource.Route, "", "", names...))
	if len(resps) != 1 {
		t.Fatalf("%d responses to the first RDS request", len(resps))
	}
	if out, _ := s.onRequest(resource.Route, req(resource.Route, resps[0].VersionInfo, resps[0].Nonce, names...)); out.kind != ACK {
		t.Fatalf("the ACK is a %v", out.kind)
	}
}

// syncDeltaRDS subscribes a delta session to names over RDS, in as many requests as
// batches, and ACKs each answer.
func syncDeltaRDS(t testing.TB, s *deltaSession, p *resource.Proxy, names []string, batches int) {
	t.Helper()
	s.onConfig(p, time.Time{})
	for i := range batches {
		_, resps := s.onRequest(resource.Route, dreq(resource.Route, "", names[i*len(names)/batches:(i+1)*len(names)/batches]...))
		if len(resps) != 1 {
			t.Fatalf("%d responses to RDS request %d", len(resps), i)
		}
		if out, _ := s.onRequest(resource.Route, dreq(resource.Route, resps[0].Nonce)); out.kind != ACK {
			t.Fatalf("the ACK is a %v", out.kind)
		}
	}
}

// A proxy subscribes over RDS to every Service's route configuration and its own inbound
// one: two sets. Every session with that subscription, SotW or delta, whatever the
// order and the batches its names came in, holds one shared list, not a copy of its own.
func TestSubscriptionToTwoSetsIsShared(t *testing.T) {
	// Shared lists are held weakly: a collection first lets go of those of an earlier
	// run (-count), whose names are equal but other strings than this run's resources'.
	runtime.GC()
	w := newTwoSetRoutes(t, 100, 3)
	names := w.envoyOrder()
	union := slices.Sorted(slices.Values(names))

	sotw := []*session{newSession(nil, nil), newSession(nil, nil)}
	syncRDS(t, sotw[0], w.proxy(0), names)
	syncRDS(t, sotw[1], w.proxy(1), slices.Clone(union))
	delta := []*deltaSession{newDeltaSession(nil, nil), newDeltaSession(nil, nil)}
	syncDeltaRDS(t, delta[0], w.proxy(2), names, 1)
	syncDeltaRDS(t, delta[1], w.proxy(0), names, 3)

	shared := sotw[0].types[resource.Route].sub.names
	if !slices.Equal(shared, union) {
		t.Fatalf("subscription %v, want %v", shared, union)
	}
	for i, got := range [][]string{sotw[1].types[resource.Route].sub.names, delta[0].types[resource.Route].sub.names, delta[1].types[resource.Route].sub.names} {
		if !slices.Equal(got, union) {
			t.Fatalf("session %d: subscription %v, want %v", i+1, got, union)
		}
		if unsafe.SliceData(got) != unsafe.SliceData(shared) {
			t.Errorf("session %d holds a list of its own, not the shared one", i+1)
		}
	}
	// The names are the resources' own strings.
	for _, n := range shared {
		r, _ := w.proxy(0).Views[resource.Route].Get(n)
		if unsafe.StringData(n) != unsafe.StringData(r.Name) {
			t.Fatalf("name %q is a copy", n)
		}
	}

	// A subscription to part of the view is the session's own, and works as before.
	part := newSession(nil, nil)
	syncRDS(t, part, w.proxy(0), names[:10])
	if got := part.types[resource.Route].sub.names; !slices.Equal(got, slices.Sorted(slices.Values(names[:10]))) || unsafe.SliceData(got) == unsafe.SliceData(shared) {
		t.Fatalf("a subscription to 10 names is %d names, shared=%v", len(got), unsafe.SliceData(got) == unsafe.SliceData(shared))
	}
	runtime.KeepAlive(sotw)
	runtime.KeepAlive(delta)
}

// TestCodecUnionNames: once a session holds the shared list of a subscription to two
// sets, decoding a request that names exactly them, in any order, hands over that list,
// and the session's ACK takes it as its unchanged subscription.
func TestCodecUnionNames(t *testing.T) {
	w := newTwoSetRoutes(t, 100, 2)
	s := newSession(nil, nil)
	syncRDS(t, s, w.proxy(0), w.envoyOrder())
	rds := &s.types[resource.Route]
	held := rds.sub.names

	b, err := proto.Marshal(req(resource.Route, rds.version, rds.nonce, w.envoyOrder()...))
	if err != nil {
		t.Fatal(err)
	}
	var out discoveryv3.DiscoveryRequest
	if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, &out); err != nil {
		t.Fatal(err)
	}
	if unsafe.SliceData(out.ResourceNames) != unsafe.SliceData(held) {
		t.Fatalf("a request naming exactly the session's %d names decoded into a new list", len(held))
	}
	if o, resps := s.onRequest(resource.Route, &out); o.kind != ACK || len(resps) != 0 || unsafe.SliceData(rds.sub.names) != unsafe.SliceData(held) {
		t.Fatalf("%v, %d responses; subscription kept: %v", o.kind, len(resps), unsafe.SliceData(rds.sub.names) == unsafe.SliceData(held))
	}
}
