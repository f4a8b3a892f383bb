package mesh

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	cases := []struct {
		name        string
		annotations map[string]string
		want        Policy
		wantReasons []string
		wantText    string
	}{
		{"no annotations: the default", nil, Policy{}, nil, ""},
		{"valid timeout", map[string]string{AnnotationTimeout: "3s"}, Policy{Timeout: 3 * time.Second}, nil, ""},
		{"spaces around a valid value", map[string]string{AnnotationTimeout: " 500ms "}, Policy{Timeout: 500 * time.Millisecond}, nil, ""},
		{"the maximum", map[string]string{AnnotationTimeout: "1h"}, Policy{Timeout: time.Hour}, nil, ""},
		{"not a duration is ignored as if absent", map[string]string{AnnotationTimeout: "banana"}, Policy{}, []string{ReasonInvalidAnnotation}, `annotation mesh-timeout="banana" is invalid: not a duration (use a Go duration such as 2s, 500ms or 1m30s); it is ignored, as if absent: no timeout`},
		{"negative", map[string]string{AnnotationTimeout: "-1s"}, Policy{}, []string{ReasonInvalidAnnotation}, "greater than 0s"},
		{"zero", map[string]string{AnnotationTimeout: "0s"}, Policy{}, []string{ReasonInvalidAnnotation}, "greater than 0s"},
		{"above the maximum", map[string]string{AnnotationTimeout: "61m"}, Policy{}, []string{ReasonInvalidAnnotation}, "at most 1h0m0s"},
		{"a number without a unit", map[string]string{AnnotationTimeout: "2"}, Policy{}, []string{ReasonInvalidAnnotation}, "not a duration"},
		{"unknown mesh annotation", map[string]string{"mesh-timout": "2s"}, Policy{}, []string{ReasonUnknownAnnotation}, "mesh-timeout); it is ignored"},
		{"outlier detection", map[string]string{AnnotationOutlierConsecutive5xx: "3", AnnotationOutlierInterval: "1s", AnnotationOutlierBaseEjectionTime: "30s", AnnotationOutlierMaxEjectionPercent: "50"},
			Policy{Outlier: OutlierDetection{Enabled: true, Consecutive5xx: 3, Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 50}}, nil, ""},
		{"one outlier annotation turns it on", map[string]string{AnnotationOutlierConsecutive5xx: "3"}, Policy{Outlier: OutlierDetection{Enabled: true, Consecutive5xx: 3}}, nil, ""},
		{"circuit breakers", map[string]string{AnnotationMaxConnections: "10", AnnotationMaxPendingRequests: "5", AnnotationMaxRequests: "20"},
			Policy{MaxConnections: 10, MaxPendingRequests: 5, MaxRequests: 20}, nil, ""},
		{"leading zeros", map[string]string{AnnotationMaxRequests: "007"}, Policy{MaxRequests: 7}, nil, ""},
		{"an invalid outlier annotation alone does not turn it on", map[string]string{AnnotationOutlierMaxEjectionPercent: "150"}, Policy{}, []string{ReasonInvalidAnnotation},
			"must be from 1 to 100; it is ignored, as if absent: no outlier detection, unless another mesh-outlier-* annotation turns it on (then Envoy's default, 10)"},
		{"an invalid outlier annotation next to a valid one: Envoy's default", map[string]string{AnnotationOutlierInterval: "soon", AnnotationOutlierConsecutive5xx: "3"},
			Policy{Outlier: OutlierDetection{Enabled: true, Consecutive5xx: 3}}, []string{ReasonInvalidAnnotation}, `mesh-outlier-interval="soon" is invalid: not a duration (use a Go duration such as 2s, 500ms or 1m30s); it is ignored, as if absent: Envoy's default (10s)`},
		{"a count that is not a number", map[string]string{AnnotationMaxRequests: "lots"}, Policy{}, []string{ReasonInvalidAnnotation}, "not a whole number; it is ignored, as if absent: Envoy's default (1024)"},
		{"a negative count", map[string]string{AnnotationOutlierConsecutive5xx: "-3"}, Policy{}, []string{ReasonInvalidAnnotation}, "not a whole number"},
		{"a count with a sign", map[string]string{AnnotationMaxRequests: "+3"}, Policy{}, []string{ReasonInvalidAnnotation}, "not a whole number"},
		{"a count beyond 32 bits", map[string]string{AnnotationMaxRequests: "4294967297"}, Policy{}, []string{ReasonInvalidAnnotation}, "not a whole number"},
		{"an invalid count is ignored, the others apply", map[string]string{AnnotationMaxRequests: "0", AnnotationMaxConnections: "9"}, Policy{MaxConnections: 9}, []string{ReasonInvalidAnnotation}, "from 1 to 1000000"},
		{"zero connections", map[string]string{AnnotationMaxConnections: "0"}, Policy{}, []string{ReasonInvalidAnnotation}, "from 1 to 1000000"},
		{"access log json", map[string]string{AnnotationAccessLog: "json"}, Policy{AccessLog: AccessLogJSON}, nil, ""},
		{"access log text", map[string]string{AnnotationAccessLog: "text"}, Policy{AccessLog: AccessLogText}, nil, ""},
		{"access log off", map[string]string{AnnotationAccessLog: "off"}, Policy{AccessLog: AccessLogOff}, nil, ""},
		{"access log in upper case is invalid", map[string]string{AnnotationAccessLog: "JSON"}, Policy{}, []string{ReasonInvalidAnnotation},
			`annotation mesh-access-log="JSON" is invalid: must be json, text or off (lower case); it is ignored, as if absent: the control plane's default (--default-access-log)`},
		{"access log with spaces is invalid", map[string]string{AnnotationAccessLog: " json"}, Policy{}, []string{ReasonInvalidAnnotation}, "must be json, text or off"},
		{"access log empty is invalid", map[string]string{AnnotationAccessLog: ""}, Policy{}, []string{ReasonInvalidAnnotation}, "must be json, text or off"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, diags := ParsePolicy("default", "app-1", c.annotations)
			if got != c.want {
				t.Errorf("policy %+v, want %+v", got, c.want)
			}
			if len(diags) != len(c.wantReasons) {
				t.Fatalf("diagnostics %+v, want reasons %v", diags, c.wantReasons)
			}
			for i, d := range diags {
				if d.Reason != c.wantReasons[i] || !d.Event || d.Name != "app-1" || d.Namespace != "default" || d.Kind != "Service" {
					t.Errorf("diagnostic %+v", d)
				}
				if !strings.Contains(d.Message, c.wantText) {
					t.Errorf("message %q does not say %q", d.Message, c.wantText)
				}
			}
			// ValidateAnnotation agrees with ParsePolicy, value by value.
			for k, v := range c.annotations {
				known, err := ValidateAnnotation(k, v)
				reported := false
				for _, d := range diags {
					reported = reported || strings.Contains(d.Message, "annotation "+k+"=")
				}
				if known != slices.Contains(KnownAnnotations(), k) || known && (err != nil) != reported {
					t.Errorf("ValidateAnnotation(%q, %q) = %t, %v; ParsePolicy reported it: %t", k, v, known, err, reported)
				}
			}
		})
	}
}

func TestValidateAnnotation(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		known, ok  bool
	}{
		{AnnotationMTLS, "STRICT", true, true},
		{AnnotationMTLS, " STRICT", true, false},
		{AnnotationTimeout, "1h", true, true},
		{AnnotationTimeout, "1h0m0.000000001s", true, false},
		{AnnotationOutlierMaxEjectionPercent, "100", true, true},
		{"mesh-timout", "2s", false, true},
	} {
		known, err := ValidateAnnotation(tc.key, tc.value)
		if known != tc.known || (err == nil) != tc.ok {
			t.Errorf("ValidateAnnotation(%q, %q) = %t, %v; want %t, ok %t", tc.key, tc.value, known, err, tc.known, tc.ok)
		}
	}
	if got := NamespaceAnnotations(); !slices.Equal(got, []string{AnnotationMTLS}) {
		t.Errorf("NamespaceAnnotations() = %v", got)
	}
}

func TestCheckTargetPorts(t *testing.T) {
	// pods resolves every named targetPort the way the selected pods declare it.
	pods := func(byName map[string][]PodPort) func(ServicePort) []PodPort {
		return func(p ServicePort) []PodPort { return byName[p.TargetPort] }
	}
	both := func(port int32) []PodPort {
		return []PodPort{{Pod: "app-3-0", Port: port}, {Pod: "app-3-1", Port: port}}
	}
	cases := []struct {
		name  string
		ports []ServicePort
		named map[string][]PodPort
		want  []string // reasons
		text  []string // in every message, in this order
	}{
		{"the sidecar's inbound port", []ServicePort{{Port: 9090, TargetPort: "8000"}}, nil, nil, nil},
		{"unset targetPort defaults to the port", []ServicePort{{Port: 8000}}, nil, nil, nil},
		{"the app's port bypasses the sidecar", []ServicePort{{Port: 9090, TargetPort: "9090"}}, nil, []string{ReasonTargetPortBypasses}, []string{"skip the sidecar"}},
		{"a port nobody listens on", []ServicePort{{Port: 9090, TargetPort: "5080"}}, nil, []string{ReasonTargetPortMisses}, []string{"port 9090 targets 5080"}},
		{"one diagnostic per port", []ServicePort{{Port: 80, TargetPort: "5080"}, {Port: 81}}, nil, []string{ReasonTargetPortMisses, ReasonTargetPortMisses}, []string{"reach nothing"}},
		{"a named port with no pods to resolve it is not checked", []ServicePort{{Port: 9090, TargetPort: "http"}}, nil, nil, nil},
		{"a named port on the sidecar", []ServicePort{{Port: 9090, TargetPort: "inbound"}}, map[string][]PodPort{"inbound": both(8000)}, nil, nil},
		{"a named port on the app's port bypasses the sidecar", []ServicePort{{Port: 9090, TargetPort: "http"}},
			map[string][]PodPort{"http": both(9090)}, []string{ReasonTargetPortBypasses},
			[]string{`port 9090 targets "http"`, "9090 in pod app-3-0 and 1 more", "skip the sidecar", "mesh traffic is not affected"}},
		{"a named port elsewhere misses the sidecar", []ServicePort{{Port: 9090, TargetPort: "web"}},
			map[string][]PodPort{"web": {{Pod: "app-3-0", Port: 5080}}}, []string{ReasonTargetPortMisses},
			[]string{`port 9090 targets "web"`, "5080 in pod app-3-0,", "reach nothing"}},
		{"a named port that a pod does not declare misses it", []ServicePort{{Port: 9090, TargetPort: "web"}},
			map[string][]PodPort{"web": {{Pod: "app-3-0", Port: 8000}, {Pod: "app-3-1"}}}, []string{ReasonTargetPortMisses},
			[]string{`port 9090 targets "web"`, "pod app-3-1 declares no container port of that name", "reach nothing"}},
		{"pods that disagree: one diagnostic per outcome", []ServicePort{{Port: 9090, TargetPort: "http"}},
			map[string][]PodPort{"http": {{Pod: "new-0", Port: 8000}, {Pod: "old-0", Port: 9090}, {Pod: "old-1", Port: 9090}, {Pod: "odd-0", Port: 5080}}},
			[]string{ReasonTargetPortMisses, ReasonTargetPortBypasses}, []string{`targets "http"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var named func(ServicePort) []PodPort
			if c.named != nil {
				named = pods(c.named)
			}
			diags := CheckTargetPorts(&Service{Namespace: "default", Name: "app-3", Ports: c.ports}, named)
			if len(diags) != len(c.want) {
				t.Fatalf("diagnostics %+v, want %v", diags, c.want)
			}
			for i, d := range diags {
				if d.Reason != c.want[i] || d.Event || d.Kind != "Service" || d.Name != "app-3" || !strings.Contains(d.Message, "mesh traffic is not affected") {
					t.Errorf("diagnostic %+v", d)
				}
				rest := d.Message
				for _, s := range c.text {
					i := strings.Index(rest, s)
					if i < 0 {
						t.Errorf("message %q does not say %q (in order)", d.Message, s)
						break
					}
					rest = rest[i+len(s):]
				}
			}
		})
	}
}

func TestCheckPolicyConflicts(t *testing.T) {
	svc := func(name string, timeout time.Duration) *Service {
		return &Service{Namespace: "a", Name: name, Policy: Policy{Timeout: timeout}}
	}
	proxy := func(name string, services ...string) *Proxy {
		return &Proxy{Namespace: "a", Name: name, Services: services}
	}
	cases := []struct {
		name     string
		services []*Service
		proxies  []*Proxy
		want     []string // "service: text", one per diagnostic, sorted by service
	}{
		{"one Service per pod", []*Service{svc("app-1", time.Second), svc("web", 2*time.Second)},
			[]*Proxy{proxy("p1", "a/app-1"), proxy("p2", "a/web")}, nil},
		{"the same timeout on a shared pod", []*Service{svc("app-1", time.Second), svc("web", time.Second)},
			[]*Proxy{proxy("p1", "a/app-1", "a/web")}, nil},
		{"different timeouts on a shared pod: reported on both", []*Service{svc("app-1", 2*time.Second), svc("web", time.Second)},
			[]*Proxy{proxy("p1", "a/app-1", "a/web"), proxy("p2", "a/app-1")},
			[]string{
				"app-1: Service a/web (mesh-timeout 1s) selects some of the same pods as this Service (mesh-timeout 2s)",
				"web: Service a/app-1 (mesh-timeout 2s) selects some of the same pods as this Service (mesh-timeout 1s)",
			}},
		{"a timeout and none", []*Service{svc("app-1", 0), svc("web", 3*time.Second)},
			[]*Proxy{proxy("p1", "a/app-1", "a/web")},
			[]string{
				"app-1: Service a/web (mesh-timeout 3s) selects some of the same pods as this Service (no mesh-timeout); a pod's inbound route",
				"web: Service a/app-1 (no mesh-timeout) selects",
			}},
		{"three Services: each names the others it conflicts with, and the shortest", []*Service{svc("a1", time.Second), svc("a2", 2*time.Second), svc("a3", 2*time.Second)},
			[]*Proxy{proxy("p1", "a/a1", "a/a2"), proxy("p2", "a/a2", "a/a3")},
			[]string{
				"a1: Service a/a2 (mesh-timeout 2s) selects",
				"a2: Service a/a1 (mesh-timeout 1s) selects some of the same pods as this Service (mesh-timeout 2s); a pod's inbound route serves every Service that selects it and cannot tell their requests apart, so it applies the shortest mesh-timeout, 1s,",
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			snap := &Snapshot{Services: c.services, Proxies: map[string]*Proxy{}}
			for _, p := range c.proxies {
				snap.Proxies[p.Key()] = p
			}
			diags := CheckPolicyConflicts(snap)
			if len(diags) != len(c.want) {
				t.Fatalf("diagnostics %+v, want %d", diags, len(c.want))
			}
			for i, d := range diags {
				name, text, _ := strings.Cut(c.want[i], ": ")
				if d.Name != name || d.Namespace != "a" || d.Kind != "Service" || d.Reason != ReasonConflictingPolicies || !d.Event || !strings.Contains(d.Message, text) {
					t.Errorf("diagnostic %+v, want one on %s saying %q", d, name, text)
				}
			}
		})
	}
}

func TestParseMTLSMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want MTLSMode
		ok   bool
	}{
		{"STRICT", MTLSStrict, true},
		{"PERMISSIVE", MTLSPermissive, true},
		{"DISABLE", MTLSDisable, true},
		{"", "", false},
		{"strict", "", false},
		{" STRICT", "", false},
		{"DISABLED", "", false},
		{"OFF", "", false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseMTLSMode(tc.in)
			if got != tc.want || (err == nil) != tc.ok {
				t.Errorf("ParseMTLSMode(%q) = %q, %v; want %q, ok %t", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
	// mesh-mtls is read by discovery: ParsePolicy neither reports it nor parses it.
	if _, diags := ParsePolicy("a", "s", map[string]string{AnnotationMTLS: "bogus"}); len(diags) != 0 {
		t.Errorf("ParsePolicy reported %+v for mesh-mtls", diags)
	}
}
