package localmesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/bearkong/bearkong/internal/kubeenv/proc"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// prometheus is a running Prometheus.
type prometheus struct {
	proc *proc.Process
	url  string
}

// promDir is where Prometheus's configuration, targets and data live.
func (m *Mesh) promDir() string { return filepath.Join(m.opts.Dir, "prometheus") }

func (m *Mesh) promTargetsPath() string { return filepath.Join(m.promDir(), "envoy-targets.json") }

// StartPrometheus starts Prometheus on addr (for example 127.0.0.1:9091), scraping every
// control-plane replica's /metrics and every Envoy's /stats/prometheus every 5 seconds,
// evaluating the alerts of RulesFile every 5 seconds, and waits
// until it is ready. The Envoy targets live in a file_sd file that the mesh rewrites as
// pods come and go; Prometheus watches it, so no reload is needed. bin is the prometheus
// binary; "" means "prometheus" on PATH.
func (m *Mesh) StartPrometheus(ctx context.Context, bin, addr string) (url string, err error) {
	if bin == "" {
		if bin, err = exec.LookPath("prometheus"); err != nil {
			return "", fmt.Errorf("localmesh: prometheus: %w (run scripts/install-prometheus.sh)", err)
		}
	}
	if err := os.MkdirAll(m.promDir(), 0o755); err != nil {
		return "", fmt.Errorf("localmesh: %w", err)
	}
	if err := m.writePromRules(); err != nil {
		return "", err
	}
	var cpTargets []string
	for _, r := range m.cps {
		cpTargets = append(cpTargets, strconv.Quote(r.httpAddr))
	}
	config := fmt.Sprintf(`# Written by internal/localmesh.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files: [%q]
scrape_configs:
  - job_name: bearkong
    static_configs:
      - targets: [%s]
  - job_name: envoy
    metrics_path: /stats/prometheus
    file_sd_configs:
      - files: [%q]
        refresh_interval: 5s
`, m.promRulesPath(), strings.Join(cpTargets, ", "), m.promTargetsPath())
	configPath := filepath.Join(m.promDir(), "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		return "", fmt.Errorf("localmesh: %w", err)
	}

	m.mu.Lock()
	if m.closed || m.prom != nil {
		m.mu.Unlock()
		return "", errors.New("localmesh: prometheus already running, or mesh closed")
	}
	p, err := proc.Start(m.ctx, proc.Spec{
		Name: "prometheus",
		Path: bin,
		Args: []string{
			"--config.file=" + configPath,
			"--storage.tsdb.path=" + filepath.Join(m.promDir(), "data"),
			"--web.listen-address=" + addr,
			"--web.enable-lifecycle",
		},
		LogPath: filepath.Join(m.opts.Dir, "logs", "prometheus.log"),
		Grace:   promGrace,
	})
	if err != nil {
		m.mu.Unlock()
		return "", fmt.Errorf("localmesh: %w", err)
	}
	url = "http://" + addr
	m.prom = &prometheus{proc: p, url: url}
	m.mu.Unlock()
	m.updatePrometheusTargets()

	if err := waitProcess(ctx, m.opts.ReadyTimeout, p, func(ctx context.Context) error {
		return m.httpOK(ctx, url+"/-/ready")
	}); err != nil {
		return "", fmt.Errorf("localmesh: prometheus not ready: %w", err)
	}
	return url, nil
}

// updatePrometheusTargets rewrites the Envoy targets file, atomically, from the current
// pods. Errors are logged: monitoring must not break the mesh.
func (m *Mesh) updatePrometheusTargets() {
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	m.mu.Lock()
	running := m.prom != nil
	m.mu.Unlock()
	if !running {
		return
	}
	groups := []group{}
	for _, p := range m.Pods() {
		groups = append(groups, group{
			Targets: []string{p.addr(mesh.AdminPort)},
			Labels:  map[string]string{"pod": p.Name, "service": p.Service, "namespace": p.Namespace},
		})
	}
	data, err := json.MarshalIndent(groups, "", "  ")
	if err == nil {
		tmp := m.promTargetsPath() + ".tmp"
		if err = os.WriteFile(tmp, data, 0o644); err == nil {
			err = os.Rename(tmp, m.promTargetsPath())
		}
	}
	if err != nil {
		m.opts.Logf("localmesh: prometheus targets: %v", err)
	}
}

// promGrace bounds how long Prometheus takes to stop; it flushes its head block.
const promGrace = 10 * time.Second
