package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/ca"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// This is the in-process tier: real discovery (over a fake clientset), real translate,
// the real gRPC ADS server on 127.0.0.1:0, and test clients playing Envoy.

func service(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{"meshed": "enabled"}, ResourceVersion: "1"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 9090}},
		},
	}
}

func pod(app string, i int, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: fmt.Sprintf("%s-%d", app, i), Labels: map[string]string{"app": app}, ResourceVersion: "1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip},
	}
}

func slice(app string, ips ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: app + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: app}, ResourceVersion: "1"},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	ready := true
	for _, ip := range ips {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}})
	}
	return s
}

func node(podName, ip string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{
		"pod_name": podName, "pod_namespace": "default", "listen_ip": ip, "app_address": ip + ":9090",
	})
	return &corev3.Node{Id: podName + ".default", Cluster: "bearkong-mesh", Metadata: md}
}

type harness struct {
	client kubernetes.Interface
	cp     *controlplane.ControlPlane
	http   string
}

func start(t *testing.T) *harness {
	t.Helper()
	return startWith(t, testCertificates(t))
}

// startWith is start with the given certificates.
func startWith(t *testing.T, certs controlplane.Certificates) *harness {
	t.Helper()
	return startOpts(t, certs, nil)
}

// startOpts is startWith with mod applied to the control plane's options.
func startOpts(t *testing.T, certs controlplane.Certificates, mod func(*controlplane.Options)) *harness {
	t.Helper()
	client := fake.NewClientset(
		service("app-1"), service("app-2"), service("app-3"),
		pod("app-1", 0, "10.0.0.1"), pod("app-2", 0, "10.0.0.2"), pod("app-3", 0, "10.0.0.3"),
		slice("app-1", "10.0.0.1"), slice("app-2", "10.0.0.2"), slice("app-3", "10.0.0.3"),
	)
	reg := controlplane.NewRegistry()
	d := discovery.New(client, discovery.Options{QuietPeriod: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond, ResyncPeriod: 100 * time.Millisecond, Registerer: reg})
	o := controlplane.Options{XDSAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Registry: reg, DrainTimeout: time.Second,
		Certificates: certs}
	if mod != nil {
		mod(&o)
	}
	cp := controlplane.New(d, o)
	if err := cp.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cp.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return within 5s of cancel")
		}
	})
	return &harness{client: client, cp: cp, http: "http://" + cp.HTTPAddr()}
}

func (h *harness) connect(t *testing.T, podName, ip string, nack ...func(string, []string) string) *xdstest.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c, err := xdstest.Dial(ctx, h.cp.XDSAddr(), node(podName, ip))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if len(nack) > 0 {
		c.Nack = nack[0]
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	return c
}

func (h *harness) streams(t *testing.T, nodeID string) []ads.StreamInfo {
	t.Helper()
	resp, err := http.Get(h.http + "/debug/streams?node=" + nodeID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Streams []ads.StreamInfo `json:"streams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.Streams
}

func (h *harness) waitSynced(t *testing.T, nodeID string) ads.StreamInfo {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last []ads.StreamInfo
	for time.Now().Before(deadline) {
		last = h.streams(t, nodeID)
		if len(last) == 1 {
			ty := last[0].Types
			if ty.CDS.Status == ads.Synced && ty.EDS.Status == ads.Synced && ty.LDS.Status == ads.Synced && ty.RDS.Status == ads.Synced {
				return last[0]
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never SYNCED on every type: %+v", nodeID, last)
	return ads.StreamInfo{}
}

// metric reads one sample from /metrics, e.g. `bearkong_xds_push_total{type="eds"}`.
func (h *harness) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(h.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			fmt.Sscan(v, &f)
			return f
		}
	}
	t.Fatalf("no series %s in /metrics", series)
	return 0
}

func typesOf(rs []xdstest.Received) string {
	var out []string
	for _, r := range rs {
		out = append(out, r.TypeURL[strings.LastIndex(r.TypeURL, ".")+1:])
	}
	return strings.Join(out, ",")
}

func TestControlPlaneInProcess(t *testing.T) {
	h := start(t)
	a := h.connect(t, "app-1-0", "10.0.0.1")
	b := h.connect(t, "app-2-0", "10.0.0.2")
	infoA := h.waitSynced(t, "app-1-0.default")
	h.waitSynced(t, "app-2-0.default")
	if strings.Join(infoA.Serves, ",") != "default/app-1" {
		t.Errorf("app-1-0 serves %v, want [default/app-1]", infoA.Serves)
	}

	// The secrets the clusters name come once their assignments arrived, as Envoy asks
	// for them (internal/xdsclient), and before the listeners that name them too. The
	// inbound routes come as soon as the listeners named them, the scopes then, and the
	// Services' routes once the scopes named them.
	t.Run("initial sync arrives in CDS, EDS, SDS, LDS, RDS, SRDS, RDS order", func(t *testing.T) {
		if got := typesOf(a.Received()); got != "Cluster,ClusterLoadAssignment,Secret,Listener,RouteConfiguration,ScopedRouteConfiguration,RouteConfiguration" {
			t.Fatalf("initial responses: %s", got)
		}
	})

	t.Run("readyz and healthz", func(t *testing.T) {
		for _, p := range []string{"/healthz", "/readyz"} {
			resp, err := http.Get(h.http + p)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d", p, resp.StatusCode)
			}
		}
	})

	t.Run("an informer resync sends nothing", func(t *testing.T) {
		before := h.metric(t, `bearkong_xds_push_total{type="cds"}`) + h.metric(t, `bearkong_xds_push_total{type="eds"}`) +
			h.metric(t, `bearkong_xds_push_total{type="lds"}`) + h.metric(t, `bearkong_xds_push_total{type="rds"}`)
		n := len(a.Received())
		time.Sleep(600 * time.Millisecond) // six resync periods
		after := h.metric(t, `bearkong_xds_push_total{type="cds"}`) + h.metric(t, `bearkong_xds_push_total{type="eds"}`) +
			h.metric(t, `bearkong_xds_push_total{type="lds"}`) + h.metric(t, `bearkong_xds_push_total{type="rds"}`)
		if after != before || len(a.Received()) != n {
			t.Fatalf("pushes %v -> %v; responses %d -> %d", before, after, n, len(a.Received()))
		}
	})

	t.Run("an endpoint change pushes EDS only, with that service only", func(t *testing.T) {
		na, nb := len(a.Received()), len(b.Received())
		s := slice("app-3", "10.0.0.3", "10.0.0.4")
		s.ResourceVersion = "2"
		if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, c := range []*xdstest.Client{a, b} {
			n := na
			if c == b {
				n = nb
			}
			if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool { return len(rs) > n }); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond) // anything else would arrive in this window
			got := c.Received()[n:]
			if len(got) != 1 || got[0].TypeURL != xdstest.EndpointType || strings.Join(got[0].Names, ",") != "app-3.default" {
				t.Fatalf("%s got %+v, want one EDS response for app-3.default", c.Node.Id, got)
			}
			cla := c.Resource(xdstest.EndpointType, "app-3.default").(*endpointv3.ClusterLoadAssignment)
			if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
				t.Fatalf("app-3 has %d endpoints, want 2", n)
			}
		}
		h.waitSynced(t, "app-1-0.default")
		if v := h.metric(t, `bearkong_xds_convergence_seconds_count{type="eds"}`); v < 2 {
			t.Fatalf("convergence observed %v times for eds, want >= 2", v)
		}
	})

	t.Run("a policy change for one service sends RDS to its proxies only", func(t *testing.T) {
		na, nb := len(a.Received()), len(b.Received())
		svc := service("app-1")
		svc.Annotations = map[string]string{"mesh-timeout": "2s"}
		svc.ResourceVersion = "2"
		if _, err := h.client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := a.WaitFor(5*time.Second, func(rs []xdstest.Received) bool { return len(rs) > na }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		got := a.Received()[na:]
		if len(got) != 1 || got[0].TypeURL != xdstest.RouteType || strings.Join(got[0].Names, ",") != "inbound" {
			t.Fatalf("app-1-0 got %+v, want one RDS response with the inbound route", got)
		}
		rc := a.Resource(xdstest.RouteType, "inbound").(*routev3.RouteConfiguration)
		if d := rc.GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetTimeout().AsDuration(); d != 2*time.Second {
			t.Fatalf("inbound timeout %s, want 2s", d)
		}
		if got := b.Received()[nb:]; len(got) != 0 {
			t.Fatalf("app-2-0 got %+v, want nothing", got)
		}
	})

	t.Run("diagnostics name the service and the port", func(t *testing.T) {
		resp, err := http.Get(h.http + "/debug/diagnostics?name=app-3")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Diagnostics []mesh.Diagnostic `json:"diagnostics"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		if len(body.Diagnostics) != 1 || body.Diagnostics[0].Reason != mesh.ReasonTargetPortBypasses || !strings.Contains(body.Diagnostics[0].Message, "port 9090 targets 9090") {
			t.Fatalf("diagnostics: %+v", body.Diagnostics)
		}
	})

	t.Run("a NACK shows in /debug/streams and in the metrics, and is not resent", func(t *testing.T) {
		const msg = "listener outbound: cannot bind"
		c := h.connect(t, "app-3-0", "10.0.0.3", func(typeURL string, _ []string) string {
			if typeURL == xdstest.ListenerType {
				return msg
			}
			return ""
		})
		var lds ads.TypeInfo
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if s := h.streams(t, "app-3-0.default"); len(s) == 1 && s[0].Types.LDS.Status == ads.Nacked {
				lds = s[0].Types.LDS
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if lds.LastNack == nil || lds.LastNack.Message != msg || lds.LastNack.Version != lds.VersionSent || lds.VersionAcked != "" {
			t.Fatalf("LDS state: %+v, last nack %+v", lds, lds.LastNack)
		}
		if v := h.metric(t, `bearkong_xds_nack_total{type="lds"}`); v != 1 {
			t.Fatalf("bearkong_xds_nack_total{type=\"lds\"} = %v, want 1", v)
		}
		time.Sleep(300 * time.Millisecond)
		if n := xdstest.Count(c.Received(), xdstest.ListenerType); n != 1 {
			t.Fatalf("LDS sent %d times, want 1: rejected content must not be resent", n)
		}
	})
}

// testCertificates is a CA with a new root, as `bearkong cp` makes on first start.
func testCertificates(t *testing.T) controlplane.Certificates {
	t.Helper()
	m, err := ca.GenerateRoot(ca.DefaultTrustDomain, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a, err := ca.New(m, ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return controlplane.AuthorityCertificates(a)
}
