package translate

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// TestGolden writes each type's view of the sample proxies to testdata/<case>.<type>.golden.json.
func TestGolden(t *testing.T) {
	tr := mustNew(t, sampleSnapshot())
	for _, tc := range []struct {
		name string
		node Node
	}{
		// A pod of app-1, as in a real cluster.
		{"app-1-a", nodeApp1A},
		// A pod of app-2, whose inbound listener is PERMISSIVE.
		{"app-2-a", nodeApp2A},
		// A local process in the other namespace whose pod the snapshot does not know.
		{"unknown-pod-local", nodeLocal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustProxy(t, tr, tc.node)
			for _, typ := range resource.Types {
				if typ == resource.Secret {
					continue // the control plane adds each proxy's secrets from its CA
				}
				t.Run(typ.String(), func(t *testing.T) {
					golden(t, tc.name+"."+typ.String()+".golden.json", viewJSON(t, p.Views[typ]))
				})
			}
		})
	}
}

// TestMTLSGolden writes the inbound listener in each mTLS mode, and the clusters of an
// HTTP/2 Service and of a Service with mTLS off, to testdata/mtls-<case>.golden.json.
func TestMTLSGolden(t *testing.T) {
	n := Node{ListenIP: "10.0.0.11", OutboundIP: "127.0.0.1"}
	grpc := &mesh.Service{Namespace: "team-b", Name: "api", Protocol: mesh.ProtocolHTTP2, ServiceAccounts: []string{"api"}}
	plain := &mesh.Service{Namespace: "legacy", Name: "old", MTLS: mesh.MTLSDisable, ServiceAccounts: []string{"old"}}
	for _, tc := range []struct {
		name string
		msg  proto.Message
	}{
		{"inbound-strict.lds", InboundListener(n, mesh.MTLSStrict, DefaultTrustDomain)},
		{"inbound-permissive.lds", InboundListener(n, mesh.MTLSPermissive, DefaultTrustDomain)},
		{"inbound-disable.lds", InboundListener(n, mesh.MTLSDisable, DefaultTrustDomain)},
		{"http2-service.cds", Cluster(grpc, DefaultTrustDomain)},
		{"disabled-service.cds", Cluster(plain, DefaultTrustDomain)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden(t, "mtls-"+tc.name+".golden.json", stableJSON(t, tc.msg))
		})
	}
}

func TestBootstrapGolden(t *testing.T) {
	for _, tc := range bootstrapCases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Bootstrap(tc.opts)
			if err != nil {
				t.Fatalf("Bootstrap: %v", err)
			}
			golden(t, tc.name+".bootstrap.golden.json", stableJSON(t, b))
		})
	}
}

// bootstrapCases are valid options: a real pod (defaults, control plane by DNS name), a
// local process (loopback addresses, control plane by IP), both with two replicas, and
// both with each xDS protocol named.
var bootstrapCases = []struct {
	name string
	opts BootstrapOptions
}{
	{"pod", BootstrapOptions{
		PodName:      "app-1-7d4b9c-xk2lp",
		PodNamespace: "default",
		Workload:     "app-1", // the pod's app label, as manifests/apps set it
		XDSAddress:   "bearkong.bearkong-system.svc:18000",
		XDSRootCA:    []byte(testRootPEM),
		XDSTokenFile: "/var/run/secrets/bearkong/token",
	}},
	{"local", BootstrapOptions{
		PodName:      "app-2-0",
		PodNamespace: "default",
		ListenIP:     "127.0.1.2",
		OutboundIP:   "127.0.2.2",
		AppAddress:   "127.0.1.2:9090",
		AdminAddress: "127.0.1.2:8081",
		XDSAddress:   "127.0.0.1:18000",
		XDSInsecure:  true,
	}},
	// Several replicas of the control plane, by IP: one round-robin gRPC target in the
	// secure mode, one endpoint each in the insecure mode's cluster.
	{"replicas", BootstrapOptions{
		PodName:       "app-1-7d4b9c-xk2lp",
		PodNamespace:  "default",
		XDSAddress:    "10.244.0.7:5000,10.244.1.9:5000",
		XDSServerName: "bearkong.bearkong-system.svc",
		XDSRootCA:     []byte(testRootPEM),
		XDSTokenFile:  "/var/run/secrets/bearkong/token",
	}},
	{"local-replicas", BootstrapOptions{
		PodName:      "app-2-0",
		PodNamespace: "default",
		ListenIP:     "127.0.1.2",
		OutboundIP:   "127.0.2.2",
		AppAddress:   "127.0.1.2:9090",
		AdminAddress: "127.0.1.2:8081",
		XDSAddress:   "127.0.0.1:18000,127.0.0.1:18001",
		XDSInsecure:  true,
	}},
	// Each protocol named, in each mode (the cases above take the default).
	{"pod-sotw", BootstrapOptions{
		PodName:      "app-1-7d4b9c-xk2lp",
		PodNamespace: "default",
		XDSAddress:   "bearkong.bearkong-system.svc:18000",
		XDSRootCA:    []byte(testRootPEM),
		XDSTokenFile: "/var/run/secrets/bearkong/token",
		XDSProtocol:  XDSProtocolSotW,
	}},
	{"pod-delta", BootstrapOptions{
		PodName:      "app-1-7d4b9c-xk2lp",
		PodNamespace: "default",
		XDSAddress:   "bearkong.bearkong-system.svc:18000",
		XDSRootCA:    []byte(testRootPEM),
		XDSTokenFile: "/var/run/secrets/bearkong/token",
		XDSProtocol:  XDSProtocolDelta,
	}},
	{"local-sotw", BootstrapOptions{
		PodName:      "app-2-0",
		PodNamespace: "default",
		ListenIP:     "127.0.1.2",
		OutboundIP:   "127.0.2.2",
		AppAddress:   "127.0.1.2:9090",
		AdminAddress: "127.0.1.2:8081",
		XDSAddress:   "127.0.0.1:18000",
		XDSInsecure:  true,
		XDSProtocol:  XDSProtocolSotW,
	}},
	{"local-delta", BootstrapOptions{
		PodName:      "app-2-0",
		PodNamespace: "default",
		ListenIP:     "127.0.1.2",
		OutboundIP:   "127.0.2.2",
		AppAddress:   "127.0.1.2:9090",
		AdminAddress: "127.0.1.2:8081",
		XDSAddress:   "127.0.0.1:18000",
		XDSInsecure:  true,
		XDSProtocol:  XDSProtocolDelta,
	}},
}
