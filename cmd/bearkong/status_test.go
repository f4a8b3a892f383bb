package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func at(ago time.Duration) *time.Time {
	t := now.Add(-ago)
	return &t
}

func synced(ago time.Duration) typeInfo {
	return typeInfo{Status: "SYNCED", VersionSent: "v1", VersionAcked: "v1", SentAt: at(ago), AckedAt: at(ago)}
}

// stream is a proxy SYNCED on every type 1m ago, with mod applied.
func stream(node string, connected time.Duration, mod func(map[string]typeInfo)) *streamInfo {
	ts := map[string]typeInfo{"cds": synced(time.Minute), "eds": synced(time.Minute), "lds": synced(time.Minute), "srds": synced(time.Minute), "rds": synced(time.Minute), "sds": synced(time.Minute)}
	if mod != nil {
		mod(ts)
	}
	pod, ns, _ := strings.Cut(node, ".")
	app := pod[:strings.LastIndexByte(pod, '-')]
	return &streamInfo{Node: node, Serves: []string{ns + "/" + app}, ConnectedAt: now.Add(-connected), Types: ts}
}

func TestRenderStatus(t *testing.T) {
	nacked := stream("app-3-1.default", time.Hour, func(ts map[string]typeInfo) {
		ts["rds"] = typeInfo{Status: "NACKED", VersionSent: "v2", VersionAcked: "v1", LastNack: &nackInfo{Version: "v2", Message: "route: invalid regex\nsecond line", At: now.Add(-12 * time.Second)}}
	})
	stale := stream("app-2-0.default", time.Hour, func(ts map[string]typeInfo) {
		ts["eds"] = typeInfo{Status: "STALE", VersionSent: "v2", VersionAcked: "v1", SentAt: at(3 * time.Second)}
	})
	notSent := stream("app-1-0.other", time.Hour, func(ts map[string]typeInfo) { ts["sds"] = typeInfo{Status: "NOT_SENT"} })
	ss := []*streamInfo{stream("app-2-1.default", time.Hour, nil), notSent, stream("app-1-0.default", time.Hour, nil), stale, nacked}
	sortStreams(ss)
	var out bytes.Buffer
	renderStatus(&out, ss, now, false)
	want := `POD      NAMESPACE  SERVICES  CDS        EDS        LDS        SRDS       RDS         SDS
app-3-1  default    app-3     SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  NACKED 12s  SYNCED 1m
app-2-0  default    app-2     SYNCED 1m  STALE 3s   SYNCED 1m  SYNCED 1m  SYNCED 1m   SYNCED 1m
app-1-0  other      app-1     SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m   NOT_SENT
app-1-0  default    app-1     SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m   SYNCED 1m
app-2-1  default    app-2     SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m   SYNCED 1m

Rejected config (last NACK of each NACKed type):
  app-3-1.default rds, 12s ago, version v2:
    route: invalid regex
    second line
`
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}

	t.Run("protocol, replicas and types this binary does not know", func(t *testing.T) {
		s := stream("app-1-0.default", time.Hour, func(ts map[string]typeInfo) { ts["vhds"] = synced(2 * time.Second) })
		s.Protocol, s.server = "delta", "http://127.0.0.1:9000"
		var out bytes.Buffer
		renderStatus(&out, []*streamInfo{s}, now, true)
		want := `POD      NAMESPACE  SERVICES  CDS        EDS        LDS        SRDS       RDS        SDS        VHDS       PROTOCOL  REPLICA
app-1-0  default    app-1     SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 1m  SYNCED 2s  delta     http://127.0.0.1:9000
`
		if out.String() != want {
			t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
		}
	})
}

func TestRenderDetail(t *testing.T) {
	s := stream("app-3-1.default", time.Hour, func(ts map[string]typeInfo) {
		ts["eds"] = typeInfo{Status: "SYNCED", VersionSent: "v1", VersionAcked: "v1", SentAt: at(time.Minute), AckedAt: at(time.Minute), Pushes: 2, Acks: 2, Subscribed: []string{"a.default", "b.default", "c.default", "d.default"}}
		ts["rds"] = typeInfo{Status: "NACKED", VersionSent: "v2", VersionAcked: "v1", SentAt: at(12 * time.Second), Nacks: 1, LastNack: &nackInfo{Version: "v2", Message: "bad", At: now.Add(-12 * time.Second)}}
	})
	s.ID, s.Peer, s.server = 7, "127.0.1.5:40000", "http://127.0.0.1:9000"
	var out bytes.Buffer
	renderDetail(&out, s, now)
	for _, want := range []string{
		"Pod:            app-3-1\n",
		"Namespace:      default\n",
		"Services:       default/app-3\n",
		"Control plane:  http://127.0.0.1:9000, stream 7 from 127.0.1.5:40000, connected 1h0m ago\n",
		"eds   SYNCED  v1            v1             1m ago   1m ago  2       2     0      a.default,b.default,c.default and 1 more\n",
		"rds   NACKED  v2            v1             12s ago  -       0       0     1      -\n",
		"Last NACK of rds (in force), 12s ago, version v2:\n  bad\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("detail lacks %q:\n%s", want, out.String())
		}
	}
}

// streamsServer is a control plane's /debug/streams serving body.
func streamsServer(t *testing.T, body string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/debug/streams" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestMergeReplicas runs `bearkong status` against two replicas: every proxy shows once,
// from the replica of its newest stream, and a replica that does not answer is a
// warning while another one does.
func TestMergeReplicas(t *testing.T) {
	ts := func(status string) string {
		return fmt.Sprintf(`{"status":%q,"version_sent":"v","version_acked":"v","acked_at":%q}`, status, now.Format(time.RFC3339))
	}
	types := func(rds string) string {
		return fmt.Sprintf(`{"cds":%s,"eds":%s,"lds":%s,"rds":%s,"sds":%s}`, ts("SYNCED"), ts("SYNCED"), ts("SYNCED"), ts(rds), ts("SYNCED"))
	}
	// app-2-0 moved from replica a (older stream, NACKED) to replica b (newer, SYNCED).
	a := streamsServer(t, fmt.Sprintf(`{"streams":[
		{"id":1,"node":"app-1-0.default","serves":["default/app-1"],"connected_at":"2026-12-01T09:00:00Z","types":%s},
		{"id":2,"node":"app-2-0.default","serves":["default/app-2"],"connected_at":"2026-12-01T09:00:00Z","types":%s}],"total":2}`, types("SYNCED"), types("NACKED")))
	b := streamsServer(t, fmt.Sprintf(`{"streams":[
		{"id":9,"node":"app-2-0.default","serves":["default/app-2"],"connected_at":"2026-12-01T09:30:00Z","protocol":"sotw","types":%s},
		{"id":10,"node":"app-3-0.default","serves":["default/app-3"],"connected_at":"2026-12-01T09:00:00Z","types":%s}],"total":2}`, types("SYNCED"), types("SYNCED")))
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"status", "--server", a.URL + "," + b.URL}, &stdout, &stderr); err != nil {
		t.Fatalf("status: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("want a header and 3 proxies:\n%s", stdout.String())
	}
	for i, want := range []string{"app-1-0 " + a.URL, "app-2-0 " + b.URL, "app-3-0 " + b.URL} {
		f := strings.Fields(lines[i+1])
		if got := f[0] + " " + f[len(f)-1]; got != want {
			t.Errorf("row %d: %s, want %s", i+1, got, want)
		}
	}
	if strings.Contains(stdout.String(), "NACKED") || !strings.Contains(lines[0], "PROTOCOL") {
		t.Errorf("app-2-0's old stream shows, or no protocol column:\n%s", stdout.String())
	}

	t.Run("a replica down", func(t *testing.T) {
		down := httptest.NewServer(http.NotFoundHandler())
		down.Close()
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), []string{"status", "--server", down.URL + "," + b.URL}, &stdout, &stderr); err != nil {
			t.Fatalf("status: %v", err)
		}
		if !strings.Contains(stderr.String(), "warning: GET "+down.URL) || !strings.Contains(stdout.String(), "app-3-0") {
			t.Errorf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		err := run(context.Background(), []string{"status", "--server", down.URL}, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), "GET "+down.URL+"/debug/streams") {
			t.Errorf("every replica down: %v", err)
		}
	})
}

func TestFindProxy(t *testing.T) {
	ss := []*streamInfo{stream("app-1-0.default", 0, nil), stream("app-1-0.other", 0, nil), stream("app-2-0.default", 0, nil)}
	for _, tc := range []struct{ arg, want, err string }{
		{"app-2-0", "app-2-0.default", ""},
		{"app-1-0.other", "app-1-0.other", ""},
		{"app-1-0", "", `"app-1-0" is ambiguous: app-1-0.default, app-1-0.other`},
		{"app-9-0", "", `no proxy "app-9-0" is connected`},
	} {
		got, err := findProxy(ss, tc.arg)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("findProxy(%q) = %q, %v; want %q, %q", tc.arg, got, err, tc.want, tc.err)
		}
	}
}

func TestParseInterspersed(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"status", "a", "b", "--server", "127.0.0.1:1"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), `at most one pod, got ["a" "b"]`) {
		t.Errorf("two pods, flags after them: %v", err)
	}
}
