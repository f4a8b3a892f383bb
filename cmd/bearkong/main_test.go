package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/klog/v2"
)

func TestRun(t *testing.T) {
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, []byte(testRootPEM), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		args    []string
		wantErr string // substring; "" means success
		wantOut string // substring of stdout
	}{
		{"no command", nil, "missing command", ""},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`, ""},
		{"version", []string{"version"}, "", "bearkong dev"},
		{"bootstrap to stdout", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default", "--xds-insecure"}, "", `"id": "app-1-a.default"`},
		{"bootstrap is secure by default", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default"}, "xds root CA is required", ""},
		{"secure bootstrap", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default", "--xds-ca-file", caFile, "--xds-token-file", "/var/run/secrets/bearkong/token"}, "", `"googleGrpc"`},
		{"secure bootstrap without a token", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default", "--xds-ca-file", caFile}, "xds token file is required", ""},
		{"bootstrap with a missing CA file", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default", "--xds-ca-file", filepath.Join(dir, "missing.pem")}, "--xds-ca-file", ""},
		{"bootstrap with a CA and insecure", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default", "--xds-ca-file", caFile, "--xds-insecure"}, "contradict", ""},
		{"cp with a bad server name", []string{"cp", "--xds-server-names", "bearkong,Bear_Kong"}, `"Bear_Kong" is neither`, ""},
		{"bootstrap without a pod name", []string{"bootstrap", "--pod-name", "", "--pod-namespace", "default"}, "pod", ""},
		{"bootstrap with a bad xds address", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-address", "nope"}, "xds", ""},
		{"bootstrap to a file without an extension Envoy knows", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-insecure", "-o", filepath.Join(dir, "b.txt")}, "use .json or .yaml", ""},
		{"cp with a missing kubeconfig", []string{"cp", "--kubeconfig", filepath.Join(dir, "missing")}, "kubeconfig", ""},
		{"cp with max delay below quiet period", []string{"cp", "--quiet-period", "2s", "--max-delay", "1s"}, "--quiet-period", ""},
		{"cp with a stray argument", []string{"cp", "extra"}, "no arguments", ""},
		{"cp with a bad default authz", []string{"cp", "--default-authz", "block"}, `--default-authz "block": want allow or deny`, ""},
		{"cp with a bad default access log", []string{"cp", "--default-access-log", "JSON"}, `--default-access-log: must be json, text or off (lower case)`, ""},
		{"cp with a zero node id limit", []string{"cp", "--xds-max-node-id-bytes", "0"}, "--xds-max-node-id-bytes 0: must be positive", ""},
		{"cp with a negative stream limit", []string{"cp", "--xds-max-streams", "-1"}, "--xds-max-streams -1: must be positive", ""},
		{"cp with a zero send timeout", []string{"cp", "--xds-send-timeout", "0s"}, "--xds-send-timeout 0s: must be positive", ""},
		{"cp with no streams per connection", []string{"cp", "--xds-max-concurrent-streams-per-connection", "0"}, "--xds-max-concurrent-streams-per-connection 0", ""},
		{"cp with a zero resource names limit", []string{"cp", "--xds-max-resource-names", "0"}, "--xds-max-resource-names 0: must be positive", ""},
		{"cp with limits set", []string{"cp", "--xds-max-node-metadata-bytes", "1024", "--xds-max-streams-per-node", "3", "--xds-max-nack-detail-bytes", "100", "--kubeconfig", filepath.Join(dir, "missing")}, "kubeconfig", ""},
		{"cp with a zero kube API QPS", []string{"cp", "--kube-api-qps", "0"}, "--kube-api-qps 0: must be positive", ""},
		{"cp with a negative kube API QPS", []string{"cp", "--kube-api-qps", "-5"}, "--kube-api-qps -5: must be positive", ""},
		{"cp with a zero kube API burst", []string{"cp", "--kube-api-burst", "0"}, "--kube-api-burst 0: must be positive", ""},
		{"cp with a negative connection age", []string{"cp", "--xds-max-connection-age", "-1s"}, "--xds-max-connection-age (-1s)", ""},
		{"cp with a negative connection age grace", []string{"cp", "--xds-max-connection-age-grace", "-1s"}, "must not be negative", ""},
		{"cp with ops flags set", []string{"cp", "--kube-api-qps", "20", "--kube-api-burst", "30", "--xds-max-connection-age", "0", "--debug-addr", "", "--kubeconfig", filepath.Join(dir, "missing")}, "kubeconfig", ""},
		{"cp with a bad cluster domain", []string{"cp", "--cluster-domain", "Cluster.Local"}, "cluster domain", ""},
		{"bootstrap with two xds addresses", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-insecure", "--xds-address", "127.0.0.1:5000,127.0.0.1:5001"}, "", `"portValue": 5001`},
		{"secure bootstrap with two xds addresses", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-ca-file", caFile, "--xds-token-file", "/t", "--xds-address", "10.0.0.1:5000,10.0.0.2:5000", "--xds-server-name", "bearkong.bearkong-system.svc"}, "", `"targetUri": "ipv4:10.0.0.1:5000,10.0.0.2:5000"`},
		{"bootstrap with an empty xds address item", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-insecure", "--xds-address", "127.0.0.1:5000,"}, "empty item", ""},
		{"bootstrap on delta", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-insecure", "--xds-protocol", "delta"}, "", `"apiType": "DELTA_GRPC"`},
		{"bootstrap on sotw", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-insecure", "--xds-protocol", "sotw"}, "", `"apiType": "GRPC"`},
		{"secure bootstrap on delta", []string{"bootstrap", "--pod-name", "app-1-a", "--pod-namespace", "default", "--xds-ca-file", caFile, "--xds-token-file", "/t", "--xds-protocol", "delta"}, "", `"apiType": "DELTA_GRPC"`},
		{"bootstrap on an unknown protocol", []string{"bootstrap", "--pod-name", "a", "--pod-namespace", "default", "--xds-insecure", "--xds-protocol", "incremental"}, `xds protocol "incremental" is not one of: sotw, delta`, ""},
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
		"--outbound-ip", "127.0.2.3", "--app-address", "127.0.1.3:9090", "--admin-address", "127.0.1.3:8081", "--xds-address", "127.0.0.1:5000", "--xds-insecure", "-o", out}
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

func TestParseCPSecurity(t *testing.T) {
	for _, tc := range []struct {
		name, names, addr string
		insecure          bool
		audience          string
		wantNames         []string
		wantIPs           []string
		wantErr           string
	}{
		{name: "defaults", addr: ":5000", audience: "bearkong",
			wantNames: []string{"bearkong.bearkong-system.svc", "bearkong.bearkong-system.svc.cluster.local"}},
		{name: "defaults with a listen IP", addr: "10.0.0.7:5000", audience: "bearkong",
			wantNames: []string{"bearkong.bearkong-system.svc", "bearkong.bearkong-system.svc.cluster.local"}, wantIPs: []string{"10.0.0.7"}},
		{name: "defaults on every IPv6 address", addr: "[::]:5000", audience: "bearkong",
			wantNames: []string{"bearkong.bearkong-system.svc", "bearkong.bearkong-system.svc.cluster.local"}},
		{name: "explicit", names: "xds.example.com, 127.0.0.1,::1,xds.example.com", addr: ":5000", audience: "bearkong",
			wantNames: []string{"xds.example.com"}, wantIPs: []string{"127.0.0.1", "::1"}},
		{name: "empty name", names: "a,,b", addr: ":5000", audience: "bearkong", wantErr: "empty name"},
		{name: "unspecified IP", names: "0.0.0.0", addr: ":5000", audience: "bearkong", wantErr: "not an address a client can dial"},
		{name: "no audience", addr: ":5000", wantErr: "--xds-token-audience"},
		{name: "insecure ignores the rest", insecure: true, names: "Bad_Name", addr: ":5000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := parseCPSecurity(tc.insecure, tc.audience, tc.names, tc.addr, "bearkong-system", "cluster.local")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var ips []string
			for _, ip := range s.ServerIPs {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(s.ServerNames, tc.wantNames) || !slices.Equal(ips, tc.wantIPs) || s.Insecure != tc.insecure {
				t.Errorf("got %+v (IPs %q), want names %q, IPs %q", s, ips, tc.wantNames, tc.wantIPs)
			}
		})
	}
}

// testRootPEM is a fixed root certificate for the bootstrap's --xds-ca-file.
const testRootPEM = `-----BEGIN CERTIFICATE-----
MIIBpTCCAUugAwIBAgIUDwetuUJ6eYX4sBlGuLEP3NZIWyIwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUYmVhcmtvbmcgZ29sZGVuIHJvb3QwIBcNMjYxMjAxMDM0NTMx
WhgPMjEyNjExMDcwMzQ1MzFaMB8xHTAbBgNVBAMMFGJlYXJrb25nIGdvbGRlbiBy
b290MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEAAhuVMocBlkIqLu1vSUsJO7e
MCikWcQ5uMr+s7tryV9XUfSXocG6W1GP/VWpoeOHgwHisZtof3QAGSSO6YdFDaNj
MGEwHQYDVR0OBBYEFCzs30O4SVvce8TF7MIM6Im93ji7MB8GA1UdIwQYMBaAFCzs
30O4SVvce8TF7MIM6Im93ji7MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQD
AgIEMAoGCCqGSM49BAMCA0gAMEUCIQCiK6P4ervyMYIX96HIwWPdupga4X3qyB9C
xGIzAXsb4wIgfVSH2qJLpOL8HefzXNSBSlAnLRJgjKXHLVvDUWa21xU=
-----END CERTIFICATE-----
`

// TestKlogJSON checks that, with the JSON logger runCP sets up, klog's lines (client-go
// logs through klog) come out as JSON objects, one per line, with their message, level
// and key-value pairs, and that klog's verbose lines stay off as before.
func TestKlogJSON(t *testing.T) {
	var buf bytes.Buffer
	log, err := newLogger(&buf, "info", "json")
	if err != nil {
		t.Fatal(err)
	}
	bridgeKlog(log)
	t.Cleanup(klog.ClearLogger)
	klog.Info("reflector started")
	klog.InfoS("Caches are synced", "controller", "bearkong")
	klog.ErrorS(errors.New("connection refused"), "Failed to watch", "type", "*v1.Pod")
	klog.V(2).Info("a verbose line client-go writes at -v=2")
	klog.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	type line struct {
		Level, Msg, Logger, Controller, Type, Err string
	}
	var got []line
	for _, l := range lines {
		var v line
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatalf("not a JSON object: %q (%v); whole output:\n%s", l, err, buf.String())
		}
		got = append(got, v)
	}
	want := []line{
		{Level: "INFO", Msg: "reflector started", Logger: "klog"},
		{Level: "INFO", Msg: "Caches are synced", Logger: "klog", Controller: "bearkong"},
		{Level: "ERROR", Msg: "Failed to watch", Logger: "klog", Type: "*v1.Pod", Err: "connection refused"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("klog through the JSON logger:\n got %+v\nwant %+v\noutput:\n%s", got, want, buf.String())
	}
}

// TestDebugListenAddr checks the choice of the pprof address: an address given is kept
// even when taken (the control plane then fails to listen, as for any address it was
// told to use); the default is kept when free and dropped, with a warning, when another
// process holds it.
func TestDebugListenAddr(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	taken := held.Addr().String()
	free := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()
	for _, tc := range []struct {
		name     string
		addr     string
		explicit bool
		want     string
		warns    bool
	}{
		{"disabled", "", true, "", false},
		{"given and taken", taken, true, taken, false},
		{"default and free", free, false, free, false},
		{"default and taken", taken, false, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, _ := newLogger(&buf, "info", "json")
			if got := debugListenAddr(tc.addr, tc.explicit, log); got != tc.want {
				t.Errorf("debugListenAddr(%q, %v) = %q, want %q", tc.addr, tc.explicit, got, tc.want)
			}
			if warned := strings.Contains(buf.String(), `"level":"WARN"`); warned != tc.warns {
				t.Errorf("warned: %v, want %v; log: %s", warned, tc.warns, buf.String())
			}
		})
	}
}
