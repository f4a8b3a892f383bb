package localmesh

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/kubeenv/proc"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// nodeName is the Pods' spec.nodeName. A scheduled pod is deleted gracefully by the API
// server (it gets a deletionTimestamp and stays until its kubelet, here the harness,
// finishes), which is what RemovePod relies on.
const nodeName = "localmesh"

// managedBy is the EndpointSlices' endpointslice.kubernetes.io/managed-by label.
const managedBy = "localmesh.bearkong.dev"

// Pod describes a pod of the local mesh.
type Pod struct {
	Name      string
	Namespace string
	Service   string
	IP        string
	// OutboundIP is the address of the pod's outbound listener: a loopback address of
	// its own, as 127.0.0.1 is in a real pod, so that <IP>:8001 is closed as it would be
	// to other pods.
	OutboundIP string
	// ServiceAccount is the pod's ServiceAccount: its identity in the mesh.
	ServiceAccount string
}

// OutboundAddr is the address of the pod's outbound listener (port 8001).
func (p Pod) OutboundAddr() string {
	return net.JoinHostPort(p.OutboundIP, strconv.Itoa(mesh.OutboundPort))
}

// OutboundURL is the URL of the pod's outbound listener.
func (p Pod) OutboundURL() string { return "http://" + p.OutboundAddr() + "/" }

// InboundAddr is the address of the pod's inbound listener (port 8000).
func (p Pod) InboundAddr() string { return p.addr(mesh.InboundPort) }

// AdminURL is the base URL of the pod's Envoy admin (port 8081).
func (p Pod) AdminURL() string { return "http://" + p.addr(mesh.AdminPort) }

// AppAddr is the address of the pod's demo app (port 9090).
func (p Pod) AppAddr() string { return p.addr(mesh.AppPort) }

func (p Pod) addr(port int) string { return net.JoinHostPort(p.IP, strconv.Itoa(port)) }

// pod is the harness's state for one pod. Its fields are guarded by Mesh.mu.
type pod struct {
	Pod
	uid         types.UID
	ready       bool // the endpoint's ready condition (and the Pod's Ready condition)
	terminating bool
	app, envoy  *proc.Process
}

func (p *pod) processes() []*proc.Process {
	var ps []*proc.Process
	for _, x := range []*proc.Process{p.envoy, p.app} {
		if x != nil {
			ps = append(ps, x)
		}
	}
	return ps
}

// PodOptions configures AddPod.
type PodOptions struct {
	// Name of the pod. Default "<service>-<n>", n counting from 0 per service.
	Name string
	// Env is added to the demo app's environment: ERROR_RATE, ERROR_CODE, LATENCY, BODY...
	Env map[string]string
	// Labels are added to the pod's labels (app=<service> is always set).
	Labels map[string]string
	// ServiceAccount the pod runs as, its identity in the mesh. Default: the one named
	// after its Service, which AddService creates; another one must exist.
	ServiceAccount string
}

// AddPod starts a pod for the service: it creates the Pod, gives it the next free
// loopback address, starts the demo app and Envoy, waits until both are ready and Envoy's
// listeners are up, then marks the Pod Ready and its endpoint ready. On failure it cleans
// up after itself.
func (m *Mesh) AddPod(ctx context.Context, svc string, opts PodOptions) (Pod, error) {
	p, err := m.reservePod(svc, opts)
	if err != nil {
		return Pod{}, err
	}
	return m.startPod(ctx, p, opts)
}

// PodSpec is one pod for AddPods.
type PodSpec struct {
	Service string
	PodOptions
}

// AddPods adds several pods at once, as AddPod does, starting them in parallel. Names and
// addresses are handed out in the order of specs, so the same specs give the same pods.
// It returns the pods that started, in the order of specs, and the errors of the others.
func (m *Mesh) AddPods(ctx context.Context, specs ...PodSpec) ([]Pod, error) {
	reserved := make([]*pod, 0, len(specs))
	for _, s := range specs {
		p, err := m.reservePod(s.Service, s.PodOptions)
		if err != nil {
			m.mu.Lock()
			for _, r := range reserved {
				delete(m.pods, r.Name)
			}
			m.mu.Unlock()
			return nil, err
		}
		reserved = append(reserved, p)
	}
	pods := make([]Pod, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, p := range reserved {
		wg.Go(func() { pods[i], errs[i] = m.startPod(ctx, p, specs[i].PodOptions) })
	}
	wg.Wait()
	started := pods[:0]
	for i, p := range pods {
		if errs[i] == nil {
			started = append(started, p)
		}
	}
	return started, errors.Join(errs...)
}

// startPod brings up a reserved pod; see AddPod.
func (m *Mesh) startPod(ctx context.Context, p *pod, opts PodOptions) (_ Pod, err error) {
	started := time.Now()
	svc := p.Service
	defer func() {
		if err != nil {
			cleanupCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if cerr := m.removePod(cleanupCtx, p, false); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()

	if err := m.createPodObject(ctx, p, opts.Labels); err != nil {
		return Pod{}, err
	}
	if err := m.syncSlice(ctx, svc); err != nil { // the endpoint appears, not ready
		return Pod{}, err
	}
	if err := m.startPodProcesses(ctx, p, opts.Env); err != nil {
		return Pod{}, err
	}
	if err := m.waitPodReady(ctx, p); err != nil {
		return Pod{}, err
	}
	if err := m.setPodReady(ctx, p, true); err != nil {
		return Pod{}, err
	}
	m.mu.Lock()
	p.ready = true
	m.mu.Unlock()
	if err := m.syncSlice(ctx, svc); err != nil {
		return Pod{}, err
	}
	m.updatePrometheusTargets()
	m.opts.Logf("localmesh: pod %s ready on %s after %s", p.Name, p.IP, time.Since(started).Round(time.Millisecond))
	return p.Pod, nil
}

// reservePod records a new pod with a name and a free address.
func (m *Mesh) reservePod(svc string, opts PodOptions) (*pod, error) {
	name, sa := opts.Name, opts.ServiceAccount
	if sa == "" {
		sa = svc
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, errors.New("localmesh: closed")
	}
	if _, ok := m.services[svc]; !ok {
		return nil, fmt.Errorf("localmesh: add pod: unknown service %s (AddService first)", svc)
	}
	if name == "" {
		for range 1000 {
			name = svc + "-" + strconv.Itoa(m.podSeq[svc])
			m.podSeq[svc]++
			if _, taken := m.pods[name]; !taken {
				break
			}
		}
	}
	if _, taken := m.pods[name]; taken {
		return nil, fmt.Errorf("localmesh: add pod: pod %s already exists", name)
	}
	ip, outIP, err := m.allocateIPLocked()
	if err != nil {
		return nil, err
	}
	p := &pod{Pod: Pod{Name: name, Namespace: m.opts.Namespace, Service: svc, IP: ip, OutboundIP: outIP, ServiceAccount: sa}}
	m.pods[name] = p
	return p, nil
}

// allocateIPLocked returns the next address IPPrefix+N that no pod uses and on which the
// pod ports are free, with its outbound address OutboundIPPrefix+N, whose port must be
// free too. Addresses are handed out round-robin, so a removed pod's address is not
// reused at once.
func (m *Mesh) allocateIPLocked() (ip, outIP string, err error) {
	used := map[string]bool{}
	for _, p := range m.pods {
		used[p.IP] = true
	}
	for range 253 {
		n := m.nextIP
		m.nextIP++
		if m.nextIP > 254 {
			m.nextIP = 2
		}
		ip := m.opts.IPPrefix + strconv.Itoa(n)
		outIP := m.opts.OutboundIPPrefix + strconv.Itoa(n)
		if !used[ip] && portsFree(ip, mesh.InboundPort, mesh.OutboundPort, mesh.AdminPort, mesh.AppPort) && portsFree(outIP, mesh.OutboundPort) {
			return ip, outIP, nil
		}
	}
	return "", "", fmt.Errorf("localmesh: no free address left in %s2-254", m.opts.IPPrefix)
}

// portsFree reports whether every port can be bound on ip right now.
func portsFree(ip string, ports ...int) bool {
	for _, port := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// createPodObject creates the Pod, scheduled on the fake node, and gives it a status as
// the kubelet would once the sandbox is up: Running, with its IP, not ready yet.
func (m *Mesh) createPodObject(ctx context.Context, p *pod, extraLabels map[string]string) error {
	labels := map[string]string{"app": p.Service}
	maps.Copy(labels, extraLabels)
	no := false
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                     nodeName,
			ServiceAccountName:           p.ServiceAccount,
			AutomountServiceAccountToken: &no,
			Containers:                   podContainers(),
		},
	}
	created, err := m.env.Client.CoreV1().Pods(p.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("localmesh: create pod %s: %w", p.Name, err)
	}
	m.mu.Lock()
	p.uid = created.UID
	m.mu.Unlock()
	return m.setPodReady(ctx, p, false)
}

// setPodReady writes the Pod's status: Running with its IP, Ready as given.
func (m *Mesh) setPodReady(ctx context.Context, p *pod, ready bool) error {
	pods := m.env.Client.CoreV1().Pods(p.Namespace)
	err := retryOnConflict(ctx, func() error {
		obj, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		readyStatus := corev1.ConditionFalse
		if ready {
			readyStatus = corev1.ConditionTrue
		}
		st := &obj.Status
		st.Phase = corev1.PodRunning
		st.HostIP = "127.0.0.1"
		st.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
		st.PodIP = p.IP
		st.PodIPs = []corev1.PodIP{{IP: p.IP}}
		if st.StartTime == nil {
			st.StartTime = &now
		}
		setCondition(st, corev1.PodScheduled, corev1.ConditionTrue, now)
		setCondition(st, corev1.PodInitialized, corev1.ConditionTrue, now)
		setCondition(st, corev1.ContainersReady, readyStatus, now)
		setCondition(st, corev1.PodReady, readyStatus, now)
		st.ContainerStatuses = nil
		for _, c := range obj.Spec.Containers {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name:    c.Name,
				Image:   c.Image,
				Ready:   ready,
				Started: &ready,
				State:   corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: *st.StartTime}},
			})
		}
		_, err = pods.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("localmesh: set pod %s ready=%t: %w", p.Name, ready, err)
	}
	return nil
}

func setCondition(st *corev1.PodStatus, typ corev1.PodConditionType, status corev1.ConditionStatus, now metav1.Time) {
	for i := range st.Conditions {
		if st.Conditions[i].Type == typ {
			if st.Conditions[i].Status != status {
				st.Conditions[i].Status = status
				st.Conditions[i].LastTransitionTime = now
			}
			return
		}
	}
	st.Conditions = append(st.Conditions, corev1.PodCondition{Type: typ, Status: status, LastTransitionTime: now})
}

// podDir returns the directory of a pod's bootstrap and logs.
func (m *Mesh) podDir(name string) string { return filepath.Join(m.opts.Dir, "pods", name) }

// EnvoyLog and AppLog return the paths of a pod's log files.
func (m *Mesh) EnvoyLog(pod string) string { return filepath.Join(m.podDir(pod), "envoy.log") }
func (m *Mesh) AppLog(pod string) string   { return filepath.Join(m.podDir(pod), "app.log") }

// BootstrapPath returns the path of a pod's Envoy bootstrap.
func (m *Mesh) BootstrapPath(pod string) string {
	return filepath.Join(m.podDir(pod), "bootstrap.yaml")
}

// startPodProcesses writes the bootstrap with `bearkong bootstrap` and starts the demo app
// and Envoy.
func (m *Mesh) startPodProcesses(ctx context.Context, p *pod, appEnv map[string]string) error {
	if err := os.MkdirAll(m.podDir(p.Name), 0o755); err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	env := []string{"NAME=" + p.Service, "LISTEN_ADDR=" + p.AppAddr()}
	for _, k := range slices.Sorted(maps.Keys(appEnv)) {
		env = append(env, k+"="+appEnv[k])
	}
	app, err := proc.Start(m.ctx, proc.Spec{
		Name:    "demo-app " + p.Name,
		Path:    m.opts.DemoAppBin,
		Env:     env,
		LogPath: m.AppLog(p.Name),
	})
	if err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	m.mu.Lock()
	p.app = app
	m.mu.Unlock()

	bootstrap := m.BootstrapPath(p.Name)
	bctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	args := []string{"bootstrap",
		"--pod-name", p.Name,
		"--pod-namespace", p.Namespace,
		// The Service the pod was started for names it in its sidecar's stats, as the
		// app label does in manifests/apps.
		"--workload", p.Service,
		"--listen-ip", p.IP,
		"--outbound-ip", p.OutboundIP,
		"--app-address", p.AppAddr(),
		"--admin-address", p.addr(mesh.AdminPort),
		"--xds-address", m.xdsAddressList(),
		"-o", bootstrap,
	}
	if m.opts.XDSProtocol != "" {
		args = append(args, "--xds-protocol", m.opts.XDSProtocol)
	}
	if name := m.xdsServerName(); name != "" && !m.opts.XDSInsecure {
		args = append(args, "--xds-server-name", name)
	}
	if m.opts.XDSInsecure {
		args = append(args, "--xds-insecure")
	} else {
		if err := m.writeToken(ctx, p.Name); err != nil {
			return err
		}
		args = append(args, "--xds-ca-file", m.CARootPath(), "--xds-token-file", m.TokenPath(p.Name))
	}
	cmd := exec.CommandContext(bctx, m.opts.BearkongBin, args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("localmesh: %s: %w\n%s", cmd, err, out)
	}

	envoy, err := proc.Start(m.ctx, proc.Spec{
		Name: "envoy " + p.Name,
		Path: m.opts.EnvoyBin,
		Args: []string{
			"-c", bootstrap,
			"--disable-hot-restart",
			"--concurrency", "1",
			"--log-level", m.opts.EnvoyLogLevel,
		},
		LogPath: m.EnvoyLog(p.Name),
	})
	if err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	m.mu.Lock()
	p.envoy = envoy
	m.mu.Unlock()
	return nil
}

// waitPodReady waits, within ReadyTimeout, for the app's /health, Envoy's /ready (server
// LIVE: initial xDS fetch done) and Envoy's inbound and outbound listeners.
func (m *Mesh) waitPodReady(ctx context.Context, p *pod) error {
	checks := []struct {
		what  string
		proc  *proc.Process
		check func(context.Context) error
	}{
		{"demo app", p.app, func(ctx context.Context) error { return m.httpOK(ctx, "http://"+p.AppAddr()+"/health") }},
		{"envoy", p.envoy, func(ctx context.Context) error { return m.httpOK(ctx, p.AdminURL()+"/ready") }},
		{"envoy listeners (is the pod served by the control plane?)", p.envoy, func(ctx context.Context) error {
			for _, addr := range []string{p.InboundAddr(), p.OutboundAddr()} {
				c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
				if err != nil {
					return err
				}
				c.Close()
			}
			return nil
		}},
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.ReadyTimeout)
	defer cancel()
	for _, c := range checks {
		if err := waitProcess(ctx, m.opts.ReadyTimeout, c.proc, c.check); err != nil {
			return fmt.Errorf("localmesh: pod %s: %s not ready: %w (logs: %s)", p.Name, c.what, err, c.proc.LogPath())
		}
	}
	return nil
}

// RemovePod removes a pod. Graceful removal plays a pod deletion in a cluster: the Pod gets
// a deletionTimestamp and turns not ready, its endpoint turns ready=false, serving=true,
// terminating=true, and the pod keeps serving for the drain period; then its processes
// stop and the Pod and its endpoint go. Otherwise the pod dies at once, as in a crash,
// then the Pod and its endpoint go.
func (m *Mesh) RemovePod(ctx context.Context, name string, graceful bool) error {
	m.mu.Lock()
	p, ok := m.pods[name]
	if ok && p.terminating {
		ok = false
	}
	if ok {
		p.terminating = graceful
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("localmesh: remove pod: unknown pod %s (or already terminating)", name)
	}
	return m.removePod(ctx, p, graceful)
}

func (m *Mesh) removePod(ctx context.Context, p *pod, graceful bool) error {
	pods := m.env.Client.CoreV1().Pods(p.Namespace)
	var errs []error
	if graceful {
		grace := int64((m.opts.DrainPeriod + time.Minute).Seconds())
		if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("localmesh: delete pod %s (graceful): %w", p.Name, err))
		}
		m.mu.Lock()
		p.ready = false
		p.terminating = true
		m.mu.Unlock()
		if err := m.setPodReady(ctx, p, false); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
		if err := m.syncSlice(ctx, p.Service); err != nil {
			errs = append(errs, err)
		}
		m.opts.Logf("localmesh: pod %s terminating, draining for %s", p.Name, m.opts.DrainPeriod)
		if err := sleep(ctx, m.opts.DrainPeriod); err != nil {
			errs = append(errs, fmt.Errorf("localmesh: drain pod %s: %w", p.Name, err))
		}
	}

	m.mu.Lock()
	ps := p.processes()
	m.mu.Unlock()
	if graceful {
		errs = append(errs, stopAll(ps))
	} else {
		for _, x := range ps {
			errs = append(errs, x.Kill())
		}
	}

	zero := int64(0)
	if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("localmesh: delete pod %s: %w", p.Name, err))
	}
	m.mu.Lock()
	if m.pods[p.Name] == p {
		delete(m.pods, p.Name)
	}
	_, svcExists := m.services[p.Service]
	m.mu.Unlock()
	if svcExists {
		if err := m.syncSlice(ctx, p.Service); err != nil {
			errs = append(errs, err)
		}
	}
	m.updatePrometheusTargets()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	m.opts.Logf("localmesh: pod %s removed", p.Name)
	return nil
}

// SignalEnvoy sends sig to the Envoy of the pod named pod: SIGSTOP pauses it as a proxy
// that stops reading its xDS stream, SIGCONT resumes it. A test that pauses an Envoy
// resumes it before the mesh is closed: a stopped process acts on SIGTERM only once
// continued, so Close would wait for the SIGKILL.
func (m *Mesh) SignalEnvoy(pod string, sig syscall.Signal) error {
	m.mu.Lock()
	p, ok := m.pods[pod]
	var envoy *proc.Process
	if ok {
		envoy = p.envoy
	}
	m.mu.Unlock()
	if envoy == nil {
		return fmt.Errorf("localmesh: signal: no Envoy for pod %s", pod)
	}
	return envoy.Signal(sig)
}

// Pods returns the mesh's pods, sorted by name.
func (m *Mesh) Pods() []Pod {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Pod, 0, len(m.pods))
	for _, p := range m.pods {
		out = append(out, p.Pod)
	}
	slices.SortFunc(out, func(a, b Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Pod returns the pod with the given name.
func (m *Mesh) Pod(name string) (Pod, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.pods[name]
	if !ok {
		return Pod{}, false
	}
	return p.Pod, true
}

// PodByIP returns the pod with the given address.
func (m *Mesh) PodByIP(ip string) (Pod, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, p := range m.pods {
		if p.IP == ip {
			return p.Pod, true
		}
	}
	return Pod{}, false
}

// PodsOf returns the pods of a service, sorted by name.
func (m *Mesh) PodsOf(svc string) []Pod {
	var out []Pod
	for _, p := range m.Pods() {
		if p.Service == svc {
			out = append(out, p)
		}
	}
	return out
}

// syncSlice writes the service's EndpointSlice from the current state: one endpoint per
// pod of the service, with its ready, serving and terminating conditions.
func (m *Mesh) syncSlice(ctx context.Context, svcName string) error {
	m.sliceMu.Lock()
	defer m.sliceMu.Unlock()

	m.mu.Lock()
	svc, ok := m.services[svcName]
	if !ok || svc.external {
		m.mu.Unlock()
		return nil
	}
	ports := endpointPorts(svc.ports)
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:      sliceName(svcName),
			Namespace: m.opts.Namespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svcName,
				discoveryv1.LabelManagedBy:   managedBy,
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Service", Name: svcName, UID: types.UID(svc.uid),
				Controller: ptr(true), BlockOwnerDeletion: ptr(true),
			}},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
		Endpoints:   []discoveryv1.Endpoint{},
	}
	if svc.slice != nil {
		slice.UID = svc.slice.UID
		slice.CreationTimestamp = svc.slice.CreationTimestamp
	}
	names := slices.Sorted(maps.Keys(m.pods))
	for _, n := range names {
		p := m.pods[n]
		if p.Service != svcName || p.uid == "" || len(ports) == 0 {
			continue
		}
		// As the endpoint controller does: serving follows readiness, except that a
		// terminating pod keeps serving while it drains.
		serving := p.ready || p.terminating
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses: []string{p.IP},
			Conditions: discoveryv1.EndpointConditions{
				Ready:       ptr(p.ready && !p.terminating),
				Serving:     ptr(serving),
				Terminating: ptr(p.terminating),
			},
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.uid},
			NodeName:  ptr(nodeName),
		})
	}
	m.mu.Unlock()

	if err := m.env.StoreEndpointSlice(ctx, slice); err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	m.mu.Lock()
	if s, ok := m.services[svcName]; ok {
		s.slice = slice
	}
	m.mu.Unlock()
	return nil
}

// podContainers are the containers every pod declares: the app and its sidecar, with
// named ports that a Service's targetPort may refer to.
func podContainers() []corev1.Container {
	return []corev1.Container{
		{
			Name:  "app",
			Image: "localmesh.invalid/demo-app:dev",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: mesh.AppPort, Protocol: corev1.ProtocolTCP}},
		},
		{
			Name:  "envoy",
			Image: "localmesh.invalid/envoy:dev",
			Ports: []corev1.ContainerPort{
				{Name: "inbound", ContainerPort: mesh.InboundPort, Protocol: corev1.ProtocolTCP},
				{Name: "outbound", ContainerPort: mesh.OutboundPort, Protocol: corev1.ProtocolTCP},
				{Name: "admin", ContainerPort: mesh.AdminPort, Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// endpointPorts resolves the Service's ports against the pods' containers, as the
// endpoint controller does: a numeric targetPort is taken as is (0 means the port), a
// named one is looked up among the container ports, and a port that does not resolve is
// left out.
func endpointPorts(svcPorts []corev1.ServicePort) []discoveryv1.EndpointPort {
	var out []discoveryv1.EndpointPort
	for _, sp := range svcPorts {
		var port int32
		switch {
		case sp.TargetPort.Type == intstr.String:
			for _, c := range podContainers() {
				for _, cp := range c.Ports {
					if cp.Name == sp.TargetPort.StrVal && cp.Protocol == sp.Protocol {
						port = cp.ContainerPort
					}
				}
			}
		case sp.TargetPort.IntVal == 0:
			port = sp.Port
		default:
			port = sp.TargetPort.IntVal
		}
		if port == 0 {
			continue
		}
		// The endpoint controller copies appProtocol too.
		out = append(out, discoveryv1.EndpointPort{Name: ptr(sp.Name), Port: ptr(port), Protocol: ptr(sp.Protocol), AppProtocol: sp.AppProtocol})
	}
	return out
}

func ptr[T any](v T) *T { return &v }

func intOrString(port int32) intstr.IntOrString { return intstr.FromInt32(port) }

// retryOnConflict retries fn on update conflicts, with client-go's default backoff.
func retryOnConflict(ctx context.Context, fn func() error) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := ctx.Err(); err != nil {
			return err
		}
		return fn()
	})
}

// sleep waits for d, or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitProcess is kubeenv's bounded wait, stopping early when the process exits.
func waitProcess(ctx context.Context, timeout time.Duration, p *proc.Process, check func(context.Context) error) error {
	return Eventually(ctx, timeout, func(ctx context.Context) error {
		if exited, werr := p.Exited(); exited {
			return permanent(fmt.Errorf("%s exited (%v); last log lines:\n%s", p.Name(), werr, kubeenv.LogTail(p.LogPath(), 2048)))
		}
		return check(ctx)
	})
}
