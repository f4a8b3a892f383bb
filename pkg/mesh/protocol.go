package mesh

import (
	"fmt"
	"strings"
)

// Protocol is the application protocol a Service speaks, as its ports declare it. The
// mesh carries HTTP only; what it needs to know is which HTTP to speak to the Service's
// pods.
type Protocol string

const (
	// ProtocolUnspecified: no port declares a protocol the mesh knows. Treated as
	// ProtocolHTTP, the common case and what Envoy speaks by default.
	ProtocolUnspecified Protocol = ""
	// ProtocolHTTP is HTTP/1.1, WebSocket upgrades included.
	ProtocolHTTP Protocol = "HTTP/1.1"
	// ProtocolHTTP2 is HTTP/2 without TLS (h2c, prior knowledge): gRPC, and apps that
	// serve h2c.
	ProtocolHTTP2 Protocol = "HTTP/2"
)

// ReasonConflictingProtocols: the ports of a Service declare different protocols.
const ReasonConflictingProtocols = "ConflictingProtocols"

// appProtocols maps a Service port's appProtocol, lower-cased, to the protocol it
// declares: the Kubernetes-defined values (https://kubernetes.io/docs/concepts/services-networking/service/#application-protocol)
// and the IANA-style names meshes commonly accept.
var appProtocols = map[string]Protocol{
	"kubernetes.io/h2c": ProtocolHTTP2,
	"kubernetes.io/ws":  ProtocolHTTP,
	"h2c":               ProtocolHTTP2,
	"http2":             ProtocolHTTP2,
	"grpc":              ProtocolHTTP2,
	"http":              ProtocolHTTP,
	"ws":                ProtocolHTTP,
}

// portNamePrefixes maps the protocol part of a port name, "<protocol>" or
// "<protocol>-<suffix>" (the convention Istio made common), to the protocol it declares.
var portNamePrefixes = map[string]Protocol{
	"grpc":  ProtocolHTTP2,
	"http2": ProtocolHTTP2,
	"h2c":   ProtocolHTTP2,
	"http":  ProtocolHTTP,
	"ws":    ProtocolHTTP,
}

// PortProtocol returns the protocol a Service port declares: its appProtocol when the
// mesh knows the value, else the prefix of its name, else ProtocolUnspecified.
func PortProtocol(p ServicePort) Protocol {
	if proto, ok := appProtocols[strings.ToLower(p.AppProtocol)]; ok {
		return proto
	}
	prefix, _, _ := strings.Cut(strings.ToLower(p.Name), "-")
	return portNamePrefixes[prefix]
}

// ServiceProtocol returns the protocol of a Service: the one its ports declare. Every
// port of a Service reaches the same sidecar and app (the mesh routes by Service, not
// by port), so a Service speaks one protocol. When ports disagree the first port that
// declares one wins (the Service's port order is the user's), and a diagnostic says so.
func ServiceProtocol(s *Service) (Protocol, []Diagnostic) {
	var proto Protocol
	var first ServicePort
	for _, p := range s.Ports {
		pp := PortProtocol(p)
		if pp == ProtocolUnspecified {
			continue
		}
		if proto == ProtocolUnspecified {
			proto, first = pp, p
			continue
		}
		if pp != proto {
			return proto, []Diagnostic{{
				Kind: "Service", Namespace: s.Namespace, Name: s.Name, Reason: ReasonConflictingProtocols, Event: true,
				Message: fmt.Sprintf("port %s declares %s and port %s declares %s; the mesh routes a Service as a whole and uses %s, the protocol of its first port that declares one; split the ports into Services of their own",
					portLabel(first), proto, portLabel(p), pp, proto),
			}}
		}
	}
	return proto, nil
}

// portLabel names a port in a message: its name and number, and what declared the
// protocol.
func portLabel(p ServicePort) string {
	label := fmt.Sprintf("%d", p.Port)
	if p.Name != "" {
		label = fmt.Sprintf("%q (%d)", p.Name, p.Port)
	}
	if p.AppProtocol != "" {
		label += fmt.Sprintf(" appProtocol %q", p.AppProtocol)
	}
	return label
}
