package ads

import (
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/resource"
)

// recvDelta decodes b as the server's stream does.
func recvDelta(t testing.TB, b []byte) request {
	t.Helper()
	r := newDeltaRequest()
	if err := (codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(b)}, r); err != nil {
		t.Fatal(err)
	}
	return r
}

// reconnectRequest is the first request of type t, subscribing to subscribe, that a proxy sends when it
// reconnects holding p's resources of t, marshalled as it comes off the wire.
func reconnectRequest(t testing.TB, subscribe []string, p *resource.Proxy, typ resource.Type) []byte {
	t.Helper()
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ.URL(), ResourceNamesSubscribe: subscribe, InitialResourceVersions: map[string]string{}}
	for _, r := range p.Views[typ].All() {
		req.InitialResourceVersions[r.Name] = r.Hash
	}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestDeltaReconnectAllocs: a proxy that reconnects holding the current config costs the
// server no allocation per entry of its initial_resource_versions, from the bytes off the
// wire to the session's answer. A thousand Services cost no more allocations than ten.
//
// Why: when a control plane restarts, every proxy reconnects at once and lists all it
// holds; at N=5000 and S=1000 a map and a version string per entry were 2 GB of garbage
// in 20 s, and RSS more than doubled.
func TestDeltaReconnectAllocs(t *testing.T) {
	allocs := func(services int) float64 {
		// Names of their own: a set's names stay interned until a GC after it goes, and
		// other tests check which strings their sessions hold.
		var clas []*resource.Resource
		for i := range services {
			clas = append(clas, res(t, resource.Endpoint, fmt.Sprintf("reconnect-%05d.ns", i), fmt.Sprint("endpoints ", i)))
		}
		set := resource.NewSet(clas...)
		p := &resource.Proxy{}
		p.Views[resource.Endpoint] = resource.View{set}
		b := reconnectRequest(t, set.Names(), p, resource.Endpoint)
		return testing.AllocsPerRun(100, func() {
			d := &delta{sess: newDeltaSession(nil, nil)}
			d.onConfig(p, time.Time{})
			_, resps := d.onRequest(resource.Endpoint, recvDelta(t, b))
			if len(resps) != 1 || d.describe2(resps[0]) != 0 {
				t.Fatalf("%d responses to a reconnect that holds everything, want one empty", len(resps))
			}
		})
	}
	small, large := allocs(10), allocs(1000)
	t.Logf("allocations per reconnect: %v at S=10, %v at S=1000", small, large)
	// A few more at S=1000 are the pooled entries made again after a GC emptied the pool;
	// one per entry would be a thousand.
	if large > small+50 {
		t.Errorf("a reconnect of 1000 entries made %v allocations, one of 10 made %v: the decoding or the session allocates per entry", large, small)
	}
}

func (p *delta) describe2(r response) int { _, n := p.describe(r); return n }

// BenchmarkDeltaReconnectCodec measures a proxy's reconnect at S=1000 with nothing
// changed, as the server meets it: each type's first request, with its
// initial_resource_versions, decoded by the codec from the bytes Envoy sends, then the
// session's answer (one empty response per type) and the ACK.
func BenchmarkDeltaReconnectCodec(b *testing.B) {
	w := newFanOutWorld(b, 1000)
	p := w.proxy(0)
	var raw [resource.NumTypes][]byte
	for _, t := range resource.Types {
		raw[t] = reconnectRequest(b, w.subscription(t), p, t)
	}
	b.ReportAllocs()
	for b.Loop() {
		d := &delta{sess: newDeltaSession(nil, nil)}
		d.onConfig(p, time.Time{})
		for _, t := range resource.Types {
			_, resps := d.onRequest(t, recvDelta(b, raw[t]))
			if len(resps) != 1 || d.describe2(resps[0]) != 0 {
				b.Fatalf("%s: %d responses, want one empty", t, len(resps))
			}
			d.onRequest(t, recvDelta(b, ackRequest(b, t, resps[0].GetNonce())))
		}
	}
}

func ackRequest(t testing.TB, typ resource.Type, nonce string) []byte {
	b, err := proto.Marshal(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typ.URL(), ResponseNonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeVersions decodes b as the server's stream does and returns the proto with the
// initial_resource_versions put back in its map, as proto.Unmarshal fills it, and the
// decoded request.
//
// The bytes come in three buffers, as a request read in several HTTP/2 frames does
// (recvDelta gives them in one).
func decodeVersions(t testing.TB, r *deltaRequest, b []byte) (*discoveryv3.DeltaDiscoveryRequest, error) {
	t.Helper()
	data := mem.BufferSlice{mem.SliceBuffer(b[:len(b)/3]), mem.SliceBuffer(b[len(b)/3 : 2*len(b)/3]), mem.SliceBuffer(b[2*len(b)/3:])}
	if err := (codec{}).Unmarshal(data, r); err != nil {
		return nil, err
	}
	out := proto.Clone(r.DeltaDiscoveryRequest).(*discoveryv3.DeltaDiscoveryRequest)
	if r.decoded {
		if len(out.InitialResourceVersions) > 0 {
			t.Fatalf("the fast path filled the map too: %v", out.InitialResourceVersions)
		}
		out.InitialResourceVersions = r.versions.asMap()
	}
	return out, nil
}

// TestCodecDeltaRequestVersions: decoded for the server's stream, a request's
// initial_resource_versions hold exactly what proto.Unmarshal puts in the map, whatever
// the entries' form, with one entry per name (the last given); a name bearkong serves is the
// set's own string and a content hash is not a string at all. A request the fast path
// does not take keeps them in the proto's map.
//
// Entries are counted with each, which gives each name once (the last given).
func TestCodecDeltaRequestVersions(t *testing.T) {
	known := resource.NewSet(res(t, resource.Endpoint, "vers-1.default", "1"), res(t, resource.Endpoint, "vers-2.default", "1"))
	defer runtimeKeepAlive(known)
	h1, h2 := known.All()[0].Hash, known.All()[1].Hash
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	entry := func(fields ...[]byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, fieldDeltaReqInitial, protowire.BytesType), bytes.Join(fields, nil))
	}
	typeURL := str(fieldDeltaReqTypeURL, resource.Endpoint.URL())
	marshal := func(r *discoveryv3.DeltaDiscoveryRequest) []byte {
		b, err := proto.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name string
		b    []byte
		// decoded: the fast path takes it; hashes: the entries whose version is a hash.
		decoded bool
		hashes  int
		err     bool
	}{
		{name: "none", b: marshal(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL()}), decoded: true},
		{name: "current hashes", b: marshal(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Endpoint.URL(),
			ResourceNamesSubscribe: []string{"vers-1.default", "vers-2.default"}, InitialResourceVersions: map[string]string{"vers-1.default": h1, "vers-2.default": h2}}),
			decoded: true, hashes: 2},
		{name: "other versions", b: marshal(&discoveryv3.DeltaDiscoveryRequest{InitialResourceVersions: map[string]string{
			"vers-1.default": "0123456789ABCDEF", "vers-2.default": "", "gone": "0123456789abcde", "long": "0123456789abcdef0",
			"odd": "0123456789abcdeg", "ünïcode": "vërsion", "*": "x", "": "0000000000000000"}}),
			decoded: true, hashes: 1},
		{name: "a name given twice: the last wins", b: slices.Concat(entry(str(1, "vers-1.default"), str(2, h1)), typeURL,
			entry(str(1, "vers-2.default"), str(2, "a")), entry(str(1, "vers-1.default"), str(2, "stale")), entry(str(1, "vers-2.default"), str(2, h2))),
			decoded: true, hashes: 1},
		{name: "entry forms", b: slices.Concat(
			entry(str(2, h1), str(1, "vers-1.default")),               // value first
			entry(str(1, "k"), str(2, "a"), str(1, "vers-2.default")), // key twice
			entry(str(1, "x"), str(2, "a"), str(2, h2)),               // value twice
			entry(),                                                     // neither: "" -> ""
			entry(str(1, "no value")), entry(str(2, "no key 0000000"))), // one of the two
			decoded: true, hashes: 2},
		{name: "invalid UTF-8 in a key", b: entry(str(1, "\xff"), str(2, h1)), err: true},
		{name: "invalid UTF-8 in a version", b: entry(str(1, "a"), str(2, "\xff")), err: true},
		{name: "invalid UTF-8 in a version given twice", b: entry(str(1, "a"), str(2, "\xff"), str(2, h1)), err: true},
		{name: "a field the fast path does not take", b: marshal(&discoveryv3.DeltaDiscoveryRequest{
			ResourceLocatorsSubscribe: []*discoveryv3.ResourceLocator{{Name: "x"}}, InitialResourceVersions: map[string]string{"vers-1.default": h1}})},
	}
	r := newDeltaRequest()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := &discoveryv3.DeltaDiscoveryRequest{}
			werr := proto.Unmarshal(c.b, want)
			// One request decoded after another, as a stream's are, and released.
			got, err := decodeVersions(t, r, c.b)
			defer r.versions.release()
			if (werr != nil) != c.err || (err != nil) != c.err {
				t.Fatalf("proto.Unmarshal: %v; codec: %v; want an error: %v", werr, err, c.err)
			}
			if c.err {
				return
			}
			if r.decoded != c.decoded {
				t.Fatalf("decoded by the fast path: %v, want %v", r.decoded, c.decoded)
			}
			if d := cmpDiff(want, got); d != "" {
				t.Fatalf("(-proto.Unmarshal +codec):\n%s", d)
			}
			if !r.decoded {
				return
			}
			v := &r.versions
			hashes := 0
			v.each(func(name string) {
				if i := v.index[name]; v.entries[i].odd == 0 {
					hashes++
				}
				if j, ok := slices.BinarySearch(known.Names(), name); ok && unsafe.StringData(name) != unsafe.StringData(known.Names()[j]) {
					t.Errorf("name %q was allocated again", name)
				}
				w := want.InitialResourceVersions[name]
				if found, same := v.holds(name, w); !found || !same {
					t.Errorf("entry %q: holds(%q) = %v, %v", name, w, found, same)
				}
				if found, same := v.holds(name, w+"0"); !found || same {
					t.Errorf("entry %q: holds(%q) = %v, %v", name, w+"0", found, same)
				}
				if !v.has(name) || v.version(name) != w {
					t.Errorf("entry %q: has %v, version %q", name, v.has(name), v.version(name))
				}
			})
			if hashes != c.hashes {
				t.Errorf("%d versions held as hashes, want %d", hashes, c.hashes)
			}
		})
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// clusterHashes returns the content hash (the version a delta client holds it at) of a
// cluster of c by name.
func clusterHashes(t *testing.T, c map[resource.Type]map[string]string) func(name string) string {
	t.Helper()
	ref := newDeltaSession(nil, nil)
	ref.onConfig(proxy(t, c), time.Time{})
	return func(name string) string {
		r, _ := ref.cur.Views[resource.Cluster].Get(name)
		return r.Hash
	}
}

// TestDeltaInitialVersions: what a reconnecting client says it holds decides what its
// first answer sends and removes, the same whether the session reads the proto's map or
// the codec's decoding of the bytes, and whether the config comes before the request or
// after it.
func TestDeltaInitialVersions(t *testing.T) {
	base := baseContent()
	hash := clusterHashes(t, base)
	a, b := hash("a"), hash("b")
	cds := resource.Cluster
	for _, c := range []struct {
		name    string
		initial map[string]string
		want    []dsent
	}{
		{"every version current: one empty answer", map[string]string{"a": a, "b": b}, []dsent{{typ: cds}}},
		{"a version not current", map[string]string{"a": a, "b": "0123456789abcdef"}, []dsent{{typ: cds, sent: []string{"b=1"}}}},
		{"a version not a hash", map[string]string{"a": a, "b": "stale"}, []dsent{{typ: cds, sent: []string{"b=1"}}}},
		{"a hash in capitals is another version", map[string]string{"a": strings.ToUpper(a), "b": b}, []dsent{{typ: cds, sent: []string{"a=1"}}}},
		{"an empty version", map[string]string{"a": a, "b": ""}, []dsent{{typ: cds, sent: []string{"b=1"}}}},
		{"a name missing", map[string]string{"a": a}, []dsent{{typ: cds, sent: []string{"b=1"}}}},
		{"a name that went", map[string]string{"a": a, "b": b, "gone": "0123456789abcdef"}, []dsent{{typ: cds, removed: []string{"gone"}}}},
		{"a name that went, held at an empty version", map[string]string{"a": a, "b": b, "gone": ""}, []dsent{{typ: cds, removed: []string{"gone"}}}},
		{"a * entry counts for nothing", map[string]string{"a": a, "b": b, "*": "x"}, []dsent{{typ: cds}}},
		{"an entry without a name", map[string]string{"a": a, "b": b, "": ""}, []dsent{{typ: cds, removed: []string{""}}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, path := range []string{"map", "codec"} {
				for _, configFirst := range []bool{true, false} {
					s := newDeltaSession(nil, nil)
					d := &delta{sess: s}
					if configFirst {
						s.onConfig(proxy(t, base), time.Time{})
					}
					r := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: cds.URL(), InitialResourceVersions: c.initial}
					var resps []*discoveryv3.DeltaDiscoveryResponse
					if path == "map" {
						_, resps = s.onRequest(cds, r)
					} else {
						raw, err := proto.Marshal(r)
						if err != nil {
							t.Fatal(err)
						}
						_, out := d.onRequest(cds, recvDelta(t, raw))
						for _, o := range out {
							resps = append(resps, o.(*discoveryv3.DeltaDiscoveryResponse))
						}
					}
					if !configFirst {
						if len(resps) != 0 {
							t.Fatalf("%s, config after: %d responses before the config", path, len(resps))
						}
						resps = s.onConfig(proxy(t, base), time.Time{})
					}
					if got := dsummary(t, resps); !equalDsent(got, c.want) {
						t.Errorf("%s, config first %v: responses\n got %+v\nwant %+v", path, configFirst, got, c.want)
					}
				}
			}
		})
	}
}

// TestDeltaInitialVersionsFingerprint: the session takes a reconnecting client's entries
// as exactly what it covers, without decoding them, only when they are; any other set of
// entries (versions swapped between names, a name given twice in place of another, more
// or fewer names) is decoded and answered as proto.Unmarshal's map says.
func TestDeltaInitialVersionsFingerprint(t *testing.T) {
	base := with(baseContent(), resource.Cluster, "b", "2") // a and b of different content
	hash := clusterHashes(t, base)
	a, b := hash("a"), hash("b")
	str := func(num protowire.Number, s string) []byte {
		return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
	}
	entry := func(name, version string) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, fieldDeltaReqInitial, protowire.BytesType), slices.Concat(str(1, name), str(2, version)))
	}
	cds := resource.Cluster
	for _, c := range []struct {
		name    string
		entries [][]byte
		decoded bool // the session had to look at the entries
		want    []dsent
	}{
		{"exactly what it covers", [][]byte{entry("b", b), entry("a", a)}, false, []dsent{{typ: cds}}},
		{"and *", [][]byte{entry("a", a), entry("*", "x"), entry("b", b)}, false, []dsent{{typ: cds}}},
		{"versions swapped", [][]byte{entry("a", b), entry("b", a)}, true, []dsent{{typ: cds, sent: []string{"a=1", "b=2"}}}},
		{"a name twice, another missing", [][]byte{entry("a", a), entry("a", a)}, true, []dsent{{typ: cds, sent: []string{"b=2"}}}},
		{"a name twice, the last current", [][]byte{entry("a", "0123456789abcdef"), entry("b", b), entry("a", a)}, true, []dsent{{typ: cds}}},
		{"a name twice, the last stale", [][]byte{entry("a", a), entry("b", b), entry("a", "0123456789abcdef")}, true, []dsent{{typ: cds, sent: []string{"a=1"}}}},
		{"one more, gone", [][]byte{entry("a", a), entry("b", b), entry("gone", a)}, true, []dsent{{typ: cds, removed: []string{"gone"}}}},
		{"one fewer", [][]byte{entry("a", a)}, true, []dsent{{typ: cds, sent: []string{"b=2"}}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newDeltaSession(nil, nil)
			s.onConfig(proxy(t, base), time.Time{})
			raw := slices.Concat(append([][]byte{str(fieldDeltaReqTypeURL, cds.URL())}, c.entries...)...)
			req := recvDelta(t, raw).(*deltaRequest)
			_, resps := s.onDecoded(cds, req.DeltaDiscoveryRequest, req.initial())
			if decoded := req.versions.index != nil; decoded != c.decoded {
				t.Errorf("entries decoded: %v, want %v", decoded, c.decoded)
			}
			req.versions.release()
			if got := dsummary(t, resps); !equalDsent(got, c.want) {
				t.Errorf("responses\n got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// TestCoveredSum: the sums coveredSum remembers are those of the very list asked about:
// another list of the same length, or a part of the list, gets its own.
func TestCoveredSum(t *testing.T) {
	var one, two []*resource.Resource
	for i := range 2 * minCachedSum {
		one = append(one, res(t, resource.Endpoint, fmt.Sprint("sum-", i), "1"))
		two = append(two, res(t, resource.Endpoint, fmt.Sprint("sum-", i), "2"))
	}
	for range 2 { // computed, then remembered
		for _, rs := range [][]*resource.Resource{one, two, one[:minCachedSum], one[minCachedSum:], two[1:]} {
			if got, want := coveredSum(rs), sumOf(rs); got != want {
				t.Fatalf("coveredSum of %d resources from %s = %x, want %x", len(rs), rs[0].Name, got, want)
			}
		}
	}
	if sumOf(one) == sumOf(two) {
		t.Fatal("two lists of other versions have the same sum")
	}
}

// TestSameAsCovered: whether a reconnecting client's entries are exactly what its
// subscription covers, worked out without building that list, is what the list says:
// for views of a shared set and a proxy's own, and subscriptions by wildcard, to one
// set's names, to both sets' and to some of them.
func TestSameAsCovered(t *testing.T) {
	var shared, own []*resource.Resource
	for i := range 2 * minCachedSum {
		shared = append(shared, res(t, resource.Cluster, fmt.Sprint("svc-", i), "1"))
	}
	own = append(own, res(t, resource.Cluster, "local-app", "1"))
	sharedSet, ownSet := resource.NewSet(shared...), resource.NewSet(own...)
	view := resource.View{sharedSet, ownSet}
	all := resource.CanonicalNames(view, append(slices.Clone(sharedSet.Names()), "local-app"))
	slices.Sort(all.List())
	some := []string{"local-app", "svc-1", "svc-2"}
	subs := map[string]subscription{
		"wildcard":        {wildcard: true},
		"the shared set":  {names: sharedSet.Names()},
		"the own set":     {names: ownSet.Names()},
		"both sets":       {names: all.List()},
		"some names":      {names: some},
		"some and absent": {names: append(slices.Clone(some), "svc-absent")},
	}
	for name, sub := range subs {
		covered := coveredBy(sub, view)
		held := map[string]string{}
		for _, r := range covered {
			held[r.Name] = r.Hash
		}
		other := res(t, resource.Cluster, "x", "2").Hash
		for entries, same := range map[string]bool{"exactly": true, "one changed": false, "one missing": false, "one more": false, "and *": true} {
			m := maps.Clone(held)
			switch entries {
			case "one changed":
				m[covered[0].Name] = other
			case "one missing":
				delete(m, covered[len(covered)-1].Name)
			case "one more":
				m["svc-gone"] = other
			case "and *":
				m["*"] = ""
			}
			b, err := proto.Marshal(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.Cluster.URL(), InitialResourceVersions: m})
			if err != nil {
				t.Fatal(err)
			}
			r := newDeltaRequest()
			if _, err := decodeVersions(t, r, b); err != nil {
				t.Fatal(err)
			}
			if got := r.initial().sameAsCovered(sub, view); got != same {
				t.Errorf("%s, entries %s: sameAsCovered = %v, want %v", name, entries, got, same)
			}
			r.versions.release()
		}
	}
}
