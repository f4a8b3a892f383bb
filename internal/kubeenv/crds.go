package kubeenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
)

// GatewayAPIModule is the Go module whose CRDs the mesh installs. Its version is the one
// pinned in the repository's go.mod, the same the control plane is built with.
const GatewayAPIModule = "sigs.k8s.io/gateway-api"

// GatewayAPICRDDir returns the directory of the Gateway API's experimental-channel CRDs
// in the module cache, for the version pinned in go.mod (downloading it if needed). The
// experimental channel carries HTTPRoute's retry field, which bearkong supports.
func GatewayAPICRDDir(ctx context.Context) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", GatewayAPIModule)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w", GatewayAPIModule, err)
	}
	// The JSON has a "Dir" field; avoid a struct for one string.
	const key = `"Dir": "`
	i := bytes.Index(out, []byte(key))
	if i < 0 {
		return "", fmt.Errorf("go mod download %s: no Dir in %s", GatewayAPIModule, out)
	}
	rest := out[i+len(key):]
	dir := string(rest[:bytes.IndexByte(rest, '"')])
	return filepath.Join(dir, "config", "crd", "experimental"), nil
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// InstallGatewayAPICRDs creates the Gateway API CRDs (pinned version, experimental
// channel) and waits until they are served.
func (e *Env) InstallGatewayAPICRDs(ctx context.Context) error {
	dir, err := GatewayAPICRDDir(ctx)
	if err != nil {
		return err
	}
	return e.installCRDs(ctx, dir)
}

// BearkongCRDDir returns the directory of bearkong's own CRDs in the repository
// (manifests/crds), the files `make run/crds` applies.
func BearkongCRDDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "manifests", "crds"), nil
}

// InstallBearkongCRDs creates bearkong's own CRDs (AuthorizationPolicy) and waits until
// they are served.
func (e *Env) InstallBearkongCRDs(ctx context.Context) error {
	dir, err := BearkongCRDDir()
	if err != nil {
		return err
	}
	return e.installCRDs(ctx, dir)
}

// installCRDs creates the CRDs of every YAML file in dir and waits until they are
// established.
func (e *Env) installCRDs(ctx context.Context, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in %s: %v", dir, err)
	}
	dyn, err := dynamic.NewForConfig(e.RESTConfig)
	if err != nil {
		return err
	}
	crds := dyn.Resource(crdGVR)
	var names []string
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue // kustomize's index of the CRDs, not an object
		}
		objs, err := ReadYAML(f)
		if err != nil {
			return err
		}
		for _, o := range objs {
			if o.GetKind() != "CustomResourceDefinition" {
				continue
			}
			if _, err := crds.Create(ctx, o, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create CRD %s: %w", o.GetName(), err)
			}
			names = append(names, o.GetName())
		}
	}
	// Established means the API server serves the new resource.
	deadline := time.Now().Add(30 * time.Second)
	for _, n := range names {
		for {
			o, err := crds.Get(ctx, n, metav1.GetOptions{})
			if err == nil && established(o) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not established after 30s (last error: %v)", n, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func established(o *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// ReadYAML decodes every document of a YAML (or JSON) file. Empty documents are skipped;
// a document without apiVersion, kind or metadata.name is an error.
func ReadYAML(path string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if len(m) == 0 {
			continue // an empty document
		}
		u := &unstructured.Unstructured{Object: m}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, fmt.Errorf("%s: a document without apiVersion, kind or metadata.name", path)
		}
		out = append(out, u)
	}
}
