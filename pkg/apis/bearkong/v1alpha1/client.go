package v1alpha1

import (
	"context"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// scheme knows these types and the meta/v1 options; codecs decode responses into them
// without conversion (there is one version).
var (
	scheme         = runtime.NewScheme()
	codecs         = serializer.NewCodecFactory(scheme)
	parameterCodec = runtime.NewParameterCodec(scheme)
)

func init() {
	if err := AddToScheme(scheme); err != nil {
		panic(err) // a programming error: the types above cannot fail to register
	}
}

// Interface is the typed client of bearkong.dev/v1alpha1.
type Interface interface {
	AuthorizationPolicies(namespace string) AuthorizationPolicyInterface
}

// AuthorizationPolicyInterface reads AuthorizationPolicies of one namespace ("" for all
// namespaces, with List and Watch) and writes their status: what bearkong does with them.
type AuthorizationPolicyInterface interface {
	List(ctx context.Context, opts metav1.ListOptions) (*AuthorizationPolicyList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*AuthorizationPolicy, error)
	UpdateStatus(ctx context.Context, p *AuthorizationPolicy, opts metav1.UpdateOptions) (*AuthorizationPolicy, error)
}

// Client talks to the API server's bearkong.dev/v1alpha1 endpoints.
type Client struct {
	rest rest.Interface
}

var _ Interface = (*Client)(nil)

// New returns a Client on an existing REST client, which must be configured for
// bearkong.dev/v1alpha1 (see NewForConfig).
func New(c rest.Interface) *Client { return &Client{rest: c} }

// NewForConfig returns a Client for the API server of c. c is copied, not changed.
func NewForConfig(c *rest.Config) (*Client, error) {
	cfg := *c
	gv := SchemeGroupVersion
	cfg.GroupVersion = &gv
	cfg.APIPath = "/apis"
	cfg.ContentType = runtime.ContentTypeJSON // CRDs are served as JSON, not protobuf
	cfg.NegotiatedSerializer = codecs.WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(&cfg)
	if err != nil {
		return nil, err
	}
	return New(rc), nil
}

// RESTClient returns the underlying REST client.
func (c *Client) RESTClient() rest.Interface { return c.rest }

// AuthorizationPolicies returns the client of one namespace's policies; "" lists and
// watches every namespace.
func (c *Client) AuthorizationPolicies(namespace string) AuthorizationPolicyInterface {
	return &policies{rest: c.rest, ns: namespace}
}

type policies struct {
	rest rest.Interface
	ns   string
}

func (p *policies) List(ctx context.Context, opts metav1.ListOptions) (*AuthorizationPolicyList, error) {
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	out := &AuthorizationPolicyList{}
	err := p.rest.Get().Namespace(p.ns).Resource(Resource).
		VersionedParams(&opts, parameterCodec).Timeout(timeout).Do(ctx).Into(out)
	return out, err
}

func (p *policies) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	opts.Watch = true
	return p.rest.Get().Namespace(p.ns).Resource(Resource).
		VersionedParams(&opts, parameterCodec).Timeout(timeout).Watch(ctx)
}

func (p *policies) Get(ctx context.Context, name string, opts metav1.GetOptions) (*AuthorizationPolicy, error) {
	out := &AuthorizationPolicy{}
	err := p.rest.Get().Namespace(p.ns).Resource(Resource).Name(name).
		VersionedParams(&opts, parameterCodec).Do(ctx).Into(out)
	return out, err
}

// UpdateStatus replaces the status of pol (its spec is ignored by the status
// subresource); pol.ResourceVersion makes it fail with a conflict if the policy changed.
func (p *policies) UpdateStatus(ctx context.Context, pol *AuthorizationPolicy, opts metav1.UpdateOptions) (*AuthorizationPolicy, error) {
	out := &AuthorizationPolicy{}
	err := p.rest.Put().Namespace(p.ns).Resource(Resource).Name(pol.Name).SubResource("status").
		VersionedParams(&opts, parameterCodec).Body(pol).Do(ctx).Into(out)
	return out, err
}
