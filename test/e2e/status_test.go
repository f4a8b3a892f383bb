package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// bearkongCLI runs the bearkong binary of this run with args, for at most 15 s; err is
// the exit status. One that does not finish in time is stopped with SIGQUIT, so that its
// goroutines show in stderr.
func bearkongCLI(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(shared.binDir, "bearkong"), args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGQUIT) }
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	return out.String(), errOut.String(), err
}

// testHook sets (POST) or lifts (DELETE) a control-plane test hook for a node
// (internal/controlplane/testhooks.go), on replica 0's debug listener.
func testHook(t *testing.T, m *localmesh.Mesh, method, hook, node string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t, 10*time.Second), method, m.DebugURL(0)+"/debug/testing/"+hook+"?node="+node, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s %s %s: %s %s", method, hook, node, resp.Status, b)
	}
}

// statusRows parses `bearkong status`'s table into rows of fields, the header first.
func statusRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(out, "\n") {
		if line == "" {
			break // the table ends at the first blank line; the NACKs follow
		}
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

// TestStatusCommand checks `bearkong status` on the local mesh: the 5 pods, SYNCED on
// every type; then, with one proxy made to NACK (the nack test hook), that proxy listed
// first, NACKED, with Envoy's message; and `bearkong status <pod>` in detail.
func TestStatusCommand(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	server := "--server=" + m.ControlPlaneURL()

	out, errOut, err := bearkongCLI(ctxT(t, 30*time.Second), "status", server)
	if err != nil {
		t.Fatalf("bearkong status: %v\n%s%s", err, out, errOut)
	}
	t.Logf("bearkong status:\n%s", out)
	rows := statusRows(out)
	wantHeader := "POD NAMESPACE SERVICES"
	for _, typ := range resource.Types {
		wantHeader += " " + strings.ToUpper(typ.String())
	}
	if len(rows) == 0 || !strings.HasPrefix(strings.Join(rows[0], " "), wantHeader) {
		t.Fatalf("header %q, want %q...", rows[0], wantHeader)
	}
	pods := m.Pods()
	if len(pods) != 5 || len(rows) != len(pods)+1 {
		t.Fatalf("%d pods in the mesh, %d rows listed:\n%s", len(pods), len(rows)-1, out)
	}
	byPod := map[string][]string{}
	for _, r := range rows[1:] {
		byPod[r[0]+"."+r[1]] = r
	}
	for _, p := range pods {
		r, ok := byPod[nodeID(p)]
		if !ok {
			t.Errorf("%s is not listed", nodeID(p))
			continue
		}
		if svc := p.Service; r[2] != svc {
			t.Errorf("%s serves %s, listed %s", p.Name, svc, r[2])
		}
		// Each type's cell is "SYNCED <ago>": every other field from the 4th on.
		for i := range resource.Types {
			if r[3+2*i] != "SYNCED" {
				t.Errorf("%s: %s is %s", p.Name, resource.Types[i], r[3+2*i])
			}
		}
	}

	// app-3-1 sorts last when all are well; a NACK puts it first.
	nacked := "app-3-1.default"
	rejectedBefore := rejectedStats(t, m)
	testHook(t, m, http.MethodPost, "nack", nacked)
	lifted := false
	lift := func() {
		if !lifted {
			lifted = true
			testHook(t, m, http.MethodDelete, "nack", nacked)
		}
	}
	t.Cleanup(lift)
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		out, errOut, err = bearkongCLI(ctx, "status", server)
		if err != nil {
			return fmt.Errorf("%v: %s", err, errOut)
		}
		rows := statusRows(out)
		if len(rows) < 2 || rows[1][0]+"."+rows[1][1] != nacked || !strings.Contains(strings.Join(rows[1], " "), "NACKED") {
			return fmt.Errorf("%s is not listed first, NACKED:\n%s", nacked, out)
		}
		if !strings.Contains(out, "\nRejected config (last NACK of each NACKed type):\n  "+nacked+" lds, ") ||
			!strings.Contains(out, controlplane.RejectedListenerName) || !strings.Contains(out, "address is necessary") {
			return fmt.Errorf("no NACK message for %s:\n%s", nacked, out)
		}
		return nil
	})
	t.Logf("bearkong status with %s NACKing:\n%s", nacked, out)
	for _, r := range statusRows(out)[2:] {
		if strings.Contains(strings.Join(r, " "), "NACKED") {
			t.Errorf("another proxy is NACKED: %v", r)
		}
	}

	out, errOut, err = bearkongCLI(ctxT(t, 30*time.Second), "status", "app-3-1", server)
	if err != nil {
		t.Fatalf("bearkong status app-3-1: %v\n%s", err, errOut)
	}
	for _, want := range []string{"Pod:            app-3-1\n", "Node:           " + nacked + "\n", "\nLast NACK of lds (in force), "} {
		if !strings.Contains(out, want) {
			t.Errorf("bearkong status app-3-1 lacks %q:\n%s", want, out)
		}
	}

	lift()
	waitAllSynced(t, m)
	expectRejected(rejectedBefore, rejectedStats(t, m))
	if _, _, err := bearkongCLI(ctxT(t, 10*time.Second), "status", "no-such-pod", server); err == nil {
		t.Error("bearkong status no-such-pod succeeded")
	}
}

// TestConfigDiff checks `bearkong config --diff` on the local mesh: no difference in
// steady state; a difference while app-1-0 is held at an older config (the pause test
// hook) and the mesh changes; none again once it is resumed.
func TestConfigDiff(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	server := "--server=" + m.ControlPlaneURL()
	const node = "app-1-0.default"

	inSync := func(ctx context.Context) (string, error) {
		out, errOut, err := bearkongCLI(ctx, "config", node, "--diff", server)
		if err != nil {
			return out, fmt.Errorf("bearkong config --diff: %v: %s\n%s", err, errOut, out)
		}
		for _, typ := range resource.Types {
			if !strings.Contains(out, fmt.Sprintf("\n%-5s in sync: ", typ)) {
				return out, fmt.Errorf("%s not in sync:\n%s", typ, out)
			}
		}
		return out, nil
	}
	// A certificate rotation (every 30 s in these tests) can fall between the two reads
	// of the comparison: try again.
	var out string
	eventually(t, 20*time.Second, func(ctx context.Context) (err error) {
		out, err = inSync(ctx)
		return err
	})
	t.Logf("steady state:\n%s", out)

	yamlOut, errOut, err := bearkongCLI(ctxT(t, 30*time.Second), "config", node, "--type", "cds", "-o", "yaml", server)
	if err != nil || !strings.Contains(yamlOut, "node: "+node+"\n") || !strings.Contains(yamlOut, "type: cds\n") || strings.Contains(yamlOut, "type: lds\n") {
		t.Fatalf("bearkong config --type cds -o yaml: %v %s\n%.2000s", err, errOut, yamlOut)
	}

	testHook(t, m, http.MethodPost, "pause", node)
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			testHook(t, m, http.MethodDelete, "pause", node)
		}
	}
	t.Cleanup(resume)
	withService(t, m, "status-held", nil)
	eventually(t, 40*time.Second, func(ctx context.Context) error {
		var errOut string
		var err error
		out, errOut, err = bearkongCLI(ctx, "config", node, "--diff", server)
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			return fmt.Errorf("bearkong config --diff while paused: %v, want a non-zero exit: %s\n%s", err, errOut, out)
		}
		for _, want := range []string{
			// The held proxy never subscribed to the new cluster's endpoints, so its
			// EDS has nothing missing: bearkong serves EDS by name.
			"\ncds   DIFFERENT: ", "      missing in Envoy: status-held.default\n",
			"\nrds   DIFFERENT: ", "      different: outbound (",
		} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no %q in:\n%s%s", want, out, errOut)
			}
		}
		if !strings.Contains(errOut, "differs from what bearkong serves it") {
			return fmt.Errorf("stderr: %s", errOut)
		}
		return nil
	})
	t.Logf("while %s is held at its older config:\n%s", node, out)

	resume()
	eventually(t, 20*time.Second, func(ctx context.Context) (err error) {
		out, err = inSync(ctx)
		return err
	})
	waitAllSynced(t, m)
}
