package translate

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// TestAccessLogConfig checks where the access-log format lands, per annotation and
// control-plane default: the Service's cluster metadata (read by the callers' outbound
// loggers) and the inbound loggers of its pods; and that a mesh without access logs
// gets the config it had before (no metadata, no loggers, listeners shared by address).
func TestAccessLogConfig(t *testing.T) {
	snapWith := func(app1, app2 mesh.AccessLogFormat) *mesh.Snapshot {
		s := sampleSnapshot()
		s.Services[0].Policy.AccessLog = app1
		s.Services[1].Policy.AccessLog = app2
		// Same mode as app-1-a, so that only access logs can keep them apart.
		s.Proxies["default/app-2-a"].MTLS = mesh.MTLSStrict
		return s
	}
	for _, tc := range []struct {
		name       string
		app1, app2 mesh.AccessLogFormat
		def        mesh.AccessLogFormat
		// wantCluster is the format each Service's cluster carries ("" for none);
		// wantInbound the number of loggers bearkong adds to app-1-a's inbound listener;
		// wantOutbound to its outbound listener.
		wantCluster                []string
		wantInbound, wantOutbound  int
		wantSharedWithOtherService bool
	}{
		{"no access logs", "", "", "", []string{"", "", ""}, 0, 0, true},
		{"default off, one Service json", "", mesh.AccessLogJSON, "", []string{"", "json", ""}, 0, 2, false},
		{"the caller itself logs text", mesh.AccessLogText, "", "", []string{"text", "", ""}, 1, 2, false},
		{"default json, one Service off", mesh.AccessLogOff, "", mesh.AccessLogJSON, []string{"", "json", "json"}, 0, 2, false},
		{"explicit off everywhere", mesh.AccessLogOff, mesh.AccessLogOff, "", []string{"", "", ""}, 0, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr, err := NewWithOptions(snapWith(tc.app1, tc.app2), Options{DefaultAccessLog: tc.def})
			if err != nil {
				t.Fatal(err)
			}
			p := mustProxy(t, tr, nodeApp1A)
			for i, name := range []string{"app-1.default", "app-2.default", "app-3.team-b"} {
				r, ok := p.Views[resource.Cluster][0].Get(name)
				if !ok {
					t.Fatalf("no cluster %s", name)
				}
				c := unpack(t, r.Any).(*clusterv3.Cluster)
				got := c.GetMetadata().GetFilterMetadata()[AccessLogMetadataNamespace].GetFields()[accessLogMetadataKey].GetStringValue()
				if got != tc.wantCluster[i] {
					t.Errorf("cluster %s access log %q, want %q", name, got, tc.wantCluster[i])
				}
			}
			loggers := func(name string) int {
				r, ok := p.Views[resource.Listener][0].Get(name)
				if !ok {
					t.Fatalf("no listener %s", name)
				}
				n := 0
				for _, l := range hcmOf(t, unpack(t, r.Any).(*listenerv3.Listener)).GetAccessLog() {
					// The authorization shadow log is the one with an OrFilter.
					if l.GetName() == "envoy.access_loggers.stdout" && l.GetFilter().GetOrFilter() == nil {
						n++
					}
				}
				return n
			}
			if got := loggers(InboundListenerName); got != tc.wantInbound {
				t.Errorf("inbound access loggers %d, want %d", got, tc.wantInbound)
			}
			if got := loggers(OutboundListenerName); got != tc.wantOutbound {
				t.Errorf("outbound access loggers %d, want %d", got, tc.wantOutbound)
			}
			// app-2-a listens on the same address as app-1-a; it shares its listeners
			// only while the lines, which name the proxy's Services, are off.
			other := mustProxy(t, tr, nodeApp2A)
			shared := other.Views[resource.Listener][0] == p.Views[resource.Listener][0]
			if shared != tc.wantSharedWithOtherService {
				t.Errorf("listeners shared with app-2-a: %t, want %t", shared, tc.wantSharedWithOtherService)
			}
		})
	}
}
