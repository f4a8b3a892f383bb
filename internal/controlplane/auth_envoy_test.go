package controlplane_test

import (
	"crypto/tls"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// TestSecureChannelWithEnvoy puts the pieces of the secure xDS channel together with real
// Envoys: the bootstrap of translate, the TLS of ServerTLS and the Authenticator over a
// fake reviewer, in front of the ADS server. The honest proxy is served and resolved with
// its proven ServiceAccount; a proxy that presents another pod's token gets nothing.
func TestSecureChannelWithEnvoy(t *testing.T) {
	envoy := envoyBinary(t)
	cert, _ := selfSigned(t, "bearkong.test")
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})

	var mu sync.Mutex
	resolved := map[string]translate.Node{}
	reg := prometheus.NewRegistry()
	srv := ads.NewServer(ads.Options{
		Metrics: ads.NewMetrics(reg),
		Authenticate: controlplane.Authenticator(fakeReviewer{ids: map[string]discovery.PodIdentity{
			"token-of-app-1-a": {Namespace: "default", ServiceAccount: "app-1", PodName: "app-1-a", PodUID: "uid-1"},
		}}),
	})
	srv.SetConfig(&ads.Config{Resolve: func(n *corev3.Node) (*resource.Proxy, error) {
		node, err := translate.ParseNode(n)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		resolved[node.ID] = node
		mu.Unlock()
		// Nothing to serve but empty sets: what matters is that the stream is served.
		p := &resource.Proxy{}
		for i := range p.Views {
			p.Views[i] = resource.View{resource.NewSet()}
		}
		return p, nil
	}})
	g := grpc.NewServer(append(ads.ServerOptions(), controlplane.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return cert, nil
	}))...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()

	run := func(pod, token string) {
		t.Helper()
		dir := t.TempDir()
		tokenFile := filepath.Join(dir, "token")
		if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		admin, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		adminAddr := admin.Addr().String()
		admin.Close()
		b, err := translate.Bootstrap(translate.BootstrapOptions{
			PodName: pod, PodNamespace: "default", AdminAddress: adminAddr, XDSAddress: lis.Addr().String(),
			XDSRootCA: rootPEM, XDSTokenFile: tokenFile, XDSServerName: "bearkong.test",
		})
		if err != nil {
			t.Fatal(err)
		}
		runEnvoy(t, envoy, b)
	}
	run("app-1-a", "token-of-app-1-a")
	run("app-2-a", "token-of-app-1-a") // another pod's token

	deadline := time.Now().Add(30 * time.Second)
	for {
		s := srv.Streams("app-1-a.default")
		if len(s) == 1 && s[0].Types.CDS.Status == ads.Synced && s[0].Types.LDS.Status == ads.Synced {
			break
		}
		if time.Now().After(deadline) {
			for _, st := range s {
				t.Logf("stream: %+v", *st)
			}
			t.Fatal("app-1-a not served and SYNCED within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		if authFailures(t, reg, ads.ReasonPermissionDenied) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the proxy with another pod's token was not refused within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if n := resolved["app-1-a.default"]; n.ServiceAccount != "app-1" || n.PodUID != "uid-1" {
		t.Errorf("app-1-a resolved as %+v, want service account app-1 and pod UID uid-1", n)
	}
	if _, ok := resolved["app-2-a.default"]; ok {
		t.Error("the proxy with another pod's token was resolved")
	}
	if s := srv.Streams("app-2-a.default"); len(s) != 0 {
		t.Errorf("the refused proxy has streams: %+v", s)
	}
}

func authFailures(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "bearkong_xds_auth_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
