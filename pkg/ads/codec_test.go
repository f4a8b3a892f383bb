package ads

import (
	"bytes"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/bearkong/bearkong/pkg/resource"
)

// TestCodecBytes holds the codec's promise: its fast path writes exactly the bytes the
// proto codec writes, so a proxy cannot tell them apart.
func TestCodecBytes(t *testing.T) {
	big := res(t, resource.Endpoint, "big", strings.Repeat("x", 70000))
	small := res(t, resource.Endpoint, "small", "y")
	var many []*anypb.Any
	for i := range 3000 {
		many = append(many, res(t, resource.Cluster, "c", strings.Repeat("z", i%300)).Any)
	}
	cases := map[string]*discoveryv3.DiscoveryResponse{
		"empty":              {},
		"no resources":       {VersionInfo: "v1", TypeUrl: resource.Cluster.URL(), Nonce: "1"},
		"one":                {VersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Nonce: "12", Resources: []*anypb.Any{small.Any}},
		"large (shared)":     {VersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Nonce: "99999", Resources: []*anypb.Any{big.Any, small.Any}},
		"many":               {VersionInfo: "v", TypeUrl: resource.Cluster.URL(), Nonce: "7", Resources: many},
		"empty any value":    {VersionInfo: "v", TypeUrl: resource.Cluster.URL(), Nonce: "7", Resources: []*anypb.Any{{TypeUrl: resource.Cluster.URL()}}},
		"empty any":          {Resources: []*anypb.Any{{}}},
		"no version":         {TypeUrl: resource.Route.URL(), Nonce: "3", Resources: []*anypb.Any{small.Any}},
		"canary (fallback)":  {VersionInfo: "v", Canary: true, Resources: []*anypb.Any{small.Any}},
		"control plane":      {VersionInfo: "v", ControlPlane: &corev3.ControlPlane{Identifier: "bearkong"}},
		"resource errors":    {VersionInfo: "v", ResourceErrors: []*discoveryv3.ResourceError{{ErrorDetail: &status.Status{Message: "x"}}}},
		"unknown any fields": {VersionInfo: "v", Resources: []*anypb.Any{withUnknown(small.Any)}},
		// Large: the shared body's way, where the resources are checked only when a
		// body is written, and a response unlike them must not find one.
		"large, unknown any fields (fallback)": {VersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Resources: []*anypb.Any{big.Any, withUnknown(small.Any)}},
		"large, nil any (fallback)":            {VersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Resources: []*anypb.Any{big.Any, nil}},
		"many, unknown any fields (fallback)":  {VersionInfo: "v", TypeUrl: resource.Cluster.URL(), Nonce: "8", Resources: append(slices.Clone(many[:40]), withUnknown(small.Any))},
		"large, unknown fields (fallback)":     withUnknownResponse(&discoveryv3.DiscoveryResponse{VersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Nonce: "99999", Resources: []*anypb.Any{big.Any, small.Any}}),
	}
	checkCodecBytes(t, cases, func() *discoveryv3.DiscoveryResponse { return &discoveryv3.DiscoveryResponse{} })
}

// checkCodecBytes marshals each case with the codec, twice (the second may find the
// first's shared body), and with proto.Marshal, wants the same bytes, and decodes them
// back to the case. A nil resource is an error for both.
func checkCodecBytes[M proto.Message](t *testing.T, cases map[string]M, empty func() M) {
	for name, resp := range cases {
		t.Run(name, func(t *testing.T) {
			want, err := proto.Marshal(resp)
			if err != nil {
				if _, cerr := (codec{}).Marshal(resp); cerr == nil {
					t.Fatalf("proto.Marshal fails (%v), the codec does not", err)
				}
				return
			}
			var got []byte
			for i := range 2 {
				bs, err := codec{}.Marshal(resp)
				if err != nil {
					t.Fatal(err)
				}
				got = bs.Materialize()
				bs.Free()
				if !bytes.Equal(got, want) {
					t.Fatalf("marshal %d: codec wrote %d bytes, proto.Marshal %d; they differ", i+1, len(got), len(want))
				}
			}
			back := empty()
			if err := proto.Unmarshal(got, back); err != nil {
				t.Fatal(err)
			}
			if d := cmpDiff(resp, back); d != "" {
				t.Fatalf("round trip (-sent +decoded):\n%s", d)
			}
		})
	}
}

func withUnknown(a *anypb.Any) *anypb.Any {
	c := proto.Clone(a).(*anypb.Any)
	c.ProtoReflect().SetUnknown([]byte{0x18, 0x01}) // field 3, varint 1
	return c
}

func withUnknownResponse(r *discoveryv3.DiscoveryResponse) *discoveryv3.DiscoveryResponse {
	r.ProtoReflect().SetUnknown([]byte{0x30, 0x01}) // field 6, varint 1
	return r
}

func cmpDiff(a, b proto.Message) string { return cmp.Diff(a, b, protocmp.Transform()) }

// The codec's other messages go through the proto codec unchanged.
func TestCodecOtherMessages(t *testing.T) {
	in := &discoveryv3.DiscoveryRequest{VersionInfo: "v", ResourceNames: []string{"a", "b"}, TypeUrl: resource.Endpoint.URL()}
	bs, err := codec{}.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out discoveryv3.DiscoveryRequest
	if err := (codec{}).Unmarshal(bs, &out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, &out) {
		t.Fatalf("round trip: got %v, want %v", &out, in)
	}
	if _, err := (codec{}).Marshal(wrapperspb.String("x")); err != nil {
		t.Fatal(err)
	}
}

// TestCodecRequests holds the request fast path to proto.Unmarshal's result, known names
// or not, and leaves what it does not handle to the proto codec.
func TestCodecRequests(t *testing.T) {
	known := resource.NewSet(res(t, resource.Endpoint, "app-1.default", "1"), res(t, resource.Endpoint, "app-2.default", "1"))
	defer runtimeKeepAlive(known)
	node := &corev3.Node{Id: "a.default", Cluster: "mesh"}
	cases := map[string]*discoveryv3.DiscoveryRequest{
		"empty": {},
		"first": {Node: node, TypeUrl: resource.Cluster.URL()},
		"ack":   {VersionInfo: "v1", ResponseNonce: "3", TypeUrl: resource.Endpoint.URL(), ResourceNames: []string{"app-1.default", "app-2.default"}},
		// Envoy lists its EDS names in watch order, newest first, not sorted.
		"ack in Envoy's order": {VersionInfo: "v1", ResponseNonce: "3", TypeUrl: resource.Endpoint.URL(), ResourceNames: []string{"app-2.default", "app-1.default"}},
		"duplicate names":      {VersionInfo: "v1", ResponseNonce: "3", TypeUrl: resource.Endpoint.URL(), ResourceNames: []string{"app-2.default", "app-2.default"}},
		"unknown names":        {TypeUrl: resource.Endpoint.URL(), ResourceNames: []string{"app-1.default", "nope", "ünïcode"}},
		"nack":                 {VersionInfo: "v0", ResponseNonce: "4", TypeUrl: resource.Route.URL(), ResourceNames: []string{"outbound"}, ErrorDetail: &status.Status{Code: 3, Message: "bad"}},
		"other type":           {TypeUrl: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"},
		"locators":             {TypeUrl: resource.Endpoint.URL(), ResourceLocators: []*discoveryv3.ResourceLocator{{Name: "x"}}},
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(in)
			if err != nil {
				t.Fatal(err)
			}
			out := &discoveryv3.DiscoveryRequest{VersionInfo: "stale", ResourceNames: []string{"stale"}}
			if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, out); err != nil {
				t.Fatal(err)
			}
			// The order of resource_names means nothing in xDS: a subscription to
			// exactly a set's names may come back in the set's order.
			if d := cmp.Diff(in, out, protocmp.Transform(), protocmp.SortRepeatedFields(&discoveryv3.DiscoveryRequest{}, "resource_names")); d != "" {
				t.Fatalf("(-sent +decoded):\n%s", d)
			}
			if name == "duplicate names" && !slices.Equal(out.ResourceNames, in.ResourceNames) {
				t.Fatalf("names %v decoded as %v", in.ResourceNames, out.ResourceNames)
			}
			if (name == "ack" || name == "ack in Envoy's order") && unsafe.SliceData(out.ResourceNames) != unsafe.SliceData(known.Names()) {
				t.Errorf("a subscription to exactly a set's names is not the set's list")
			}
			// Known names are the sets' own strings, not copies.
			for _, n := range out.ResourceNames {
				if i, ok := slices.BinarySearch(known.Names(), n); ok && unsafe.StringData(n) != unsafe.StringData(known.Names()[i]) {
					t.Errorf("name %q was allocated again", n)
				}
			}
		})
	}
	// A message proto.Unmarshal rejects is rejected.
	bad := protowire.AppendString(protowire.AppendTag(nil, fieldReqResourceNames, protowire.BytesType), "\xff")
	if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)}, &discoveryv3.DiscoveryRequest{}); err == nil {
		t.Fatal("invalid UTF-8 in a resource name was accepted")
	}
}

func runtimeKeepAlive(x any) { runtime.KeepAlive(x) }

// TestCodecRecentNames: on a stream, a request whose names are byte for byte those of the
// last request of its type that named a live list takes that list again (recentNames),
// and every request still decodes as proto.Unmarshal decodes it: other names of the
// same count and size, another type, another order, names split by another field.
func TestCodecRecentNames(t *testing.T) {
	set := resource.NewSet(
		res(t, resource.Endpoint, "a.default", "1"), res(t, resource.Endpoint, "b.default", "1"),
		res(t, resource.Endpoint, "c.default", "1"), res(t, resource.Endpoint, "d.default", "1"))
	defer runtimeKeepAlive(set)
	envoy := []string{"d.default", "c.default", "b.default", "a.default"}
	marshal := func(r *discoveryv3.DiscoveryRequest) []byte {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Names, then the type URL, then more names: proto.Unmarshal appends them all.
	split := protowire.AppendString(protowire.AppendTag(nil, fieldReqResourceNames, protowire.BytesType), "d.default")
	split = protowire.AppendString(protowire.AppendTag(split, fieldReqTypeURL, protowire.BytesType), resource.Endpoint.URL())
	for _, n := range envoy[1:] {
		split = protowire.AppendString(protowire.AppendTag(split, fieldReqResourceNames, protowire.BytesType), n)
	}
	recent := &recentNames{}
	steps := []struct {
		name   string
		b      []byte
		shared bool // decodes to the set's own list
		hits   int  // recent.hits after the step
	}{
		{"first ACK, in Envoy's order", marshal(req(resource.Endpoint, "v1", "1", envoy...)), true, 0},
		{"next ACK, same names", marshal(req(resource.Endpoint, "v2", "2", envoy...)), true, 1},
		{"same count and size, one name other", marshal(req(resource.Endpoint, "v2", "3", "d.default", "c.default", "b.default", "e.default")), false, 1},
		{"the set's names again", marshal(req(resource.Endpoint, "v3", "4", envoy...)), true, 2},
		// Lists are shared by their names, whatever the type; the type has an entry of its own.
		{"another type, same names", marshal(req(resource.Route, "v1", "5", envoy...)), true, 2},
		{"that type again", marshal(req(resource.Route, "v2", "6", envoy...)), true, 3},
		{"names split by another field", split, true, 3},
		{"sorted order", marshal(req(resource.Endpoint, "v3", "7", set.Names()...)), true, 3},
		{"sorted order again", marshal(req(resource.Endpoint, "v4", "8", set.Names()...)), true, 4},
		{"Envoy's order after it", marshal(req(resource.Endpoint, "v4", "9", envoy...)), true, 4},
		{"a NACK with the same names", marshal(nack(resource.Endpoint, "v4", "10", "bad", envoy...)), true, 5},
	}
	for _, st := range steps {
		want := &discoveryv3.DiscoveryRequest{}
		if err := proto.Unmarshal(st.b, want); err != nil {
			t.Fatal(err)
		}
		got := &sotwRequest{DiscoveryRequest: &discoveryv3.DiscoveryRequest{}, recent: recent}
		if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(st.b)}, got); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if d := cmp.Diff(want, got.DiscoveryRequest, protocmp.Transform(), protocmp.SortRepeatedFields(&discoveryv3.DiscoveryRequest{}, "resource_names")); d != "" {
			t.Fatalf("%s: (-proto.Unmarshal +codec):\n%s", st.name, d)
		}
		if shared := unsafe.SliceData(got.ResourceNames) == unsafe.SliceData(set.Names()); shared != st.shared {
			t.Errorf("%s: the set's own list = %v, want %v", st.name, shared, st.shared)
		}
		if recent.hits != st.hits {
			t.Errorf("%s: %d requests found their names in recentNames, want %d", st.name, recent.hits, st.hits)
		}
	}
}

// BenchmarkEDSAck measures what one proxy's EDS ACK costs the server at 1000 names:
// decoding the request, then the session's handling of it. Envoy repeats its whole
// subscription in every request, in watch order (newest first, so the reverse of the
// order in which it created the clusters: sorted order reversed after an initial sync).
// "envoy/stream" decodes as the server's stream does, which finds the names of the
// previous ACK again (recentNames).
func BenchmarkEDSAck(b *testing.B) {
	w := newFanOutWorld(b, 1000)
	for _, order := range []string{"sorted", "envoy", "envoy/stream"} {
		b.Run("names=1000/order="+order, func(b *testing.B) {
			s := newSession(nil, nil)
			syncSession(b, s, w)
			names := slices.Clone(w.clusters.Names())
			if order != "sorted" {
				slices.Reverse(names)
			}
			benchmarkACK(b, s, resource.Endpoint, names, order == "envoy/stream")
		})
	}
}

// benchmarkACK measures decoding and handling the ACK of a synced session's last
// response of t, naming names.
//
// With stream, the request is decoded as a stream's is, which remembers the names of its
// last request (recentNames): the first ACK looks them up, every other finds them there.
func benchmarkACK(b *testing.B, s *session, t resource.Type, names []string, stream bool) {
	ts := &s.types[t]
	raw, err := proto.Marshal(req(t, ts.version, ts.nonce, names...))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	recent := &recentNames{}
	for b.Loop() {
		var v any = &discoveryv3.DiscoveryRequest{}
		if stream {
			v = &sotwRequest{DiscoveryRequest: &discoveryv3.DiscoveryRequest{}, recent: recent}
		}
		if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(raw)}, v); err != nil {
			b.Fatal(err)
		}
		r, ok := v.(*discoveryv3.DiscoveryRequest)
		if !ok {
			r = v.(*sotwRequest).DiscoveryRequest
		}
		if out, resps := s.onRequest(t, r); out.kind != ACK || len(resps) != 0 {
			b.Fatalf("%v, %d responses", out.kind, len(resps))
		}
	}
	if stream {
		b.ReportMetric(float64(recent.hits), "hits")
	}
}

// TestCodecMemory: a push sends the same resources to every proxy, each response with its
// own nonce. The bytes the codec holds for those responses, while they wait to be
// written and after they are written, must not grow with the number of proxies: the
// resources are written once and shared, and nothing pools a copy per stream (the issue
// measured RSS climbing with every full push, the response buffers held by a pool).
func TestCodecMemory(t *testing.T) {
	var anys []*anypb.Any
	for i := range memResources {
		anys = append(anys, res(t, resource.Cluster, "c", strings.Repeat(string(rune('a'+i%26)), memSize)).Any)
	}
	testCodecMemory(t, func(nonce int, subset []int) proto.Message {
		// Each stream builds its own response and list (session.respond), naming the
		// snapshot's resources.
		resp := &discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: resource.Cluster.URL(), Nonce: strconv.Itoa(nonce)}
		for _, i := range subset {
			resp.Resources = append(resp.Resources, anys[i])
		}
		return resp
	})
}

// A 1 MiB response to 64 proxies.
const memStreams, memResources, memSize = 64, 256, 4 << 10

// testCodecMemory marshals the response respond builds for each of memStreams streams,
// with every resource, and checks the heap held while they are in flight and after;
// then a few subsets under the same version, which must be other bytes.
func testCodecMemory(t *testing.T, respond func(nonce int, subset []int) proto.Message) {
	all := make([]int, memResources)
	for i := range all {
		all[i] = i
	}
	heap := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	base := heap()
	var inFlight []mem.BufferSlice
	for i := range memStreams {
		bs, err := codec{}.Marshal(respond(i, all))
		if err != nil {
			t.Fatal(err)
		}
		inFlight = append(inFlight, bs)
	}
	held := heap() - base
	for i, bs := range inFlight {
		if want, _ := proto.Marshal(respond(i, all)); !bytes.Equal(bs.Materialize(), want) {
			t.Fatalf("stream %d: the codec's bytes differ from proto.Marshal's", i)
		}
		bs.Free()
	}
	inFlight = nil
	retained := heap() - base
	const bound = 4 << 20 // a few copies of the 1 MiB response, not one per stream
	if held > bound || retained > bound {
		t.Fatalf("%d streams of a %d KiB response: %d KiB held while in flight, %d KiB after they were written; want both under %d KiB",
			memStreams, memResources*memSize>>10, held>>10, retained>>10, bound>>10)
	}
	// The same version with other resources (EDS names only what changed) is other bytes.
	for i, subset := range [][]int{all[:10], all[1:], {3, 2}} {
		resp := respond(1000+i, subset)
		bs, err := codec{}.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := proto.Marshal(resp); !bytes.Equal(bs.Materialize(), want) {
			t.Fatalf("subset %d: the codec's bytes differ from proto.Marshal's", i)
		}
		bs.Free()
	}
}

// TestDeltaCodecBytes holds the delta fast path to proto.Marshal's bytes, as
// TestCodecBytes does for state of the world.
func TestDeltaCodecBytes(t *testing.T) {
	big := res(t, resource.Endpoint, "big", strings.Repeat("x", 70000)).Delta()
	small := res(t, resource.Endpoint, "small", "y").Delta()
	var many []*discoveryv3.Resource
	for i := range 3000 {
		many = append(many, res(t, resource.Cluster, "c"+strconv.Itoa(i), strings.Repeat("z", i%300)).Delta())
	}
	cases := map[string]*discoveryv3.DeltaDiscoveryResponse{
		"empty":              {},
		"no resources":       {SystemVersionInfo: "v1", TypeUrl: resource.Cluster.URL(), Nonce: "1"},
		"one":                {SystemVersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Nonce: "12", Resources: []*discoveryv3.Resource{small}},
		"large (shared)":     {SystemVersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Nonce: "99999", Resources: []*discoveryv3.Resource{big, small}, RemovedResources: []string{"gone", "went"}},
		"many":               {SystemVersionInfo: "v", TypeUrl: resource.Cluster.URL(), Nonce: "7", Resources: many},
		"removed only":       {SystemVersionInfo: "v", TypeUrl: resource.Cluster.URL(), Nonce: "7", RemovedResources: []string{"a", ""}},
		"no any":             {Resources: []*discoveryv3.Resource{{Name: "n", Version: "h"}}},
		"empty any":          {Resources: []*discoveryv3.Resource{{Name: "n", Resource: &anypb.Any{}}}},
		"empty resource":     {Resources: []*discoveryv3.Resource{{}}},
		"aliases (fallback)": {Resources: []*discoveryv3.Resource{{Name: "n", Aliases: []string{"m"}}}},
		"control plane":      {SystemVersionInfo: "v", ControlPlane: &corev3.ControlPlane{Identifier: "bearkong"}},
		"removed names":      {RemovedResourceNames: []*discoveryv3.ResourceName{{Name: "x"}}},
		"unknown any fields": {Resources: []*discoveryv3.Resource{{Name: "n", Resource: withUnknown(small.Resource)}}},
		"large, aliases (fallback)": {SystemVersionInfo: "abc", TypeUrl: resource.Endpoint.URL(), Nonce: "99999",
			Resources: []*discoveryv3.Resource{big, {Name: "n", Aliases: []string{"m"}}}},
		"large, unknown any fields (fallback)": {SystemVersionInfo: "abc", TypeUrl: resource.Endpoint.URL(),
			Resources: []*discoveryv3.Resource{big, {Name: "n", Resource: withUnknown(small.Resource)}}},
		"many, aliases (fallback)": {SystemVersionInfo: "v", TypeUrl: resource.Cluster.URL(), Nonce: "8",
			Resources: append(slices.Clone(many[:40]), &discoveryv3.Resource{Name: "n", Aliases: []string{"m"}})},
	}
	checkCodecBytes(t, cases, func() *discoveryv3.DeltaDiscoveryResponse { return &discoveryv3.DeltaDiscoveryResponse{} })
}

// TestDeltaCodecMemory: a delta push (or the initial sync of many proxies) sends the same
// resources to every proxy that needs them. As for state of the world, the bytes held for
// those responses must not grow with the number of proxies.
func TestDeltaCodecMemory(t *testing.T) {
	var rs []*resource.Resource
	for i := range memResources {
		rs = append(rs, res(t, resource.Cluster, "c"+strconv.Itoa(i), strings.Repeat(string(rune('a'+i%26)), memSize)))
	}
	testCodecMemory(t, func(nonce int, subset []int) proto.Message {
		// Each stream builds its own response and list (deltaSession.respond), with the
		// resources' shared delta forms, and removed names of its own.
		resp := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: resource.Cluster.URL(),
			Nonce: strconv.Itoa(nonce), RemovedResources: []string{"gone-" + strconv.Itoa(nonce)}}
		for _, i := range subset {
			resp.Resources = append(resp.Resources, rs[i].Delta())
		}
		return resp
	})
}

// TestCodecDeltaRequests holds the delta request fast path to proto.Unmarshal's result,
// and checks that known names are the sets' own strings: Envoy's first EDS and RDS
// requests subscribe to every cluster and route configuration.
func TestCodecDeltaRequests(t *testing.T) {
	known := resource.NewSet(res(t, resource.Endpoint, "app-1.default", "1"), res(t, resource.Endpoint, "app-2.default", "1"))
	defer runtimeKeepAlive(known)
	node := &corev3.Node{Id: "a.default", Cluster: "mesh"}
	entry := func(fields ...[]byte) []byte { return bytes.Join(fields, nil) }
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	cases := map[string]*discoveryv3.DeltaDiscoveryRequest{
		"empty":       {},
		"first":       {Node: node, TypeUrl: resource.Cluster.URL()},
		"subscribe":   {TypeUrl: resource.Endpoint.URL(), ResourceNamesSubscribe: []string{"app-2.default", "app-1.default", "nope", "ünïcode", ""}},
		"unsubscribe": {TypeUrl: resource.Endpoint.URL(), ResponseNonce: "4", ResourceNamesUnsubscribe: []string{"app-1.default", "*"}},
		"ack":         {TypeUrl: resource.Endpoint.URL(), ResponseNonce: "17"},
		"nack":        {TypeUrl: resource.Route.URL(), ResponseNonce: "4", ErrorDetail: &status.Status{Code: 3, Message: "bad"}},
		"reconnect": {Node: node, TypeUrl: resource.Endpoint.URL(), ResourceNamesSubscribe: []string{"app-1.default", "app-2.default"},
			InitialResourceVersions: map[string]string{"app-1.default": "h1", "app-2.default": "h2", "gone": "", "": "x"}},
		"locators": {TypeUrl: resource.Endpoint.URL(), ResourceLocatorsSubscribe: []*discoveryv3.ResourceLocator{{Name: "x"}}},
	}
	raw := map[string][]byte{}
	for name, in := range cases {
		b, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		raw[name] = b
	}
	// Map entries as other encoders may write them: value before key, a key given twice
	// (the last wins), an entry with neither.
	raw["map entry forms"] = slices.Concat(
		protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), entry(str(2, "v1"), str(1, "app-1.default"))),
		protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), entry(str(1, "k"), str(2, "a"), str(1, "app-2.default"))),
		protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), nil),
		str(2, resource.Endpoint.URL()))
	for name, b := range raw {
		t.Run(name, func(t *testing.T) {
			want := &discoveryv3.DeltaDiscoveryRequest{}
			if err := proto.Unmarshal(b, want); err != nil {
				t.Fatal(err)
			}
			out := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: "stale", ResourceNamesSubscribe: []string{"stale"}, InitialResourceVersions: map[string]string{"stale": "1"}}
			if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, out); err != nil {
				t.Fatal(err)
			}
			if d := cmpDiff(want, out); d != "" {
				t.Fatalf("(-proto.Unmarshal +codec):\n%s", d)
			}
			for _, n := range slices.Concat(out.ResourceNamesSubscribe, out.ResourceNamesUnsubscribe) {
				if i, ok := slices.BinarySearch(known.Names(), n); ok && unsafe.StringData(n) != unsafe.StringData(known.Names()[i]) {
					t.Errorf("name %q was allocated again", n)
				}
			}
		})
	}
	bad := protowire.AppendString(protowire.AppendTag(nil, 3, protowire.BytesType), "\xff")
	if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(bad)}, &discoveryv3.DeltaDiscoveryRequest{}); err == nil {
		t.Fatal("invalid UTF-8 in a resource name was accepted")
	}
}

// FuzzCodecDeltaRequest: whatever the bytes, the codec decodes a delta request as
// proto.Unmarshal does, or fails where it fails.
// FuzzCodecRequest holds the state-of-the-world request fast path to proto.Unmarshal's
// result, alone and as a stream decodes it (twice, the second time from recentNames),
// with names that are a live list's or not, long or short.
func FuzzCodecRequest(f *testing.F) {
	set := resource.NewSet(res(f, resource.Endpoint, "a.default", "1"), res(f, resource.Endpoint, "b.default", "1"),
		res(f, resource.Endpoint, strings.Repeat("l", 130)+".default", "1"))
	defer runtimeKeepAlive(set)
	long := set.Names()[2]
	for _, in := range []*discoveryv3.DiscoveryRequest{
		req(resource.Endpoint, "v1", "1", "b.default", "a.default", long),
		req(resource.Endpoint, "v1", "1", long, "a.default", "b.default"),
		req(resource.Endpoint, "v1", "1", "a.default", "a.default"),
		{Node: &corev3.Node{Id: "a.default"}, TypeUrl: resource.Cluster.URL(), ErrorDetail: &status.Status{Message: "x"}},
	} {
		b, _ := proto.Marshal(in)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &discoveryv3.DiscoveryRequest{}
		werr := proto.Unmarshal(b, want)
		recent := &recentNames{}
		for i, v := range []any{&discoveryv3.DiscoveryRequest{}, &sotwRequest{DiscoveryRequest: &discoveryv3.DiscoveryRequest{}, recent: recent},
			&sotwRequest{DiscoveryRequest: &discoveryv3.DiscoveryRequest{}, recent: recent}} {
			gerr := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, v)
			if (werr == nil) != (gerr == nil) {
				t.Fatalf("decode %d: proto.Unmarshal: %v; codec: %v", i, werr, gerr)
			}
			got, ok := v.(*discoveryv3.DiscoveryRequest)
			if !ok {
				got = v.(*sotwRequest).DiscoveryRequest
			}
			if werr == nil {
				if d := cmp.Diff(want, got, protocmp.Transform(), protocmp.SortRepeatedFields(&discoveryv3.DiscoveryRequest{}, "resource_names")); d != "" {
					t.Fatalf("decode %d: (-proto.Unmarshal +codec):\n%s", i, d)
				}
			}
		}
	})
}

func FuzzCodecDeltaRequest(f *testing.F) {
	for _, in := range []*discoveryv3.DeltaDiscoveryRequest{
		{Node: &corev3.Node{Id: "a.default"}, TypeUrl: resource.Endpoint.URL(), ResourceNamesSubscribe: []string{"a", "b"}},
		{ResponseNonce: "3", ResourceNamesUnsubscribe: []string{"*"}, ErrorDetail: &status.Status{Message: "x"}},
		{InitialResourceVersions: map[string]string{"a": "1", "": ""}},
		{InitialResourceVersions: map[string]string{"a": "0123456789abcdef", "b": "0123456789ABCDEF", "*": "x"}},
	} {
		b, _ := proto.Marshal(in)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := &discoveryv3.DeltaDiscoveryRequest{}
		werr := proto.Unmarshal(b, want)
		got := &discoveryv3.DeltaDiscoveryRequest{}
		gerr := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, got)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("proto.Unmarshal: %v; codec: %v", werr, gerr)
		}
		if werr == nil {
			if d := cmpDiff(want, got); d != "" {
				t.Fatalf("(-proto.Unmarshal +codec):\n%s", d)
			}
		}
		// As the server's stream decodes it: initial_resource_versions apart.
		r := newDeltaRequest()
		got, gerr = decodeVersions(t, r, b)
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("proto.Unmarshal: %v; codec, for the stream: %v", werr, gerr)
		}
		if werr == nil {
			if d := cmpDiff(want, got); d != "" {
				t.Fatalf("(-proto.Unmarshal +codec, for the stream):\n%s", d)
			}
		}
		r.versions.release()
	})
}

// TestSameNames: a request's names match a live list whatever their order, each once,
// and nothing else does. Both ways are checked: in the list's order or its reverse
// (compared byte by byte, see sameOrder), and in any other order (looked up by name).
func TestSameNames(t *testing.T) {
	set := resource.NewSet(
		res(t, resource.Endpoint, "a.default", "1"), res(t, resource.Endpoint, "b.default", "1"),
		res(t, resource.Endpoint, "c.default", "1"), res(t, resource.Endpoint, "d.default", "1"))
	defer runtimeKeepAlive(set)
	cases := []struct {
		names []string
		same  bool
	}{
		{[]string{"a.default", "b.default", "c.default", "d.default"}, true},
		{[]string{"d.default", "c.default", "b.default", "a.default"}, true},
		{[]string{"b.default", "d.default", "a.default", "c.default"}, true},
		{[]string{"a.default", "b.default", "c.default"}, false},
		{[]string{"a.default", "b.default", "c.default", "d.default", "e.default"}, false},
		{[]string{"a.default", "b.default", "c.default", "c.default"}, false},
		{[]string{"d.default", "c.default", "b.default", "b.default"}, false},
		{[]string{"a.default", "b.default", "c.default", "x.default"}, false},
		{[]string{"a.default", "c.default", "b.default", "d.default", "a.default"}, false},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.names, ","), func(t *testing.T) {
			b, err := proto.Marshal(&discoveryv3.DiscoveryRequest{VersionInfo: "v1", TypeUrl: resource.Endpoint.URL(), ResourceNames: c.names, ResponseNonce: "1"})
			if err != nil {
				t.Fatal(err)
			}
			var h resource.NameListHash
			h.Reset()
			for _, n := range set.Names() {
				h.Add([]byte(n))
			}
			found := false
			resource.LookupNames(func(lookup resource.NameLookup) {
				lookup.Lists(&h, len(set.Names()), func(list resource.NameList) bool {
					found = true
					if got := sameNames(b, list); got != c.same {
						t.Errorf("sameNames = %v, want %v", got, c.same)
					}
					return true
				})
			})
			if !found {
				t.Fatal("the set's list is not live")
			}
		})
	}
}
