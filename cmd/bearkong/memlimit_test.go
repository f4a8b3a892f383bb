package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// The Go memory limit follows the container's: GOMEMLIMIT if set, else 90% of the cgroup
// v2 or v1 limit, else none; what was chosen is logged once.
func TestMemoryLimit(t *testing.T) {
	const limit = 4608 << 20 // the Deployment's 4.5 GiB
	cases := []struct {
		name   string
		env    string
		v2, v1 string // file contents; "" for a missing file
		want   int64  // the Go memory limit after, 0 for left alone
		logged int64  // limit_bytes in the log line
		source string // the log line's source
		warn   bool   // a warning, not an info line
	}{
		{name: "cgroup v2", v2: "4831838208\n", want: limit * 9 / 10, logged: limit * 9 / 10, source: "v2"},
		{name: "cgroup v2 without a limit", v2: "max\n", v1: "4831838208\n", source: "none"},
		{name: "cgroup v1", v1: "4831838208\n", want: limit * 9 / 10, logged: limit * 9 / 10, source: "v1"},
		{name: "cgroup v1 without a limit", v1: "9223372036854771712\n", source: "none"},
		{name: "no cgroup files", source: "none"},
		// The runtime read GOMEMLIMIT at start-up (here it did not: the environment is
		// the test's), and the log says what it holds.
		{name: "GOMEMLIMIT wins", env: "1GiB", v2: "4831838208\n", logged: math.MaxInt64, source: "GOMEMLIMIT"},
		{name: "garbage in v2", v2: "lots\n", warn: true},
		{name: "garbage in v1", v1: "-1\n", warn: true},
		{name: "a zero limit", v2: "0\n", warn: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			files := cgroupFiles{V2: filepath.Join(dir, "memory.max"), V1: filepath.Join(dir, "memory", "memory.limit_in_bytes")}
			for path, content := range map[string]string{files.V2: c.v2, files.V1: c.v1} {
				if content == "" {
					continue
				}
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			prev := debug.SetMemoryLimit(math.MaxInt64)
			defer debug.SetMemoryLimit(prev)
			var logs bytes.Buffer
			log := slog.New(slog.NewJSONHandler(&logs, nil))
			env := func(k string) string {
				if k == "GOMEMLIMIT" {
					return c.env
				}
				return ""
			}
			setMemoryLimit(log, env, files)

			got := debug.SetMemoryLimit(-1)
			want := c.want
			if want == 0 {
				want = math.MaxInt64
			}
			if got != want {
				t.Errorf("Go memory limit %d, want %d", got, want)
			}
			lines := bytes.Split(bytes.TrimSpace(logs.Bytes()), []byte("\n"))
			if len(lines) != 1 {
				t.Fatalf("%d log lines, want 1:\n%s", len(lines), logs.String())
			}
			var line struct {
				Level, Source string
				Limit         int64 `json:"limit_bytes"`
			}
			if err := json.Unmarshal(lines[0], &line); err != nil {
				t.Fatal(err)
			}
			if c.warn {
				if line.Level != "WARN" {
					t.Fatalf("log %s, want a warning", lines[0])
				}
				return
			}
			if line.Level != "INFO" || line.Source != c.source || line.Limit != c.logged {
				t.Fatalf("log %s, want source %q and limit_bytes %d", lines[0], c.source, c.logged)
			}
		})
	}
}
