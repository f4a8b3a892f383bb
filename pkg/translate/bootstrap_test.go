package translate

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpccredentialv3 "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
)

func TestBootstrapErrors(t *testing.T) {
	valid := BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: "127.0.0.1:18000", XDSInsecure: true}
	secure := BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: "bearkong.bearkong-system.svc:5000", XDSRootCA: []byte(testRootPEM), XDSTokenFile: "/var/run/secrets/bearkong/token"}
	withSecure := func(f func(*BootstrapOptions)) BootstrapOptions {
		o := secure
		f(&o)
		return o
	}
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
		{"xds replicas by IP", with(func(o *BootstrapOptions) { o.XDSAddress = "10.0.0.1:5000,10.0.0.2:5000" }), nil},
		{"xds replicas by name", with(func(o *BootstrapOptions) { o.XDSAddress = "bearkong-0.bearkong:5000, bearkong-1.bearkong:5000" }), nil},
		{"xds empty item", with(func(o *BootstrapOptions) { o.XDSAddress = "10.0.0.1:5000,,10.0.0.2:5000" }), []string{`xds address "10.0.0.1:5000,,10.0.0.2:5000" has an empty item`}},
		{"xds trailing comma", with(func(o *BootstrapOptions) { o.XDSAddress = "10.0.0.1:5000," }), []string{"has an empty item"}},
		{"xds only commas", with(func(o *BootstrapOptions) { o.XDSAddress = " , " }), []string{"has an empty item"}},
		{"xds duplicate", with(func(o *BootstrapOptions) { o.XDSAddress = "10.0.0.1:5000,10.0.0.1:5000" }), []string{`xds address "10.0.0.1:5000" is listed twice`}},
		{"xds duplicate IPv6 spelled twice", with(func(o *BootstrapOptions) { o.XDSAddress = "[fd00::1]:5000,[fd00:0::1]:5000" }), []string{`"[fd00:0::1]:5000" is listed twice`}},
		{"xds mixed names and IPs", with(func(o *BootstrapOptions) { o.XDSAddress = "bearkong:5000,10.0.0.2:5000" }), []string{"mix IP addresses and DNS names"}},
		{"xds bad item in a list", with(func(o *BootstrapOptions) { o.XDSAddress = "10.0.0.1:5000,nope" }), []string{`xds address "nope" is not host:port`}},
		{"missing pod name", with(func(o *BootstrapOptions) { o.PodName = "" }), []string{"pod name is missing"}},
		{"missing namespace", with(func(o *BootstrapOptions) { o.PodNamespace = "" }), []string{"pod namespace is missing"}},
		{"bad pod name", with(func(o *BootstrapOptions) { o.PodName = "App_1" }), []string{`pod name "App_1" is not a valid Kubernetes pod name`}},
		{"bad workload", with(func(o *BootstrapOptions) { o.Workload = "app 1" }), []string{`workload "app 1" is not a valid Kubernetes label value`}},
		{"workload too long for a label value", with(func(o *BootstrapOptions) { o.Workload = strings.Repeat("a", 64) }), []string{"is not a valid Kubernetes label value"}},
		{"bad listen IP", with(func(o *BootstrapOptions) { o.ListenIP = "pod.local" }), []string{`listen IP "pod.local" is not an IP address`}},
		{"bad outbound IP", with(func(o *BootstrapOptions) { o.OutboundIP = "localhost" }), []string{`outbound IP "localhost" is not an IP address`}},
		{"bad app address", with(func(o *BootstrapOptions) { o.AppAddress = "localhost:9090" }), []string{`app address "localhost:9090": the host must be an IP address`}},
		{"admin by name", with(func(o *BootstrapOptions) { o.AdminAddress = "localhost:8081" }), []string{`admin address "localhost:8081": the host must be an IP address`}},
		{"every error at once", BootstrapOptions{ListenIP: "x"}, []string{"pod name is missing", "pod namespace is missing", `listen IP "x"`, "xds address is required"}},
		{"secure", secure, nil},
		{"secure by IP with a server name", withSecure(func(o *BootstrapOptions) {
			o.XDSAddress = "10.96.0.10:5000"
			o.XDSServerName = "bearkong.bearkong-system.svc"
		}), nil},
		{"secure is the default: no root", withSecure(func(o *BootstrapOptions) { o.XDSRootCA = nil }), []string{"xds root CA is required"}},
		{"secure is the default: no token", withSecure(func(o *BootstrapOptions) { o.XDSTokenFile = "" }), []string{"xds token file is required"}},
		{"secure: nothing", withSecure(func(o *BootstrapOptions) { o.XDSTokenFile = ""; o.XDSRootCA = nil }), []string{"xds token file is required", "xds root CA is required"}},
		{"secure: root not PEM", withSecure(func(o *BootstrapOptions) { o.XDSRootCA = []byte("not a cert") }), []string{"xds root CA holds no PEM certificate"}},
		{"secure: root is a key", withSecure(func(o *BootstrapOptions) {
			o.XDSRootCA = []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
		}), []string{`a PEM block of type "PRIVATE KEY"`}},
		{"secure: relative token path", withSecure(func(o *BootstrapOptions) { o.XDSTokenFile = "token" }), []string{`xds token file "token" must be an absolute path`}},
		{"secure replicas with a server name", withSecure(func(o *BootstrapOptions) {
			o.XDSAddress = "10.244.0.7:5000,10.244.1.9:5000"
			o.XDSServerName = "bearkong.bearkong-system.svc"
		}), nil},
		{"secure replicas on one host", withSecure(func(o *BootstrapOptions) { o.XDSAddress = "127.0.0.1:5000,127.0.0.1:5001" }), nil},
		{"secure replicas of different hosts need a server name", withSecure(func(o *BootstrapOptions) { o.XDSAddress = "10.244.0.7:5000,10.244.1.9:5000" }),
			[]string{"xds server name is required with xds addresses of different hosts"}},
		{"secure replicas by name", withSecure(func(o *BootstrapOptions) { o.XDSAddress = "bearkong-0.bearkong:5000,bearkong-1.bearkong:5000" }),
			[]string{`several xds addresses must be IP addresses in the secure mode`}},
		{"secure replicas of both families", withSecure(func(o *BootstrapOptions) {
			o.XDSAddress = "10.244.0.7:5000,[fd00::7]:5000"
			o.XDSServerName = "bearkong.bearkong-system.svc"
		}), []string{"all IPv4 or all IPv6"}},
		{"secure: bad server name", withSecure(func(o *BootstrapOptions) { o.XDSServerName = "Bear_Kong" }), []string{`xds server name "Bear_Kong" is neither`}},
		{"delta", with(func(o *BootstrapOptions) { o.XDSProtocol = XDSProtocolDelta }), nil},
		{"sotw", with(func(o *BootstrapOptions) { o.XDSProtocol = XDSProtocolSotW }), nil},
		{"secure delta", withSecure(func(o *BootstrapOptions) { o.XDSProtocol = XDSProtocolDelta }), nil},
		{"unknown xds protocol", with(func(o *BootstrapOptions) { o.XDSProtocol = "incremental" }),
			[]string{`xds protocol "incremental" is not one of: sotw, delta`}},
		{"xds protocol is case-sensitive", withSecure(func(o *BootstrapOptions) { o.XDSProtocol = "Delta" }),
			[]string{`xds protocol "Delta" is not one of: sotw, delta`}},
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
			b, err := Bootstrap(BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: tc.addr, XDSInsecure: true})
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

// testRootPEM is a fixed root certificate (P-256, valid until 2126), so that the golden
// bootstrap that inlines it does not change from run to run. Its key is thrown away.
const testRootPEM = `-----BEGIN CERTIFICATE-----
MIIBpTCCAUugAwIBAgIUDwetuUJ6eYX4sBlGuLEP3NZIWyIwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUYmVhcmtvbmcgZ29sZGVuIHJvb3QwIBcNMjYxMjAxMDM0NTMx
WhgPMjEyNjExMDcwMzQ1MzFaMB8xHTAbBgNVBAMMFGJlYXJrb25nIGdvbGRlbiBy
b290MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAAhuVMocBlkIqLu1vSUsJO7e
MCikWcQ5uMr+s7tryV9XUfSXocG6W1GP/VWpoeOHgwHisZtof3QAGSSO6YdFDaNj
MGEwHQYDVR0OBBYEFCzs30O4SVvce8TF7MIM6Im93ji7MB8GA1UdIwQYMBaAFCzs
30O4SVvce8TF7MIM6Im93ji7MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQD
AgIEMAoGCCqGSM49BAMCA0gAMEUCIQCiK6P4ervyMYIX96HIwWPdupga4X3qyB9C
xGIzAXsb4wIgfVSH2qJLpOL8HefzXNSBSlAnLRJgjKXHLVvDUWa21xU=
-----END CERTIFICATE-----
`

// TestBootstrapSecureChannel checks the shape of the secure ADS channel: Google gRPC with
// TLS against the inlined root, the server name checked (by default the host of the xDS
// address), the token file as call credentials, the keepalive of the insecure mode, and
// no cluster to the control plane.
func TestBootstrapSecureChannel(t *testing.T) {
	for _, tc := range []struct {
		name, addr, serverName, wantName string
	}{
		{"name from the address", "bearkong.bearkong-system.svc:5000", "", "bearkong.bearkong-system.svc"},
		{"explicit name", "10.96.0.10:5000", "bearkong.bearkong-system.svc.cluster.local", "bearkong.bearkong-system.svc.cluster.local"},
		{"IP", "10.96.0.10:5000", "", "10.96.0.10"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Bootstrap(BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: tc.addr, XDSServerName: tc.serverName,
				XDSRootCA: []byte(testRootPEM), XDSTokenFile: "/var/run/secrets/bearkong/token"})
			if err != nil {
				t.Fatal(err)
			}
			if cs := b.GetStaticResources().GetClusters(); len(cs) != 0 {
				t.Errorf("static clusters %v, want none (Google gRPC dials the control plane)", cs)
			}
			gs := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()
			if len(gs) != 1 || gs[0].GetGoogleGrpc() == nil {
				t.Fatalf("ADS gRPC services %v, want one Google gRPC", gs)
			}
			g := gs[0].GetGoogleGrpc()
			if g.GetTargetUri() != tc.addr {
				t.Errorf("target %q, want %q", g.GetTargetUri(), tc.addr)
			}
			if got := string(g.GetChannelCredentials().GetSslCredentials().GetRootCerts().GetInlineBytes()); got != testRootPEM {
				t.Errorf("root certs %q, want the inlined root", got)
			}
			args := g.GetChannelArgs().GetArgs()
			if got := args["grpc.ssl_target_name_override"].GetStringValue(); got != tc.wantName {
				t.Errorf("server name %q, want %q", got, tc.wantName)
			}
			if got := args["grpc.keepalive_time_ms"].GetIntValue(); got != xdsKeepaliveInterval.Milliseconds() {
				t.Errorf("keepalive time %d ms, want %d", got, xdsKeepaliveInterval.Milliseconds())
			}
			if got := args["grpc.keepalive_timeout_ms"].GetIntValue(); got != xdsKeepaliveTimeout.Milliseconds() {
				t.Errorf("keepalive timeout %d ms, want %d", got, xdsKeepaliveTimeout.Milliseconds())
			}
			for arg, want := range map[string]time.Duration{
				"grpc.initial_reconnect_backoff_ms": xdsReconnectInitial,
				"grpc.max_reconnect_backoff_ms":     xdsReconnectMax,
				"grpc.min_reconnect_backoff_ms":     xdsConnectTimeout,
			} {
				if got := args[arg].GetIntValue(); got != want.Milliseconds() {
					t.Errorf("%s %d, want %d", arg, got, want.Milliseconds())
				}
			}
			if got, want := args["grpc.service_config"].GetStringValue(), xdsServiceConfig(false); got != want {
				t.Errorf("service config %s, want %s (one xds address keeps gRPC's default pick_first)", got, want)
			}
			cc := g.GetCallCredentials()
			if len(cc) != 1 || cc[0].GetFromPlugin().GetName() != fileBasedMetadata || g.GetCredentialsFactoryName() != fileBasedMetadata {
				t.Fatalf("call credentials %v (factory %q), want the file_based_metadata plugin", cc, g.GetCredentialsFactoryName())
			}
			var fbm grpccredentialv3.FileBasedMetadataConfig
			if err := cc[0].GetFromPlugin().GetTypedConfig().UnmarshalTo(&fbm); err != nil {
				t.Fatal(err)
			}
			if fbm.GetSecretData().GetFilename() != "/var/run/secrets/bearkong/token" || fbm.GetHeaderPrefix() != "Bearer " || fbm.GetHeaderKey() != "" {
				t.Errorf("file_based_metadata %v, want the token file with prefix \"Bearer \" in authorization", &fbm)
			}
			if err := b.ValidateAll(); err != nil {
				t.Errorf("bootstrap fails Envoy's proto constraints: %v", err)
			}
		})
	}
}

// TestBootstrapXDSAddresses checks how one or several control-plane addresses reach
// each mode: the insecure mode's cluster (type, one endpoint per address) and the secure
// mode's gRPC target, load-balancing policy and server name.
func TestBootstrapXDSAddresses(t *testing.T) {
	type endpoint struct {
		Host string
		Port uint32
	}
	for _, tc := range []struct {
		name, addr string
		// insecure mode
		wantType      clusterv3.Cluster_DiscoveryType
		wantEndpoints []endpoint
		// secure mode
		wantTarget, wantLB, wantServerName string
	}{
		{"one IP", "10.96.0.10:5000", clusterv3.Cluster_STATIC, []endpoint{{"10.96.0.10", 5000}}, "10.96.0.10:5000", "", "10.96.0.10"},
		{"one name", "bearkong.bearkong-system.svc:5000", clusterv3.Cluster_STRICT_DNS, []endpoint{{"bearkong.bearkong-system.svc", 5000}},
			"bearkong.bearkong-system.svc:5000", "", "bearkong.bearkong-system.svc"},
		{"two IPv4", "127.0.0.1:5000, 127.0.0.1:5001", clusterv3.Cluster_STATIC, []endpoint{{"127.0.0.1", 5000}, {"127.0.0.1", 5001}},
			"ipv4:127.0.0.1:5000,127.0.0.1:5001", "round_robin", "127.0.0.1"},
		{"two IPv6", "[fd00::7]:5000,[fd00::9]:5000", clusterv3.Cluster_STATIC, []endpoint{{"fd00::7", 5000}, {"fd00::9", 5000}},
			"ipv6:[fd00::7]:5000,[fd00::9]:5000", "round_robin", ""},
		{"two names", "bearkong-0.bearkong:5000,bearkong-1.bearkong:5000", clusterv3.Cluster_STRICT_DNS,
			[]endpoint{{"bearkong-0.bearkong", 5000}, {"bearkong-1.bearkong", 5000}}, "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Bootstrap(BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: tc.addr, XDSInsecure: true})
			if err != nil {
				t.Fatal(err)
			}
			cs := b.GetStaticResources().GetClusters()
			if len(cs) != 1 || cs[0].GetName() != XDSClusterName {
				t.Fatalf("static clusters = %v, want only %q", cs, XDSClusterName)
			}
			if got := cs[0].GetType(); got != tc.wantType {
				t.Errorf("xds cluster type = %v, want %v", got, tc.wantType)
			}
			var got []endpoint
			for _, l := range cs[0].GetLoadAssignment().GetEndpoints() {
				for _, e := range l.GetLbEndpoints() {
					sa := e.GetEndpoint().GetAddress().GetSocketAddress()
					got = append(got, endpoint{sa.GetAddress(), sa.GetPortValue()})
				}
			}
			if diff := cmp.Diff(tc.wantEndpoints, got); diff != "" {
				t.Errorf("xds cluster endpoints (-want +got):\n%s", diff)
			}
			rp := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetRetryPolicy().GetRetryBackOff()
			if rp.GetBaseInterval().AsDuration() != XDSRetryBaseInterval || rp.GetMaxInterval().AsDuration() != XDSRetryMaxInterval {
				t.Errorf("ADS retry backoff %v, want %s..%s", rp, XDSRetryBaseInterval, XDSRetryMaxInterval)
			}
			if tc.wantTarget == "" {
				return
			}
			b, err = Bootstrap(BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: tc.addr,
				XDSServerName: map[bool]string{true: "bearkong.test"}[tc.wantServerName == ""],
				XDSRootCA:     []byte(testRootPEM), XDSTokenFile: "/var/run/secrets/bearkong/token"})
			if err != nil {
				t.Fatal(err)
			}
			g := b.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetGoogleGrpc()
			if g.GetTargetUri() != tc.wantTarget {
				t.Errorf("target %q, want %q", g.GetTargetUri(), tc.wantTarget)
			}
			args := g.GetChannelArgs().GetArgs()
			var sc struct {
				MethodConfig []struct {
					Name         []map[string]string
					WaitForReady bool
				}
				LoadBalancingConfig []map[string]struct{}
			}
			if err := json.Unmarshal([]byte(args["grpc.service_config"].GetStringValue()), &sc); err != nil {
				t.Fatalf("grpc.service_config: %v", err)
			}
			if len(sc.MethodConfig) != 1 || !sc.MethodConfig[0].WaitForReady ||
				!cmp.Equal(sc.MethodConfig[0].Name, []map[string]string{{"service": "envoy.service.discovery.v3.AggregatedDiscoveryService"}}) {
				t.Errorf("service config's method config %+v, want waitForReady on the ADS service", sc.MethodConfig)
			}
			var lb string
			for _, c := range sc.LoadBalancingConfig {
				for name := range c {
					lb += name
				}
			}
			if lb != tc.wantLB {
				t.Errorf("LB policy %q, want %q", lb, tc.wantLB)
			}
			wantName := tc.wantServerName
			if wantName == "" {
				wantName = "bearkong.test"
			}
			if got := args["grpc.ssl_target_name_override"].GetStringValue(); got != wantName {
				t.Errorf("server name %q, want %q", got, wantName)
			}
		})
	}
}

// TestBootstrapXDSProtocol checks that the protocol chosen reaches ads_config.api_type in
// both modes, and that nothing else of the ADS channel depends on it: the insecure mode
// keeps Envoy's gRPC client over the static cluster, the secure one Google gRPC.
func TestBootstrapXDSProtocol(t *testing.T) {
	insecure := BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: "127.0.0.1:18000", XDSInsecure: true}
	secure := BootstrapOptions{PodName: "p", PodNamespace: "ns", XDSAddress: "bearkong.bearkong-system.svc:5000", XDSRootCA: []byte(testRootPEM), XDSTokenFile: "/var/run/secrets/bearkong/token"}
	for _, mode := range []struct {
		name string
		opts BootstrapOptions
	}{{"insecure", insecure}, {"secure", secure}} {
		apiType := map[string]corev3.ApiConfigSource_ApiType{
			XDSProtocolSotW:  corev3.ApiConfigSource_GRPC,
			XDSProtocolDelta: corev3.ApiConfigSource_DELTA_GRPC,
		}
		for _, tc := range []struct {
			name, protocol string
		}{
			{"default", ""},
			{"sotw", XDSProtocolSotW},
			{"delta", XDSProtocolDelta},
		} {
			want, ok := apiType[cmpOr(tc.protocol, DefaultXDSProtocol)]
			if !ok {
				t.Fatalf("DefaultXDSProtocol %q is neither protocol", DefaultXDSProtocol)
			}
			t.Run(mode.name+"/"+tc.name, func(t *testing.T) {
				o := mode.opts
				o.XDSProtocol = tc.protocol
				b, err := Bootstrap(o)
				if err != nil {
					t.Fatal(err)
				}
				ads := b.GetDynamicResources().GetAdsConfig()
				if got := ads.GetApiType(); got != want {
					t.Errorf("ads_config.api_type = %v, want %v", got, want)
				}
				// The rest of the bootstrap is the same whatever the protocol.
				o.XDSProtocol = XDSProtocolSotW
				sotw, err := Bootstrap(o)
				if err != nil {
					t.Fatal(err)
				}
				sotw.GetDynamicResources().GetAdsConfig().ApiType = want
				if diff := cmp.Diff(sotw, b, protocmp.Transform()); diff != "" {
					t.Errorf("the bootstrap differs beyond api_type (-sotw +%s):\n%s", tc.name, diff)
				}
			})
		}
	}
}

// cmpOr is the standard library's cmp.Or, which go-cmp's name hides here.
func cmpOr(s, def string) string {
	if s != "" {
		return s
	}
	return def
}
