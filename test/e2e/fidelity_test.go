package e2e

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"hash/maphash"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/xdsclient"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// scriptedADS is an ADS server that sends what the test says, on the one stream it
// serves, and records every request.
type scriptedADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu     sync.Mutex
	reqs   []*discoveryv3.DiscoveryRequest
	last   time.Time
	stream chan discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer
}

func (s *scriptedADS) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	select {
	case s.stream <- st:
	default:
		return fmt.Errorf("one stream only")
	}
	for {
		r, err := st.Recv()
		if err != nil {
			return nil
		}
		s.mu.Lock()
		s.reqs = append(s.reqs, r)
		s.last = time.Now()
		s.mu.Unlock()
	}
}

// quiet waits until no request came for 700 ms (at most 10 s) and returns the requests
// received since index from.
func (s *scriptedADS) quiet(from int) []*discoveryv3.DiscoveryRequest {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		s.mu.Lock()
		idle := time.Since(s.last) > 700*time.Millisecond
		s.mu.Unlock()
		if idle {
			break
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs[from:])
}

// lastByType is what a step's requests leave in force, per type: the names, the version
// it accepts, the nonce it answers and whether it is a NACK. Envoy may repeat a request
// (a watch added or removed with the same names); what a server acts on is the last one.
//
// The names are compared as a set. Envoy lists its EDS watches newest first, but the
// clusters of one CDS response start their watches in an order that changes from run to
// run (seen here: "a, b" in one run, "b, a" in the next, for the same response), so no
// client can match it name for name; internal/xdsclient's own tests hold the
// newest-first order across responses.
func lastByType(rs []*discoveryv3.DiscoveryRequest) map[string]string {
	out := map[string]string{}
	for _, r := range rs {
		t, _ := xdsclient.TypeOf(r.TypeUrl)
		names := slices.Sorted(slices.Values(r.ResourceNames))
		out[t.String()] = fmt.Sprintf("names=%v version=%q nonce=%q nack=%v", names, r.VersionInfo, r.ResponseNonce, r.ErrorDetail != nil)
	}
	return out
}

// TestClientMatchesEnvoy holds internal/xdsclient, the protocol state of the test clients
// and of the fleet simulator, to a real Envoy: both get the same responses from a
// scripted ADS server, and after each step they must have asked for the same things,
// in the same order of types, ACKed and NACKed the same versions, and have the same
// clusters warming.
// It needs Envoy only, no API server.
func TestClientMatchesEnvoy(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	envoyBin := filepath.Join(root, ".cache", "bin", "envoy")
	if _, err := os.Stat(envoyBin); err != nil {
		t.Fatalf("%v (run make install)", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &scriptedADS{stream: make(chan discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer, 1)}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)

	adminLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := adminLis.Addr().String()
	adminLis.Close()
	b, err := translate.Bootstrap(translate.BootstrapOptions{PodName: "fidelity", PodNamespace: "default",
		ListenIP: "127.0.2.1", AdminAddress: adminAddr, XDSAddress: lis.Addr().String(), XDSInsecure: true,
		// scriptedADS and internal/xdsclient speak state of the world, whatever the mesh runs.
		XDSProtocol: translate.XDSProtocolSotW})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	raw, err := protojson.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	bootstrap := filepath.Join(dir, "envoy.json")
	if err := os.WriteFile(bootstrap, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, envoyBin, "-c", bootstrap, "--base-id", strconv.Itoa(40000+os.Getpid()%10000),
		"--log-level", "warn", "--log-path", filepath.Join(dir, "envoy.log"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

	var stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	select {
	case stream = <-srv.stream:
	case <-time.After(30 * time.Second):
		t.Fatal("Envoy did not connect")
	}

	client := xdsclient.New()
	clientReqs := []*discoveryv3.DiscoveryRequest{client.Start()}
	seed := maphash.MakeSeed()
	nonce := 0
	seen := 0
	svc := func(name string, maxConns uint32) *mesh.Service {
		// mTLS off: this fake server serves no secrets, and a cluster that waits for
		// its SDS secrets stays warming, which is not what this test is about.
		return &mesh.Service{Namespace: "default", Name: name, Policy: mesh.Policy{MaxConnections: maxConns},
			MTLS: mesh.MTLSDisable, Endpoints: []mesh.Endpoint{{IP: "127.0.2.9"}}}
	}
	// send sends one response to both, and compares what they do about it.
	send := func(step string, t0 xdsclient.Type, version string, msgs []proto.Message, wantNack bool) {
		t.Helper()
		nonce++
		resp := &discoveryv3.DiscoveryResponse{TypeUrl: t0.URL(), VersionInfo: version, Nonce: strconv.Itoa(nonce)}
		var rs []xdsclient.Resource
		for _, m := range msgs {
			a, err := anypb.New(m)
			if err != nil {
				t.Fatal(err)
			}
			resp.Resources = append(resp.Resources, a)
			r := xdsclient.Resource{Hash: maphash.Bytes(seed, a.Value)}
			switch m := m.(type) {
			case *clusterv3.Cluster:
				r.Name = m.Name
				if m.GetType() == clusterv3.Cluster_EDS {
					r.EDS = cmp.Or(m.GetEdsClusterConfig().GetServiceName(), m.Name)
				}
				r.Secrets = xdsclient.ClusterSecrets(m)
			case *tlsv3.Secret:
				r.Name = m.Name
			case *listenerv3.Listener:
				r.Name = m.Name
				r.Secrets = xdsclient.ListenerSecrets(m)
				r.Routes, r.Scoped = xdsclient.ListenerRoutes(m)
			case *routev3.ScopedRouteConfiguration:
				r.Name = m.Name
				r.Routes = []string{m.RouteConfigurationName}
			case *routev3.RouteConfiguration:
				r.Name = m.Name
			default:
				r.Name = m.(interface{ GetClusterName() string }).GetClusterName()
			}
			rs = append(rs, r)
		}
		if err := stream.Send(resp); err != nil {
			t.Fatal(err)
		}
		envoyReqs := srv.quiet(seen)
		seen += len(envoyReqs)
		nack := ""
		for _, r := range envoyReqs {
			if r.ErrorDetail != nil && r.ResponseNonce == resp.Nonce {
				nack = r.ErrorDetail.GetMessage()
			}
		}
		if (nack != "") != wantNack {
			t.Fatalf("%s: Envoy's NACK: %q, want a NACK: %v", step, nack, wantNack)
		}
		got, err := client.Response(t0, version, resp.Nonce, rs, nack)
		if err != nil {
			t.Fatal(err)
		}
		clientReqs = append(clientReqs, got...)
		e, c := lastByType(envoyReqs), lastByType(got)
		for typ := range e {
			if e[typ] != c[typ] {
				t.Errorf("%s: %s: Envoy asks %s, the client %s", step, typ, e[typ], c[typ])
			}
		}
		for typ := range c {
			if _, ok := e[typ]; !ok {
				t.Errorf("%s: the client asks %s %s, Envoy nothing", step, typ, c[typ])
			}
		}
		if eo, co := typeOrder(envoyReqs), typeOrder(got); !slices.Equal(eo, co) {
			t.Errorf("%s: Envoy's requests go in the order %v, the client's %v", step, eo, co)
		}
		warm, err := envoyWarming(ctx, adminAddr)
		if err != nil {
			t.Fatal(err)
		}
		if cw := client.Warming(); !slices.Equal(warm, cw) {
			t.Errorf("%s: warming clusters: Envoy %v, the client %v", step, warm, cw)
		}
		t.Logf("%s: Envoy %v; warming %v; order: Envoy %v, the client %v", step, e, warm, order(envoyReqs), order(got))
	}
	// The first CDS request, before anything is sent.
	if first := lastByType(srv.quiet(0)); first["cds"] != lastByType(clientReqs)["cds"] {
		t.Fatalf("first request: Envoy %v, the client %v", first, lastByType(clientReqs))
	}
	seen = 1
	cl := func(name string, maxConns uint32) proto.Message {
		return translate.Cluster(svc(name, maxConns), translate.DefaultTrustDomain)
	}
	cla := func(name string) proto.Message { return translate.ClusterLoadAssignment(svc(name, 0)) }

	send("two clusters", xdsclient.CDS, "c1", []proto.Message{cl("a", 0), cl("b", 0)}, false)
	send("their endpoints", xdsclient.EDS, "e1", []proto.Message{cla("a"), cla("b")}, false)
	send("b modified, c added", xdsclient.CDS, "c2", []proto.Message{cl("a", 0), cl("b", 5), cl("c", 0)}, false)
	send("c's endpoints only", xdsclient.EDS, "e2", []proto.Message{cla("c")}, false)
	send("b's fresh endpoints", xdsclient.EDS, "e3", []proto.Message{cla("b")}, false)
	bad := translate.Cluster(svc("a", 0), translate.DefaultTrustDomain)
	bad.ConnectTimeout = durationpb.New(-time.Second)
	send("an invalid cluster", xdsclient.CDS, "c-bad", []proto.Message{bad, cl("b", 5), cl("c", 0)}, true)
	send("every cluster gone", xdsclient.CDS, "c3", nil, false)
	send("a back", xdsclient.CDS, "c4", []proto.Message{cl("a", 0)}, false)
	send("a's endpoints again", xdsclient.EDS, "e4", []proto.Message{cla("a")}, false)

	// SDS over ADS: clusters whose TLS transport socket names two secrets. Envoy asks
	// for them only once a cluster's own initialization is done (its CLA came), shares
	// them by name, and keeps the cluster warming until they came. It keeps them after
	// the last cluster that names them goes.
	certPEM, keyPEM := selfSigned(t, "one")
	cert2PEM, key2PEM := selfSigned(t, "two")
	workload := func(chain, key []byte) proto.Message {
		return &tlsv3.Secret{Name: "workload-cert", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: chain}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: key}},
		}}}
	}
	bundle := func(roots []byte) proto.Message {
		return &tlsv3.Secret{Name: "trust-bundle", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: roots}},
		}}}
	}
	tlsCl := func(name string) proto.Message {
		c := translate.Cluster(svc(name, 0), translate.DefaultTrustDomain)
		c.TransportSocket = upstreamTLS(t, "workload-cert", "trust-bundle")
		return c
	}
	send("TLS clusters", xdsclient.CDS, "c5", []proto.Message{cl("a", 0), tlsCl("s"), tlsCl("t")}, false)
	send("s's endpoints", xdsclient.EDS, "e5", []proto.Message{cla("s")}, false)
	send("the certificate", xdsclient.SDS, "s1", []proto.Message{workload(certPEM, keyPEM)}, false)
	send("the trust bundle", xdsclient.SDS, "s2", []proto.Message{bundle(certPEM)}, false)
	send("t's endpoints", xdsclient.EDS, "e6", []proto.Message{cla("t")}, false)
	send("a rotation", xdsclient.SDS, "s3", []proto.Message{workload(cert2PEM, key2PEM)}, false)
	send("s changed", xdsclient.CDS, "c6", []proto.Message{cl("a", 0), tlsCl("s"), cl("t", 3)}, false)
	send("s's fresh endpoints", xdsclient.EDS, "e7", []proto.Message{cla("s"), cla("t")}, false)
	send("TLS clusters gone", xdsclient.CDS, "c7", []proto.Message{cl("a", 0)}, false)
	send("a TLS cluster back", xdsclient.CDS, "c8", []proto.Message{cl("a", 0), tlsCl("s")}, false)
	send("its endpoints", xdsclient.EDS, "e8", []proto.Message{cla("s")}, false)
	send("its secrets again", xdsclient.SDS, "s4", []proto.Message{workload(cert2PEM, key2PEM), bundle(cert2PEM)}, false)
	// A listener whose filter chain terminates TLS with a secret no cluster names, and
	// the roots the clusters share: Envoy asks for its routes and the new secret.
	// With it, in the same (first) LDS response as in a sidecar, the outbound listener as
	// pkg/translate builds it (on a free port): its connection manager takes scopes from
	// SRDS by wildcard (no names), and each scope's route configuration from RDS once a
	// scope names it.
	send("a TLS listener", xdsclient.LDS, "l1", []proto.Message{tlsListener(t, "in", "inbound", "listener-cert", "trust-bundle"), outboundListener(t)}, false)
	send("the listener's certificate", xdsclient.SDS, "s5", []proto.Message{&tlsv3.Secret{Name: "listener-cert",
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: certPEM}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: keyPEM}},
		}}}}, false)
	svcA, svcB := svc("a", 0), svc("b", 0)
	send("scopes", xdsclient.SRDS, "sr1", []proto.Message{translate.ServiceScope("a", svcA), translate.ServiceScope("a.default", svcA)}, false)
	send("their routes", xdsclient.RDS, "r1", []proto.Message{translate.ServiceRouteConfiguration(svcA)}, false)
	send("a scope added", xdsclient.SRDS, "sr2", []proto.Message{translate.ServiceScope("a", svcA), translate.ServiceScope("a.default", svcA), translate.ServiceScope("b.default", svcB)}, false)
	send("its routes", xdsclient.RDS, "r2", []proto.Message{translate.ServiceRouteConfiguration(svcB)}, false)
	send("a scope gone", xdsclient.SRDS, "sr3", []proto.Message{translate.ServiceScope("a", svcA), translate.ServiceScope("a.default", svcA)}, false)
	send("the listener gone", xdsclient.LDS, "l2", nil, false)
	send("a key that does not match", xdsclient.SDS, "s-bad", []proto.Message{workload(certPEM, key2PEM)}, true)
	// The provider kept the rejected key: a new cluster that names it is rejected.
	send("a TLS cluster after the NACKed key", xdsclient.CDS, "c9", []proto.Message{cl("a", 0), tlsCl("s"), tlsCl("u")}, true)
}

// outboundListener is pkg/translate's outbound listener on a free loopback port.
func outboundListener(t *testing.T) *listenerv3.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.2.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	l := translate.OutboundListener(translate.Node{OutboundIP: "127.0.2.1"}, translate.DefaultClusterDomain)
	l.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(port)}
	return l
}

// tlsListener is a listener on a free loopback port whose one filter chain terminates
// TLS with the named certificate and roots from SDS over ADS and routes by RDS.
func tlsListener(t *testing.T, name, routes, cert, roots string) *listenerv3.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.2.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	lis.Close()
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion: corev3.ApiVersion_V3}
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		t.Fatal(err)
	}
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads, RouteConfigName: routes}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tlsCtx, err := anypb.New(&tlsv3.DownstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: cert, SdsConfig: ads}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: roots, SdsConfig: ads}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.2.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}},
		FilterChains: []*listenerv3.FilterChain{{
			Filters:         []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}},
			TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}},
		}},
	}
}

// upstreamTLS is a TLS transport socket that takes its certificate and its validation
// context from SDS over ADS, as pkg/translate's mTLS clusters do.
func upstreamTLS(t *testing.T, cert, roots string) *corev3.TransportSocket {
	t.Helper()
	ads := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion: corev3.ApiVersion_V3}
	ctx, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: cert, SdsConfig: ads}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{},
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: roots, SdsConfig: ads},
		}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: ctx}}
}

// selfSigned returns a fresh self-signed certificate and its key, in PEM.
func selfSigned(t *testing.T, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// typeOrder lists the types of the requests in order, a run of requests of one type
// counting once: Envoy may send a type's request twice where one carries the same
// (a watch per secret, each starting with a request).
func typeOrder(rs []*discoveryv3.DiscoveryRequest) []string {
	var out []string
	for _, r := range rs {
		t, _ := xdsclient.TypeOf(r.TypeUrl)
		if len(out) == 0 || out[len(out)-1] != t.String() {
			out = append(out, t.String())
		}
	}
	return out
}

// order lists the requests' types and kinds, in order, for the log.
func order(rs []*discoveryv3.DiscoveryRequest) []string {
	var out []string
	for _, r := range rs {
		t, _ := xdsclient.TypeOf(r.TypeUrl)
		kind := "req"
		switch {
		case r.ErrorDetail != nil:
			kind = "nack"
		case r.ResponseNonce != "":
			kind = "ack"
		}
		out = append(out, fmt.Sprintf("%s-%s%v", t, kind, r.ResourceNames))
	}
	return out
}

// envoyWarming returns the names of Envoy's warming clusters, from /config_dump.
func envoyWarming(ctx context.Context, admin string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/config_dump?resource=dynamic_warming_clusters", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("config_dump: %w", err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("config_dump: %w", err)
	}
	var dump struct {
		Configs []struct {
			Cluster struct {
				Name string `json:"name"`
			} `json:"cluster"`
		} `json:"configs"`
	}
	if err := json.Unmarshal(out, &dump); err != nil {
		return nil, fmt.Errorf("config_dump: %w: %s", err, out)
	}
	var names []string
	for _, c := range dump.Configs {
		names = append(names, c.Cluster.Name)
	}
	slices.Sort(names)
	return names, nil
}
