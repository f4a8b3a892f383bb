package mesh

import (
	"strings"
	"testing"
)

func TestPortProtocol(t *testing.T) {
	for _, tc := range []struct {
		name, appProtocol string
		want              Protocol
	}{
		// appProtocol, the Kubernetes values first.
		{"", "kubernetes.io/h2c", ProtocolHTTP2},
		{"", "kubernetes.io/ws", ProtocolHTTP},
		{"", "grpc", ProtocolHTTP2},
		{"", "GRPC", ProtocolHTTP2},
		{"", "http2", ProtocolHTTP2},
		{"", "h2c", ProtocolHTTP2},
		{"", "http", ProtocolHTTP},
		{"", "ws", ProtocolHTTP},
		// appProtocol wins over the name.
		{"grpc", "http", ProtocolHTTP},
		{"http", "kubernetes.io/h2c", ProtocolHTTP2},
		// An appProtocol the mesh does not know leaves the name to decide.
		{"grpc-api", "example.com/custom", ProtocolHTTP2},
		{"web", "example.com/custom", ProtocolUnspecified},
		// Port names: "<protocol>" or "<protocol>-<suffix>".
		{"grpc", "", ProtocolHTTP2},
		{"grpc-api", "", ProtocolHTTP2},
		{"http2", "", ProtocolHTTP2},
		{"http2-web", "", ProtocolHTTP2},
		{"h2c", "", ProtocolHTTP2},
		{"h2c-x", "", ProtocolHTTP2},
		{"http", "", ProtocolHTTP},
		{"http-metrics", "", ProtocolHTTP},
		{"ws", "", ProtocolHTTP},
		// Not a prefix match: the protocol is the whole part before the first dash.
		{"grpcx", "", ProtocolUnspecified},
		{"https", "", ProtocolUnspecified},
		{"web", "", ProtocolUnspecified},
		{"", "", ProtocolUnspecified},
	} {
		t.Run(tc.name+"|"+tc.appProtocol, func(t *testing.T) {
			if got := PortProtocol(ServicePort{Name: tc.name, AppProtocol: tc.appProtocol}); got != tc.want {
				t.Errorf("PortProtocol(name %q, appProtocol %q) = %q, want %q", tc.name, tc.appProtocol, got, tc.want)
			}
		})
	}
}

func TestServiceProtocol(t *testing.T) {
	port := func(name, ap string) ServicePort { return ServicePort{Name: name, Port: 80, AppProtocol: ap} }
	for _, tc := range []struct {
		name     string
		ports    []ServicePort
		want     Protocol
		conflict string // a word the diagnostic must hold; "" for none
	}{
		{"no ports", nil, ProtocolUnspecified, ""},
		{"undeclared", []ServicePort{port("web", "")}, ProtocolUnspecified, ""},
		{"one gRPC port", []ServicePort{port("api", "grpc")}, ProtocolHTTP2, ""},
		{"undeclared ports do not disagree", []ServicePort{port("web", ""), port("grpc", ""), port("metrics", "")}, ProtocolHTTP2, ""},
		{"gRPC and h2c agree: both HTTP/2", []ServicePort{port("grpc", ""), port("x", "kubernetes.io/h2c")}, ProtocolHTTP2, ""},
		{"first declared wins", []ServicePort{port("http", ""), port("grpc", "")}, ProtocolHTTP, `port "grpc" (80) declares HTTP/2`},
		{"first declared wins, the other way", []ServicePort{port("rpc", "grpc"), port("web", "kubernetes.io/ws")}, ProtocolHTTP2, `appProtocol "kubernetes.io/ws"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, diags := ServiceProtocol(&Service{Namespace: "ns", Name: "svc", Ports: tc.ports})
			if got != tc.want {
				t.Errorf("protocol %q, want %q", got, tc.want)
			}
			if tc.conflict == "" {
				if len(diags) != 0 {
					t.Errorf("diagnostics %v, want none", diags)
				}
				return
			}
			if len(diags) != 1 || diags[0].Reason != ReasonConflictingProtocols || !diags[0].Event ||
				diags[0].Name != "svc" || !strings.Contains(diags[0].Message, tc.conflict) {
				t.Errorf("diagnostics %+v, want one ConflictingProtocols Event mentioning %q", diags, tc.conflict)
			}
		})
	}
}
