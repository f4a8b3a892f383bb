package translate

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// hcmOf decodes the HTTP connection manager of a listener built by this package.
func hcmOf(t testing.TB, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	var hcm hcmv3.HttpConnectionManager
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatalf("listener %q: %v", l.GetName(), err)
	}
	return &hcm
}

// withStaticResources returns a copy of base that also holds p's resources as static
// resources, exactly as they would arrive over ADS: EDS clusters and RDS listeners.
func withStaticResources(t testing.TB, base *bootstrapv3.Bootstrap, p *resource.Proxy) *bootstrapv3.Bootstrap {
	t.Helper()
	b := proto.Clone(base).(*bootstrapv3.Bootstrap)
	for _, r := range p.Views[resource.Cluster].All() {
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, unpack(t, r.Any).(*clusterv3.Cluster))
	}
	for _, r := range p.Views[resource.Listener].All() {
		b.StaticResources.Listeners = append(b.StaticResources.Listeners, unpack(t, r.Any).(*listenerv3.Listener))
	}
	return b
}

// inlined returns a bootstrap that runs p's config without a control plane: each EDS
// cluster becomes a STATIC one holding its ClusterLoadAssignment, each listener holds its
// route configuration inline, the two SDS secrets are static ones from the test CA
// (withTestSecrets, with a workload certificate for testIdentity), and there are no
// dynamic resources; the outbound listener's scopes come inline, each holding its route
// configuration. Everything Envoy routes on (scope keys, matches, 404 bodies, endpoints,
// ports, TLS and SAN checks) is unchanged.
func inlined(t testing.TB, base *bootstrapv3.Bootstrap, p *resource.Proxy) *bootstrapv3.Bootstrap {
	t.Helper()
	// Everything of the bootstrap but its resources (the overload manager, for one).
	b := proto.Clone(base).(*bootstrapv3.Bootstrap)
	b.StaticResources = &bootstrapv3.Bootstrap_StaticResources{}
	b.DynamicResources = nil
	for _, r := range p.Views[resource.Cluster].All() {
		c := unpack(t, r.Any).(*clusterv3.Cluster)
		if c.GetType() == clusterv3.Cluster_EDS {
			cr, ok := p.Views[resource.Endpoint].Get(c.GetName())
			if !ok {
				t.Fatalf("cluster %q has no ClusterLoadAssignment", c.GetName())
			}
			c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
			c.EdsClusterConfig = nil
			c.LoadAssignment = unpack(t, cr.Any).(*endpointv3.ClusterLoadAssignment)
		}
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, c)
	}
	for _, r := range p.Views[resource.Listener].All() {
		l := unpack(t, r.Any).(*listenerv3.Listener)
		// Every chain (a PERMISSIVE inbound listener has two) gets its routes inline.
		for _, fc := range l.GetFilterChains() {
			var hcm hcmv3.HttpConnectionManager
			if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				t.Fatalf("listener %q: %v", l.GetName(), err)
			}
			if sr := hcm.GetScopedRoutes(); sr != nil {
				// The scopes and each scope's route configuration, inline.
				list := &hcmv3.ScopedRouteConfigurationsList{}
				for _, r := range p.Views[resource.ScopedRoute].All() {
					scope := unpack(t, r.Any).(*routev3.ScopedRouteConfiguration)
					rr, ok := p.Views[resource.Route].Get(scope.GetRouteConfigurationName())
					if !ok {
						t.Fatalf("scope %q: no route configuration %q", scope.GetName(), scope.GetRouteConfigurationName())
					}
					scope.RouteConfigurationName = ""
					scope.RouteConfiguration = unpack(t, rr.Any).(*routev3.RouteConfiguration)
					list.ScopedRouteConfigurations = append(list.ScopedRouteConfigurations, scope)
				}
				sr.ConfigSpecifier = &hcmv3.ScopedRoutes_ScopedRouteConfigurationsList{ScopedRouteConfigurationsList: list}
				fc.GetFilters()[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcm)}
				continue
			}
			rr, ok := p.Views[resource.Route].Get(hcm.GetRds().GetRouteConfigName())
			if !ok {
				t.Fatalf("listener %q: no route configuration %q", l.GetName(), hcm.GetRds().GetRouteConfigName())
			}
			hcm.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: unpack(t, rr.Any).(*routev3.RouteConfiguration)}
			fc.GetFilters()[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcm)}
		}
		b.StaticResources.Listeners = append(b.StaticResources.Listeners, l)
	}
	pki := defaultTestPKI(t)
	withTestSecrets(t, b, pki.workload, pki.key, pki.ca.pem)
	return b
}

// TestEnvoyValidateResources has the real Envoy check every resource of the sample
// proxies: once as they come over ADS (EDS clusters, RDS listeners) and once inlined, so
// that the ClusterLoadAssignments and route configurations are checked too.
//
// Between them the proxies cover every mTLS mode of the inbound listener (app-1-a STRICT,
// app-2-a PERMISSIVE, the unknown pod DISABLE by default) and clusters with TLS over
// HTTP/1.1 and HTTP/2; as over ADS, they name their secrets over SDS.
func TestEnvoyValidateResources(t *testing.T) {
	envoy := envoyBinary(t)
	tr, err := NewWithOptions(sampleSnapshot(), Options{DefaultMTLS: mesh.MTLSDisable})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []Node{nodeApp1A, nodeApp2A, nodeLocal} {
		base, err := Bootstrap(BootstrapOptions{
			PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, OutboundIP: n.OutboundIP, AppAddress: n.AppAddress,
			XDSAddress: "127.0.0.1:18000", XDSInsecure: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		p := mustProxy(t, tr, n)
		t.Run(n.ID+"/ads", func(t *testing.T) {
			t.Parallel()
			envoyValidate(t, envoy, "json", withStaticResources(t, base, p))
		})
		t.Run(n.ID+"/inlined", func(t *testing.T) {
			t.Parallel()
			envoyValidate(t, envoy, "json", inlined(t, base, p))
		})
	}
}

// TestEnvoyRouting runs a real Envoy on one proxy's translated config (inlined, since
// there is no ADS server here) and checks the mesh contract end to end in one process:
// a request to the outbound port with "service: <name>" goes to that service's endpoint
// at the sidecar inbound port, which is this same Envoy, whose inbound listener sends
// it to the local app; unknown and missing headers get the readable 404s.
func TestEnvoyRouting(t *testing.T) {
	envoy := envoyBinary(t)
	ip := freeLoopbackIP(t)
	outIP := freeLoopbackIP(t) // the pod's own loopback address, as 127.0.0.1 in a pod

	app := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "app got %s %s service=%q\n", r.Method, r.URL.Path, r.Header.Get("service"))
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })

	// Both services' only endpoint is this proxy's own IP: the request loops through
	// the inbound listener, as it would through a peer's sidecar.
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{
			{Namespace: "default", Name: "app-1", Endpoints: []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}},
			{Namespace: "other", Name: "app-9", Endpoints: []mesh.Endpoint{{IP: ip, Pod: "app-9-0"}}},
		},
		// PERMISSIVE: the last case sends plaintext straight to the inbound listener,
		// while the others loop back to it over mutual TLS (the Services are STRICT).
		Proxies: map[string]*mesh.Proxy{"default/app-1-0": {Namespace: "default", Name: "app-1-0", IP: ip, Services: []string{"default/app-1"}, MTLS: mesh.MTLSPermissive}},
	}
	n := Node{ID: "app-1-0.default", PodNamespace: "default", PodName: "app-1-0", ListenIP: ip, OutboundIP: outIP, AppAddress: ln.Addr().String()}
	p := mustProxy(t, mustNew(t, snap), n)
	base, err := Bootstrap(BootstrapOptions{
		PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, OutboundIP: n.OutboundIP,
		AppAddress: n.AppAddress, XDSAddress: "127.0.0.1:18000", XDSInsecure: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := inlined(t, base, p)
	// An ephemeral admin port, so that the test never collides with a real sidecar's 8081.
	cfg.Admin.Address = socketAddress(ip, 0)
	path := filepath.Join(t.TempDir(), "envoy.json")
	if err := os.WriteFile(path, stableJSON(t, cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, _ := runEnvoy(t, envoy, path)

	client := &http.Client{Timeout: 5 * time.Second}
	get := func(port int, service string) (int, string, error) {
		host := ip
		if port == mesh.OutboundPort {
			host = outIP
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, strconv.Itoa(port))+"/hello", nil)
		if err != nil {
			return 0, "", err
		}
		if service != "" {
			req.Header.Set("service", service)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}

	// Wait (bounded) for both listeners.
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, _, err1 := get(mesh.OutboundPort, "")
		_, _, err2 := get(mesh.InboundPort, "")
		if err1 == nil && err2 == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("envoy not serving within 30s: %v, %v", err1, err2)
		}
		time.Sleep(100 * time.Millisecond)
	}

	for _, tc := range []struct {
		name     string
		port     int
		service  string
		wantCode int
		wantBody string
	}{
		{"short name in own namespace", mesh.OutboundPort, "app-1", 200, `app got GET /hello service="app-1"` + "\n"},
		{"full name in own namespace", mesh.OutboundPort, "app-1.default", 200, `app got GET /hello service="app-1.default"` + "\n"},
		{"full name in other namespace", mesh.OutboundPort, "app-9.other", 200, `app got GET /hello service="app-9.other"` + "\n"},
		{"name.ns.svc", mesh.OutboundPort, "app-9.other.svc", 200, `app got GET /hello service="app-9.other.svc"` + "\n"},
		{"full DNS name", mesh.OutboundPort, "app-1.default.svc.cluster.local", 200, `app got GET /hello service="app-1.default.svc.cluster.local"` + "\n"},
		{"full DNS name in capitals", mesh.OutboundPort, "APP-9.OTHER.SVC.CLUSTER.LOCAL", 200, `app got GET /hello service="APP-9.OTHER.SVC.CLUSTER.LOCAL"` + "\n"},
		{"another cluster domain", mesh.OutboundPort, "app-9.other.svc.cluster.remote", 404, UnknownServiceBody},
		{"short name in other namespace", mesh.OutboundPort, "app-9", 404, UnknownServiceBody},
		{"unknown service", mesh.OutboundPort, "nope", 404, UnknownServiceBody},
		{"missing header", mesh.OutboundPort, "", 404, MissingServiceHeaderBody},
		{"inbound goes to the app", mesh.InboundPort, "", 200, `app got GET /hello service=""` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body, err := get(tc.port, tc.service)
			if err != nil {
				t.Fatal(err)
			}
			if code != tc.wantCode || body != tc.wantBody {
				t.Errorf("got %d %q, want %d %q", code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
}

// freeLoopbackIP picks an address in 127.0.1.0/24 (the local mesh's pod range) whose
// inbound and outbound ports are free right now, so that the test does not collide with
// a local mesh running on the same machine.
func freeLoopbackIP(t *testing.T) string {
	t.Helper()
	var lastErr error
	for range 20 {
		ip := fmt.Sprintf("127.0.1.%d", 100+rand.IntN(150))
		free := true
		for _, port := range []int{mesh.InboundPort, mesh.OutboundPort} {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				free, lastErr = false, err
				break
			}
			l.Close()
		}
		if free {
			return ip
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no candidate")
	}
	t.Fatalf("no loopback address with free ports %d and %d: %v", mesh.InboundPort, mesh.OutboundPort, lastErr)
	return ""
}
