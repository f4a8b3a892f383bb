package deploy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	bkdiscovery "github.com/bearkong/bearkong/pkg/discovery"
)

// TestSidecarBootstrap runs each app's init container as its manifest declares it (the
// bearkong binary with the container's args and only the container's environment, the
// downward API resolved as the kubelet would, each volume a temporary directory holding
// what the kubelet would put there: nothing for the emptyDir, a CA root generated here
// for bearkong's ConfigMap, a token for the projected ServiceAccount token), then checks
// the bootstrap it wrote and has Envoy, with the sidecar container's own args, validate
// it. The installed Envoy must be the version of the manifests' sidecar image.
func TestSidecarBootstrap(t *testing.T) {
	b := binaries(t)
	rootPEM := testRootPEM(t)
	// A token has a JWT's shape; nothing here verifies it (bearkong does, with TokenReview).
	const token = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYmVhcmtvbmciXX0.c2lnbmF0dXJl"
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.envoy, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --version: %v\n%s", err, out)
	}
	for name, a := range apps(t) {
		t.Run(name, func(t *testing.T) {
			spec := a.deploy.Spec.Template.Spec
			podName := name + "-5d8f7c9b6-x2x4z"
			namespace := a.deploy.Namespace
			init := spec.InitContainers[0]
			sidecar := container(t, spec, "envoy")

			_, tag, _ := strings.Cut(sidecar.Image, ":")
			if !strings.Contains(string(out), "/"+strings.TrimPrefix(tag, "v")+"/") {
				t.Errorf("sidecar image %s, but the tests run Envoy %s", sidecar.Image, strings.TrimSpace(string(out)))
			}

			volumes := map[string]string{} // volume name -> local directory
			for _, v := range spec.Volumes {
				dir := filepath.Join(t.TempDir(), v.Name)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				volumes[v.Name] = dir
				files := map[string]string{}
				switch {
				case v.EmptyDir != nil:
				case v.ConfigMap != nil && v.ConfigMap.Name == bkdiscovery.RootConfigMapName && len(v.ConfigMap.Items) == 0:
					// Every key of the ConfigMap, as bearkong publishes it.
					files[bkdiscovery.RootConfigMapKey] = string(rootPEM)
				case v.Projected != nil:
					for _, src := range v.Projected.Sources {
						if src.ServiceAccountToken == nil {
							t.Fatalf("volume %s: only serviceAccountToken sources are provided here", v.Name)
						}
						files[src.ServiceAccountToken.Path] = token
					}
				default:
					t.Fatalf("volume %s: only an emptyDir, ConfigMap %s and projected tokens are provided here", v.Name, bkdiscovery.RootConfigMapName)
				}
				for name, data := range files {
					if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}

			env := []string{}
			for _, e := range init.Env {
				v := e.Value
				if e.ValueFrom != nil {
					switch f := e.ValueFrom.FieldRef; {
					case f != nil && f.FieldPath == "metadata.name":
						v = podName
					case f != nil && f.FieldPath == "metadata.namespace":
						v = namespace
					case f != nil && f.FieldPath == "metadata.labels['app']":
						v = a.deploy.Spec.Template.Labels["app"]
					default:
						t.Fatalf("env %s: only metadata.name, metadata.namespace and metadata.labels['app'] are resolved here", e.Name)
					}
				}
				env = append(env, e.Name+"="+v)
			}
			cmd := exec.CommandContext(ctx, b.bearkong, localArgs(t, init, volumes)...)
			cmd.Env = env
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", cmd, err, out)
			}

			path := localPath(t, sidecar, volumes, "/etc/envoy/envoy.json")
			raw, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("the init container wrote no bootstrap where the sidecar reads it: %v", err)
			}
			var bs struct {
				Node struct {
					ID       string            `json:"id"`
					Metadata map[string]string `json:"metadata"`
				} `json:"node"`
				StatsConfig struct {
					StatsTags []struct {
						TagName    string `json:"tagName"`
						FixedValue string `json:"fixedValue"`
					} `json:"statsTags"`
				} `json:"statsConfig"`
				Admin struct {
					Address struct {
						SocketAddress struct {
							Address   string `json:"address"`
							PortValue int    `json:"portValue"`
						} `json:"socketAddress"`
					} `json:"address"`
				} `json:"admin"`
			}
			if err := json.Unmarshal(raw, &bs); err != nil {
				t.Fatal(err)
			}
			if want := podName + "." + namespace; bs.Node.ID != want {
				t.Errorf("node id %q, want %q", bs.Node.ID, want)
			}
			if md := bs.Node.Metadata; md["listen_ip"] != "0.0.0.0" || md["app_address"] != "127.0.0.1:9090" {
				t.Errorf("node metadata %v, want listen_ip 0.0.0.0 and app_address 127.0.0.1:9090", md)
			}
			// The golden-signal labels name the workload by its app label, the Service's
			// name in the demo, not by the pod's generated name.
			tags := map[string]string{}
			for _, tag := range bs.StatsConfig.StatsTags {
				tags[tag.TagName] = tag.FixedValue
			}
			if tags["mesh_workload"] != name || tags["mesh_namespace"] != namespace {
				t.Errorf("stats tags %v, want mesh_workload=%s and mesh_namespace=%s", tags, name, namespace)
			}
			if sa := bs.Admin.Address.SocketAddress; sa.Address != "0.0.0.0" || sa.PortValue != 8081 {
				t.Errorf("admin %s:%d, want 0.0.0.0:8081 (scraped by Prometheus)", sa.Address, sa.PortValue)
			}
			// A gRPC target (the secure channel), or a cluster's address and port.
			if !strings.Contains(string(raw), `"bearkong.bearkong-system.svc:5000"`) &&
				(!strings.Contains(string(raw), `"bearkong.bearkong-system.svc"`) || !strings.Contains(string(raw), `"portValue": 5000`)) {
				t.Errorf("the bootstrap does not point at bearkong.bearkong-system.svc:5000:\n%s", raw)
			}

			// The root is inlined (Envoy's container does not mount the ConfigMap); the
			// token is named by its path, which Envoy reads at every stream, so Envoy's
			// container must mount the same volume at the same place. (Here the paths
			// are the volumes' local directories, as for every path in the args.)
			tokenFile := localPath(t, init, volumes, flagValue(t, init.Args, "--xds-token-file"))
			if localPath(t, sidecar, volumes, flagValue(t, init.Args, "--xds-token-file")) != tokenFile {
				t.Errorf("the envoy container does not see the init container's %s", flagValue(t, init.Args, "--xds-token-file"))
			}
			var doc any
			if err := json.Unmarshal(raw, &doc); err != nil {
				t.Fatal(err)
			}
			strs := jsonStrings(doc)
			if !slices.Contains(strs, tokenFile) {
				t.Errorf("the bootstrap does not name the token file %s", tokenFile)
			}
			if !slices.ContainsFunc(strs, func(s string) bool {
				dec, _ := base64.StdEncoding.DecodeString(s) // bytes fields are base64 in JSON
				return s == string(rootPEM) || string(dec) == string(rootPEM)
			}) {
				t.Errorf("the bootstrap does not inline the root of %s", flagValue(t, init.Args, "--xds-ca-file"))
			}

			args := append(localArgs(t, sidecar, volumes), "--mode", "validate", "--log-level", "warn")
			vcmd := exec.CommandContext(ctx, b.envoy, args...)
			if out, err := vcmd.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", vcmd, err, out)
			}
		})
	}
}

// testRootPEM returns a self-signed CA certificate, PEM-encoded: what ConfigMap
// bearkong-ca-root holds.
func testRootPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "bearkong test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// flagValue returns the value that follows name in args.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("args %q: no %s", args, name)
	}
	return args[i+1]
}

// jsonStrings returns every string value in a decoded JSON document.
func jsonStrings(v any) []string {
	switch v := v.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
		return out
	case map[string]any:
		var out []string
		for _, e := range v {
			out = append(out, jsonStrings(e)...)
		}
		return out
	}
	return nil
}

// container returns the pod's container with that name.
func container(t *testing.T, spec corev1.PodSpec, name string) corev1.Container {
	t.Helper()
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == name })
	if i < 0 {
		t.Fatalf("no container %s", name)
	}
	return spec.Containers[i]
}

// localArgs returns the container's args with every path under one of its volume mounts
// moved to the volume's local directory.
func localArgs(t *testing.T, c corev1.Container, volumes map[string]string) []string {
	t.Helper()
	if len(c.Command) > 0 {
		t.Fatalf("container %s: command %q overrides the image's entrypoint; this test runs args only", c.Name, c.Command)
	}
	out := make([]string, len(c.Args))
	for i, a := range c.Args {
		out[i] = a
		if strings.HasPrefix(a, "/") {
			out[i] = localPath(t, c, volumes, a)
		}
	}
	return out
}

// localPath maps a path inside the container to the local directory of the volume mounted
// there.
func localPath(t *testing.T, c corev1.Container, volumes map[string]string, path string) string {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/"); ok {
			dir, ok := volumes[m.Name]
			if !ok {
				t.Fatalf("container %s mounts unknown volume %s", c.Name, m.Name)
			}
			return filepath.Join(dir, rel)
		}
	}
	t.Fatalf("container %s: %s is on no volume mount", c.Name, path)
	return ""
}
