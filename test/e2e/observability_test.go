package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/kubeenv"
	"github.com/bearkong/bearkong/internal/localmesh"
)

// promSeries is one series of an instant query's result.
type promSeries struct {
	Metric map[string]string
	Value  float64
}

// promQuery runs an instant PromQL query against the shared Prometheus.
func promQuery(ctx context.Context, q string) ([]promSeries, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, shared.prom+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("prometheus %q: %w", q, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("prometheus %q: %s %s", q, body.Status, body.Error)
	}
	out := make([]promSeries, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, _ := strconv.ParseFloat(s, 64)
		out = append(out, promSeries{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// withTraffic sends requests from the first pod of every demo app to every demo app,
// about 20 per second in all, until the test ends (or 3 minutes pass).
func withTraffic(t *testing.T, m *localmesh.Mesh) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			from := localmesh.DemoApps[i%len(localmesh.DemoApps)].Name + "-0"
			to := localmesh.DemoApps[(i/len(localmesh.DemoApps))%len(localmesh.DemoApps)].Name
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			_, _, _ = m.Get(rctx, from, to)
			rcancel()
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// perServiceQuery is the query of the issue that made per-Service stat names necessary.
const perServiceQuery = `sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total[1m]))`

// TestPrometheusShowsEveryService checks, against the running Prometheus, that Envoy's
// per-cluster metrics carry each Service under its own name ("<namespace>/<name>"), and
// that every PromQL query README.md prints returns data.
func TestPrometheusShowsEveryService(t *testing.T) {
	m := sharedMesh(t)
	withTraffic(t, m)

	t.Run("a series per called service", func(t *testing.T) {
		var want []string
		for _, a := range localmesh.DemoApps {
			want = append(want, m.Namespace()+"/"+a.Name)
		}
		var last []promSeries
		var why error // the last attempt's outcome: the final attempt may be cut short
		err := localmesh.Eventually(ctxT(t, 2*time.Minute), 100*time.Second, func(ctx context.Context) error {
			var err error
			if last, err = promQuery(ctx, perServiceQuery); err != nil {
				return err
			}
			for _, name := range want {
				if !slices.ContainsFunc(last, func(s promSeries) bool { return s.Metric["envoy_cluster_name"] == name && s.Value > 0 }) {
					why = fmt.Errorf("no series with envoy_cluster_name=%q and a rate above 0", name)
					return why
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v (%v)\nresult: %+v", perServiceQuery, err, why, last)
		}
	})

	t.Run("every query of the README", func(t *testing.T) {
		queries := readmeQueries(t)
		if !slices.Contains(queries, perServiceQuery) {
			t.Errorf("README.md does not print %s", perServiceQuery)
		}
		for _, q := range queries {
			t.Run(q, func(t *testing.T) {
				var last []promSeries
				var why error
				err := localmesh.Eventually(ctxT(t, 2*time.Minute), 100*time.Second, func(ctx context.Context) error {
					var err error
					if last, err = promQuery(ctx, q); err != nil {
						return err
					}
					if len(last) == 0 {
						why = fmt.Errorf("no series")
						return why
					}
					// A query by Envoy cluster must show the Services, not only local-app
					// and xds.
					if strings.Contains(q, "envoy_cluster_name") && !slices.ContainsFunc(last, func(s promSeries) bool {
						return strings.HasPrefix(s.Metric["envoy_cluster_name"], m.Namespace()+"/")
					}) {
						why = fmt.Errorf("no series for a Service")
						return why
					}
					return nil
				})
				if err != nil {
					t.Fatalf("%s: %v (%v)\nresult: %+v", q, err, why, last)
				}
			})
		}
	})
}

// readmeQueries returns the PromQL queries README.md prints: every line of its ```promql
// blocks. The README keeps all its queries there, so that this test checks each one.
func readmeQueries(t *testing.T) []string {
	t.Helper()
	root, err := kubeenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, block := range regexp.MustCompile("(?ms)^```promql\n(.*?)^```").FindAllSubmatch(b, -1) {
		for l := range strings.SplitSeq(string(block[1]), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				out = append(out, l)
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("README.md has no ```promql block")
	}
	return out
}
