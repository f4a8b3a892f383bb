package localmesh

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/bearkong/bearkong/internal/kubeenv"
)

// RulesFile is the repository's Prometheus rule file, relative to its root: the alerts a
// cluster's Prometheus loads, and the mesh's Prometheus too.
const RulesFile = "manifests/prometheus/rules.yaml"

// promRulesPath is where the mesh's Prometheus reads its rules.
func (m *Mesh) promRulesPath() string { return filepath.Join(m.promDir(), "rules.yaml") }

// writePromRules copies RulesFile, as it is, next to the mesh's Prometheus config, so
// that the alerts the local mesh evaluates are exactly those a cluster gets (the `for:`
// durations included: nothing is shortened for tests). Prometheus refuses to start on
// an invalid rule file, so a broken one fails StartPrometheus.
func (m *Mesh) writePromRules() error {
	root, err := kubeenv.RepoRoot()
	if err != nil {
		return fmt.Errorf("localmesh: prometheus rules: %w", err)
	}
	b, err := os.ReadFile(filepath.Join(root, RulesFile))
	if err != nil {
		return fmt.Errorf("localmesh: prometheus rules: %w", err)
	}
	if err := os.WriteFile(m.promRulesPath(), b, 0o644); err != nil {
		return fmt.Errorf("localmesh: prometheus rules: %w", err)
	}
	return nil
}
