package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/ca"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// bearkong is the real control plane with the benchmark as its snapshot source: every
// snapshot goes through controlplane's translate loop (translate.New, then
// ads.Server.SetConfig), exactly as snapshots from pkg/discovery do.
type bearkong struct {
	src *source
}

func newBearkong() *bearkong { return &bearkong{src: &source{ch: make(chan *mesh.Snapshot, 1)}} }

func (b *bearkong) Start(ctx context.Context) (string, error) {
	return startControlPlane(ctx, b.src, nil)
}

func (b *bearkong) Apply(snap *mesh.Snapshot) error {
	b.src.publish(snap)
	return nil
}

// source implements controlplane.Source like pkg/discovery: it holds at most one
// snapshot, and a slow reader gets the newest.
type source struct{ ch chan *mesh.Snapshot }

func (s *source) Run(ctx context.Context) error { <-ctx.Done(); return nil }

func (s *source) Snapshots() <-chan *mesh.Snapshot { return s.ch }

func (s *source) HasSynced() bool { return true }

func (s *source) publish(snap *mesh.Snapshot) {
	for {
		select {
		case s.ch <- snap:
			return
		default:
			select {
			case <-s.ch:
			default:
			}
		}
	}
}

func startControlPlane(ctx context.Context, src controlplane.Source, o *controlplane.Options) (string, error) {
	opts := controlplane.Options{}
	if o != nil {
		opts = *o
	}
	opts.XDSAddr, opts.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	if opts.Logger == nil {
		// Warnings (a stream refused or cut, and why) go to the run's log file: a lost
		// stream in the table should be explainable.
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if opts.Certificates == nil {
		// As `bearkong cp` runs by default: mutual TLS between sidecars, so every proxy
		// gets its own certificate over SDS from a CA with a generated root. (The xDS
		// channel itself stays plaintext: the simulated proxies prove no identity.)
		m, err := ca.GenerateRoot(ca.DefaultTrustDomain, time.Now())
		if err != nil {
			return "", err
		}
		a, err := ca.New(m, ca.Options{})
		if err != nil {
			return "", err
		}
		opts.Certificates = controlplane.AuthorityCertificates(a)
	}
	cp := controlplane.New(src, opts)
	if err := cp.Listen(); err != nil {
		return "", err
	}
	go func() {
		if err := cp.Serve(ctx); err != nil {
			fmt.Println("control plane:", err)
		}
	}()
	return cp.XDSAddr(), nil
}

// kube is bearkong on the real informer path: pkg/discovery over an API server, with the
// defaults of `bearkong cp`.
type kube struct {
	kubeconfig string
}

func newKube(kubeconfig string) (*kube, error) {
	if kubeconfig == "" {
		return nil, fmt.Errorf("kube: -kubeconfig is required")
	}
	return &kube{kubeconfig: kubeconfig}, nil
}

func (k *kube) Start(ctx context.Context) (string, error) {
	client, gateway, err := discovery.NewClients(discovery.ClientOptions{Kubeconfig: k.kubeconfig})
	if err != nil {
		return "", err
	}
	reg := controlplane.NewRegistry()
	d := discovery.New(client, discovery.Options{Registerer: reg, GatewayClient: gateway})
	addr, err := startControlPlane(ctx, d, &controlplane.Options{Registry: reg})
	if err != nil {
		return "", err
	}
	// Answer only once the informers have synced and the first snapshot is out, as
	// /readyz would.
	deadline := time.Now().Add(2 * time.Minute)
	for !d.HasSynced() {
		if time.Now().After(deadline) {
			return "", fmt.Errorf("kube: informer caches did not sync within 2m")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, nil
}

func (k *kube) Apply(*mesh.Snapshot) error {
	return fmt.Errorf("kube: changes come from the API server")
}
