package translate

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// re2SizeInMessage is how Envoy names the program size of a regex it refuses.
var re2SizeInMessage = regexp.MustCompile(`RE2 program size of (\d+) > max program size of (\d+)`)

// TestRegexProgramSizeEnvoy calibrates bearkong's regex check against the real Envoy.
// Each pattern goes, as an HTTPRoute path match, into the outbound routes of a proxy
// whose bootstrap is Bootstrap's own (so with the RE2 limits bearkong sets), and Envoy
// validates it: bearkong's verdict (mesh.CheckRegex) must be Envoy's. A second run
// with the error level at 1 makes Envoy print the program size of every pattern, which
// must equal mesh.RegexProgramSize (or be within 5% for Unicode scripts whose tables
// changed between Go's and RE2's Unicode versions).
func TestRegexProgramSizeEnvoy(t *testing.T) {
	envoy := envoyBinary(t)
	for _, tc := range []struct {
		pattern string
		exact   bool // false: a Unicode script, whose table may differ between Go's and RE2's Unicode versions
	}{
		{"/api/v[0-9]+/users", true},
		{"/v[0-9]+/.*", true},
		{"^/api/.*$", true},
		{"[a-z0-9-]{1,64}", true}, // over Envoy's default limit of 100, under bearkong's
		{"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", true},
		{"/v[0-9]+/items/[a-z0-9-]{1,100}(/.*)?", true},
		{"[a-z0-9-]{1,248}", true},
		{"[a-z0-9-]{1,249}", true}, // 999: the largest of the family under the limit
		{"[a-z0-9-]{1,250}", true}, // 1003: the smallest over it
		{"[a-z0-9-]{1,400}", true},
		{"/(foo|bar)/(baz|qux)?", true},
		{"(?i)/API/[a-z]+", true},
		{`/[^/]+/\w+\.(png|jpe?g|gif)`, true},
		{"(/[a-z]{1,16}){1,16}", true},
		{".{1,120}", true},
		{".{1,150}", true},
		{"(a*)*b", true},
		{`\bv[0-9]{1,4}\b`, true},
		{"[α-ω]+", true},
		{`\pN`, true},
		{`\p{Greek}{1,10}`, true},
		{`\p{Greek}{1,20}`, true},
		{`[^\x{100}-\x{2FF}]+`, true},
		{`\p{Han}+`, false},
		{`\pL{1,8}`, false},
	} {
		t.Run(tc.pattern, func(t *testing.T) {
			t.Parallel()
			size, err := mesh.RegexProgramSize(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			bearkongAccepts := mesh.CheckRegex(tc.pattern) == nil

			b := regexBootstrap(t, tc.pattern)
			out, err := runEnvoyValidate(t, envoy, b)
			envoyAccepts := err == nil
			if bearkongAccepts != envoyAccepts {
				t.Fatalf("bearkong accepts=%v (size %d, limit %d), Envoy accepts=%v:\n%s", bearkongAccepts, size, mesh.RegexMaxProgramSize, envoyAccepts, out)
			}

			// The exact size, from Envoy's message with the error level at 1.
			setRE2ErrorLevel(t, b, 1)
			out, err = runEnvoyValidate(t, envoy, b)
			m := re2SizeInMessage.FindSubmatch(out)
			if err == nil || m == nil {
				t.Fatalf("Envoy with error level 1 did not report a program size: %v\n%s", err, out)
			}
			re2, _ := strconv.Atoi(string(m[1]))
			t.Logf("RE2 %d, bearkong %d", re2, size)
			if tc.exact && size != re2 {
				t.Errorf("RegexProgramSize = %d, RE2 says %d", size, re2)
			}
			if d := size - re2; !tc.exact && (d < -re2/20 || d > re2/20) {
				t.Errorf("RegexProgramSize = %d, RE2 says %d: more than 5%% apart", size, re2)
			}
		})
	}
}

// regexBootstrap is a sidecar bootstrap (Bootstrap's, so with bearkong's runtime) whose
// proxy serves a Service with one HTTPRoute rule matching pattern, its config inlined.
func regexBootstrap(t *testing.T, pattern string) *bootstrapv3.Bootstrap {
	t.Helper()
	snap := &mesh.Snapshot{
		Services: []*mesh.Service{{
			Namespace: "default", Name: "web",
			Ports:     []mesh.ServicePort{{Name: "http", Port: 80, Protocol: "TCP"}},
			Endpoints: []mesh.Endpoint{{IP: "10.0.0.11", Pod: "web-a"}},
			Routes: []mesh.RouteRule{{Route: "default/web", Path: mesh.PathMatch{Type: "RegularExpression", Value: pattern},
				Backends: []mesh.Backend{{Namespace: "default", Name: "web", Weight: 1, Valid: true}}}},
		}},
		Proxies: map[string]*mesh.Proxy{"default/web-a": {Namespace: "default", Name: "web-a", IP: "10.0.0.11", Services: []string{"default/web"}}},
	}
	n := Node{ID: "web-a.default", PodNamespace: "default", PodName: "web-a", ListenIP: "127.0.0.1", AppAddress: "127.0.0.1:9090"}
	base, err := Bootstrap(BootstrapOptions{PodName: n.PodName, PodNamespace: n.PodNamespace, ListenIP: n.ListenIP, AppAddress: n.AppAddress, XDSAddress: "127.0.0.1:18000", XDSInsecure: true})
	if err != nil {
		t.Fatal(err)
	}
	b := inlined(t, base, mustProxy(t, mustNew(t, snap), n))
	keepOnlyRuleRoutes(t, b)
	b.LayeredRuntime = proto.Clone(base.GetLayeredRuntime()).(*bootstrapv3.LayeredRuntime)
	return b
}

// keepOnlyRuleRoutes drops every route of b's inlined route configurations but the
// HTTPRoute rules' ("<service>|<route>|rule-N|match-M"): the outbound routes also hold
// bearkong's own regex (the check of the "service" header), and with the error level
// at 1 Envoy reports the first regex it meets, which must be the pattern under test.
func keepOnlyRuleRoutes(t *testing.T, b *bootstrapv3.Bootstrap) {
	t.Helper()
	for _, l := range b.GetStaticResources().GetListeners() {
		hcm := hcmOf(t, l)
		for _, vh := range hcm.GetRouteConfig().GetVirtualHosts() {
			var keep []*routev3.Route
			for _, r := range vh.GetRoutes() {
				if strings.Contains(r.GetName(), "|rule-") {
					keep = append(keep, r)
				}
			}
			vh.Routes = keep
		}
		l.GetFilterChains()[0].GetFilters()[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}
	}
}

func setRE2ErrorLevel(t *testing.T, b *bootstrapv3.Bootstrap, level float64) {
	t.Helper()
	layers := b.GetLayeredRuntime().GetLayers()
	if len(layers) != 1 || layers[0].GetStaticLayer() == nil {
		t.Fatalf("bootstrap runtime: want one static layer, have %v", b.GetLayeredRuntime())
	}
	layers[0].GetStaticLayer().Fields[runtimeRE2ErrorLevel] = structpb.NewNumberValue(level)
}

// runEnvoyValidate runs envoy --mode validate on b and returns its output and whether it
// refused the config.
func runEnvoyValidate(t *testing.T, envoy string, b proto.Message) ([]byte, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(path, stableJSON(t, b), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return exec.CommandContext(ctx, envoy, "--mode", "validate", "-c", path, "--disable-hot-restart", "--log-level", "warn").CombinedOutput()
}
