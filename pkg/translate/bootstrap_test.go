package translate

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestBootstrapErrors(t *testing.T) {
	valid := BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: "127.0.0.1:18000"}
	with := func(f func(*BootstrapOptions)) BootstrapOptions {
		o := valid
		f(&o)
		return o
	}
	for _, tc := range []struct {
		name    string
		opts    BootstrapOptions
		wantErr []string
	}{
		{"valid", valid, nil},
		{"xds by DNS name", with(func(o *BootstrapOptions) { o.XDSAddress = "bearkong.bearkong-system.svc.cluster.local:18000" }), nil},
		{"xds by IPv6", with(func(o *BootstrapOptions) { o.XDSAddress = "[::1]:18000" }), nil},
		{"missing xds", with(func(o *BootstrapOptions) { o.XDSAddress = "" }), []string{"translate: bootstrap:", "xds address is required"}},
		{"xds without port", with(func(o *BootstrapOptions) { o.XDSAddress = "bearkong" }), []string{`xds address "bearkong" is not host:port`}},
		{"xds bad port", with(func(o *BootstrapOptions) { o.XDSAddress = "bearkong:grpc" }), []string{`port "grpc" is not in 1-65535`}},
		{"xds bad host", with(func(o *BootstrapOptions) { o.XDSAddress = "Bear_Kong:18000" }), []string{`"Bear_Kong" is neither an IP address nor a DNS name`}},
		{"xds IPv6 zone", with(func(o *BootstrapOptions) { o.XDSAddress = "[fe80::1%eth0]:18000" }), []string{"zones are not supported"}},
		{"missing pod name", with(func(o *BootstrapOptions) { o.PodName = "" }), []string{"pod name is missing"}},
		{"missing namespace", with(func(o *BootstrapOptions) { o.PodNamespace = "" }), []string{"pod namespace is missing"}},
		{"bad pod name", with(func(o *BootstrapOptions) { o.PodName = "App_1" }), []string{`pod name "App_1" is not a valid Kubernetes pod name`}},
		{"bad listen IP", with(func(o *BootstrapOptions) { o.ListenIP = "pod.local" }), []string{`listen IP "pod.local" is not an IP address`}},
		{"bad outbound IP", with(func(o *BootstrapOptions) { o.OutboundIP = "localhost" }), []string{`outbound IP "localhost" is not an IP address`}},
		{"bad app address", with(func(o *BootstrapOptions) { o.AppAddress = "localhost:9090" }), []string{`app address "localhost:9090": the host must be an IP address`}},
		{"admin by name", with(func(o *BootstrapOptions) { o.AdminAddress = "localhost:8081" }), []string{`admin address "localhost:8081": the host must be an IP address`}},
		{"every error at once", BootstrapOptions{ListenIP: "x"}, []string{"pod name is missing", "pod namespace is missing", `listen IP "x"`, "xds address is required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Bootstrap(tc.opts)
			if !errorContains(err, tc.wantErr) {
				t.Fatalf("Bootstrap error = %v, want one containing %q", err, tc.wantErr)
			}
			if err != nil {
				if b != nil {
					t.Errorf("Bootstrap returned a config along with error %v", err)
				}
				return
			}
			if err := b.ValidateAll(); err != nil {
				t.Errorf("bootstrap fails Envoy's proto constraints: %v", err)
			}
		})
	}
}

// TestBootstrapXDSCluster checks the discovery type of the control plane's cluster: a
// STATIC cluster cannot resolve a name, a STRICT_DNS one follows it.
func TestBootstrapXDSCluster(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want clusterv3.Cluster_DiscoveryType
	}{
		{"10.96.0.10:18000", clusterv3.Cluster_STATIC},
		{"[fd00::10]:18000", clusterv3.Cluster_STATIC},
		{"bearkong.bearkong-system.svc:18000", clusterv3.Cluster_STRICT_DNS},
		{"bearkong:18000", clusterv3.Cluster_STRICT_DNS},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			b, err := Bootstrap(BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: tc.addr})
			if err != nil {
				t.Fatal(err)
			}
			cs := b.GetStaticResources().GetClusters()
			if len(cs) != 1 || cs[0].GetName() != XDSClusterName {
				t.Fatalf("static clusters = %v, want only %q", cs, XDSClusterName)
			}
			if got := cs[0].GetType(); got != tc.want {
				t.Errorf("xds cluster type = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBootstrapNodeRoundTrip checks that what Bootstrap writes into the node is what
// ParseNode reads back on the control plane, also after a trip through JSON (the form
// the bootstrap takes on disk).
func TestBootstrapNodeRoundTrip(t *testing.T) {
	for _, tc := range bootstrapCases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Bootstrap(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			j, err := protojson.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			var back bootstrapv3.Bootstrap
			if err := protojson.Unmarshal(j, &back); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(b, &back, protocmp.Transform()); diff != "" {
				t.Fatalf("bootstrap changed through JSON (-before +after):\n%s", diff)
			}
			got, err := ParseNode(back.GetNode())
			if err != nil {
				t.Fatalf("ParseNode of the bootstrap's node: %v", err)
			}
			want := Node{
				ID:           tc.opts.PodName + "." + tc.opts.PodNamespace,
				PodName:      tc.opts.PodName,
				PodNamespace: tc.opts.PodNamespace,
				ListenIP:     tc.opts.ListenIP,
				OutboundIP:   tc.opts.OutboundIP,
				AppAddress:   tc.opts.AppAddress,
			}.withDefaults()
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ParseNode(Bootstrap().Node) (-want +got):\n%s", diff)
			}
			if back.GetNode().GetCluster() != NodeCluster {
				t.Errorf("node.cluster = %q, want %q", back.GetNode().GetCluster(), NodeCluster)
			}
		})
	}
}

// TestBootstrapEnvoyValidate has the real Envoy check each sample bootstrap, written as
// JSON and as YAML (JSON is YAML, so the same bytes go through Envoy's YAML loader too).
func TestBootstrapEnvoyValidate(t *testing.T) {
	envoy := envoyBinary(t)
	for _, tc := range bootstrapCases {
		b, err := Bootstrap(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, ext := range []string{"json", "yaml"} {
			t.Run(tc.name+"."+ext, func(t *testing.T) {
				t.Parallel()
				envoyValidate(t, envoy, ext, b)
			})
		}
	}
}

// envoyValidate writes b to a file with extension ext and runs `envoy --mode validate`
// on it, failing on any error or deprecation warning. Validate mode parses the config and builds every listener, cluster and filter
// without binding a port or connecting anywhere.
func envoyValidate(t *testing.T, envoy, ext string, b proto.Message) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bootstrap."+ext)
	if err := os.WriteFile(path, stableJSON(t, b), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, envoy, "--mode", "validate", "-c", path, "--disable-hot-restart", "--log-level", "warn")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("envoy --mode validate -c %s: %v\n%s", filepath.Base(path), err, out)
	}
	if !strings.Contains(string(out), "OK") {
		t.Errorf("envoy --mode validate did not say OK:\n%s", out)
	}
	// Envoy logs a warning for each deprecated field it meets; a later release rejects
	// them, so none may be used.
	if strings.Contains(strings.ToLower(string(out)), "deprecated") {
		t.Errorf("envoy warns about a deprecated field:\n%s", out)
	}
}
