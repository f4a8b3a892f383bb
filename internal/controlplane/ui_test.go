package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/browser"
	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/xdstest"
	"github.com/bearkong/bearkong/pkg/ads"
)

func uiGet(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestUIPage checks what the page at /debug/ is made of: one HTML document that loads
// nothing from anywhere (a Content-Security-Policy that allows only its inline script and
// style and fetches from the control plane), next to the /debug/ endpoints it reads,
// which keep answering as before; an unknown /debug/ path is still a 404.
func TestUIPage(t *testing.T) {
	h := start(t)

	resp, body := uiGet(t, h.http+"/debug/")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /debug/: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "connect-src 'self'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|<link|@import|url\(`).FindString(body); m != "" {
		t.Errorf("the page refers to something outside itself: %q", m)
	}
	for _, want := range []string{"<script>", "fetch(", "Proxies", "Diagnostics", "Services"} {
		if !strings.Contains(body, want) {
			t.Errorf("the page lacks %q", want)
		}
	}

	for _, path := range []string{"/debug/streams", "/debug/diagnostics", "/debug/signals", "/metrics", "/healthz"} {
		resp, body := uiGet(t, h.http+path)
		if resp.StatusCode != http.StatusOK || strings.Contains(body, "<html") {
			t.Errorf("GET %s: %d %.100q, want its own answer", path, resp.StatusCode, body)
		}
	}
	for _, path := range []string{"/debug/nope", "/debug/streams/x", "/debugger"} {
		if resp, _ := uiGet(t, h.http+path); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}

	var sig controlplane.Signals
	_, body = uiGet(t, h.http+"/debug/signals")
	if err := json.Unmarshal([]byte(body), &sig); err != nil {
		t.Fatal(err)
	}
	if sig.Prometheus != "" || sig.Services == nil || len(sig.Services) != 0 || sig.Error != "" {
		t.Errorf("/debug/signals without Prometheus: %s", body)
	}
}

// fakePrometheus answers Prometheus's instant-query API with canned vectors, picked by
// what the query asks for, and records the queries.
type fakePrometheus struct {
	mu      sync.Mutex
	queries []string
	answers map[string]string // substring of the query -> the "result" JSON
}

func (f *fakePrometheus) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("query")
	f.mu.Lock()
	f.queries = append(f.queries, q)
	f.mu.Unlock()
	if r.URL.Path != "/api/v1/query" {
		http.NotFound(w, r)
		return
	}
	result := "[]"
	for sub, ans := range f.answers {
		if strings.Contains(q, sub) {
			result = ans
		}
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"status":"success","data":{"resultType":"vector","result":%s}}`, result)
}

func uiSample(service, value string) string {
	return fmt.Sprintf(`{"metric":{"envoy_cluster_name":%q},"value":[1700000000.1,%q]}`, service, value)
}

// TestSignals checks /debug/signals against a Prometheus API: the three queries' answers
// joined per Service (an error ratio of 0 for a Service with no 5xx series, no p99 for a
// quantile of nothing), and an error, not a failure, when Prometheus does not answer.
func TestSignals(t *testing.T) {
	prom := &fakePrometheus{answers: map[string]string{
		"upstream_rq_total":  "[" + uiSample("default/app-1", "2") + "," + uiSample("default/app-2", "0.5") + "," + uiSample("default/idle", "0") + "]",
		"upstream_rq_xx":     "[" + uiSample("default/app-1", "0.5") + "]",
		"histogram_quantile": "[" + uiSample("default/app-1", "12.5") + "," + uiSample("default/app-2", "4") + "," + uiSample("default/idle", "NaN") + "]",
	}}
	srv := httptest.NewServer(prom)
	defer srv.Close()
	h := startOpts(t, testCertificates(t), func(o *controlplane.Options) { o.PrometheusURL = srv.URL })

	_, body := uiGet(t, h.http+"/debug/signals")
	var sig controlplane.Signals
	if err := json.Unmarshal([]byte(body), &sig); err != nil {
		t.Fatal(err)
	}
	f := func(v float64) *float64 { return &v }
	want := []controlplane.ServiceSignals{
		{Service: "default/app-1", RequestRate: 2, ErrorRatio: f(0.25), P99Ms: f(12.5)},
		{Service: "default/app-2", RequestRate: 0.5, ErrorRatio: f(0), P99Ms: f(4)},
		{Service: "default/idle", RequestRate: 0},
	}
	got, _ := json.Marshal(sig.Services)
	wantJSON, _ := json.Marshal(want)
	if string(got) != string(wantJSON) || sig.Error != "" || sig.Prometheus != srv.URL {
		t.Errorf("/debug/signals:\n%s\nwant services %s", body, wantJSON)
	}
	prom.mu.Lock()
	queries := strings.Join(prom.queries, "\n")
	prom.mu.Unlock()
	for _, q := range sig.Queries {
		if !strings.Contains(queries, q) {
			t.Errorf("query %q was not asked; asked:\n%s", q, queries)
		}
	}

	t.Run("Prometheus down", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		down := "http://" + l.Addr().String()
		l.Close()
		h := startOpts(t, testCertificates(t), func(o *controlplane.Options) { o.PrometheusURL = down })
		resp, body := uiGet(t, h.http+"/debug/signals")
		var sig controlplane.Signals
		if err := json.Unmarshal([]byte(body), &sig); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || sig.Error == "" || len(sig.Services) != 0 || sig.Prometheus != down {
			t.Errorf("/debug/signals with Prometheus down: %d %s", resp.StatusCode, body)
		}
	})
}

// TestUIInBrowser renders /debug/ in headless Chromium while three test proxies are
// connected: one rejects its listeners, one never ACKs, one is in sync. The page lists
// every proxy, the problems first: the NACKing one with the proxy's message, then the
// STALE one, then the one SYNCED on every type; it shows the diagnostics, says that no
// Prometheus is configured, and refreshes by itself. A missing Chromium is a failure
// (scripts/install-chromium.sh installs it); -short skips the test.
func TestUIInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Chromium: skipped with -short")
	}
	bin, err := browser.Find()
	if err != nil {
		t.Fatal(err)
	}
	h := start(t)
	const msg = "Error adding/updating listener(s) outbound: cannot bind <script>alert(1)</script>"
	h.connect(t, "app-1-0", "10.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	silent, err := xdstest.Dial(ctx, h.cp.XDSAddr(), node("app-3-0", "10.0.0.3"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(silent.Close)
	silent.NoAck = true
	if err := silent.Start(); err != nil {
		t.Fatal(err)
	}
	h.connect(t, "app-2-0", "10.0.0.2", func(typeURL string, _ []string) string {
		if typeURL == xdstest.ListenerType {
			return msg
		}
		return ""
	})
	h.waitSynced(t, "app-1-0.default")
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		nacked, stale := h.streams(t, "app-2-0.default"), h.streams(t, "app-3-0.default")
		if len(nacked) == 1 && nacked[0].Types.LDS.LastNack != nil && len(stale) == 1 && stale[0].Types.CDS.Status == ads.StaleStatus {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// 12 s of virtual time: the page loads, then refreshes twice (every 5 s).
	dom, err := browser.DumpDOM(ctx, bin, h.http+"/debug/", browser.Options{Budget: 12 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	page, err := browser.Parse(dom)
	if err != nil {
		t.Fatal(err)
	}
	if page.ByID("proxies-body") == nil {
		t.Fatalf("no proxy table in the page:\n%s", dom)
	}
	rows := page.ByID("proxies-body").Tag("tr")
	var order []string
	for _, r := range rows {
		order = append(order, r.Attr("data-node"))
	}
	if strings.Join(order, " ") != "app-2-0.default app-3-0.default app-1-0.default" {
		t.Fatalf("rows %q, want the NACKing proxy first, then the STALE one, then the SYNCED one\n%s", order, dom)
	}
	if n, _ := strconv.Atoi(page.Tag("body")[0].Attr("data-loaded")); n < 3 {
		t.Errorf("the page loaded its data %d times in 12 s, want 3 (every 5 s)", n)
	}
	cell := func(r *browser.Element, typ string) *browser.Element {
		for _, c := range r.Tag("td") {
			if c.Attr("data-type") == typ {
				return c
			}
		}
		t.Fatalf("row %s has no %s cell", r.Attr("data-node"), typ)
		return nil
	}
	if c := cell(rows[0], "lds"); !c.HasClass("NACKED") || !strings.Contains(c.Text(), "NACKED") {
		t.Errorf("app-2-0's LDS cell %q (class %q), want NACKED", c.Text(), c.Attr("class"))
	}
	if !rows[0].HasClass("problem") || !strings.Contains(rows[0].Text(), "LDS: "+msg) {
		t.Errorf("app-2-0's row %q (class %q), want a problem with LDS's NACK message as text", rows[0].Text(), rows[0].Attr("class"))
	}
	if c := cell(rows[1], "cds"); !c.HasClass("STALE") || !strings.Contains(c.Text(), "sent ") || !rows[1].HasClass("problem") {
		t.Errorf("app-3-0's CDS cell %q (class %q), want STALE and when it was sent", c.Text(), c.Attr("class"))
	}
	for _, r := range rows[2:] {
		for _, typ := range []string{"cds", "eds", "lds", "rds", "sds"} {
			if c := cell(r, typ); !c.HasClass("SYNCED") || !strings.Contains(c.Text(), "SYNCED") || !strings.Contains(c.Text(), "ago") {
				t.Errorf("%s's %s cell %q (class %q), want SYNCED and how long ago", r.Attr("data-node"), typ, c.Text(), c.Attr("class"))
			}
		}
		if got := r.Tag("td")[2].Text(); got != "default/"+strings.TrimSuffix(r.Attr("data-pod"), "-0") {
			t.Errorf("%s serves %q", r.Attr("data-node"), got)
		}
	}
	if d := page.ByID("diagnostics-body").Text(); !strings.Contains(d, "default/app-3") || !strings.Contains(d, "port 9090 targets 9090") {
		t.Errorf("diagnostics %q, want app-3's targetPort", d)
	}
	if s := page.ByID("signals-empty").Text(); !strings.Contains(s, "No Prometheus configured") {
		t.Errorf("signals %q, want \"No Prometheus configured\"", s)
	}
}
