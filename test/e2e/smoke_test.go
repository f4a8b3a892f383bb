package e2e

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/localmesh"
)

// TestSmokeEveryAppReachesEveryApp proves the harness and the mesh contract end to end:
// from every pod, through its outbound listener, every app answers, and an unknown
// service gets a 404 from Envoy.
func TestSmokeEveryAppReachesEveryApp(t *testing.T) {
	m := sharedMesh(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	for _, from := range m.Pods() {
		for _, to := range localmesh.DemoApps {
			c := m.Call(ctx, from.Name, to.Name)
			if c.Err != nil {
				t.Errorf("%s -> %s: %v", from.Name, to.Name, c.Err)
				continue
			}
			if c.Status != http.StatusOK || c.Answer.Name != to.Name {
				t.Errorf("%s -> %s: got %d %q, want 200 from %s", from.Name, to.Name, c.Status, c.Body, to.Name)
				continue
			}
			answered, ok := m.Pod(c.Pod)
			if !ok || answered.Service != to.Name {
				t.Errorf("%s -> %s: answered by %q (%s), not a pod of %s", from.Name, to.Name, c.Pod, c.Answer.IP(), to.Name)
				continue
			}
			t.Logf("%s -> %s: %d from %s (%s)", from.Name, to.Name, c.Status, c.Pod, c.Answer.IP())
		}

		status, body, err := m.Get(ctx, from.Name, "no-such-service")
		if err != nil {
			t.Errorf("%s -> no-such-service: %v", from.Name, err)
		} else if status != http.StatusNotFound {
			t.Errorf("%s -> no-such-service: got %d %q, want 404", from.Name, status, body)
		}
	}
}
