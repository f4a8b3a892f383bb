package translate

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestWithIdentity(t *testing.T) {
	claimed := &corev3.Node{Id: "app-1-a.default", Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataPodName:        structpb.NewStringValue("app-1-a"),
		MetadataPodNamespace:   structpb.NewStringValue("default"),
		MetadataServiceAccount: structpb.NewStringValue("admin"), // a proxy's claim
	}}}
	got, err := ParseNode(WithIdentity(claimed, "app-1", "uid-1"))
	if err != nil {
		t.Fatal(err)
	}
	if got.ServiceAccount != "app-1" || got.PodUID != "uid-1" || got.PodName != "app-1-a" {
		t.Errorf("ParseNode(WithIdentity()) = %+v, want service account app-1, pod UID uid-1", got)
	}
	if v := claimed.GetMetadata().GetFields()[MetadataServiceAccount].GetStringValue(); v != "admin" {
		t.Errorf("WithIdentity modified its argument: service_account = %q", v)
	}
	bare, err := ParseNode(WithIdentity(&corev3.Node{Id: "x"}, "sa", "u"))
	if err == nil || bare.ServiceAccount != "" {
		// A node with no pod metadata stays invalid: identity does not stand in for it.
		t.Errorf("ParseNode of a node with identity only = %+v, %v; want an error", bare, err)
	}
}
