package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/translate"
)

// fakeReviewer knows a fixed set of tokens.
type fakeReviewer struct {
	ids  map[string]discovery.PodIdentity
	down bool
}

func (f fakeReviewer) Review(_ context.Context, token string) (discovery.PodIdentity, error) {
	if f.down {
		return discovery.PodIdentity{}, errors.New("connection refused")
	}
	id, ok := f.ids[token]
	if !ok {
		return discovery.PodIdentity{}, fmt.Errorf("%w: not authenticated", discovery.ErrTokenRefused)
	}
	return id, nil
}

var reviewer = fakeReviewer{ids: map[string]discovery.PodIdentity{
	"token-a": {Namespace: "default", ServiceAccount: "app-1", PodName: "app-1-a", PodUID: "uid-a"},
}}

func podNode(id, pod, ns string, extra ...string) *corev3.Node {
	f := map[string]*structpb.Value{}
	if pod != "" {
		f[translate.MetadataPodName] = structpb.NewStringValue(pod)
	}
	if ns != "" {
		f[translate.MetadataPodNamespace] = structpb.NewStringValue(ns)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		f[extra[i]] = structpb.NewStringValue(extra[i+1])
	}
	return &corev3.Node{Id: id, Metadata: &structpb.Struct{Fields: f}}
}

func TestAuthenticator(t *testing.T) {
	for _, tc := range []struct {
		name    string
		auth    []string // authorization header values
		rev     fakeReviewer
		node    *corev3.Node
		code    codes.Code
		message string
	}{
		{name: "ok", auth: []string{"Bearer token-a"}, node: podNode("app-1-a.default", "app-1-a", "default")},
		{name: "lower-case scheme", auth: []string{"bearer token-a"}, node: podNode("app-1-a.default", "app-1-a", "default")},
		{name: "no header", node: podNode("app-1-a.default", "app-1-a", "default"), code: codes.Unauthenticated, message: "no authorization header"},
		{name: "two headers", auth: []string{"Bearer token-a", "Bearer token-a"}, node: podNode("app-1-a.default", "app-1-a", "default"), code: codes.Unauthenticated, message: "more than one"},
		{name: "basic", auth: []string{"Basic token-a"}, node: podNode("app-1-a.default", "app-1-a", "default"), code: codes.Unauthenticated, message: `not "Bearer <token>"`},
		{name: "empty token", auth: []string{"Bearer "}, node: podNode("app-1-a.default", "app-1-a", "default"), code: codes.Unauthenticated, message: `not "Bearer <token>"`},
		{name: "refused token", auth: []string{"Bearer token-b"}, node: podNode("app-1-a.default", "app-1-a", "default"), code: codes.Unauthenticated, message: "token refused"},
		{name: "reviewer down", auth: []string{"Bearer token-a"}, rev: fakeReviewer{down: true}, node: podNode("app-1-a.default", "app-1-a", "default"), code: codes.Unavailable, message: "cannot review"},
		{name: "another pod's node id", auth: []string{"Bearer token-a"}, node: podNode("app-2-a.default", "app-1-a", "default"), code: codes.PermissionDenied, message: `node id is "app-2-a.default"`},
		{name: "another pod name", auth: []string{"Bearer token-a"}, node: podNode("app-1-a.default", "app-2-a", "default"), code: codes.PermissionDenied, message: `node metadata pod_name is "app-2-a"`},
		{name: "another namespace", auth: []string{"Bearer token-a"}, node: podNode("app-1-a.default", "app-1-a", "shop"), code: codes.PermissionDenied, message: `node metadata pod_namespace is "shop"`},
		{name: "no metadata", auth: []string{"Bearer token-a"}, node: &corev3.Node{Id: "app-1-a.default"}, code: codes.PermissionDenied, message: `pod_name is ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rev := tc.rev
			if rev.ids == nil && !rev.down {
				rev = reviewer
			}
			md := metadata.MD{}
			for _, a := range tc.auth {
				md.Append("authorization", a)
			}
			ctx := metadata.NewIncomingContext(context.Background(), md)
			got, err := controlplane.Authenticator(rev)(ctx, tc.node)
			if status.Code(err) != tc.code || (err != nil && !strings.Contains(err.Error(), tc.message)) {
				t.Fatalf("Authenticate = %v, want %v containing %q", err, tc.code, tc.message)
			}
			if err != nil {
				if strings.Contains(err.Error(), "token-a") || strings.Contains(err.Error(), "token-b") {
					t.Errorf("the error holds the token: %v", err)
				}
				return
			}
			n, err := translate.ParseNode(got)
			if err != nil {
				t.Fatal(err)
			}
			if n.ServiceAccount != "app-1" || n.PodUID != "uid-a" || n.ID != "app-1-a.default" {
				t.Errorf("authenticated node %+v, want service account app-1, pod UID uid-a", n)
			}
		})
	}
}

// TestAuthenticatorOverridesClaims checks that a proxy cannot claim an identity: what
// it sends under the trusted keys is replaced by what its token proves.
func TestAuthenticatorOverridesClaims(t *testing.T) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer token-a"))
	in := podNode("app-1-a.default", "app-1-a", "default", translate.MetadataServiceAccount, "admin", translate.MetadataPodUID, "forged")
	got, err := controlplane.Authenticator(reviewer)(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	n, err := translate.ParseNode(got)
	if err != nil {
		t.Fatal(err)
	}
	if n.ServiceAccount != "app-1" || n.PodUID != "uid-a" {
		t.Errorf("node %+v keeps the proxy's claims", n)
	}
}

func selfSigned(t *testing.T, name string) (*tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// pingADS is an ADS service that answers the first request with an empty CDS response.
type pingADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
}

func (pingADS) StreamAggregatedResources(s discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	return s.Send(&discoveryv3.DiscoveryResponse{VersionInfo: "1", Nonce: "1"})
}

// TestServerTLS checks the xDS server's TLS: the certificate of the callback, HTTP/2,
// and no TLS below 1.2.
func TestServerTLS(t *testing.T) {
	cert, pool := selfSigned(t, "bearkong.bearkong-system.svc")
	calls := 0
	g := grpc.NewServer(controlplane.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		calls++
		return cert, nil
	}))
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, pingADS{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	defer g.Stop()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, ServerName: "bearkong.bearkong-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "x"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := s.Recv(); err != nil || resp.GetNonce() != "1" {
		t.Fatalf("over TLS: %v, %v", resp, err)
	}
	if calls == 0 {
		t.Error("the certificate callback was not used")
	}

	old, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "bearkong.bearkong-system.svc",
		MaxVersion: tls.VersionTLS11, NextProtos: []string{"h2"}})
	if err == nil {
		old.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	c, err := tls.Dial("tcp", lis.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "bearkong.bearkong-system.svc", NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("ALPN %q, want h2", p)
	}
}
