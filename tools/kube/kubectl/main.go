// Command kubectl is kubectl, built from a pinned module version so that the deployment
// tests can run `kubectl apply -k` against the local API server.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubectl/pkg/cmd"
)

func main() { os.Exit(cli.Run(cmd.NewDefaultKubectlCommand())) }
