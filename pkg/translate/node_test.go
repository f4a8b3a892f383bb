package translate

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestParseNode(t *testing.T) {
	// node builds a Node from string metadata; a nil value leaves the key out.
	node := func(id string, meta map[string]any) *corev3.Node {
		s, err := structpb.NewStruct(meta)
		if err != nil {
			t.Fatal(err)
		}
		return &corev3.Node{Id: id, Cluster: NodeCluster, Metadata: s}
	}
	for _, tc := range []struct {
		name    string
		in      *corev3.Node
		want    Node
		wantErr []string // substrings of the error; nil means no error
	}{
		{
			name: "all fields",
			in:   node("app-1-a.default", map[string]any{"pod_name": "app-1-a", "pod_namespace": "default", "listen_ip": "127.0.1.3", "outbound_ip": "127.0.2.3", "app_address": "127.0.1.3:9090"}),
			want: Node{ID: "app-1-a.default", PodName: "app-1-a", PodNamespace: "default", ListenIP: "127.0.1.3", OutboundIP: "127.0.2.3", AppAddress: "127.0.1.3:9090"},
		},
		{
			name: "defaults for the addresses",
			in:   node("x", map[string]any{"pod_name": "app-1-a", "pod_namespace": "default"}),
			want: Node{ID: "x", PodName: "app-1-a", PodNamespace: "default", ListenIP: "0.0.0.0", OutboundIP: "127.0.0.1", AppAddress: "127.0.0.1:9090"},
		},
		{
			name: "empty strings count as missing",
			in:   node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "listen_ip": "", "outbound_ip": "", "app_address": ""}),
			want: Node{ID: "x", PodName: "p", PodNamespace: "ns", ListenIP: "0.0.0.0", OutboundIP: "127.0.0.1", AppAddress: "127.0.0.1:9090"},
		},
		{
			name: "missing id is derived from the pod",
			in:   node("", map[string]any{"pod_name": "app-1-a", "pod_namespace": "default"}),
			want: Node{ID: "app-1-a.default", PodName: "app-1-a", PodNamespace: "default", ListenIP: "0.0.0.0", OutboundIP: "127.0.0.1", AppAddress: "127.0.0.1:9090"},
		},
		{
			name: "IPv6",
			in:   node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "listen_ip": "::", "outbound_ip": "::1", "app_address": "[::1]:9090"}),
			want: Node{ID: "x", PodName: "p", PodNamespace: "ns", ListenIP: "::", OutboundIP: "::1", AppAddress: "[::1]:9090"},
		},
		{
			name: "extra metadata is ignored",
			in:   node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "istio": 1.0}),
			want: Node{ID: "x", PodName: "p", PodNamespace: "ns", ListenIP: "0.0.0.0", OutboundIP: "127.0.0.1", AppAddress: "127.0.0.1:9090"},
		},
		{name: "nil node", in: nil, wantErr: []string{"no node"}},
		{name: "no metadata", in: &corev3.Node{Id: "x"}, wantErr: []string{"pod_name is missing", "pod_namespace is missing"}},
		{name: "missing pod name", in: node("x", map[string]any{"pod_namespace": "ns"}), wantErr: []string{`node "x"`, "pod_name is missing", "downward API"}},
		{name: "missing namespace", in: node("x", map[string]any{"pod_name": "p"}), wantErr: []string{"pod_namespace is missing"}},
		{name: "downward API not expanded", in: node("x", map[string]any{"pod_name": "$(POD_NAME)", "pod_namespace": "ns"}), wantErr: []string{`pod_name "$(POD_NAME)" is not a valid Kubernetes pod name`}},
		{name: "namespace with a dot", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "a.b"}), wantErr: []string{`pod_namespace "a.b" is not a valid Kubernetes namespace`}},
		{name: "metadata not a string", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "listen_ip": 1.0}), wantErr: []string{`node metadata "listen_ip" must be a string`}},
		{name: "listen ip is a name", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "listen_ip": "localhost"}), wantErr: []string{`listen_ip "localhost" is not an IP address`}},
		{name: "outbound ip is a name", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "outbound_ip": "localhost"}), wantErr: []string{`outbound_ip "localhost" is not an IP address`}},
		{name: "app address without port", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "app_address": "127.0.0.1"}), wantErr: []string{`app_address "127.0.0.1" is not host:port`}},
		{name: "app address is a name", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "app_address": "app:9090"}), wantErr: []string{`app_address "app:9090": the host must be an IP address`}},
		{name: "app address port 0", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "app_address": "127.0.0.1:0"}), wantErr: []string{`port "0" is not in 1-65535`}},
		{name: "app address port too big", in: node("x", map[string]any{"pod_name": "p", "pod_namespace": "ns", "app_address": "127.0.0.1:65536"}), wantErr: []string{`port "65536" is not in 1-65535`}},
		{
			name:    "every error at once",
			in:      node("x", map[string]any{"listen_ip": "nope", "outbound_ip": "nope", "app_address": "nope"}),
			wantErr: []string{"pod_name is missing", "pod_namespace is missing", `listen_ip "nope"`, `outbound_ip "nope"`, `app_address "nope"`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseNode(tc.in)
			if !errorContains(err, tc.wantErr) {
				t.Fatalf("ParseNode error = %v, want one containing %q", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("ParseNode (-want +got):\n%s", diff)
			}
		})
	}
}
