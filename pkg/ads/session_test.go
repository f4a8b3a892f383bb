package ads

import (
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/resource"
)

// res builds a resource whose content is the string body.
func res(t testing.TB, typ resource.Type, name, body string) *resource.Resource {
	t.Helper()
	r, err := resource.New(typ, name, wrapperspb.String(body))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// proxy builds a config: clusters and listeners by name, endpoints and routes by name,
// each resource's content being "name=body".
func proxy(t testing.TB, content map[resource.Type]map[string]string) *resource.Proxy {
	t.Helper()
	p := &resource.Proxy{}
	for _, typ := range resource.Types {
		var rs []*resource.Resource
		for name, body := range content[typ] {
			rs = append(rs, res(t, typ, name, body))
		}
		p.Views[typ] = resource.View{resource.NewSet(rs...)}
	}
	return p
}

func baseContent() map[resource.Type]map[string]string {
	return map[resource.Type]map[string]string{
		resource.Cluster:     {"a": "1", "b": "1"},
		resource.Endpoint:    {"a": "1", "b": "1"},
		resource.Listener:    {"in": "1", "out": "1"},
		resource.ScopedRoute: {"app": "1", "app.ns": "1"},
		resource.Route:       {"inbound": "1", "outbound": "1"},
		resource.Secret:      {"trust-bundle": "1", "workload-cert": "1"},
	}
}

func req(typ resource.Type, version, nonce string, names ...string) *discoveryv3.DiscoveryRequest {
	return &discoveryv3.DiscoveryRequest{TypeUrl: typ.URL(), VersionInfo: version, ResponseNonce: nonce, ResourceNames: names}
}

func nack(typ resource.Type, version, nonce, msg string, names ...string) *discoveryv3.DiscoveryRequest {
	r := req(typ, version, nonce, names...)
	r.ErrorDetail = &status.Status{Code: 3, Message: msg}
	return r
}

func namesOf(r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for _, a := range r.GetResources() {
		var s wrapperspb.StringValue
		if err := proto.Unmarshal(a.Value, &s); err != nil {
			panic(err)
		}
		out = append(out, s.Value)
	}
	return out
}

func TestClassify(t *testing.T) {
	cases := []struct {
		name      string
		first     bool
		lastNonce string
		req       *discoveryv3.DiscoveryRequest
		want      Kind
	}{
		{"first request", true, "", req(resource.Cluster, "", ""), Initial},
		{"reconnect with an old version and an empty nonce", true, "", req(resource.Cluster, "v-old", ""), Initial},
		{"reconnect to a stream that already sent", false, "7", req(resource.Cluster, "v1", ""), Initial},
		{"ack of the latest response", false, "7", req(resource.Cluster, "v2", "7"), ACK},
		{"nack of the latest response", false, "7", nack(resource.Cluster, "v1", "7", "bad"), NACK},
		{"ack of an older response", false, "7", req(resource.Cluster, "v1", "5"), Stale},
		{"nack of an older response", false, "7", nack(resource.Cluster, "v1", "5", "bad"), Stale},
		// Nonces do not survive a reconnect: a first request is initial whatever it says.
		{"first request with a nonce from another stream", true, "", req(resource.Cluster, "v1", "3"), Initial},
		{"later request with a nonce never sent on this stream", false, "", req(resource.Cluster, "v1", "3"), Stale},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Classify(c.first, c.lastNonce, c.req); got != c.want {
				t.Fatalf("Classify = %v, want %v", got, c.want)
			}
		})
	}
}

// step is one event fed to a session and what must come out of it.
type step struct {
	req    *discoveryv3.DiscoveryRequest // a request, or
	config map[resource.Type]map[string]string
	// wantKind is checked for requests.
	wantKind Kind
	// want lists the responses, in order: type and the bodies of the resources.
	want []sent
}

type sent struct {
	typ    resource.Type
	bodies []string
}

func run(t *testing.T, s *session, steps []step) []*discoveryv3.DiscoveryResponse {
	t.Helper()
	var all []*discoveryv3.DiscoveryResponse
	for i, st := range steps {
		var got []*discoveryv3.DiscoveryResponse
		if st.req != nil {
			typ, _ := resource.TypeFromURL(st.req.TypeUrl)
			out, resps := s.onRequest(typ, st.req)
			if out.kind != st.wantKind {
				t.Fatalf("step %d: kind = %v, want %v", i, out.kind, st.wantKind)
			}
			got = resps
		} else {
			got = s.onConfig(proxy(t, st.config), time.Now())
		}
		if len(got) != len(st.want) {
			t.Fatalf("step %d: %d responses, want %d: %v", i, len(got), len(st.want), got)
		}
		for j, w := range st.want {
			if got[j].TypeUrl != w.typ.URL() {
				t.Fatalf("step %d response %d: type %s, want %s", i, j, got[j].TypeUrl, w.typ)
			}
			if b := namesOf(got[j]); !equalStrings(b, w.bodies) {
				t.Fatalf("step %d response %d (%s): resources %v, want %v", i, j, w.typ, b, w.bodies)
			}
			for _, a := range got[j].Resources {
				if a.TypeUrl != got[j].TypeUrl {
					t.Fatalf("step %d: Any type %s in a %s response", i, a.TypeUrl, got[j].TypeUrl)
				}
			}
		}
		all = append(all, got...)
	}
	return all
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func with(c map[resource.Type]map[string]string, typ resource.Type, name, body string) map[resource.Type]map[string]string {
	out := map[resource.Type]map[string]string{}
	for t, m := range c {
		out[t] = map[string]string{}
		for k, v := range m {
			out[t][k] = v
		}
	}
	if body == "" {
		delete(out[typ], name)
	} else {
		out[typ][name] = body
	}
	return out
}

// synced returns a session that has sent and had ACKed everything of baseContent, with
// EDS subscribed to a and b, SRDS by wildcard, RDS to inbound and outbound, and SDS to
// trust-bundle and workload-cert. Nonces 1..6 are used.
func synced(t *testing.T) *session {
	s := newSession(nil, nil)
	run(t, s, []step{
		{config: baseContent()},
		{req: req(resource.Cluster, "", ""), wantKind: Initial, want: []sent{{resource.Cluster, []string{"1", "1"}}}},
		{req: req(resource.Cluster, s0(s, resource.Cluster), "1"), wantKind: ACK},
		{req: req(resource.Endpoint, "", "", "a", "b"), wantKind: Initial, want: []sent{{resource.Endpoint, []string{"1", "1"}}}},
		{req: req(resource.Listener, "", ""), wantKind: Initial, want: []sent{{resource.Listener, []string{"1", "1"}}}},
		{req: req(resource.ScopedRoute, "", ""), wantKind: Initial, want: []sent{{resource.ScopedRoute, []string{"1", "1"}}}},
		{req: req(resource.Route, "", "", "inbound", "outbound"), wantKind: Initial, want: []sent{{resource.Route, []string{"1", "1"}}}},
		{req: req(resource.Secret, "", "", "workload-cert", "trust-bundle"), wantKind: Initial, want: []sent{{resource.Secret, []string{"1", "1"}}}},
	})
	for _, typ := range resource.Types[1:] {
		ts := s.types[typ]
		run(t, s, []step{{req: req(typ, ts.version, ts.nonce, ts.sub.names...), wantKind: ACK}})
	}
	for _, typ := range resource.Types {
		if s.types[typ].status != Synced {
			t.Fatalf("%s not synced: %s", typ, s.types[typ].status)
		}
	}
	return s
}

// s0 is the version the session last sent for typ.
func s0(s *session, typ resource.Type) string { return s.types[typ].version }

func TestSession(t *testing.T) {
	t.Run("requests wait for the first config, then get the full state", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{req: req(resource.Cluster, "", ""), wantKind: Initial},
			{config: baseContent(), want: []sent{{resource.Cluster, []string{"1", "1"}}}},
		})
	})

	t.Run("ack records the version and sends nothing", func(t *testing.T) {
		s := synced(t)
		ts := s.types[resource.Endpoint]
		if ts.ackedVersion != ts.version || ts.acks != 1 || ts.status != Synced {
			t.Fatalf("state after ack: %+v", ts)
		}
	})

	t.Run("nack is recorded and the same content is not resent", func(t *testing.T) {
		s := synced(t)
		base := baseContent()
		bad := with(base, resource.Cluster, "a", "bad")
		run(t, s, []step{
			{config: bad, want: []sent{{resource.Cluster, []string{"bad", "1"}}, {resource.Endpoint, []string{"1"}}}},
		})
		cds := s.types[resource.Cluster]
		acked := cds.ackedVersion
		run(t, s, []step{
			{req: nack(resource.Cluster, acked, cds.nonce, "cluster a: invalid"), wantKind: NACK},
			// The same content again (a new Config with equal resources): nothing is sent.
			{config: bad},
		})
		cds = s.types[resource.Cluster]
		if cds.status != Nacked || cds.nacks != 1 || cds.lastNack == nil || cds.lastNack.Message != "cluster a: invalid" {
			t.Fatalf("nack not recorded: %+v %+v", cds, cds.lastNack)
		}
		if cds.ackedVersion != acked {
			t.Fatalf("acked version moved on a NACK: %s -> %s", acked, cds.ackedVersion)
		}
		// Fixed content is sent.
		run(t, s, []step{{config: with(base, resource.Cluster, "a", "fixed"), want: []sent{{resource.Cluster, []string{"fixed", "1"}}, {resource.Endpoint, []string{"1"}}}}})
	})

	t.Run("stale nonce is ignored and counted", func(t *testing.T) {
		s := synced(t)
		base := baseContent()
		run(t, s, []step{
			{config: with(base, resource.Endpoint, "a", "2"), want: []sent{{resource.Endpoint, []string{"2"}}}},
			// A request acking the previous EDS response, and asking for fewer names:
			// stale, so the subscription is not touched.
			{req: req(resource.Endpoint, "old", "2", "a"), wantKind: Stale},
		})
		eds := s.types[resource.Endpoint]
		if eds.stale != 1 || len(eds.sub.names) != 2 || eds.status != StaleStatus {
			t.Fatalf("after stale request: %+v", eds)
		}
	})

	t.Run("names changed at the same version are answered", func(t *testing.T) {
		s := newSession(nil, nil)
		run(t, s, []step{
			{config: baseContent()},
			{req: req(resource.Endpoint, "", "", "a"), wantKind: Initial, want: []sent{{resource.Endpoint, []string{"1"}}}},
		})
		eds := s.types[resource.Endpoint]
		run(t, s, []step{
			{req: req(resource.Endpoint, eds.version, eds.nonce, "a", "b"), wantKind: ACK, want: []sent{{resource.Endpoint, []string{"1"}}}},
		})
		if got := s.types[resource.Endpoint].version; got != eds.version {
			t.Fatalf("version changed with the names only: %s -> %s", eds.version, got)
		}
	})

	t.Run("empty names unsubscribe from EDS and RDS", func(t *testing.T) {
		s := synced(t)
		eds := s.types[resource.Endpoint]
		run(t, s, []step{
			{req: req(resource.Endpoint, eds.version, eds.nonce), wantKind: ACK},
			{config: with(baseContent(), resource.Endpoint, "a", "2")},
		})
		if eds := s.types[resource.Endpoint]; !eds.sub.empty() || eds.sentView != nil {
			t.Fatalf("still subscribed, or still holding what was sent: %+v", eds)
		}
	})

	t.Run("reconnect with an old version and an empty nonce gets the full state", func(t *testing.T) {
		s := newSession(nil, nil) // a new stream
		run(t, s, []step{
			{config: with(baseContent(), resource.Endpoint, "a", "2")},
			{req: req(resource.Cluster, "old-cds", ""), wantKind: Initial, want: []sent{{resource.Cluster, []string{"1", "1"}}}},
			{req: req(resource.Endpoint, "old-eds", "", "a", "b"), wantKind: Initial, want: []sent{{resource.Endpoint, []string{"2", "1"}}}},
		})
	})

	t.Run("a name that does not exist yet is sent when it appears", func(t *testing.T) {
		s := synced(t)
		eds := s.types[resource.Endpoint]
		run(t, s, []step{
			{req: req(resource.Endpoint, eds.version, eds.nonce, "a", "b", "c"), wantKind: ACK},
			{config: with(baseContent(), resource.Endpoint, "c", "new"), want: []sent{{resource.Endpoint, []string{"new"}}}},
		})
	})

	t.Run("an endpoint change sends that endpoint only", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{{config: with(baseContent(), resource.Endpoint, "b", "2"), want: []sent{{resource.Endpoint, []string{"2"}}}}})
	})

	t.Run("unchanged content sends nothing", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{{config: baseContent()}})
	})

	t.Run("a push goes in CDS, EDS, LDS, RDS order and resends the changed cluster's CLA", func(t *testing.T) {
		s := synced(t)
		c := with(baseContent(), resource.Route, "outbound", "2")
		c = with(c, resource.Listener, "in", "2")
		c = with(c, resource.Cluster, "b", "2")
		run(t, s, []step{{config: c, want: []sent{
			{resource.Cluster, []string{"1", "2"}},
			{resource.Endpoint, []string{"1"}},
			{resource.Listener, []string{"2", "1"}},
			{resource.Route, []string{"2"}},
		}}})
	})

	t.Run("a removed cluster is sent as the full set without it", func(t *testing.T) {
		s := synced(t)
		run(t, s, []step{{config: with(baseContent(), resource.Cluster, "b", ""), want: []sent{
			{resource.Cluster, []string{"1"}},
		}}})
	})
}

// A config with no view for a type (a Proxy built without it) has no resources of that
// type. Its wildcard subscription is answered once, empty, and then left alone: it was
// answered again, with a new nonce, on every request of any type, so every ACK drew
// another response (make bench/go's fan-out benchmarks, whose world has no scopes,
// failed on it).
func TestMissingViewIsEmpty(t *testing.T) {
	for _, typ := range []resource.Type{resource.Cluster, resource.Listener, resource.ScopedRoute, resource.Secret} {
		t.Run(typ.String(), func(t *testing.T) {
			p := proxy(t, baseContent())
			p.Views[typ] = nil
			s := newSession(nil, nil)
			s.onConfig(p, time.Time{})
			var names []string
			if !typ.Wildcard() {
				names = []string{"workload-cert"}
			}
			_, resps := s.onRequest(typ, req(typ, "", "", names...))
			if typ.Wildcard() && (len(resps) != 1 || len(resps[0].Resources) != 0) {
				t.Fatalf("%d responses to the first request, want one, empty", len(resps))
			}
			if !typ.Wildcard() && len(resps) != 0 {
				t.Fatalf("%d responses to a subscription to nothing that exists", len(resps))
			}
			if len(resps) == 1 {
				if out, again := s.onRequest(typ, req(typ, resps[0].VersionInfo, resps[0].Nonce, names...)); out.kind != ACK || len(again) != 0 {
					t.Fatalf("the ACK is a %v and drew %d responses", out.kind, len(again))
				}
			}
			other := resource.Endpoint
			if _, more := s.onRequest(other, req(other, "", "", "a", "b")); len(more) != 1 || more[0].TypeUrl != other.URL() {
				t.Fatalf("a request for %s drew %d responses", other, len(more))
			}
			if more := s.onConfig(p, time.Time{}); len(more) != 0 {
				t.Fatalf("the same config again drew %d responses", len(more))
			}
		})
	}
}
