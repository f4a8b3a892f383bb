package controlplane

import (
	"fmt"
	"net/http"
	"slices"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/resource"
)

// Test hooks: ways for the end-to-end tests to put one proxy in the states that
// `bearkong status` and `bearkong config --diff` exist to show, without touching the
// Kubernetes objects the other proxies share. They are off unless Options.TestHooks is
// set (`bearkong cp --unsafe-testing-hooks`, hidden), and served only on the debug
// listener (--debug-addr, loopback by default):
//
//	POST|DELETE /debug/testing/pause?node=<id>  hold the proxy at the config it has now
//	POST|DELETE /debug/testing/nack?node=<id>   add a listener to its LDS that Envoy rejects
//
// A paused proxy keeps its stream, and its Envoy keeps answering /config_dump, but new
// configs do not reach it: its clusters, endpoints, listeners and routes stay as they
// were (its secrets still rotate, so that its certificate never expires under a long
// test). /debug/config shows what bearkong would serve it, so the two differ as soon as
// the mesh changes. DELETE resumes it, and it catches up at once.

// RejectedListenerName names the listener the nack hook adds: a listener with no
// address, which Envoy refuses ("error adding listener named ...: address is
// necessary"), so the proxy NACKs its LDS and keeps running its other listeners. No
// Kubernetes object is behind it, so the quarantine blames none.
const RejectedListenerName = "bearkong-testing-rejected"

type testHooks struct {
	cp *ControlPlane

	mu     sync.Mutex
	paused map[string]*resource.Proxy // node id -> the config it is held at
	nacked map[string]bool
	reject *resource.Set
}

func newTestHooks(cp *ControlPlane) *testHooks {
	r, err := resource.New(resource.Listener, RejectedListenerName, &listenerv3.Listener{Name: RejectedListenerName})
	if err != nil {
		panic(err) // a constant message always marshals
	}
	return &testHooks{cp: cp, paused: map[string]*resource.Proxy{}, nacked: map[string]bool{}, reject: resource.NewSet(r)}
}

// wrap returns resolve with the hooks applied. The views it returns reuse the same sets
// from one call to the next, so that a held or rejected config is not sent again.
func (h *testHooks) wrap(resolve func(*corev3.Node) (*resource.Proxy, error)) func(*corev3.Node) (*resource.Proxy, error) {
	return func(node *corev3.Node) (*resource.Proxy, error) {
		p, err := resolve(node)
		if err != nil {
			return nil, err
		}
		h.mu.Lock()
		held, nack := h.paused[node.GetId()], h.nacked[node.GetId()]
		h.mu.Unlock()
		if held == nil && !nack {
			return p, nil
		}
		out := *p
		if held != nil {
			for _, t := range resource.Types {
				if t != resource.Secret {
					out.Views[t] = held.Views[t]
				}
			}
			out.Serves = held.Serves
		}
		if nack {
			out.Views[resource.Listener] = append(slices.Clip(out.Views[resource.Listener]), h.reject)
		}
		return &out, nil
	}
}

// ServeHTTP serves /debug/testing/pause and /debug/testing/nack.
func (h *testHooks) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("node")
	if id == "" {
		http.Error(w, "bearkong: ?node=<pod>.<namespace> is required", http.StatusBadRequest)
		return
	}
	on := r.Method == http.MethodPost
	if !on && r.Method != http.MethodDelete {
		http.Error(w, "bearkong: POST sets the hook, DELETE lifts it", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case "/debug/testing/pause":
		if !on {
			h.mu.Lock()
			delete(h.paused, id)
			h.mu.Unlock()
			break
		}
		held, err := h.current(id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		h.mu.Lock()
		h.paused[id] = held
		h.mu.Unlock()
	case "/debug/testing/nack":
		h.mu.Lock()
		if on {
			h.nacked[id] = true
		} else {
			delete(h.nacked, id)
		}
		h.mu.Unlock()
	default:
		http.NotFound(w, r)
		return
	}
	h.cp.log.Warn("test hook", "hook", r.URL.Path, "node", id, "on", on)
	// Wake every stream with the same config again: each one resolves through the hooks,
	// and only the proxy concerned has anything new to send. ChangedAt stays zero so that
	// no convergence is measured from it.
	if c := h.cp.current.Load(); c != nil {
		h.cp.ads.SetConfig(&ads.Config{Resolve: c.Resolve})
	}
	fmt.Fprintf(w, "%s %s: %v\n", r.URL.Path, id, on)
}

// current is the config node id runs now: what the current config resolves to for its
// stream's node.
func (h *testHooks) current(id string) (*resource.Proxy, error) {
	var node *corev3.Node
	for _, s := range h.cp.ads.Streams(id) {
		if n := s.NodeProto(); n != nil {
			node = n
		}
	}
	in := h.cp.intended.Load()
	if node == nil || in == nil {
		return nil, fmt.Errorf("bearkong: no proxy %q is connected to this replica", id)
	}
	return in.resolve(node)
}
