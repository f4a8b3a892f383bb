package discovery

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
)

// NewClients returns a Kubernetes client and a Gateway API client. With kubeconfig empty
// it uses the in-cluster config when running in a pod, then $KUBECONFIG, then
// ~/.kube/config.
func NewClients(kubeconfig string) (kubernetes.Interface, gwclient.Interface, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	cfg.UserAgent = "bearkong"
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
func NewAuthzClient(kubeconfig string) (*v1alpha1.Client, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.UserAgent = "bearkong"
	c, err := v1alpha1.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("bearkong.dev client: %w", err)
	}
	return c, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
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
