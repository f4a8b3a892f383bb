package translate

import (
	"fmt"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Names of the two secrets every proxy gets over SDS, on its ADS stream. Clusters and
// the inbound listener refer to them by these names; the control plane serves them.
const (
	// WorkloadSecretName is the proxy's own certificate chain and private key, whose
	// URI SAN is the SPIFFE ID of its pod's ServiceAccount (mesh.SPIFFEID).
	WorkloadSecretName = "workload-cert"
	// TrustBundleSecretName is the mesh's root certificates, which every peer's chain
	// must lead to.
	TrustBundleSecretName = "trust-bundle"
)

// DefaultTrustDomain is the SPIFFE trust domain of workload identities unless
// Options.TrustDomain says otherwise; Istio uses the same default.
const DefaultTrustDomain = "cluster.local"

// MaxTrustDomainLength is the longest trust domain SPIFFE allows:
// https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md#21-trust-domain
const MaxTrustDomainLength = 255

// ValidateTrustDomain reports whether d is a SPIFFE trust domain name: lowercase
// letters, digits, '.', '-' and '_', at most MaxTrustDomainLength characters:
// https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md#21-trust-domain
func ValidateTrustDomain(d string) error {
	ok := d != "" && len(d) <= MaxTrustDomainLength
	for i := 0; ok && i < len(d); i++ {
		c := d[i]
		ok = 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '-' || c == '_'
	}
	if !ok {
		return fmt.Errorf("trust domain %q is not a SPIFFE trust domain (lowercase letters, digits, '.', '-' and '_', at most %d characters)", d, MaxTrustDomainLength)
	}
	return nil
}

// ValidateMTLSMode reports whether m is a mode the mesh knows ("" reads as STRICT).
func ValidateMTLSMode(m mesh.MTLSMode) error {
	switch m.Effective() {
	case mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable:
		return nil
	}
	return fmt.Errorf("mTLS mode %q is not one of %s, %s, %s", m, mesh.MTLSStrict, mesh.MTLSPermissive, mesh.MTLSDisable)
}

// WorkloadSecret returns the SDS secret WorkloadSecretName holding a proxy's PEM
// certificate chain (leaf first) and PEM private key, inline.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/secret.proto
func WorkloadSecret(chainPEM, keyPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: WorkloadSecretName,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(chainPEM),
			PrivateKey:       inlineBytes(keyPEM),
		}},
	}
}

// TrustBundleSecret returns the SDS secret TrustBundleSecretName holding the mesh's PEM
// root certificates, inline, as the trusted CAs of a validation context. Only the roots:
// SAN checks are in the clusters and listeners, which know whom they expect.
func TrustBundleSecret(rootsPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: TrustBundleSecretName,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlineBytes(rootsPEM),
		}},
	}
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// sdsSecret refers to a secret that comes over the bootstrap's ADS stream: with an ADS
// config source Envoy asks for it by name on that stream (SDS), and keeps serving with
// the previous secret while a new one arrives, so rotation drops no connection.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/security/secret#sds-configuration
func sdsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: adsConfigSource()}
}

// transportSocketTLSName is the TLS transport socket's name; Envoy picks the extension
// by the typed_config's type URL.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto
const transportSocketTLSName = "envoy.transport_sockets.tls"

// tlsInspectorName is the listener filter that tells TLS from plaintext by peeking at a
// connection's first bytes.
// https://www.envoyproxy.io/docs/envoy/latest/configuration/listeners/listener_filters/tls_inspector
const tlsInspectorName = "envoy.filters.listener.tls_inspector"

// Application protocols offered in the TLS handshake (ALPN). A caller offers the one its
// cluster speaks; the callee's listener accepts both, and its connection manager (codec
// AUTO) takes the HTTP version from the negotiated protocol.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto#envoy-v3-api-field-extensions-transport-sockets-tls-v3-commontlscontext-alpn-protocols
const (
	alpnH2     = "h2"
	alpnHTTP11 = "http/1.1"
)

// meshTLSParams pin every sidecar-to-sidecar handshake to TLS 1.3, both ways. Envoy's
// defaults are a TLS 1.2 minimum on both sides but a TLS 1.2 maximum for clients, so
// without this two sidecars would talk TLS 1.2. Both ends are Envoys configured here,
// so nothing older is needed, and TLS 1.3 encrypts the certificates in the handshake:
// the SPIFFE IDs of caller and callee do not show on the wire. No cipher suites are
// named: TLS 1.3's are all AEAD and Envoy's defaults are sound.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto#envoy-v3-api-msg-extensions-transport-sockets-tls-v3-tlsparameters
func meshTLSParams() *tlsv3.TlsParameters {
	return &tlsv3.TlsParameters{
		TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
	}
}

// meshCommonTLSContext presents the proxy's workload certificate, trusts the mesh's
// roots, and accepts a peer only when one of its URI SANs matches sans. Certificate and
// roots both come over SDS, so a rotation updates them in place.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto#envoy-v3-api-msg-extensions-transport-sockets-tls-v3-commontlscontext
func meshCommonTLSContext(sans []*tlsv3.SubjectAltNameMatcher, alpn ...string) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams:                      meshTLSParams(),
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(WorkloadSecretName)},
		// The combined context merges the SAN checks, which depend on the peer, with
		// the roots from SDS, which are the same for every peer.
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto#envoy-v3-api-msg-extensions-transport-sockets-tls-v3-commontlscontext-combinedcertificatevalidationcontext
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
				ValidationContextSdsSecretConfig: sdsSecret(TrustBundleSecretName),
			},
		},
		AlpnProtocols: alpn,
	}
}

// uriSAN matches a certificate's URI SAN with m.
func uriSAN(m *matcherv3.StringMatcher) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
}

// trustDomainSAN matches any workload of the trust domain: a URI SAN starting with
// "spiffe://<trust-domain>/". The trailing slash keeps "cluster.local.evil" out.
func trustDomainSAN(trustDomain string) *tlsv3.SubjectAltNameMatcher {
	return uriSAN(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}})
}

// serviceSANs are the identities a caller accepts from a Service's endpoints: the
// SPIFFE ID of each ServiceAccount its pods run as. A Service whose pods are not known
// (no ready endpoint, or endpoints without a pod) gets a check for any workload of the
// trust domain instead of none: an empty match_typed_subject_alt_names makes Envoy skip
// the SAN check altogether, and accept any certificate the roots sign.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/common.proto#envoy-v3-api-field-extensions-transport-sockets-tls-v3-certificatevalidationcontext-match-typed-subject-alt-names
func serviceSANs(svc *mesh.Service, trustDomain string) []*tlsv3.SubjectAltNameMatcher {
	if len(svc.ServiceAccounts) == 0 {
		return []*tlsv3.SubjectAltNameMatcher{trustDomainSAN(trustDomain)}
	}
	sans := make([]*tlsv3.SubjectAltNameMatcher, len(svc.ServiceAccounts))
	for i, sa := range svc.ServiceAccounts {
		sans[i] = uriSAN(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{
			Exact: mesh.SPIFFEID(trustDomain, svc.Namespace, sa),
		}})
	}
	return sans
}

// upstreamTLSKey is what upstreamTLS depends on besides the trust domain: Services with
// equal keys get equal transport sockets. Most pods run as their namespace's "default"
// ServiceAccount, so many Services of a namespace share one.
func upstreamTLSKey(svc *mesh.Service) string {
	if len(svc.ServiceAccounts) == 0 {
		// Any workload of the trust domain: the namespace does not matter.
		return string(svc.Protocol)
	}
	// Length-prefixed, so that no two lists of names give one key, whatever the names
	// hold (ServiceAccounts come from pods and are not checked here).
	var b strings.Builder
	b.WriteString(string(svc.Protocol))
	for _, v := range append([]string{svc.Namespace}, svc.ServiceAccounts...) {
		b.WriteString(" " + strconv.Itoa(len(v)) + ":" + v)
	}
	return b.String()
}

// upstreamTLS is the transport socket of a Service's cluster when the Service's mode is
// not DISABLE: the caller's sidecar originates mutual TLS with its workload certificate
// and checks the callee's SPIFFE ID (serviceSANs). Its ALPN offer is the HTTP version
// the cluster speaks, so that the callee's connection manager picks the same codec.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto#envoy-v3-api-msg-extensions-transport-sockets-tls-v3-upstreamtlscontext
func upstreamTLS(svc *mesh.Service, trustDomain string) *corev3.TransportSocket {
	alpn := alpnHTTP11
	if svc.Protocol == mesh.ProtocolHTTP2 {
		alpn = alpnH2
	}
	return &corev3.TransportSocket{
		Name: transportSocketTLSName,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: meshCommonTLSContext(serviceSANs(svc, trustDomain), alpn),
		})},
	}
}

// downstreamTLS is the transport socket of the inbound listener's TLS chain: the sidecar
// terminates mutual TLS, requires a client certificate, and accepts any workload of the
// trust domain (which callers may call is a policy question, not the handshake's). It
// offers both HTTP versions, as its callers' clusters speak either.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/transport_sockets/tls/v3/tls.proto#envoy-v3-api-msg-extensions-transport-sockets-tls-v3-downstreamtlscontext
func downstreamTLS(trustDomain string) *corev3.TransportSocket {
	return &corev3.TransportSocket{
		Name: transportSocketTLSName,
		ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         meshCommonTLSContext([]*tlsv3.SubjectAltNameMatcher{trustDomainSAN(trustDomain)}, alpnH2, alpnHTTP11),
			RequireClientCertificate: wrapperspb.Bool(true),
		})},
	}
}

// tlsInspector lets a PERMISSIVE listener choose its filter chain by whether the
// connection starts with a TLS ClientHello (transport protocol "tls") or not
// ("raw_buffer"). An HTTP client speaks first, so a plaintext request is told apart as
// soon as its first bytes arrive.
var tlsInspector = &listenerv3.ListenerFilter{
	Name:       tlsInspectorName,
	ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})},
}
