package controlplane_test

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// TestMaxConnectionAgeWithEnvoy runs a real Envoy against a control plane whose xDS
// connections live 3 s: the connection is closed, Envoy opens a new stream (another
// stream id in /debug/streams), and it keeps its config throughout (its listeners and
// clusters never go away, no update is rejected), and the new stream is answered with
// the same versions, once per type, and ACKed: a reconnect costs no config churn.
func TestMaxConnectionAgeWithEnvoy(t *testing.T) {
	envoy := envoyBinary(t)
	for _, mode := range []string{"secure", "insecure"} {
		t.Run(mode, func(t *testing.T) { testMaxConnectionAge(t, envoy, mode == "secure") })
	}
}

func testMaxConnectionAge(t *testing.T, envoy string, secure bool) {
	const age, grace = 3 * time.Second, time.Second
	cert, _ := selfSigned(t, "bearkong.test")
	h := startOpts(t, testCertificates(t), func(o *controlplane.Options) {
		o.MaxConnectionAge, o.MaxConnectionAgeGrace = age, grace
		if secure {
			o.ServerOptions = []grpc.ServerOption{controlplane.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil })}
			o.Authenticate = controlplane.Authenticator(fakeReviewer{ids: map[string]discovery.PodIdentity{
				"token-of-app-1-1": {Namespace: "default", ServiceAccount: "app-1", PodName: "app-1-1", PodUID: "uid-app-1-1"},
			}})
		}
	})
	ip := freeListenerIP(t)
	ctx := context.Background()
	// The pod behind the Envoy: a second replica of app-1, at the Envoy's address.
	p := pod("app-1", 1, ip)
	p.UID, p.Spec.ServiceAccountName = "uid-app-1-1", "app-1"
	if _, err := h.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, slice("app-1", "10.0.0.1", ip), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	adminAddr := freeLoopbackAddr(t)
	o := translate.BootstrapOptions{
		PodName: "app-1-1", PodNamespace: "default", ListenIP: ip, OutboundIP: ip, AppAddress: ip + ":9090",
		AdminAddress: adminAddr, XDSAddress: h.cp.XDSAddr(), XDSInsecure: true,
	}
	if secure {
		token := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(token, []byte("token-of-app-1-1"), 0o600); err != nil {
			t.Fatal(err)
		}
		o.XDSInsecure, o.XDSServerName, o.XDSTokenFile = false, "bearkong.test", token
		o.XDSRootCA = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	}
	b, err := translate.Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	runEnvoy(t, envoy, b)
	const nodeID = "app-1-1.default"

	first := waitStreamSynced(t, h, nodeID, 0, 30*time.Second)
	listeners, clusters := envoyStat(t, adminAddr, "listener_manager.total_listeners_active"), envoyStat(t, adminAddr, "cluster_manager.active_clusters")
	if listeners < 2 || clusters < 3 {
		t.Fatalf("Envoy has %d listeners and %d clusters, want the mesh's (2 listeners, a cluster per Service)", listeners, clusters)
	}

	// Watch Envoy's config while the connection ages out and a new stream syncs.
	wait := age + age/10 + grace + 15*time.Second
	deadline := time.Now().Add(wait)
	var second ads.StreamInfo
	for {
		if l, c := envoyStat(t, adminAddr, "listener_manager.total_listeners_active"), envoyStat(t, adminAddr, "cluster_manager.active_clusters"); l != listeners || c != clusters {
			t.Fatalf("Envoy's config changed while its connection was replaced: %d listeners and %d clusters, had %d and %d", l, c, listeners, clusters)
		}
		if s := h.streams(t, nodeID); len(s) == 1 && s[0].ID != first.ID && synced(s[0]) {
			second = s[0]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new SYNCED stream for %s within %s with a %s connection age: %+v", nodeID, wait, age, h.streams(t, nodeID))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("stream %d (connected %s) replaced by stream %d (connected %s)", first.ID, first.ConnectedAt.Format(time.StampMilli), second.ID, second.ConnectedAt.Format(time.StampMilli))
	if d := second.ConnectedAt.Sub(first.ConnectedAt); d < age*9/10 {
		t.Errorf("the new stream came %s after the first, before the connection age of %s", d, age)
	}
	if got := envoyStat(t, adminAddr, "control_plane.connected_state"); got != 1 {
		t.Errorf("Envoy's control_plane.connected_state = %d after the reconnect, want 1", got)
	}
	for _, ty := range []struct {
		name          string
		before, after ads.TypeInfo
	}{
		{"cds", first.Types.CDS, second.Types.CDS}, {"eds", first.Types.EDS, second.Types.EDS},
		{"lds", first.Types.LDS, second.Types.LDS}, {"rds", first.Types.RDS, second.Types.RDS},
		{"sds", first.Types.SDS, second.Types.SDS},
	} {
		if ty.after.VersionAcked != ty.before.VersionAcked {
			t.Errorf("%s: the new stream ACKed version %s, the old one %s: nothing changed, so the version must not", ty.name, ty.after.VersionAcked, ty.before.VersionAcked)
		}
		if ty.after.Pushes != 1 || ty.after.Nacks != 0 {
			t.Errorf("%s: the new stream got %d pushes and %d NACKs, want 1 (the answer to the reconnect) and 0", ty.name, ty.after.Pushes, ty.after.Nacks)
		}
	}
	for _, stat := range []string{"cluster_manager.cds.update_rejected", "listener_manager.lds.update_rejected"} {
		if got := envoyStat(t, adminAddr, stat); got != 0 {
			t.Errorf("Envoy's %s = %d, want 0", stat, got)
		}
	}
}

func synced(s ads.StreamInfo) bool {
	ty := s.Types
	return ty.CDS.Status == ads.Synced && ty.EDS.Status == ads.Synced && ty.LDS.Status == ads.Synced && ty.RDS.Status == ads.Synced && ty.SDS.Status == ads.Synced
}

// waitStreamSynced waits until nodeID has one stream, other than notID, SYNCED on
// every type.
func waitStreamSynced(t *testing.T, h *harness, nodeID string, notID uint64, timeout time.Duration) ads.StreamInfo {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := h.streams(t, nodeID)
		if len(s) == 1 && s[0].ID != notID && synced(s[0]) {
			return s[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not SYNCED on every type within %s: %+v", nodeID, timeout, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// freeListenerIP returns a loopback address, outside the 127.0.1.0/24 of the local mesh,
// on which the sidecar ports (inbound and outbound) are free now.
func freeListenerIP(t *testing.T) string {
	t.Helper()
	for range 50 {
		ip := fmt.Sprintf("127.%d.%d.%d", 100+rand.IntN(100), rand.IntN(256), 1+rand.IntN(254))
		free := true
		for _, port := range []int{mesh.InboundPort, mesh.OutboundPort} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				free = false
				break
			}
			l.Close()
		}
		if free {
			return ip
		}
	}
	t.Fatal("no loopback address with the sidecar ports free")
	return ""
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runEnvoy runs Envoy with bootstrap b until the test ends; its log is shown when the
// test fails.
func runEnvoy(t *testing.T, envoy string, b *bootstrapv3.Bootstrap) {
	t.Helper()
	dir := t.TempDir()
	js, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(path, js, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, envoy, "-c", path, "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1")
	logFile, err := os.Create(filepath.Join(dir, "envoy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logFile.Name())
			t.Logf("envoy log:\n%s", out)
		}
	})
}

// envoyStat reads one counter or gauge from Envoy's admin /stats.
func envoyStat(t *testing.T, admin, name string) int {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/stats?filter=^" + strings.ReplaceAll(name, ".", `\.`) + "$")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+": "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("Envoy stat %s: %q", name, v)
			}
			return n
		}
	}
	t.Fatalf("no stat %s in Envoy's /stats:\n%s", name, body)
	return 0
}
