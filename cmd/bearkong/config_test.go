package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/resource"
)

func addr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func lbEndpoint(ip string, h corev3.HealthStatus, weight uint32) *endpointv3.LbEndpoint {
	e := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: addr(ip, 8000)}}, HealthStatus: h}
	if weight > 0 {
		e.LoadBalancingWeight = wrapperspb.UInt32(weight)
	}
	return e
}

// meshConfig is the config of one proxy as bearkong builds it, and as Envoy dumps it.
type meshConfig struct {
	clusters  []*clusterv3.Cluster
	endpoints []*endpointv3.ClusterLoadAssignment
	listeners []*listenerv3.Listener
	routes    []*routev3.RouteConfiguration
	secrets   []*tlsv3.Secret
}

func testConfig() meshConfig {
	eds := &clusterv3.Cluster{Name: "app-2.default", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}}
	local := &clusterv3.Cluster{Name: "local-app", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "local-app", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("127.0.0.1", 0, 0)}}}}}
	return meshConfig{
		clusters: []*clusterv3.Cluster{eds, local},
		endpoints: []*endpointv3.ClusterLoadAssignment{{ClusterName: "app-2.default", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint("10.0.0.3", corev3.HealthStatus_DRAINING, 0), lbEndpoint("10.0.0.2", 0, 0)}}}}},
		listeners: []*listenerv3.Listener{{Name: "inbound", Address: addr("0.0.0.0", 8000)}},
		routes:    []*routev3.RouteConfiguration{{Name: "outbound", VirtualHosts: []*routev3.VirtualHost{{Name: "app-2", Domains: []string{"app-2"}}}}},
		secrets: []*tlsv3.Secret{{Name: "workload", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("-----BEGIN CERTIFICATE-----")}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("-----BEGIN PRIVATE KEY-----")}},
		}}}},
	}
}

// proxyConfig is /debug/config's answer for c, as the control plane encodes it.
func (c meshConfig) proxyConfig(t *testing.T) controlplane.ProxyConfig {
	t.Helper()
	pc := controlplane.ProxyConfig{Node: "app-1-0.default", Pod: "app-1-0", Namespace: "default", PodIP: "127.0.1.2"}
	add := func(typ resource.Type, msgs ...proto.Message) {
		tc := controlplane.TypeConfig{Type: typ.String(), TypeURL: typ.URL(), Version: "v-" + typ.String()}
		for _, m := range msgs {
			m = proto.Clone(m)
			controlplane.Redact(m)
			b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			tc.Resources = append(tc.Resources, controlplane.ResourceConfig{Name: resourceName(m), Hash: "h-" + resourceName(m), Resource: b})
		}
		pc.Types = append(pc.Types, tc)
	}
	add(resource.Cluster, msgs(c.clusters)...)
	add(resource.Endpoint, msgs(c.endpoints)...)
	add(resource.Listener, msgs(c.listeners)...)
	add(resource.Route, msgs(c.routes)...)
	add(resource.Secret, msgs(c.secrets)...)
	return pc
}

func msgs[M proto.Message](ms []M) []proto.Message {
	out := make([]proto.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// envoyAdmin serves /config_dump?resource= for c the way Envoy 1.36 does: clusters,
// listeners, routes as received with the version of their response; secrets redacted;
// an assignment for every cluster, rebuilt from its hosts (coarse health, weight 1,
// empty locality, default policy).
func envoyAdmin(t *testing.T, c meshConfig, version string) *httptest.Server {
	t.Helper()
	sections := map[string][]proto.Message{}
	for _, cl := range c.clusters {
		sections["dynamic_active_clusters"] = append(sections["dynamic_active_clusters"], &adminv3.ClustersConfigDump_DynamicCluster{VersionInfo: version, Cluster: mustAny(t, cl)})
	}
	rebuilt := func(cla *endpointv3.ClusterLoadAssignment) *endpointv3.ClusterLoadAssignment {
		out := &endpointv3.ClusterLoadAssignment{ClusterName: cla.GetClusterName(), Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(140)}}
		for _, l := range cla.GetEndpoints() {
			ll := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{}, Priority: l.GetPriority(), LoadBalancingWeight: wrapperspb.UInt32(0)}
			for i := len(l.GetLbEndpoints()) - 1; i >= 0; i-- { // in another order
				e := l.GetLbEndpoints()[i]
				ll.LbEndpoints = append(ll.LbEndpoints, &endpointv3.LbEndpoint{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: e.GetEndpoint().GetAddress(), HealthCheckConfig: &endpointv3.Endpoint_HealthCheckConfig{}}},
					HealthStatus:   coarseHealth(e.GetHealthStatus()), LoadBalancingWeight: wrapperspb.UInt32(1),
				})
			}
			out.Endpoints = append(out.Endpoints, ll)
		}
		return out
	}
	for _, cla := range c.endpoints {
		sections["dynamic_endpoint_configs"] = append(sections["dynamic_endpoint_configs"], &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: mustAny(t, rebuilt(cla))})
	}
	for _, cl := range c.clusters {
		if cl.GetLoadAssignment() != nil {
			sections["dynamic_endpoint_configs"] = append(sections["dynamic_endpoint_configs"], &adminv3.EndpointsConfigDump_DynamicEndpointConfig{EndpointConfig: mustAny(t, rebuilt(cl.GetLoadAssignment()))})
		}
	}
	for _, l := range c.listeners {
		sections["dynamic_listeners"] = append(sections["dynamic_listeners"], &adminv3.ListenersConfigDump_DynamicListener{Name: l.GetName(),
			ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{VersionInfo: version, Listener: mustAny(t, l)}})
	}
	for _, r := range c.routes {
		sections["dynamic_route_configs"] = append(sections["dynamic_route_configs"], &adminv3.RoutesConfigDump_DynamicRouteConfig{VersionInfo: version, RouteConfig: mustAny(t, r)})
	}
	for _, s := range c.secrets {
		s = proto.Clone(s).(*tlsv3.Secret)
		if k := s.GetTlsCertificate().GetPrivateKey(); k != nil {
			k.Specifier = &corev3.DataSource_InlineBytes{InlineBytes: []byte("[redacted]")}
		}
		sections["dynamic_active_secrets"] = append(sections["dynamic_active_secrets"], &adminv3.SecretsConfigDump_DynamicSecret{Name: s.GetName(), VersionInfo: version, Secret: mustAny(t, s)})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sec := r.URL.Query().Get("resource")
		if r.URL.Path != "/config_dump" || (sec == "dynamic_endpoint_configs" && !r.URL.Query().Has("include_eds")) {
			http.NotFound(w, r)
			return
		}
		var dump adminv3.ConfigDump
		for _, m := range sections[sec] {
			dump.Configs = append(dump.Configs, mustAny(t, m))
		}
		b, err := protojson.Marshal(&dump)
		if err != nil {
			t.Error(err)
		}
		w.Write(b)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestDiffConfig(t *testing.T) {
	ours := testConfig()
	cases := []struct {
		name   string
		envoy  func(*meshConfig)
		report []string // lines of the report, in order
	}{
		{"in sync", func(*meshConfig) {}, []string{
			"cds   in sync: 2 resources, bearkong version v-cds",
			"eds   in sync: 1 resources, bearkong version v-eds",
			"lds   in sync: 1 resources, bearkong version v-lds",
			"rds   in sync: 1 resources, bearkong version v-rds",
			"sds   in sync: 1 resources, bearkong version v-sds",
		}},
		{"held at an older version", func(c *meshConfig) {
			c.clusters = c.clusters[1:] // app-2.default not yet there, nor its endpoints
			c.endpoints = nil
			c.routes[0].VirtualHosts[0].Domains = []string{"app-2", "app-2.default"}
			c.listeners = append(c.listeners, &listenerv3.Listener{Name: "gone", Address: addr("0.0.0.0", 8002)})
		}, []string{
			"cds   DIFFERENT: 1 in sync, 1 missing in Envoy, 0 extra in Envoy, 0 different; bearkong version v-cds",
			"      missing in Envoy: app-2.default",
			"eds   DIFFERENT: 0 in sync, 1 missing in Envoy, 0 extra in Envoy, 0 different; bearkong version v-eds",
			"      missing in Envoy: app-2.default",
			"lds   DIFFERENT: 1 in sync, 0 missing in Envoy, 1 extra in Envoy, 0 different; bearkong version v-lds",
			"      extra in Envoy: gone",
			"rds   DIFFERENT: 0 in sync, 0 missing in Envoy, 0 extra in Envoy, 1 different; bearkong version v-rds",
			"      different: outbound (bearkong: content h-outbound, version v-rds; Envoy: version old)",
			"sds   in sync: 1 resources, bearkong version v-sds",
		}},
		{"an endpoint's weight and health", func(c *meshConfig) {
			c.endpoints[0].Endpoints[0].LbEndpoints[1] = lbEndpoint("10.0.0.2", corev3.HealthStatus_DRAINING, 2)
		}, []string{
			"cds   in sync: 2 resources, bearkong version v-cds",
			"eds   DIFFERENT: 0 in sync, 0 missing in Envoy, 0 extra in Envoy, 1 different; bearkong version v-eds",
			"      different: app-2.default (bearkong: content h-app-2.default, version v-eds; Envoy: version -)",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			theirs := testConfig()
			tc.envoy(&theirs)
			admin := envoyAdmin(t, theirs, "old")
			pc := ours.proxyConfig(t)
			diffs, err := diffConfig(context.Background(), &pc, admin.URL)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			differs := renderDiff(&out, diffs)
			got := out.String()
			for _, line := range tc.report {
				if !strings.Contains(got, line+"\n") {
					t.Errorf("report lacks %q:\n%s", line, got)
				}
			}
			if differs != (tc.name != "in sync") {
				t.Errorf("differs = %v:\n%s", differs, got)
			}
		})
	}
}

// TestConfigCommand runs `bearkong config` against a control plane and an Envoy admin:
// the JSON and YAML of /debug/config, and --diff with its exit status.
func TestConfigCommand(t *testing.T) {
	ours := testConfig()
	pc := ours.proxyConfig(t)
	var gotQuery string
	cp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/debug/streams":
			fmt.Fprint(w, `{"streams":[{"id":1,"node":"app-1-0.default","connected_at":"2026-12-01T09:00:00Z","types":{}}]}`)
		case "/debug/config":
			gotQuery = r.URL.RawQuery
			json.NewEncoder(w).Encode(pc)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(cp.Close)
	admin := envoyAdmin(t, ours, "v")

	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"config", "app-1-0", "--server", cp.URL, "--type", "rds"}, &out, &errOut); err != nil {
		t.Fatal(err, errOut.String())
	}
	if gotQuery != "node=app-1-0.default&type=rds" || !strings.Contains(out.String(), `"node": "app-1-0.default"`) {
		t.Errorf("query %q, output:\n%s", gotQuery, out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"config", "app-1-0.default", "-o", "yaml", "--server", cp.URL}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "node: app-1-0.default\n") || !strings.Contains(out.String(), "    name: outbound\n") {
		t.Errorf("yaml:\n%s", out.String())
	}
	if strings.Contains(out.String(), "PRIVATE KEY") {
		t.Errorf("the private key shows:\n%s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"config", "app-1-0", "--diff", "--admin", admin.URL, "--server", cp.URL}, &out, &errOut); err != nil {
		t.Fatalf("--diff in sync: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "app-1-0.default: bearkong ("+cp.URL+") against its Envoy ("+admin.URL+"/config_dump)\n") {
		t.Errorf("--diff:\n%s", out.String())
	}
	older := testConfig()
	older.routes[0].Name = "outbound-old"
	admin = envoyAdmin(t, older, "v")
	out.Reset()
	if err := run(context.Background(), []string{"config", "app-1-0", "--diff", "--admin", admin.URL, "--server", cp.URL}, &out, &errOut); !errors.Is(err, errConfigDiffers) {
		t.Fatalf("--diff with a difference: %v\n%s", err, out.String())
	}
	for _, bad := range [][]string{{"config"}, {"config", "app-1-0", "--type", "xds"}, {"config", "app-1-0", "-o", "toml"}} {
		if err := run(context.Background(), append(bad, "--server", cp.URL), &out, &errOut); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestRedactMatchesEnvoy checks that a secret bearkong redacts equals the one Envoy dumps,
// and that no key is left.
func TestRedactMatchesEnvoy(t *testing.T) {
	s := testConfig().secrets[0]
	ours := proto.Clone(s).(*tlsv3.Secret)
	controlplane.Redact(ours)
	if strings.Contains(ours.String(), "PRIVATE KEY") || !strings.Contains(ours.String(), "BEGIN CERTIFICATE") {
		t.Fatalf("redacted: %v", ours)
	}
	envoys := proto.Clone(s).(*tlsv3.Secret)
	envoys.GetTlsCertificate().PrivateKey = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("[redacted]")}}
	if !proto.Equal(normalize(ours), normalize(envoys)) {
		t.Errorf("bearkong's redaction %v differs from Envoy's %v", ours, envoys)
	}
}
