package ca

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// envoyBin returns the Envoy the tests run (.cache/bin/envoy at the repository root). It
// skips with -short and fails when Envoy is missing.
func envoyBin(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs Envoy: skipped with -short")
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for range 16 {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			bin := filepath.Join(dir, ".cache", "bin", "envoy")
			if _, err := os.Stat(bin); err != nil {
				t.Fatalf("%v (run make install)", err)
			}
			return bin
		}
		dir = filepath.Dir(dir)
	}
	t.Fatal("no go.mod above the test's directory")
	return ""
}

// tlsBootstrap is an Envoy bootstrap whose listener requires client certificates that
// chain to bundle and carry the URI SAN id, serving chain+key, and whose cluster
// originates TLS with the same certificate: the shape of a sidecar's inbound and outbound
// mTLS. Secrets are inline here; bearkong sends them over SDS.
func tlsBootstrap(chain, key, bundle []byte, id string) map[string]any {
	common := map[string]any{
		"tls_certificates": []any{map[string]any{
			"certificate_chain": map[string]any{"inline_string": string(chain)},
			"private_key":       map[string]any{"inline_string": string(key)},
		}},
		"validation_context": map[string]any{
			"trusted_ca": map[string]any{"inline_string": string(bundle)},
			"match_typed_subject_alt_names": []any{map[string]any{
				"san_type": "URI", "matcher": map[string]any{"exact": id},
			}},
		},
	}
	addr := func(port int) map[string]any {
		return map[string]any{"socket_address": map[string]any{"address": "127.0.0.1", "port_value": port}}
	}
	return map[string]any{
		"static_resources": map[string]any{
			"listeners": []any{map[string]any{
				"name":    "inbound",
				"address": addr(0),
				"filter_chains": []any{map[string]any{
					"transport_socket": map[string]any{
						"name": "envoy.transport_sockets.tls",
						"typed_config": map[string]any{
							"@type":                      "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
							"require_client_certificate": true,
							"common_tls_context":         common,
						},
					},
					"filters": []any{map[string]any{
						"name": "envoy.filters.network.tcp_proxy",
						"typed_config": map[string]any{
							"@type":       "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
							"stat_prefix": "inbound",
							"cluster":     "outbound",
						},
					}},
				}},
			}},
			"clusters": []any{map[string]any{
				"name": "outbound",
				"type": "STATIC",
				"load_assignment": map[string]any{
					"cluster_name": "outbound",
					"endpoints": []any{map[string]any{"lb_endpoints": []any{
						map[string]any{"endpoint": map[string]any{"address": addr(1)}},
					}}},
				},
				"transport_socket": map[string]any{
					"name": "envoy.transport_sockets.tls",
					"typed_config": map[string]any{
						"@type":              "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
						"common_tls_context": common,
					},
				},
			}},
		},
	}
}

// TestEnvoyAcceptsLeaf runs `envoy --mode validate` on a bootstrap that loads an issued
// chain and key and the bundle, for a root and an intermediate; the same with the key of
// another workload must be refused, which shows that validation loads the certificates.
func TestEnvoyAcceptsLeaf(t *testing.T) {
	envoy := envoyBin(t)
	mats := byoMaterials(t)
	for _, tc := range []struct {
		name     string
		m        Material
		wrongKey bool
	}{
		{"generated root", mats[0].m, false},
		{"intermediate", mats[3].m, false},
		{"another workload's key", mats[0].m, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.m, Options{})
			if err != nil {
				t.Fatal(err)
			}
			l, err := a.Issue(podA)
			if err != nil {
				t.Fatal(err)
			}
			key := l.KeyPEM
			if tc.wrongKey {
				other, err := a.Issue(Workload{Namespace: "apps", ServiceAccount: "app-2", PodName: "p", PodUID: "u"})
				if err != nil {
					t.Fatal(err)
				}
				key = other.KeyPEM
			}
			b, err := json.Marshal(tlsBootstrap(l.ChainPEM, key, a.Bundle(), l.SPIFFEID))
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "bootstrap.json")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, envoy, "--mode", "validate", "-c", path, "--log-level", "warn").CombinedOutput()
			switch {
			case tc.wrongKey && err == nil:
				t.Fatalf("Envoy accepted a key that is not the certificate's:\n%s", out)
			case tc.wrongKey && !strings.Contains(string(out), "KEY_VALUES_MISMATCH"):
				t.Fatalf("Envoy refused the config, but not for the key:\n%s", out)
			case !tc.wrongKey && err != nil:
				t.Fatalf("envoy --mode validate: %v\n%s", err, out)
			}
		})
	}
}
