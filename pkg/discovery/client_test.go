package discovery

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
)

// TestClientRateLimits checks that the QPS and burst of ClientOptions reach the
// rest.Config and the rate limiters of the clients bearkong builds, that zero takes
// bearkong's defaults rather than client-go's 5/10, and that a negative value is refused.
func TestClientRateLimits(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		opts      ClientOptions
		wantQPS   float32
		wantBurst int
		wantErr   string
	}{
		{"defaults", ClientOptions{Kubeconfig: kubeconfig}, DefaultKubeAPIQPS, DefaultKubeAPIBurst, ""},
		{"set", ClientOptions{Kubeconfig: kubeconfig, QPS: 7, Burst: 9}, 7, 9, ""},
		{"negative QPS", ClientOptions{Kubeconfig: kubeconfig, QPS: -1, Burst: 9}, 0, 0, "kube API QPS -1: must be positive"},
		{"negative burst", ClientOptions{Kubeconfig: kubeconfig, QPS: 1, Burst: -2}, 0, 0, "kube API burst -2: must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := RestConfig(tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("RestConfig error %v, want one containing %q", err, tc.wantErr)
				}
				if _, _, err := NewClients(tc.opts); err == nil {
					t.Error("NewClients accepted the options RestConfig refuses")
				}
				if _, err := NewAuthzClient(tc.opts); err == nil {
					t.Error("NewAuthzClient accepted the options RestConfig refuses")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.QPS != tc.wantQPS || cfg.Burst != tc.wantBurst || cfg.UserAgent != "bearkong" {
				t.Errorf("rest.Config QPS %v burst %d user agent %q, want %v, %d, bearkong", cfg.QPS, cfg.Burst, cfg.UserAgent, tc.wantQPS, tc.wantBurst)
			}
			c, gw, err := NewClients(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.(*kubernetes.Clientset).CoreV1().RESTClient().GetRateLimiter().QPS(); got != tc.wantQPS {
				t.Errorf("Kubernetes client QPS %v, want %v", got, tc.wantQPS)
			}
			if got := gw.(*gwclient.Clientset).GatewayV1().RESTClient().GetRateLimiter().QPS(); got != tc.wantQPS {
				t.Errorf("Gateway API client QPS %v, want %v", got, tc.wantQPS)
			}
			if _, err := NewAuthzClient(tc.opts); err != nil {
				t.Fatal(err)
			}
		})
	}
}
