package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"sigs.k8s.io/yaml"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// Files checked here, relative to the repository root.
const (
	dashboardFile = "manifests/grafana/bearkong.json"
	nackAlert     = "BearkongProxyNACKed"
)

// promQuery is one query to check, and where it comes from.
type promCheck struct {
	from, expr string
}

// dashboardQueries returns every panel query of the Grafana dashboard, with the
// dashboard's variables replaced as Grafana would with their "All" values: a query
// variable by its allValue, $__rate_interval by 1m (four scrape intervals of 5 s and
// more, as Grafana's rule for it wants).
func dashboardQueries(t *testing.T) []promCheck {
	t.Helper()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string  `json:"title"`
		Panels  []panel `json:"panels"` // a collapsed row's
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name     string `json:"name"`
				Type     string `json:"type"`
				AllValue string `json:"allValue"`
			} `json:"list"`
		} `json:"templating"`
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	vars := []string{"$__rate_interval", "1m"}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		if v.AllValue == "" {
			t.Fatalf("%s: variable %s has no allValue to test its queries with", dashboardFile, v.Name)
		}
		vars = append(vars, "${"+v.Name+"}", v.AllValue, "$"+v.Name, v.AllValue)
	}
	r := strings.NewReplacer(vars...)
	var out []promCheck
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			for _, tg := range p.Targets {
				expr := r.Replace(tg.Expr)
				if strings.Contains(expr, "$") {
					t.Errorf("%s: panel %q query %s: a variable is left: %s", dashboardFile, p.Title, tg.RefID, expr)
				}
				out = append(out, promCheck{from: fmt.Sprintf("panel %q %s", p.Title, tg.RefID), expr: expr})
			}
		}
	}
	walk(dash.Panels)
	if len(out) == 0 {
		t.Fatalf("%s: no panel query", dashboardFile)
	}
	return out
}

// alertRule is one alerting rule of the rule file.
type alertRule struct {
	Alert string `json:"alert"`
	Expr  string `json:"expr"`
	For   string `json:"for"`
}

// alertRules returns the alerting rules of localmesh.RulesFile.
func alertRules(t *testing.T) []alertRule {
	t.Helper()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, localmesh.RulesFile))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Rules []alertRule `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatalf("%s: %v", localmesh.RulesFile, err)
	}
	var out []alertRule
	for _, g := range file.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s: no rule", localmesh.RulesFile)
	}
	return out
}

// boundRE splits an alert expression written `<signal> > <bound>` (the rule file's
// convention) into the signal and the bound.
var boundRE = regexp.MustCompile(`(?s)^(.*\S)\s+>\s+([0-9.]+)\s*$`)

// serviceLabels are the labels that name services: the callee (envoy_cluster_name,
// "<namespace>/<name>") and the sidecar's workload (mesh_workload, the app's name).
var serviceLabels = []string{"envoy_cluster_name", "mesh_workload"}

// checkSeries checks that the result of expr is not empty and, for every label of
// serviceLabels that expr names (groups or filters by), that every series carries it
// and that every demo service has a series.
func checkSeries(m *localmesh.Mesh, expr string, res []promSeries) error {
	if len(res) == 0 {
		return errors.New("no series")
	}
	for _, label := range serviceLabels {
		if !strings.Contains(expr, label) {
			continue
		}
		for _, s := range res {
			if s.Metric[label] == "" {
				return fmt.Errorf("a series without %s: %v", label, s.Metric)
			}
		}
		for _, a := range localmesh.DemoApps {
			want := a.Name
			if label == "envoy_cluster_name" {
				want = m.Namespace() + "/" + a.Name
			}
			if !slices.ContainsFunc(res, func(s promSeries) bool { return s.Metric[label] == want }) {
				return fmt.Errorf("no series with %s=%q", label, want)
			}
		}
	}
	return nil
}

// TestDashboardAndAlertQueries runs every query of the Grafana dashboard and the signal
// of every alert of the rule file (parsed from the files, not copied here) against the
// running Prometheus, with traffic between every pair of demo apps, and checks that each
// returns series for the demo services; each whole alert expression must evaluate too.
func TestDashboardAndAlertQueries(t *testing.T) {
	m := sharedMesh(t)
	withTraffic(t, m)

	checks := dashboardQueries(t)
	for _, r := range alertRules(t) {
		sm := boundRE.FindStringSubmatch(r.Expr)
		if sm == nil {
			t.Errorf("alert %s: expression is not `<signal> > <bound>`: %s", r.Alert, r.Expr)
			continue
		}
		checks = append(checks, promCheck{from: "alert " + r.Alert + " signal", expr: sm[1]})
		checks = append(checks, promCheck{from: "alert " + r.Alert, expr: r.Expr})
	}
	for _, c := range checks {
		t.Run(c.from, func(t *testing.T) {
			alert := strings.HasPrefix(c.from, "alert ") && !strings.HasSuffix(c.from, " signal")
			var last []promSeries
			var why error
			err := localmesh.Eventually(ctxT(t, 2*time.Minute), 100*time.Second, func(ctx context.Context) error {
				var err error
				if last, err = promQuery(ctx, c.expr); err != nil {
					why = err
					return err
				}
				if alert {
					return nil // it evaluates; firing or not is the mesh's state
				}
				why = checkSeries(m, c.expr, last)
				return why
			})
			if err != nil {
				t.Fatalf("%s\n%v (%v)\nresult: %+v", c.expr, err, why, last)
			}
		})
	}
}

// promRulesInterval returns the evaluation interval of the rule group that holds alert,
// as the running Prometheus reports it (/api/v1/rules): proof that it loaded the rule
// file, too.
func promRulesInterval(ctx context.Context, alert string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, shared.prom+"/api/v1/rules?type=alert", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Groups []struct {
				Interval float64 `json:"interval"`
				Rules    []struct {
					Name string `json:"name"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, err
	}
	for _, g := range body.Data.Groups {
		for _, r := range g.Rules {
			if r.Name == alert {
				return time.Duration(g.Interval * float64(time.Second)), nil
			}
		}
	}
	return 0, fmt.Errorf("prometheus has no rule %s loaded", alert)
}

// nackingStream opens an ADS stream as the pod's Envoy would (its token and node),
// subscribes to listeners, and NACKs every listener response until the test ends: a
// proxy that rejects its config for as long as it likes. A listener NACK names no object
// bearkong could quarantine, so the NACK lasts, as one caused by an Envoy that rejects
// what bearkong sends would. It returns once the control plane shows the stream NACKED.
func nackingStream(t *testing.T, m *localmesh.Mesh, pod localmesh.Pod) {
	t.Helper()
	creds, _ := xdsTLS(t, m)
	token, err := m.RequestToken(ctxT(t, 10*time.Second), pod.Name, localmesh.TokenAudience)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := grpc.NewClient(m.XDSAddr(), grpc.WithTransportCredentials(creds))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		cancel()
		conn.Close()
		<-done
	})
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(
		metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token))
	if err != nil {
		close(done)
		t.Fatal(err)
	}
	lds := resource.Listener.URL()
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: podNode(pod), TypeUrl: lds}); err != nil {
		close(done)
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			if err := stream.Send(&discoveryv3.DiscoveryRequest{
				TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce(),
				ErrorDetail: &status.Status{Code: 3, Message: "e2e: this proxy rejects every listener"},
			}); err != nil {
				return
			}
		}
	}()
	eventually(t, 20*time.Second, func(ctx context.Context) error {
		b, err := m.ControlPlaneGet(ctx, "/debug/streams?node="+nodeID(pod))
		if err != nil {
			return err
		}
		var body struct {
			Streams []ads.StreamInfo `json:"streams"`
		}
		if err := json.Unmarshal(b, &body); err != nil {
			return err
		}
		for _, s := range body.Streams {
			if s.Types.LDS.Status == ads.Nacked {
				return nil
			}
		}
		return fmt.Errorf("no NACKED listener stream for %s: %s", nodeID(pod), b)
	})
}

// TestNACKAlertFires forces a lasting NACK (a proxy stream that rejects every listener
// update) and checks that the rule file's NACK alert, as loaded by the mesh's Prometheus
// with its `for:` unchanged, fires within its `for` plus one evaluation interval of
// Prometheus seeing the NACK, and that it was not firing before.
func TestNACKAlertFires(t *testing.T) {
	m := sharedMesh(t)
	waitAllSynced(t, m)
	var rule *alertRule
	for _, r := range alertRules(t) {
		if r.Alert == nackAlert {
			rule = &r
		}
	}
	if rule == nil {
		t.Fatalf("%s has no alert %s", localmesh.RulesFile, nackAlert)
	}
	forDur, err := time.ParseDuration(rule.For)
	if err != nil {
		t.Fatalf("alert %s: for %q: %v", nackAlert, rule.For, err)
	}
	interval, err := promRulesInterval(ctxT(t, 10*time.Second), nackAlert)
	if err != nil {
		t.Fatal(err)
	}
	firing := `ALERTS{alertname="` + nackAlert + `", alertstate="firing", type="lds"}`
	seen := `bearkong_xds_proxies{type="lds", status="NACKED"} > 0`
	if res, err := promQuery(ctxT(t, 10*time.Second), firing); err != nil || len(res) > 0 {
		t.Fatalf("%s firing before the NACK: %+v %v", nackAlert, res, err)
	}

	pod := m.PodsOf("app-1")[0]
	nackingStream(t, m, pod)
	nacked := time.Now()
	var seenAt, firedAt time.Time
	// Bounded: the for, two intervals (scrape and evaluation) and some slack.
	ctx := ctxT(t, forDur+4*interval+30*time.Second)
	for firedAt.IsZero() {
		if ctx.Err() != nil {
			t.Fatalf("%s not firing %s after the NACK (Prometheus saw it after %s)", nackAlert, time.Since(nacked).Round(time.Second), seenAt.Sub(nacked).Round(time.Second))
		}
		if seenAt.IsZero() {
			if res, err := promQuery(ctx, seen); err == nil && len(res) > 0 {
				seenAt = time.Now()
			}
		}
		if res, err := promQuery(ctx, firing); err == nil && len(res) > 0 {
			firedAt = time.Now()
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	if seenAt.IsZero() {
		seenAt = firedAt
	}
	t.Logf("NACK at 0s; Prometheus saw it at %s; %s firing at %s (for %s, evaluation interval %s)",
		seenAt.Sub(nacked).Round(100*time.Millisecond), nackAlert, firedAt.Sub(nacked).Round(100*time.Millisecond), forDur, interval)
	// The measurement's own latency: the loop polls every half second, and each poll
	// is two queries on a busy machine: 2 s of slack.
	if d := firedAt.Sub(seenAt); d > forDur+interval+2*time.Second {
		t.Errorf("%s fired %s after Prometheus saw the NACK, want within for (%s) + one evaluation interval (%s)", nackAlert, d, forDur, interval)
	}
	if d := firedAt.Sub(seenAt); d < forDur-time.Second {
		t.Errorf("%s fired %s after Prometheus saw the NACK, before its for (%s)", nackAlert, d, forDur)
	}
}
