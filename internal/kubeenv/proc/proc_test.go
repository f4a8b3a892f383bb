package proc

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// alive reports whether pid runs and is not a zombie waiting for init to reap it.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}

// TestStopKillsTheGroup starts a shell that starts a grandchild and ignores SIGTERM, and
// checks that Stop takes both down within the grace period plus a little.
func TestStopKillsTheGroup(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "logs", "sh.log")
	p, err := Start(t.Context(), Spec{
		Name:    "sh",
		Path:    "/bin/sh",
		Args:    []string{"-c", `trap '' TERM; sleep 60 & echo "child $!"; wait`},
		LogPath: logPath,
		Grace:   300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for range 50 {
		b, _ := os.ReadFile(logPath)
		if _, after, ok := strings.Cut(string(b), "\nchild "); ok {
			child, _ = strconv.Atoi(strings.TrimSpace(after))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the shell did not report its child")
	}
	start := time.Now()
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Stop took %s", d)
	}
	if exited, _ := p.Exited(); !exited {
		t.Error("process still running after Stop")
	}
	for range 50 { // the grandchild is reaped by init; give it a moment
		if !alive(child) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if alive(child) {
		syscall.Kill(child, syscall.SIGKILL)
		t.Errorf("grandchild %d survived Stop", child)
	}
	if err := p.Stop(); err != nil { // idempotent
		t.Errorf("second Stop: %v", err)
	}
}

func TestContextCancelStops(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	p, err := Start(ctx, Spec{Name: "sleep", Path: "/bin/sleep", Args: []string{"60"}, LogPath: filepath.Join(t.TempDir(), "sleep.log")})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		p.Kill()
		t.Fatal("process outlived its context")
	}
}

// procState returns the state letter of /proc/<pid>/stat: T when stopped.
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The command name is in parentheses and may hold spaces: the state follows it.
	s := string(b)
	return strings.Fields(s[strings.LastIndexByte(s, ')')+1:])[0]
}

func TestSignalPausesAndResumes(t *testing.T) {
	p, err := Start(context.Background(), Spec{Name: "sleep", Path: "/bin/sleep", Args: []string{"60"}, LogPath: filepath.Join(t.TempDir(), "sleep.log")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Signal(syscall.SIGCONT); _ = p.Stop() })
	wait := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for procState(t, p.Pid()) != want {
			if time.Now().After(deadline) {
				t.Fatalf("state %s, want %s", procState(t, p.Pid()), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	wait("T")
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	wait("S")
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGCONT); err == nil {
		t.Error("Signal after exit: no error")
	}
}
