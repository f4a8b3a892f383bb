package translate

import (
	"testing"

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
		// A local process in the other namespace whose pod the snapshot does not know.
		{"unknown-pod-local", nodeLocal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustProxy(t, tr, tc.node)
			for _, typ := range resource.Types {
				t.Run(typ.String(), func(t *testing.T) {
					golden(t, tc.name+"."+typ.String()+".golden.json", viewJSON(t, p.Views[typ]))
				})
			}
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

// bootstrapCases are valid options: a real pod (defaults, control plane by DNS name) and
// a local process (loopback addresses, control plane by IP).
var bootstrapCases = []struct {
	name string
	opts BootstrapOptions
}{
	{"pod", BootstrapOptions{
		PodName:      "app-1-7d4b9c-xk2lp",
		PodNamespace: "default",
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
}
