// Command demo-app is a tiny HTTP service that answers like nicholasjackson/fake-service:
// every request gets a JSON document naming the service and the instance that answered.
// The local mesh runs it as the application behind each Envoy sidecar.
//
// Configuration comes from the environment:
//
//	NAME                  service name in the response (default "demo-app")
//	LISTEN_ADDR           address to listen on (default 0.0.0.0:9090)
//	BODY                  the "body" field (default "Hello World"; MESSAGE is accepted too)
//	ERROR_RATE            fraction of requests, 0..1, that fail with ERROR_CODE (default 0)
//	ERROR_CODE            HTTP status of injected errors (default 500)
//	ERROR_PATTERN         random (default, as fake-service) or even: exactly ERROR_RATE of the
//	                      requests fail, spread evenly (at 0.5, every second one)
//	LATENCY               delay before answering, a Go duration such as 250ms or 3s
//	TIMING_50_PERCENTILE  fake-service's name for the same delay, used when LATENCY is unset
//
// GET /health and /ready answer 200 "OK" and are never delayed or failed. Any other path
// answers the JSON document (fake-service's, plus "protocol": the HTTP version the
// request arrived in), after LATENCY or, when given, the request's own
// ?latency=<duration> (so one instance can serve a 30 s and a 25 s request), and
// fails as ERROR_RATE says. Besides:
//
//	GET /download?bytes=N  N bytes of a fixed pseudo-random sequence, their SHA-256 in
//	                       the X-Content-Sha256 header
//	POST /upload           reads the body, answers {"name", "bytes", "sha256"} of it
//	GET /ws                a WebSocket echo: each message comes back as it went
//	gRPC                   the service bearkong.demo.Demo and server reflection (see
//	                       GRPCService)
//
// HTTP/1.1 and HTTP/2 without TLS (h2c, prior knowledge) share the one port; gRPC
// requests go to the gRPC server, everything else to the HTTP handler.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Getenv); err != nil {
		fmt.Fprintf(os.Stderr, "demo-app: %v\n", err)
		os.Exit(1)
	}
}

func run(getenv func(string) string) error {
	cfg, err := configFromEnv(getenv)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	h, err := newHandler(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	g := newGRPCServer(cfg.Name, time.Second)
	srv := newServer(withGRPC(h, g))
	slog.Info("demo-app listening", "name", cfg.Name, "addr", ln.Addr().String(),
		"error_rate", cfg.ErrorRate, "error_code", cfg.ErrorCode, "latency", cfg.Latency)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Shutdown waits for the requests in flight, and a gRPC stream may run for long: the
	// gRPC server ends its own streams first.
	g.Stop()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
