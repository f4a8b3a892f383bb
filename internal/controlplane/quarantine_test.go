package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// rejectMaxConnections7 plays an Envoy that refuses any cluster whose circuit breaker
// allows exactly 7 connections: a stand-in for a value Envoy rejects and bearkong's own
// validation lets through.
func rejectMaxConnections7(typeURL string, resources map[string]proto.Message) string {
	if typeURL != xdstest.ClusterType {
		return ""
	}
	for name, m := range resources {
		for _, th := range m.(*clusterv3.Cluster).GetCircuitBreakers().GetThresholds() {
			if th.GetMaxConnections().GetValue() == 7 {
				return fmt.Sprintf("cluster %s: max_connections 7 is refused by this proxy", name)
			}
		}
	}
	return ""
}

func maxConnections(c *xdstest.Client, cluster string) uint32 {
	m := c.Resource(xdstest.ClusterType, cluster)
	if m == nil {
		return 0
	}
	for _, th := range m.(*clusterv3.Cluster).GetCircuitBreakers().GetThresholds() {
		return th.GetMaxConnections().GetValue()
	}
	return 0
}

// TestQuarantineInProcess drives the NACK path through real discovery, translate and the
// ADS server: two proxies reject a cluster built from one Service's annotation, changed
// together with an innocent one. bearkong finds the culprit, keeps its last good policy,
// reports it, admits the innocent change, and later changes keep converging.
func TestQuarantineInProcess(t *testing.T) {
	h := start(t)
	var clients []*xdstest.Client
	for i, name := range []string{"app-1-0", "app-2-0"} {
		c := h.connect(t, name, fmt.Sprintf("10.0.0.%d", i+1))
		c.Reject = rejectMaxConnections7
		clients = append(clients, c)
	}
	for _, c := range clients {
		h.waitSynced(t, c.Node.Id)
	}
	annotate := func(name string, ann map[string]string, rv string) {
		t.Helper()
		svc := service(name)
		svc.Annotations, svc.ResourceVersion = ann, rv
		if _, err := h.client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// waitFor polls cond on every client, bounded.
	waitFor := func(what string, cond func(c *xdstest.Client) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			ok := true
			for _, c := range clients {
				ok = ok && cond(c)
			}
			if ok {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("never: %s (streams %+v)", what, h.streams(t, ""))
	}

	// One change, two suspects: app-3's annotation is fine, app-2's is refused.
	annotate("app-3", map[string]string{"mesh-max-connections": "8"}, "2")
	annotate("app-2", map[string]string{"mesh-max-connections": "7"}, "2")

	waitFor("app-3's new limit in force, app-2's refused one not", func(c *xdstest.Client) bool {
		return maxConnections(c, "app-3.default") == 8 && maxConnections(c, "app-2.default") == 0
	})
	for _, c := range clients {
		h.waitSynced(t, c.Node.Id)
	}
	if got := h.metric(t, "bearkong_quarantined_objects"); got != 1 {
		t.Errorf("bearkong_quarantined_objects = %v, want 1", got)
	}
	if got := h.metric(t, `bearkong_quarantines_total{kind="Service"}`); got != 1 {
		t.Errorf(`bearkong_quarantines_total{kind="Service"} = %v, want 1`, got)
	}
	if got := h.metric(t, `bearkong_xds_nack_total{type="cds"}`); got < 1 {
		t.Errorf("no CDS NACK counted: %v", got)
	}

	// Reported: a diagnostic and a Warning Event on app-2, naming Envoy's message.
	resp, err := http.Get(h.http + "/debug/diagnostics?name=app-2")
	if err != nil {
		t.Fatal(err)
	}
	var diags struct {
		Diagnostics []mesh.Diagnostic `json:"diagnostics"`
	}
	err = json.NewDecoder(resp.Body).Decode(&diags)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(diags.Diagnostics, func(d mesh.Diagnostic) bool {
		return d.Reason == mesh.ReasonRejectedByEnvoy && strings.Contains(d.Message, "max_connections 7 is refused")
	}) {
		t.Fatalf("/debug/diagnostics?name=app-2: %+v", diags.Diagnostics)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := h.client.EventsV1().Events("default").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(evs.Items, func(e eventsv1.Event) bool {
			return e.Regarding.Name == "app-2" && e.Reason == mesh.ReasonRejectedByEnvoy && e.Type == "Warning"
		}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no RejectedByEnvoy Event on app-2: %+v", evs.Items)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Later changes keep converging: a new Service reaches every proxy.
	if _, err := h.client.CoreV1().Services("default").Create(context.Background(), service("app-4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor("the new Service's cluster", func(c *xdstest.Client) bool { return c.Resource(xdstest.ClusterType, "app-4.default") != nil })
	for _, c := range clients {
		h.waitSynced(t, c.Node.Id)
	}

	// Changing the annotation lifts the quarantine.
	annotate("app-2", map[string]string{"mesh-max-connections": "9"}, "3")
	waitFor("app-2's new limit", func(c *xdstest.Client) bool { return maxConnections(c, "app-2.default") == 9 })
	for _, c := range clients {
		info := h.waitSynced(t, c.Node.Id)
		if info.Types.CDS.Status != ads.Synced {
			t.Fatalf("%s CDS %s", c.Node.Id, info.Types.CDS.Status)
		}
	}
	if got := h.metric(t, "bearkong_quarantined_objects"); got != 0 {
		t.Errorf("bearkong_quarantined_objects = %v after the fix, want 0", got)
	}
}
