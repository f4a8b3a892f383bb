package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/kubeenv/proc"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// Zero trust (issue 11): workload certificates over SDS, mutual TLS between every pair of
// sidecars, the mTLS modes, rotation, and the authenticated xDS channel, against real
// Envoys, the real API server and `bearkong cp --cert-lifetime 60s` (main_test.go), so
// that every proxy rotates every 30 s for the whole run.
//
// The tests run in order and put the mesh back as they found it: app-1 x1, app-2 x2,
// app-3 x2, every Service in the default mode (STRICT), one control plane.

// The names this file shares with the product. They are spelled out rather than taken
// from pkg/translate and pkg/resource so that the tests say what is on the wire.
const (
	trustDomain = "cluster.local"
	// annotationMTLS is the mode annotation on a Service or Namespace.
	annotationMTLS = "mesh-mtls"
	// workloadSecret and trustBundleSecret are the SDS secrets every proxy gets
	// (translate.WorkloadSecretName, translate.TrustBundleSecretName).
	workloadSecret    = "workload-cert"
	trustBundleSecret = "trust-bundle"
	secretTypeURL     = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	clusterTypeURL    = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	tlsTransport      = "envoy.transport_sockets.tls"
	upstreamTLSType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	downstreamTLSType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	// xdsServerName is the name the proxies check the control plane's certificate for:
	// the host of --xds-address (`bearkong bootstrap`'s default --xds-server-name).
	xdsServerName = "127.0.0.1"
	// certLifetime is --cert-lifetime of the shared control plane (main_test.go); leaves
	// rotate at half of it.
	certLifetime = 60 * time.Second
)

var demoApps = []string{"app-1", "app-2", "app-3"}

// spiffeID is the identity of a pod of the mesh.
func spiffeID(p localmesh.Pod) string {
	return mesh.SPIFFEID(trustDomain, p.Namespace, p.ServiceAccount)
}

// clusterStat names a stat of the caller's cluster for a Service: clusters are named
// "<name>.<namespace>" and their stats live under alt_stat_name "<namespace>/<name>"
// (translate.StatName).
func clusterStat(ns, svc, stat string) string { return "cluster." + ns + "/" + svc + "." + stat }

// listenerStat names a stat of a pod's inbound listener, which has no stat_prefix: its
// stats live under listener.<address>_<port>.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/stats
func listenerStat(p localmesh.Pod, stat string) string {
	return "listener." + p.IP + "_" + strconv.Itoa(mesh.InboundPort) + "." + stat
}

// statsOf returns the stats of every pod, keyed by pod name.
func statsOf(ctx context.Context, t *testing.T, m *localmesh.Mesh, pods []localmesh.Pod) map[string]map[string]uint64 {
	t.Helper()
	out := map[string]map[string]uint64{}
	for _, p := range pods {
		st, err := m.EnvoyStats(ctx, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[p.Name] = st
	}
	return out
}

// setMTLSMode sets (mode != "") or removes the mesh-mtls annotation of a Service, leaving
// its other annotations alone.
func setMTLSMode(ctx context.Context, m *localmesh.Mesh, svc string, mode mesh.MTLSMode) error {
	return m.UpdateService(ctx, svc, func(s *corev1.Service) {
		if mode == "" {
			delete(s.Annotations, annotationMTLS)
			return
		}
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[annotationMTLS] = string(mode)
	})
}

// withMTLSMode sets a Service's mode for the rest of the test; the cleanup puts the
// default back and waits until every pod reaches the Service over mTLS again.
func withMTLSMode(t *testing.T, m *localmesh.Mesh, svc string, mode mesh.MTLSMode) {
	t.Helper()
	if err := setMTLSMode(ctxT(t, 10*time.Second), m, svc, mode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		if err := setMTLSMode(ctx, m, svc, ""); err != nil {
			t.Errorf("putting %s back to STRICT: %v", svc, err)
			return
		}
		if err := waitMode(ctx, m, svc, mesh.MTLSStrict); err != nil {
			t.Errorf("putting %s back to STRICT: %v", svc, err)
		}
	})
}

// waitMode waits until the Service's pods serve its inbound listener in mode, every other
// pod's cluster for it originates TLS unless mode is DISABLE, and every pod reaches it.
func waitMode(ctx context.Context, m *localmesh.Mesh, svc string, mode mesh.MTLSMode) error {
	return localmesh.Eventually(ctx, 45*time.Second, func(ctx context.Context) error {
		for _, p := range m.PodsOf(svc) {
			dump, err := m.EnvoyConfigDump(ctx, p.Name)
			if err != nil {
				return err
			}
			mtls, plain, err := inboundChains(dump)
			if err != nil {
				return fmt.Errorf("%s: %w", p.Name, err)
			}
			var ok bool
			switch mode {
			case mesh.MTLSStrict:
				ok = mtls > 0 && plain == 0
			case mesh.MTLSPermissive:
				ok = mtls > 0 && plain > 0
			case mesh.MTLSDisable:
				ok = mtls == 0 && plain > 0
			}
			if !ok {
				return fmt.Errorf("%s's inbound listener has %d mTLS and %d plaintext filter chains, not yet %s", p.Name, mtls, plain, mode)
			}
		}
		for _, p := range m.Pods() {
			dump, err := m.EnvoyConfigDump(ctx, p.Name)
			if err != nil {
				return err
			}
			c, err := dumpedCluster(dump, svc+"."+p.Namespace)
			if err != nil {
				return fmt.Errorf("%s: %w", p.Name, err)
			}
			if _, tls := clusterTLSContext(c); tls != (mode != mesh.MTLSDisable) {
				return fmt.Errorf("%s's cluster for %s: TLS %v, not yet as %s wants", p.Name, svc, tls, mode)
			}
			if c := m.Call(ctx, p.Name, svc); c.Err != nil || c.Status != http.StatusOK || c.Answer.Name != svc {
				return fmt.Errorf("%s -> %s: %d %v %q", p.Name, svc, c.Status, c.Err, c.Body)
			}
		}
		return nil
	})
}

// addFreshPods adds one pod to each Service and removes them (gracefully) when the test
// ends, or earlier through the returned function, which waits until every proxy is
// synced again.
func addFreshPods(t *testing.T, m *localmesh.Mesh, svcs ...string) ([]localmesh.Pod, func()) {
	t.Helper()
	specs := make([]localmesh.PodSpec, len(svcs))
	for i, s := range svcs {
		specs[i] = localmesh.PodSpec{Service: s}
	}
	pods, err := m.AddPods(ctxT(t, 90*time.Second), specs...)
	var once sync.Once
	remove := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errs := make([]error, len(pods))
			var wg sync.WaitGroup
			for i, p := range pods {
				wg.Go(func() { errs[i] = m.RemovePod(ctx, p.Name, true) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Errorf("removing the pods the test added: %v", err)
			}
		})
	}
	t.Cleanup(remove)
	if err != nil {
		t.Fatal(err)
	}
	return pods, func() { remove(); waitAllSynced(t, m) }
}

// Config dumps, decoded as JSON: the tests read what Envoy holds, whatever Go types build
// it. https://www.envoyproxy.io/docs/envoy/latest/api-v3/admin/v3/config_dump.proto

type jsonObj = map[string]any

// dumpSection returns the config dump's entry of the given admin type
// ("ClustersConfigDump", "ListenersConfigDump", "SecretsConfigDump").
func dumpSection(dump []byte, typ string) (jsonObj, error) {
	var d struct {
		Configs []jsonObj `json:"configs"`
	}
	if err := json.Unmarshal(dump, &d); err != nil {
		return nil, fmt.Errorf("decode /config_dump: %w", err)
	}
	for _, c := range d.Configs {
		if c["@type"] == "type.googleapis.com/envoy.admin.v3."+typ {
			return c, nil
		}
	}
	return nil, fmt.Errorf("/config_dump has no %s", typ)
}

func objs(v any) []jsonObj {
	l, _ := v.([]any)
	out := make([]jsonObj, 0, len(l))
	for _, x := range l {
		if o, ok := x.(jsonObj); ok {
			out = append(out, o)
		}
	}
	return out
}

func obj(v any, path ...string) jsonObj {
	o, _ := v.(jsonObj)
	for _, k := range path {
		o, _ = o[k].(jsonObj)
	}
	return o
}

// dumpedCluster returns the active dynamic cluster of that name.
func dumpedCluster(dump []byte, name string) (jsonObj, error) {
	sec, err := dumpSection(dump, "ClustersConfigDump")
	if err != nil {
		return nil, err
	}
	for _, c := range objs(sec["dynamic_active_clusters"]) {
		if cl := obj(c, "cluster"); cl["name"] == name {
			return cl, nil
		}
	}
	return nil, fmt.Errorf("no active cluster %q in /config_dump", name)
}

// dumpedListener returns the active dynamic listener of that name.
func dumpedListener(dump []byte, name string) (jsonObj, error) {
	sec, err := dumpSection(dump, "ListenersConfigDump")
	if err != nil {
		return nil, err
	}
	for _, l := range objs(sec["dynamic_listeners"]) {
		if l["name"] == name {
			if al := obj(l, "active_state", "listener"); al != nil {
				return al, nil
			}
		}
	}
	return nil, fmt.Errorf("no active listener %q in /config_dump", name)
}

// findKey returns every value stored under key anywhere in v.
func findKey(v any, key string) []any {
	var out []any
	switch x := v.(type) {
	case jsonObj:
		for k, val := range x {
			if k == key {
				out = append(out, val)
			}
			out = append(out, findKey(val, key)...)
		}
	case []any:
		for _, val := range x {
			out = append(out, findKey(val, key)...)
		}
	}
	return out
}

// sdsNames returns the names of the SDS secrets a TLS context refers to, under key
// (tls_certificate_sds_secret_configs or validation_context_sds_secret_config).
func sdsNames(tlsContext jsonObj, key string) []string {
	var names []string
	for _, v := range findKey(tlsContext, key) {
		list := objs(v)
		if o, ok := v.(jsonObj); ok {
			list = []jsonObj{o}
		}
		for _, o := range list {
			if n, ok := o["name"].(string); ok {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

// clusterTLSContext returns the UpstreamTlsContext of a cluster's transport socket, if it
// originates TLS.
func clusterTLSContext(cluster jsonObj) (jsonObj, bool) {
	ts := obj(cluster, "transport_socket")
	if ts == nil || ts["name"] != tlsTransport {
		return nil, false
	}
	tc := obj(ts, "typed_config")
	return tc, tc["@type"] == upstreamTLSType
}

// subjectAltNames returns the URI SANs a TLS context requires of its peer
// (match_typed_subject_alt_names with exact matchers).
func subjectAltNames(tlsContext jsonObj) []string {
	var out []string
	for _, v := range findKey(tlsContext, "match_typed_subject_alt_names") {
		for _, m := range objs(v) {
			if m["san_type"] == "URI" {
				if e, ok := obj(m, "matcher")["exact"].(string); ok {
					out = append(out, e)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// inboundChains counts the inbound listener's filter chains that terminate TLS and
// require a client certificate, and those that take plaintext. A chain with TLS but no
// client certificate required counts as neither and is an error: no mode asks for it.
func inboundChains(dump []byte) (mtls, plain int, err error) {
	l, err := dumpedListener(dump, translate.InboundListenerName)
	if err != nil {
		return 0, 0, err
	}
	for i, fc := range objs(l["filter_chains"]) {
		ts := obj(fc, "transport_socket")
		if ts == nil {
			plain++
			continue
		}
		tc := obj(ts, "typed_config")
		if ts["name"] != tlsTransport || tc["@type"] != downstreamTLSType {
			return 0, 0, fmt.Errorf("inbound filter chain %d: transport socket %v", i, ts["name"])
		}
		if tc["require_client_certificate"] != true {
			return 0, 0, fmt.Errorf("inbound filter chain %d terminates TLS without requiring a client certificate", i)
		}
		if got := sdsNames(tc, "tls_certificate_sds_secret_configs"); !slices.Equal(got, []string{workloadSecret}) {
			return 0, 0, fmt.Errorf("inbound filter chain %d: certificate from SDS secrets %v, want [%s]", i, got, workloadSecret)
		}
		if got := sdsNames(tc, "validation_context_sds_secret_config"); !slices.Equal(got, []string{trustBundleSecret}) {
			return 0, 0, fmt.Errorf("inbound filter chain %d: validation context from SDS secrets %v, want [%s]", i, got, trustBundleSecret)
		}
		mtls++
	}
	return mtls, plain, nil
}

// Envoy's /certs: https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--certs

type certDetails struct {
	Path            string `json:"path"`
	SerialNumber    string `json:"serial_number"`
	SubjectAltNames []struct {
		URI string `json:"uri"`
		DNS string `json:"dns"`
	} `json:"subject_alt_names"`
	ExpirationTime string `json:"expiration_time"`
}

// workloadSerial returns the serial number of the certificate with the pod's SPIFFE ID
// that the pod's Envoy presents, from /certs. Envoy lists it once per TLS context; they
// must agree (a rotation updates them together), else it is an error.
func workloadSerial(ctx context.Context, p localmesh.Pod) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.AdminURL()+"/certs", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		Certificates []struct {
			CACert    []certDetails `json:"ca_cert"`
			CertChain []certDetails `json:"cert_chain"`
		} `json:"certificates"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", fmt.Errorf("%s /certs: %w", p.Name, err)
	}
	id := spiffeID(p)
	serials := map[string]bool{}
	var others []string
	for _, c := range body.Certificates {
		for _, d := range c.CertChain {
			var uris []string
			for _, san := range d.SubjectAltNames {
				if san.URI != "" {
					uris = append(uris, san.URI)
				}
			}
			if slices.Equal(uris, []string{id}) {
				serials[d.SerialNumber] = true
			} else {
				others = append(others, fmt.Sprint(uris))
			}
		}
	}
	if len(others) > 0 {
		return "", fmt.Errorf("%s presents certificates for %v, want only %s", p.Name, others, id)
	}
	switch len(serials) {
	case 0:
		return "", fmt.Errorf("%s holds no certificate for %s", p.Name, id)
	case 1:
		for s := range serials {
			return s, nil
		}
	}
	return "", fmt.Errorf("%s holds %d certificates for %s at once: %v", p.Name, len(serials), id, serials)
}

// sdsState is a proxy's SDS entry in /debug/streams, decoded here rather than through
// ads.TypeInfos so that the test reads the JSON an operator reads.
type sdsState struct {
	StreamID     uint64
	Status       string
	VersionSent  string
	VersionAcked string
	Pushes       uint64
	// Subscribed is only filled by sdsStreams with a node.
	Subscribed      []string
	SubscribedCount int
}

// sdsStreams returns the SDS state of every stream of the control plane at base (its HTTP
// URL), keyed by node id. With node set, only that node's, with its subscribed names:
// the summary of every stream gives only their count.
func sdsStreams(ctx context.Context, base, node string) (map[string]sdsState, error) {
	u := base + "/debug/streams"
	if node != "" {
		u += "?node=" + url.QueryEscape(node)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Streams []struct {
			ID    uint64 `json:"id"`
			Node  string `json:"node"`
			Types map[string]struct {
				Status          string   `json:"status"`
				Subscribed      []string `json:"subscribed"`
				SubscribedCount int      `json:"subscribed_count"`
				VersionSent     string   `json:"version_sent"`
				VersionAcked    string   `json:"version_acked"`
				Pushes          uint64   `json:"pushes"`
			} `json:"types"`
		} `json:"streams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode /debug/streams: %w", err)
	}
	out := map[string]sdsState{}
	for _, s := range body.Streams {
		sds, ok := s.Types["sds"]
		if !ok {
			return nil, fmt.Errorf("/debug/streams: stream of %s has no sds entry (types %v)", s.Node, mapsKeys(s.Types))
		}
		if _, dup := out[s.Node]; dup {
			return nil, fmt.Errorf("two streams for node %s", s.Node)
		}
		out[s.Node] = sdsState{StreamID: s.ID, Status: sds.Status, VersionSent: sds.VersionSent, VersionAcked: sds.VersionAcked, Pushes: sds.Pushes, Subscribed: sds.Subscribed, SubscribedCount: sds.SubscribedCount}
	}
	return out, nil
}

func mapsKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// waitSDSSynced waits until every pod has one stream that subscribes to its two secrets
// and has ACKed the latest SDS push, and returns the SDS states by node id.
func waitSDSSynced(t *testing.T, m *localmesh.Mesh) map[string]sdsState {
	t.Helper()
	var got map[string]sdsState
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		got = map[string]sdsState{}
		for _, p := range m.Pods() {
			one, err := sdsStreams(ctx, m.ControlPlaneURL(), nodeID(p))
			if err != nil {
				return err
			}
			s, ok := one[nodeID(p)]
			got[nodeID(p)] = s
			if !ok {
				return fmt.Errorf("no stream for %s", nodeID(p))
			}
			if s.Status != "SYNCED" || s.VersionSent == "" || s.VersionAcked != s.VersionSent {
				return fmt.Errorf("%s: SDS not synced: %+v", nodeID(p), s)
			}
			if sub := slices.Sorted(slices.Values(s.Subscribed)); !slices.Equal(sub, []string{trustBundleSecret, workloadSecret}) {
				return fmt.Errorf("%s subscribes to secrets %v, want [%s %s]", nodeID(p), s.Subscribed, trustBundleSecret, workloadSecret)
			}
		}
		return nil
	})
	return got
}

func TestMutualTLSBetweenEverySidecar(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	waitSDSSynced(t, m)
	ctx := ctxT(t, 3*time.Minute)

	// One new pod per app: its Envoy has no connection yet, so each of its calls opens
	// one, and the handshake counters on both sides must move. The other pods' pools
	// may already hold connections that a request reuses.
	fresh, removeFresh := addFreshPods(t, m, demoApps...)
	pods := m.Pods()
	before := statsOf(ctx, t, m, pods)
	answered := map[[2]string]localmesh.Pod{}
	for _, from := range fresh {
		for _, to := range demoApps {
			c := m.Call(ctx, from.Name, to)
			if c.Err != nil || c.Status != http.StatusOK || c.Answer.Name != to || c.Pod == "" {
				t.Fatalf("%s -> %s: %d %v %q", from.Name, to, c.Status, c.Err, c.Body)
			}
			callee, _ := m.Pod(c.Pod)
			answered[[2]string{from.Name, to}] = callee
		}
	}
	after := statsOf(ctx, t, m, pods)
	for _, from := range fresh {
		for _, to := range demoApps {
			callee := answered[[2]string{from.Name, to}]
			hs := clusterStat(from.Namespace, to, "ssl.handshake")
			cx := clusterStat(from.Namespace, to, "upstream_cx_total")
			dHS, dCX := after[from.Name][hs]-before[from.Name][hs], after[from.Name][cx]-before[from.Name][cx]
			if dHS < 1 || dHS != dCX {
				t.Errorf("caller %s -> %s: %s +%d, %s +%d; want every new upstream connection to be a TLS handshake", from.Name, to, hs, dHS, cx, dCX)
			}
			ls := listenerStat(callee, "ssl.handshake")
			if d := after[callee.Name][ls] - before[callee.Name][ls]; d < 1 {
				t.Errorf("callee %s (from %s): %s +%d, want the new connection's handshake", callee.Name, from.Name, ls, d)
			}
		}
	}

	// Every pod reaches every app, and every connection any pod ever made to an app or
	// accepted from a peer was TLS.
	for _, from := range pods {
		for _, to := range demoApps {
			if c := m.Call(ctx, from.Name, to); c.Err != nil || c.Status != http.StatusOK || c.Answer.Name != to {
				t.Errorf("%s -> %s: %d %v %q", from.Name, to, c.Status, c.Err, c.Body)
			}
		}
	}
	all := statsOf(ctx, t, m, pods)
	for _, p := range pods {
		for _, to := range demoApps {
			if n := all[p.Name][clusterStat(p.Namespace, to, "ssl.handshake")]; n == 0 {
				t.Errorf("%s: %s = 0", p.Name, clusterStat(p.Namespace, to, "ssl.handshake"))
			}
		}
	}
	// Every pod that answered a caller above accepted it over TLS. (A new replica that the
	// load balancer has not picked yet has accepted nothing.)
	for _, callee := range answered {
		if n := all[callee.Name][listenerStat(callee, "ssl.handshake")]; n == 0 {
			t.Errorf("%s: %s = 0", callee.Name, listenerStat(callee, "ssl.handshake"))
		}
	}

	// What each Envoy holds: clusters that originate TLS with the pod's certificate and
	// check the callee's SPIFFE ID, an inbound listener that requires a client
	// certificate, and the pod's own identity in its certificate.
	for _, p := range pods {
		dump, err := m.EnvoyConfigDump(ctx, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, to := range demoApps {
			c, err := dumpedCluster(dump, to+"."+p.Namespace)
			if err != nil {
				t.Errorf("%s: %v", p.Name, err)
				continue
			}
			tc, ok := clusterTLSContext(c)
			if !ok {
				t.Errorf("%s: cluster %s.%s has no %s transport socket with an UpstreamTlsContext: %v", p.Name, to, p.Namespace, tlsTransport, c["transport_socket"])
				continue
			}
			want := []string{mesh.SPIFFEID(trustDomain, p.Namespace, to)}
			if got := subjectAltNames(tc); !slices.Equal(got, want) {
				t.Errorf("%s: cluster %s.%s checks the callee's URI SAN against %v, want %v", p.Name, to, p.Namespace, got, want)
			}
			if got := sdsNames(tc, "tls_certificate_sds_secret_configs"); !slices.Equal(got, []string{workloadSecret}) {
				t.Errorf("%s: cluster %s.%s presents the certificate of SDS secrets %v, want [%s]", p.Name, to, p.Namespace, got, workloadSecret)
			}
			if got := sdsNames(tc, "validation_context_sds_secret_config"); !slices.Equal(got, []string{trustBundleSecret}) {
				t.Errorf("%s: cluster %s.%s validates with SDS secrets %v, want [%s]", p.Name, to, p.Namespace, got, trustBundleSecret)
			}
		}
		mtls, plain, err := inboundChains(dump)
		if err != nil || mtls == 0 || plain != 0 {
			t.Errorf("%s: inbound listener: %d mTLS and %d plaintext filter chains (%v), want mTLS only (STRICT)", p.Name, mtls, plain, err)
		}
		serial, err := workloadSerial(ctx, p)
		if err != nil {
			t.Error(err)
		} else {
			t.Logf("%s presents %s, serial %s", p.Name, spiffeID(p), serial)
		}
	}
	removeFresh()
}

// Packet capture with tcpdump on the loopback interface, where the pods' traffic goes.

// tcpdumpPath finds tcpdump (scripts/install-tcpdump.sh); the test fails without it.
func tcpdumpPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("tcpdump"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/bin/tcpdump", "/usr/sbin/tcpdump"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatal("tcpdump not found (run make install: scripts/install-tcpdump.sh)")
	return ""
}

type capture struct {
	cmd    *exec.Cmd
	path   string
	done   chan struct{}
	mu     sync.Mutex
	stderr strings.Builder
}

// startCapture runs tcpdump on lo with the filter, writing packets to a file as they
// come, and returns once tcpdump says it is listening.
func startCapture(t *testing.T, filter string) *capture {
	t.Helper()
	c := &capture{path: filepath.Join(t.TempDir(), "capture.pcap"), done: make(chan struct{})}
	// -U and --immediate-mode: every packet reaches the file when it is captured, not
	// when a kernel buffer fills; -Z root keeps tcpdump able to write the test's file
	// after it drops privileges.
	c.cmd = exec.Command(tcpdumpPath(t), "-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w", c.path, filter)
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			c.mu.Lock()
			c.stderr.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(listening) })
			}
		}
	}()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.done
		_ = c.cmd.Wait()
	})
	select {
	case <-listening:
	case <-c.done:
		t.Fatalf("tcpdump exited: %s", c.log())
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpdump not listening after 10s: %s", c.log())
	}
	return c
}

func (c *capture) log() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stderr.String()
}

// stop lets tcpdump write what it has, stops it with SIGINT (it then closes the file)
// and returns the capture file.
func (c *capture) stop(t *testing.T) []byte {
	t.Helper()
	time.Sleep(time.Second)
	if err := c.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("tcpdump still running 10s after SIGINT: %s", c.log())
	}
	_ = c.cmd.Wait()
	b, err := os.ReadFile(c.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tcpdump: %s", strings.Join(strings.Fields(strings.ReplaceAll(c.log(), "\n", "; ")), " "))
	return b
}

// pcapSummary is what a capture holds: TCP segments with a payload, and how many of
// them begin with a TLS record header.
type pcapSummary struct {
	packets, segments, tlsRecords int
	payload                       []byte
}

// parsePcap reads a classic pcap file of Ethernet frames (tcpdump on lo) and collects
// the IPv4 TCP payloads. https://www.tcpdump.org/manpages/pcap-savefile.5.txt
func parsePcap(b []byte) (pcapSummary, error) {
	var s pcapSummary
	if len(b) < 24 {
		return s, fmt.Errorf("pcap file of %d bytes", len(b))
	}
	var bo binary.ByteOrder
	switch m := binary.LittleEndian.Uint32(b); m {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return s, fmt.Errorf("not a pcap file (magic %#x)", m)
	}
	if lt := bo.Uint32(b[20:]) & 0xffff; lt != 1 {
		return s, fmt.Errorf("pcap link type %d, want 1 (Ethernet)", lt)
	}
	for off := 24; off+16 <= len(b); {
		n := int(bo.Uint32(b[off+8:]))
		if off+16+n > len(b) {
			break // the last record was cut short
		}
		frame := b[off+16 : off+16+n]
		off += 16 + n
		s.packets++
		if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ip[9] != 6 || total > len(ip) || ihl+20 > total {
			continue
		}
		tcp := ip[ihl:total]
		doff := int(tcp[12]>>4) * 4
		if doff > len(tcp) || doff == len(tcp) {
			continue
		}
		payload := tcp[doff:]
		s.segments++
		// A TLS record: content type 20-23, then version 3.x.
		// https://www.rfc-editor.org/rfc/rfc8446#section-5.1
		if len(payload) >= 5 && payload[0] >= 20 && payload[0] <= 23 && payload[1] == 3 {
			s.tlsRecords++
		}
		s.payload = append(s.payload, payload...)
	}
	return s, nil
}

// captureRequest captures the loopback traffic to the pods of svc on the inbound port
// while app-1-0 sends them requests carrying marker in their path and a header.
func captureRequest(t *testing.T, m *localmesh.Mesh, svc, marker string) (raw []byte, s pcapSummary) {
	t.Helper()
	var hosts []string
	for _, p := range m.PodsOf(svc) {
		hosts = append(hosts, "host "+p.IP)
	}
	c := startCapture(t, fmt.Sprintf("tcp port %d and (%s)", mesh.InboundPort, strings.Join(hosts, " or ")))
	ctx := ctxT(t, 20*time.Second)
	// As many requests as the Service has pods: round robin sends one to each.
	for range len(hosts) {
		status, name, _, err := get(ctx, m, "app-1-0", svc, "/?marker="+marker, "x-marker", marker)
		if err != nil || status != http.StatusOK || name != svc {
			t.Fatalf("app-1-0 -> %s: %d %q %v", svc, status, name, err)
		}
	}
	raw = c.stop(t)
	s, err := parsePcap(raw)
	if err != nil {
		t.Fatal(err)
	}
	return raw, s
}

func TestNoPlaintextOnTheWire(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	tcpdumpPath(t)

	marker := fmt.Sprintf("bearkong-secret-marker-%d", time.Now().UnixNano())
	raw, s := captureRequest(t, m, "app-2", marker)
	t.Logf("STRICT: %d packets, %d TCP segments with a payload (%d bytes), %d starting with a TLS record", s.packets, s.segments, len(s.payload), s.tlsRecords)
	if s.segments == 0 || s.tlsRecords == 0 {
		t.Fatalf("the capture holds %d segments with a payload, %d of them TLS: it did not see the requests", s.segments, s.tlsRecords)
	}
	for _, plain := range []string{marker, "HTTP/1.1", "GET /"} {
		if bytes.Contains(raw, []byte(plain)) {
			t.Errorf("the capture between two sidecars holds %q in plaintext", plain)
		}
	}

	// The same capture with mTLS off for app-2: the request is there to read. This also
	// shows that the capture above would have seen it.
	withMTLSMode(t, m, "app-2", mesh.MTLSDisable)
	if err := waitMode(ctxT(t, 60*time.Second), m, "app-2", mesh.MTLSDisable); err != nil {
		t.Fatal(err)
	}
	marker2 := marker + "-disabled"
	raw, s = captureRequest(t, m, "app-2", marker2)
	t.Logf("DISABLE: %d packets, %d TCP segments with a payload (%d bytes), %d starting with a TLS record", s.packets, s.segments, len(s.payload), s.tlsRecords)
	for _, plain := range []string{marker2, "GET /?marker=" + marker2 + " HTTP/1.1"} {
		if !bytes.Contains(raw, []byte(plain)) {
			t.Errorf("with mesh-mtls: DISABLE the capture does not hold %q", plain)
		}
	}
	if s.tlsRecords != 0 {
		t.Errorf("with mesh-mtls: DISABLE, %d segments start with a TLS record", s.tlsRecords)
	}
}

// plainGet makes a plaintext HTTP request, on a connection of its own, to a pod's inbound
// port, as a process that is not a sidecar would.
func plainGet(ctx context.Context, p localmesh.Pod) (int, localmesh.Answer, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.InboundAddr()+"/", nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0, localmesh.Answer{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a, _ := localmesh.ParseAnswer(body)
	return resp.StatusCode, a, nil
}

// refusesPlaintext checks that every pod of svc refuses a plaintext request, and that its
// listener counts a failed TLS connection for it.
func refusesPlaintext(ctx context.Context, m *localmesh.Mesh, svc string) error {
	for _, p := range m.PodsOf(svc) {
		st0, err := m.EnvoyStats(ctx, p.Name)
		if err != nil {
			return err
		}
		status, a, err := plainGet(ctx, p)
		if err == nil {
			return fmt.Errorf("plaintext GET %s: %d from %q, want a TLS failure", p.InboundAddr(), status, a.Name)
		}
		k := listenerStat(p, "ssl.connection_error")
		if err2 := localmesh.Eventually(ctx, 5*time.Second, func(ctx context.Context) error {
			st1, err := m.EnvoyStats(ctx, p.Name)
			if err != nil {
				return err
			}
			if st1[k] <= st0[k] {
				return fmt.Errorf("%s = %d, did not move", k, st1[k])
			}
			return nil
		}); err2 != nil {
			return fmt.Errorf("plaintext GET %s failed (%v), but: %w", p.InboundAddr(), err, err2)
		}
	}
	return nil
}

func TestPlaintextClientAndModes(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 3*time.Minute)
	if err := refusesPlaintext(ctx, m, "app-2"); err != nil {
		t.Fatalf("STRICT: %v", err)
	}

	// A caller with no connection to app-2 yet, so that its calls in PERMISSIVE open new
	// ones and show whether they are TLS.
	withService(t, m, "sec-caller", nil, map[string]string{})
	caller, ok := m.Pod("sec-caller-0")
	if !ok {
		t.Fatal("no pod sec-caller-0")
	}

	withMTLSMode(t, m, "app-2", mesh.MTLSPermissive)
	if err := waitMode(ctx, m, "app-2", mesh.MTLSPermissive); err != nil {
		t.Fatal(err)
	}
	for _, p := range m.PodsOf("app-2") {
		status, a, err := plainGet(ctx, p)
		if err != nil || status != http.StatusOK || a.Name != "app-2" || a.IP() != p.IP {
			t.Errorf("PERMISSIVE: plaintext GET %s: %d %+v %v, want 200 from app-2 at %s", p.InboundAddr(), status, a, err, p.IP)
		}
	}
	callees := m.PodsOf("app-2")
	before := statsOf(ctx, t, m, append([]localmesh.Pod{caller}, callees...))
	for range 2 * len(callees) {
		if c := m.Call(ctx, caller.Name, "app-2"); c.Err != nil || c.Status != http.StatusOK || c.Answer.Name != "app-2" {
			t.Fatalf("PERMISSIVE: %s -> app-2: %d %v %q", caller.Name, c.Status, c.Err, c.Body)
		}
	}
	after := statsOf(ctx, t, m, append([]localmesh.Pod{caller}, callees...))
	hs, cx := clusterStat(caller.Namespace, "app-2", "ssl.handshake"), clusterStat(caller.Namespace, "app-2", "upstream_cx_total")
	if dHS, dCX := after[caller.Name][hs]-before[caller.Name][hs], after[caller.Name][cx]-before[caller.Name][cx]; dHS < 1 || dHS != dCX {
		t.Errorf("PERMISSIVE: a mesh caller's new connections: %s +%d, %s +%d; want all of them TLS", hs, dHS, cx, dCX)
	}
	grew := 0
	for _, p := range callees {
		k := listenerStat(p, "ssl.handshake")
		grew += int(after[p.Name][k] - before[p.Name][k])
	}
	if grew < 1 {
		t.Errorf("PERMISSIVE: the callees' inbound listeners counted no TLS handshake from the mesh caller")
	}

	if err := setMTLSMode(ctx, m, "app-2", ""); err != nil {
		t.Fatal(err)
	}
	if err := waitMode(ctx, m, "app-2", mesh.MTLSStrict); err != nil {
		t.Fatal(err)
	}
	if err := refusesPlaintext(ctx, m, "app-2"); err != nil {
		t.Fatalf("back to STRICT: %v", err)
	}
}

// Certificates made in the test.

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serialNumber(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// foreignCA makes a CA the mesh does not know.
func foreignCA(t *testing.T) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(t),
		Subject:               pkix.Name{Organization: []string{"not bearkong"}, CommonName: "foreign root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// leafFor issues a workload certificate for the SPIFFE ID, signed by ca, chained up to
// (not including) a self-signed root.
func leafFor(t *testing.T, ca *x509.Certificate, caKey crypto.Signer, id string) tls.Certificate {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serialNumber(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:         []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	chain := [][]byte{der}
	if !bytes.Equal(ca.RawIssuer, ca.RawSubject) {
		chain = append(chain, ca.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key}
}

// caSecret returns the control plane's CA Secret.
func caSecret(ctx context.Context) (*corev1.Secret, error) {
	ns, name, _ := strings.Cut(localmesh.DefaultCASecret, "/")
	return shared.env.Client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
}

// meshSigner finds, in the CA Secret, the signing certificate and its private key,
// whatever keys the Secret stores them under: the test uses them to make a client
// certificate the mesh must accept, the control for the ones it must refuse.
func meshSigner(t *testing.T, s *corev1.Secret) (*x509.Certificate, crypto.Signer) {
	t.Helper()
	var certs []*x509.Certificate
	var keys []crypto.Signer
	for _, k := range mapsKeys(s.Data) {
		for rest := s.Data[k]; ; {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			switch blk.Type {
			case "CERTIFICATE":
				if c, err := x509.ParseCertificate(blk.Bytes); err == nil {
					certs = append(certs, c)
				}
			case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
				var key any
				var err error
				switch blk.Type {
				case "PRIVATE KEY":
					key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
				case "EC PRIVATE KEY":
					key, err = x509.ParseECPrivateKey(blk.Bytes)
				default:
					key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
				}
				if s, ok := key.(crypto.Signer); ok && err == nil {
					keys = append(keys, s)
				}
			}
		}
	}
	for _, c := range certs {
		for _, k := range keys {
			if pub, ok := k.Public().(interface{ Equal(crypto.PublicKey) bool }); ok && pub.Equal(c.PublicKey) && c.IsCA {
				return c, k
			}
		}
	}
	t.Fatalf("the CA Secret (keys %v) holds no CA certificate with its private key", mapsKeys(s.Data))
	return nil, nil
}

// tlsGet sends GET / to a pod's inbound port over TLS with the client certificate (none
// when nil). It does not check the server: the point is what the server accepts.
func tlsGet(ctx context.Context, p localmesh.Pod, cert *tls.Certificate) (int, localmesh.Answer, error) {
	cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
	if cert != nil {
		// Present it whatever CAs the server asks for: Go's client would otherwise send
		// no certificate when it is not from one of them, as Envoy names its trusted CA in
		// the CertificateRequest, and the test would only prove "no certificate".
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true, TLSClientConfig: cfg}}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+p.InboundAddr()+"/", nil)
	resp, err := client.Do(req)
	if err != nil {
		return 0, localmesh.Answer{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	a, _ := localmesh.ParseAnswer(body)
	return resp.StatusCode, a, nil
}

func TestForeignCARefused(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 60*time.Second)
	callee := m.PodsOf("app-2")[0]
	caller, _ := m.Pod("app-1-0")
	id := spiffeID(caller)

	// Control: the same client with a certificate from the mesh's CA gets in.
	s, err := caSecret(ctx)
	if err != nil {
		t.Fatal(err)
	}
	meshCA, meshKey := meshSigner(t, s)
	good := leafFor(t, meshCA, meshKey, id)
	if status, a, err := tlsGet(ctx, callee, &good); err != nil || status != http.StatusOK || a.Name != "app-2" {
		t.Fatalf("a client with a certificate from the mesh's CA for %s: %d %+v %v, want 200 from app-2", id, status, a, err)
	}

	fca, fkey := foreignCA(t)
	foreign := leafFor(t, fca, fkey, id)
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		stat string
	}{
		{"certificate from another CA", &foreign, "ssl.fail_verify_error"},
		{"no certificate", nil, "ssl.fail_verify_no_cert"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := listenerStat(callee, tc.stat)
			st0, err := m.EnvoyStats(ctx, callee.Name)
			if err != nil {
				t.Fatal(err)
			}
			status, a, err := tlsGet(ctx, callee, tc.cert)
			if err == nil {
				t.Fatalf("%s got %d %+v from %s, want the connection refused", tc.name, status, a, callee.InboundAddr())
			}
			t.Logf("%s: %v", tc.name, err)
			eventually(t, 5*time.Second, func(ctx context.Context) error {
				st1, err := m.EnvoyStats(ctx, callee.Name)
				if err != nil {
					return err
				}
				if st1[k] <= st0[k] {
					return fmt.Errorf("%s: %s = %d, did not grow", callee.Name, k, st1[k])
				}
				return nil
			})
		})
	}
	if err := m.WaitAllReachable(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestCertificatesRotateWithoutFailures(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	sds0 := waitSDSSynced(t, m)
	const duration = 3 * time.Minute
	ctx := ctxT(t, duration+2*time.Minute)
	pods := m.Pods()

	// Each pod's certificate serial, polled more often than the 30 s rotation.
	serials := map[string][]string{}
	var pollErrs []string
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for i := 0; i < 1000; i++ {
			for _, p := range pods {
				s, err := workloadSerial(ctx, p)
				mu.Lock()
				if err != nil {
					// A rotation in progress may show two serials for a moment.
					pollErrs = append(pollErrs, err.Error())
				} else if l := serials[p.Name]; len(l) == 0 || l[len(l)-1] != s {
					serials[p.Name] = append(l, s)
				}
				mu.Unlock()
			}
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})

	// Every pod calls every app in turn, a few requests a second, for the whole time.
	deadline := time.Now().Add(duration)
	total := 0
	failures := map[string]int{}
loop:
	for i := 0; i < 100000; i++ {
		for _, from := range pods {
			for _, to := range demoApps {
				if !time.Now().Before(deadline) || ctx.Err() != nil {
					break loop
				}
				c := m.Call(ctx, from.Name, to)
				total++
				switch {
				case c.Err != nil:
					failures[fmt.Sprintf("%s -> %s: %v", from.Name, to, c.Err)]++
				case c.Status != http.StatusOK || c.Answer.Name != to:
					failures[fmt.Sprintf("%s -> %s: %d %q", from.Name, to, c.Status, c.Body)]++
				}
				time.Sleep(150 * time.Millisecond)
			}
		}
	}
	close(stop)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("ran out of time after %d requests", total)
	}
	nfail := 0
	for k, n := range failures {
		nfail += n
		t.Errorf("%d x %s", n, k)
	}
	t.Logf("%d requests across %d pods over %s, %d failed", total, len(pods), duration, nfail)

	sds1 := waitSDSSynced(t, m)
	for _, p := range pods {
		b, a := sds0[nodeID(p)], sds1[nodeID(p)]
		mu.Lock()
		ss := serials[p.Name]
		mu.Unlock()
		t.Logf("%s: SDS pushes %d -> %d, certificate serials %v", p.Name, b.Pushes, a.Pushes, ss)
		if a.StreamID != b.StreamID {
			t.Errorf("%s reconnected during the rotations (stream %d, then %d)", p.Name, b.StreamID, a.StreamID)
			continue
		}
		if a.Pushes < b.Pushes+2 {
			t.Errorf("%s: %d SDS pushes in %s, want at least 2 (one rotation every %s)", p.Name, a.Pushes-b.Pushes, duration, certLifetime/2)
		}
		if len(ss) < 3 {
			t.Errorf("%s: certificate serials %v in %s, want at least two changes", p.Name, ss, duration)
		}
	}
	mu.Lock()
	if len(pollErrs) > 0 {
		t.Logf("%d /certs polls saw a rotation half-way, e.g. %s", len(pollErrs), pollErrs[0])
	}
	mu.Unlock()
}

// A raw ADS client, to do what an honest Envoy never does.

// podNode is the node a pod's bootstrap declares (`bearkong bootstrap`, translate.Bootstrap).
func podNode(p localmesh.Pod) *corev3.Node {
	return &corev3.Node{
		Id:      nodeID(p),
		Cluster: translate.NodeCluster,
		Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			translate.MetadataPodName:      structpb.NewStringValue(p.Name),
			translate.MetadataPodNamespace: structpb.NewStringValue(p.Namespace),
			translate.MetadataListenIP:     structpb.NewStringValue(p.IP),
			translate.MetadataOutboundIP:   structpb.NewStringValue(p.OutboundIP),
			translate.MetadataAppAddress:   structpb.NewStringValue(p.AppAddr()),
		}},
	}
}

// xdsTLS is what a proxy's bootstrap trusts: the CA's root, for the xDS address's host.
func xdsTLS(t *testing.T, m *localmesh.Mesh) (credentials.TransportCredentials, *x509.CertPool) {
	t.Helper()
	root, err := m.CARoot(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(root) {
		t.Fatalf("the CA Secret's ca.crt holds no certificate: %q", root)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: xdsServerName}), pool
}

// adsFetch opens an ADS stream to addr with the token (none when empty) as Envoy sends
// it ("authorization: Bearer <token>"), asks for every cluster and the proxy's two
// secrets, ACKs what comes, and returns the last response of each type once it has
// clusters and secrets, or what it got when the stream ends (with the stream's error).
func adsFetch(ctx context.Context, addr string, creds credentials.TransportCredentials, token string, node *corev3.Node) (map[string]*discoveryv3.DiscoveryResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	got := map[string]*discoveryv3.DiscoveryResponse{}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return got, err
	}
	names := map[string][]string{clusterTypeURL: nil, secretTypeURL: {workloadSecret, trustBundleSecret}}
	for _, r := range []*discoveryv3.DiscoveryRequest{
		{Node: node, TypeUrl: clusterTypeURL},
		{TypeUrl: secretTypeURL, ResourceNames: names[secretTypeURL]},
	} {
		if err := stream.Send(r); err != nil {
			break // the server ended the stream; Recv says why
		}
	}
	for range 100 {
		resp, err := stream.Recv()
		if err != nil {
			return got, err
		}
		got[resp.GetTypeUrl()] = resp
		_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: names[resp.GetTypeUrl()]})
		if got[clusterTypeURL] != nil && got[secretTypeURL] != nil {
			return got, nil
		}
	}
	return got, errors.New("100 responses without both clusters and secrets")
}

// unwrap returns the resource an Any carries, unwrapping a discovery Resource.
func unwrap(a *anypb.Any) (*anypb.Any, string, error) {
	if a.GetTypeUrl() == "type.googleapis.com/envoy.service.discovery.v3.Resource" {
		r := &discoveryv3.Resource{}
		if err := a.UnmarshalTo(r); err != nil {
			return nil, "", err
		}
		return r.GetResource(), r.GetName(), nil
	}
	return a, "", nil
}

// secretsOf decodes a Secret response, keyed by secret name.
func secretsOf(resp *discoveryv3.DiscoveryResponse) (map[string]*tlsv3.Secret, map[string][]byte, error) {
	out, raw := map[string]*tlsv3.Secret{}, map[string][]byte{}
	for _, a := range resp.GetResources() {
		inner, _, err := unwrap(a)
		if err != nil {
			return nil, nil, err
		}
		s := &tlsv3.Secret{}
		if err := proto.Unmarshal(inner.GetValue(), s); err != nil {
			return nil, nil, fmt.Errorf("decode Secret: %w", err)
		}
		out[s.GetName()], raw[s.GetName()] = s, inner.GetValue()
	}
	return out, raw, nil
}

func dataSource(d *corev3.DataSource) []byte {
	if b := d.GetInlineBytes(); len(b) > 0 {
		return b
	}
	return []byte(d.GetInlineString())
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q where certificates are expected", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// checkWorkloadSecret checks the pod's secrets as served: its own certificate, for its
// SPIFFE ID only, with a private key, chaining to the root; and the root as the trust
// bundle. It returns the workload secret's serialized bytes.
func checkWorkloadSecret(t *testing.T, resp *discoveryv3.DiscoveryResponse, p localmesh.Pod, roots *x509.CertPool) []byte {
	t.Helper()
	secrets, raw, err := secretsOf(resp)
	if err != nil {
		t.Fatal(err)
	}
	ws, ok := secrets[workloadSecret]
	if !ok {
		t.Fatalf("no secret %q for %s among %v", workloadSecret, p.Name, mapsKeys(secrets))
	}
	chain, err := parseCerts(dataSource(ws.GetTlsCertificate().GetCertificateChain()))
	if err != nil {
		t.Fatalf("%s's %s: %v", p.Name, workloadSecret, err)
	}
	if len(dataSource(ws.GetTlsCertificate().GetPrivateKey())) == 0 {
		t.Errorf("%s's %s has no private key", p.Name, workloadSecret)
	}
	var uris []string
	for _, u := range chain[0].URIs {
		uris = append(uris, u.String())
	}
	if want := []string{spiffeID(p)}; !slices.Equal(uris, want) {
		t.Errorf("%s's certificate names %v, want %v", p.Name, uris, want)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("%s's certificate does not chain to the CA Secret's root: %v", p.Name, err)
	}
	tb, ok := secrets[trustBundleSecret]
	if !ok {
		t.Fatalf("no secret %q for %s among %v", trustBundleSecret, p.Name, mapsKeys(secrets))
	}
	bundle, err := parseCerts(dataSource(tb.GetValidationContext().GetTrustedCa()))
	if err != nil {
		t.Fatalf("%s's %s: %v", p.Name, trustBundleSecret, err)
	}
	for _, c := range bundle {
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots}); err != nil {
			t.Errorf("%s's trust bundle holds %s, not a root of the CA Secret", p.Name, c.Subject)
		}
	}
	return raw[workloadSecret]
}

func TestXDSChannelIsAuthenticated(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	ctx := ctxT(t, 2*time.Minute)
	creds, roots := xdsTLS(t, m)
	a, _ := m.Pod("app-1-0")
	b, _ := m.Pod("app-2-0")
	tokenA, err := m.RequestToken(ctx, a.Name, localmesh.TokenAudience)
	if err != nil {
		t.Fatal(err)
	}
	otherAudience, err := m.RequestToken(ctx, a.Name, "other")
	if err != nil {
		t.Fatal(err)
	}
	failures := func() (float64, float64) {
		mt := cpMetrics(t, m)
		return mt[`bearkong_xds_auth_failures_total{reason="unauthenticated"}`], mt[`bearkong_xds_auth_failures_total{reason="permission_denied"}`]
	}
	unauth0, denied0 := failures()

	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		token string
		node  localmesh.Pod
		code  codes.Code // codes.OK: any failure will do
	}{
		{"no token", creds, "", a, codes.Unauthenticated},
		{"pod A's token with pod B's node", creds, tokenA, b, codes.PermissionDenied},
		{"pod A's token for another audience", creds, otherAudience, a, codes.Unauthenticated},
		{"plaintext", insecure.NewCredentials(), tokenA, a, codes.OK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := adsFetch(ctx, m.XDSAddr(), tc.creds, tc.token, podNode(tc.node))
			if len(got) != 0 {
				t.Errorf("got responses of types %v", mapsKeys(got))
			}
			switch {
			case err == nil:
				t.Fatal("the stream served everything")
			case tc.code != codes.OK && status.Code(err) != tc.code:
				t.Fatalf("stream ended with %v, want %s", err, tc.code)
			}
			t.Logf("refused: %v", err)
		})
	}
	unauth1, denied1 := failures()
	if unauth1-unauth0 != 2 || denied1-denied0 != 1 {
		t.Errorf("bearkong_xds_auth_failures_total: unauthenticated +%v, permission_denied +%v; want +2 and +1", unauth1-unauth0, denied1-denied0)
	}

	// Pod A's own token and node: its config and its certificate.
	got, err := adsFetch(ctx, m.XDSAddr(), creds, tokenA, podNode(a))
	if err != nil {
		t.Fatalf("pod %s's own token and node: %v", a.Name, err)
	}
	var clusters []string
	for _, r := range got[clusterTypeURL].GetResources() {
		inner, _, err := unwrap(r)
		if err != nil {
			t.Fatal(err)
		}
		c := &clusterv3.Cluster{}
		if err := proto.Unmarshal(inner.GetValue(), c); err != nil {
			t.Fatal(err)
		}
		clusters = append(clusters, c.GetName())
	}
	for _, svc := range demoApps {
		if !slices.Contains(clusters, svc+"."+a.Namespace) {
			t.Errorf("clusters served to %s: %v, want %s.%s among them", a.Name, clusters, svc, a.Namespace)
		}
	}
	checkWorkloadSecret(t, got[secretTypeURL], a, roots)

	// The honest proxies saw nothing of it.
	waitAllSynced(t, m)
	if err := m.WaitAllReachable(ctx, 20*time.Second); err != nil {
		t.Fatal(err)
	}
}

// waitRotationBoundary waits until every proxy has just had an SDS push, that is a new
// rotation window began, and returns when the last of them moved.
func waitRotationBoundary(t *testing.T, m *localmesh.Mesh) time.Time {
	t.Helper()
	start, err := sdsStreams(ctxT(t, 10*time.Second), m.ControlPlaneURL(), "")
	if err != nil {
		t.Fatal(err)
	}
	moved := map[string]time.Time{}
	eventually(t, certLifetime/2+15*time.Second, func(ctx context.Context) error {
		now, err := sdsStreams(ctx, m.ControlPlaneURL(), "")
		if err != nil {
			return err
		}
		for _, p := range m.Pods() {
			n := nodeID(p)
			if _, ok := moved[n]; !ok && now[n].Pushes > start[n].Pushes {
				moved[n] = time.Now()
			}
		}
		if len(moved) < len(m.Pods()) {
			return fmt.Errorf("%d of %d proxies had an SDS push since %s", len(moved), len(m.Pods()), time.Now().Format(time.TimeOnly))
		}
		return nil
	})
	var first, last time.Time
	for _, at := range moved {
		if first.IsZero() || at.Before(first) {
			first = at
		}
		if at.After(last) {
			last = at
		}
	}
	t.Logf("a rotation window began: every proxy had its SDS push within %s", last.Sub(first).Round(time.Millisecond))
	return last
}

// serialsOf returns each pod's workload certificate serial, once every pod's Envoy shows
// a single one.
func serialsOf(t *testing.T, m *localmesh.Mesh) map[string]string {
	t.Helper()
	out := map[string]string{}
	eventually(t, 10*time.Second, func(ctx context.Context) error {
		for _, p := range m.Pods() {
			s, err := workloadSerial(ctx, p)
			if err != nil {
				return err
			}
			out[p.Name] = s
		}
		return nil
	})
	return out
}

func TestCASurvivesRestartAndIsShared(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	waitSDSSynced(t, m)
	ctx := ctxT(t, 4*time.Minute)
	s0, err := caSecret(ctx)
	if err != nil {
		t.Fatal(err)
	}
	root0 := s0.Data["ca.crt"]

	// Restart inside one rotation window: the new process must hand every proxy the
	// certificate it already has, not a new one.
	boundary := waitRotationBoundary(t, m)
	waitSDSSynced(t, m)
	serials0 := serialsOf(t, m)
	if err := m.StopControlPlane(); err != nil {
		t.Fatal(err)
	}
	if err := m.StartControlPlane(ctx); err != nil {
		t.Fatal(err)
	}
	waitAllSynced(t, m)
	waitSDSSynced(t, m)
	serials1 := serialsOf(t, m)
	elapsed := time.Since(boundary)
	t.Logf("restarted the control plane %s into a %s rotation window", elapsed.Round(time.Millisecond), certLifetime/2)
	for name, s := range serials0 {
		if serials1[name] != s {
			t.Errorf("%s: certificate serial %s before the restart, %s after (%s into the window): re-issued", name, s, serials1[name], elapsed.Round(time.Millisecond))
		}
	}
	s1, err := caSecret(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s1.UID != s0.UID || !bytes.Equal(s1.Data["ca.crt"], root0) {
		t.Fatalf("the CA Secret changed across the restart: UID %s -> %s, root equal: %v", s0.UID, s1.UID, bytes.Equal(s1.Data["ca.crt"], root0))
	}
	if err := m.WaitAllReachable(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// A second replica, sharing the Secret: it serves the same certificate to the same
	// pod, and its own server certificate comes from the same root.
	ports, err := kubeenv.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	xds2, http2 := "127.0.0.1:"+strconv.Itoa(ports[0]), "127.0.0.1:"+strconv.Itoa(ports[1])
	replica, err := proc.Start(ctx, proc.Spec{
		Name: "bearkong cp (second replica)",
		Path: filepath.Join(shared.binDir, "bearkong"),
		Args: []string{"cp", "--kubeconfig", shared.env.Kubeconfig, "--xds-addr", xds2, "--http-addr", http2,
			"--cert-lifetime", certLifetime.String(), "--xds-server-names", xdsServerName},
		LogPath: filepath.Join(t.TempDir(), "bearkong-cp-2.log"),
		Grace:   10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := replica.Stop(); err != nil {
			t.Error(err)
		}
	})
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		if exited, err := replica.Exited(); exited {
			return fmt.Errorf("the second replica exited: %v\n%s", err, kubeenv.LogTail(replica.LogPath(), 4096))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+http2+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("second replica /readyz: %s", resp.Status)
		}
		return nil
	})

	creds, roots := xdsTLS(t, m)
	conn, err := tls.Dial("tcp", xds2, &tls.Config{RootCAs: roots, ServerName: xdsServerName, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatalf("the second replica's xDS certificate does not verify against the CA Secret's root for %s: %v", xdsServerName, err)
	}
	peer := conn.ConnectionState().PeerCertificates
	conn.Close()
	t.Logf("second replica's xDS certificate: %s, issued by %s", peer[0].Subject, peer[0].Issuer)

	p, _ := m.Pod("app-2-1")
	token, err := m.RequestToken(ctx, p.Name, localmesh.TokenAudience)
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(addr string) (*discoveryv3.DiscoveryResponse, []byte) {
		t.Helper()
		got, err := adsFetch(ctx, addr, creds, token, podNode(p))
		if err != nil {
			t.Fatalf("%s's secrets from %s: %v", p.Name, addr, err)
		}
		return got[secretTypeURL], checkWorkloadSecret(t, got[secretTypeURL], p, roots)
	}
	// Both within one window: fetch from the first, the second, the first again; if the
	// first changed its answer, a window ended in between, so try again.
	for attempt := 1; ; attempt++ {
		r1, b1 := fetch(m.XDSAddr())
		r2, b2 := fetch(xds2)
		_, b3 := fetch(m.XDSAddr())
		if !bytes.Equal(b1, b3) && attempt < 3 {
			t.Logf("a rotation window ended during attempt %d; again", attempt)
			continue
		}
		if !bytes.Equal(b1, b2) {
			t.Errorf("%s's %s: %d bytes from the first replica, %d different bytes from the second", p.Name, workloadSecret, len(b1), len(b2))
		}
		if r1.GetVersionInfo() != r2.GetVersionInfo() {
			t.Errorf("%s's secrets: version %q from the first replica, %q from the second", p.Name, r1.GetVersionInfo(), r2.GetVersionInfo())
		}
		break
	}
	s2, err := caSecret(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s2.UID != s0.UID || !bytes.Equal(s2.Data["ca.crt"], root0) {
		t.Fatalf("the CA Secret changed when a second replica started: UID %s -> %s", s0.UID, s2.UID)
	}
	if err := replica.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitAllReachable(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestParsePcap holds the capture reader to a frame as tcpdump writes it from lo, so that
// TestNoPlaintextOnTheWire cannot pass by reading nothing.
func TestParsePcap(t *testing.T) {
	payload := []byte{23, 3, 3, 0, 4, 'a', 'b', 'c', 'd'}
	frame := make([]byte, 14+20+20)
	binary.BigEndian.PutUint16(frame[12:], 0x0800)
	ip := frame[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+20+len(payload)))
	ip[9] = 6
	ip[20+12] = 5 << 4
	frame = append(frame, payload...)
	file := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
	file = append(file, make([]byte, 16)...)
	file = binary.LittleEndian.AppendUint32(file, 1) // Ethernet
	for range 2 {
		file = append(file, make([]byte, 8)...)
		file = binary.LittleEndian.AppendUint32(file, uint32(len(frame)))
		file = binary.LittleEndian.AppendUint32(file, uint32(len(frame)))
		file = append(file, frame...)
	}
	s, err := parsePcap(file)
	if err != nil {
		t.Fatal(err)
	}
	if s.packets != 2 || s.segments != 2 || s.tlsRecords != 2 || !bytes.Equal(s.payload, append(slices.Clone(payload), payload...)) {
		t.Fatalf("parsePcap: %+v", s)
	}
	if _, err := parsePcap(file[:10]); err == nil {
		t.Fatal("parsePcap read a truncated header")
	}
}
