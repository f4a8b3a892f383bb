package main

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
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
	}
	start := time.Now()
	if h.cfg.Latency > 0 {
		h.sleep(r, h.cfg.Latency)
	}
	resp := response{
		Name:        h.cfg.Name,
		URI:         r.URL.RequestURI(),
		Type:        "HTTP",
		IPAddresses: h.ips,
		Body:        h.cfg.Body,
		Code:        http.StatusOK,
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
