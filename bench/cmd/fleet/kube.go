package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/bearkong/bearkong/bench/sim"
	"github.com/bearkong/bearkong/bench/workload"
	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// kubeUnrelated is the informer run's no-op: an annotation without the mesh prefix.
const kubeUnrelated = "unrelated-annotation"

// kubePush is a new Service of the informer run's memory phase (measured as a new
// Service, recorded in Run.Pushes).
const kubePush = "push"

// runKube runs bearkong on the real informer path: a real etcd and kube-apiserver, S
// Services with E pods each, N of whose pods have a proxy (the first pod of each
// Service, then the second, ...) speaking protocol (sotw or delta), and changes made
// through the API.
func runKube(ctx context.Context, c config, protocol string) (*Run, error) {
	s := c.kubeServices
	e := c.endpoints
	n := min(c.kubeProxies, s*e)
	r := &Run{Impl: "bearkong (informers)", Protocol: protocol, Decode: c.kubeDecode, N: n, S: s, E: e}
	sim.FullDecode = c.kubeDecode == "all"
	name := "kube-" + protocol
	dir, err := filepath.Abs(filepath.Join(c.out, name))
	if err != nil {
		return nil, err
	}
	_ = os.RemoveAll(dir)
	logf("informer path, %s: starting etcd and kube-apiserver", protocol)
	env, err := kubeenv.Start(ctx, kubeenv.Options{Dir: dir, BinDir: c.binDir})
	if err != nil {
		return nil, err
	}
	defer env.Stop()
	cfg := rest.CopyConfig(env.RESTConfig)
	cfg.QPS, cfg.Burst = 1000, 2000
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	logf("informer path, %s: creating %d Services, %d Pods and %d EndpointSlices", protocol, s, s*e, s)
	if err := createMesh(ctx, client, s, e); err != nil {
		return nil, err
	}

	ch, err := startChild(ctx, c, filepath.Join(c.out, name+".log"), "-impl", "kube", "-kubeconfig", env.Kubeconfig)
	if err != nil {
		return nil, err
	}
	defer ch.stop()
	if err := waitServerIdle(ctx, ch, 30*time.Second); err != nil {
		return nil, err
	}
	if r.Baseline, err = ch.stats(true); err != nil {
		return nil, err
	}
	nodes := make([]*corev3.Node, 0, n)
	for k := 0; k < e && len(nodes) < n; k++ {
		for i := 0; i < s && len(nodes) < n; i++ {
			p := workload.Pod{Namespace: workload.Namespace(i), Name: podName(i, k), Service: i, Replica: k}
			nodes = append(nodes, p.Node())
		}
	}
	f, err := syncFleet(ctx, c, ch, r, nodes, sim.Options{Conns: c.conns, Window: c.window, Delta: protocol == "delta"}, 3*time.Minute+time.Duration(s/1000)*30*time.Second)
	if f != nil {
		defer f.Close()
	}
	if err != nil {
		return nil, err
	}
	logf("informer path, %s: %d proxies synced in %.1fs", protocol, n, r.SyncAll)
	heapProfile := func(string) {}
	cpuProfile := func(string) func() { return func() {} }
	if c.profile {
		profDir, _ := filepath.Abs(filepath.Join(c.out, "prof"))
		_ = os.MkdirAll(profDir, 0o755)
		heapProfile = func(name string) {
			_ = ch.post("/heapprofile?path="+filepath.Join(profDir, name+".heap.pprof"), &struct{}{})
		}
		cpuProfile = func(change string) func() {
			_ = ch.post("/cpuprofile/start?path="+filepath.Join(profDir, name+"-"+change+".cpu.pprof"), &struct{}{})
			return func() { _ = ch.post("/cpuprofile/stop", &struct{}{}) }
		}
	}
	heapProfile(name)

	nextIP := 1 << 16
	kinds := []string{workload.Endpoint, workload.Endpoint, workload.Endpoint, workload.NewService, workload.Policy, workload.Annotation, kubeUnrelated}
	for range c.kubePushes {
		kinds = append(kinds, kubePush)
	}
	for seq, kind := range kinds {
		i := (seq*37 + 11) % s
		ns, name := workload.Namespace(i), workload.ServiceName(i)
		cluster := name + "." + ns
		var apply func() error
		switch kind {
		case workload.Endpoint:
			ip := workload.IP(nextIP)
			nextIP++
			apply = func() error {
				sl, err := client.DiscoveryV1().EndpointSlices(ns).Get(ctx, name+"-bench", metav1.GetOptions{})
				if err != nil {
					return err
				}
				sl.Endpoints[0].Addresses = []string{ip}
				_, err = client.DiscoveryV1().EndpointSlices(ns).Update(ctx, sl, metav1.UpdateOptions{})
				return err
			}
		case workload.NewService, kubePush:
			name = "svc-new-" + strconv.Itoa(seq)
			ns = workload.Namespace(0)
			cluster = name + "." + ns
			ips := []string{workload.IP(nextIP), workload.IP(nextIP + 1)}
			nextIP += 2
			apply = func() error {
				if _, err := client.CoreV1().Services(ns).Create(ctx, kubeService(ns, name), metav1.CreateOptions{}); err != nil {
					return err
				}
				_, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, kubeSlice(ns, name, ips, nil), metav1.CreateOptions{})
				return err
			}
		case workload.Annotation, kubeUnrelated, workload.Policy:
			key, val := workload.BenchAnnotation, "v"+strconv.Itoa(seq)
			switch kind {
			case kubeUnrelated:
				key = "bench.example.com/touched"
			case workload.Policy:
				// A real cluster-level policy: the Service's cluster gets new circuit
				// breaker thresholds.
				key, val = mesh.AnnotationMaxConnections, strconv.Itoa(100+seq)
			}
			patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, key, val)
			apply = func() error {
				_, err := client.CoreV1().Services(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
				return err
			}
		}
		mk := kind
		if kind == kubePush {
			mk = workload.NewService
		}
		stopProf := cpuProfile(kind + strconv.Itoa(seq))
		chg, err := measureChange(ctx, f, ch, mk, cluster, apply)
		stopProf()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		if kind == kubePush {
			r.Pushes = append(r.Pushes, chg)
			logf("informer path, %s: push %2d reached %d/%d  p50 %6.0fms  p99 %6.0fms  server RSS %s heap %s", protocol, len(r.Pushes), chg.Reached, chg.Clients, chg.P50, chg.P99, mib(chg.RSS), mib(chg.HeapInuse))
			continue
		}
		r.Changes = append(r.Changes, chg)
		logf("informer path, %s: %-20s reached %d/%d  p50 %6.0fms  p99 %6.0fms  max %6.0fms  %8.0f B/proxy", protocol, kind, chg.Reached, chg.Clients, chg.P50, chg.P99, chg.Max, chg.Bytes)
	}
	if len(r.Pushes) > 0 {
		// Live memory after the pushes, as after sync: growth a collection returns is
		// garbage between two GCs; growth that stays is held.
		if r.AfterPushesGC, err = ch.stats(true); err != nil {
			return nil, err
		}
		heapProfile(name + "-pushes")
	}
	if err := r.end(ch, f); err != nil {
		return nil, err
	}
	return r, nil
}

func podName(svc, k int) string { return workload.ServiceName(svc) + "-" + strconv.Itoa(k) }

func kubeService(ns, name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{mesh.MeshedLabel: mesh.MeshedValue}},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(mesh.AppPort), Protocol: corev1.ProtocolTCP}},
		},
	}
}

func kubeSlice(ns, name string, ips, pods []string) *discoveryv1.EndpointSlice {
	ready := true
	port, proto, pname := int32(mesh.AppPort), corev1.ProtocolTCP, "http"
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name + "-bench", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &pname, Port: &port, Protocol: &proto}},
	}
	for k, ip := range ips {
		ep := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}
		if k < len(pods) {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pods[k]}
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

// createMesh creates the namespaces, then per Service the Service, its pods and one
// EndpointSlice listing them, from a few goroutines.
func createMesh(ctx context.Context, client kubernetes.Interface, s, e int) error {
	for i := 0; i < s; i += workload.PerNamespace {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: workload.Namespace(i)}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return err
		}
		// No controller-manager runs, so nothing creates the namespace's default
		// ServiceAccount, which admission wants for every Pod.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "default"}}
		if _, err := client.CoreV1().ServiceAccounts(ns.Name).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for range 16 {
		wg.Go(func() {
			for i := range work {
				if err := createService(ctx, client, i, e); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range s {
		work <- i
	}
	close(work)
	wg.Wait()
	return first
}

func createService(ctx context.Context, client kubernetes.Interface, i, e int) error {
	ns, name := workload.Namespace(i), workload.ServiceName(i)
	if _, err := client.CoreV1().Services(ns).Create(ctx, kubeService(ns, name), metav1.CreateOptions{}); err != nil {
		return err
	}
	var ips, pods []string
	no := false
	for k := range e {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: podName(i, k), Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{
				AutomountServiceAccountToken: &no,
				Containers:                   []corev1.Container{{Name: "app", Image: "bench.invalid/app:v1"}},
			},
		}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return err
		}
		ips = append(ips, workload.IP(i*e+k))
		pods = append(pods, pod.Name)
	}
	_, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, kubeSlice(ns, name, ips, pods), metav1.CreateOptions{})
	return err
}
