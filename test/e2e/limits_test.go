package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
)

// pausedCutWithin bounds how long the control plane keeps the stream of an Envoy that
// stopped reading. What cuts it today is the gRPC server keepalive of `bearkong cp`
// (internal/controlplane: a ping after 30 s without a frame from the client, closed 10 s
// later without its answer), well before the per-stream send deadline, which needs the
// connection's buffers to fill first; the bound leaves room for both.
const pausedCutWithin = 100 * time.Second

// nodeStreams returns the streams of one node, from /debug/streams?node=.
func nodeStreams(ctx context.Context, m *localmesh.Mesh, node string) ([]ads.StreamInfo, error) {
	b, err := m.ControlPlaneGet(ctx, "/debug/streams?node="+url.QueryEscape(node))
	if err != nil {
		return nil, err
	}
	var body struct {
		Streams []ads.StreamInfo `json:"streams"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return nil, fmt.Errorf("decode /debug/streams?node=%s: %w", node, err)
	}
	return body.Streams, nil
}

// TestPausedEnvoyIsCutAndResyncs pauses one pod's Envoy with SIGSTOP, as a proxy that
// stops reading its stream while its TCP connection stays up, and changes the mesh so
// that the control plane keeps pushing to it. The control plane must cut that stream by
// itself (releasing what it holds); once resumed with SIGCONT, the Envoy reconnects on a
// new stream, is SYNCED on every type and answers through its listeners again.
func TestPausedEnvoyIsCutAndResyncs(t *testing.T) {
	m := sharedMesh(t)
	before := waitAllSynced(t, m)
	pods := m.PodsOf("app-3")
	if len(pods) == 0 {
		t.Fatal("no pod of app-3")
	}
	paused := pods[len(pods)-1]
	node := nodeID(paused)
	oldID := before[node].ID

	if err := m.SignalEnvoy(paused.Name, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := m.SignalEnvoy(paused.Name, syscall.SIGCONT); err != nil {
				t.Errorf("SIGCONT: %v", err)
			}
		}
	}
	t.Cleanup(resume)
	stoppedAt := time.Now()

	// Push to the paused proxy until the control plane cuts its stream: a Service
	// that comes and goes changes clusters, assignments and routes every time.
	ctx := ctxT(t, pausedCutWithin+30*time.Second)
	const churn = "paused-churn"
	exists := false
	t.Cleanup(func() {
		if exists {
			_ = m.DeleteService(context.Background(), churn)
		}
	})
	cut := false
	for round := 0; time.Since(stoppedAt) < pausedCutWithin; round++ {
		var err error
		if !exists {
			err = m.AddService(ctx, churn, localmesh.ServiceOptions{})
		} else {
			err = m.DeleteService(ctx, churn)
		}
		exists = !exists
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		ss, err := nodeStreams(ctx, m, node)
		if err != nil {
			t.Fatal(err)
		}
		if len(ss) == 0 {
			cut = true
			t.Logf("the stream of the paused %s was cut %s after SIGSTOP, after %d changes", node, time.Since(stoppedAt).Round(time.Second), round+1)
			break
		}
		if len(ss) != 1 || ss[0].ID != oldID {
			t.Fatalf("%s is paused, yet /debug/streams shows %+v", node, ss)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(2 * time.Second):
		}
	}
	if !cut {
		t.Fatalf("the stream of %s, paused since %s, is still open", node, time.Since(stoppedAt).Round(time.Second))
	}
	if exists {
		if err := m.DeleteService(ctx, churn); err != nil {
			t.Fatal(err)
		}
		exists = false
	}

	resume()
	after := waitAllSynced(t, m)
	if after[node].ID == oldID {
		t.Errorf("%s is SYNCED on its old stream %d; want a new one", node, oldID)
	}
	if err := m.WaitAllReachable(ctx, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"app-1", "app-2"} {
		status, body, err := m.Get(ctx, paused.Name, to)
		if err != nil || status != 200 {
			t.Errorf("%s -> %s after SIGCONT: %d %s %v", paused.Name, to, status, body, err)
		}
	}
}
