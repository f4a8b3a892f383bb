package localmesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bearkong/bearkong/internal/kubeenv"
)

func TestParseEnvoyStats(t *testing.T) {
	text := []byte("cluster.a.upstream_rq_total: 12\nserver.live: 1\n" +
		"cluster.a.upstream_rq_time: P0(nan,1) P25(nan,2)\nnot a stat\nhttp.x.rq: -3\n")
	got := ParseEnvoyStats(text)
	want := map[string]uint64{"cluster.a.upstream_rq_total": 12, "server.live": 1}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
}

// TestHarness checks the harness itself against a real API server and real Envoys, with a
// fake bearkong (testdata/fakebearkong: static bootstrap, no xDS), so that it does not
// depend on the control plane. The end-to-end tests with the real one are in test/e2e.
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd, kube-apiserver and Envoys: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	toolDir := filepath.Join(root, ".cache", "bin")
	binDir := t.TempDir()
	for pkg, out := range map[string]string{
		"./internal/localmesh/testdata/fakebearkong": "bearkong",
		"./cmd/demo-app": "demo-app",
	} {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, out), pkg)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}

	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(t.TempDir(), "kube"), BinDir: toolDir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	m, err := New(ctx, Options{
		Env:         env,
		Dir:         t.TempDir(),
		BearkongBin: filepath.Join(binDir, "bearkong"),
		EnvoyBin:    filepath.Join(toolDir, "envoy"),
		DemoAppBin:  filepath.Join(binDir, "demo-app"),
		IPPrefix:    "127.0.3.", // away from test/e2e and `make run`, which use 127.0.1.
		DrainPeriod: time.Second,
		Logf:        t.Logf,
		// The stand-in control plane has no CA: the harness must not wait for one.
		XDSInsecure: true,
		// Two replicas, as a highly available control plane runs.
		ControlPlaneReplicas: 2,
		// Every bootstrap is asked for this protocol (the fake records it).
		XDSProtocol: "delta",
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			m.Close()
		}
	}()
	if err := m.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.AddService(ctx, "a", ServiceOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.AddPod(ctx, "nope", PodOptions{}); err == nil {
		t.Error("AddPod for an unknown service succeeded")
	}
	p0, err := m.AddPod(ctx, "a", PodOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p1, err := m.AddPod(ctx, "a", PodOptions{Env: map[string]string{"BODY": "second"}})
	if err != nil {
		t.Fatal(err)
	}
	if p0.Name != "a-0" || p1.Name != "a-1" || p0.IP != "127.0.3.2" || p1.IP != "127.0.3.3" || p0.OutboundIP != "127.0.4.2" || p1.OutboundIP != "127.0.4.3" {
		t.Errorf("pods = %+v, %+v", p0, p1)
	}
	// The outbound listener is on the pod's own loopback address only, as on 127.0.0.1
	// in a real pod: nothing else reaches it at the pod's address.
	if c, err := net.DialTimeout("tcp", net.JoinHostPort(p0.IP, "8001"), time.Second); err == nil {
		c.Close()
		t.Errorf("%s:8001 accepts connections; the outbound listener must be on %s only", p0.IP, p0.OutboundIP)
	}

	promURL := ""
	if _, err := exec.LookPath("prometheus"); err == nil {
		addr := freeAddr(t)
		if promURL, err = m.StartPrometheus(ctx, "", addr); err != nil {
			t.Fatal(err)
		}
	} else {
		t.Log("prometheus not on PATH: not testing StartPrometheus")
	}

	t.Run("pod objects", func(t *testing.T) {
		pod, err := env.Client.CoreV1().Pods("default").Get(ctx, p1.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ready := false
		for _, c := range pod.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" {
				ready = true
			}
		}
		if pod.Status.PodIP != p1.IP || pod.Status.Phase != "Running" || !ready || pod.Labels["app"] != "a" {
			t.Errorf("pod status %+v, labels %v", pod.Status, pod.Labels)
		}
	})

	t.Run("endpoint slice", func(t *testing.T) {
		s := getSlice(ctx, t, env, "a")
		if len(s.Endpoints) != 2 {
			t.Fatalf("endpoints = %+v", s.Endpoints)
		}
		for i, want := range []Pod{p0, p1} {
			e := s.Endpoints[i]
			if e.Addresses[0] != want.IP || e.TargetRef.Name != want.Name || !*e.Conditions.Ready || !*e.Conditions.Serving || *e.Conditions.Terminating {
				t.Errorf("endpoint %d = %+v", i, e)
			}
		}
		if s.Labels[discoveryv1.LabelServiceName] != "a" || *s.Ports[0].Port != 9090 {
			t.Errorf("slice labels %v, ports %+v", s.Labels, s.Ports)
		}
	})

	t.Run("inbound reaches the app", func(t *testing.T) {
		resp, err := http.Get("http://" + p1.InboundAddr() + "/hello")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a Answer
		if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
			t.Fatal(err)
		}
		if a.Name != "a" || a.IP() != p1.IP || a.Body != "second" {
			t.Errorf("answer %+v", a)
		}
	})

	t.Run("outbound and stats", func(t *testing.T) {
		status, body, err := m.Get(ctx, p0.Name, "anything")
		if err != nil || status != http.StatusNotFound {
			t.Errorf("Get = %d %q %v, want the fake's 404", status, body, err)
		}
		stats, err := m.EnvoyStats(ctx, p0.Name)
		if err != nil {
			t.Fatal(err)
		}
		if stats["server.live"] != 1 {
			t.Errorf("server.live = %d (of %d stats)", stats["server.live"], len(stats))
		}
	})

	if promURL != "" {
		t.Run("prometheus scrapes the envoys", func(t *testing.T) {
			err := Eventually(ctx, 60*time.Second, func(ctx context.Context) error {
				body, err := m.httpGet(ctx, promURL+"/api/v1/query?query=count(envoy_server_live)")
				if err != nil {
					return err
				}
				var r struct {
					Data struct {
						Result []struct {
							Value []any `json:"value"`
						} `json:"result"`
					} `json:"data"`
				}
				if err := json.Unmarshal(body, &r); err != nil {
					return err
				}
				if len(r.Data.Result) != 1 || r.Data.Result[0].Value[1] != "2" {
					return fmt.Errorf("count(envoy_server_live) = %s", body)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}

	t.Run("graceful removal", func(t *testing.T) {
		done := make(chan error, 1)
		go func() { done <- m.RemovePod(ctx, p0.Name, true) }()
		err := Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			s := getSlice(ctx, t, env, "a")
			for _, e := range s.Endpoints {
				if e.TargetRef.Name == p0.Name && !*e.Conditions.Ready && *e.Conditions.Serving && *e.Conditions.Terminating {
					return nil
				}
			}
			return errors.New("endpoint of a-0 not terminating yet")
		})
		if err != nil {
			t.Error(err)
		}
		pod, err := env.Client.CoreV1().Pods("default").Get(ctx, p0.Name, metav1.GetOptions{})
		if err != nil || pod.DeletionTimestamp == nil {
			t.Errorf("draining pod: err %v, deletionTimestamp %v", err, pod.DeletionTimestamp)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if _, err := env.Client.CoreV1().Pods("default").Get(ctx, p0.Name, metav1.GetOptions{}); err == nil {
			t.Error("pod still exists after RemovePod")
		}
		if s := getSlice(ctx, t, env, "a"); len(s.Endpoints) != 1 || s.Endpoints[0].TargetRef.Name != p1.Name {
			t.Errorf("endpoints after removal = %+v", s.Endpoints)
		}
		if !portsFree(p0.IP, 8000, 8001, 8081, 9090) || !portsFree(p0.OutboundIP, 8001) {
			t.Error("the removed pod's ports are still bound")
		}
	})

	t.Run("slice ports follow the Service's targetPort", func(t *testing.T) {
		err := m.UpdateService(ctx, "a", func(s *corev1.Service) {
			s.Spec.Ports[0].TargetPort = intstr.FromString("inbound")
		})
		if err != nil {
			t.Fatal(err)
		}
		if s := getSlice(ctx, t, env, "a"); len(s.Ports) != 1 || *s.Ports[0].Port != 8000 || len(s.Endpoints) != 1 {
			t.Errorf("slice ports %+v, endpoints %+v", s.Ports, s.Endpoints)
		}
	})

	t.Run("control plane replicas", func(t *testing.T) {
		urls := m.ControlPlaneURLs()
		if len(urls) != 2 || urls[0] != m.ControlPlaneURL() || urls[0] == urls[1] {
			t.Fatalf("ControlPlaneURLs() = %v (ControlPlaneURL() %s)", urls, m.ControlPlaneURL())
		}
		whoami := func(i int) (identity, debugAddr string, err error) {
			b, err := m.httpGet(ctx, urls[i]+"/whoami")
			if err != nil {
				return "", "", err
			}
			var w struct {
				Identity  string `json:"identity"`
				DebugAddr string `json:"debug_addr"`
			}
			err = json.Unmarshal(b, &w)
			return w.Identity, w.DebugAddr, err
		}
		for i := range 2 {
			id, debug, err := whoami(i)
			if err != nil {
				t.Fatal(err)
			}
			if id != ReplicaIdentity(i) || "http://"+debug != m.DebugURL(i) {
				t.Errorf("replica %d runs as %q with --debug-addr %s, want %q and %s", i, id, debug, ReplicaIdentity(i), m.DebugURL(i))
			}
			if b, err := m.httpGet(ctx, m.DebugURL(i)+"/debug/pprof/"); err != nil || string(b) != "debug\n" {
				t.Errorf("replica %d's debug listener: %q %v", i, b, err)
			}
			if !strings.HasSuffix(m.ControlPlaneReplicaLog(i), fmt.Sprintf("bearkong-cp-%d.log", i)) {
				t.Errorf("replica %d logs to %s", i, m.ControlPlaneReplicaLog(i))
			}
		}
		if m.DebugURL(0) == m.DebugURL(1) {
			t.Errorf("both replicas debug on %s", m.DebugURL(0))
		}
		// Every bootstrap lists both replicas' xDS addresses.
		b, err := os.ReadFile(m.BootstrapPath(p1.Name))
		if err != nil {
			t.Fatal(err)
		}
		if want := strings.Join(m.XDSAddrs(), ","); len(m.XDSAddrs()) != 2 || !strings.Contains(string(b), `"xds_address": "`+want+`"`) {
			t.Errorf("the bootstrap of %s does not name %s:\n%s", p1.Name, want, b)
		}
		if !strings.Contains(string(b), `"xds_protocol": "delta"`) {
			t.Errorf("the bootstrap of %s was not asked for Options.XDSProtocol delta:\n%s", p1.Name, b)
		}

		// A crash of one replica leaves the other serving; it comes back on its address.
		if err := m.KillControlPlane(1); err != nil {
			t.Fatal(err)
		}
		if m.ControlPlaneRunning(1) || !m.ControlPlaneRunning(0) {
			t.Errorf("after KillControlPlane(1): running %t, %t", m.ControlPlaneRunning(0), m.ControlPlaneRunning(1))
		}
		if err := m.KillControlPlane(1); err == nil {
			t.Error("KillControlPlane of a dead replica succeeded")
		}
		if _, err := m.httpGet(ctx, urls[1]+"/readyz"); err == nil {
			t.Error("the killed replica still answers")
		}
		if _, err := m.httpGet(ctx, urls[0]+"/readyz"); err != nil {
			t.Errorf("the other replica: %v", err)
		}
		if err := m.StartControlPlaneReplica(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if id, _, err := whoami(1); err != nil || id != ReplicaIdentity(1) {
			t.Errorf("restarted replica 1: %q %v", id, err)
		}
		if err := m.StartControlPlane(ctx); err == nil {
			t.Error("StartControlPlane with every replica running succeeded")
		}

		// The Lease's holder, as the API has it, names a replica.
		if i, holder, err := m.LeaderReplica(ctx); err != nil || i != -1 || holder != "" {
			t.Errorf("LeaderReplica with no Lease = %d, %q, %v", i, holder, err)
		}
		ns, _ := caSecret()
		lease := &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: LeaseName},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: ptr(ReplicaIdentity(1))},
		}
		if _, err := env.Client.CoordinationV1().Leases(ns).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if i, holder, err := m.LeaderReplica(ctx); err != nil || i != 1 || holder != ReplicaIdentity(1) {
			t.Errorf("LeaderReplica = %d, %q, %v; want 1", i, holder, err)
		}
	})

	t.Run("control plane restart", func(t *testing.T) {
		if err := m.StopControlPlane(); err != nil {
			t.Fatal(err)
		}
		if err := m.StartControlPlane(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("crash and close", func(t *testing.T) {
		if err := m.RemovePod(ctx, p1.Name, false); err != nil {
			t.Fatal(err)
		}
		p2, err := m.AddPod(ctx, "a", PodOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p2.IP != "127.0.3.4" {
			t.Errorf("new pod IP %s, want the next address, 127.0.3.4", p2.IP)
		}
		if err := m.DeleteService(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		closed = true
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if !portsFree(p2.IP, 8000, 8001, 8081, 9090) || !portsFree(p2.OutboundIP, 8001) {
			t.Error("ports still bound after Close")
		}
		for i, u := range m.ControlPlaneURLs() {
			if c, err := net.DialTimeout("tcp", strings.TrimPrefix(u, "http://"), time.Second); err == nil {
				c.Close()
				t.Errorf("control-plane replica %d still listening after Close", i)
			}
		}
	})
}

func getSlice(ctx context.Context, t *testing.T, env *kubeenv.Env, svc string) *discoveryv1.EndpointSlice {
	t.Helper()
	s, err := env.Client.DiscoveryV1().EndpointSlices("default").Get(ctx, sliceName(svc), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ports, err := kubeenv.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(ports[0])
}
