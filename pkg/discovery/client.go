package discovery

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
)

// Default client-side rate limits of every client bearkong builds. client-go's own
// defaults (5 requests per second, bursts of 10) throttle the start of a control plane
// that lists four kinds of objects and then writes Events, statuses and the CA root
// ConfigMaps; the API server's priority and fairness is the real protection, so the
// client limit only stops a runaway loop:
// https://kubernetes.io/docs/concepts/cluster-administration/flow-control/
const (
	DefaultKubeAPIQPS   = 50
	DefaultKubeAPIBurst = 100
)

// ClientOptions configure the clients of NewClients and NewAuthzClient.
type ClientOptions struct {
	// Kubeconfig is a path; empty means the in-cluster config when running in a pod,
	// then $KUBECONFIG, then ~/.kube/config.
	Kubeconfig string
	// QPS and Burst are the client-side rate limit of every request (rest.Config);
	// zero takes DefaultKubeAPIQPS and DefaultKubeAPIBurst.
	QPS   float32
	Burst int
}

// Validate reports a negative rate limit: client-go would take it as "no limit" for
// QPS and refuse every request for the burst.
func (o ClientOptions) Validate() error {
	var errs []error
	if o.QPS < 0 {
		errs = append(errs, fmt.Errorf("kube API QPS %v: must be positive", o.QPS))
	}
	if o.Burst < 0 {
		errs = append(errs, fmt.Errorf("kube API burst %d: must be positive", o.Burst))
	}
	return errors.Join(errs...)
}

func (o ClientOptions) withDefaults() ClientOptions {
	if o.QPS == 0 {
		o.QPS = DefaultKubeAPIQPS
	}
	if o.Burst == 0 {
		o.Burst = DefaultKubeAPIBurst
	}
	return o
}

// NewClients returns a Kubernetes client and a Gateway API client.
func NewClients(o ClientOptions) (kubernetes.Interface, gwclient.Interface, error) {
	cfg, err := RestConfig(o)
	if err != nil {
		return nil, nil, err
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	gw, err := gwclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("gateway API client: %w", err)
	}
	return c, gw, nil
}

// NewAuthzClient returns the typed client of bearkong's AuthorizationPolicies
// (Options.AuthzClient), configured as NewClients configures its own.
func NewAuthzClient(o ClientOptions) (*v1alpha1.Client, error) {
	cfg, err := RestConfig(o)
	if err != nil {
		return nil, err
	}
	c, err := v1alpha1.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("bearkong.dev client: %w", err)
	}
	return c, nil
}

// RestConfig is the rest.Config every bearkong client is built from: o's kubeconfig,
// user agent and rate limits. Each call returns a new config (and so each client gets
// its own rate limiter).
func RestConfig(o ClientOptions) (*rest.Config, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	cfg, err := loadRestConfig(o.Kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "bearkong"
	cfg.QPS, cfg.Burst = o.QPS, o.Burst
	return cfg, nil
}

func loadRestConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	if cfg, err := rest.InClusterConfig(); err == nil {
		return cfg, nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules() // $KUBECONFIG, then ~/.kube/config
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("no kubeconfig: not in a cluster, and none in $KUBECONFIG or ~/.kube/config (pass --kubeconfig): %w", err)
	}
	return cfg, nil
}
