package ads_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// lockedBuffer is a log sink the server's goroutines write while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// withTLS wraps a world's resolver: every cluster takes its certificate and roots from
// SDS over ADS (as pkg/translate's mTLS clusters do), and the proxy's secrets are the
// given key material.
func withTLS(t *testing.T, resolve func(*corev3.Node) (*resource.Proxy, error), keyPEM, rootsPEM string) func(*corev3.Node) (*resource.Proxy, error) {
	t.Helper()
	adsSource := &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}, ResourceApiVersion: corev3.ApiVersion_V3}
	tlsCtx, err := anypb.New(&tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: "workload-cert", SdsConfig: adsSource}},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
			ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: "trust-bundle", SdsConfig: adsSource}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	inline := func(s string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
	}
	cert, err := resource.New(resource.Secret, "workload-cert", &tlsv3.Secret{Name: "workload-cert", Type: &tlsv3.Secret_TlsCertificate{
		TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: inline("chain"), PrivateKey: inline(keyPEM)}}})
	if err != nil {
		t.Fatal(err)
	}
	roots, err := resource.New(resource.Secret, "trust-bundle", &tlsv3.Secret{Name: "trust-bundle", Type: &tlsv3.Secret_ValidationContext{
		ValidationContext: &tlsv3.CertificateValidationContext{TrustedCa: inline(rootsPEM)}}})
	if err != nil {
		t.Fatal(err)
	}
	secrets := resource.NewSet(cert, roots)
	return func(node *corev3.Node) (*resource.Proxy, error) {
		p, err := resolve(node)
		if err != nil {
			return nil, err
		}
		var clusters []*resource.Resource
		for _, r := range p.Views[resource.Cluster].All() {
			var c clusterv3.Cluster
			if err := proto.Unmarshal(r.Any.Value, &c); err != nil {
				return nil, err
			}
			c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}}
			tr, err := resource.New(resource.Cluster, c.Name, &c)
			if err != nil {
				return nil, err
			}
			clusters = append(clusters, tr)
		}
		p.Views[resource.Cluster] = resource.View{resource.NewSet(clusters...)}
		p.Views[resource.Secret] = resource.View{secrets}
		return p, nil
	}
}

// TestSDSOverGRPC: a client that behaves like Envoy asks for the secrets its TLS clusters
// name once their endpoints came, gets them on the same ADS stream, and a rotation is
// one SDS push. /debug/streams, the metrics and the logs show names, versions and counts,
// never the key material.
func TestSDSOverGRPC(t *testing.T) {
	reg := prometheus.NewRegistry()
	logs := &lockedBuffer{}
	srv := ads.NewServer(ads.Options{Metrics: ads.NewMetrics(reg),
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	g := grpc.NewServer(ads.ServerOptions()...)
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	e := &env{srv: srv, reg: reg, addr: lis.Addr().String()}

	const key1, key2 = "-----BEGIN PRIVATE KEY----- key-one", "-----BEGIN PRIVATE KEY----- key-two"
	w := world{endpoints: map[string]int{"app-1": 1, "app-2": 2}, routeTag: map[string]string{}}
	srv.SetConfig(&ads.Config{Resolve: withTLS(t, build(t, w), key1, "roots-one"), ChangedAt: time.Now()})

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := xdstest.Dial(ctx, e.addr, &corev3.Node{Id: "a"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitSynced(t, c)
	sds := waitSDS(t, e, "a", func(ti ads.TypeInfo) bool { return ti.Status == ads.Synced })

	t.Run("the initial sync asks for the secrets after the endpoints, before the listeners", func(t *testing.T) {
		got := strings.Join(types(c.Received()), ",")
		if got != "Cluster,ClusterLoadAssignment,Secret,Listener,RouteConfiguration" {
			t.Fatalf("initial responses: %s", got)
		}
		if !slices.Equal(sds.Subscribed, []string{"trust-bundle", "workload-cert"}) || sds.Pushes != 1 || sds.Acks != 1 {
			t.Fatalf("sds: %+v", sds)
		}
		s := c.Resource(xdstest.SecretType, "workload-cert").(*tlsv3.Secret)
		if s.GetTlsCertificate().GetPrivateKey().GetInlineString() != key1 {
			t.Fatalf("workload-cert: %v", s)
		}
		if len(c.Warming()) != 0 {
			t.Fatalf("warming: %v", c.Warming())
		}
	})

	t.Run("a rotation is one SDS push with a new version and nonce", func(t *testing.T) {
		before := len(c.Received())
		pushes := counter(t, e, "bearkong_xds_push_total", "cds")
		srv.SetConfig(&ads.Config{Resolve: withTLS(t, build(t, w), key2, "roots-one"), ChangedAt: time.Now()})
		if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool { return len(rs) > before }); err != nil {
			t.Fatal(err)
		}
		got := quiet(c, before)
		if len(got) != 1 || got[0].TypeURL != xdstest.SecretType || strings.Join(got[0].Names, ",") != "workload-cert" {
			t.Fatalf("after a rotation: %+v", got)
		}
		after := waitSDS(t, e, "a", func(ti ads.TypeInfo) bool { return ti.Status == ads.Synced && ti.Pushes == 2 })
		if after.VersionSent == sds.VersionSent || after.NonceSent == sds.NonceSent || after.VersionAcked != after.VersionSent || after.Acks != 2 {
			t.Fatalf("sds before %+v, after %+v", sds, after)
		}
		s := c.Resource(xdstest.SecretType, "workload-cert").(*tlsv3.Secret)
		if s.GetTlsCertificate().GetPrivateKey().GetInlineString() != key2 {
			t.Fatalf("workload-cert not rotated: %v", s)
		}
		if got := counter(t, e, "bearkong_xds_push_total", "sds"); got != 2 {
			t.Fatalf("bearkong_xds_push_total{type=sds} = %v", got)
		}
		if got := counter(t, e, "bearkong_xds_ack_total", "sds"); got != 2 {
			t.Fatalf("bearkong_xds_ack_total{type=sds} = %v", got)
		}
		if got := counter(t, e, "bearkong_xds_push_total", "cds"); got != pushes {
			t.Fatalf("cds pushes moved on a rotation: %v -> %v", pushes, got)
		}
	})

	t.Run("/debug/streams shows the sds entry and no key material; nor do the logs", func(t *testing.T) {
		rec := httptest.NewRecorder()
		srv.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/streams?node=a", nil))
		var body struct {
			Streams []struct {
				Types map[string]ads.TypeInfo `json:"types"`
			} `json:"streams"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatal(err)
		}
		if len(body.Streams) != 1 {
			t.Fatalf("/debug/streams: %s", rec.Body.String())
		}
		ti, ok := body.Streams[0].Types["sds"]
		if !ok || ti.Status != ads.Synced || !slices.Equal(ti.Subscribed, []string{"trust-bundle", "workload-cert"}) || ti.Pushes != 2 {
			t.Fatalf("sds entry: %+v (%s)", ti, rec.Body.String())
		}
		for _, leak := range []string{"PRIVATE KEY", "key-one", "key-two", "roots-one"} {
			if strings.Contains(rec.Body.String(), leak) {
				t.Fatalf("/debug/streams holds %q: %s", leak, rec.Body.String())
			}
			if strings.Contains(logs.String(), leak) {
				t.Fatalf("the logs hold %q", leak)
			}
		}
		if !strings.Contains(logs.String(), "type=sds") {
			t.Fatalf("no SDS in the debug logs, so the check above proves nothing:\n%s", logs.String())
		}
	})
}

// waitSDS waits until the node's stream shows an SDS state that cond accepts.
func waitSDS(t *testing.T, e *env, node string, cond func(ads.TypeInfo) bool) ads.TypeInfo {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s := e.srv.Streams(node); len(s) == 1 && cond(s[0].Types.SDS) {
			return s[0].Types.SDS
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: SDS state not reached: %+v", node, e.srv.Streams(node))
	return ads.TypeInfo{}
}
