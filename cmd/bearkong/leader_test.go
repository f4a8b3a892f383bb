package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestDefaultIdentity(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ podName, base string }{{"bearkong-7d9f-abcde", "bearkong-7d9f-abcde"}, {"", host}} {
		t.Run("POD_NAME="+c.podName, func(t *testing.T) {
			t.Setenv("POD_NAME", c.podName)
			a, err := defaultIdentity()
			if err != nil {
				t.Fatal(err)
			}
			b, err := defaultIdentity()
			if err != nil {
				t.Fatal(err)
			}
			want := regexp.MustCompile("^" + regexp.QuoteMeta(c.base) + "_[0-9a-f]{8}$")
			if !want.MatchString(a) || !want.MatchString(b) {
				t.Errorf("identities %q, %q, want %s", a, b, want)
			}
			// Two processes on one host must not share an identity.
			if a == b {
				t.Errorf("two identities alike: %q", a)
			}
		})
	}
}

func TestLeaderElectionFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, c := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"a lease no longer than the renew deadline", []string{"--leader-election-lease-duration", "10s"}, "lease duration 10s must be longer than renew deadline 10s"},
		{"a renew deadline within the retry jitter", []string{"--leader-election-renew-deadline", "2s"}, "renew deadline 2s must be longer"},
		{"no Lease name", []string{"--leader-election-name", ""}, "namespace and name"},
		// Valid flags get as far as the kubeconfig.
		{"valid flags", []string{"--leader-election-lease-duration", "20s", "--leader-election-identity", "me"}, "kubeconfig"},
		{"leader election off", []string{"--leader-elect=false", "--leader-election-name", ""}, "kubeconfig"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"cp", "--kubeconfig", missing}, c.args...), &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}
