// Package kubeenv runs a real etcd and kube-apiserver on 127.0.0.1 for end-to-end tests and
// the local mesh (tier 3 in DESIGN.md).
//
// The binaries come from scripts/install-kube.sh (.cache/bin). Start generates a CA, a
// serving certificate, a service-account key pair and an admin token under Options.Dir,
// starts both servers on free ports, waits for the API server's /readyz and writes an admin
// kubeconfig. RBAC is on; the admin token is in system:masters, which bypasses it, so tests
// can still prove least privilege with other identities.
//
// Nothing else of a cluster runs: no controller-manager, no scheduler, no kubelet. Start
// creates the "default" ServiceAccount itself, since no controller would.
package kubeenv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/bearkong/bearkong/internal/kubeenv/proc"
)

// Defaults for Options.
const (
	DefaultReadyTimeout = 90 * time.Second
	// DefaultServiceCIDR is the Service cluster IP range; it is never routed anywhere.
	DefaultServiceCIDR = "10.96.0.0/16"
)

// Options configures Start.
type Options struct {
	// Dir holds the certificates, the kubeconfig, etcd's data and the logs. Required. An
	// empty directory gives a fresh cluster; a Dir used before keeps its data and keys.
	Dir string
	// BinDir holds etcd and kube-apiserver. Default: <repo>/.cache/bin (see BinDir).
	BinDir string
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
	// ReadyTimeout bounds each wait for a server to become ready. Default
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// ServiceCIDR is the Service cluster IP range. Default DefaultServiceCIDR.
	ServiceCIDR string
}

// Env is a running etcd and kube-apiserver.
type Env struct {
	// Kubeconfig is the path of an admin kubeconfig (token in system:masters).
	Kubeconfig string
	// RESTConfig and Client are admin clients.
	RESTConfig *rest.Config
	Client     kubernetes.Interface
	// Host is the API server's URL, https://127.0.0.1:<port>.
	Host string
	// EtcdURL is etcd's client URL, http://127.0.0.1:<port>.
	EtcdURL string
	// Dir is Options.Dir.
	Dir string

	ctx        context.Context
	opts       Options
	pki        *pki
	etcd       *proc.Process
	apiArgs    []string
	readyCheck *http.Client

	mu        sync.Mutex
	apiserver *proc.Process // nil while stopped
	stopped   bool
}

// Start starts etcd and kube-apiserver and waits until the API server is ready. The
// processes are stopped by Env.Stop, or when ctx is cancelled.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	if opts.Dir == "" {
		return nil, errors.New("kubeenv: Options.Dir is required")
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = DefaultReadyTimeout
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = DefaultServiceCIDR
	}
	if opts.BinDir == "" {
		if opts.BinDir, err = BinDir(); err != nil {
			return nil, fmt.Errorf("kubeenv: %w", err)
		}
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("kubeenv: %w", err)
	}
	opts.Dir = dir
	etcdBin := filepath.Join(opts.BinDir, "etcd")
	apiBin := filepath.Join(opts.BinDir, "kube-apiserver")
	for _, b := range []string{etcdBin, apiBin} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("kubeenv: %w (run scripts/install-kube.sh, or make install)", err)
		}
	}

	p, err := writePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, fmt.Errorf("kubeenv: %w", err)
	}
	ports, err := FreePorts(3)
	if err != nil {
		return nil, fmt.Errorf("kubeenv: %w", err)
	}
	etcdPort, peerPort, apiPort := ports[0], ports[1], ports[2]

	e := &Env{
		Dir:     dir,
		Host:    "https://127.0.0.1:" + strconv.Itoa(apiPort),
		EtcdURL: "http://127.0.0.1:" + strconv.Itoa(etcdPort),
		ctx:     ctx,
		opts:    opts,
		pki:     p,
	}
	defer func() {
		if err != nil {
			_ = e.Stop()
		}
	}()

	started := time.Now()
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	e.etcd, err = proc.Start(ctx, proc.Spec{
		Name: "etcd",
		Path: etcdBin,
		Args: []string{
			"--name=kubeenv",
			"--data-dir=" + filepath.Join(dir, "etcd"),
			"--listen-client-urls=" + e.EtcdURL,
			"--advertise-client-urls=" + e.EtcdURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubeenv=" + peerURL,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync", // test data: durability is not worth the latency
			"--log-level=warn",
		},
		LogPath: filepath.Join(dir, "logs", "etcd.log"),
	})
	if err != nil {
		return nil, fmt.Errorf("kubeenv: %w", err)
	}
	etcdHealth := &http.Client{Timeout: 2 * time.Second}
	if err := waitFor(ctx, opts.ReadyTimeout, e.etcd, func(ctx context.Context) error {
		return httpOK(ctx, etcdHealth, e.EtcdURL+"/health", "")
	}); err != nil {
		return nil, fmt.Errorf("kubeenv: etcd not ready: %w", err)
	}
	opts.Logf("kubeenv: etcd ready at %s after %s", e.EtcdURL, time.Since(started).Round(time.Millisecond))

	e.apiArgs = []string{
		"--etcd-servers=" + e.EtcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(dir, "pki"),
		"--tls-cert-file=" + p.serverCert,
		"--tls-private-key-file=" + p.serverKey,
		"--client-ca-file=" + p.caCert,
		"--token-auth-file=" + p.tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.saPublic,
		"--service-account-signing-key-file=" + p.saPrivate,
		"--service-cluster-ip-range=" + opts.ServiceCIDR,
		// The "kubernetes" Service's endpoint would be 127.0.0.1, which EndpointSlice
		// validation rejects; nothing here needs it.
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.caPEM) {
		return nil, errors.New("kubeenv: cannot parse the generated CA")
	}
	e.readyCheck = &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true},
	}
	apiStarted := time.Now()
	if err := e.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	opts.Logf("kubeenv: kube-apiserver ready at %s after %s", e.Host, time.Since(apiStarted).Round(time.Millisecond))

	e.RESTConfig = &rest.Config{
		Host:            e.Host,
		BearerToken:     p.adminToken,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM},
		QPS:             100,
		Burst:           200,
		Timeout:         30 * time.Second,
	}
	if e.Client, err = kubernetes.NewForConfig(e.RESTConfig); err != nil {
		return nil, fmt.Errorf("kubeenv: client: %w", err)
	}
	e.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(e.Kubeconfig, e.Host, p); err != nil {
		return nil, fmt.Errorf("kubeenv: %w", err)
	}
	if err := e.InstallGatewayAPICRDs(ctx); err != nil {
		return nil, fmt.Errorf("kubeenv: install the Gateway API CRDs: %w", err)
	}
	opts.Logf("kubeenv: Gateway API CRDs (%s, pinned in go.mod) installed", GatewayAPIModule)
	if err := e.InstallBearkongCRDs(ctx); err != nil {
		return nil, fmt.Errorf("kubeenv: install bearkong's CRDs: %w", err)
	}
	opts.Logf("kubeenv: bearkong's CRDs (manifests/crds) installed")
	if err := e.ensureDefaultServiceAccount(ctx); err != nil {
		return nil, fmt.Errorf("kubeenv: %w", err)
	}
	opts.Logf("kubeenv: ready after %s; kubeconfig %s", time.Since(started).Round(time.Millisecond), e.Kubeconfig)
	return e, nil
}

// StartAPIServer starts the API server, on the same port, with the same flags and the same
// etcd data as before, and waits until it is ready. Start calls it once; call it again
// after StopAPIServer to simulate an API-server restart. The process lives until Stop,
// StopAPIServer, or the cancellation of the context given to Start; ctx bounds only the
// wait for readiness.
func (e *Env) StartAPIServer(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return errors.New("kubeenv: environment stopped")
	}
	if e.apiserver != nil {
		if exited, _ := e.apiserver.Exited(); !exited {
			return errors.New("kubeenv: kube-apiserver is already running")
		}
	}
	p, err := proc.Start(e.ctx, proc.Spec{
		Name:    "kube-apiserver",
		Path:    filepath.Join(e.opts.BinDir, "kube-apiserver"),
		Args:    e.apiArgs,
		LogPath: filepath.Join(e.Dir, "logs", "kube-apiserver.log"),
		Grace:   15 * time.Second,
	})
	if err != nil {
		return fmt.Errorf("kubeenv: %w", err)
	}
	e.apiserver = p
	if err := waitFor(ctx, e.opts.ReadyTimeout, p, func(ctx context.Context) error {
		return httpOK(ctx, e.readyCheck, e.Host+"/readyz", e.pki.adminToken)
	}); err != nil {
		return fmt.Errorf("kubeenv: kube-apiserver not ready: %w", err)
	}
	return nil
}

// StopAPIServer stops the API server and waits for it to exit; etcd keeps running.
func (e *Env) StopAPIServer() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stopAPIServerLocked()
}

func (e *Env) stopAPIServerLocked() error {
	if e.apiserver == nil {
		return nil
	}
	err := e.apiserver.Stop()
	e.apiserver = nil
	if err != nil {
		return fmt.Errorf("kubeenv: %w", err)
	}
	return nil
}

// Stop stops the API server and etcd and waits for them to exit. It is idempotent.
func (e *Env) Stop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopped = true
	errs := []error{e.stopAPIServerLocked()}
	if e.etcd != nil {
		if err := e.etcd.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("kubeenv: %w", err))
		}
	}
	return errors.Join(errs...)
}

// AdminToken returns the bearer token of the admin user (group system:masters).
func (e *Env) AdminToken() string { return e.pki.adminToken }

// CAData returns the PEM-encoded CA that signed the API server's certificate.
func (e *Env) CAData() []byte { return e.pki.caPEM }

// LogPath returns the path of a component's log file: "etcd" or "kube-apiserver".
func (e *Env) LogPath(component string) string {
	return filepath.Join(e.Dir, "logs", component+".log")
}

// ensureDefaultServiceAccount creates default/default, which the (absent) service-account
// controller would otherwise create. The namespace itself appears shortly after /readyz,
// so NotFound is retried, within the ready timeout.
func (e *Env) ensureDefaultServiceAccount(ctx context.Context) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: metav1.NamespaceDefault}}
	return waitFor(ctx, e.opts.ReadyTimeout, nil, func(ctx context.Context) error {
		_, err := e.Client.CoreV1().ServiceAccounts(sa.Namespace).Create(ctx, sa, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			return nil
		}
		return fmt.Errorf("create ServiceAccount default/default: %w", err)
	})
}

func writeKubeconfig(path, host string, p *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubeenv"] = &clientcmdapi.Cluster{Server: host, CertificateAuthorityData: p.caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: p.adminToken}
	cfg.Contexts["kubeenv"] = &clientcmdapi.Context{Cluster: "kubeenv", AuthInfo: "admin", Namespace: metav1.NamespaceDefault}
	cfg.CurrentContext = "kubeenv"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// waitFor calls check every 100ms until it returns nil, the timeout passes, ctx is done, or
// p (when not nil) exits. The error carries check's last error, and the tail of p's log
// when p exited.
func waitFor(ctx context.Context, timeout time.Duration, p *proc.Process, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var done <-chan struct{}
	if p != nil {
		done = p.Done()
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-done:
			_, werr := p.Exited()
			return fmt.Errorf("%s exited (%v); last log lines:\n%s", p.Name(), werr, LogTail(p.LogPath(), 2048))
		case <-ctx.Done():
			return fmt.Errorf("%w after %s: %w", ctx.Err(), timeout, last)
		case <-tick.C:
		}
	}
}

// httpOK GETs url and returns nil on a 200.
func httpOK(ctx context.Context, c *http.Client, url, token string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return nil
}

// FreePorts returns n distinct TCP ports that were free on 127.0.0.1 a moment ago.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// LogTail returns up to the last n bytes of the file at path, or a note saying why not.
func LogTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// RepoRoot returns the root of the bearkong module: the nearest directory, from the
// working directory upwards, that holds a go.mod declaring github.com/bearkong/bearkong.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 64 {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && isBearkongModule(b) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("cannot find the bearkong repository root (a go.mod for github.com/bearkong/bearkong) above the working directory")
}

func isBearkongModule(gomod []byte) bool {
	for line := range strings.Lines(string(gomod)) {
		if mod, ok := strings.CutPrefix(strings.TrimSpace(line), "module "); ok {
			return strings.Trim(strings.TrimSpace(mod), `"`) == "github.com/bearkong/bearkong"
		}
	}
	return false
}

// BinDir returns <repo root>/.cache/bin, where the install scripts and make build put the
// binaries.
func BinDir() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "bin"), nil
}
