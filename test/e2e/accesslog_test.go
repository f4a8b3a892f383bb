package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// accessLines returns the JSON access-log lines with the given path in a pod's Envoy
// output (internal/localmesh keeps each Envoy's standard output and error in
// EnvoyLog(pod)).
func accessLines(t *testing.T, m *localmesh.Mesh, pod, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(m.EnvoyLog(pod))
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for s.Scan() {
		l := s.Bytes()
		if !bytes.HasPrefix(l, []byte("{")) {
			continue
		}
		var a map[string]any
		if json.Unmarshal(l, &a) == nil && a["path"] == path {
			out = append(out, a)
		}
	}
	return out
}

// setAccessLog sets (or with "" removes) app's mesh-access-log annotation, leaving its
// other annotations as they are.
func setAccessLog(ctx context.Context, m *localmesh.Mesh, app, value string) error {
	return m.UpdateService(ctx, app, func(s *corev1.Service) {
		if value == "" {
			delete(s.Annotations, mesh.AnnotationAccessLog)
			return
		}
		if s.Annotations == nil {
			s.Annotations = map[string]string{}
		}
		s.Annotations[mesh.AnnotationAccessLog] = value
	})
}

// TestAccessLogBothSides: with mesh-access-log: json on app-2, a request from app-1 to
// app-2 is one JSON line on the outbound listener of app-1's sidecar and one on the
// inbound listener of the app-2 pod that served it, with the same request ID; a request
// to app-3, which has no annotation (and the control plane's default is off), is logged
// nowhere.
func TestAccessLogBothSides(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	if err := setAccessLog(ctxT(t, 10*time.Second), m, "app-2", string(mesh.AccessLogJSON)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := setAccessLog(ctxT(t, 10*time.Second), m, "app-2", ""); err != nil {
			t.Error(err)
		}
		waitAllSynced(t, m)
	})
	caller := m.PodsOf("app-1")[0]
	callees := m.PodsOf("app-2")
	// The config is in force once the caller's cluster of app-2 carries the format and
	// every app-2 pod's inbound listener has its logger.
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		b, err := m.EnvoyConfigDump(ctx, caller.Name)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte(`"`+translate.AccessLogMetadataNamespace+`": {`)) {
			return fmt.Errorf("%s: no cluster carries an access-log format yet", caller.Name)
		}
		for _, p := range callees {
			b, err := m.EnvoyConfigDump(ctx, p.Name)
			if err != nil {
				return err
			}
			if !bytes.Contains(b, []byte(`"request_id": "%REQ(X-REQUEST-ID)%"`)) {
				return fmt.Errorf("%s: no JSON access log on the inbound listener yet", p.Name)
			}
		}
		return nil
	})

	stamp := time.Now().UnixNano()
	quietPath := fmt.Sprintf("/access-log-off-%d", stamp)
	path := fmt.Sprintf("/access-log-%d", stamp)
	quietAt := time.Now()
	if status, name, _, err := get(ctxT(t, 10*time.Second), m, caller.Name, "app-3", quietPath); err != nil || status != 200 || name != "app-3" {
		t.Fatalf("app-1 -> app-3: %d %q %v", status, name, err)
	}
	if status, name, _, err := get(ctxT(t, 10*time.Second), m, caller.Name, "app-2", path); err != nil || status != 200 || name != "app-2" {
		t.Fatalf("app-1 -> app-2: %d %q %v", status, name, err)
	}

	// Envoy writes its access logs out every 10 s (--file-flush-interval-msec).
	var out, in []map[string]any
	var inPod string
	eventually(t, 30*time.Second, func(ctx context.Context) error {
		out = accessLines(t, m, caller.Name, path)
		in, inPod = nil, ""
		for _, p := range callees {
			if l := accessLines(t, m, p.Name, path); len(l) > 0 {
				in, inPod = append(in, l...), p.Name
			}
		}
		if len(out) == 0 || len(in) == 0 {
			return fmt.Errorf("lines for %s: %d on %s's outbound, %d on app-2's inbound", path, len(out), caller.Name, len(in))
		}
		return nil
	})
	// Whatever the other pods flush late is in by now too.
	time.Sleep(time.Until(quietAt.Add(11 * time.Second)))
	out = accessLines(t, m, caller.Name, path)
	in = nil
	for _, p := range callees {
		in = append(in, accessLines(t, m, p.Name, path)...)
	}
	if len(out) != 1 || len(in) != 1 {
		t.Fatalf("want one line on each side, got outbound %v, inbound %v", out, in)
	}
	o, i := out[0], in[0]
	t.Logf("outbound (%s): %v", caller.Name, o)
	t.Logf("inbound (%s): %v", inPod, i)
	if o["request_id"] == nil || o["request_id"] == "" || o["request_id"] != i["request_id"] {
		t.Errorf("request ids: outbound %v, inbound %v; want one id", o["request_id"], i["request_id"])
	}
	ns := m.Namespace()
	for _, c := range []struct {
		side      string
		l         map[string]any
		key       string
		want, got any
	}{
		{"outbound", o, "side", "outbound", nil},
		{"outbound", o, "method", "GET", nil},
		{"outbound", o, "status", float64(200), nil},
		{"outbound", o, "caller_service", ns + "/app-1", nil},
		{"outbound", o, "callee_service", ns + "/app-2", nil},
		{"inbound", i, "side", "inbound", nil},
		{"inbound", i, "status", float64(200), nil},
		{"inbound", i, "callee_service", ns + "/app-2", nil},
		{"inbound", i, "caller_identity", mesh.SPIFFEID(translate.DefaultTrustDomain, ns, caller.ServiceAccount), nil},
	} {
		if got := c.l[c.key]; got != c.want {
			t.Errorf("%s %s = %#v, want %#v", c.side, c.key, got, c.want)
		}
	}
	if h, _ := o["upstream_host"].(string); !strings.HasPrefix(h, podIP(m, inPod)+":") {
		t.Errorf("outbound upstream_host %q, want the pod that logged the inbound line, %s (%s)", h, inPod, podIP(m, inPod))
	}
	for _, l := range []map[string]any{o, i} {
		for _, k := range []string{"time", "duration_ms", "upstream_host", "path"} {
			if l[k] == nil || l[k] == "" {
				t.Errorf("%s line without %s: %v", l["side"], k, l)
			}
		}
	}
	for _, p := range append([]localmesh.Pod{caller}, m.PodsOf("app-3")...) {
		if l := accessLines(t, m, p.Name, quietPath); len(l) > 0 {
			t.Errorf("%s logged a request to app-3, which has no mesh-access-log: %v", p.Name, l)
		}
	}
}

// podIP returns a pod's address.
func podIP(m *localmesh.Mesh, name string) string {
	p, _ := m.Pod(name)
	return p.IP
}
