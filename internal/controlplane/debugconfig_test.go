package controlplane_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
)

func httpDo(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (h *harness) config(t *testing.T, query string) controlplane.ProxyConfig {
	t.Helper()
	code, body := httpDo(t, http.MethodGet, h.http+"/debug/config?"+query)
	if code != http.StatusOK {
		t.Fatalf("/debug/config?%s: %d %s", query, code, body)
	}
	var pc controlplane.ProxyConfig
	if err := json.Unmarshal([]byte(body), &pc); err != nil {
		t.Fatalf("/debug/config?%s: %v\n%s", query, err, body)
	}
	return pc
}

// held is the names of the resources of typeURL the client holds: the last response's for
// the types sent whole (CDS, LDS), the subscription for the others.
func held(c *xdstest.Client, typeURL string) []string {
	return heldIn(c.Received(), c, typeURL)
}

func heldIn(rs []xdstest.Received, c *xdstest.Client, typeURL string) []string {
	// CDS, LDS and SRDS responses carry the whole set; the others only what they add.
	if typeURL != xdstest.ClusterType && typeURL != xdstest.ListenerType && typeURL != xdstest.ScopedRouteType {
		return c.Names(typeURL)
	}
	for i := len(rs) - 1; i >= 0; i-- {
		if rs[i].TypeURL == typeURL && !rs[i].NACKed {
			return rs[i].Names
		}
	}
	return nil
}

// TestDebugConfig checks /debug/config against what the stream was sent: the same
// versions and resources, per type in push order, decoded, with the private key
// redacted; and its errors.
func TestDebugConfig(t *testing.T) {
	h := start(t)
	c := h.connect(t, "app-1-0", "10.0.0.1")
	info := h.waitSynced(t, "app-1-0.default")

	pc := h.config(t, "node=app-1-0.default")
	if pc.Node != "app-1-0.default" || pc.Pod != "app-1-0" || pc.Namespace != "default" || pc.PodIP != "10.0.0.1" || strings.Join(pc.Serves, ",") != "default/app-1" {
		t.Errorf("header: node %q pod %q namespace %q pod_ip %q serves %v", pc.Node, pc.Pod, pc.Namespace, pc.PodIP, pc.Serves)
	}
	var types []string
	for _, tc := range pc.Types {
		types = append(types, tc.Type)
	}
	if got := strings.Join(types, ","); got != "cds,eds,lds,srds,rds,sds" {
		t.Fatalf("types %s, want cds,eds,lds,srds,rds,sds", got)
	}
	urls := map[string]string{"cds": xdstest.ClusterType, "eds": xdstest.EndpointType, "lds": xdstest.ListenerType, "srds": xdstest.ScopedRouteType, "rds": xdstest.RouteType, "sds": xdstest.SecretType}
	for _, tc := range pc.Types {
		ti := map[string]ads.TypeInfo{"cds": info.Types.CDS, "eds": info.Types.EDS, "lds": info.Types.LDS, "srds": info.Types.SRDS, "rds": info.Types.RDS, "sds": info.Types.SDS}[tc.Type]
		if tc.Version != ti.VersionSent || tc.TypeURL != urls[tc.Type] {
			t.Errorf("%s: version %q type_url %q; the stream was sent %q", tc.Type, tc.Version, tc.TypeURL, ti.VersionSent)
		}
		var names []string
		for _, r := range tc.Resources {
			names = append(names, r.Name)
			if r.Hash == "" || len(r.Resource) == 0 {
				t.Errorf("%s %s: no hash or content", tc.Type, r.Name)
			}
		}
		want := slices.Sorted(slices.Values(held(c, urls[tc.Type])))
		if !slices.Equal(names, want) {
			t.Errorf("%s: resources %v, the client holds %v", tc.Type, names, want)
		}
	}
	// A cluster decodes to what the client received.
	for _, r := range pc.Types[0].Resources {
		var got clusterv3.Cluster
		if err := protojson.Unmarshal(r.Resource, &got); err != nil {
			t.Fatalf("cds %s: %v", r.Name, err)
		}
		if want := c.Resource(xdstest.ClusterType, r.Name); want == nil || !proto.Equal(&got, want) {
			t.Errorf("cds %s: /debug/config differs from what was sent", r.Name)
		}
	}
	// The certificate shows, the private key does not.
	var sds controlplane.TypeConfig
	for _, tc := range pc.Types {
		if tc.Type == "sds" {
			sds = tc
		}
	}
	var found bool
	for _, r := range sds.Resources {
		if strings.Contains(string(r.Resource), "PRIVATE KEY") || strings.Contains(string(r.Resource), "UFJJVkFURSBLRVk") {
			t.Errorf("sds %s shows a private key: %s", r.Name, r.Resource)
		}
		var s tlsv3.Secret
		if err := protojson.Unmarshal(r.Resource, &s); err != nil {
			t.Fatal(err)
		}
		if tc := s.GetTlsCertificate(); tc != nil {
			found = true
			if string(tc.GetPrivateKey().GetInlineBytes()) != controlplane.Redacted || !strings.Contains(string(tc.GetCertificateChain().GetInlineBytes()), "BEGIN CERTIFICATE") {
				t.Errorf("workload secret: key %q, chain %.40q", tc.GetPrivateKey().GetInlineBytes(), tc.GetCertificateChain().GetInlineBytes())
			}
		}
	}
	if !found {
		t.Error("no workload certificate in sds")
	}

	t.Run("type filter", func(t *testing.T) {
		pc := h.config(t, "node=app-1-0.default&type=rds")
		if len(pc.Types) != 1 || pc.Types[0].Type != "rds" {
			t.Fatalf("type=rds gave %+v", pc.Types)
		}
	})
	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			code  int
			says  string
		}{
			{"node=nobody.default", http.StatusNotFound, `no proxy "nobody.default" is connected to this replica`},
			{"", http.StatusBadRequest, "needs ?node=<pod>.<namespace>"},
			{"node=app-1-0.default&type=xds", http.StatusBadRequest, `unknown type "xds"; want one of cds, eds, lds, srds, rds, sds, or all`},
		} {
			code, body := httpDo(t, http.MethodGet, h.http+"/debug/config?"+tc.query)
			if code != tc.code || !strings.Contains(body, tc.says) {
				t.Errorf("?%s: %d %q, want %d saying %q", tc.query, code, body, tc.code, tc.says)
			}
		}
	})
}

// TestTestHooks checks the hooks `bearkong status` and `bearkong config --diff` are
// tested with: a paused proxy keeps the config it had while /debug/config moves on, and
// catches up when resumed; the nack hook adds the listener Envoy rejects; neither is
// served without Options.TestHooks.
func TestTestHooks(t *testing.T) {
	h := startOpts(t, testCertificates(t), func(o *controlplane.Options) { o.TestHooks = true; o.DebugAddr = "127.0.0.1:0" })
	c := h.connect(t, "app-1-0", "10.0.0.1")
	h.waitSynced(t, "app-1-0.default")
	debug := "http://" + h.cp.DebugAddr()

	if code, body := httpDo(t, http.MethodPost, debug+"/debug/testing/pause?node=app-1-0.default"); code != http.StatusOK {
		t.Fatalf("pause: %d %s", code, body)
	}
	if _, err := h.client.CoreV1().Services("default").Create(context.Background(), service("app-4"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// /debug/config has the new cluster; the stream does not get it.
	deadline := time.Now().Add(5 * time.Second)
	for !slices.ContainsFunc(h.config(t, "node=app-1-0.default&type=cds").Types[0].Resources, func(r controlplane.ResourceConfig) bool { return strings.HasPrefix(r.Name, "app-4.") }) {
		if time.Now().After(deadline) {
			t.Fatal("/debug/config never showed app-4's cluster")
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if slices.ContainsFunc(held(c, xdstest.ClusterType), func(n string) bool { return strings.HasPrefix(n, "app-4.") }) {
		t.Fatal("a paused proxy got the new cluster")
	}
	held := h.waitSynced(t, "app-1-0.default")
	if want := h.config(t, "node=app-1-0.default&type=cds").Types[0].Version; held.Types.CDS.VersionAcked == want {
		t.Fatalf("paused proxy acked %s, the version /debug/config shows", want)
	}

	if code, body := httpDo(t, http.MethodDelete, debug+"/debug/testing/pause?node=app-1-0.default"); code != http.StatusOK {
		t.Fatalf("resume: %d %s", code, body)
	}
	if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool {
		return slices.ContainsFunc(heldIn(rs, c, xdstest.ClusterType), func(n string) bool { return strings.HasPrefix(n, "app-4.") })
	}); err != nil {
		t.Fatalf("resumed proxy never got app-4's cluster: %v", err)
	}

	if code, body := httpDo(t, http.MethodPost, debug+"/debug/testing/nack?node=app-1-0.default"); code != http.StatusOK {
		t.Fatalf("nack: %d %s", code, body)
	}
	if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool {
		return slices.Contains(heldIn(rs, c, xdstest.ListenerType), controlplane.RejectedListenerName)
	}); err != nil {
		t.Fatalf("the nack hook's listener never arrived: %v", err)
	}
	if pc := h.config(t, "node=app-1-0.default&type=lds"); slices.ContainsFunc(pc.Types[0].Resources, func(r controlplane.ResourceConfig) bool { return r.Name == controlplane.RejectedListenerName }) {
		t.Error("/debug/config shows the test hook's listener; it shows what bearkong means the proxy to run")
	}
	if code, body := httpDo(t, http.MethodDelete, debug+"/debug/testing/nack?node=app-1-0.default"); code != http.StatusOK {
		t.Fatalf("un-nack: %d %s", code, body)
	}
	if err := c.WaitFor(5*time.Second, func(rs []xdstest.Received) bool {
		return !slices.Contains(heldIn(rs, c, xdstest.ListenerType), controlplane.RejectedListenerName)
	}); err != nil {
		t.Fatalf("the nack hook's listener stayed: %v", err)
	}

	t.Run("off by default", func(t *testing.T) {
		h := startOpts(t, testCertificates(t), func(o *controlplane.Options) { o.DebugAddr = "127.0.0.1:0" })
		if code, _ := httpDo(t, http.MethodPost, "http://"+h.cp.DebugAddr()+"/debug/testing/pause?node=app-1-0.default"); code != http.StatusNotFound {
			t.Errorf("pause without TestHooks: %d, want 404", code)
		}
	})
}
