package mesh

import (
	"strings"
	"testing"
	"time"
)

func TestParsePolicy(t *testing.T) {
	prev := Policy{Timeout: 2 * time.Second, MaxRequests: 7}
	keepTimeout := Policy{Timeout: 2 * time.Second}
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
		{"not a duration keeps the last good value", map[string]string{AnnotationTimeout: "banana"}, keepTimeout, []string{ReasonInvalidAnnotation}, "not a duration"},
		{"negative", map[string]string{AnnotationTimeout: "-1s"}, keepTimeout, []string{ReasonInvalidAnnotation}, "greater than 0s"},
		{"zero", map[string]string{AnnotationTimeout: "0s"}, keepTimeout, []string{ReasonInvalidAnnotation}, "greater than 0s"},
		{"above the maximum", map[string]string{AnnotationTimeout: "61m"}, keepTimeout, []string{ReasonInvalidAnnotation}, "at most 1h0m0s"},
		{"a number without a unit", map[string]string{AnnotationTimeout: "2"}, keepTimeout, []string{ReasonInvalidAnnotation}, "not a duration"},
		{"unknown mesh annotation", map[string]string{"mesh-timout": "2s"}, Policy{}, []string{ReasonUnknownAnnotation}, "mesh-timeout); it is ignored"},
		{"outlier detection", map[string]string{AnnotationOutlierConsecutive5xx: "3", AnnotationOutlierInterval: "1s", AnnotationOutlierBaseEjectionTime: "30s", AnnotationOutlierMaxEjectionPercent: "50"},
			Policy{Outlier: OutlierDetection{Enabled: true, Consecutive5xx: 3, Interval: time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 50}}, nil, ""},
		{"one outlier annotation turns it on", map[string]string{AnnotationOutlierConsecutive5xx: "3"}, Policy{Outlier: OutlierDetection{Enabled: true, Consecutive5xx: 3}}, nil, ""},
		{"circuit breakers", map[string]string{AnnotationMaxConnections: "10", AnnotationMaxPendingRequests: "5", AnnotationMaxRequests: "20"},
			Policy{MaxConnections: 10, MaxPendingRequests: 5, MaxRequests: 20}, nil, ""},
		{"a percent above 100", map[string]string{AnnotationOutlierMaxEjectionPercent: "150"}, Policy{}, []string{ReasonInvalidAnnotation}, "from 1 to 100"},
		{"a count that is not a number", map[string]string{AnnotationMaxRequests: "lots"}, Policy{MaxRequests: 7}, []string{ReasonInvalidAnnotation}, "not a whole number"},
		{"a negative count", map[string]string{AnnotationOutlierConsecutive5xx: "-3"}, Policy{}, []string{ReasonInvalidAnnotation}, "not a whole number"},
		{"an invalid count keeps the last good count", map[string]string{AnnotationMaxRequests: "0"}, Policy{MaxRequests: 7}, []string{ReasonInvalidAnnotation}, "keeping the last valid value (7)"},
		{"zero connections", map[string]string{AnnotationMaxConnections: "0"}, Policy{}, []string{ReasonInvalidAnnotation}, "from 1 to 1000000"},
	}
	// Only the invalid field keeps its last good value; the others follow the annotations.
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, diags := ParsePolicy("default", "app-1", c.annotations, prev)
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
		})
	}
}

func TestCheckTargetPorts(t *testing.T) {
	cases := []struct {
		name  string
		ports []ServicePort
		want  []string // reasons
		text  string
	}{
		{"the sidecar's inbound port", []ServicePort{{Port: 9090, TargetPort: "8000"}}, nil, ""},
		{"unset targetPort defaults to the port", []ServicePort{{Port: 8000}}, nil, ""},
		{"a named port is not checked", []ServicePort{{Port: 9090, TargetPort: "http"}}, nil, ""},
		{"the app's port bypasses the sidecar", []ServicePort{{Port: 9090, TargetPort: "9090"}}, []string{ReasonTargetPortBypasses}, "skip the sidecar"},
		{"a port nobody listens on", []ServicePort{{Port: 9090, TargetPort: "5080"}}, []string{ReasonTargetPortMisses}, "port 9090 targets 5080"},
		{"one diagnostic per port", []ServicePort{{Port: 80, TargetPort: "5080"}, {Port: 81}}, []string{ReasonTargetPortMisses, ReasonTargetPortMisses}, "reach nothing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			diags := CheckTargetPorts(&Service{Namespace: "default", Name: "app-3", Ports: c.ports})
			if len(diags) != len(c.want) {
				t.Fatalf("diagnostics %+v, want %v", diags, c.want)
			}
			for i, d := range diags {
				if d.Reason != c.want[i] || d.Event || !strings.Contains(d.Message, c.text) || !strings.Contains(d.Message, "mesh traffic is not affected") {
					t.Errorf("diagnostic %+v", d)
				}
			}
		})
	}
}
