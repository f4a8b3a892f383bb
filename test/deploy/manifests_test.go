// Package deploy tests the Kubernetes manifests under manifests/ (the way to run bearkong
// on a real cluster) without a cluster:
//
//   - the files themselves: every kustomization lists exactly its files, every namespaced
//     object names its namespace, Prometheus's relabelling picks the control plane and
//     every sidecar at the right port and path, and the sidecar image is the Envoy version
//     the tests run;
//   - the init container's `bearkong bootstrap`, run with the manifest's own arguments and
//     environment, writes a bootstrap that Envoy accepts;
//   - against a real kube-apiserver (internal/kubeenv): every object passes a server-side
//     dry-run apply, and `bearkong cp`, run with the token of the manifest's ServiceAccount
//     and nothing else, serves the whole local mesh (internal/localmesh) built from the
//     apps' manifests, while its RBAC forbids everything it does not use.
//
// With -short the tests that start processes are skipped; otherwise a missing binary is a
// failure, not a skip.
package deploy

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/bearkong/bearkong/internal/kubeenv"
	bkdiscovery "github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// manifestDirs are the directories under manifests/ that `kubectl apply -k` takes, in the
// order the README and the Makefile apply them.
var manifestDirs = []string{"bearkong", "apps", "prometheus"}

// object is one manifest object and the file it came from.
type object struct {
	file string // relative to the repository root
	obj  *unstructured.Unstructured
}

func (o object) String() string {
	return fmt.Sprintf("%s %s (%s)", o.obj.GetKind(), key(o.obj), o.file)
}

func key(u *unstructured.Unstructured) string {
	if u.GetNamespace() == "" {
		return u.GetName()
	}
	return u.GetNamespace() + "/" + u.GetName()
}

// repoRoot returns the repository root or fails the test.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// kustomization is the part of a kustomization.yaml these manifests use. Anything else
// (namePrefix, patches, generators...) would make the files differ from what kubectl
// applies, so the loader refuses it.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

func readKustomization(path string) (kustomization, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return kustomization{}, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return kustomization{}, fmt.Errorf("%s: only apiVersion, kind and resources are expected: %w", path, err)
	}
	if k.Kind != "Kustomization" {
		return kustomization{}, fmt.Errorf("%s: kind %q", path, k.Kind)
	}
	return k, nil
}

// loadDir returns the objects of manifests/<dir>, in its kustomization's order.
func loadDir(root, dir string) ([]object, error) {
	k, err := readKustomization(filepath.Join(root, "manifests", dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var out []object
	for _, res := range k.Resources {
		rel := filepath.Join("manifests", dir, res)
		objs, err := kubeenv.ReadYAML(filepath.Join(root, rel))
		if err != nil {
			return nil, err
		}
		for _, o := range objs {
			out = append(out, object{file: rel, obj: o})
		}
	}
	return out, nil
}

// loadAll returns the objects of every directory in manifestDirs.
func loadAll(t *testing.T) []object {
	t.Helper()
	root := repoRoot(t)
	var all []object
	for _, d := range manifestDirs {
		objs, err := loadDir(root, d)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, objs...)
	}
	return all
}

// find returns the objects of a kind, optionally with a name.
func find(objs []object, kind, name string) []object {
	var out []object
	for _, o := range objs {
		if o.obj.GetKind() == kind && (name == "" || o.obj.GetName() == name) {
			out = append(out, o)
		}
	}
	return out
}

// typed converts a manifest object into its typed form.
func typed[T any](t *testing.T, o object) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.obj.Object, out, true); err != nil {
		t.Fatalf("%s: %v", o, err)
	}
	return out
}

// TestKustomizations checks that `kubectl apply -k` on each directory applies every file
// in it (but Prometheus's rule file), and nothing else, so that the tests below, which read the files, see what
// kubectl applies.
func TestKustomizations(t *testing.T) {
	root := repoRoot(t)
	top, err := readKustomization(filepath.Join(root, "manifests", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(top.Resources, manifestDirs) {
		t.Errorf("manifests/kustomization.yaml resources = %v, want %v", top.Resources, manifestDirs)
	}
	for _, d := range manifestDirs {
		k, err := readKustomization(filepath.Join(root, "manifests", d, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		files, err := filepath.Glob(filepath.Join(root, "manifests", d, "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for _, f := range files {
			// rules.yaml is Prometheus's rule file, not a Kubernetes object: it reaches
			// Prometheus as the ConfigMap prometheus-rules (make run/prometheus).
			if b := filepath.Base(f); b != "kustomization.yaml" && !(d == "prometheus" && b == "rules.yaml") {
				want = append(want, b)
			}
		}
		got := slices.Sorted(slices.Values(k.Resources))
		if !slices.Equal(got, want) {
			t.Errorf("manifests/%s/kustomization.yaml resources = %v, want every YAML file in the directory: %v", d, got, want)
		}
	}
}

// TestObjects checks properties every object must have for `kubectl apply -f` to behave
// as `kubectl apply -k`: an explicit namespace on namespaced objects, no duplicates, and
// types that decode strictly.
func TestObjects(t *testing.T) {
	objs := loadAll(t)
	clusterScoped := map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true, "ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true}
	seen := map[string]string{}
	for _, o := range objs {
		id := o.obj.GetAPIVersion() + " " + o.obj.GetKind() + " " + key(o.obj)
		if prev, dup := seen[id]; dup {
			t.Errorf("%s declared twice: %s and %s", id, prev, o.file)
		}
		seen[id] = o.file
		if ns := o.obj.GetNamespace(); clusterScoped[o.obj.GetKind()] != (ns == "") {
			t.Errorf("%s: namespace %q (namespaced objects must name theirs; cluster-scoped ones must not)", o, ns)
		}
	}
	for _, o := range find(objs, "Deployment", "") {
		d := typed[appsv1.Deployment](t, o)
		for _, c := range slices.Concat(d.Spec.Template.Spec.InitContainers, d.Spec.Template.Spec.Containers) {
			if !strings.Contains(c.Image, ":") || strings.HasSuffix(c.Image, ":latest") {
				t.Errorf("%s: container %s: image %q is not pinned", o, c.Name, c.Image)
			}
		}
	}
	t.Logf("%d objects in %v", len(objs), manifestDirs)
}

// TestControlPlaneManifest checks the control plane's Deployment for what the issue asks:
// probes on /readyz and /healthz, resources, a locked-down security context, scrape
// annotations, and the ServiceAccount that the RBAC binds.
func TestControlPlaneManifest(t *testing.T) {
	objs := loadAll(t)
	ds := find(objs, "Deployment", "bearkong")
	if len(ds) != 1 {
		t.Fatalf("want one Deployment bearkong, got %v", ds)
	}
	d := typed[appsv1.Deployment](t, ds[0])
	spec := d.Spec.Template.Spec
	if spec.ServiceAccountName != "bearkong" || d.Namespace != "bearkong-system" {
		t.Errorf("serviceAccountName %q in %q, want bearkong in bearkong-system", spec.ServiceAccountName, d.Namespace)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("containers = %d, want 1", len(spec.Containers))
	}
	c := spec.Containers[0]
	if want := []string{"cp", "--xds-addr", ":5000", "--http-addr", ":9000"}; !slices.Equal(c.Args, want) {
		t.Errorf("args = %q, want %q", c.Args, want)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe %+v, want GET /readyz", p)
	}
	if p := c.LivenessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" {
		t.Errorf("liveness probe %+v, want GET /healthz", p)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources = %+v, want CPU and memory requests and a memory limit", c.Resources)
	}
	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("no container securityContext")
	case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation,
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem,
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot,
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}),
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("securityContext %+v: want no privilege escalation, read-only root, non-root, drop ALL, seccomp RuntimeDefault", sc)
	}
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9000" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v, want prometheus.io scrape/port/path for :9000/metrics", ann)
	}
	// High availability: two replicas or more, spread over nodes, at most one taken by a
	// voluntary disruption, each with the identity leader election needs.
	if replicasOf(d) < 2 {
		t.Errorf("replicas = %d, want at least 2 (unset means 1)", replicasOf(d))
	}
	spread := false
	for _, c := range spec.TopologySpreadConstraints {
		if c.TopologyKey == "kubernetes.io/hostname" && c.LabelSelector != nil &&
			c.LabelSelector.MatchLabels["app.kubernetes.io/name"] == "bearkong" {
			spread = true
		}
	}
	if !spread {
		t.Errorf("topologySpreadConstraints %+v, want the replicas spread over kubernetes.io/hostname", spec.TopologySpreadConstraints)
	}
	fromField := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fromField[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if fromField["POD_NAME"] != "metadata.name" || fromField["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("env from the downward API %v, want POD_NAME=metadata.name and POD_NAMESPACE=metadata.namespace", fromField)
	}
	pdbs := find(objs, "PodDisruptionBudget", "bearkong")
	if len(pdbs) != 1 {
		t.Fatalf("want one PodDisruptionBudget bearkong, got %v", pdbs)
	}
	pdb := typed[policyv1.PodDisruptionBudget](t, pdbs[0])
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 1 || pdb.Spec.Selector == nil ||
		pdb.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != "bearkong" || pdb.Namespace != d.Namespace {
		t.Errorf("PodDisruptionBudget %+v, want minAvailable 1 over the bearkong pods", pdb.Spec)
	}
	svcs := find(objs, "Service", "bearkong")
	if len(svcs) != 1 {
		t.Fatalf("want one Service bearkong, got %v", svcs)
	}
	svc := typed[corev1.Service](t, svcs[0])
	var ports []int32
	for _, p := range svc.Spec.Ports {
		ports = append(ports, p.Port)
	}
	if !slices.Equal(ports, []int32{5000, 9000}) || svc.Namespace != "bearkong-system" {
		t.Errorf("Service bearkong ports %v in %s, want [5000 9000] in bearkong-system", ports, svc.Namespace)
	}
}

// app is one meshed app as its manifests declare it.
type app struct {
	svc      *corev1.Service
	deploy   *appsv1.Deployment
	replicas int
}

// apps returns the meshed apps of manifests/apps, by name.
func apps(t *testing.T) map[string]app {
	t.Helper()
	root := repoRoot(t)
	objs, err := loadDir(root, "apps")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]app{}
	for _, o := range find(objs, "Service", "") {
		svc := typed[corev1.Service](t, o)
		if svc.Labels[mesh.MeshedLabel] != mesh.MeshedValue {
			t.Fatalf("%s: not labelled %s=%s", o, mesh.MeshedLabel, mesh.MeshedValue)
		}
		ds := find(objs, "Deployment", svc.Name)
		if len(ds) != 1 {
			t.Fatalf("Service %s: want one Deployment of the same name, got %v", svc.Name, ds)
		}
		d := typed[appsv1.Deployment](t, ds[0])
		replicas := 1
		if d.Spec.Replicas != nil {
			replicas = int(*d.Spec.Replicas)
		}
		out[svc.Name] = app{svc: svc, deploy: d, replicas: replicas}
	}
	return out
}

// TestAppManifests checks the apps against the mesh contract and the original exercise:
// app-1 x1, app-2 x2, app-3 x2; port 9090; app-3's targetPort 5080; the sidecar, the app
// and netshoot in every pod, and the bootstrap written by an init container from the
// downward API.
func TestAppManifests(t *testing.T) {
	as := apps(t)
	want := map[string]int{"app-1": 1, "app-2": 2, "app-3": 2}
	if len(as) != len(want) {
		t.Fatalf("apps = %v, want %v", slices.Sorted(maps.Keys(as)), want)
	}
	for name, replicas := range want {
		a, ok := as[name]
		if !ok {
			t.Errorf("no app %s", name)
			continue
		}
		if a.replicas != replicas {
			t.Errorf("%s: %d replicas, want %d", name, a.replicas, replicas)
		}
		if sel := a.svc.Spec.Selector; len(sel) != 1 || sel["app"] != name {
			t.Errorf("%s: selector %v, want app=%s", name, sel, name)
		}
		if l := a.deploy.Spec.Template.Labels; l["app"] != name {
			t.Errorf("%s: pod labels %v, want app=%s", name, l, name)
		}
		if len(a.svc.Spec.Ports) != 1 || a.svc.Spec.Ports[0].Port != mesh.AppPort {
			t.Errorf("%s: ports %+v, want one port %d", name, a.svc.Spec.Ports, mesh.AppPort)
		}
		spec := a.deploy.Spec.Template.Spec
		var names []string
		for _, c := range spec.Containers {
			names = append(names, c.Name)
		}
		if !slices.Equal(names, []string{"envoy", "app", "netshoot"}) {
			t.Errorf("%s: containers %v, want envoy, app, netshoot", name, names)
		}
		if len(spec.InitContainers) != 1 || len(spec.InitContainers[0].Args) == 0 || spec.InitContainers[0].Args[0] != "bootstrap" {
			t.Errorf("%s: want one init container running bootstrap, got %+v", name, spec.InitContainers)
		}
		for _, c := range spec.Containers {
			if c.Name == "app" && envValue(c.Env, "NAME") != name {
				t.Errorf("%s: the app's NAME is %q", name, envValue(c.Env, "NAME"))
			}
		}
		ann := a.deploy.Spec.Template.Annotations
		if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "8081" || ann["prometheus.io/path"] != "/stats/prometheus" {
			t.Errorf("%s: pod annotations %v, want the sidecar admin's /stats/prometheus", name, ann)
		}
	}
	if tp := as["app-3"].svc.Spec.Ports[0].TargetPort; tp.IntValue() != 5080 {
		t.Errorf("app-3 targetPort = %s, want 5080 as in the original exercise", tp.String())
	}
}

// Where the app manifests put the sidecar's credentials for bearkong (issue 11).
const (
	tokenDir      = "/var/run/secrets/bearkong"
	tokenPath     = tokenDir + "/token"
	rootDir       = "/var/run/bearkong"
	tokenAudience = "bearkong"
)

// TestAppIdentity checks each app's identity and its credentials for bearkong: a
// ServiceAccount of the app's name that mounts no API token, the pods running as it; a
// projected token of audience bearkong, mounted read-only into the init container and
// Envoy only, at the path the bootstrap names; and the CA root's ConfigMap, which
// bearkong publishes, mounted into the init container, whose args pass both on.
func TestAppIdentity(t *testing.T) {
	root := repoRoot(t)
	objs, err := loadDir(root, "apps")
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range apps(t) {
		t.Run(name, func(t *testing.T) {
			sas := find(objs, "ServiceAccount", name)
			if len(sas) != 1 {
				t.Fatalf("want one ServiceAccount %s, got %v", name, sas)
			}
			sa := typed[corev1.ServiceAccount](t, sas[0])
			if sa.Namespace != a.deploy.Namespace || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
				t.Errorf("ServiceAccount %s/%s automountServiceAccountToken %v, want false in %s", sa.Namespace, sa.Name, sa.AutomountServiceAccountToken, a.deploy.Namespace)
			}
			spec := a.deploy.Spec.Template.Spec
			if spec.ServiceAccountName != name {
				t.Errorf("serviceAccountName %q, want %q", spec.ServiceAccountName, name)
			}
			if m := spec.AutomountServiceAccountToken; m != nil && *m {
				t.Error("the pod mounts an API token")
			}

			var tokenVol, rootVol string
			for _, v := range spec.Volumes {
				switch {
				case v.Projected != nil:
					src := v.Projected.Sources
					if len(src) != 1 || src[0].ServiceAccountToken == nil {
						t.Fatalf("volume %s: sources %+v, want one serviceAccountToken", v.Name, src)
					}
					tok := src[0].ServiceAccountToken
					if tok.Audience != tokenAudience || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 3600 || tok.Path != "token" {
						t.Errorf("volume %s: token %+v, want audience %s, expirationSeconds 3600, path token", v.Name, tok, tokenAudience)
					}
					tokenVol = v.Name
				case v.ConfigMap != nil:
					if v.ConfigMap.Name != bkdiscovery.RootConfigMapName || len(v.ConfigMap.Items) != 0 {
						t.Errorf("volume %s: ConfigMap %+v, want all of %s", v.Name, v.ConfigMap, bkdiscovery.RootConfigMapName)
					}
					if o := v.ConfigMap.Optional; o != nil && *o {
						t.Errorf("volume %s is optional: a pod would start without the root", v.Name)
					}
					rootVol = v.Name
				}
			}
			if tokenVol == "" || rootVol == "" {
				t.Fatalf("volumes %+v: want a projected token and the CA root ConfigMap", spec.Volumes)
			}

			init := spec.InitContainers[0]
			sidecar := container(t, spec, "envoy")
			for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
				want := map[string]string{} // volume -> mount path
				switch c.Name {
				case init.Name:
					want[tokenVol], want[rootVol] = tokenDir, rootDir
				case sidecar.Name:
					want[tokenVol] = tokenDir
				}
				got := map[string]string{}
				for _, m := range c.VolumeMounts {
					if m.Name != tokenVol && m.Name != rootVol {
						continue
					}
					got[m.Name] = m.MountPath
					if !m.ReadOnly {
						t.Errorf("container %s mounts %s read-write", c.Name, m.Name)
					}
				}
				if !maps.Equal(got, want) {
					t.Errorf("container %s mounts %v, want %v", c.Name, got, want)
				}
			}
			args := strings.Join(init.Args, " ")
			for _, want := range []string{"--xds-ca-file " + rootDir + "/" + bkdiscovery.RootConfigMapKey, "--xds-token-file " + tokenPath} {
				if !strings.Contains(args, want) {
					t.Errorf("init container args %q, want %q", init.Args, want)
				}
			}
		})
	}
}

func envValue(env []corev1.EnvVar, name string) string {
	for _, e := range env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// TestPrometheusConfigSelectsMeshPods runs the relabelling of the Prometheus ConfigMap
// over the pods that the manifests declare, as Prometheus's Kubernetes pod discovery would
// present them, and checks that job "bearkong" scrapes the control plane's :9000/metrics
// and job "envoy" every app pod's sidecar admin :8081/stats/prometheus, once each.
// (The Debian promtool on these machines is built without Kubernetes discovery, so it
// cannot check this file.)
func TestPrometheusConfigSelectsMeshPods(t *testing.T) {
	objs := loadAll(t)
	cms := find(objs, "ConfigMap", "prometheus-config")
	if len(cms) != 1 {
		t.Fatalf("want one ConfigMap prometheus-config, got %v", cms)
	}
	cm := typed[corev1.ConfigMap](t, cms[0])
	var cfg promConfig
	if err := yaml.UnmarshalStrict([]byte(cm.Data["prometheus.yml"]), &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	// The alerts of rules.yaml, mounted by the Deployment from the ConfigMap
	// prometheus-rules.
	if !slices.Equal(cfg.RuleFiles, []string{"/etc/prometheus-rules/*.yaml"}) {
		t.Errorf("rule_files %v, want the prometheus-rules ConfigMap's mount, /etc/prometheus-rules/*.yaml", cfg.RuleFiles)
	}

	// Every pod of every Deployment, one discovered target per declared container port.
	type scrape struct{ job, addr, path, pod string }
	var got []scrape
	podIP := 0
	for _, o := range find(objs, "Deployment", "") {
		d := typed[appsv1.Deployment](t, o)
		podIP++
		ip := fmt.Sprintf("10.42.0.%d", podIP)
		podName := d.Name + "-5d8f7c9b6-x2x4z"
		for _, job := range cfg.ScrapeConfigs {
			if len(job.KubernetesSDConfigs) != 1 || job.KubernetesSDConfigs[0].Role != "pod" {
				t.Fatalf("job %s: want one kubernetes_sd_configs with role pod", job.JobName)
			}
			if ns := job.KubernetesSDConfigs[0].Namespaces.Names; len(ns) > 0 && !slices.Contains(ns, d.Namespace) {
				continue
			}
			seen := map[scrape]bool{}
			for _, c := range d.Spec.Template.Spec.Containers {
				for _, p := range c.Ports {
					labels := podTargetLabels(d, podName, ip, c, p)
					labels["job"] = job.JobName
					labels["__metrics_path__"] = "/metrics"
					out, keep, err := relabel(labels, job.RelabelConfigs)
					if err != nil {
						t.Fatalf("job %s: %v", job.JobName, err)
					}
					if !keep {
						continue
					}
					s := scrape{out["job"], out["__address__"], out["__metrics_path__"], out["pod"]}
					if !seen[s] { // Prometheus deduplicates identical targets
						seen[s] = true
						got = append(got, s)
					}
				}
			}
		}
	}
	var want []scrape
	podIP = 0
	for _, o := range find(objs, "Deployment", "") {
		podIP++
		ip := fmt.Sprintf("10.42.0.%d", podIP)
		pod := o.obj.GetName() + "-5d8f7c9b6-x2x4z"
		switch {
		case o.obj.GetName() == "bearkong":
			want = append(want, scrape{"bearkong", ip + ":9000", "/metrics", pod})
		case strings.HasPrefix(o.obj.GetName(), "app-"):
			want = append(want, scrape{"envoy", ip + ":8081", "/stats/prometheus", pod})
		}
	}
	cmp := func(a, b scrape) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) }
	slices.SortFunc(got, cmp)
	slices.SortFunc(want, cmp)
	if !slices.Equal(got, want) {
		t.Errorf("scrape targets:\n got %v\nwant %v", got, want)
	}
	t.Logf("targets: %v", got)
}

// promConfig is the part of Prometheus's configuration the manifest uses; strict
// unmarshalling rejects anything else, so this test notices when the config grows.
type promConfig struct {
	Global struct {
		ScrapeInterval     string `json:"scrape_interval"`
		EvaluationInterval string `json:"evaluation_interval"`
	} `json:"global"`
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName             string `json:"job_name"`
		KubernetesSDConfigs []struct {
			Role       string `json:"role"`
			Namespaces struct {
				Names []string `json:"names"`
			} `json:"namespaces"`
		} `json:"kubernetes_sd_configs"`
		RelabelConfigs []relabelConfig `json:"relabel_configs"`
	} `json:"scrape_configs"`
}

type relabelConfig struct {
	SourceLabels []string `json:"source_labels"`
	Regex        *string  `json:"regex"`
	Action       string   `json:"action"`
	TargetLabel  string   `json:"target_label"`
	Replacement  *string  `json:"replacement"`
}

// podTargetLabels are the labels Prometheus's pod discovery gives the target of one
// container port (the subset the config can use).
func podTargetLabels(d *appsv1.Deployment, podName, ip string, c corev1.Container, p corev1.ContainerPort) map[string]string {
	l := map[string]string{
		"__address__":                          fmt.Sprintf("%s:%d", ip, p.ContainerPort),
		"__meta_kubernetes_namespace":          d.Namespace,
		"__meta_kubernetes_pod_name":           podName,
		"__meta_kubernetes_pod_ip":             ip,
		"__meta_kubernetes_pod_phase":          "Running",
		"__meta_kubernetes_pod_container_name": c.Name,
	}
	for k, v := range d.Spec.Template.Labels {
		l["__meta_kubernetes_pod_label_"+sanitize(k)] = v
	}
	for k, v := range d.Spec.Template.Annotations {
		l["__meta_kubernetes_pod_annotation_"+sanitize(k)] = v
	}
	return l
}

var invalidLabelChars = regexp.MustCompile(`[^a-zA-Z0-9_]`)

func sanitize(s string) string { return invalidLabelChars.ReplaceAllString(s, "_") }

// relabel applies relabel configs as Prometheus does for the actions used here (replace,
// keep, drop): source values joined by ";", the regex anchored at both ends (default
// "(.*)"), the replacement expanded with $1... (default "$1"). It returns the labels
// without the "__meta_" ones, and whether the target is kept.
func relabel(in map[string]string, cfgs []relabelConfig) (map[string]string, bool, error) {
	l := map[string]string{}
	for k, v := range in {
		l[k] = v
	}
	for _, c := range cfgs {
		re := "(.*)"
		if c.Regex != nil {
			re = *c.Regex
		}
		rx, err := regexp.Compile("^(?s:" + re + ")$")
		if err != nil {
			return nil, false, fmt.Errorf("regex %q: %w", re, err)
		}
		var vals []string
		for _, s := range c.SourceLabels {
			vals = append(vals, l[s])
		}
		val := strings.Join(vals, ";")
		switch c.Action {
		case "keep":
			if !rx.MatchString(val) {
				return nil, false, nil
			}
		case "drop":
			if rx.MatchString(val) {
				return nil, false, nil
			}
		case "", "replace":
			m := rx.FindStringSubmatchIndex(val)
			if m == nil {
				continue
			}
			repl := "$1"
			if c.Replacement != nil {
				repl = *c.Replacement
			}
			res := string(rx.ExpandString(nil, repl, val, m))
			if c.TargetLabel == "" {
				return nil, false, errors.New("replace without target_label")
			}
			if res == "" {
				delete(l, c.TargetLabel)
			} else {
				l[c.TargetLabel] = res
			}
		default:
			return nil, false, fmt.Errorf("action %q is not simulated by this test", c.Action)
		}
	}
	for k := range l {
		if strings.HasPrefix(k, "__meta_") {
			delete(l, k)
		}
	}
	return l, true, nil
}

// replicasOf is a Deployment's replica count, 1 when unset as Kubernetes defaults it.
func replicasOf(d *appsv1.Deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}
