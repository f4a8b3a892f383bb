package localmesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/kubeenv/proc"
)

// LeaseName is the coordination.k8s.io Lease through which the control plane's replicas
// elect the one that writes to the API (`bearkong cp --leader-election-name`, default). It
// lives in the control plane's namespace, the CA Secret's.
const LeaseName = "bearkong"

// ReplicaIdentity is replica i's --leader-election-identity, and so the Lease's
// holderIdentity while it leads. It is stable across restarts, as a StatefulSet's pod
// name would be: a replica restarted while the Lease still names it takes it back at once.
func ReplicaIdentity(i int) string { return "replica-" + strconv.Itoa(i) }

// replica is one `bearkong cp` of the mesh. Its addresses are picked once, at New, so
// that a restarted replica keeps them and the Envoys' bootstraps stay true. proc is
// guarded by Mesh.mu.
type replica struct {
	xdsAddr, httpAddr, debugAddr string
	proc                         *proc.Process // nil while stopped
}

// replicaAddrs picks every replica's addresses: free ports on 127.0.0.1, except the
// first replica's xDS and HTTP addresses when Options give them.
func replicaAddrs(opts *Options) ([]*replica, error) {
	ports, err := kubeenv.FreePorts(3 * opts.ControlPlaneReplicas)
	if err != nil {
		return nil, fmt.Errorf("localmesh: %w", err)
	}
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	cps := make([]*replica, opts.ControlPlaneReplicas)
	for i := range cps {
		cps[i] = &replica{xdsAddr: addr(3 * i), httpAddr: addr(3*i + 1), debugAddr: addr(3*i + 2)}
	}
	if opts.XDSAddr == "" {
		opts.XDSAddr = cps[0].xdsAddr
	}
	if opts.HTTPAddr == "" {
		opts.HTTPAddr = cps[0].httpAddr
	}
	cps[0].xdsAddr, cps[0].httpAddr = opts.XDSAddr, opts.HTTPAddr
	return cps, nil
}

// ControlPlaneReplicas returns how many control-plane replicas the mesh runs.
func (m *Mesh) ControlPlaneReplicas() int { return len(m.cps) }

// XDSAddr returns the xDS address of the control plane's replica 0.
func (m *Mesh) XDSAddr() string { return m.opts.XDSAddr }

// XDSAddrs returns every replica's xDS address, in replica order: what each Envoy's
// bootstrap lists.
func (m *Mesh) XDSAddrs() []string {
	out := make([]string, len(m.cps))
	for i, r := range m.cps {
		out[i] = r.xdsAddr
	}
	return out
}

// ControlPlaneURL returns the base URL of the HTTP server (metrics, debug, health) of the
// control plane's replica 0.
func (m *Mesh) ControlPlaneURL() string { return "http://" + m.opts.HTTPAddr }

// ControlPlaneURLs returns the base URL of every replica's HTTP server, in replica order.
func (m *Mesh) ControlPlaneURLs() []string {
	out := make([]string, len(m.cps))
	for i, r := range m.cps {
		out[i] = "http://" + r.httpAddr
	}
	return out
}

// DebugURL returns the base URL of replica i's --debug-addr listener (net/http/pprof
// under /debug/pprof/).
func (m *Mesh) DebugURL(i int) string { return "http://" + m.cps[i].debugAddr }

// ControlPlaneReplicaLog returns the path of replica i's log file: bearkong-cp.log when
// the mesh runs one replica, as it always did, else bearkong-cp-<i>.log.
func (m *Mesh) ControlPlaneReplicaLog(i int) string {
	name := "bearkong-cp.log"
	if len(m.cps) > 1 {
		name = "bearkong-cp-" + strconv.Itoa(i) + ".log"
	}
	return filepath.Join(m.opts.Dir, "logs", name)
}

// StartControlPlaneReplica starts replica i and waits for its /readyz.
func (m *Mesh) StartControlPlaneReplica(ctx context.Context, i int) error {
	if i < 0 || i >= len(m.cps) {
		return fmt.Errorf("localmesh: no control-plane replica %d (the mesh runs %d)", i, len(m.cps))
	}
	if err := m.ensureControlPlaneNamespace(ctx); err != nil {
		return err
	}
	r := m.cps[i]
	kubeconfig := m.opts.ControlPlaneKubeconfig
	if kubeconfig == "" {
		kubeconfig = m.env.Kubeconfig
	}
	args := []string{"cp",
		"--kubeconfig", kubeconfig,
		"--xds-addr", r.xdsAddr,
		"--http-addr", r.httpAddr,
	}
	// Each replica needs a debug listener and an identity of its own: the defaults
	// (127.0.0.1:6060, the hostname) are one per host.
	args = append(args, "--debug-addr", r.debugAddr, "--leader-election-identity", ReplicaIdentity(i))
	if m.opts.XDSInsecure {
		args = append(args, "--xds-insecure")
	}
	args = append(args, m.opts.ControlPlaneArgs...)
	if m.opts.ControlPlaneReplicaArgs != nil {
		args = append(args, m.opts.ControlPlaneReplicaArgs(i)...)
	}
	name := "bearkong cp"
	if len(m.cps) > 1 {
		name += " " + strconv.Itoa(i)
	}

	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errors.New("localmesh: closed")
	}
	if r.proc != nil {
		m.mu.Unlock()
		return fmt.Errorf("localmesh: %s already running", name)
	}
	p, err := proc.Start(m.ctx, proc.Spec{
		Name:    name,
		Path:    m.opts.BearkongBin,
		Args:    args,
		LogPath: m.ControlPlaneReplicaLog(i),
		Grace:   10 * time.Second,
	})
	if err != nil {
		m.mu.Unlock()
		return fmt.Errorf("localmesh: %w", err)
	}
	r.proc = p
	m.mu.Unlock()

	started := time.Now()
	if err := waitProcess(ctx, m.opts.ReadyTimeout, p, func(ctx context.Context) error {
		return m.httpOK(ctx, "http://"+r.httpAddr+"/readyz")
	}); err != nil {
		return fmt.Errorf("localmesh: %s not ready: %w", name, err)
	}
	if !m.opts.XDSInsecure {
		if err := m.writeCARoot(ctx); err != nil {
			return err
		}
	}
	m.opts.Logf("localmesh: %s ready after %s (xDS %s, HTTP %s)", name, time.Since(started).Round(time.Millisecond), r.xdsAddr, r.httpAddr)
	return nil
}

// StopControlPlane stops every replica (SIGTERM, so each releases the Lease if it holds
// it) and waits for them to exit.
func (m *Mesh) StopControlPlane() error {
	var ps []*proc.Process
	m.mu.Lock()
	for _, r := range m.cps {
		if r.proc != nil {
			ps = append(ps, r.proc)
			r.proc = nil
		}
	}
	m.mu.Unlock()
	if err := stopAll(ps); err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	return nil
}

// StopControlPlaneReplica stops replica i as StopControlPlane does.
func (m *Mesh) StopControlPlaneReplica(i int) error {
	p, err := m.takeReplica(i)
	if err != nil || p == nil {
		return err
	}
	if err := p.Stop(); err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	return nil
}

// KillControlPlane sends SIGKILL to replica i, as a crash or an OOM kill would, and waits
// for it to exit: it releases nothing, and its Lease, if it holds it, runs out.
func (m *Mesh) KillControlPlane(i int) error {
	p, err := m.takeReplica(i)
	if err != nil {
		return err
	}
	if p == nil {
		return fmt.Errorf("localmesh: control-plane replica %d is not running", i)
	}
	if err := p.Kill(); err != nil {
		return fmt.Errorf("localmesh: %w", err)
	}
	return nil
}

// takeReplica forgets replica i's process and returns it (nil when it was not running).
func (m *Mesh) takeReplica(i int) (*proc.Process, error) {
	if i < 0 || i >= len(m.cps) {
		return nil, fmt.Errorf("localmesh: no control-plane replica %d (the mesh runs %d)", i, len(m.cps))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.cps[i].proc
	m.cps[i].proc = nil
	return p, nil
}

// ControlPlaneRunning reports whether replica i runs.
func (m *Mesh) ControlPlaneRunning(i int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return i >= 0 && i < len(m.cps) && m.cps[i].proc != nil
}

// ControlPlanePid returns the process id of replica i, or 0 when it is not running.
func (m *Mesh) ControlPlanePid(i int) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if i < 0 || i >= len(m.cps) || m.cps[i].proc == nil {
		return 0
	}
	return m.cps[i].proc.Pid()
}

// LeaderReplica returns the replica that holds the Lease according to the API, or -1 and
// the holder's identity when the Lease names no replica of this mesh (no holder yet, or
// one released by a replica that stopped).
func (m *Mesh) LeaderReplica(ctx context.Context) (int, string, error) {
	ns, _ := caSecret()
	l, err := m.env.Client.CoordinationV1().Leases(ns).Get(ctx, LeaseName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return -1, "", nil
	}
	if err != nil {
		return -1, "", fmt.Errorf("localmesh: read Lease %s/%s: %w", ns, LeaseName, err)
	}
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	for i := range m.cps {
		if holder == ReplicaIdentity(i) {
			return i, holder, nil
		}
	}
	return -1, holder, nil
}

// xdsAddressList is the bootstraps' --xds-address: every replica's xDS address, comma
// separated.
func (m *Mesh) xdsAddressList() string { return strings.Join(m.XDSAddrs(), ",") }

// xdsServerName is the name every replica's xDS certificate holds and the Envoys check:
// the replicas' common host. One replica's bootstrap needs none (the host of its
// --xds-address is the default).
func (m *Mesh) xdsServerName() string {
	if len(m.cps) == 1 {
		return ""
	}
	host, _, err := net.SplitHostPort(m.cps[0].xdsAddr)
	if err != nil {
		return ""
	}
	return host
}
