package discovery

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

func TestUnreachable(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	gr := schema.GroupResource{Resource: "services"}
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"no error", nil, false},
		{"connection refused", refused, true},
		{"wrapped connection refused", errors.Join(errors.New("Get https://127.0.0.1:6443/api/v1/services"), refused), true},
		{"EOF", io.EOF, true},
		{"503, a server starting or stopping", apierrors.NewServiceUnavailable("starting"), true},
		{"403: the server answered", apierrors.NewForbidden(gr, "", errors.New("denied")), false},
		{"410: the server answered", apierrors.NewResourceExpired("too old"), false},
		{"429: left to client-go's backoff", apierrors.NewTooManyRequests("slow down", 1), false},
		{"500: the server answered", apierrors.NewInternalError(errors.New("boom")), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := unreachable(tt.err); got != tt.want {
				t.Errorf("unreachable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestListWaitsForTheProber: a list that cannot reach the API reports the API
// unreachable (state, gauge) and is retried as soon as the prober sees the API back,
// not after a backoff; an error the server answered passes through at once.
func TestListWaitsForTheProber(t *testing.T) {
	var down atomic.Bool
	down.Store(true)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	probe := func(context.Context) error {
		if down.Load() {
			return refused
		}
		return nil
	}
	reg := prometheus.NewRegistry()
	h := newAPIHealthProbe(probe, reg, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	probing := make(chan struct{})
	go func() { h.run(ctx); close(probing) }()
	defer func() { cancel(); <-probing }()

	var lists atomic.Int32
	var answer atomic.Pointer[error]
	lw := h.listWatch(&cache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			lists.Add(1)
			if down.Load() {
				return nil, refused
			}
			if err := answer.Load(); err != nil {
				return nil, *err
			}
			return &corev1.ServiceList{}, nil
		},
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) {
			return watch.NewFake(), nil
		},
	}).(cache.ListerWatcherWithContext)

	listed := make(chan error, 1)
	go func() {
		_, err := lw.ListWithContext(ctx, metav1.ListOptions{})
		listed <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for h.health().Reachable {
		if time.Now().After(deadline) {
			t.Fatal("the API was not reported unreachable within 5s of a refused list")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s := h.health(); s.Since.IsZero() || !errors.Is(s.Err, syscall.ECONNREFUSED) {
		t.Errorf("health %+v, want unreachable since a time, for the refused connection", s)
	}
	if g := reachableGauge(t, reg); g != 0 {
		t.Errorf("bearkong_kube_api_reachable %v while unreachable, want 0", g)
	}
	select {
	case err := <-listed:
		t.Fatalf("list returned %v while the API is unreachable; want it to wait", err)
	case <-time.After(3 * apiProbeRetry):
	}

	down.Store(false)
	back := time.Now()
	select {
	case err := <-listed:
		if err != nil {
			t.Fatalf("list after the API is back: %v", err)
		}
		// Behaviour, not speed: the list waits for the prober's next probe, not for
		// apiWaitMax and not for a backoff.
		if took := time.Since(back); took > apiWaitMax/2 {
			t.Errorf("list returned %s after the API was back; want about one probe interval (%s)", took, apiProbeRetry)
		}
	case <-time.After(apiWaitMax):
		t.Fatal("list did not return once the API was back")
	}
	if s := h.health(); !s.Reachable || s.Err != nil || s.Since.IsZero() {
		t.Errorf("health %+v after the API is back, want reachable since a time", s)
	}
	if g := reachableGauge(t, reg); g != 1 {
		t.Errorf("bearkong_kube_api_reachable %v once reachable, want 1", g)
	}

	forbidden := error(apierrors.NewForbidden(schema.GroupResource{Resource: "services"}, "", errors.New("denied")))
	answer.Store(&forbidden)
	n := lists.Load()
	if _, err := lw.ListWithContext(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list answered 403: %v, want the 403", err)
	}
	if got := lists.Load() - n; got != 1 {
		t.Errorf("a 403 was tried %d times, want once (left to client-go)", got)
	}
	if !h.health().Reachable {
		t.Error("a 403 made the API unreachable")
	}
}

// reachableGauge reads bearkong_kube_api_reachable from reg.
func reachableGauge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "bearkong_kube_api_reachable" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no bearkong_kube_api_reachable")
	return 0
}
