package xdsclient

import (
	"slices"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

func eds(name string, hash uint64) Resource { return Resource{Name: name, Hash: hash, EDS: name} }

// summary is a request as the tests compare it.
type summary struct {
	typ   Type
	names []string
	nack  bool
	ack   bool // carries a nonce
}

func summarize(rs []*discoveryv3.DiscoveryRequest) []summary {
	var out []summary
	for _, r := range rs {
		t, _ := TypeOf(r.TypeUrl)
		out = append(out, summary{typ: t, names: r.ResourceNames, nack: r.ErrorDetail != nil, ack: r.ResponseNonce != ""})
	}
	return out
}

func mustRespond(t *testing.T, c *Client, typ Type, version string, rs []Resource, nack string) []summary {
	t.Helper()
	reqs, err := c.Response(typ, version, "n-"+version, rs, nack)
	if err != nil {
		t.Fatal(err)
	}
	return summarize(reqs)
}

func TestClient(t *testing.T) {
	t.Run("EDS names in watch order, newest first; LDS once the clusters are warm", func(t *testing.T) {
		c := New()
		c.Start()
		got := mustRespond(t, c, CDS, "c1", []Resource{eds("a", 1), eds("b", 1), {Name: "static", Hash: 1}}, "")
		// The EDS request the clusters call for, then the CDS ACK.
		if len(got) != 2 || !slices.Equal(got[0].names, []string{"b", "a"}) || got[0].ack || got[1].typ != CDS || !got[1].ack {
			t.Fatalf("after CDS: %+v", got)
		}
		if w := c.Warming(); !slices.Equal(w, []string{"a", "b"}) {
			t.Fatalf("warming %v", w)
		}
		got = mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1), eds("b", 1)}, "")
		if len(got) != 2 || got[0].typ != LDS || got[1].typ != EDS {
			t.Fatalf("after EDS: %+v", got)
		}
		// After initialization, the CDS ACK waits until the new cluster is warm.
		got = mustRespond(t, c, CDS, "c2", []Resource{eds("a", 1), eds("b", 1), eds("c", 1)}, "")
		if len(got) != 1 || got[0].typ != EDS || !slices.Equal(got[0].names, []string{"c", "b", "a"}) {
			t.Fatalf("a new cluster's name is not first, or CDS ACKed while it warms: %+v", got)
		}
		got = mustRespond(t, c, EDS, "e2", []Resource{eds("c", 1)}, "")
		if len(got) != 2 || got[0].typ != CDS || !got[0].ack || got[1].typ != EDS {
			t.Fatalf("the CDS ACK does not go just before the EDS ACK that warmed c: %+v", got)
		}
	})

	t.Run("a modified cluster warms until a fresh CLA, on its previous version", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{eds("a", 1), eds("b", 1)}, "")
		mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1), eds("b", 1)}, "")
		got := mustRespond(t, c, CDS, "c2", []Resource{eds("a", 2), eds("b", 1)}, "")
		// a's new watch puts its name first.
		if len(got) != 1 || !slices.Equal(got[0].names, []string{"a", "b"}) {
			t.Fatalf("after modifying a: %+v", got)
		}
		if st, _ := c.Cluster("a"); !st.Warming || !st.Active {
			t.Fatalf("a: %+v", st)
		}
		mustRespond(t, c, EDS, "e2", []Resource{eds("a", 1)}, "")
		if st, _ := c.Cluster("a"); st.Warming {
			t.Fatalf("a still warming after its CLA: %+v", st)
		}
	})

	t.Run("unsubscribed CLAs are dropped and must come again", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{eds("a", 1)}, "")
		mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1)}, "")
		got := mustRespond(t, c, CDS, "c2", nil, "")
		if len(got) != 2 || got[0].typ != EDS || len(got[0].names) != 0 || got[0].names == nil {
			t.Fatalf("the last cluster gone: %+v", got)
		}
		if _, ok := c.Has(EDS, "a"); ok {
			t.Fatal("a's CLA kept after unsubscribe")
		}
		mustRespond(t, c, CDS, "c3", []Resource{eds("a", 1)}, "")
		if st, _ := c.Cluster("a"); !st.Warming || st.Active {
			t.Fatalf("a back: %+v", st)
		}
	})

	t.Run("a NACK keeps the last accepted version and state", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{{Name: "a", Hash: 1}}, "")
		reqs, _ := c.Response(CDS, "c2", "n2", []Resource{{Name: "a", Hash: 2}}, "bad")
		if len(reqs) != 1 || reqs[0].VersionInfo != "c1" || reqs[0].ErrorDetail == nil || reqs[0].ResponseNonce != "n2" {
			t.Fatalf("nack: %v", reqs)
		}
		if h, _ := c.Has(CDS, "a"); h != 1 {
			t.Fatalf("state moved on a NACK: %d", h)
		}
	})

	t.Run("RDS names from listeners, newest first, dropped with the last listener", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", nil, "")
		got := mustRespond(t, c, LDS, "l1", []Resource{{Name: "in", Routes: []string{"inbound"}}, {Name: "out", Routes: []string{"outbound"}}}, "")
		if !slices.Equal(got[0].names, []string{"outbound", "inbound"}) {
			t.Fatalf("%+v", got)
		}
		mustRespond(t, c, RDS, "r1", []Resource{{Name: "inbound", Hash: 1}, {Name: "outbound", Hash: 1}}, "")
		got = mustRespond(t, c, LDS, "l2", []Resource{{Name: "in", Routes: []string{"inbound"}}}, "")
		if !slices.Equal(got[0].names, []string{"inbound"}) {
			t.Fatalf("%+v", got)
		}
		if _, ok := c.Has(RDS, "outbound"); ok {
			t.Fatal("outbound kept")
		}
	})

	t.Run("a duplicate name is a protocol error", func(t *testing.T) {
		c := New()
		c.Start()
		if _, err := c.Response(CDS, "v", "n", []Resource{{Name: "a"}, {Name: "a"}}, ""); err == nil {
			t.Fatal("accepted")
		}
	})
}

// tls is an EDS cluster whose TLS transport socket takes the named secrets from SDS.
func tls(name string, hash uint64, secrets ...string) Resource {
	return Resource{Name: name, Hash: hash, EDS: name, Secrets: secrets}
}

func TestClientSecrets(t *testing.T) {
	t.Run("a TLS cluster asks for its secrets once its CLA came, and warms until they come", func(t *testing.T) {
		c := New()
		c.Start()
		got := mustRespond(t, c, CDS, "c1", []Resource{tls("a", 1, "cert", "roots"), eds("plain", 1)}, "")
		if len(got) != 2 || got[0].typ != EDS || c.Requested(SDS) {
			t.Fatalf("after CDS: %+v (SDS requested: %v)", got, c.Requested(SDS))
		}
		got = mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1), eds("plain", 1)}, "")
		// The SDS request, newest watch first, then the EDS ACK; no LDS while a warms.
		if len(got) != 2 || got[0].typ != SDS || got[0].ack || !slices.Equal(got[0].names, []string{"roots", "cert"}) || got[1].typ != EDS {
			t.Fatalf("after EDS: %+v", got)
		}
		if w := c.Warming(); !slices.Equal(w, []string{"a"}) {
			t.Fatalf("warming %v", w)
		}
		got = mustRespond(t, c, SDS, "s1", []Resource{{Name: "cert", Hash: 1}}, "")
		if len(got) != 1 || got[0].typ != SDS || !got[0].ack {
			t.Fatalf("after half the secrets: %+v", got)
		}
		if w := c.Warming(); !slices.Equal(w, []string{"a"}) {
			t.Fatalf("a warm with one secret of two: %v", w)
		}
		got = mustRespond(t, c, SDS, "s2", []Resource{{Name: "roots", Hash: 1}}, "")
		if len(got) != 2 || got[0].typ != LDS || got[1].typ != SDS || len(c.Warming()) != 0 {
			t.Fatalf("after the last secret: %+v, warming %v", got, c.Warming())
		}
	})

	t.Run("secrets are shared by name: a second cluster asks for nothing new", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{tls("a", 1, "cert", "roots")}, "")
		mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1)}, "")
		mustRespond(t, c, SDS, "s1", []Resource{{Name: "cert", Hash: 1}, {Name: "roots", Hash: 1}}, "")
		got := mustRespond(t, c, CDS, "c2", []Resource{tls("a", 1, "cert", "roots"), tls("b", 1, "cert", "roots")}, "")
		if len(got) != 1 || got[0].typ != EDS {
			t.Fatalf("after adding b: %+v", got)
		}
		// b's CLA warms it at once: its secrets are here; the held CDS ACK goes first.
		got = mustRespond(t, c, EDS, "e2", []Resource{eds("b", 1)}, "")
		if len(got) != 2 || got[0].typ != CDS || got[1].typ != EDS || len(c.Warming()) != 0 {
			t.Fatalf("after b's CLA: %+v, warming %v", got, c.Warming())
		}
	})

	t.Run("a rotation is an ACK and nothing else", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{tls("a", 1, "cert")}, "")
		mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1)}, "")
		mustRespond(t, c, SDS, "s1", []Resource{{Name: "cert", Hash: 1}}, "")
		got := mustRespond(t, c, SDS, "s2", []Resource{{Name: "cert", Hash: 2}}, "")
		if len(got) != 1 || got[0].typ != SDS || !got[0].ack || !slices.Equal(got[0].names, []string{"cert"}) {
			t.Fatalf("after a rotation: %+v", got)
		}
		if h, _ := c.Has(SDS, "cert"); h != 2 || c.Acked(SDS) != "s2" {
			t.Fatalf("cert %d, acked %s", h, c.Acked(SDS))
		}
	})

	t.Run("a secret nothing names any more stays subscribed and held, as Envoy keeps it", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{tls("a", 1, "cert", "roots"), tls("b", 1, "roots")}, "")
		mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1), eds("b", 1)}, "")
		mustRespond(t, c, SDS, "s1", []Resource{{Name: "cert", Hash: 1}, {Name: "roots", Hash: 1}}, "")
		got := mustRespond(t, c, CDS, "c2", nil, "")
		if len(got) != 2 || got[0].typ != EDS || got[1].typ != CDS {
			t.Fatalf("every cluster gone: %+v", got)
		}
		if _, ok := c.Has(SDS, "cert"); !ok || !slices.Equal(c.Names(SDS), []string{"roots", "cert"}) {
			t.Fatalf("secrets dropped: %v", c.Names(SDS))
		}
		// a comes back: it warms on its CLA alone, asking for no secret; the held CDS
		// ACK goes with it.
		mustRespond(t, c, CDS, "c3", []Resource{tls("a", 1, "cert")}, "")
		got = mustRespond(t, c, EDS, "e2", []Resource{eds("a", 1)}, "")
		if len(got) != 2 || got[0].typ != CDS || got[1].typ != EDS || len(c.Warming()) != 0 {
			t.Fatalf("a back: %+v, warming %v", got, c.Warming())
		}
	})

	t.Run("a modified cluster with a new secret asks for it once its CLA came", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{tls("a", 1, "old")}, "")
		mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1)}, "")
		mustRespond(t, c, SDS, "s1", []Resource{{Name: "old", Hash: 1}}, "")
		mustRespond(t, c, CDS, "c2", []Resource{tls("a", 2, "new")}, "")
		got := mustRespond(t, c, EDS, "e2", []Resource{eds("a", 1)}, "")
		if len(got) != 2 || got[0].typ != SDS || !slices.Equal(got[0].names, []string{"new", "old"}) {
			t.Fatalf("after a's CLA: %+v", got)
		}
		if st, _ := c.Cluster("a"); !st.Warming || !st.Active {
			t.Fatalf("a while its new secret is missing: %+v", st)
		}
		got = mustRespond(t, c, SDS, "s2", []Resource{{Name: "new", Hash: 1}}, "")
		if st, _ := c.Cluster("a"); st.Warming {
			t.Fatalf("a still warming: %+v", st)
		}
		// The CDS ACK held while a warmed goes just before the SDS ACK.
		if len(got) != 2 || got[0].typ != CDS || got[1].typ != SDS {
			t.Fatalf("after the new secret: %+v", got)
		}
	})

	t.Run("a non-EDS cluster asks for its secrets at once", func(t *testing.T) {
		c := New()
		c.Start()
		got := mustRespond(t, c, CDS, "c1", []Resource{{Name: "static", Hash: 1, Secrets: []string{"cert"}}}, "")
		if len(got) != 2 || got[0].typ != SDS || got[1].typ != CDS || !slices.Equal(got[0].names, []string{"cert"}) {
			t.Fatalf("after CDS: %+v", got)
		}
		got = mustRespond(t, c, SDS, "s1", []Resource{{Name: "cert", Hash: 1}}, "")
		if len(got) != 2 || got[0].typ != LDS || got[1].typ != SDS {
			t.Fatalf("after the secret: %+v", got)
		}
	})

	t.Run("listeners ask for their secrets after RDS, and drop the ones only they named", func(t *testing.T) {
		c := New()
		c.Start()
		mustRespond(t, c, CDS, "c1", []Resource{{Name: "static", Hash: 1, Secrets: []string{"roots"}}}, "")
		mustRespond(t, c, SDS, "s1", []Resource{{Name: "roots", Hash: 1}}, "")
		got := mustRespond(t, c, LDS, "l1", []Resource{{Name: "in", Routes: []string{"inbound"}, Secrets: []string{"cert", "roots"}}}, "")
		if len(got) != 3 || got[0].typ != RDS || got[1].typ != SDS || got[2].typ != LDS || !slices.Equal(got[1].names, []string{"cert", "roots"}) {
			t.Fatalf("after LDS: %+v", got)
		}
		got = mustRespond(t, c, LDS, "l2", []Resource{{Name: "in", Routes: []string{"inbound"}, Secrets: []string{"roots"}}}, "")
		// cert goes with the last listener that named it; roots stays, as a cluster
		// named it.
		if len(got) != 2 || got[0].typ != SDS || !slices.Equal(got[0].names, []string{"roots"}) || got[1].typ != LDS {
			t.Fatalf("after the listener dropped cert: %+v", got)
		}
		got = mustRespond(t, c, LDS, "l3", nil, "")
		if len(got) != 2 || got[0].typ != RDS || got[1].typ != LDS || !slices.Equal(c.Names(SDS), []string{"roots"}) {
			t.Fatalf("after the last listener went: %+v, SDS %v", got, c.Names(SDS))
		}
	})
}

// TestClientScopes: a listener that takes scopes from SRDS makes the client subscribe to
// them by wildcard, and each scope's route configuration joins the RDS subscription,
// as TestClientMatchesEnvoy (test/e2e) holds against Envoy.
func TestClientScopes(t *testing.T) {
	c := New()
	c.Start()
	mustRespond(t, c, CDS, "c1", nil, "")
	got := mustRespond(t, c, LDS, "l1", []Resource{{Name: "in", Hash: 1, Routes: []string{"inbound"}}, {Name: "out", Hash: 1, Scoped: true}}, "")
	if len(got) != 3 || got[0].typ != RDS || !slices.Equal(got[0].names, []string{"inbound"}) || got[1].typ != SRDS || got[1].names != nil || got[1].ack || got[2].typ != LDS {
		t.Fatalf("after LDS: %+v", got)
	}
	scope := func(name, routes string) Resource { return Resource{Name: name, Hash: 1, Routes: []string{routes}} }
	got = mustRespond(t, c, SRDS, "s1", []Resource{scope("a", "a.ns"), scope("a.ns", "a.ns")}, "")
	if len(got) != 2 || got[0].typ != RDS || !slices.Equal(got[0].names, []string{"a.ns", "inbound"}) || got[1].typ != SRDS || !got[1].ack {
		t.Fatalf("after SRDS: %+v", got)
	}
	got = mustRespond(t, c, SRDS, "s2", []Resource{scope("b.ns", "b.ns")}, "")
	if len(got) != 2 || got[0].typ != RDS || !slices.Equal(got[0].names, []string{"b.ns", "inbound"}) {
		t.Fatalf("a scope replaced: %+v", got)
	}
	// The scoped listener gone: Envoy keeps the scopes, and their route configurations
	// stay subscribed.
	got = mustRespond(t, c, LDS, "l2", []Resource{{Name: "in", Hash: 1, Routes: []string{"inbound"}}}, "")
	if len(got) != 1 || got[0].typ != LDS || !slices.Equal(c.Names(RDS), []string{"b.ns", "inbound"}) {
		t.Fatalf("the scoped listener gone: %+v, RDS %v", got, c.Names(RDS))
	}

	// A scoped listener that comes after the first LDS response starts no SRDS
	// subscription in Envoy 1.36 (see applyListeners).
	c = New()
	c.Start()
	mustRespond(t, c, CDS, "c1", nil, "")
	mustRespond(t, c, LDS, "l1", []Resource{{Name: "in", Hash: 1, Routes: []string{"inbound"}}}, "")
	got = mustRespond(t, c, LDS, "l2", []Resource{{Name: "in", Hash: 1, Routes: []string{"inbound"}}, {Name: "out", Hash: 1, Scoped: true}}, "")
	if len(got) != 1 || got[0].typ != LDS || c.Requested(SRDS) {
		t.Fatalf("a late scoped listener: %+v", got)
	}
}
