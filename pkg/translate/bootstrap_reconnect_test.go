package translate

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// streamLog is an ADS server for the reconnect tests: it records when each stream
// arrives (and at which server), answers the first request with an empty CDS response
// (a stream that gets a response counts as established to Envoy, which resets its retry
// backoff then), and, with closeAfter set, ends each stream after that long.
type streamLog struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	name       string
	closeAfter time.Duration
	all        *streamRecords
}

type streamArrival struct {
	server string
	at     time.Time
}

// streamRecords is shared by the servers of one test.
type streamRecords struct {
	mu     sync.Mutex
	seen   []streamArrival
	notify chan struct{}
}

func newStreamRecords() *streamRecords { return &streamRecords{notify: make(chan struct{}, 1)} }

func (r *streamRecords) add(server string) {
	r.mu.Lock()
	r.seen = append(r.seen, streamArrival{server, time.Now()})
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *streamRecords) list() []streamArrival {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]streamArrival(nil), r.seen...)
}

// waitFor waits until at least n streams arrived, and returns them all.
func (r *streamRecords) waitFor(t *testing.T, n int, timeout time.Duration) []streamArrival {
	t.Helper()
	deadline := time.After(timeout)
	for {
		if got := r.list(); len(got) >= n {
			return got
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("%d ADS streams within %s, want %d: %v", len(r.list()), timeout, n, r.list())
		}
	}
}

func (s *streamLog) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s.all.add(s.name)
	req, err := st.Recv()
	if err != nil {
		return nil
	}
	if err := st.Send(&discoveryv3.DiscoveryResponse{TypeUrl: typeURLPrefix + "envoy.config.cluster.v3.Cluster", VersionInfo: "1", Nonce: "1"}); err != nil {
		return nil
	}
	_ = req
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := st.Recv(); err != nil {
				return
			}
		}
	}()
	if s.closeAfter > 0 {
		select {
		case <-done:
		case <-time.After(s.closeAfter):
		}
		return nil
	}
	<-done
	return nil
}

// serveADS serves srv on addr (TLS with cert when cert is set) until the returned stop.
// addr may be a port that a stopped server held a moment ago.
func serveADS(t *testing.T, addr string, cert *tls.Certificate, srv discoveryv3.AggregatedDiscoveryServiceServer) (stop func(), bound string) {
	t.Helper()
	var lis net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if cert != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12})))
	}
	g := grpc.NewServer(opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	go g.Serve(lis)
	var once sync.Once
	return func() { once.Do(g.Stop) }, lis.Addr().String()
}

// reconnectModes are the two ADS channels of the bootstrap: the secure mode's Google gRPC
// client and the insecure mode's Envoy gRPC client over the static cluster. Each has
// backoffs of its own.
var reconnectModes = []struct {
	name   string
	secure bool
}{{"secure", true}, {"insecure", false}}

// bootstrapFor returns the options of a sidecar whose control plane is at addrs, in the
// secure mode (with pki's root and a token file) or not.
func bootstrapFor(t *testing.T, pod string, addrs string, secure bool, pki xdsTestPKI) BootstrapOptions {
	t.Helper()
	// streamLog serves state of the world, whatever the default protocol.
	o := BootstrapOptions{PodName: pod, PodNamespace: "default", AdminAddress: freeLoopbackPort(t), XDSAddress: addrs, XDSProtocol: XDSProtocolSotW}
	if !secure {
		o.XDSInsecure = true
		return o
	}
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("token"), 0o600); err != nil {
		t.Fatal(err)
	}
	o.XDSRootCA, o.XDSTokenFile = pki.rootPEM, token
	return o
}

// TestBootstrapReconnect takes the control plane away from a running Envoy for several
// seconds, long enough for both of Envoy's backoffs to grow to their maximum, then brings
// it back on the same address: Envoy's ADS stream must be back within 3 s of the server
// listening again. The bootstrap caps every backoff at 1 s (XDSRetryMaxInterval,
// xdsReconnectMax); 3 s leaves room for a loaded machine, while Envoy's defaults (30 s
// and 120 s) fail it. Two outages, to see the backoff's spread; the figures are logged.
func TestBootstrapReconnect(t *testing.T) {
	envoy := envoyBinary(t)
	const outage, bound = 6 * time.Second, 3 * time.Second
	for _, mode := range reconnectModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			pki := newXDSTestPKI(t, nil, []net.IP{net.IPv4(127, 0, 0, 1)})
			var cert *tls.Certificate
			if mode.secure {
				cert = &pki.server
			}
			rec := newStreamRecords()
			srv := &streamLog{name: "cp", all: rec}
			stop, addr := serveADS(t, "127.0.0.1:0", cert, srv)
			defer func() { stop() }()
			runEnvoyWithBootstrap(t, envoy, bootstrapFor(t, "app-1-a", addr, mode.secure, pki))
			rec.waitFor(t, 1, 30*time.Second)
			for i := 1; i <= 2; i++ {
				stop()
				time.Sleep(outage)
				n := len(rec.list())
				stop, _ = serveADS(t, addr, cert, srv)
				back := time.Now()
				got := rec.waitFor(t, n+1, 30*time.Second)
				took := got[n].at.Sub(back)
				t.Logf("%s mode, outage %d of %s: ADS stream back %s after the server listened again", mode.name, i, outage, took.Round(time.Millisecond))
				if took > bound {
					t.Errorf("outage %d: the ADS stream came back %s after the server listened again, want within %s", i, took.Round(time.Millisecond), bound)
				}
			}
		})
	}
}

// TestBootstrapReplicas runs Envoy with two control-plane addresses. Its successive ADS
// streams (each server ends a stream after a moment) go to both, not only the first
// (round robin: the secure mode's gRPC target, the insecure mode's cluster); and when the
// server it is connected to goes away, the next stream goes to the other at once, within
// the bootstrap's backoff cap of 1 s (3 s allowed, for a loaded machine).
func TestBootstrapReplicas(t *testing.T) {
	envoy := envoyBinary(t)
	for _, mode := range reconnectModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			pki := newXDSTestPKI(t, nil, []net.IP{net.IPv4(127, 0, 0, 1)})
			var cert *tls.Certificate
			if mode.secure {
				cert = &pki.server
			}
			rec := newStreamRecords()
			stopA, addrA := serveADS(t, "127.0.0.1:0", cert, &streamLog{name: "a", all: rec, closeAfter: 300 * time.Millisecond})
			defer func() { stopA() }()
			stopB, addrB := serveADS(t, "127.0.0.1:0", cert, &streamLog{name: "b", all: rec, closeAfter: 300 * time.Millisecond})
			defer func() { stopB() }()
			runEnvoyWithBootstrap(t, envoy, bootstrapFor(t, "app-1-a", addrA+","+addrB, mode.secure, pki))

			const n = 8
			got := rec.waitFor(t, n, 60*time.Second)
			count := map[string]int{}
			for _, s := range got[:n] {
				count[s.server]++
			}
			t.Logf("%s mode: %d successive streams went to %v", mode.name, n, count)
			if count["a"] < 2 || count["b"] < 2 {
				t.Errorf("%d successive ADS streams went to %v, want both servers used (round robin)", n, count)
			}

			// Now streams stay open: restart each server without closeAfter, then kill
			// the one Envoy is connected to.
			stopA()
			stopB()
			stopA, _ = serveADS(t, addrA, cert, &streamLog{name: "a", all: rec})
			stopB, _ = serveADS(t, addrB, cert, &streamLog{name: "b", all: rec})
			before := len(rec.list())
			got = rec.waitFor(t, before+1, 30*time.Second)
			connected := got[before].server
			// Let any other attempt of the reconnect settle, then take the last stream as
			// the one in use.
			time.Sleep(2 * time.Second)
			got = rec.list()
			connected = got[len(got)-1].server
			n0 := len(got)
			killed := time.Now()
			if connected == "a" {
				stopA()
			} else {
				stopB()
			}
			got = rec.waitFor(t, n0+1, 30*time.Second)
			next := got[n0]
			took := next.at.Sub(killed)
			t.Logf("%s mode: server %s killed; the next stream reached %s after %s", mode.name, connected, next.server, took.Round(time.Millisecond))
			if next.server == connected {
				t.Errorf("after server %s was killed, the next stream reached %s", connected, next.server)
			}
			if took > 3*time.Second {
				t.Errorf("the stream reached the other server %s after the first was killed, want within 3s", took.Round(time.Millisecond))
			}
		})
	}
}
