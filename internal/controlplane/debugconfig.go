package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// ProxyConfig is the answer of /debug/config: the resources bearkong serves one proxy,
// decoded. `bearkong config` prints it and compares it with the proxy's own /config_dump.
type ProxyConfig struct {
	Node      string `json:"node"`
	Pod       string `json:"pod"`
	Namespace string `json:"namespace"`
	// PodIP is the pod's IP as the mesh knows it ("" for a pod the snapshot does not
	// hold): where its Envoy admin listens when it is not bound to loopback.
	PodIP  string   `json:"pod_ip,omitempty"`
	Serves []string `json:"serves"`
	// Types are in push order (resource.Types), filtered by ?type=.
	Types []TypeConfig `json:"types"`
}

// TypeConfig is one type of a ProxyConfig.
type TypeConfig struct {
	Type    string `json:"type"` // cds, eds, lds, rds, sds...
	TypeURL string `json:"type_url"`
	// Version is the version_info bearkong sends for this type: the content hash of the
	// proxy's whole view, the version_sent of /debug/streams once it is sent.
	Version string `json:"version"`
	// Resources are the resources of the view, sorted by name; for the types a proxy
	// subscribes to by name (eds, rds, sds), only those it subscribed to.
	Resources []ResourceConfig `json:"resources"`
}

// ResourceConfig is one resource: its name, content hash and the resource as protojson
// (Anys resolved, secrets' private keys redacted).
type ResourceConfig struct {
	Name     string          `json:"name"`
	Hash     string          `json:"hash"`
	Resource json.RawMessage `json:"resource"`
}

// intendedConfig is what the current config resolves to, before the test hooks (see
// testhooks.go) hold any proxy back: what /debug/config shows.
type intendedConfig struct {
	resolve func(*corev3.Node) (*resource.Proxy, error)
	snap    *mesh.Snapshot
}

// debugConfig serves /debug/config?node=<pod>.<namespace>[&type=cds|eds|...]: the config
// bearkong builds for that proxy from the current snapshot, resolved with the node of its
// stream on this replica (the node's metadata, its listen and outbound addresses, are
// part of the input). A proxy with no stream here gets a 404: another replica may serve
// it.
func (cp *ControlPlane) debugConfig(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("node")
	if id == "" {
		http.Error(w, "bearkong: /debug/config needs ?node=<pod>.<namespace> (the node ids are in /debug/streams)", http.StatusBadRequest)
		return
	}
	types := slices.Clone(resource.Types[:])
	if want := r.URL.Query().Get("type"); want != "" && want != "all" {
		i := slices.IndexFunc(types, func(t resource.Type) bool { return t.String() == want })
		if i < 0 {
			names := make([]string, len(types))
			for i, t := range types {
				names[i] = t.String()
			}
			http.Error(w, fmt.Sprintf("bearkong: unknown type %q; want one of %s, or all", want, strings.Join(names, ", ")), http.StatusBadRequest)
			return
		}
		types = types[i : i+1]
	}
	streams := cp.ads.Streams(id)
	var node *corev3.Node
	var subscribed func(resource.Type) []string
	for _, s := range slices.Backward(streams) { // the newest stream
		if n := s.NodeProto(); n != nil {
			node = n
			subscribed = func(t resource.Type) []string { return s.Types.Get(t).Subscribed }
			break
		}
	}
	if node == nil {
		http.Error(w, fmt.Sprintf("bearkong: no proxy %q is connected to this replica (%s); /debug/streams lists those that are, and with several replicas another one may serve it", id, cp.HTTPAddr()), http.StatusNotFound)
		return
	}
	in := cp.intended.Load()
	if in == nil {
		http.Error(w, "bearkong: no config built yet", http.StatusServiceUnavailable)
		return
	}
	p, err := in.resolve(node)
	if err != nil {
		http.Error(w, fmt.Sprintf("bearkong: cannot build the config of %q: %v", id, err), http.StatusInternalServerError)
		return
	}
	out, err := proxyConfig(node, p, in.snap, types, subscribed)
	if err != nil {
		http.Error(w, fmt.Sprintf("bearkong: %q: %v", id, err), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(out)
}

// proxyConfig decodes the views of types of p; subscribed gives the names the proxy
// asked for, "*" first for a wildcard subscription.
func proxyConfig(node *corev3.Node, p *resource.Proxy, snap *mesh.Snapshot, types []resource.Type, subscribed func(resource.Type) []string) (*ProxyConfig, error) {
	out := &ProxyConfig{Node: node.GetId(), Serves: p.Serves, Types: []TypeConfig{}}
	if n, err := translate.ParseNode(node); err == nil {
		out.Pod, out.Namespace = n.PodName, n.PodNamespace
		if mp := snap.Proxy(n.PodNamespace, n.PodName); mp != nil {
			out.PodIP = mp.IP
		}
	}
	if out.Serves == nil {
		out.Serves = []string{}
	}
	for _, t := range types {
		v := p.Views[t]
		tc := TypeConfig{Type: t.String(), TypeURL: t.URL(), Version: v.Version(), Resources: []ResourceConfig{}}
		var only map[string]bool
		if names := subscribed(t); !t.Wildcard() && !slices.Contains(names, "*") {
			only = make(map[string]bool, len(names))
			for _, n := range names {
				only[n] = true
			}
		}
		for _, res := range v.All() {
			if only != nil && !only[res.Name] {
				continue
			}
			js, err := decodeResource(res)
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", t, res.Name, err)
			}
			tc.Resources = append(tc.Resources, ResourceConfig{Name: res.Name, Hash: res.Hash, Resource: js})
		}
		slices.SortFunc(tc.Resources, func(a, b ResourceConfig) int { return strings.Compare(a.Name, b.Name) })
		out.Types = append(out.Types, tc)
	}
	return out, nil
}

// decodeResource is res as protojson, with its sensitive fields redacted.
func decodeResource(res *resource.Resource) (json.RawMessage, error) {
	m, err := res.Any.UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	Redact(m)
	// Field names as in the proto files and Envoy's /config_dump. protojson's spacing is
	// unstable on purpose; the encoder that embeds it compacts it.
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode as JSON: %w", err)
	}
	return b, nil
}
