package controlplane_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// TestDeltaWithEnvoy runs a real Envoy on incremental ADS (ads_config api_type
// DELTA_GRPC): it gets the mesh's clusters and listeners, a Service added shows up as a
// cluster in its /config_dump and goes from there when the Service is deleted (Envoy
// acted on removed_resources), a cluster-level policy change is taken (the cluster does
// not stay warming), and /debug/streams shows the stream as "delta", ACKed on every
// type, with no NACK.
func TestDeltaWithEnvoy(t *testing.T) {
	envoy := envoyBinary(t)
	h := start(t)
	ctx := context.Background()
	adminAddr := startDeltaEnvoy(t, h, envoy)

	first := waitStreamSynced(t, h, deltaNodeID, 0, 30*time.Second)
	if first.Protocol != "delta" {
		t.Fatalf("the stream's protocol is %q, want delta", first.Protocol)
	}
	if l, c := envoyStat(t, adminAddr, "listener_manager.total_listeners_active"), envoyStat(t, adminAddr, "cluster_manager.active_clusters"); l < 2 || c < 3 {
		t.Fatalf("Envoy has %d listeners and %d clusters, want the mesh's (2 listeners, a cluster per Service)", l, c)
	}
	if !strings.Contains(configDump(t, adminAddr), `"name": "app-3.default"`) {
		t.Fatal("app-3's cluster is not in Envoy's /config_dump")
	}

	// A change that means nothing to the mesh sends nothing.
	svc1, err := h.client.CoreV1().Services("default").Get(ctx, "app-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc1.Annotations, svc1.ResourceVersion = map[string]string{"owner": "team-a"}, "2"
	if _, err := h.client.CoreV1().Services("default").Update(ctx, svc1, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // proof that nothing is sent needs a wait: the quiet period is 10 ms
	if s := waitStreamSynced(t, h, deltaNodeID, 0, 10*time.Second); s.ID != first.ID ||
		s.Types.CDS.Pushes != first.Types.CDS.Pushes || s.Types.EDS.Pushes != first.Types.EDS.Pushes ||
		s.Types.LDS.Pushes != first.Types.LDS.Pushes || s.Types.RDS.Pushes != first.Types.RDS.Pushes {
		t.Fatalf("a no-op change pushed: before %+v\nafter %+v", first.Types, s.Types)
	}

	// A Service comes: its cluster arrives.
	if _, err := h.client.CoreV1().Services("default").Create(ctx, service("app-4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice("app-4", "10.0.0.4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDump(t, adminAddr, "app-4's cluster in /config_dump", func(d string) bool { return strings.Contains(d, `"name": "app-4.default"`) })
	waitWarm(t, adminAddr)

	// A cluster-level policy changes: the cluster is replaced and warms; its assignment
	// must come for it to leave warming.
	svc, err := h.client.CoreV1().Services("default").Get(ctx, "app-4", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Annotations = map[string]string{"mesh-max-connections": "7"}
	svc.ResourceVersion = "2"
	if _, err := h.client.CoreV1().Services("default").Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDump(t, adminAddr, "app-4's max_connections 7 in /config_dump", func(d string) bool { return strings.Contains(d, `"max_connections": 7`) })
	waitWarm(t, adminAddr)

	// The Service goes: removed_resources takes its cluster out of Envoy.
	if err := h.client.CoreV1().Services("default").Delete(ctx, "app-4", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitDump(t, adminAddr, "app-4's cluster gone from /config_dump", func(d string) bool { return !strings.Contains(d, `"name": "app-4.default"`) })
	if !strings.Contains(configDump(t, adminAddr), `"name": "app-3.default"`) {
		t.Fatal("app-3's cluster went with app-4's")
	}

	s := waitStreamSynced(t, h, deltaNodeID, 0, 10*time.Second)
	if s.ID != first.ID {
		t.Fatalf("the stream was replaced (%d, then %d): Envoy reconnected", first.ID, s.ID)
	}
	for _, ty := range []struct {
		name string
		info ads.TypeInfo
	}{{"cds", s.Types.CDS}, {"eds", s.Types.EDS}, {"lds", s.Types.LDS}, {"rds", s.Types.RDS}, {"sds", s.Types.SDS}} {
		if ty.info.Acks == 0 || ty.info.Nacks != 0 || ty.info.LastNack != nil || ty.info.VersionAcked == "" {
			t.Errorf("%s: %d ACKs, %d NACKs (last %+v), version acked %q", ty.name, ty.info.Acks, ty.info.Nacks, ty.info.LastNack, ty.info.VersionAcked)
		}
	}
	if s.Types.CDS.Pushes < 4 {
		t.Errorf("CDS: %d pushes, want at least 4 (initial, app-4 added, changed, removed)", s.Types.CDS.Pushes)
	}
	for _, stat := range []string{"cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected"} {
		if got := envoyStat(t, adminAddr, stat); got != 0 {
			t.Errorf("Envoy's %s = %d, want 0", stat, got)
		}
	}
}

// deltaNodeID is the node of the Envoy startDeltaEnvoy runs.
const deltaNodeID = "app-1-1.default"

// envoyBinary returns the path of the Envoy the tests run; a test that needs it fails
// without it, unless -short skips it.
func envoyBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real Envoy: skipped with -short")
	}
	bin, err := kubeenv.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	envoy := filepath.Join(bin, "envoy")
	if _, err := os.Stat(envoy); err != nil {
		t.Fatalf("no Envoy at %s (make install): %v", envoy, err)
	}
	return envoy
}

// startDeltaEnvoy runs an Envoy on incremental ADS as a second replica of app-1 (node
// deltaNodeID) against h, and returns its admin address.
func startDeltaEnvoy(t *testing.T, h *harness, envoy string) string {
	t.Helper()
	ip := freeListenerIP(t)
	ctx := context.Background()
	if _, err := h.client.CoreV1().Pods("default").Create(ctx, pod("app-1", 1, ip), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("app-1", "10.0.0.1", ip), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	adminAddr := freeLoopbackAddr(t)
	b, err := translate.Bootstrap(translate.BootstrapOptions{
		PodName: "app-1-1", PodNamespace: "default", ListenIP: ip, OutboundIP: ip, AppAddress: ip + ":9090",
		AdminAddress: adminAddr, XDSAddress: h.cp.XDSAddr(), XDSInsecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The bootstrap's --xds-protocol flag comes separately (h-dproto); until then the
	// test sets the ADS variant itself.
	b.DynamicResources.AdsConfig.ApiType = corev3.ApiConfigSource_DELTA_GRPC
	runEnvoy(t, envoy, b)
	return adminAddr
}

// configDump returns Envoy's /config_dump.
func configDump(t *testing.T, admin string) string {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// waitDump waits up to 10 s until cond holds of Envoy's /config_dump.
func waitDump(t *testing.T, admin, what string, cond func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(configDump(t, admin)) {
		if time.Now().After(deadline) {
			t.Fatalf("not within 10s: %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitWarm waits up to 10 s until Envoy has no cluster warming: each one got its
// ClusterLoadAssignment.
func waitWarm(t *testing.T, admin string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for envoyStat(t, admin, "cluster_manager.warming_clusters") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Envoy still has %d clusters warming after 10s", envoyStat(t, admin, "cluster_manager.warming_clusters"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDeltaReconnectWithEnvoy: a delta Envoy whose connection ages out opens a new
// stream that declares what it holds (initial_resource_versions). The versions are
// content hashes, so nothing is sent again: each type gets one empty answer, ACKed at
// the version the old stream had, and Envoy's config does not move.
func TestDeltaReconnectWithEnvoy(t *testing.T) {
	envoy := envoyBinary(t)
	const age, grace = 3 * time.Second, time.Second
	h := startOpts(t, testCertificates(t), func(o *controlplane.Options) { o.MaxConnectionAge, o.MaxConnectionAgeGrace = age, grace })
	adminAddr := startDeltaEnvoy(t, h, envoy)

	first := waitStreamSynced(t, h, deltaNodeID, 0, 30*time.Second)
	sent := map[string]float64{}
	for _, ty := range []string{"cds", "eds", "lds", "rds", "sds"} {
		sent[ty] = h.metric(t, `bearkong_xds_resources_sent_total{type="`+ty+`"}`)
	}
	second := waitStreamSynced(t, h, deltaNodeID, first.ID, age+age/10+grace+15*time.Second)
	if second.Protocol != "delta" {
		t.Fatalf("protocol %q", second.Protocol)
	}
	for _, ty := range []struct {
		name          string
		before, after ads.TypeInfo
	}{
		{"cds", first.Types.CDS, second.Types.CDS}, {"eds", first.Types.EDS, second.Types.EDS},
		{"lds", first.Types.LDS, second.Types.LDS}, {"rds", first.Types.RDS, second.Types.RDS},
		{"sds", first.Types.SDS, second.Types.SDS},
	} {
		if ty.after.VersionAcked != ty.before.VersionAcked || ty.after.Pushes != 1 || ty.after.Nacks != 0 {
			t.Errorf("%s: the new stream ACKed %s (the old one %s), with %d pushes and %d NACKs; want the same version, 1 push, 0 NACKs",
				ty.name, ty.after.VersionAcked, ty.before.VersionAcked, ty.after.Pushes, ty.after.Nacks)
		}
		if got := h.metric(t, `bearkong_xds_resources_sent_total{type="`+ty.name+`"}`); got != sent[ty.name] {
			t.Errorf("%s: %v resources sent on the reconnect, want 0", ty.name, got-sent[ty.name])
		}
	}
	if got := envoyStat(t, adminAddr, "cluster_manager.cds.update_rejected"); got != 0 {
		t.Errorf("Envoy's cds.update_rejected = %d", got)
	}
}

// TestDeltaNACKWithEnvoy: a real Envoy on delta rejects a response holding a cluster
// Envoy's validation refuses (a negative connect_timeout) next to a valid new one. The
// ADS server shows the stream NACKED with Envoy's message and sends nothing again while
// the content stays; the fix sends the rejected response's clusters again, so Envoy ends
// with both, and the stream is SYNCED.
func TestDeltaNACKWithEnvoy(t *testing.T) {
	envoy := envoyBinary(t)
	reg := prometheus.NewRegistry()
	srv := ads.NewServer(ads.Options{Metrics: ads.NewMetrics(reg)})
	g := grpc.NewServer(ads.ServerOptions()...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	cluster := func(name string, timeout time.Duration) *resource.Resource {
		r, err := resource.New(resource.Cluster, name, &clusterv3.Cluster{
			Name:                 name,
			ConnectTimeout:       durationpb.New(timeout),
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	set := func(clusters ...*resource.Resource) {
		p := &resource.Proxy{}
		for _, ty := range resource.Types {
			p.Views[ty] = resource.View{resource.NewSet()}
		}
		p.Views[resource.Cluster] = resource.View{resource.NewSet(clusters...)}
		srv.SetConfig(&ads.Config{Resolve: func(*corev3.Node) (*resource.Proxy, error) { return p, nil }})
	}
	set(cluster("good", time.Second))

	adminAddr := freeLoopbackAddr(t)
	ip := freeListenerIP(t)
	b, err := translate.Bootstrap(translate.BootstrapOptions{
		PodName: "app-1-1", PodNamespace: "default", ListenIP: ip, OutboundIP: ip, AppAddress: ip + ":9090",
		AdminAddress: adminAddr, XDSAddress: lis.Addr().String(), XDSInsecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	b.DynamicResources.AdsConfig.ApiType = corev3.ApiConfigSource_DELTA_GRPC
	runEnvoy(t, envoy, b)

	cds := func(what string, cond func(ads.TypeInfo) bool) ads.TypeInfo {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if s := srv.Streams(deltaNodeID); len(s) == 1 && s[0].Protocol == "delta" && cond(s[0].Types.CDS) {
				return s[0].Types.CDS
			}
			if time.Now().After(deadline) {
				t.Fatalf("CDS not %s within 30s: %+v", what, srv.Streams(deltaNodeID))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	synced := cds("SYNCED", func(ti ads.TypeInfo) bool { return ti.Status == ads.Synced })

	set(cluster("good", time.Second), cluster("good-2", time.Second), cluster("bad", -time.Second))
	nacked := cds("NACKED", func(ti ads.TypeInfo) bool { return ti.Status == ads.Nacked })
	if nacked.Nacks != 1 || nacked.LastNack == nil || !strings.Contains(nacked.LastNack.Message, "duration") || nacked.VersionAcked != synced.VersionAcked {
		t.Fatalf("CDS after the NACK: %+v, last NACK %+v", nacked, nacked.LastNack)
	}
	if got := envoyStat(t, adminAddr, "cluster_manager.cds.update_rejected"); got != 1 {
		t.Fatalf("Envoy's cds.update_rejected = %d, want 1", got)
	}
	t.Logf("Envoy's NACK: %s; good-2 in force after it: %v", nacked.LastNack.Message, strings.Contains(configDump(t, adminAddr), `"name": "good-2"`))

	// The same content again sends nothing.
	set(cluster("good", time.Second), cluster("good-2", time.Second), cluster("bad", -time.Second))
	time.Sleep(300 * time.Millisecond) // proof that nothing is sent needs a wait
	if again := cds("NACKED", func(ti ads.TypeInfo) bool { return ti.Status == ads.Nacked }); again.Pushes != nacked.Pushes {
		t.Fatalf("CDS pushed %d times after the NACK with the content unchanged", again.Pushes-nacked.Pushes)
	}

	set(cluster("good", time.Second), cluster("good-2", time.Second), cluster("bad", 2*time.Second))
	fixed := cds("SYNCED after the fix", func(ti ads.TypeInfo) bool { return ti.Status == ads.Synced })
	if fixed.Nacks != 1 || fixed.Pushes != nacked.Pushes+1 {
		t.Fatalf("CDS after the fix: %+v", fixed)
	}
	waitDump(t, adminAddr, "bad and good-2 in /config_dump", func(d string) bool {
		return strings.Contains(d, `"name": "bad"`) && strings.Contains(d, `"name": "good-2"`)
	})
	if got := envoyStat(t, adminAddr, "cluster_manager.cds.update_rejected"); got != 1 {
		t.Fatalf("Envoy's cds.update_rejected = %d after the fix, want 1", got)
	}
}
