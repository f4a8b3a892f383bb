// Package proc runs the child processes of the local test harness (etcd, kube-apiserver,
// the control plane, Envoy, the demo app, Prometheus).
//
// Every child runs in its own process group, writes stdout and stderr to a log file, and is
// stopped with SIGTERM to the whole group, then SIGKILL after a grace period. A child is also
// stopped when the context it was started with is cancelled, and, as a last resort, receives
// SIGKILL when the harness process dies (Pdeathsig), so that a crashed test leaves nothing
// behind.
package proc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// DefaultGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const DefaultGrace = 5 * time.Second

// killWait bounds the wait for a process to exit after SIGKILL.
const killWait = 10 * time.Second

// Spec describes a process to start.
type Spec struct {
	// Name identifies the process in errors and logs, e.g. "etcd" or "envoy app-2-0".
	Name string
	// Path is the executable; Args are its arguments (without argv[0]).
	Path string
	Args []string
	// Env is appended to the harness's own environment.
	Env []string
	// LogPath receives stdout and stderr. Its directory is created if needed; the file is
	// appended to, so a restarted process keeps its earlier log.
	LogPath string
	// Grace is the time between SIGTERM and SIGKILL on Stop; DefaultGrace when zero.
	Grace time.Duration
}

// Process is a running child process.
type Process struct {
	spec Spec
	cmd  *exec.Cmd
	done chan struct{}
	// waitErr is set before done is closed.
	waitErr error

	stopOnce sync.Once
	stopped  chan struct{} // closed once Stop has finished signalling
	stopErr  error
}

// Start starts the process described by spec. The process is stopped (as by Stop) when ctx
// is cancelled.
func Start(ctx context.Context, spec Spec) (*Process, error) {
	if spec.Grace <= 0 {
		spec.Grace = DefaultGrace
	}
	if err := os.MkdirAll(filepath.Dir(spec.LogPath), 0o755); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	logFile, err := os.OpenFile(spec.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", spec.Name, err)
	}
	defer logFile.Close() // the child holds its own copy of the descriptor

	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	// An *os.File is handed to the child as is: no copying goroutine, so Wait cannot hang on
	// a pipe that a grandchild keeps open.
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	fmt.Fprintf(logFile, "=== %s: %s %q\n", time.Now().Format(time.RFC3339Nano), spec.Path, spec.Args)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &Process{spec: spec, cmd: cmd, done: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = p.Stop()
		case <-p.done:
		}
	}()
	return p, nil
}

// Name returns the process's name.
func (p *Process) Name() string { return p.spec.Name }

// Pid returns the process id, which is also its process group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath returns the path of the process's log file.
func (p *Process) LogPath() string { return p.spec.LogPath }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and if so its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Signal sends sig to the process group (tests pause a process with SIGSTOP and resume
// it with SIGCONT). It fails once the process has exited.
func (p *Process) Signal(sig syscall.Signal) error {
	if exited, _ := p.Exited(); exited {
		return fmt.Errorf("signal %s: %s has exited", sig, p.spec.Name)
	}
	p.signalGroup(sig)
	return nil
}

// Stop sends SIGTERM to the process group, waits up to the grace period, then sends SIGKILL
// to the group, and waits for the process to exit. It is safe to call more than once and
// from several goroutines; every call returns only after the process has exited (or the
// bounded wait after SIGKILL has run out).
func (p *Process) Stop() error {
	p.stopOnce.Do(func() {
		defer close(p.stopped)
		p.signalGroup(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(p.spec.Grace):
		}
		p.signalGroup(syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(killWait):
			p.stopErr = fmt.Errorf("stop %s (pid %d): still running %s after SIGKILL", p.spec.Name, p.Pid(), killWait)
		}
	})
	<-p.stopped
	return p.stopErr
}

// Kill sends SIGKILL to the process group at once and waits for the process to exit, like a
// crash. Safe to call after Stop.
func (p *Process) Kill() error {
	p.signalGroup(syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("kill %s (pid %d): still running %s after SIGKILL", p.spec.Name, p.Pid(), killWait)
	}
}

// signalGroup signals the process group, unless the leader has already been reaped: its
// pid could then belong to someone else. The harness's children start no grandchildren.
func (p *Process) signalGroup(sig syscall.Signal) {
	if exited, _ := p.Exited(); exited {
		return
	}
	err := syscall.Kill(-p.cmd.Process.Pid, sig)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		// Fall back to the leader alone; nothing else can be done.
		_ = p.cmd.Process.Signal(sig)
	}
}
