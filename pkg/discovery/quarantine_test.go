package discovery

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// qsnap builds a snapshot: services "a/<name>" with a policy, and routes attached to
// "a/web" named by their HTTPRoute ("a/<route>") and a path that stands for their rules.
func qsnap(policies map[string]mesh.Policy, routes map[string]string) *mesh.Snapshot {
	s := &mesh.Snapshot{Proxies: map[string]*mesh.Proxy{}}
	names := []string{"web"}
	for n := range policies {
		if n != "web" {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		svc := &mesh.Service{Namespace: "a", Name: n, Policy: policies[n]}
		if n == "web" {
			keys := make([]string, 0, len(routes))
			for k := range routes {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				svc.Routes = append(svc.Routes, mesh.RouteRule{Route: "a/" + k, Path: mesh.PathMatch{Type: "RegularExpression", Value: routes[k]}})
			}
		}
		s.Services = append(s.Services, svc)
	}
	return s
}

func refs(hs []*hold) string {
	var out []string
	for _, h := range hs {
		out = append(out, h.ref.String())
	}
	return fmt.Sprint(out)
}

func TestSuspects(t *testing.T) {
	timeout := mesh.Policy{Timeout: 2 * time.Second}
	outlier := mesh.Policy{Outlier: mesh.OutlierDetection{Enabled: true, Consecutive5xx: 3}}
	base := qsnap(map[string]mesh.Policy{"api": {}}, map[string]string{"r1": "/a"})
	for _, tc := range []struct {
		name    string
		part    mesh.ConfigPart
		ok, bad *mesh.Snapshot
		want    string
	}{
		{"a new route", mesh.RoutesPart, base, qsnap(map[string]mesh.Policy{"api": {}}, map[string]string{"r1": "/a", "r2": "/b"}), "[HTTPRoute a/r2]"},
		{"a changed route", mesh.RoutesPart, base, qsnap(map[string]mesh.Policy{"api": {}}, map[string]string{"r1": "/c"}), "[HTTPRoute a/r1]"},
		{"a deleted route is no suspect", mesh.RoutesPart, base, qsnap(map[string]mesh.Policy{"api": {}}, nil), "[]"},
		{"several suspects in one change", mesh.RoutesPart, base,
			qsnap(map[string]mesh.Policy{"api": timeout}, map[string]string{"r1": "/c", "r2": "/b"}), "[Service a/api HTTPRoute a/r1 HTTPRoute a/r2]"},
		{"mesh-timeout is a route policy", mesh.RoutesPart, base, qsnap(map[string]mesh.Policy{"api": timeout}, map[string]string{"r1": "/a"}), "[Service a/api]"},
		{"mesh-timeout is no cluster policy", mesh.ClustersPart, base, qsnap(map[string]mesh.Policy{"api": timeout}, map[string]string{"r1": "/a"}), "[]"},
		{"outlier detection is a cluster policy", mesh.ClustersPart, base, qsnap(map[string]mesh.Policy{"api": outlier}, map[string]string{"r1": "/b"}), "[Service a/api]"},
		{"never accepted: every contributor", mesh.RoutesPart, nil, qsnap(map[string]mesh.Policy{"api": timeout}, map[string]string{"r1": "/a"}), "[Service a/api HTTPRoute a/r1]"},
		{"an endpoint change names nobody", mesh.RoutesPart, base, base, "[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fmt.Sprint(suspects(tc.part, tc.ok, tc.bad)); got != tc.want {
				t.Fatalf("suspects = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestQuarantine plays NACKs and ACKs against the quarantine step by step: the config
// each proxy accepted or rejected, and what must be held after each step.
func TestQuarantine(t *testing.T) {
	routes := func(rs ...string) map[string]string {
		m := map[string]string{}
		for _, r := range rs {
			m[r] = "/" + r
		}
		return m
	}
	none := map[string]mesh.Policy{}
	type step struct {
		part     mesh.ConfigPart // 0: routes
		nack     bool            // else an ACK
		ok, bad  *mesh.Snapshot
		acked    *mesh.Snapshot
		held     string // confirmed and suspects, sorted
		probe    string
		wantAcks bool
	}
	good := qsnap(none, routes("good"))
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"one suspect is quarantined at once", []step{
			{nack: true, ok: good, bad: qsnap(none, routes("good", "bad")), held: "[HTTPRoute a/bad confirmed]"},
			// Late NACKs of the same config from other proxies change nothing.
			{nack: true, ok: good, bad: qsnap(none, routes("good", "bad")), held: "[HTTPRoute a/bad confirmed]"},
			// Later configs without it are accepted: nothing to do.
			{acked: qsnap(none, routes("good", "other")), held: "[HTTPRoute a/bad confirmed]"},
		}},
		{"several suspects: held, re-admitted one at a time, only the culprit stays out", []step{
			{nack: true, ok: good, bad: qsnap(none, routes("good", "x1", "x2", "x3")),
				held: "[HTTPRoute a/x1 suspect HTTPRoute a/x2 suspect HTTPRoute a/x3 suspect]", wantAcks: true},
			// An ACK of a config that still held them (sent before the NACK) does not count.
			{acked: qsnap(none, routes("good", "x1")), held: "[HTTPRoute a/x1 suspect HTTPRoute a/x2 suspect HTTPRoute a/x3 suspect]", wantAcks: true},
			// The config without them is accepted: x1 is re-admitted.
			{acked: good, held: "[HTTPRoute a/x2 suspect HTTPRoute a/x3 suspect]", probe: "HTTPRoute a/x1", wantAcks: true},
			// The config with x1 is accepted: x1 is innocent, x2 goes on trial.
			{acked: qsnap(none, routes("good", "x1")), held: "[HTTPRoute a/x3 suspect]", probe: "HTTPRoute a/x2", wantAcks: true},
			// The config with x2 is rejected: x2 alone changed, it is the culprit.
			{nack: true, ok: qsnap(none, routes("good", "x1")), bad: qsnap(none, routes("good", "x1", "x2")),
				held: "[HTTPRoute a/x2 confirmed HTTPRoute a/x3 suspect]", wantAcks: true},
			// The config without x2 is accepted: x3 on trial, then innocent.
			{acked: qsnap(none, routes("good", "x1")), held: "[HTTPRoute a/x2 confirmed]", probe: "HTTPRoute a/x3", wantAcks: true},
			{acked: qsnap(none, routes("good", "x1", "x3")), held: "[HTTPRoute a/x2 confirmed]"},
		}},
		{"the suspect on trial and another change rejected together: both held back", []step{
			{nack: true, ok: good, bad: qsnap(none, routes("good", "x1", "x2")),
				held: "[HTTPRoute a/x1 suspect HTTPRoute a/x2 suspect]", wantAcks: true},
			{acked: good, held: "[HTTPRoute a/x2 suspect]", probe: "HTTPRoute a/x1", wantAcks: true},
			// Meanwhile a user adds y: the config with x1 and y is rejected.
			{nack: true, ok: good, bad: qsnap(none, routes("good", "x1", "y")),
				held: "[HTTPRoute a/x1 suspect HTTPRoute a/x2 suspect HTTPRoute a/y suspect]", wantAcks: true},
			// Without all three, accepted: x1 goes on trial again, first.
			{acked: good, held: "[HTTPRoute a/x2 suspect HTTPRoute a/y suspect]", probe: "HTTPRoute a/x1", wantAcks: true},
			{acked: qsnap(none, routes("good", "x1")), held: "[HTTPRoute a/y suspect]", probe: "HTTPRoute a/x2", wantAcks: true},
			{acked: qsnap(none, routes("good", "x1", "x2")), held: "[]", probe: "HTTPRoute a/y", wantAcks: true},
			{nack: true, ok: qsnap(none, routes("good", "x1", "x2")), bad: qsnap(none, routes("good", "x1", "x2", "y")), held: "[HTTPRoute a/y confirmed]"},
		}},
		{"a proxy that never accepted routes suspects every route", []step{
			{nack: true, bad: qsnap(none, routes("good", "bad")), held: "[HTTPRoute a/bad suspect HTTPRoute a/good suspect]", wantAcks: true},
			{acked: qsnap(none, nil), held: "[HTTPRoute a/good suspect]", probe: "HTTPRoute a/bad", wantAcks: true},
			{nack: true, ok: qsnap(none, nil), bad: qsnap(none, routes("bad")), held: "[HTTPRoute a/bad confirmed HTTPRoute a/good suspect]", wantAcks: true},
			{acked: qsnap(none, nil), held: "[HTTPRoute a/bad confirmed]", probe: "HTTPRoute a/good", wantAcks: true},
			{acked: qsnap(none, routes("good")), held: "[HTTPRoute a/bad confirmed]"},
		}},
		{"a Service's cluster policy keeps its last good value", []step{
			{part: mesh.ClustersPart, nack: true, ok: qsnap(map[string]mesh.Policy{"api": {MaxConnections: 5}}, nil), bad: qsnap(map[string]mesh.Policy{"api": {MaxConnections: 7}}, nil),
				held: "[Service a/api confirmed]"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newQuarantine()
			for i, s := range tc.steps {
				part := s.part
				if part == 0 {
					part = mesh.RoutesPart
				}
				if s.nack {
					q.reject(part, s.ok, s.bad, "envoy says no", func(*hold) {})
				} else {
					q.accept(part, s.acked)
				}
				var held []string
				for _, h := range q.view() {
					state := "suspect"
					if h.confirmed {
						state = "confirmed"
					}
					held = append(held, h.ref.String()+" "+state)
				}
				slices.Sort(held)
				probe := ""
				if q.probe != nil {
					probe = q.probe.ref.String()
				}
				if got := fmt.Sprint(held); got != s.held || probe != s.probe || q.wantAcks.Load() != s.wantAcks {
					t.Fatalf("step %d: held %s, probe %q, wantAcks %v; want %s, %q, %v", i, got, probe, q.wantAcks.Load(), s.held, s.probe, s.wantAcks)
				}
			}
		})
	}
}

func TestQuarantineLastGoodPolicyAndLift(t *testing.T) {
	q := newQuarantine()
	ok := qsnap(map[string]mesh.Policy{"api": {Timeout: time.Second, MaxConnections: 5}}, nil)
	bad := qsnap(map[string]mesh.Policy{"api": {Timeout: time.Second, MaxConnections: 7}}, nil)
	v := q.reject(mesh.ClustersPart, ok, bad, "bad cluster", func(h *hold) { h.annotations = map[string]string{"mesh-max-connections": "7"} })
	if refs(v.confirmed) != "[Service a/api]" {
		t.Fatalf("confirmed %s", refs(v.confirmed))
	}
	h := q.view()[ObjectRef{KindService, "a", "api"}]
	// The cluster part comes from the last good policy, the route part stays as parsed.
	got := withPolicyPart(h.part, mesh.Policy{Timeout: 3 * time.Second, MaxConnections: 7}, h.lastGood)
	if got != (mesh.Policy{Timeout: 3 * time.Second, MaxConnections: 5}) {
		t.Fatalf("policy in force: %+v", got)
	}
	if lifted := q.lift(func(*hold) bool { return false }); len(lifted) != 0 {
		t.Fatalf("lifted %s while nothing changed", refs(lifted))
	}
	if lifted := q.lift(func(*hold) bool { return true }); refs(lifted) != "[Service a/api]" || len(q.view()) != 0 {
		t.Fatalf("lifted %s, still held %d", refs(lifted), len(q.view()))
	}
}
