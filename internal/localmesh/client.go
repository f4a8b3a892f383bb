package localmesh

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Get sends GET / through the outbound listener of the pod named from, with the header
// "service: <to>", and returns the status and body.
func (m *Mesh) Get(ctx context.Context, from, to string) (status int, body []byte, err error) {
	p, ok := m.Pod(from)
	if !ok {
		return 0, nil, fmt.Errorf("localmesh: get: unknown pod %s", from)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.OutboundURL(), nil)
	if err != nil {
		return 0, nil, fmt.Errorf("localmesh: get: %w", err)
	}
	req.Header.Set(mesh.ServiceHeader, to)
	resp, err := m.http.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("localmesh: GET %s (service: %s) from %s: %w", p.OutboundURL(), to, from, err)
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, body, fmt.Errorf("localmesh: GET %s (service: %s) from %s: read body: %w", p.OutboundURL(), to, from, err)
	}
	return resp.StatusCode, body, nil
}

// Answer is the part of the demo app's JSON response that identifies who answered.
type Answer struct {
	Name        string   `json:"name"`
	IPAddresses []string `json:"ip_addresses"`
	Body        string   `json:"body"`
	Code        int      `json:"code"`
}

// IP returns the first address of the instance that answered, or "".
func (a Answer) IP() string {
	if len(a.IPAddresses) == 0 {
		return ""
	}
	return a.IPAddresses[0]
}

// ParseAnswer decodes a demo app response.
func ParseAnswer(body []byte) (Answer, error) {
	var a Answer
	if err := json.Unmarshal(body, &a); err != nil {
		return Answer{}, fmt.Errorf("not a demo-app answer: %w: %q", err, truncate(body, 200))
	}
	return a, nil
}

// Call is one request through the mesh and its outcome, as Call reports it.
type Call struct {
	From, To string
	Status   int
	Answer   Answer // zero unless the body was a demo-app answer
	// Pod is the name of the pod that answered, "" when unknown.
	Pod  string
	Body []byte
	Err  error
}

// Call makes a request like Get and works out which pod answered.
func (m *Mesh) Call(ctx context.Context, from, to string) Call {
	c := Call{From: from, To: to}
	c.Status, c.Body, c.Err = m.Get(ctx, from, to)
	if c.Err == nil {
		if a, err := ParseAnswer(c.Body); err == nil {
			c.Answer = a
			if p, ok := m.PodByIP(a.IP()); ok {
				c.Pod = p.Name
			}
		}
	}
	return c
}

// WaitReachable waits, within timeout, until a request from the pod to the service gets a
// 200 answered by that service.
func (m *Mesh) WaitReachable(ctx context.Context, timeout time.Duration, from, to string) error {
	err := Eventually(ctx, timeout, func(ctx context.Context) error {
		c := m.Call(ctx, from, to)
		switch {
		case c.Err != nil:
			return c.Err
		case c.Status != http.StatusOK || c.Answer.Name != to:
			return fmt.Errorf("got %d %q", c.Status, truncate(c.Body, 200))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("localmesh: %s -> %s: %w", from, to, err)
	}
	return nil
}

// WaitAllReachable waits, within timeout, until every pod reaches every service that has
// a pod.
func (m *Mesh) WaitAllReachable(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pods := m.Pods()
	targets := map[string]bool{}
	for _, p := range pods {
		targets[p.Service] = true
	}
	for _, from := range pods {
		for _, to := range m.Services() {
			if !targets[to] {
				continue
			}
			if err := m.WaitReachable(ctx, timeout, from.Name, to); err != nil {
				return err
			}
		}
	}
	return nil
}

// EnvoyStats returns the pod's Envoy counters and gauges, from the admin's /stats.
func (m *Mesh) EnvoyStats(ctx context.Context, podName string) (map[string]uint64, error) {
	p, ok := m.Pod(podName)
	if !ok {
		return nil, fmt.Errorf("localmesh: envoy stats: unknown pod %s", podName)
	}
	body, err := m.httpGet(ctx, p.AdminURL()+"/stats")
	if err != nil {
		return nil, fmt.Errorf("localmesh: envoy stats of %s: %w", podName, err)
	}
	return ParseEnvoyStats(body), nil
}

// ParseEnvoyStats parses the plain-text output of Envoy's /stats ("name: value" lines)
// into counters and gauges; histogram lines are skipped.
func ParseEnvoyStats(text []byte) map[string]uint64 {
	stats := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64); err == nil {
			stats[name] = n
		}
	}
	return stats
}

// EnvoyConfigDump returns the pod's Envoy /config_dump.
func (m *Mesh) EnvoyConfigDump(ctx context.Context, podName string) ([]byte, error) {
	p, ok := m.Pod(podName)
	if !ok {
		return nil, fmt.Errorf("localmesh: config dump: unknown pod %s", podName)
	}
	return m.httpGet(ctx, p.AdminURL()+"/config_dump")
}

// ControlPlaneGet GETs a path of the control plane's HTTP server (of its replica 0), e.g.
// "/debug/streams".
func (m *Mesh) ControlPlaneGet(ctx context.Context, path string) ([]byte, error) {
	return m.httpGet(ctx, m.ControlPlaneURL()+path)
}

// ControlPlaneReplicaGet GETs a path of replica i's HTTP server.
func (m *Mesh) ControlPlaneReplicaGet(ctx context.Context, i int, path string) ([]byte, error) {
	urls := m.ControlPlaneURLs()
	if i < 0 || i >= len(urls) {
		return nil, fmt.Errorf("localmesh: no control-plane replica %d (the mesh runs %d)", i, len(urls))
	}
	return m.httpGet(ctx, urls[i]+path)
}

// DebugGet GETs a path of replica i's --debug-addr listener, e.g. "/debug/pprof/heap".
func (m *Mesh) DebugGet(ctx context.Context, i int, path string) ([]byte, error) {
	if i < 0 || i >= len(m.cps) {
		return nil, fmt.Errorf("localmesh: no control-plane replica %d (the mesh runs %d)", i, len(m.cps))
	}
	return m.httpGet(ctx, m.DebugURL(i)+path)
}

func (m *Mesh) httpGet(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := m.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %q", url, resp.Status, truncate(body, 300))
	}
	return body, nil
}

func (m *Mesh) httpOK(ctx context.Context, url string) error {
	_, err := m.httpGet(ctx, url)
	return err
}

// Eventually calls check every 100ms until it returns nil, the timeout passes or ctx is
// done, and returns nil or an error carrying check's last error. A check can end the wait
// early by returning an error wrapped by permanent.
func Eventually(ctx context.Context, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		last := check(ctx)
		if last == nil {
			return nil
		}
		var perm permanentError
		if errors.As(last, &perm) {
			return perm.err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %s: %w", timeout, last)
		case <-tick.C:
		}
	}
}

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// permanent marks an error that Eventually should not retry.
func permanent(err error) error { return permanentError{err} }

// Permanent marks an error that ends an Eventually at once: what the check found will not
// get better by waiting.
func Permanent(err error) error { return permanent(err) }

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
