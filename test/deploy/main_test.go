package deploy

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// bins are the binaries the process tests run: bearkong and demo-app built for this run,
// and the installed Envoy, kube-apiserver and etcd (.cache/bin, from make install).
type bins struct {
	bearkong, demoApp string
	envoy             string
	toolDir           string // etcd and kube-apiserver
}

var built struct {
	once sync.Once
	dir  string
	bins bins
	err  error
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// binaries builds bearkong and demo-app once per run and finds the installed tools. It
// skips the test with -short and fails it when something is missing.
func binaries(t *testing.T) bins {
	t.Helper()
	if testing.Short() {
		t.Skip("starts processes: skipped with -short")
	}
	root := repoRoot(t)
	built.once.Do(func() {
		built.err = func() error {
			dir, err := os.MkdirTemp("", "bearkong-deploy-bin-")
			if err != nil {
				return err
			}
			built.dir = dir
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			for pkg, out := range map[string]string{"./cmd/bearkong": "bearkong", "./cmd/demo-app": "demo-app"} {
				cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, out), pkg)
				cmd.Dir = root
				if b, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
				}
			}
			toolDir := filepath.Join(root, ".cache", "bin")
			for _, tool := range []string{"envoy", "etcd", "kube-apiserver"} {
				if _, err := os.Stat(filepath.Join(toolDir, tool)); err != nil {
					return fmt.Errorf("%w (run make install)", err)
				}
			}
			built.bins = bins{
				bearkong: filepath.Join(dir, "bearkong"),
				demoApp:  filepath.Join(dir, "demo-app"),
				envoy:    filepath.Join(toolDir, "envoy"),
				toolDir:  toolDir,
			}
			return nil
		}()
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bins
}
