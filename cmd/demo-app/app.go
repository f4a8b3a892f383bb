package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
)

// config is the demo app's configuration; see the package comment.
type config struct {
	Name       string
	ListenAddr string
	Body       string
	ErrorRate  float64
	ErrorCode  int
	// ErrorEven spreads errors evenly (every second request at 0.5) instead of at random,
	// so that a test of retries does not depend on luck.
	ErrorEven bool
	Latency   time.Duration
}

// configFromEnv reads the configuration, rejecting values that do not parse or make no
// sense rather than silently using a default.
func configFromEnv(getenv func(string) string) (config, error) {
	cfg := config{
		Name:       "demo-app",
		ListenAddr: "0.0.0.0:9090",
		Body:       "Hello World",
		ErrorCode:  http.StatusInternalServerError,
	}
	if v := getenv("NAME"); v != "" {
		cfg.Name = v
	}
	if v := getenv("LISTEN_ADDR"); v != "" {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return config{}, fmt.Errorf("LISTEN_ADDR=%q: %w", v, err)
		}
		cfg.ListenAddr = v
	}
	if v := getenv("MESSAGE"); v != "" {
		cfg.Body = v
	}
	if v := getenv("BODY"); v != "" {
		cfg.Body = v
	}
	if v := getenv("ERROR_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		if err != nil || r < 0 || r > 1 {
			return config{}, fmt.Errorf("ERROR_RATE=%q: want a number between 0 and 1", v)
		}
		cfg.ErrorRate = r
	}
	if v := getenv("ERROR_CODE"); v != "" {
		c, err := strconv.Atoi(v)
		if err != nil || c < 100 || c > 599 {
			return config{}, fmt.Errorf("ERROR_CODE=%q: want an HTTP status code (100-599)", v)
		}
		cfg.ErrorCode = c
	}
	switch v := getenv("ERROR_PATTERN"); v {
	case "", "random":
	case "even":
		cfg.ErrorEven = true
	default:
		return config{}, fmt.Errorf("ERROR_PATTERN=%q: want random or even", v)
	}
	for _, name := range []string{"TIMING_50_PERCENTILE", "LATENCY"} { // LATENCY wins
		v := getenv(name)
		if v == "" {
			continue
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return config{}, fmt.Errorf("%s=%q: want a non-negative Go duration such as 250ms or 3s", name, v)
		}
		cfg.Latency = d
	}
	return cfg, nil
}

// response is fake-service's JSON document.
type response struct {
	Name        string   `json:"name"`
	URI         string   `json:"uri"`
	Type        string   `json:"type"`
	IPAddresses []string `json:"ip_addresses"`
	StartTime   string   `json:"start_time"`
	EndTime     string   `json:"end_time"`
	Duration    string   `json:"duration"`
	Body        string   `json:"body"`
	Error       string   `json:"error,omitempty"`
	Code        int      `json:"code"`
	// Protocol is the HTTP version the request arrived in ("HTTP/1.1", "HTTP/2.0"), so
	// that a test can see what a sidecar spoke to the app. Not in fake-service.
	Protocol string `json:"protocol"`
}

// handler serves the demo app.
type handler struct {
	cfg config
	ips []string
	// rand returns a number in [0, 1); tests replace it.
	rand func() float64
	// sleep waits for d or until the request is cancelled; tests replace it.
	sleep func(r *http.Request, d time.Duration)
	// served counts requests, for ERROR_PATTERN=even.
	served atomic.Uint64
}

// timeFormat is fake-service's timestamp format.
const timeFormat = "2006-01-02T15:04:05.000000"

func newHandler(cfg config) (*handler, error) {
	ips, err := ipAddresses(cfg.ListenAddr)
	if err != nil {
		return nil, err
	}
	return &handler{cfg: cfg, ips: ips, rand: rand.Float64, sleep: sleepCtx}, nil
}

// fail decides whether this request gets the injected error. Evenly: request n fails
// when floor((n+1)*rate) > floor(n*rate), which is exactly rate of them, spread out.
func (h *handler) fail() bool {
	if h.cfg.ErrorRate <= 0 {
		return false
	}
	if h.cfg.ErrorEven {
		n := float64(h.served.Add(1) - 1)
		return math.Floor((n+1)*h.cfg.ErrorRate) > math.Floor(n*h.cfg.ErrorRate)
	}
	return h.rand() < h.cfg.ErrorRate
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health", "/ready":
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, "OK")
		return
	case "/download":
		h.download(w, r)
		return
	case "/upload":
		h.upload(w, r)
		return
	case "/ws":
		// No origin check: Origin guards browsers against cross-site pages, and the demo
		// app's callers are other services behind the mesh.
		websocket.Server{Handler: echo}.ServeHTTP(w, r)
		return
	}
	latency := h.cfg.Latency
	if v := r.URL.Query().Get("latency"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			http.Error(w, fmt.Sprintf("latency=%q: want a non-negative Go duration such as 250ms or 30s", v), http.StatusBadRequest)
			return
		}
		latency = d
	}
	start := time.Now()
	if latency > 0 {
		h.sleep(r, latency)
	}
	resp := response{
		Name:        h.cfg.Name,
		URI:         r.URL.RequestURI(),
		Type:        "HTTP",
		IPAddresses: h.ips,
		Body:        h.cfg.Body,
		Code:        http.StatusOK,
		Protocol:    r.Proto,
	}
	if h.fail() {
		resp.Code = h.cfg.ErrorCode
		resp.Error = "Service error automatically injected"
	}
	end := time.Now()
	resp.StartTime = start.Format(timeFormat)
	resp.EndTime = end.Format(timeFormat)
	resp.Duration = end.Sub(start).String()

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.Code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(resp)
}

// maxTransfer bounds /download and /upload, so that a typo cannot make the app write or
// hash without end.
const maxTransfer = 1 << 30

// download answers GET /download?bytes=N with N bytes of a fixed pseudo-random sequence
// (incompressible, so nothing on the path can shrink it) and their SHA-256 in the
// X-Content-Sha256 header, so that the caller can check what arrived.
func (h *handler) download(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
	if err != nil || n < 0 || n > maxTransfer {
		http.Error(w, fmt.Sprintf("bytes=%q: want a number of bytes from 0 to %d", r.URL.Query().Get("bytes"), maxTransfer), http.StatusBadRequest)
		return
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, content(n)); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	w.Header().Set("X-Content-Sha256", hex.EncodeToString(sum.Sum(nil)))
	_, _ = io.Copy(w, content(n))
}

// content returns n bytes of a pseudo-random sequence that is the same on every call.
func content(n int64) io.Reader {
	return io.LimitReader(rand.NewChaCha8([32]byte{'b', 'e', 'a', 'r', 'k', 'o', 'n', 'g'}), n)
}

// uploadResult is what POST /upload answers.
type uploadResult struct {
	Name   string `json:"name"`
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// upload answers POST /upload with the size and SHA-256 of the body it read.
func (h *handler) upload(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost && r.Method != http.MethodPut {
		w.Header().Set("Allow", "POST, PUT")
		http.Error(w, "upload with POST or PUT", http.StatusMethodNotAllowed)
		return
	}
	sum := sha256.New()
	n, err := io.Copy(sum, io.LimitReader(r.Body, maxTransfer+1))
	if err != nil {
		http.Error(w, fmt.Sprintf("reading the body: %v", err), http.StatusBadRequest)
		return
	}
	if n > maxTransfer {
		http.Error(w, fmt.Sprintf("body above %d bytes", maxTransfer), http.StatusRequestEntityTooLarge)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(uploadResult{Name: h.cfg.Name, Bytes: n, SHA256: hex.EncodeToString(sum.Sum(nil))})
}

// echo sends every WebSocket message back as it came, text as text and binary as
// binary, until the peer closes.
func echo(ws *websocket.Conn) {
	defer ws.Close()
	for {
		var f frame
		if err := frameCodec.Receive(ws, &f); err != nil {
			return
		}
		if err := frameCodec.Send(ws, f); err != nil {
			return
		}
	}
}

// frame is one WebSocket message with its type (websocket.TextFrame or BinaryFrame).
type frame struct {
	typ  byte
	data []byte
}

// frameCodec reads and writes frames, keeping their type, which websocket.Message
// does not report.
var frameCodec = websocket.Codec{
	Marshal: func(v any) ([]byte, byte, error) {
		f := v.(frame)
		return f.data, f.typ, nil
	},
	Unmarshal: func(data []byte, typ byte, v any) error {
		*v.(*frame) = frame{typ: typ, data: data}
		return nil
	},
}

// withGRPC serves gRPC requests (HTTP/2 with a Content-Type of application/grpc) with
// g and everything else with h, so that one port serves both, as an app behind a
// sidecar must. grpc.Server.ServeHTTP runs gRPC on net/http's own HTTP/2 server:
// https://pkg.go.dev/google.golang.org/grpc#Server.ServeHTTP
func withGRPC(h http.Handler, g *grpc.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			g.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// newServer returns the demo app's server: HTTP/1.1 and HTTP/2 without TLS (h2c, with
// prior knowledge, as a sidecar speaks it) on one port.
func newServer(h http.Handler) *http.Server {
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, Protocols: &protocols}
}

func sleepCtx(r *http.Request, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	}
}

// ipAddresses returns the addresses that identify this instance: the listen address when
// it names one (as it does for the local mesh's 127.0.1.N pods), else the host's
// non-loopback interface addresses, as fake-service reports in a pod.
func ipAddresses(listenAddr string) ([]string, error) {
	host, _, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return nil, fmt.Errorf("LISTEN_ADDR=%q: %w", listenAddr, err)
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return []string{ip.String()}, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("interface addresses: %w", err)
	}
	ips := []string{}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			ips = append(ips, n.IP.String())
		}
	}
	return ips, nil
}
