package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"io"
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
// ACKed and NACKed the same versions, and have the same clusters warming.
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
		ListenIP: "127.0.2.1", AdminAddress: adminAddr, XDSAddress: lis.Addr().String(), XDSInsecure: true})
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
		warm, err := envoyWarming(ctx, adminAddr)
		if err != nil {
			t.Fatal(err)
		}
		if cw := client.Warming(); !slices.Equal(warm, cw) {
			t.Errorf("%s: warming clusters: Envoy %v, the client %v", step, warm, cw)
		}
		t.Logf("%s: Envoy %v; warming %v", step, e, warm)
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
