package translate

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Node metadata keys that only the control plane writes: the identity it proved for a
// stream (from the pod's ServiceAccount token, see internal/controlplane's
// authenticator), set on the node the stream resolves with. The bootstrap never writes
// them, and whatever a proxy claims under these keys is replaced.
const (
	MetadataServiceAccount = "service_account"
	MetadataPodUID         = "pod_uid"
)

// WithIdentity returns a copy of n whose metadata holds the proven ServiceAccount and
// pod UID, replacing anything the proxy sent under those keys. n is not modified: it
// is the client's message.
func WithIdentity(n *corev3.Node, serviceAccount, podUID string) *corev3.Node {
	out := proto.Clone(n).(*corev3.Node)
	if out.Metadata == nil {
		out.Metadata = &structpb.Struct{}
	}
	if out.Metadata.Fields == nil {
		out.Metadata.Fields = map[string]*structpb.Value{}
	}
	out.Metadata.Fields[MetadataServiceAccount] = structpb.NewStringValue(serviceAccount)
	out.Metadata.Fields[MetadataPodUID] = structpb.NewStringValue(podUID)
	return out
}
