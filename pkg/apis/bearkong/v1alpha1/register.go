package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is bearkong's API group.
const GroupName = "bearkong.dev"

// Resource is the plural name the API server serves AuthorizationPolicies under.
const Resource = "authorizationpolicies"

// SchemeGroupVersion is the group and version of these types.
var SchemeGroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1alpha1"}

var (
	// SchemeBuilder registers the types with a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the types (and the meta/v1 options they are listed and watched
	// with) to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(SchemeGroupVersion, &AuthorizationPolicy{}, &AuthorizationPolicyList{})
	// ListOptions, GetOptions, WatchEvent... under this group version, which is how
	// the client encodes its query parameters and decodes watch events.
	metav1.AddToGroupVersion(s, SchemeGroupVersion)
	return nil
}
