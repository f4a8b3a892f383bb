package ads_test

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// gauges reads the values of a gauge family by its labels, joined "type/status" (or
// "type" alone).
func gauges(t *testing.T, e *env, name string) map[string]float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var typ, status string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "type":
					typ = l.GetValue()
				case "status":
					status = l.GetValue()
				}
			}
			key := typ
			if status != "" {
				key += "/" + status
			}
			out[key] = m.GetGauge().GetValue()
		}
	}
	return out
}

// TestStatusCollector checks the per-type, per-status stream counts and the age of the
// oldest unacknowledged response: a SYNCED proxy, one that NACKs every listener update,
// and one that never answers.
func TestStatusCollector(t *testing.T) {
	e := start(t)
	e.reg.MustRegister(ads.NewStatusCollector(e.srv))
	w := world{endpoints: map[string]int{"app-1": 1}, routeTag: map[string]string{}}
	e.set(t, w)

	// Before any stream: every series is there, at 0.
	got := gauges(t, e, "bearkong_xds_proxies")
	if want := int(resource.NumTypes) * 4; len(got) != want {
		t.Fatalf("bearkong_xds_proxies has %d series, want %d (%d types x 4 statuses): %v", len(got), want, resource.NumTypes, got)
	}
	for k, v := range got {
		if v != 0 {
			t.Errorf("%s = %v with no stream", k, v)
		}
	}

	synced := e.connect(t, "synced", nil)
	e.waitSynced(t, synced)
	nacking := e.connect(t, "nacking", func(typeURL string, _ []string) string {
		if typeURL == xdstest.ListenerType {
			return "listener inbound: rejected"
		}
		return ""
	})
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	silent, err := xdstest.Dial(ctx, e.addr, &corev3.Node{Id: "silent"})
	if err != nil {
		t.Fatal(err)
	}
	silent.NoAck = true
	t.Cleanup(silent.Close)
	if err := silent.Start(); err != nil {
		t.Fatal(err)
	}
	_ = nacking

	want := map[string]float64{
		"cds/SYNCED": 2, "cds/STALE": 1, "lds/NACKED": 1, "lds/SYNCED": 1, "lds/NOT_SENT": 1,
	}
	var last map[string]float64
	waitUntil(t, 5*time.Second, func() bool {
		last = gauges(t, e, "bearkong_xds_proxies")
		for k, v := range want {
			if last[k] != v {
				return false
			}
		}
		return true
	})
	time.Sleep(200 * time.Millisecond)
	age := gauges(t, e, "bearkong_xds_stale_seconds")
	if age["cds"] < 0.2 || age["cds"] > 60 {
		t.Errorf("bearkong_xds_stale_seconds{type=cds} = %v, want the silent proxy's wait (over 0.2s)", age["cds"])
	}
	if age["lds"] != 0 {
		t.Errorf("bearkong_xds_stale_seconds{type=lds} = %v, want 0: nothing waits", age["lds"])
	}
}
