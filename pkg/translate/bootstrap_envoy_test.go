package translate

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// xdsTestPKI is a root and a server certificate it signs, for the xDS server of a test.
type xdsTestPKI struct {
	rootPEM []byte
	server  tls.Certificate
}

func newXDSTestPKI(t *testing.T, dnsNames []string, ips []net.IP) xdsTestPKI {
	t.Helper()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "xds"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: dnsNames, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, root, &key.PublicKey, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	return xdsTestPKI{
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER}),
		server:  tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
	}
}

// recordingADS accepts ADS streams, records the authorization header and the SNI of
// each, and serves nothing: what the test looks at is what Envoy sends.
type recordingADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu     sync.Mutex
	auths  []string
	notify chan struct{}
}

func (r *recordingADS) StreamAggregatedResources(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	md, _ := metadata.FromIncomingContext(s.Context())
	r.mu.Lock()
	r.auths = append(r.auths, md.Get("authorization")...)
	if len(md.Get("authorization")) == 0 {
		r.auths = append(r.auths, "<none>")
	}
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

func (r *recordingADS) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auths...)
}

// waitAuth waits until a stream arrived with the authorization value want.
func (r *recordingADS) waitAuth(t *testing.T, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		for _, a := range r.seen() {
			if a == want {
				return
			}
		}
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no ADS stream with authorization %q within %s; streams seen with: %q", want, timeout, r.seen())
		}
	}
}

// serveTLS serves rec over TLS with cert on addr until the returned stop is called.
func serveTLS(t *testing.T, addr string, cert tls.Certificate, rec *recordingADS) (stop func(), bound string) {
	t.Helper()
	var lis net.Listener
	var err error
	// The port of a stopped server may take a moment to be free again.
	for i := 0; i < 50; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, rec)
	go g.Serve(lis)
	return g.Stop, lis.Addr().String()
}

func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// runEnvoyWithBootstrap runs Envoy with o's bootstrap until the test ends.
func runEnvoyWithBootstrap(t *testing.T, envoy string, o BootstrapOptions) {
	t.Helper()
	b, err := Bootstrap(o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "bootstrap.json")
	if err := os.WriteFile(path, stableJSON(t, b), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, envoy, "-c", path, "--disable-hot-restart", "--log-level", "warn", "--concurrency", "1")
	logs, err := os.Create(filepath.Join(t.TempDir(), "envoy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		logs.Close()
		if t.Failed() {
			out, _ := os.ReadFile(logs.Name())
			t.Logf("envoy log:\n%s", out)
		}
	})
}

// TestBootstrapTokenRotation runs the real Envoy with a secure bootstrap against a TLS
// ADS server and checks that it presents the token file's content as a bearer token, and
// that after the kubelet rewrites the file (projected tokens rotate), the next stream
// carries the new token: Envoy reads the file per stream, not once at start.
func TestBootstrapTokenRotation(t *testing.T) {
	envoy := envoyBinary(t)
	pki := newXDSTestPKI(t, []string{"bearkong.bearkong-system.svc"}, nil)
	rec := &recordingADS{notify: make(chan struct{}, 1)}
	stop, addr := serveTLS(t, "127.0.0.1:0", pki.server, rec)
	defer func() { stop() }()

	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("token-one"), 0o600); err != nil {
		t.Fatal(err)
	}
	runEnvoyWithBootstrap(t, envoy, BootstrapOptions{
		PodName: "app-1-a", PodNamespace: "default",
		AdminAddress:  freeLoopbackPort(t),
		XDSAddress:    addr,
		XDSRootCA:     pki.rootPEM,
		XDSTokenFile:  token,
		XDSServerName: "bearkong.bearkong-system.svc",
		XDSProtocol:   XDSProtocolSotW, // the protocol recordingADS serves, whatever the default
	})
	rec.waitAuth(t, "Bearer token-one", 30*time.Second)

	// The kubelet replaces the file atomically (a symlink swap); a rename does the same.
	tmp := token + ".new"
	if err := os.WriteFile(tmp, []byte("token-two"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, token); err != nil {
		t.Fatal(err)
	}
	// Force a new stream: the control plane restarts on the same address.
	stop()
	stop, _ = serveTLS(t, addr, pki.server, rec)
	rec.waitAuth(t, "Bearer token-two", 60*time.Second)
}

// TestBootstrapVerifiesServerName runs Envoy against a server whose certificate does
// not hold the name the bootstrap asks for: no stream may get through.
func TestBootstrapVerifiesServerName(t *testing.T) {
	envoy := envoyBinary(t)
	pki := newXDSTestPKI(t, []string{"someone-else.example"}, nil)
	rec := &recordingADS{notify: make(chan struct{}, 1)}
	stop, addr := serveTLS(t, "127.0.0.1:0", pki.server, rec)
	defer stop()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("token-one"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The control test: the same server and a bootstrap that names its certificate's
	// name is served (so the refusal below is the name's doing).
	runEnvoyWithBootstrap(t, envoy, BootstrapOptions{
		PodName: "app-1-a", PodNamespace: "default", AdminAddress: freeLoopbackPort(t),
		XDSAddress: addr, XDSRootCA: pki.rootPEM, XDSTokenFile: token, XDSServerName: "someone-else.example",
		XDSProtocol: XDSProtocolSotW, // the protocol recordingADS serves, whatever the default
	})
	rec.waitAuth(t, "Bearer token-one", 30*time.Second)

	rec2 := &recordingADS{notify: make(chan struct{}, 1)}
	stop2, addr2 := serveTLS(t, "127.0.0.1:0", pki.server, rec2)
	defer stop2()
	runEnvoyWithBootstrap(t, envoy, BootstrapOptions{
		PodName: "app-1-b", PodNamespace: "default", AdminAddress: freeLoopbackPort(t),
		XDSAddress: addr2, XDSRootCA: pki.rootPEM, XDSTokenFile: token, XDSServerName: "bearkong.bearkong-system.svc",
		XDSProtocol: XDSProtocolSotW,
	})
	// Envoy retries within a second or two; five seconds is several attempts.
	time.Sleep(5 * time.Second)
	if got := rec2.seen(); len(got) != 0 {
		t.Fatalf("a stream got through to a server whose certificate lacks the server name: %q", got)
	}
}

// protocolADS accepts ADS streams of both protocols, records which protocol each one
// speaks, and serves nothing.
type protocolADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	mu     sync.Mutex
	seen   []string
	notify chan struct{}
}

func (p *protocolADS) record(protocol string) {
	p.mu.Lock()
	p.seen = append(p.seen, protocol)
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *protocolADS) StreamAggregatedResources(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	p.record(XDSProtocolSotW)
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

func (p *protocolADS) DeltaAggregatedResources(s discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	p.record(XDSProtocolDelta)
	for {
		if _, err := s.Recv(); err != nil {
			return nil
		}
	}
}

// TestBootstrapProtocolOpensItsStream runs the real Envoy with each protocol's bootstrap,
// in each mode, against a server of both: Envoy must open the stream of the protocol the
// bootstrap names (validate mode only parses api_type), and never the other one.
func TestBootstrapProtocolOpensItsStream(t *testing.T) {
	envoy := envoyBinary(t)
	pki := newXDSTestPKI(t, []string{"bearkong.bearkong-system.svc"}, nil)
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("token-one"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, secure := range []bool{false, true} {
		for _, protocol := range []string{XDSProtocolSotW, XDSProtocolDelta} {
			mode := map[bool]string{false: "insecure", true: "secure"}[secure]
			t.Run(mode+"/"+protocol, func(t *testing.T) {
				t.Parallel()
				lis, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				var opts []grpc.ServerOption
				o := BootstrapOptions{PodName: "app-1-a", PodNamespace: "default", AdminAddress: freeLoopbackPort(t),
					XDSAddress: lis.Addr().String(), XDSProtocol: protocol}
				if secure {
					opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pki.server}, MinVersion: tls.VersionTLS12})))
					o.XDSRootCA, o.XDSTokenFile, o.XDSServerName = pki.rootPEM, token, "bearkong.bearkong-system.svc"
				} else {
					o.XDSInsecure = true
				}
				srv := &protocolADS{notify: make(chan struct{}, 1)}
				g := grpc.NewServer(opts...)
				discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
				go g.Serve(lis)
				defer g.Stop()
				runEnvoyWithBootstrap(t, envoy, o)

				deadline := time.After(30 * time.Second)
				for {
					srv.mu.Lock()
					seen := append([]string(nil), srv.seen...)
					srv.mu.Unlock()
					if len(seen) > 0 {
						for _, p := range seen {
							if p != protocol {
								t.Fatalf("streams seen %q, want only %s", seen, protocol)
							}
						}
						return
					}
					select {
					case <-srv.notify:
					case <-deadline:
						t.Fatalf("no ADS stream within 30s")
					}
				}
			})
		}
	}
}
