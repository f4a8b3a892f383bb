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
		if len(got) != 2 || !slices.Equal(got[1].names, []string{"b", "a"}) || got[1].ack {
			t.Fatalf("after CDS: %+v", got)
		}
		if w := c.Warming(); !slices.Equal(w, []string{"a", "b"}) {
			t.Fatalf("warming %v", w)
		}
		got = mustRespond(t, c, EDS, "e1", []Resource{eds("a", 1), eds("b", 1)}, "")
		if len(got) != 2 || got[1].typ != LDS {
			t.Fatalf("after EDS: %+v", got)
		}
		// After initialization, the CDS ACK waits until the new cluster is warm.
		got = mustRespond(t, c, CDS, "c2", []Resource{eds("a", 1), eds("b", 1), eds("c", 1)}, "")
		if len(got) != 1 || got[0].typ != EDS || !slices.Equal(got[0].names, []string{"c", "b", "a"}) {
			t.Fatalf("a new cluster's name is not first, or CDS ACKed while it warms: %+v", got)
		}
		got = mustRespond(t, c, EDS, "e2", []Resource{eds("c", 1)}, "")
		if len(got) != 2 || got[0].typ != EDS || got[1].typ != CDS || !got[1].ack {
			t.Fatalf("the CDS ACK does not follow the EDS ACK that warmed c: %+v", got)
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
		if len(got) != 2 || got[1].typ != EDS || len(got[1].names) != 0 || got[1].names == nil {
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
		if !slices.Equal(got[1].names, []string{"outbound", "inbound"}) {
			t.Fatalf("%+v", got)
		}
		mustRespond(t, c, RDS, "r1", []Resource{{Name: "inbound", Hash: 1}, {Name: "outbound", Hash: 1}}, "")
		got = mustRespond(t, c, LDS, "l2", []Resource{{Name: "in", Routes: []string{"inbound"}}}, "")
		if !slices.Equal(got[1].names, []string{"inbound"}) {
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
