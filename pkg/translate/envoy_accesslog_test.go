package translate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// accessLine is a JSON access-log line as the sidecar writes it.
type accessLine map[string]any

// jsonAccessLines returns the JSON access-log lines in Envoy's output.
func jsonAccessLines(b []byte) []accessLine {
	var out []accessLine
	s := bufio.NewScanner(bytes.NewReader(b))
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		l := s.Bytes()
		if !bytes.HasPrefix(l, []byte("{")) {
			continue
		}
		var a accessLine
		if json.Unmarshal(l, &a) == nil && a["side"] != nil {
			out = append(out, a)
		}
	}
	return out
}

// TestEnvoyAccessLogs runs a real Envoy whose outbound listener calls its own inbound
// listener over mutual TLS, with mesh-access-log set on some Services, and checks the
// lines it writes to standard output: one on each side per request to a logged Service,
// with the same request ID, the fields people filter on, the caller's SPIFFE ID on the
// inbound side, and nothing on the outbound side for a Service that does not log.
func TestEnvoyAccessLogs(t *testing.T) {
	ip := freeLoopbackIP(t)
	outIP := freeLoopbackIP(t)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintf(w, "request id %s\n", r.Header.Get("x-request-id"))
	})
	ep := []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{
			{Namespace: "default", Name: "app-1", Policy: mesh.Policy{AccessLog: mesh.AccessLogJSON}, Endpoints: ep, ServiceAccounts: []string{"test"}},
			{Namespace: "default", Name: "quiet", Endpoints: ep, ServiceAccounts: []string{"test"}},
			{Namespace: "default", Name: "texty", Policy: mesh.Policy{AccessLog: mesh.AccessLogText}, Endpoints: ep, ServiceAccounts: []string{"test"}},
		},
		Proxies: map[string]*mesh.Proxy{"default/app-1-0": {Namespace: "default", Name: "app-1-0", IP: ip, Services: []string{"default/app-1"}, ServiceAccount: "test"}},
	}
	n := Node{ID: "app-1-0.default", PodNamespace: "default", PodName: "app-1-0", ListenIP: ip, OutboundIP: outIP}
	e := startEnvoy(t, snap, n, Options{}, app)

	status, body := e.do(t, e.outbound, "/hello?x=1", [2]string{"service", "app-1"})
	if status != 200 {
		t.Fatalf("app-1: %d %q", status, body)
	}
	appID := strings.TrimSpace(strings.TrimPrefix(body, "request id "))
	if status, body := e.do(t, e.outbound, "/fail", [2]string{"service", "app-1.default"}); status != 503 {
		t.Fatalf("app-1 /fail: %d %q", status, body)
	}
	if status, body := e.do(t, e.outbound, "/quiet", [2]string{"service", "quiet"}); status != 200 {
		t.Fatalf("quiet: %d %q", status, body)
	}
	if status, body := e.do(t, e.outbound, "/texty", [2]string{"service", "texty"}); status != 200 {
		t.Fatalf("texty: %d %q", status, body)
	}

	// Envoy writes access logs out every 10 s (--file-flush-interval-msec); wait for
	// the five lines that must come (two per logged request to app-1, one for the
	// outbound request to texty), then for the rest of a flush.
	var lines []accessLine
	deadline := time.Now().Add(25 * time.Second)
	for {
		lines = jsonAccessLines(e.logs.Bytes())
		if len(lines) >= 4 && strings.Contains(e.logs.String(), AccessLogTextPrefix) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	byPath := map[string][]accessLine{}
	for _, l := range lines {
		p, _ := l["path"].(string)
		byPath[p] = append(byPath[p], l)
	}

	t.Run("one line per side, same request id", func(t *testing.T) {
		got := byPath["/hello?x=1"]
		if len(got) != 2 {
			t.Fatalf("lines for /hello?x=1: %v, want one inbound and one outbound\n%s", got, e.logs)
		}
		sides := map[string]accessLine{}
		for _, l := range got {
			sides[l["side"].(string)] = l
		}
		in, out := sides["inbound"], sides["outbound"]
		if in == nil || out == nil {
			t.Fatalf("sides %v", got)
		}
		if in["request_id"] != out["request_id"] || in["request_id"] != appID || appID == "" {
			t.Errorf("request ids: inbound %v, outbound %v, the app saw %q; want one id", in["request_id"], out["request_id"], appID)
		}
		for _, c := range []struct {
			l     accessLine
			key   string
			value any
		}{
			{in, "method", "GET"}, {in, "status", float64(200)}, {in, "callee_service", "default/app-1"},
			{in, "caller_identity", "spiffe://" + DefaultTrustDomain + "/ns/default/sa/test"},
			{out, "method", "GET"}, {out, "status", float64(200)}, {out, "caller_service", "default/app-1"},
			{out, "callee_service", "default/app-1"}, {out, "upstream_host", ip + ":8000"},
			{out, "callee_identity", "spiffe://" + DefaultTrustDomain + "/ns/default/sa/test"},
		} {
			if got := c.l[c.key]; got != c.value {
				t.Errorf("%s %s = %#v, want %#v", c.l["side"], c.key, got, c.value)
			}
		}
		for _, l := range []accessLine{in, out} {
			for _, k := range []string{"time", "duration_ms", "upstream_host"} {
				if l[k] == nil || l[k] == "" {
					t.Errorf("%s line has no %s: %v", l["side"], k, l)
				}
			}
		}
	})
	t.Run("errors are logged with their status", func(t *testing.T) {
		got := byPath["/fail"]
		if len(got) != 2 || got[0]["status"] != float64(503) || got[1]["status"] != float64(503) {
			t.Fatalf("lines for /fail: %v", got)
		}
	})
	t.Run("a Service without access logs", func(t *testing.T) {
		// Its requests reach the same pod, whose inbound listener logs for app-1; the
		// caller's outbound listener logs nothing for it.
		for _, l := range byPath["/quiet"] {
			if l["side"] == "outbound" {
				t.Errorf("outbound line for a Service without mesh-access-log: %v", l)
			}
		}
	})
	t.Run("text format", func(t *testing.T) {
		var text []string
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if strings.HasPrefix(l, AccessLogTextPrefix) {
				text = append(text, l)
			}
		}
		if len(text) != 1 || !strings.Contains(text[0], `path="/texty"`) || !strings.Contains(text[0], " side=outbound ") ||
			!strings.Contains(text[0], " status=200 ") || !strings.Contains(text[0], " callee_service=default/texty ") {
			t.Fatalf("text lines %q, want one outbound line for /texty", text)
		}
	})
	if w := e.warnings(); len(w) > 0 {
		t.Errorf("Envoy warned:\n%s", strings.Join(w, "\n"))
	}
}

// TestEnvoyGoldenSignalLabels checks, on a real Envoy's /stats/prometheus, the labels
// the golden-signal queries (manifests/) group by: the bootstrap's workload tags on the
// caller's per-Service cluster stats, next to the Service's envoy_cluster_name, and on
// the callee's inbound connection-manager stats.
func TestEnvoyGoldenSignalLabels(t *testing.T) {
	ip := freeLoopbackIP(t)
	outIP := freeLoopbackIP(t)
	app := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	ep := []mesh.Endpoint{{IP: ip, Pod: "app-1-0"}}
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{{Namespace: "default", Name: "app-1", Endpoints: ep, ServiceAccounts: []string{"test"}}},
		Proxies:  map[string]*mesh.Proxy{"default/app-1-0": {Namespace: "default", Name: "app-1-0", IP: ip, Services: []string{"default/app-1"}, ServiceAccount: "test"}},
	}
	n := Node{ID: "app-1-0.default", PodNamespace: "default", PodName: "app-1-0", ListenIP: ip, OutboundIP: outIP}
	e := startEnvoy(t, snap, n, Options{}, app)
	if status, body := e.do(t, e.outbound, "/", [2]string{"service", "app-1"}); status != 200 {
		t.Fatalf("app-1: %d %q", status, body)
	}
	// startEnvoy's bootstrap leaves the workload to its default, the pod name.
	caller := map[string]string{"mesh_namespace": "default", "mesh_workload": "app-1-0", "envoy_cluster_name": "default/app-1"}
	callee := map[string]string{"mesh_namespace": "default", "mesh_workload": "app-1-0", "envoy_http_conn_manager_prefix": "inbound"}
	with := func(m map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	wants := []struct {
		name   string
		labels map[string]string
	}{
		{"envoy_cluster_upstream_rq_total", caller},
		{"envoy_cluster_upstream_rq_xx", with(caller, "envoy_response_code_class", "2")},
		{"envoy_cluster_upstream_rq_time_bucket", with(caller, "le", "+Inf")},
		{"envoy_http_downstream_rq_xx", with(callee, "envoy_response_code_class", "2")},
		{"envoy_http_downstream_rq_time_bucket", with(callee, "le", "+Inf")},
	}
	// Histograms reach the admin API at the next stats flush (5 s by default).
	var missing []string
	var page string
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := e.client.Get(e.admin + "/stats/prometheus")
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		_, err = b.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		page = b.String()
		missing = nil
		for _, w := range wants {
			if !hasSample(page, w.name, w.labels) {
				missing = append(missing, fmt.Sprintf("%s%v", w.name, w.labels))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Errorf("/stats/prometheus has no sample of value 1 for:\n\t%s\n%s", strings.Join(missing, "\n\t"), grepLines([]byte(page), "envoy_cluster_upstream_rq_total{"))
	}
}

// hasSample reports whether a Prometheus text page holds a sample of metric name whose
// labels include labels and whose value is 1.
func hasSample(page, name string, labels map[string]string) bool {
	for _, line := range strings.Split(page, "\n") {
		rest, ok := strings.CutPrefix(line, name+"{")
		if !ok {
			continue
		}
		ls, value, ok := strings.Cut(rest, "} ")
		if !ok || value != "1" {
			continue
		}
		have := map[string]string{}
		for _, kv := range strings.Split(ls, ",") {
			k, v, _ := strings.Cut(kv, "=")
			have[k] = strings.Trim(v, `"`)
		}
		all := true
		for k, v := range labels {
			all = all && have[k] == v
		}
		if all {
			return true
		}
	}
	return false
}

// workloadTagRE matches the workload tags every sidecar stat carries (stats.go), with
// the comma that separates them from the next label.
var workloadTagRE = regexp.MustCompile(`(` + StatsTagNamespace + `|` + StatsTagWorkload + `)="[^"]*",?`)

// withoutWorkloadTags removes the workload tags from Prometheus text, so that tests of
// other labels read the series as they would without them.
func withoutWorkloadTags(b []byte) []byte {
	b = workloadTagRE.ReplaceAll(b, nil)
	b = bytes.ReplaceAll(b, []byte(",}"), []byte("}"))
	return bytes.ReplaceAll(b, []byte("{}"), nil)
}
