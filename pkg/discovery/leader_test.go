package discovery

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestLeadershipTerms(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := newLeadership(register(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "bearkong_leader"})))
	gauge := func() float64 { return sumMetric(t, reg, "bearkong_leader", nil) }
	if l.Leading() {
		t.Fatal("leading before any term")
	}

	got := make(chan context.Context, 1)
	go func() {
		term, _ := l.Await(t.Context())
		got <- term
	}()
	select {
	case <-got:
		t.Fatal("Await returned before a term began")
	case <-time.After(50 * time.Millisecond):
	}
	if !l.begin(t.Context()) {
		t.Fatal("begin refused a live context")
	}
	var term context.Context
	select {
	case term = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("Await did not return when the term began")
	}
	if !l.Leading() || gauge() != 1 || term.Err() != nil {
		t.Fatalf("leading=%v gauge=%v term.Err=%v, want leading, 1, live", l.Leading(), gauge(), term.Err())
	}
	if !l.stop() {
		t.Fatal("stop found no term")
	}
	if l.Leading() || gauge() != 0 || term.Err() == nil {
		t.Fatalf("after stop: leading=%v gauge=%v term.Err=%v, want not leading, 0, done", l.Leading(), gauge(), term.Err())
	}
	if l.stop() {
		t.Error("a second stop found a term")
	}

	// client-go calls OnStartedLeading in a goroutine: a term whose context already
	// ended must not begin.
	ended, cancel := context.WithCancel(t.Context())
	cancel()
	if l.begin(ended) || l.Leading() || gauge() != 0 {
		t.Error("a term began with an ended context")
	}

	// Await returns nil when its own context ends first.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if term, _ := l.Await(ctx); term != nil {
		t.Error("Await returned a term without one")
	}
}

// TestRootPublisherWritesOnlyWhileLeading: between terms the publisher remembers what
// to publish and writes nothing; when a term begins it publishes, and after the term
// ends nothing more is written.
func TestRootPublisherWritesOnlyWhileLeading(t *testing.T) {
	client := newFakeClient()
	l := newLeadership(prometheus.NewGauge(prometheus.GaugeOpts{Name: "bearkong_leader"}))
	p := NewRootPublisher(client, RootPublisherOptions{Leadership: l, RetryInterval: 10 * time.Millisecond, ResyncInterval: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	cm := func() (string, bool) {
		c, err := client.CoreV1().ConfigMaps("a").Get(t.Context(), RootConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return "", false
		}
		if err != nil {
			t.Fatal(err)
		}
		return c.Data[RootConfigMapKey], true
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("not within 5s: %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	if err := p.Publish(t.Context(), []byte("root one"), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // five retry ticks
	if _, ok := cm(); ok {
		t.Fatal("published while not leading")
	}

	term, end := context.WithCancel(t.Context())
	l.begin(term)
	waitFor("the root published when the term began", func() bool { v, ok := cm(); return ok && v == "root one" })

	end()
	l.stop()
	if err := p.Publish(t.Context(), []byte("root two"), []string{"a"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if v, _ := cm(); v != "root one" {
		t.Fatalf("ConfigMap holds %q after the term ended, want root one still", v)
	}

	l.begin(t.Context())
	waitFor("the new root published in the next term", func() bool { v, _ := cm(); return v == "root two" })
}
