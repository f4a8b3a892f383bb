package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/translate"
)

// TokenReviewer proves a pod's identity from its ServiceAccount token;
// *discovery.TokenReviewer is the real one.
type TokenReviewer interface {
	Review(ctx context.Context, token string) (discovery.PodIdentity, error)
}

// Authenticator returns the ads.Options.Authenticate hook of the secure xDS channel. A
// stream must carry "authorization: Bearer <token>", the pod's projected ServiceAccount
// token (the bootstrap makes Envoy send it); the token must prove a pod (r); and the node
// must be that pod's: node.id "<pod>.<namespace>" and the metadata pod_name and
// pod_namespace. The node the stream then uses carries the proven ServiceAccount and pod
// UID (translate.WithIdentity), which no proxy can claim for itself.
//
// Errors: Unauthenticated when the token is missing or refused, PermissionDenied when it
// proves another pod than the node claims, Unavailable when the review could not be made.
// None of them holds the token.
func Authenticator(r TokenReviewer) func(ctx context.Context, node *corev3.Node) (*corev3.Node, error) {
	return func(ctx context.Context, node *corev3.Node) (*corev3.Node, error) {
		token, err := bearerToken(ctx)
		if err != nil {
			return nil, err
		}
		id, err := r.Review(ctx, token)
		switch {
		case errors.Is(err, discovery.ErrTokenRefused):
			return nil, status.Errorf(codes.Unauthenticated, "xds: %v", err)
		case err != nil:
			// Not the proxy's fault: it may retry.
			return nil, status.Errorf(codes.Unavailable, "xds: cannot review the token: %v", err)
		}
		meta := node.GetMetadata().GetFields()
		wantID := id.PodName + "." + id.Namespace
		for _, c := range []struct{ field, got, want string }{
			{"node id", node.GetId(), wantID},
			{"node metadata " + translate.MetadataPodName, meta[translate.MetadataPodName].GetStringValue(), id.PodName},
			{"node metadata " + translate.MetadataPodNamespace, meta[translate.MetadataPodNamespace].GetStringValue(), id.Namespace},
		} {
			if c.got != c.want {
				return nil, status.Errorf(codes.PermissionDenied, "xds: %s is %q, but the token is of pod %s/%s (want %q)", c.field, c.got, id.Namespace, id.PodName, c.want)
			}
		}
		return translate.WithIdentity(node, id.ServiceAccount, id.PodUID), nil
	}
}

// bearerToken reads the token of the stream's "authorization: Bearer <token>" header.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", status.Error(codes.Unauthenticated, "xds: no authorization header: the proxy must send its pod's ServiceAccount token as \"authorization: Bearer <token>\" (see bearkong bootstrap --xds-token-file)")
	}
	if len(vals) > 1 {
		return "", status.Error(codes.Unauthenticated, "xds: more than one authorization header")
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(token) == "" {
		return "", status.Error(codes.Unauthenticated, "xds: the authorization header is not \"Bearer <token>\"")
	}
	return strings.TrimSpace(token), nil
}

// ServerTLS returns the gRPC server option of the secure xDS channel: TLS 1.2 or later,
// HTTP/2 by ALPN (gRPC's), with the certificate getCert returns for each handshake, so
// that a renewed server certificate is served without a restart.
func ServerTLS(getCert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) grpc.ServerOption {
	return grpc.Creds(credentials.NewTLS(&tls.Config{
		GetCertificate: getCert,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
	}))
}
