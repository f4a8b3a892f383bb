package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bearkong/bearkong/internal/browser"
	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/internal/localmesh"
)

// TestUIShowsTheMesh renders the control plane's page (/debug/) in headless Chromium
// while the demo apps call each other, and checks what a person would read there: a row
// for every pod of the mesh, SYNCED on every xDS type; the request rate, error rate and
// p99 latency of every demo Service, from the mesh's Prometheus; app-3's diagnostic. It
// then saves a screenshot of the page (README.md shows one) and logs its path. Chromium
// comes from scripts/install-chromium.sh; a missing browser is a failure.
func TestUIShowsTheMesh(t *testing.T) {
	m := sharedMesh(t)
	bin, err := browser.Find()
	if err != nil {
		t.Fatal(err)
	}
	withTraffic(t, m)
	page := m.ControlPlaneURL() + "/debug/"

	// The signals need a few scrapes of traffic: wait for them through the endpoint
	// before asking the browser.
	var sig controlplane.Signals
	err = localmesh.Eventually(ctxT(t, 2*time.Minute), 100*time.Second, func(ctx context.Context) error {
		var err error
		if sig, err = uiSignals(ctx, m.ControlPlaneURL()); err != nil {
			return err
		}
		for _, a := range localmesh.DemoApps {
			if s, ok := uiServiceSignals(sig, m.Namespace()+"/"+a.Name); !ok || s.RequestRate <= 0 || s.P99Ms == nil {
				return fmt.Errorf("no request rate and p99 for %s/%s yet", m.Namespace(), a.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("/debug/signals: %v\n%+v", err, sig)
	}

	// A certificate rotates every 30 s here (certLifetime): a type may be STALE for the
	// moment between a push and its ACK, so a page read at such a moment is read again.
	var problem error
	var dom string
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			time.Sleep(2 * time.Second)
		}
		if dom, err = browser.DumpDOM(ctxT(t, 2*time.Minute), bin, page, browser.Options{}); err != nil {
			t.Fatal(err)
		}
		if problem = uiCheckPage(m, dom); problem == nil {
			break
		}
		t.Logf("attempt %d: %v", attempt+1, problem)
	}
	if problem != nil {
		t.Fatalf("%s: %v\n%s", page, problem, dom)
	}

	dir := uiArtifactDir(t)
	file := filepath.Join(dir, "ui.png")
	if err := browser.Screenshot(ctxT(t, 2*time.Minute), bin, page, file, browser.Options{Width: 1280, Height: 900}); err != nil {
		t.Fatal(err)
	}
	uiCheckScreenshot(t, file, 1280, 900)
	t.Logf("screenshot of %s: %s", page, file)
}

// uiCheckPage checks a rendered /debug/: every pod of the mesh in the proxy table, SYNCED
// on every type; every demo Service in the signals table with a request rate above 0;
// app-3's targetPort diagnostic.
func uiCheckPage(m *localmesh.Mesh, dom string) error {
	doc, err := browser.Parse(dom)
	if err != nil {
		return err
	}
	table := doc.ByID("proxies-body")
	if table == nil {
		return errors.New("no proxy table")
	}
	rows := map[string]*browser.Element{}
	for _, r := range table.Tag("tr") {
		rows[r.Attr("data-node")] = r
	}
	var errs []error
	for _, p := range m.Pods() {
		node := p.Name + "." + p.Namespace
		r, ok := rows[node]
		if !ok {
			errs = append(errs, fmt.Errorf("no row for pod %s", node))
			continue
		}
		cells := r.Tag("td")
		if len(cells) < 3 || cells[0].Text() != p.Name || cells[1].Text() != p.Namespace || !strings.Contains(cells[2].Text(), p.Namespace+"/"+p.Service) {
			errs = append(errs, fmt.Errorf("row of %s: %q, want its pod, namespace and Service", node, r.Text()))
		}
		types := 0
		for _, c := range cells {
			if typ := c.Attr("data-type"); typ != "" {
				types++
				if !c.HasClass("SYNCED") || !strings.Contains(c.Text(), "SYNCED") {
					errs = append(errs, fmt.Errorf("%s %s: %q, want SYNCED", node, typ, c.Text()))
				}
			}
		}
		if types < 5 {
			errs = append(errs, fmt.Errorf("row of %s shows %d xDS types, want cds, eds, lds, rds and sds at least", node, types))
		}
	}
	if len(rows) != len(m.Pods()) {
		errs = append(errs, fmt.Errorf("%d rows in the proxy table, want one per pod: %d", len(rows), len(m.Pods())))
	}

	signals := map[string]*browser.Element{}
	if body := doc.ByID("signals-body"); body != nil {
		for _, r := range body.Tag("tr") {
			signals[r.Attr("data-service")] = r
		}
	}
	for _, a := range localmesh.DemoApps {
		svc := m.Namespace() + "/" + a.Name
		r, ok := signals[svc]
		if !ok {
			errs = append(errs, fmt.Errorf("no golden signals for %s", svc))
			continue
		}
		var rate, p99 string
		for _, c := range r.Tag("td") {
			switch {
			case c.HasClass("rate"):
				rate = c.Text()
			case c.HasClass("p99"):
				p99 = c.Text()
			}
		}
		if v, err := strconv.ParseFloat(rate, 64); err != nil || v <= 0 || !strings.HasSuffix(p99, " ms") {
			errs = append(errs, fmt.Errorf("golden signals of %s: %q, want a request rate above 0 and a p99 in ms", svc, r.Text()))
		}
	}
	if d := doc.ByID("diagnostics-body"); d == nil || !strings.Contains(d.Text(), m.Namespace()+"/app-3") {
		errs = append(errs, errors.New("diagnostics do not show app-3's targetPort"))
	}
	return errors.Join(errs...)
}

// uiCheckScreenshot checks that file is a PNG of w×h pixels that shows something: a blank
// or half-painted page has a handful of colours, the page's text and status pills many.
func uiCheckScreenshot(t *testing.T, file string, w, h int) {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if b := img.Bounds(); b.Dx() != w || b.Dy() != h {
		t.Errorf("%s is %dx%d, want %dx%d", file, b.Dx(), b.Dy(), w, h)
	}
	if n := uiColours(img); n < 50 {
		t.Errorf("%s has %d colours: the page did not render", file, n)
	}
}

func uiColours(img image.Image) int {
	seen := map[[4]uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, a := img.At(x, y).RGBA()
			seen[[4]uint32{r, g, bl, a}] = true
		}
	}
	return len(seen)
}

// uiArtifactDir is where the test keeps what it produces for people to look at:
// $BEARKONG_E2E_ARTIFACTS, else go test's -outputdir, else bearkong-e2e-artifacts in the
// temporary directory. Unlike the mesh's directory it is never removed.
func uiArtifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("BEARKONG_E2E_ARTIFACTS")
	if dir == "" {
		if f := flag.Lookup("test.outputdir"); f != nil {
			dir = f.Value.String()
		}
	}
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "bearkong-e2e-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// uiSignals reads the control plane's /debug/signals.
func uiSignals(ctx context.Context, base string) (controlplane.Signals, error) {
	var out controlplane.Signals
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/debug/signals", nil)
	if err != nil {
		return out, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return out, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return out, fmt.Errorf("GET /debug/signals: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return out, err
	}
	if out.Error != "" {
		return out, errors.New(out.Error)
	}
	return out, nil
}

func uiServiceSignals(s controlplane.Signals, name string) (controlplane.ServiceSignals, bool) {
	for _, x := range s.Services {
		if x.Service == name {
			return x, true
		}
	}
	return controlplane.ServiceSignals{}, false
}
