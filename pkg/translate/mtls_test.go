package translate

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// The expected TLS config, written out field by field rather than through the
// package's helpers, so that a change to them shows here.

func prefixSAN(p string) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}}
}

func exactSAN(v string) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}}
}

func wantSDS(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}}
}

func wantCommonTLS(alpn []string, sans ...*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams:                      &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3, TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{wantSDS("workload-cert")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: wantSDS("trust-bundle"),
		}},
		AlpnProtocols: alpn,
	}
}

func wantUpstreamTLS(alpn string, sans ...*tlsv3.SubjectAltNameMatcher) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
		TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{CommonTlsContext: wantCommonTLS([]string{alpn}, sans...)}),
	}}
}

func wantDownstreamTLS(trustDomain string) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{
		TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         wantCommonTLS([]string{"h2", "http/1.1"}, prefixSAN("spiffe://"+trustDomain+"/")),
			RequireClientCertificate: wrapperspb.Bool(true),
		}),
	}}
}

// cmpAny compares protos with Anys unpacked, so that a diff names the field.
func cmpAny(t *testing.T, want, got proto.Message) {
	t.Helper()
	if diff := cmp.Diff(want, got, protocmp.Transform()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestSecrets(t *testing.T) {
	cmpAny(t, &tlsv3.Secret{
		Name: "workload-cert",
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("chain")}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("key")}},
		}},
	}, WorkloadSecret([]byte("chain"), []byte("key")))
	cmpAny(t, &tlsv3.Secret{
		Name: "trust-bundle",
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte("roots")}},
		}},
	}, TrustBundleSecret([]byte("roots")))
}

// TestClusterMTLS checks each Service cluster's transport socket: none when the Service
// disables mTLS, else mutual TLS checking the SPIFFE IDs of its pods' ServiceAccounts
// (or any workload of the trust domain when none is known), with the cluster's HTTP
// version as ALPN.
func TestClusterMTLS(t *testing.T) {
	svc := func(mode mesh.MTLSMode, proto mesh.Protocol, sas ...string) *mesh.Service {
		return &mesh.Service{Namespace: "shop", Name: "web", MTLS: mode, Protocol: proto, ServiceAccounts: sas}
	}
	for _, tc := range []struct {
		name        string
		svc         *mesh.Service
		trustDomain string
		want        *corev3.TransportSocket
	}{
		{"DISABLE is plaintext", svc(mesh.MTLSDisable, mesh.ProtocolHTTP, "web"), "cluster.local", nil},
		{"unset is STRICT", svc("", mesh.ProtocolUnspecified, "web"), "cluster.local",
			wantUpstreamTLS("http/1.1", exactSAN("spiffe://cluster.local/ns/shop/sa/web"))},
		{"PERMISSIVE callee still gets TLS", svc(mesh.MTLSPermissive, mesh.ProtocolHTTP, "web"), "cluster.local",
			wantUpstreamTLS("http/1.1", exactSAN("spiffe://cluster.local/ns/shop/sa/web"))},
		{"one SAN per ServiceAccount", svc(mesh.MTLSStrict, mesh.ProtocolHTTP, "web", "web-canary"), "corp.example",
			wantUpstreamTLS("http/1.1", exactSAN("spiffe://corp.example/ns/shop/sa/web"), exactSAN("spiffe://corp.example/ns/shop/sa/web-canary"))},
		{"no known ServiceAccount: any workload of the trust domain", svc(mesh.MTLSStrict, mesh.ProtocolHTTP), "corp.example",
			wantUpstreamTLS("http/1.1", prefixSAN("spiffe://corp.example/"))},
		{"HTTP/2 offers h2", svc(mesh.MTLSStrict, mesh.ProtocolHTTP2, "grpc"), "cluster.local",
			wantUpstreamTLS("h2", exactSAN("spiffe://cluster.local/ns/shop/sa/grpc"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmpAny(t, tc.want, Cluster(tc.svc, tc.trustDomain).GetTransportSocket())
		})
	}
	t.Run("local-app stays plaintext", func(t *testing.T) {
		if ts := LocalAppCluster(Node{AppAddress: "127.0.0.1:9090"}).GetTransportSocket(); ts != nil {
			t.Errorf("local-app transport socket %v, want none", ts)
		}
	})
}

// TestInboundListenerModes checks the inbound listener's chains, transport sockets,
// listener filters and XFCC handling in each mode, and that the outbound listener stays
// plaintext.
func TestInboundListenerModes(t *testing.T) {
	n := Node{ListenIP: "10.0.0.1", OutboundIP: "127.0.0.1"}
	type chain struct {
		name      string
		match     *listenerv3.FilterChainMatch
		transport *corev3.TransportSocket
		xfcc      hcmv3.HttpConnectionManager_ForwardClientCertDetails
		setURI    bool
	}
	mtls := chain{transport: wantDownstreamTLS("td.example"), xfcc: hcmv3.HttpConnectionManager_SANITIZE_SET, setURI: true}
	plain := chain{xfcc: hcmv3.HttpConnectionManager_SANITIZE}
	permissiveTLS, permissivePlain := mtls, plain
	permissiveTLS.name, permissiveTLS.match = "mtls", &listenerv3.FilterChainMatch{TransportProtocol: "tls"}
	permissivePlain.name = "plaintext"
	inspector := []*listenerv3.ListenerFilter{{
		Name:       "envoy.filters.listener.tls_inspector",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})},
	}}
	for _, tc := range []struct {
		name            string
		l               *listenerv3.Listener
		listenerFilters []*listenerv3.ListenerFilter
		chains          []chain
	}{
		{"STRICT", InboundListener(n, mesh.MTLSStrict, "td.example"), nil, []chain{mtls}},
		{"unset is STRICT", InboundListener(n, "", "td.example"), nil, []chain{mtls}},
		{"PERMISSIVE", InboundListener(n, mesh.MTLSPermissive, "td.example"), inspector, []chain{permissiveTLS, permissivePlain}},
		{"DISABLE", InboundListener(n, mesh.MTLSDisable, "td.example"), nil, []chain{plain}},
		{"outbound", OutboundListener(n, DefaultClusterDomain), nil, []chain{plain}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.listenerFilters, tc.l.GetListenerFilters(), protocmp.Transform()); diff != "" {
				t.Errorf("listener filters (-want +got):\n%s", diff)
			}
			if got := len(tc.l.GetFilterChains()); got != len(tc.chains) {
				t.Fatalf("%d filter chains, want %d", got, len(tc.chains))
			}
			for i, want := range tc.chains {
				c := tc.l.GetFilterChains()[i]
				if c.GetName() != want.name {
					t.Errorf("chain %d: name %q, want %q", i, c.GetName(), want.name)
				}
				if diff := cmp.Diff(want.match, c.GetFilterChainMatch(), protocmp.Transform()); diff != "" {
					t.Errorf("chain %d: filter_chain_match (-want +got):\n%s", i, diff)
				}
				if diff := cmp.Diff(want.transport, c.GetTransportSocket(), protocmp.Transform()); diff != "" {
					t.Errorf("chain %d: transport socket (-want +got):\n%s", i, diff)
				}
				var hcm hcmv3.HttpConnectionManager
				if err := c.GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
					t.Fatal(err)
				}
				if hcm.GetForwardClientCertDetails() != want.xfcc || hcm.GetSetCurrentClientCertDetails().GetUri() != want.setURI {
					t.Errorf("chain %d: forward_client_cert_details %v, uri %t; want %v, %t", i,
						hcm.GetForwardClientCertDetails(), hcm.GetSetCurrentClientCertDetails().GetUri(), want.xfcc, want.setURI)
				}
			}
		})
	}
}

// TestProxyMTLSMode checks which mode a proxy's inbound listener gets: its pod's
// (mesh.Proxy.MTLS) when the snapshot knows it, else Options.DefaultMTLS; and that
// proxies with equal addresses but different modes do not share listeners.
func TestProxyMTLSMode(t *testing.T) {
	snap := sampleSnapshot()
	snap.Proxies["default/app-1-a"].MTLS = mesh.MTLSDisable
	snap.Proxies["default/app-1-b"].MTLS = mesh.MTLSPermissive
	snap.Proxies["default/app-2-a"].MTLS = "" // read as STRICT
	modeOf := func(p *resource.Proxy) mesh.MTLSMode {
		r, ok := p.Views[resource.Listener].Get(InboundListenerName)
		if !ok {
			t.Fatal("no inbound listener")
		}
		l := unpack(t, r.Any).(*listenerv3.Listener)
		switch {
		case len(l.GetListenerFilters()) == 1 && len(l.GetFilterChains()) == 2:
			return mesh.MTLSPermissive
		case len(l.GetFilterChains()) == 1 && l.GetFilterChains()[0].GetTransportSocket() != nil:
			return mesh.MTLSStrict
		case len(l.GetFilterChains()) == 1:
			return mesh.MTLSDisable
		}
		t.Fatalf("unexpected inbound listener %v", l)
		return ""
	}
	unknown := Node{ID: "ghost.default", PodNamespace: "default", PodName: "ghost", ListenIP: "0.0.0.0", AppAddress: "127.0.0.1:9090"}
	for _, tc := range []struct {
		name string
		def  mesh.MTLSMode
		node Node
		want mesh.MTLSMode
	}{
		{"pod DISABLE", "", nodeApp1A, mesh.MTLSDisable},
		{"pod PERMISSIVE", "", nodeApp1B, mesh.MTLSPermissive},
		{"pod unset is STRICT, whatever the default", mesh.MTLSPermissive, nodeApp2A, mesh.MTLSStrict},
		{"unknown pod, default unset: STRICT", "", unknown, mesh.MTLSStrict},
		{"unknown pod, default PERMISSIVE", mesh.MTLSPermissive, unknown, mesh.MTLSPermissive},
		{"unknown pod, default DISABLE", mesh.MTLSDisable, unknown, mesh.MTLSDisable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewWithOptions(snap, Options{DefaultMTLS: tc.def})
			if err != nil {
				t.Fatal(err)
			}
			if got := modeOf(mustProxy(t, tr, tc.node)); got != tc.want {
				t.Errorf("mode %s, want %s", got, tc.want)
			}
		})
	}
}

func TestOptionsMTLSValidation(t *testing.T) {
	for _, tc := range []struct {
		opts    Options
		wantErr bool
	}{
		{Options{}, false},
		{Options{TrustDomain: "corp.example", DefaultMTLS: mesh.MTLSDisable}, false},
		{Options{TrustDomain: "td_1-a.b"}, false},
		{Options{TrustDomain: "Cluster.Local"}, true},
		{Options{TrustDomain: "a/b"}, true},
		{Options{TrustDomain: "a:8080"}, true},
		{Options{TrustDomain: string(make([]byte, 256))}, true},
		{Options{DefaultMTLS: "strict"}, true},
		{Options{DefaultMTLS: "OFF"}, true},
	} {
		_, err := NewWithOptions(&mesh.Snapshot{}, tc.opts)
		if (err != nil) != tc.wantErr {
			t.Errorf("NewWithOptions(%+v) error = %v, want error: %t", tc.opts, err, tc.wantErr)
		}
	}
}

// TestClusterTrustDomain checks that the translator's clusters carry the trust domain of
// its options.
func TestClusterTrustDomain(t *testing.T) {
	tr, err := NewWithOptions(sampleSnapshot(), Options{TrustDomain: "corp.example"})
	if err != nil {
		t.Fatal(err)
	}
	r, ok := mustProxy(t, tr, nodeApp1A).Views[resource.Cluster].Get("app-1.default")
	if !ok {
		t.Fatal("no cluster app-1.default")
	}
	c := unpack(t, r.Any).(*clusterv3.Cluster)
	cmpAny(t, wantUpstreamTLS("http/1.1", exactSAN("spiffe://corp.example/ns/default/sa/app-1")), c.GetTransportSocket())
}

// TestSharedSocketsMatchCluster checks that the clusters New builds, whose transport
// sockets it shares between Services with the same upstreamTLSKey, are byte for byte
// what Cluster builds for each Service alone.
func TestSharedSocketsMatchCluster(t *testing.T) {
	snap := &mesh.Snapshot{Services: []*mesh.Service{
		{Namespace: "a", Name: "h1"},
		{Namespace: "a", Name: "h2", Protocol: mesh.ProtocolHTTP2},
		{Namespace: "a", Name: "off", MTLS: mesh.MTLSDisable, ServiceAccounts: []string{"default"}},
		{Namespace: "a", Name: "s1", ServiceAccounts: []string{"default"}},
		{Namespace: "a", Name: "s2", ServiceAccounts: []string{"default"}},
		{Namespace: "a", Name: "s3", ServiceAccounts: []string{"default", "x"}},
		{Namespace: "a", Name: "s4", ServiceAccounts: []string{"default"}, Protocol: mesh.ProtocolHTTP2},
		{Namespace: "b", Name: "h1"},
		{Namespace: "b", Name: "s1", ServiceAccounts: []string{"default"}},
		{Namespace: "b", Name: "s2", ServiceAccounts: []string{"default\x00x"}},
		{Namespace: "b", Name: "s3", ServiceAccounts: []string{"default", "x"}, MTLS: mesh.MTLSPermissive},
	}}
	tr, err := NewWithOptions(snap, Options{TrustDomain: "td"})
	if err != nil {
		t.Fatal(err)
	}
	p := mustProxy(t, tr, nodeLocal)
	for _, svc := range snap.Services {
		got, ok := p.Views[resource.Cluster].Get(ClusterName(svc))
		if !ok {
			t.Fatalf("no cluster %s", ClusterName(svc))
		}
		want, err := resource.New(resource.Cluster, ClusterName(svc), Cluster(svc, "td"))
		if err != nil {
			t.Fatal(err)
		}
		if got.Hash != want.Hash {
			t.Errorf("cluster %s: New's differs from Cluster's:\n%v\n%v", ClusterName(svc), unpack(t, got.Any), unpack(t, want.Any))
		}
	}
}
