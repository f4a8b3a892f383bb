package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// What each xDS protocol must show a real Envoy, run on the protocol of the shared mesh
// (BEARKONG_E2E_XDS_PROTOCOL): a deleted Service's cluster leaves Envoy (under delta only
// removed_resources can take it out), a NACK is shown in /debug/streams, and a restarted
// control plane sends nothing new (TestControlPlaneRestart, with checkRestartSentNothingNew).

// xdsProtocolEnv chooses the xDS protocol of the shared mesh's sidecars.
const xdsProtocolEnv = "BEARKONG_E2E_XDS_PROTOCOL"

// e2eXDSProtocol reads BEARKONG_E2E_XDS_PROTOCOL: a protocol `bearkong bootstrap
// --xds-protocol` accepts; "" or "default", translate.DefaultXDSProtocol; "other", the
// protocol that is not the default, so that `make test`'s second pass follows the default
// wherever it moves.
func e2eXDSProtocol(v string) (string, error) {
	switch v {
	case "", "default":
		return translate.DefaultXDSProtocol, nil
	case "other":
		for _, p := range translate.XDSProtocols {
			if p != translate.DefaultXDSProtocol {
				return p, nil
			}
		}
	}
	if slices.Contains(translate.XDSProtocols, v) {
		return v, nil
	}
	return "", fmt.Errorf("%s=%q: want one of %s, default or other", xdsProtocolEnv, v, strings.Join(translate.XDSProtocols, ", "))
}

func TestE2EXDSProtocolFromEnv(t *testing.T) {
	other := map[string]string{translate.XDSProtocolSotW: translate.XDSProtocolDelta, translate.XDSProtocolDelta: translate.XDSProtocolSotW}[translate.DefaultXDSProtocol]
	for _, tc := range []struct{ env, want, wantErr string }{
		{"", translate.DefaultXDSProtocol, ""},
		{"default", translate.DefaultXDSProtocol, ""},
		{"other", other, ""},
		{"sotw", "sotw", ""},
		{"delta", "delta", ""},
		{"grpc", "", `BEARKONG_E2E_XDS_PROTOCOL="grpc": want one of sotw, delta, default or other`},
	} {
		t.Run(tc.env, func(t *testing.T) {
			got, err := e2eXDSProtocol(tc.env)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// streamOf returns the whole /debug/streams entry of one pod's stream (?node=).
func streamOf(ctx context.Context, m *localmesh.Mesh, pod string) (ads.StreamInfo, error) {
	p, ok := m.Pod(pod)
	if !ok {
		return ads.StreamInfo{}, fmt.Errorf("no pod %s", pod)
	}
	b, err := m.ControlPlaneGet(ctx, "/debug/streams?node="+url.QueryEscape(nodeID(p)))
	if err != nil {
		return ads.StreamInfo{}, err
	}
	var body struct {
		Streams []ads.StreamInfo `json:"streams"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return ads.StreamInfo{}, fmt.Errorf("decode /debug/streams: %w", err)
	}
	if len(body.Streams) != 1 {
		return ads.StreamInfo{}, fmt.Errorf("%d streams for %s, want 1", len(body.Streams), nodeID(p))
	}
	return body.Streams[0], nil
}

// dumpedClusterNames returns the names of Envoy's dynamic clusters, active and warming.
func dumpedClusterNames(dump []byte) ([]string, error) {
	sec, err := dumpSection(dump, "ClustersConfigDump")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, key := range []string{"dynamic_active_clusters", "dynamic_warming_clusters"} {
		for _, c := range objs(sec[key]) {
			if n, ok := obj(c, "cluster")["name"].(string); ok {
				names = append(names, n)
			}
		}
	}
	return names, nil
}

// TestDeletedServiceLeavesEnvoy creates a Service, sees its cluster in a caller's Envoy,
// deletes it and waits until the cluster is gone from that Envoy's /config_dump, and its
// assignment from the caller's EDS subscription. Under state of the world the cluster
// leaves because the next CDS set lacks it; under delta only because the response names
// it in removed_resources: a server that forgot to would leave it there for good.
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds
func TestDeletedServiceLeavesEnvoy(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	const svc = "leaver"
	callers := []string{"app-1-0", "app-3-1"}
	withService(t, m, svc, nil, map[string]string{})
	cluster := svc + "." + m.Namespace()
	before := map[string]uint64{}
	for _, from := range callers {
		eventually(t, 20*time.Second, func(ctx context.Context) error {
			if err := m.WaitReachable(ctx, 10*time.Second, from, svc); err != nil {
				return err
			}
			dump, err := m.EnvoyConfigDump(ctx, from)
			if err != nil {
				return err
			}
			_, err = dumpedCluster(dump, cluster)
			return err
		})
		st, err := m.EnvoyStats(ctxT(t, 10*time.Second), from)
		if err != nil {
			t.Fatal(err)
		}
		before[from] = st["cluster_manager.cluster_removed"]
	}

	if err := m.DeleteService(ctxT(t, 10*time.Second), svc); err != nil {
		t.Fatal(err)
	}
	for _, from := range callers {
		eventually(t, 20*time.Second, func(ctx context.Context) error {
			// Each attempt has its own time, so that the last one, cut by the
			// deadline, does not hide what the one before it found.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			dump, err := m.EnvoyConfigDump(ctx, from)
			if err != nil {
				return err
			}
			names, err := dumpedClusterNames(dump)
			if err != nil {
				return err
			}
			if slices.Contains(names, cluster) {
				return fmt.Errorf("%s: cluster %s still in /config_dump", from, cluster)
			}
			if !slices.Contains(names, "app-3."+m.Namespace()) {
				return localmesh.Permanent(fmt.Errorf("%s: /config_dump lost the other clusters too: %q", from, names))
			}
			s, err := streamOf(ctx, m, from)
			if err != nil {
				return err
			}
			if slices.Contains(s.Types.EDS.Subscribed, cluster) {
				return fmt.Errorf("%s: still subscribed to the assignment of %s: %q", from, cluster, s.Types.EDS.Subscribed)
			}
			return nil
		})
		st, err := m.EnvoyStats(ctxT(t, 10*time.Second), from)
		if err != nil {
			t.Fatal(err)
		}
		if st["cluster_manager.cluster_removed"] <= before[from] {
			t.Errorf("%s: cluster_manager.cluster_removed %d -> %d: Envoy removed no cluster", from, before[from], st["cluster_manager.cluster_removed"])
		}
	}
	if err := waitGone(ctxT(t, 30*time.Second), m, svc, callers...); err != nil {
		t.Fatal(err)
	}
	t.Logf("on %s, %s left the /config_dump of %v", meshXDSProtocol, cluster, callers)
}

// TestNACKShownInDebugStreams makes every proxy reject a route (the same way as
// TestNACKedRouteIsQuarantined: an over-limit regex, with bearkong's own check skipped)
// and reads the NACK back from /debug/streams: on each proxy's stream, of the protocol
// the mesh runs, the type that was rejected counts one more NACK and keeps Envoy's
// message; then, with the route quarantined, every proxy is SYNCED again.
func TestNACKShownInDebugStreams(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	withService(t, m, "nacked", nil, map[string]string{})
	waitAllSynced(t, m)
	ctx := ctxT(t, 10*time.Second)
	before := map[string]ads.StreamInfo{}
	for _, p := range m.Pods() {
		s, err := streamOf(ctx, m, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		before[p.Name] = s
	}
	rejectedBefore := rejectedStats(t, m)
	created := time.Now()
	createRoute(t, regexRoute("nacked-bad", "nacked", map[string]string{discovery.SkipValidationAnnotation: "true"}))

	eventually(t, 30*time.Second, func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second) // see TestDeletedServiceLeavesEnvoy
		defer cancel()
		for _, p := range m.Pods() {
			s, err := streamOf(ctx, m, p.Name)
			if err != nil {
				return err
			}
			if s.ID != before[p.Name].ID {
				return localmesh.Permanent(fmt.Errorf("%s reconnected (stream %d, then %d)", p.Name, before[p.Name].ID, s.ID))
			}
			var nacked []string
			was := before[p.Name]
			for _, typ := range resource.Types {
				b, a := was.Types.Get(typ), s.Types.Get(typ)
				if a.Nacks == b.Nacks {
					continue
				}
				n := a.LastNack
				if n == nil || !strings.Contains(n.Message, "RE2 program size") || n.At.Before(created) || n.Nonce == "" {
					return fmt.Errorf("%s %s: %d NACKs, last %+v; want Envoy's RE2 message, after the route", p.Name, typ, a.Nacks, n)
				}
				nacked = append(nacked, typ.String())
			}
			if len(nacked) == 0 {
				return fmt.Errorf("%s: no NACK in /debug/streams yet", p.Name)
			}
		}
		return nil
	})
	t.Logf("every proxy's NACK on %s shown in /debug/streams %s after the route was created", meshXDSProtocol, time.Since(created).Round(time.Millisecond))
	// Quarantined, the route is out of the config and every proxy SYNCED again.
	waitAllSynced(t, m)
	expectRejected(rejectedBefore, rejectedStats(t, m))

	// Deleting the route lifts its quarantine: the mesh is left as it was.
	if err := gateway(t).GatewayV1().HTTPRoutes("default").Delete(ctxT(t, 10*time.Second), "nacked-bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		if q := cpMetrics(t, m)["bearkong_quarantined_objects"]; q != 0 {
			return fmt.Errorf("bearkong_quarantined_objects = %v after the route was deleted", q)
		}
		return nil
	})
}

// TestClusterPolicyChangeReachesEnvoy changes one Service's connection limit
// (mesh-max-connections), a change of its cluster alone, and reads the new limit back from
// every proxy's /config_dump. Under delta each proxy is sent that one cluster and no
// listener or route; under state of the world, the whole CDS set (logged, for comparison).
func TestClusterPolicyChangeReachesEnvoy(t *testing.T) {
	m := sharedMesh(t)
	const svc = "tuned"
	withService(t, m, svc, nil, map[string]string{})
	waitAllSynced(t, m)
	cluster := svc + "." + m.Namespace()
	sent := func(mt map[string]float64, typ resource.Type) float64 {
		return mt[`bearkong_xds_resources_sent_total{type="`+typ.String()+`"}`]
	}
	bytesSent := func(mt map[string]float64) float64 {
		n := 0.0
		for _, typ := range objectTypes {
			n += mt[`bearkong_xds_bytes_sent_total{type="`+typ.String()+`"}`]
		}
		return n
	}
	mt0 := cpMetrics(t, m)
	if err := m.SetServiceAnnotations(ctxT(t, 10*time.Second), svc, map[string]string{mesh.AnnotationMaxConnections: "7"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range m.Pods() {
		eventually(t, 20*time.Second, func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second) // see TestDeletedServiceLeavesEnvoy
			defer cancel()
			dump, err := m.EnvoyConfigDump(ctx, p.Name)
			if err != nil {
				return err
			}
			c, err := dumpedCluster(dump, cluster)
			if err != nil {
				return err
			}
			th := objs(obj(c, "circuit_breakers")["thresholds"])
			if len(th) == 0 || th[0]["max_connections"] != 7.0 {
				return fmt.Errorf("%s: %s's circuit breakers %v, want max_connections 7", p.Name, cluster, th)
			}
			return nil
		})
	}
	waitAllSynced(t, m)
	mt1 := cpMetrics(t, m)
	proxies := float64(len(m.Pods()))
	t.Logf("on %s: per proxy, %.1f clusters, %.1f assignments, %.1f listeners and %.1f routes sent; %.0f bytes",
		meshXDSProtocol, (sent(mt1, resource.Cluster)-sent(mt0, resource.Cluster))/proxies, (sent(mt1, resource.Endpoint)-sent(mt0, resource.Endpoint))/proxies,
		(sent(mt1, resource.Listener)-sent(mt0, resource.Listener))/proxies, (sent(mt1, resource.Route)-sent(mt0, resource.Route))/proxies,
		(bytesSent(mt1)-bytesSent(mt0))/proxies)
	if meshXDSProtocol != translate.XDSProtocolDelta {
		return
	}
	if d := sent(mt1, resource.Cluster) - sent(mt0, resource.Cluster); d != proxies {
		t.Errorf("%v clusters sent for one Service's policy, want one per proxy (%v)", d, proxies)
	}
	for _, typ := range []resource.Type{resource.Listener, resource.Route} {
		if d := sent(mt1, typ) - sent(mt0, typ); d != 0 {
			t.Errorf("%v %s resources sent for a cluster's policy, want none", d, typ)
		}
	}
}

// checkRestartSentNothingNew compares each Envoy's xDS stats before and after a restart
// of the control plane whose content did not change (TestControlPlaneRestart): no
// cluster or listener was added, modified or removed in any Envoy, the CDS and LDS
// versions Envoy holds are the same, and each of its CDS and LDS subscriptions took at
// most one update: under state of the world, the reconnect's full state, which the
// protocol has no way to skip. Under delta, each Envoy reconnected with
// initial_resource_versions naming what it holds, and the versions are content hashes,
// so the restarted control plane must send no resource of any object type at all: each
// type's first request gets one answer, empty (bearkong_xds_resources_sent_total of the
// new process stays 0; /debug/streams shows at most one push per type).
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds
func checkRestartSentNothingNew(t *testing.T, m *localmesh.Mesh, before, after map[string]map[string]uint64, streams map[string]ads.StreamInfo) {
	t.Helper()
	for _, p := range m.Pods() {
		b, a := before[p.Name], after[p.Name]
		for _, stat := range []string{
			"cluster_manager.cluster_added", "cluster_manager.cluster_modified", "cluster_manager.cluster_removed",
			"listener_manager.listener_added", "listener_manager.listener_modified", "listener_manager.listener_removed",
			"cluster_manager.cds.version", "listener_manager.lds.version",
		} {
			if a[stat] != b[stat] {
				t.Errorf("%s: %s %d -> %d across a restart that changed nothing", p.Name, stat, b[stat], a[stat])
			}
		}
		for _, stat := range []string{"cluster_manager.cds.update_success", "listener_manager.lds.update_success"} {
			if d := a[stat] - b[stat]; d > 1 {
				t.Errorf("%s: %s %d -> %d across the restart, want at most one update", p.Name, stat, b[stat], a[stat])
			}
		}
		if meshXDSProtocol != translate.XDSProtocolDelta {
			continue
		}
		s, ok := streams[nodeID(p)]
		if !ok {
			t.Errorf("%s: no stream after the restart", p.Name)
			continue
		}
		for _, typ := range objectTypes {
			if n := s.Types.Get(typ).Pushes; n > 1 {
				t.Errorf("%s: %d %s responses on the stream after the restart, want one, empty: Envoy holds every resource at its version", p.Name, n, typ)
			}
		}
	}
	if meshXDSProtocol != translate.XDSProtocolDelta {
		return
	}
	mt := cpMetrics(t, m)
	for _, typ := range objectTypes {
		if n := mt[`bearkong_xds_resources_sent_total{type="`+typ.String()+`"}`]; n != 0 {
			t.Errorf("the restarted control plane sent %v %s resources; want none: every proxy reconnected holding them", n, typ)
		}
	}
}

// envoyXDSStats reads every pod's Envoy stats.
func envoyXDSStats(t *testing.T, m *localmesh.Mesh) map[string]map[string]uint64 {
	t.Helper()
	out := map[string]map[string]uint64{}
	for _, p := range m.Pods() {
		st, err := m.EnvoyStats(ctxT(t, 10*time.Second), p.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[p.Name] = st
	}
	return out
}
