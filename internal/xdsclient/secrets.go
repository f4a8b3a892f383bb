package xdsclient

import (
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

// ClusterSecrets returns the names of the secrets that the cluster's TLS transport socket
// takes from SDS over ADS, for Resource.Secrets.
//
// Envoy picks a transport socket's factory by the type of its typed_config, so an
// UpstreamTlsContext is TLS whatever the socket's name. transport_socket_matches are not
// read: bearkong does not use them.
func ClusterSecrets(c *clusterv3.Cluster) []string {
	var ctx tlsv3.UpstreamTlsContext
	if !unmarshalTLS(c.GetTransportSocket(), &ctx) {
		return nil
	}
	return sdsSecrets(nil, ctx.GetCommonTlsContext())
}

// ListenerSecrets returns the names of the secrets that the listener's filter chains'
// TLS transport sockets take from SDS over ADS, in filter chain order, the default
// filter chain last, as Envoy builds them.
func ListenerSecrets(l *listenerv3.Listener) []string {
	var out []string
	chains := l.GetFilterChains()
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains[:len(chains):len(chains)], l.GetDefaultFilterChain())
	}
	for _, fc := range chains {
		var ctx tlsv3.DownstreamTlsContext
		if unmarshalTLS(fc.GetTransportSocket(), &ctx) {
			out = sdsSecrets(out, ctx.GetCommonTlsContext())
		}
	}
	return out
}

// unmarshalTLS decodes the socket's typed_config into m when it is of m's type.
func unmarshalTLS(ts *corev3.TransportSocket, m proto.Message) bool {
	a := ts.GetTypedConfig()
	return a != nil && a.MessageIs(m) && a.UnmarshalTo(m) == nil
}

// sdsSecrets appends to out the names of the secrets ctx takes from SDS over ADS that
// out does not hold yet, in the order Envoy creates their providers: the certificates,
// then the validation context (ContextConfigImpl's constructor).
func sdsSecrets(out []string, ctx *tlsv3.CommonTlsContext) []string {
	add := func(s *tlsv3.SdsSecretConfig) {
		if s.GetName() == "" || s.GetSdsConfig().GetAds() == nil {
			return // a static secret, or one from another source than this stream
		}
		for _, n := range out {
			if n == s.GetName() {
				return
			}
		}
		out = append(out, s.GetName())
	}
	for _, s := range ctx.GetTlsCertificateSdsSecretConfigs() {
		add(s)
	}
	switch vc := ctx.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		add(vc.ValidationContextSdsSecretConfig)
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		add(vc.CombinedValidationContext.GetValidationContextSdsSecretConfig())
	}
	return out
}
