package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		args    []string
		wantErr string // substring; "" means success
		wantOut string // substring of stdout
	}{
		{"no command", nil, "missing command", ""},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`, ""},
		{"version", []string{"version"}, "", "bearkong dev"},
		{"bootstrap to stdout", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default"}, "", `"id": "app-1-a.default"`},
		{"bootstrap without a pod name", []string{"bootstrap", "--pod-name", "", "--pod-namespace", "default"}, "pod", ""},
		{"bootstrap with a bad xds address", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-address", "nope"}, "xds", ""},
		{"bootstrap to a file without an extension Envoy knows", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "-o", filepath.Join(dir, "b.txt")}, "use .json or .yaml", ""},
		{"cp with a missing kubeconfig", []string{"cp", "--kubeconfig", filepath.Join(dir, "missing")}, "kubeconfig", ""},
		{"cp with max delay below quiet period", []string{"cp", "--quiet-period", "2s", "--max-delay", "1s"}, "--quiet-period", ""},
		{"cp with a stray argument", []string{"cp", "extra"}, "no arguments", ""},
		{"cp with a bad cluster domain", []string{"cp", "--cluster-domain", "Cluster.Local"}, "cluster domain", ""},
		{"bootstrap with a bad outbound ip", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--outbound-ip", "localhost"}, "outbound IP", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), c.args, &stdout, &stderr)
			if c.wantErr == "" && err != nil {
				t.Fatalf("error: %v (stderr %s)", err, stderr.String())
			}
			if c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("error %v, want one containing %q", err, c.wantErr)
			}
			if !strings.Contains(stdout.String(), c.wantOut) {
				t.Fatalf("stdout %q does not contain %q", stdout.String(), c.wantOut)
			}
		})
	}
}

func TestBootstrapFile(t *testing.T) {
	out := filepath.Join(t.TempDir(), "envoy.json")
	var stdout, stderr bytes.Buffer
	args := []string{"bootstrap", "--pod-name", "app-2-b", "--pod-namespace", "shop", "--listen-ip", "127.0.1.3",
		"--outbound-ip", "127.0.2.3", "--app-address", "127.0.1.3:9090", "--admin-address", "127.0.1.3:8081", "--xds-address", "127.0.0.1:5000", "-o", out}
	if err := run(context.Background(), args, &stdout, &stderr); err != nil {
		t.Fatal(err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Node struct {
			ID       string            `json:"id"`
			Metadata map[string]string `json:"metadata"`
		} `json:"node"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"pod_name": "app-2-b", "pod_namespace": "shop", "listen_ip": "127.0.1.3", "outbound_ip": "127.0.2.3", "app_address": "127.0.1.3:9090"}
	if v.Node.ID != "app-2-b.shop" {
		t.Errorf("node id %q", v.Node.ID)
	}
	for k, w := range want {
		if v.Node.Metadata[k] != w {
			t.Errorf("metadata %s = %q, want %q", k, v.Node.Metadata[k], w)
		}
	}
}
