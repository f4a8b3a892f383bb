package ads

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/resource"
)

// deltaModel is a delta client reduced to what the protocol says it holds: per type, its
// subscription and its cache of name -> content hash, updated by each response
// (resources added or replaced, removed_resources dropped) and by its own unsubscribes
// (it drops what it no longer subscribes to).
type deltaModel struct {
	wildcard [resource.NumTypes]bool
	names    [resource.NumTypes]map[string]bool
	cache    [resource.NumTypes]map[string]string
}

func newDeltaModel() *deltaModel {
	m := &deltaModel{}
	for i := range m.cache {
		m.names[i], m.cache[i] = map[string]bool{}, map[string]string{}
	}
	return m
}

func (m *deltaModel) covers(t resource.Type, n string) bool { return m.wildcard[t] || m.names[t][n] }

func (m *deltaModel) apply(r *discoveryv3.DeltaDiscoveryResponse) {
	t, _ := resource.TypeFromURL(r.TypeUrl)
	for _, res := range r.Resources {
		if m.covers(t, res.Name) {
			m.cache[t][res.Name] = res.Version
		}
	}
	for _, n := range r.RemovedResources {
		delete(m.cache[t], n)
	}
}

// fuzzDeltaConfig builds a config from a byte: which of six resources of each type
// exist, and a generation for their content. With gen's high bit set, each view is two
// sets, r3 to r5 before r0 to r2, as a proxy's own set beside the shared one: its
// resources are then not in name order.
func fuzzDeltaConfig(which, gen byte) *resource.Proxy {
	p := &resource.Proxy{}
	for _, t := range resource.Types {
		var low, high []*resource.Resource
		for i := range 6 {
			if which&(1<<i) == 0 {
				continue
			}
			n := fmt.Sprint("r", i)
			r, err := resource.New(t, n, wrapperspb.String(fmt.Sprint(n, gen>>(i%4)&1)))
			if err != nil {
				panic(err)
			}
			if i < 3 {
				low = append(low, r)
			} else {
				high = append(high, r)
			}
		}
		if gen&0x80 != 0 {
			p.Views[t] = resource.View{resource.NewSet(high...), resource.NewSet(low...)}
		} else {
			p.Views[t] = resource.View{resource.NewSet(append(low, high...)...)}
		}
	}
	return p
}

// FuzzDeltaSession drives a delta session with configs and with requests that subscribe,
// unsubscribe (names and "*"), ACK, NACK (the client keeps what it had), answer with
// stale nonces and reconnect with initial_resource_versions, and checks after each step
// that the client holds exactly the covered resources of the config, at their content
// hashes (what a NACK rejected aside, until it is fixed), with no response naming a
// resource twice or sending what the client does not subscribe to.
func FuzzDeltaSession(f *testing.F) {
	f.Add([]byte{0, 0x3f, 0, 1, 2, 3, 4, 5, 0x10, 0x21, 0, 0x07, 1, 0x42, 0x80, 0x93})
	f.Add([]byte{1, 0x81, 0x92, 0, 0x3f, 0, 0x0f, 0x42, 0x43, 0x80, 1, 0x3c, 0x50, 0x61, 6, 0, 0x01})
	f.Add([]byte{0, 0x15, 0x40, 0x41, 0x80, 0x81, 0x90, 0x91, 0, 0x2a, 6, 0x40, 0x41, 0, 0x3f, 7})
	// Views of two sets, out of name order: subscribe, reconnect, grow.
	f.Add([]byte{0, 0x3f, 0x80, 0x10, 0x11, 0x14, 0x81, 0x91, 0xa1, 0x50, 0x51, 0x70, 0, 0x2d, 0x81, 0x92, 0})
	// A NACK of a new config, the same config again, then a fix.
	f.Add([]byte{0, 0x3f, 0, 0x10, 0x12, 0x81, 0x82, 0, 0x3f, 0x01, 0xf0, 0xf2, 0, 0x3f, 0x01, 0, 0x3f, 0x03, 0x50})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 300 {
			return
		}
		now := func() time.Time { return time.Unix(0, 0) }
		// Half the inputs go through the codec, the others give the session the proto.
		viaCodec := len(ops)%2 == 0
		s := newDeltaSession(nil, now)
		m := newDeltaModel()
		var cur *resource.Proxy
		requested := [resource.NumTypes]bool{}
		// before is the client's cache of a type as it was before the latest response of
		// that type, for a NACK to undo it (Envoy rejects a response that does not decode
		// whole); nil once the client did anything else of that type, or when that
		// response only removed.
		var before [resource.NumTypes]map[string]string
		send := func(rs []*discoveryv3.DeltaDiscoveryResponse) {
			for _, r := range rs {
				typ, _ := resource.TypeFromURL(r.TypeUrl)
				before[typ] = nil
				if len(r.Resources) > 0 {
					// Only a response with resources can be rejected: a removal has
					// nothing to decode.
					before[typ] = maps.Clone(m.cache[typ])
				}
				var names []string
				for _, res := range r.Resources {
					names = append(names, res.Name)
					if !m.covers(typ, res.Name) {
						t.Fatalf("%s %s sent, not subscribed", typ, res.Name)
					}
				}
				names = append(names, r.RemovedResources...)
				slices.Sort(names)
				if len(slices.Compact(names)) != len(r.Resources)+len(r.RemovedResources) {
					t.Fatalf("%s response names a resource twice: %v, removed %v", typ, r.Resources, r.RemovedResources)
				}
				m.apply(r)
			}
		}
		request := func(typ resource.Type, r *discoveryv3.DeltaDiscoveryRequest) {
			if !requested[typ] && typ.Wildcard() && len(r.ResourceNamesSubscribe) == 0 && len(r.ResourceNamesUnsubscribe) == 0 {
				m.wildcard[typ] = true // legacy wildcard
			}
			r.TypeUrl = typ.URL()
			before[typ] = nil
			var resps []*discoveryv3.DeltaDiscoveryResponse
			if viaCodec {
				// As the server's stream gets it: marshalled, then decoded by the codec
				// (initial_resource_versions apart from the proto, see deltaRequest).
				b, err := proto.Marshal(r)
				if err != nil {
					t.Fatal(err)
				}
				_, out := (&delta{sess: s}).onRequest(typ, recvDelta(t, b))
				for _, o := range out {
					resps = append(resps, o.(*discoveryv3.DeltaDiscoveryResponse))
				}
			} else {
				_, resps = s.onRequest(typ, r)
			}
			requested[typ] = true
			send(resps)
		}
		for i := 0; i < len(ops); i++ {
			op := ops[i]
			typ := resource.Types[int(op&0x0f)%resource.NumTypes]
			name := fmt.Sprint("r", int(op>>4&7)%6)
			switch op >> 7 {
			case 0:
				switch op & 0x70 {
				case 0x00: // a new config: the next byte says what exists
					if i+2 < len(ops) {
						cur = fuzzDeltaConfig(ops[i+1], ops[i+2])
						i += 2
						send(s.onConfig(cur, time.Time{}))
					}
				case 0x10, 0x20: // the first request of a type, or an empty one
					request(typ, &discoveryv3.DeltaDiscoveryRequest{})
				case 0x30: // "*"
					m.wildcard[typ] = true
					request(typ, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"*"}})
				case 0x40: // unsubscribe "*": the client drops what only it covered
					if m.wildcard[typ] {
						m.wildcard[typ] = false
						for n := range m.cache[typ] {
							if !m.names[typ][n] {
								delete(m.cache[typ], n)
							}
						}
					}
					request(typ, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesUnsubscribe: []string{"*"}})
				case 0x50: // ACK the latest response
					request(typ, &discoveryv3.DeltaDiscoveryRequest{ResponseNonce: s.types[typ].nonce})
				case 0x60: // a stale nonce with a subscription
					m.names[typ]["r1"] = true
					request(typ, &discoveryv3.DeltaDiscoveryRequest{ResponseNonce: "stale", ResourceNamesSubscribe: []string{"r1"}})
				case 0x70: // reconnect: a new session, told what the client holds
					s = newDeltaSession(nil, now)
					requested = [resource.NumTypes]bool{}
					if cur != nil {
						send(s.onConfig(cur, time.Time{}))
					}
					for _, typ := range resource.Types {
						if _, ok := m.cache[typ]["r5"]; !ok && m.covers(typ, "r5") {
							// A version bearkong never sent (a peer's, or none): the
							// server sends r5 as it is, or removes it.
							m.cache[typ]["r5"] = [...]string{"", "stale", "0123456789ABCDEF"}[int(op&0x0f)%3]
						}
						r := &discoveryv3.DeltaDiscoveryRequest{InitialResourceVersions: m.cache[typ]}
						for n := range m.names[typ] {
							r.ResourceNamesSubscribe = append(r.ResourceNamesSubscribe, n)
						}
						if m.wildcard[typ] && (!typ.Wildcard() || len(r.ResourceNamesSubscribe) > 0) {
							r.ResourceNamesSubscribe = append(r.ResourceNamesSubscribe, "*")
						}
						if !m.wildcard[typ] && len(r.ResourceNamesSubscribe) == 0 {
							continue
						}
						slices.Sort(r.ResourceNamesSubscribe)
						request(typ, r)
					}
				}
			case 1:
				if op>>4&7 == 7 { // NACK the latest response: the client keeps what it had
					if old := before[typ]; old != nil {
						m.cache[typ] = old
						request(typ, &discoveryv3.DeltaDiscoveryRequest{ResponseNonce: s.types[typ].nonce, ErrorDetail: &status.Status{Message: "no"}})
					}
					break
				}
				if op&0x08 == 0 { // subscribe a name
					m.names[typ][name] = true
					request(typ, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{name}})
				} else { // unsubscribe it: dropped unless the wildcard covers it
					delete(m.names[typ], name)
					if !m.wildcard[typ] {
						delete(m.cache[typ], name)
					}
					request(typ, &discoveryv3.DeltaDiscoveryRequest{ResourceNamesUnsubscribe: []string{name}})
				}
			}
			if cur == nil {
				continue
			}
			for _, typ := range resource.Types {
				if !requested[typ] {
					continue
				}
				// What a NACK rejected may differ until the fix.
				rejected := s.types[typ].rejected
				want := map[string]string{}
				for _, r := range cur.Views[typ].All() {
					if _, ok := rejected[r.Name]; !ok && m.covers(typ, r.Name) {
						want[r.Name] = r.Hash
					}
				}
				got := maps.Clone(m.cache[typ])
				for n := range rejected {
					delete(got, n)
				}
				if fmt.Sprint(want) != fmt.Sprint(got) {
					t.Fatalf("op %d (%#x): %s client holds %v, want %v (wildcard %v, names %v)", i, op, typ, m.cache[typ], want, m.wildcard[typ], m.names[typ])
				}
			}
		}
	})
}
