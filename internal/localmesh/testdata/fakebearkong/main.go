// Command fakebearkong stands in for bearkong in the harness's own tests, which check the
// harness, not the control plane: `bootstrap` writes a static Envoy config (inbound
// listener to the app, outbound listener answering 404) with the same flags as the real
// one, and `cp` serves /readyz until SIGTERM.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fakebearkong bootstrap|cp [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "bootstrap":
		err = bootstrap(os.Args[2:])
	case "cp":
		err = cp(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakebearkong:", err)
		os.Exit(1)
	}
}

type obj = map[string]any

func socket(addr string) (obj, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return nil, err
	}
	return obj{"socket_address": obj{"address": host, "port_value": p}}, nil
}

func listener(name, addr string, route obj) (obj, error) {
	sa, err := socket(addr)
	if err != nil {
		return nil, err
	}
	hcm := obj{
		"@type":       "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"stat_prefix": name,
		"route_config": obj{"virtual_hosts": []obj{{
			"name": name, "domains": []string{"*"},
			"routes": []obj{merge(obj{"match": obj{"prefix": "/"}}, route)},
		}}},
		"http_filters": []obj{{"name": "envoy.filters.http.router", "typed_config": obj{
			"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}},
	}
	return obj{"name": name, "address": sa, "filter_chains": []obj{{"filters": []obj{{
		"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}}}}}, nil
}

func merge(a, b obj) obj {
	for k, v := range b {
		a[k] = v
	}
	return a
}

func bootstrap(args []string) error {
	fs := flag.NewFlagSet("bootstrap", flag.ContinueOnError)
	pod := fs.String("pod-name", "", "")
	ns := fs.String("pod-namespace", "", "")
	ip := fs.String("listen-ip", "", "")
	outIP := fs.String("outbound-ip", "", "")
	app := fs.String("app-address", "", "")
	admin := fs.String("admin-address", "", "")
	xds := fs.String("xds-address", "", "")
	protocol := fs.String("xds-protocol", "", "")
	fs.String("workload", "", "")      // a stats tag; the static config has no stats to tag
	fs.Bool("xds-insecure", false, "") // the static config has no xDS at all
	fs.String("workload", "", "")      // the static config tags no stats
	out := fs.String("o", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	adminSock, err := socket(*admin)
	if err != nil {
		return err
	}
	appSock, err := socket(*app)
	if err != nil {
		return err
	}
	in, err := listener("inbound", net.JoinHostPort(*ip, "8000"), obj{"route": obj{"cluster": "app"}})
	if err != nil {
		return err
	}
	outL, err := listener("outbound", net.JoinHostPort(*outIP, "8001"),
		obj{"direct_response": obj{"status": 404, "body": obj{"inline_string": "fake: no routes\n"}}})
	if err != nil {
		return err
	}
	cfg := obj{
		// The xDS addresses and protocol go into the node's metadata, for the harness's
		// test to read.
		"node":  obj{"id": *ns + "/" + *pod, "cluster": "fake", "metadata": obj{"xds_address": *xds, "xds_protocol": *protocol}},
		"admin": obj{"address": adminSock},
		"static_resources": obj{
			"listeners": []obj{in, outL},
			"clusters": []obj{{"name": "app", "type": "STATIC", "load_assignment": obj{
				"cluster_name": "app",
				"endpoints":    []obj{{"lb_endpoints": []obj{{"endpoint": obj{"address": appSock}}}}},
			}}},
		},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(*out, b, 0o644)
}

// cp serves "ok" on every path of --http-addr, but /whoami, which answers its
// --leader-election-identity and --debug-addr as JSON; --debug-addr answers "debug".
func cp(args []string) error {
	fs := flag.NewFlagSet("cp", flag.ContinueOnError)
	fs.String("kubeconfig", "", "")
	fs.String("xds-addr", "", "")
	fs.Bool("xds-insecure", false, "")
	httpAddr := fs.String("http-addr", "", "")
	debugAddr := fs.String("debug-addr", "", "")
	identity := fs.String("leader-election-identity", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: *httpAddr, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/whoami" {
			json.NewEncoder(w).Encode(obj{"identity": *identity, "debug_addr": *debugAddr})
			return
		}
		fmt.Fprintln(w, "ok")
	})}
	servers := []*http.Server{srv}
	if *debugAddr != "" {
		servers = append(servers, &http.Server{Addr: *debugAddr, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprintln(w, "debug")
		})})
	}
	errs := make(chan error, len(servers))
	for _, s := range servers {
		go func() {
			if err := s.ListenAndServe(); err != http.ErrServerClosed {
				errs <- err
			}
		}()
	}
	select {
	case <-ctx.Done():
	case err := <-errs:
		return err
	}
	for _, s := range servers {
		s.Close()
	}
	return nil
}
