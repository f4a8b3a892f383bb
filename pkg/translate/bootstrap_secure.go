package translate

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpccredentialv3 "github.com/envoyproxy/go-control-plane/envoy/config/grpc_credential/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// fileBasedMetadata is Envoy's gRPC call-credentials plugin that reads a header value
// from a file: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/grpc_credential/v3/file_based_metadata.proto
const fileBasedMetadata = "envoy.grpc_credentials.file_based_metadata"

// xdsStatPrefix prefixes the stats of the secure mode's Google gRPC client, as the
// cluster's name does the insecure mode's.
const xdsStatPrefix = "xds"

// secureXDS is the ADS gRPC service of the secure mode: Envoy's Google gRPC client, TLS
// against XDSRootCA with the certificate checked for XDSServerName, and the pod's
// ServiceAccount token as "authorization: Bearer <token>".
//
// Why Google gRPC rather than Envoy's own gRPC client over a TLS cluster: the token is a
// file the kubelet rewrites (projected tokens rotate), so the header must be read from
// the file at each new stream. Envoy's own client only has initial_metadata, a constant
// of the bootstrap. The file_based_metadata plugin reads its DataSource each time gRPC
// asks for call credentials, that is for every call: the ADS stream, after every
// reconnect. TestBootstrapTokenRotation checks it with the real Envoy.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto#envoy-v3-api-msg-config-core-v3-grpcservice-googlegrpc
func secureXDS(o BootstrapOptions, eps []xdsEndpoint) (*corev3.GrpcService, error) {
	var errs []error
	target, roundRobin, err := googleGrpcTarget(eps)
	if err != nil {
		errs = append(errs, err)
	}
	if o.XDSServerName == "" && err == nil {
		if o.XDSServerName, err = defaultServerName(eps); err != nil {
			errs = append(errs, err)
		}
	}
	if len(o.XDSRootCA) == 0 {
		errs = append(errs, errors.New("xds root CA is required (PEM of the roots of the control plane's certificate), or choose the insecure mode"))
	} else if err := validateRoots(o.XDSRootCA); err != nil {
		errs = append(errs, err)
	}
	if o.XDSTokenFile == "" {
		errs = append(errs, errors.New("xds token file is required (the pod's projected ServiceAccount token), or choose the insecure mode"))
	} else if !filepath.IsAbs(o.XDSTokenFile) {
		// Envoy resolves a relative path against its own working directory, which is
		// not the one the bootstrap was written in.
		errs = append(errs, fmt.Errorf("xds token file %q must be an absolute path", o.XDSTokenFile))
	}
	if o.XDSServerName != "" && !isDNSSubdomain(o.XDSServerName) && !isIPAddr(o.XDSServerName) {
		errs = append(errs, fmt.Errorf("xds server name %q is neither a DNS name nor an IP address", o.XDSServerName))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	plugin, err := anypb.New(&grpccredentialv3.FileBasedMetadataConfig{
		SecretData: &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: o.XDSTokenFile}},
		// header_key defaults to "authorization".
		HeaderPrefix: "Bearer ",
	})
	if err != nil {
		return nil, err
	}
	str := func(s string) *corev3.GrpcService_GoogleGrpc_ChannelArgs_Value {
		return &corev3.GrpcService_GoogleGrpc_ChannelArgs_Value{ValueSpecifier: &corev3.GrpcService_GoogleGrpc_ChannelArgs_Value_StringValue{StringValue: s}}
	}
	num := func(n int64) *corev3.GrpcService_GoogleGrpc_ChannelArgs_Value {
		return &corev3.GrpcService_GoogleGrpc_ChannelArgs_Value{ValueSpecifier: &corev3.GrpcService_GoogleGrpc_ChannelArgs_Value_IntValue{IntValue: n}}
	}
	args := map[string]*corev3.GrpcService_GoogleGrpc_ChannelArgs_Value{
		"grpc.ssl_target_name_override":     str(o.XDSServerName),
		"grpc.default_authority":            str(o.XDSServerName),
		"grpc.keepalive_time_ms":            num(xdsKeepaliveInterval.Milliseconds()),
		"grpc.keepalive_timeout_ms":         num(xdsKeepaliveTimeout.Milliseconds()),
		"grpc.http2.max_pings_without_data": num(0),
		"grpc.initial_reconnect_backoff_ms": num(xdsReconnectInitial.Milliseconds()),
		"grpc.max_reconnect_backoff_ms":     num(xdsReconnectMax.Milliseconds()),
		"grpc.min_reconnect_backoff_ms":     num(xdsConnectTimeout.Milliseconds()),
	}
	args["grpc.service_config"] = str(xdsServiceConfig(roundRobin))
	return &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_GoogleGrpc_{GoogleGrpc: &corev3.GrpcService_GoogleGrpc{
		TargetUri:  target,
		StatPrefix: xdsStatPrefix,
		ChannelCredentials: &corev3.GrpcService_GoogleGrpc_ChannelCredentials{
			CredentialSpecifier: &corev3.GrpcService_GoogleGrpc_ChannelCredentials_SslCredentials{
				SslCredentials: &corev3.GrpcService_GoogleGrpc_SslCredentials{
					RootCerts: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: o.XDSRootCA}},
				},
			},
		},
		CallCredentials: []*corev3.GrpcService_GoogleGrpc_CallCredentials{{
			CredentialSpecifier: &corev3.GrpcService_GoogleGrpc_CallCredentials_FromPlugin{
				FromPlugin: &corev3.GrpcService_GoogleGrpc_CallCredentials_MetadataCredentialsFromPlugin{
					Name:       fileBasedMetadata,
					ConfigType: &corev3.GrpcService_GoogleGrpc_CallCredentials_MetadataCredentialsFromPlugin_TypedConfig{TypedConfig: plugin},
				},
			},
		}},
		// The factory that knows the plugin; the default one ignores from_plugin.
		CredentialsFactoryName: fileBasedMetadata,
		// gRPC core's channel arguments (https://grpc.github.io/grpc/core/group__grpc__arg__keys.html):
		// the name the server certificate is checked against and sent as SNI; the
		// same keepalive as the insecure mode's HTTP/2 connection_keepalive, without
		// gRPC's default cap of two pings while no data flows (an idle ADS stream sends
		// none for long stretches); and the reconnect backoff (see xdsReconnectInitial).
		ChannelArgs: &corev3.GrpcService_GoogleGrpc_ChannelArgs{Args: args},
	}}}, nil
}

// validateRoots checks that pem holds at least one certificate and nothing else that
// Envoy would choke on.
func validateRoots(b []byte) error {
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return fmt.Errorf("xds root CA: a PEM block of type %q, want CERTIFICATE", blk.Type)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("xds root CA: certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("xds root CA holds no PEM certificate")
	}
	return nil
}

func isIPAddr(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}
