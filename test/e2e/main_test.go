// Package e2e holds the end-to-end tests (tier 3 in DESIGN.md): a real etcd and
// kube-apiserver, the real `bearkong cp`, and real Envoys in front of demo apps on loopback
// addresses, all driven by internal/localmesh.
//
// The tests share one mesh, set up on first use: app-1 with one replica, app-2 and app-3
// with two. Tests that change the mesh must put it back as they found it. With -short the
// tests are skipped; otherwise a missing binary or tool is a failure, not a skip.
//
// Every sidecar speaks the xDS protocol BEARKONG_E2E_XDS_PROTOCOL names: sotw, delta, or
// "other", the one that is not the bootstrap's default; unset, the default. `make test`
// runs the whole suite on the default and the core tests on the other one.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// shared is the mesh every test uses; set up by the first sharedMesh call.
var shared struct {
	once   sync.Once
	err    error
	log    strings.Builder // setup progress, replayed into the first test's log
	logMu  sync.Mutex
	dir    string
	cancel context.CancelFunc
	env    *kubeenv.Env
	mesh   *localmesh.Mesh
	binDir string // bearkong and demo-app, built for this run
	envoy  string
	prom   string // Prometheus base URL

	// rejected counts, per pod and Envoy update_rejected stat, the rejections a test
	// caused on purpose (TestNACKedRouteIsQuarantined), so that the tests that check
	// nothing else was ever rejected (TestEnvoysAreSyncedAndAcceptEverything) can tell
	// them apart, in whatever order the tests run.
	rejectedMu sync.Mutex
	rejected   map[string]map[string]int
}

// resyncPeriod is the control plane's informer resync in these tests: short, so that the
// tests see resyncs happen and can check that they push nothing.
const resyncPeriod = 2 * time.Second

// meshXDSProtocol is the xDS protocol every sidecar speaks, in the shared mesh and in the
// meshes tests start of their own: "sotw" or "delta", from BEARKONG_E2E_XDS_PROTOCOL
// (see e2eXDSProtocol).
var meshXDSProtocol string

func TestMain(m *testing.M) {
	flag.Parse()
	var err error
	if meshXDSProtocol, err = e2eXDSProtocol(os.Getenv(xdsProtocolEnv)); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: teardown: %v\n", err)
		code = 1
	}
	if shared.dir != "" {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "e2e: logs kept in %s\n", shared.dir)
		} else {
			os.RemoveAll(shared.dir)
		}
	}
	os.Exit(code)
}

// sharedMesh returns the shared mesh, setting it up on first use. It skips the test with
// -short and fails it when the mesh cannot be set up.
func sharedMesh(t *testing.T) *localmesh.Mesh {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	first := false
	shared.once.Do(func() {
		first = true
		shared.err = setup()
	})
	if first {
		shared.logMu.Lock()
		t.Logf("setup:\n%s", shared.log.String())
		shared.logMu.Unlock()
	}
	if shared.err != nil {
		t.Fatalf("setting up the local mesh: %v", shared.err)
	}
	return shared.mesh
}

func logf(format string, args ...any) {
	shared.logMu.Lock()
	defer shared.logMu.Unlock()
	fmt.Fprintf(&shared.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// setup builds bearkong and demo-app, starts the API server, the control plane and the
// apps, and waits until every pod reaches every app.
func setup() error {
	started := time.Now()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bearkong-e2e-")
	if err != nil {
		return err
	}
	shared.dir = dir
	ctx, cancel := context.WithCancel(context.Background())
	shared.cancel = cancel

	binDir := filepath.Join(dir, "bin")
	shared.binDir = binDir
	for _, pkg := range []string{"bearkong", "demo-app"} {
		if err := goBuild(ctx, root, filepath.Join(binDir, pkg), "./cmd/"+pkg); err != nil {
			return err
		}
	}
	logf("built bearkong and demo-app in %s", time.Since(started).Round(time.Millisecond))
	toolDir := filepath.Join(root, ".cache", "bin")
	envoy := filepath.Join(toolDir, "envoy")
	if _, err := os.Stat(envoy); err != nil {
		return fmt.Errorf("%w (run make install)", err)
	}
	shared.envoy = envoy

	logf("xDS protocol of every sidecar: %s (%s=%q; the bootstrap's default is %s)", meshXDSProtocol, xdsProtocolEnv, os.Getenv(xdsProtocolEnv), translate.DefaultXDSProtocol)

	// Prometheus starts last, as it scrapes the control plane, whose --prometheus-url
	// (the page at /debug/) names it: its port is picked first.
	promPorts, err := kubeenv.FreePorts(1)
	if err != nil {
		return err
	}
	promAddr := fmt.Sprintf("127.0.0.1:%d", promPorts[0])

	shared.env, err = kubeenv.Start(ctx, kubeenv.Options{Dir: filepath.Join(dir, "kube"), BinDir: toolDir, Logf: logf})
	if err != nil {
		return err
	}
	shared.mesh, err = localmesh.New(ctx, localmesh.Options{
		Env:         shared.env,
		Dir:         filepath.Join(dir, "mesh"),
		BearkongBin: filepath.Join(binDir, "bearkong"),
		EnvoyBin:    envoy,
		DemoAppBin:  filepath.Join(binDir, "demo-app"),
		XDSProtocol: meshXDSProtocol,
		Logf:        logf,
		// --unsafe-testing-skip-validation lets blast_test.go's HTTPRoute opt out of
		// bearkong's regex checks, so that the proxies get a route Envoy rejects.
		// --cert-lifetime 60s makes every proxy's certificate rotate every 30 s for the
		// whole run, under every other test (security_test.go counts the rotations).
		// --unsafe-testing-hooks lets status_test.go pause a proxy or make it NACK.
		ControlPlaneArgs: []string{"--resync-period", resyncPeriod.String(), "--unsafe-testing-skip-validation", "--cert-lifetime", certLifetime.String(),
			"--prometheus-url", "http://" + promAddr, "--unsafe-testing-hooks"},
	})
	if err != nil {
		return err
	}
	m := shared.mesh
	if err := m.StartControlPlane(ctx); err != nil {
		return fmt.Errorf("%w\ncontrol plane log:\n%s", err, kubeenv.LogTail(m.ControlPlaneLog(), 4096))
	}
	if err := m.AddApps(ctx, localmesh.DemoApps); err != nil {
		return fmt.Errorf("%w\ncontrol plane log:\n%s", err, kubeenv.LogTail(m.ControlPlaneLog(), 4096))
	}
	if err := m.WaitAllReachable(ctx, 60*time.Second); err != nil {
		return err
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		return fmt.Errorf("%w (run make install)", err)
	}
	if shared.prom, err = m.StartPrometheus(ctx, promBin, promAddr); err != nil {
		return err
	}
	logf("mesh ready after %s", time.Since(started).Round(time.Millisecond))
	return nil
}

func teardown() error {
	if shared.cancel == nil {
		return nil
	}
	var errs []error
	if shared.mesh != nil {
		errs = append(errs, shared.mesh.Close())
	}
	if shared.env != nil {
		errs = append(errs, shared.env.Stop())
	}
	shared.cancel()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// goBuild builds pkg of the module at root into out.
func goBuild(ctx context.Context, root, out, pkg string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}
