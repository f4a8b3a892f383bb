package ads

import (
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/internal/xdsclient"
	"github.com/bearkong/bearkong/pkg/resource"
)

// fuzzWorld builds configs for FuzzSession from three bytes: which of four clusters
// exist (each with its ClusterLoadAssignment), their content, which of two route
// configurations the outbound listener names, with their content, and which of the two
// secrets that clusters a, c (s0) and d (s0, s1) take from SDS exist, with their content.
// A resource's body is "name|content|eds|routes|secrets", which is all the Envoy-like
// client needs to know of it.
func fuzzConfig(b0, b1, b2, gen byte) *resource.Proxy {
	p := &resource.Proxy{}
	body := func(t resource.Type, name, content, eds string, routes []string, secrets ...string) *resource.Resource {
		r, err := resource.New(t, name, wrapperspb.String(name+"|"+content+"|"+eds+"|"+strings.Join(routes, ",")+"|"+strings.Join(secrets, ",")))
		if err != nil {
			panic(err)
		}
		return r
	}
	var clusters, clas, listeners, routes, secrets []*resource.Resource
	clusterSecrets := [][]string{{"s0"}, nil, {"s0"}, {"s0", "s1"}}
	for i, n := range []string{"a", "b", "c", "d"} {
		if b0&(1<<i) == 0 {
			continue
		}
		clusters = append(clusters, body(resource.Cluster, n, fmt.Sprint("c", b1>>i&1, gen>>4), n, nil, clusterSecrets[i]...))
		clas = append(clas, body(resource.Endpoint, n, fmt.Sprint("e", b1>>(i+4)&1, gen&15), "", nil))
	}
	for i, n := range []string{"s0", "s1"} {
		if b2&(1<<(i+5)) != 0 {
			secrets = append(secrets, body(resource.Secret, n, fmt.Sprint("s", b2>>7, gen), "", nil))
		}
	}
	var names []string
	for i, n := range []string{"r0", "r1"} {
		if b2&(1<<i) != 0 {
			names = append(names, n)
			routes = append(routes, body(resource.Route, n, fmt.Sprint("r", b2>>(i+2)&1, gen), "", nil))
		}
	}
	listeners = append(listeners, body(resource.Listener, "out", fmt.Sprint("l", b2>>4&1, gen>>4), "", names))
	p.Views[resource.Cluster] = resource.View{resource.NewSet(clusters...)}
	p.Views[resource.Endpoint] = resource.View{resource.NewSet(clas...)}
	p.Views[resource.Listener] = resource.View{resource.NewSet(listeners...)}
	p.Views[resource.Route] = resource.View{resource.NewSet(routes...)}
	p.Views[resource.Secret] = resource.View{resource.NewSet(secrets...)}
	return p
}

var fuzzSeed = maphash.MakeSeed()

// summarize reads a response's resources as the client sees them.
func summarizeResponse(t *testing.T, r *discoveryv3.DiscoveryResponse) []xdsclient.Resource {
	var out []xdsclient.Resource
	for _, a := range r.Resources {
		var s wrapperspb.StringValue
		if err := proto.Unmarshal(a.Value, &s); err != nil {
			t.Fatal(err)
		}
		f := strings.Split(s.Value, "|")
		res := xdsclient.Resource{Name: f[0], Hash: maphash.Bytes(fuzzSeed, a.Value), EDS: f[2]}
		if f[3] != "" {
			res.Routes = strings.Split(f[3], ",")
		}
		if f[4] != "" {
			res.Secrets = strings.Split(f[4], ",")
		}
		out = append(out, res)
	}
	return out
}

// FuzzSession runs a session against the Envoy-like client of internal/xdsclient, with
// the two directions of the stream as queues that the fuzzer advances in any order, and
// checks the session's invariants:
//   - an ACK that does not change the subscription is never answered;
//   - content the client NACKed is not sent again while it stays subscribed, until the
//     config changes it;
//   - in the end, once the config changes everything and the queues drain, the client
//     holds exactly the server's view for its subscription (so every requested name that
//     exists was sent), and no cluster whose endpoints and secrets exist is left warming.
//
// `go test` runs the seed corpus; `make fuzz FUZZTIME=5m` explores.
func FuzzSession(f *testing.F) {
	f.Add([]byte{0, 0x0f, 0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{0, 0x03, 0, 0x13, 1, 1, 1, 1, 1, 1, 0, 0x01, 0, 0x13, 1, 1, 1, 1, 0, 0x03, 0, 0x13, 1, 1, 1, 1, 1})
	f.Add([]byte{0, 0x0f, 0, 3, 1, 1, 1, 1, 1, 3, 1, 0, 0x0f, 0x02, 3, 1, 1, 1, 1, 1, 1, 0, 0x0c, 0x10, 2, 1, 1, 1, 1})
	f.Add([]byte{0, 0x01, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0x01, 0, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{0, 0x0f, 0xff, 0x1f, 2, 2, 1, 2, 1, 2, 1, 2, 1, 0, 0x05, 0x0f, 0x1f, 2, 1, 2, 1, 1, 1, 1})
	// Secrets: TLS clusters, their secrets, a NACKed rotation, another rotation.
	f.Add([]byte{0, 0x0d, 0, 0x63, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 0, 0x0d, 0, 0xe3, 3, 2, 1, 0, 0x0d, 0, 0x63, 2, 1, 2, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 400 {
			return
		}
		s := newSession(nil, func() time.Time { return time.Unix(0, 0) })
		c := xdsclient.New()
		var toServer []*discoveryv3.DiscoveryRequest
		var toClient []*discoveryv3.DiscoveryResponse
		toServer = append(toServer, c.Start())
		nackNext := false
		gen := byte(0)
		// nacked holds, per type, the resources of NACKed responses that the config
		// has not changed since and the client still subscribes to.
		// For LDS and CDS, whose responses carry the full state (and so repeat
		// resources the client rejected), the NACKed version is what must not come
		// again until the config moves.
		nacked := [resource.NumTypes]map[string]uint64{}
		for i := range nacked {
			nacked[i] = map[string]uint64{}
		}
		nackedVersion := [resource.NumTypes]string{}
		lastSent := [resource.NumTypes]*discoveryv3.DiscoveryResponse{}
		send := func(rs []*discoveryv3.DiscoveryResponse) {
			for _, r := range rs {
				typ, _ := resource.TypeFromURL(r.TypeUrl)
				if typ.Wildcard() {
					if r.VersionInfo == nackedVersion[typ] {
						t.Fatalf("%s version %s resent after the client NACKed it", typ, r.VersionInfo)
					}
					continue
				}
				for _, res := range summarizeResponse(t, r) {
					if h, ok := nacked[typ][res.Name]; ok && h == res.Hash {
						t.Fatalf("%s %q resent after the client NACKed it", typ, res.Name)
					}
				}
			}
			for _, r := range rs {
				typ, _ := resource.TypeFromURL(r.TypeUrl)
				lastSent[typ] = r
				t.Logf("server -> %s nonce %s %v", typ, r.Nonce, summarizeResponse(t, r))
			}
			toClient = append(toClient, rs...)
		}
		config := func(p *resource.Proxy) {
			for typ := range nackedVersion {
				if p.Views[typ].Version() != nackedVersion[typ] {
					nackedVersion[typ] = ""
				}
			}
			for typ := range nacked {
				for n, h := range nacked[typ] {
					if r, ok := p.Views[typ].Get(n); !ok || maphash.Bytes(fuzzSeed, r.Any.Value) != h {
						delete(nacked[typ], n) // changed: may be sent again
					}
				}
			}
			send(s.onConfig(p, time.Time{}))
		}
		toServerStep := func() {
			req := toServer[0]
			toServer = toServer[1:]
			typ, _ := resource.TypeFromURL(req.TypeUrl)
			before, sentBefore := s.types[typ].sub, s.types[typ].sentSub
			out, resps := s.onRequest(typ, req)
			t.Logf("server <- %s %v nonce %q names %v: %v, %d responses", typ, req.ErrorDetail != nil, req.ResponseNonce, req.ResourceNames, out.kind, len(resps))
			if out.kind == ACK && s.types[typ].sub.same(before) && len(resps) > 0 {
				t.Fatalf("an ACK of %s was answered: %v", typ, resps)
			}
			if out.kind == NACK {
				// What the server now knows the client rejected: its latest response.
				if typ.Wildcard() {
					nackedVersion[typ] = lastSent[typ].VersionInfo
				}
				// Names the server had forgotten before the NACK came (the client
				// unsubscribed meanwhile) are a new subscription, answered anew.
				for _, r := range summarizeResponse(t, lastSent[typ]) {
					if sentBefore.has(r.Name) && s.types[typ].sub.has(r.Name) {
						nacked[typ][r.Name] = r.Hash
					}
				}
			}
			send(resps)
		}
		toClientStep := func() {
			resp := toClient[0]
			toClient = toClient[1:]
			typ, _ := xdsclient.TypeOf(resp.TypeUrl)
			rs := summarizeResponse(t, resp)
			msg := ""
			if nackNext {
				msg = "rejected"
				nackNext = false
			}
			t.Logf("client <- %s nonce %s %v nack=%v", typ, resp.Nonce, rs, msg != "")
			reqs, err := c.Response(typ, resp.VersionInfo, resp.Nonce, rs, msg)
			if err != nil {
				t.Fatal(err)
			}
			// Unsubscribed names are forgotten by both sides: a later subscribe may
			// get them again.
			if typ == xdsclient.CDS || typ == xdsclient.LDS {
				dep := resource.Endpoint
				if typ == xdsclient.LDS {
					dep = resource.Route
				}
				for n := range nacked[dep] {
					if !slices.Contains(c.Names(xdsclient.Type(dep)), n) {
						delete(nacked[dep], n)
					}
				}
			}
			toServer = append(toServer, reqs...)
		}
		for len(ops) > 0 {
			op := ops[0]
			ops = ops[1:]
			switch op % 4 {
			case 0: // a new config
				if len(ops) < 3 {
					return
				}
				gen++
				t.Logf("config %x %x %x %d", ops[0], ops[1], ops[2], gen)
				config(fuzzConfig(ops[0], ops[1], ops[2], gen))
				ops = ops[3:]
			case 1:
				if len(toServer) > 0 {
					toServerStep()
				}
			case 2:
				if len(toClient) > 0 {
					toClientStep()
				}
			case 3:
				nackNext = true
			}
		}
		// The end: a config that changes every resource, and everything delivered.
		nackNext = false
		if s.cur != nil {
			b0, b1, b2 := byte(0x0f), byte(0xff), byte(0xff)
			config(fuzzConfig(b0, b1, b2, gen+17))
		}
		for n := 0; len(toServer)+len(toClient) > 0; n++ {
			if n > 1000 {
				t.Fatal("the stream does not settle")
			}
			if len(toClient) > 0 {
				toClientStep()
			} else {
				toServerStep()
			}
		}
		if s.cur == nil {
			return
		}
		for _, typ := range resource.Types {
			ct := xdsclient.Type(typ)
			if !c.Requested(ct) {
				continue
			}
			var want []xdsclient.Resource
			for _, r := range s.cur.Views[typ].All() {
				if typ.Wildcard() || slices.Contains(c.Names(ct), r.Name) {
					want = append(want, xdsclient.Resource{Name: r.Name, Hash: maphash.Bytes(fuzzSeed, r.Any.Value)})
				}
			}
			if got := c.Cache(ct); !slices.EqualFunc(got, want, func(a, b xdsclient.Resource) bool { return a.Name == b.Name && a.Hash == b.Hash }) {
				t.Fatalf("%s: the client holds %v, the server's view for its subscription is %v", typ, got, want)
			}
		}
		for _, n := range c.Warming() {
			_, ok := s.cur.Views[resource.Endpoint].Get(n)
			cl, _ := s.cur.Views[resource.Cluster].Get(n)
			for _, sn := range summarizeResponse(t, &discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{cl.Any}})[0].Secrets {
				_, found := s.cur.Views[resource.Secret].Get(sn)
				ok = ok && found
			}
			if ok {
				t.Fatalf("cluster %q still warming, and its endpoints and secrets exist", n)
			}
		}
	})
}
