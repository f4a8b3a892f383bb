package localmesh

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bearkong/bearkong/internal/kubeenv"
)

// TestNewChecksXDSProtocol: New takes "" (the bootstrap's default) and each protocol
// `bearkong bootstrap --xds-protocol` accepts, and refuses anything else up front, naming
// the accepted values, rather than failing at the first pod.
func TestNewChecksXDSProtocol(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		protocol string
		wantErr  string
	}{
		{"", ""},
		{"sotw", ""},
		{"delta", ""},
		{"incremental", `XDSProtocol "incremental" is not one of: sotw, delta`},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			_, err := New(t.Context(), Options{Env: &kubeenv.Env{}, Dir: filepath.Join(dir, "mesh"),
				BearkongBin: bin, EnvoyBin: bin, DemoAppBin: bin, XDSProtocol: tc.protocol})
			if tc.wantErr == "" && err != nil {
				t.Fatalf("New: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("New: error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
