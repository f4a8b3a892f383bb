package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestControlPlaneJSONLogsAndPprof runs the real `bearkong cp` against a real API server
// with --log-format json: every line it writes is one JSON object, client-go's own lines
// (klog) included, and the pprof listener of --debug-addr serves a heap profile.
// A resync period under client-go's minimum of 1 s makes client-go's shared informer log a
// warning through klog at start, which is the client-go line looked for.
func TestControlPlaneJSONLogsAndPprof(t *testing.T) {
	b := binaries(t)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	env := startEnv(ctx, t, b)

	logPath := filepath.Join(t.TempDir(), "cp.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.CommandContext(ctx, b.bearkong, "cp", "--kubeconfig", env.Kubeconfig, "--xds-insecure",
		"--xds-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0",
		"--ca-secret", "default/bearkong-ca", "--resync-period", "500ms", "--log-format", "json")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("bearkong cp log:\n%s", out)
		}
	}()

	type line struct {
		Msg, Level, Logger, Debug string
	}
	// lines parses the log so far; every line must be a JSON object.
	lines := func() []line {
		t.Helper()
		raw, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		var out []line
		for _, l := range bytes.Split(bytes.TrimSpace(raw), []byte("\n")) {
			if len(l) == 0 {
				continue
			}
			var v line
			if err := json.Unmarshal(l, &v); err != nil || v.Msg == "" {
				t.Fatalf("a log line is not a JSON object with a message: %q (%v)", l, err)
			}
			out = append(out, v)
		}
		return out
	}
	var debugAddr string
	var klogLine *line
	deadline := time.Now().Add(60 * time.Second)
	for debugAddr == "" || klogLine == nil {
		if time.Now().After(deadline) {
			t.Fatalf("within 60s: debug address %q, client-go line %+v", debugAddr, klogLine)
		}
		select {
		case err := <-exited:
			t.Fatalf("bearkong cp exited: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
		for _, l := range lines() {
			if l.Msg == "bearkong starting" {
				debugAddr = l.Debug
			}
			if l.Logger == "klog" && strings.Contains(l.Msg, "resync period is too small") {
				klogLine = &l
			}
		}
	}
	t.Logf("client-go's line, as JSON: %+v", *klogLine)

	resp, err := http.Get("http://" + debugAddr + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "heap profile: ") {
		t.Errorf("GET %s/debug/pprof/heap?debug=1: %d %.200q, want a heap profile", debugAddr, resp.StatusCode, body)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("bearkong cp after SIGTERM: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("bearkong cp still running 30s after SIGTERM")
	}
	lines() // every line, to the last, is JSON
}
