// Package localmesh runs a service mesh of local processes against a real kube-apiserver
// (internal/kubeenv): it plays the kubelet and the endpoint controller for "pods" that are
// processes on loopback addresses 127.0.1.N.
//
// Each pod is a Pod object whose status the harness sets (Running, Ready, podIP), an
// instance of cmd/demo-app on IP:9090, and an Envoy whose bootstrap comes from
// `bearkong bootstrap`, with its listeners on IP:8000 (inbound) and IP:8001 (outbound) and
// its admin on IP:8081. Each Service gets one EndpointSlice, "<service>-local", kept true
// as pods come, become ready, terminate and go. The control plane (`bearkong cp`) and
// Prometheus run as child processes too.
//
// Every process runs in its own process group and is stopped by Close. Every wait is
// bounded.
package localmesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/kubeenv/proc"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// Defaults for Options.
const (
	DefaultIPPrefix     = "127.0.1."
	DefaultDrainPeriod  = 2 * time.Second
	DefaultReadyTimeout = 45 * time.Second
)

// Options configures New.
type Options struct {
	// Env is the running Kubernetes API. Required.
	Env *kubeenv.Env
	// Dir holds logs, bootstraps and Prometheus's configuration and data. Required.
	Dir string
	// BearkongBin, EnvoyBin and DemoAppBin are the binaries to run. Required.
	BearkongBin string
	EnvoyBin    string
	DemoAppBin  string
	// Namespace of the Services and Pods. Default "default".
	Namespace string
	// IPPrefix is the first three octets of the pods' addresses, with the final dot.
	// Default DefaultIPPrefix; pods get IPPrefix+N for N from 2 to 254.
	IPPrefix string
	// OutboundIPPrefix is the same for the pods' outbound listeners: the pod at
	// IPPrefix+N has its outbound listener on OutboundIPPrefix+N, its own loopback
	// address, as 127.0.0.1 is in a real pod. Default: IPPrefix with its third octet
	// plus one (127.0.1. gives 127.0.2.).
	OutboundIPPrefix string
	// XDSAddr and HTTPAddr are the listen addresses of the control plane (of its replica
	// 0). Default: free ports on 127.0.0.1, picked once so that a restarted control plane
	// keeps them.
	XDSAddr  string
	HTTPAddr string
	// ControlPlaneReplicas is how many `bearkong cp` processes run. Default 1. Replica 0
	// listens on XDSAddr and HTTPAddr; every other one on free ports of 127.0.0.1, picked
	// once. Each replica serves xDS and has its own log, its own --debug-addr (a free
	// port) and its own --leader-election-identity (ReplicaIdentity); each Envoy's
	// bootstrap lists every replica's xDS address, as a Deployment's replicas would sit
	// behind one Service.
	ControlPlaneReplicas int
	// ControlPlaneArgs are extra arguments for `bearkong cp`, every replica.
	ControlPlaneArgs []string
	// ControlPlaneReplicaArgs, when set, returns more arguments for replica i, after
	// ControlPlaneArgs (say, --log-format json on one of them).
	ControlPlaneReplicaArgs func(replica int) []string
	// ControlPlaneKubeconfig is the kubeconfig `bearkong cp` runs with. Default: the
	// Env's admin kubeconfig. Tests set it to a ServiceAccount's token to prove that the
	// control plane's RBAC (manifests/bearkong) is enough.
	ControlPlaneKubeconfig string
	// DrainPeriod is how long a gracefully removed pod keeps serving while terminating.
	// Default DefaultDrainPeriod.
	DrainPeriod time.Duration
	// ReadyTimeout bounds each wait for a process or pod to become ready. Default
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// XDSInsecure runs the xDS channel in plaintext without tokens (`bearkong cp
	// --xds-insecure`), as a development cluster might. By default the control plane
	// serves TLS from its CA and every Envoy proves its pod with a bound token.
	XDSInsecure bool
	// XDSProtocol is the xDS protocol of every sidecar's ADS stream, as `bearkong
	// bootstrap --xds-protocol` takes it: "sotw" or "delta"; "" leaves the bootstrap's
	// default (translate.DefaultXDSProtocol).
	XDSProtocol string
	// EnvoyLogLevel is Envoy's --log-level. Default "warn".
	EnvoyLogLevel string
	// NoAdmissionPolicy leaves out the admission policy that refuses invalid mesh-*
	// annotations (InstallAdmissionPolicy), which StartControlPlane installs by default.
	NoAdmissionPolicy bool
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Mesh is a running local mesh.
type Mesh struct {
	env  *kubeenv.Env
	opts Options
	// ctx bounds the life of every process the mesh starts.
	ctx  context.Context
	http *http.Client

	// sliceMu serialises building and writing EndpointSlices, so that the last write
	// always reflects the latest state.
	sliceMu sync.Mutex

	mu       sync.Mutex
	services map[string]*service
	pods     map[string]*pod
	nextIP   int            // last octet to try next
	podSeq   map[string]int // next pod index per service
	cps      []*replica     // one per control-plane replica, addresses fixed at New
	prom     *prometheus
	closed   bool
}

// service is the harness's record of a Service it created.
type service struct {
	name string
	uid  string
	// ports are the Service's ports as last written; the slice's ports follow them.
	ports []corev1.ServicePort
	slice *discoveryv1.EndpointSlice // last written; keeps UID and creation time
	// external marks an ExternalName Service: it has no EndpointSlice.
	external bool
}

// New checks the options and prepares a mesh; it starts nothing. Processes started later
// live until Close or until ctx is cancelled.
func New(ctx context.Context, opts Options) (*Mesh, error) {
	if opts.Env == nil {
		return nil, errors.New("localmesh: Options.Env is required")
	}
	if opts.Dir == "" {
		return nil, errors.New("localmesh: Options.Dir is required")
	}
	for flag, path := range map[string]string{"BearkongBin": opts.BearkongBin, "EnvoyBin": opts.EnvoyBin, "DemoAppBin": opts.DemoAppBin} {
		if path == "" {
			return nil, fmt.Errorf("localmesh: Options.%s is required", flag)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("localmesh: %s: %w", flag, err)
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}
	opts.Dir = dir
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}
	if opts.Namespace == "" {
		opts.Namespace = metav1.NamespaceDefault
	}
	if opts.IPPrefix == "" {
		opts.IPPrefix = DefaultIPPrefix
	}
	if ip := net.ParseIP(opts.IPPrefix + "2"); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return nil, fmt.Errorf("localmesh: IPPrefix %q does not give IPv4 loopback addresses", opts.IPPrefix)
	}
	if opts.OutboundIPPrefix == "" {
		ip := net.ParseIP(opts.IPPrefix + "2").To4()
		opts.OutboundIPPrefix = fmt.Sprintf("%d.%d.%d.", ip[0], ip[1], ip[2]+1)
	}
	if ip := net.ParseIP(opts.OutboundIPPrefix + "2"); ip == nil || !ip.IsLoopback() || ip.To4() == nil || opts.OutboundIPPrefix == opts.IPPrefix {
		return nil, fmt.Errorf("localmesh: OutboundIPPrefix %q does not give IPv4 loopback addresses apart from IPPrefix %q", opts.OutboundIPPrefix, opts.IPPrefix)
	}
	if opts.DrainPeriod <= 0 {
		opts.DrainPeriod = DefaultDrainPeriod
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	if opts.XDSProtocol != "" && !slices.Contains(translate.XDSProtocols, opts.XDSProtocol) {
		return nil, fmt.Errorf("localmesh: XDSProtocol %q is not one of: %s", opts.XDSProtocol, strings.Join(translate.XDSProtocols, ", "))
	}
	if opts.EnvoyLogLevel == "" {
		opts.EnvoyLogLevel = "warn"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.ControlPlaneReplicas <= 0 {
		opts.ControlPlaneReplicas = 1
	}
	if host, _, err := net.SplitHostPort(opts.XDSAddr); opts.ControlPlaneReplicas > 1 && opts.XDSAddr != "" && (err != nil || host != "127.0.0.1") {
		// The other replicas listen on 127.0.0.1, and the Envoys check every replica's
		// certificate for one name.
		return nil, fmt.Errorf("localmesh: with %d control-plane replicas, XDSAddr %q must be on 127.0.0.1", opts.ControlPlaneReplicas, opts.XDSAddr)
	}
	cps, err := replicaAddrs(&opts)
	if err != nil {
		return nil, err
	}
	return &Mesh{
		cps:  cps,
		env:  opts.Env,
		opts: opts,
		ctx:  ctx,
		http: &http.Client{
			Timeout: 10 * time.Second,
			// No keep-alive: no idle connection outlives a request, so stopping an Envoy
			// or the control plane never waits on one, and every request takes a fresh
			// route decision.
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		},
		services: map[string]*service{},
		pods:     map[string]*pod{},
		podSeq:   map[string]int{},
		nextIP:   2,
	}, nil
}

// Namespace returns the namespace of the mesh's Services and Pods.
func (m *Mesh) Namespace() string { return m.opts.Namespace }

// DrainPeriod returns how long a gracefully removed pod keeps serving (Options.DrainPeriod).
func (m *Mesh) DrainPeriod() time.Duration { return m.opts.DrainPeriod }

// ControlPlaneLog returns the path of the log file of the control plane (of its replica 0).
func (m *Mesh) ControlPlaneLog() string { return m.ControlPlaneReplicaLog(0) }

// StartControlPlane starts every control-plane replica that is not running, in parallel,
// and waits for each one's /readyz. It can be called again after StopControlPlane or
// KillControlPlane; the replicas keep their addresses.
func (m *Mesh) StartControlPlane(ctx context.Context) error {
	if err := m.ensureControlPlaneNamespace(ctx); err != nil {
		return err
	}
	if !m.opts.NoAdmissionPolicy {
		if err := InstallAdmissionPolicy(ctx, m.env); err != nil {
			return err
		}
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errors.New("localmesh: closed")
	}
	var idle []int
	for i, r := range m.cps {
		if r.proc == nil {
			idle = append(idle, i)
		}
	}
	m.mu.Unlock()
	if len(idle) == 0 {
		return errors.New("localmesh: control plane already running")
	}
	errs := make([]error, len(idle))
	var wg sync.WaitGroup
	for k, i := range idle {
		wg.Go(func() { errs[k] = m.StartControlPlaneReplica(ctx, i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close stops every process the mesh started (pods, control plane, Prometheus) and waits
// for them to exit. It leaves the Kubernetes objects alone; they go with the Env.
func (m *Mesh) Close() error {
	m.mu.Lock()
	m.closed = true
	var ps []*proc.Process
	for _, p := range m.pods {
		ps = append(ps, p.processes()...)
	}
	for _, r := range m.cps {
		if r.proc != nil {
			ps = append(ps, r.proc)
			r.proc = nil
		}
	}
	if m.prom != nil {
		ps = append(ps, m.prom.proc)
		m.prom = nil
	}
	m.mu.Unlock()
	return stopAll(ps)
}

// stopAll stops the processes in parallel and waits for all of them.
func stopAll(ps []*proc.Process) error {
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() { errs[i] = p.Stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ServiceOptions configures AddService.
type ServiceOptions struct {
	// TargetPort is the Service port's targetPort. Default 9090 (mesh.AppPort).
	TargetPort int32
	// PortName is the Service port's name. Default "http". Its prefix declares the
	// protocol when AppProtocol is empty ("grpc-api" is gRPC, "http2" HTTP/2).
	PortName string
	// AppProtocol is the Service port's appProtocol ("grpc", "kubernetes.io/h2c",
	// "kubernetes.io/ws", ...); empty leaves it unset.
	AppProtocol string
	// Labels are added to the Service's labels.
	Labels map[string]string
	// Annotations are the Service's annotations, such as mesh-timeout.
	Annotations map[string]string
	// NotMeshed leaves out the meshed=enabled label.
	NotMeshed bool
	// TargetPortName, when set, is the targetPort as a name, resolved against the pods'
	// container ports (podContainers: "http" is the app's 9090, "inbound" the sidecar's
	// 8000). It overrides TargetPort.
	TargetPortName string
	// Headless gives the Service clusterIP None.
	Headless bool
	// ExternalName, when set, makes the Service of type ExternalName, an alias of that
	// host: no selector, no cluster IP and, as in a cluster, no EndpointSlice.
	ExternalName string
}

// AddService creates a Service selecting app=<name>, port 9090 to opts.TargetPort,
// labelled meshed=enabled, and its (empty) EndpointSlice.
func (m *Mesh) AddService(ctx context.Context, name string, opts ServiceOptions) error {
	if opts.TargetPort == 0 {
		opts.TargetPort = mesh.AppPort
	}
	if opts.PortName == "" {
		opts.PortName = "http"
	}
	labels := map[string]string{"app": name}
	if !opts.NotMeshed {
		labels[mesh.MeshedLabel] = mesh.MeshedValue
	}
	for k, v := range opts.Labels {
		labels[k] = v
	}
	m.mu.Lock()
	if _, ok := m.services[name]; ok {
		m.mu.Unlock()
		return fmt.Errorf("localmesh: service %s already exists", name)
	}
	m.mu.Unlock()

	targetPort := intOrString(opts.TargetPort)
	if opts.TargetPortName != "" {
		targetPort = intstr.FromString(opts.TargetPortName)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: m.opts.Namespace, Labels: labels, Annotations: opts.Annotations},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{
				Name:       opts.PortName,
				Port:       mesh.AppPort,
				TargetPort: targetPort,
				Protocol:   corev1.ProtocolTCP,
			}},
		},
	}
	if opts.Headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
	}
	if opts.ExternalName != "" {
		svc.Spec.Type = corev1.ServiceTypeExternalName
		svc.Spec.ExternalName = opts.ExternalName
		svc.Spec.Selector = nil
	}
	if opts.AppProtocol != "" {
		svc.Spec.Ports[0].AppProtocol = &opts.AppProtocol
	}
	if opts.ExternalName == "" {
		if err := m.ensureServiceAccount(ctx, name); err != nil {
			return err
		}
	}
	created, err := m.env.Client.CoreV1().Services(m.opts.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("localmesh: create service %s: %w", name, err)
	}
	m.mu.Lock()
	m.services[name] = &service{name: name, uid: string(created.UID), ports: created.Spec.Ports, external: opts.ExternalName != ""}
	m.mu.Unlock()
	if err := m.syncSlice(ctx, name); err != nil {
		return err
	}
	m.opts.Logf("localmesh: service %s created (port %d -> %s)", name, mesh.AppPort, targetPort.String())
	return nil
}

// DeleteService deletes the Service and its EndpointSlice. Its pods keep running, as they
// would in a cluster.
func (m *Mesh) DeleteService(ctx context.Context, name string) error {
	m.mu.Lock()
	_, ok := m.services[name]
	delete(m.services, name)
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("localmesh: unknown service %s", name)
	}
	if err := m.env.Client.CoreV1().Services(m.opts.Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("localmesh: delete service %s: %w", name, err)
	}
	m.sliceMu.Lock()
	defer m.sliceMu.Unlock()
	if err := m.env.DeleteStoredEndpointSlice(ctx, m.opts.Namespace, sliceName(name)); err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	return nil
}

// UpdateService applies mutate to the current Service and writes it back, retrying on
// conflicts. When the ports change, the EndpointSlice's ports follow, as the endpoint
// controller would make them; the selector must stay app=<name>.
func (m *Mesh) UpdateService(ctx context.Context, name string, mutate func(*corev1.Service)) error {
	var updated *corev1.Service
	err := retryOnConflict(ctx, func() error {
		svc, err := m.env.Client.CoreV1().Services(m.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(svc)
		updated, err = m.env.Client.CoreV1().Services(m.opts.Namespace).Update(ctx, svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("localmesh: update service %s: %w", name, err)
	}
	m.mu.Lock()
	s, ok := m.services[name]
	changed := ok && !equality.Semantic.DeepEqual(s.ports, updated.Spec.Ports)
	if changed {
		s.ports = updated.Spec.Ports
	}
	m.mu.Unlock()
	if changed {
		return m.syncSlice(ctx, name)
	}
	return nil
}

// SetServiceLabels replaces the Service's labels with labels (so leaving out "meshed"
// takes the Service out of the mesh).
func (m *Mesh) SetServiceLabels(ctx context.Context, name string, labels map[string]string) error {
	return m.UpdateService(ctx, name, func(s *corev1.Service) { s.Labels = labels })
}

// SetServiceAnnotations replaces the Service's annotations with annotations.
func (m *Mesh) SetServiceAnnotations(ctx context.Context, name string, annotations map[string]string) error {
	return m.UpdateService(ctx, name, func(s *corev1.Service) { s.Annotations = annotations })
}

// Services returns the names of the Services the mesh created, sorted.
func (m *Mesh) Services() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	names := make([]string, 0, len(m.services))
	for n := range m.services {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func sliceName(svc string) string { return svc + "-local" }
