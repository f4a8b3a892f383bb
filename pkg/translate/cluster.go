package translate

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

const (
	// LocalAppClusterName is the per-proxy cluster of the app in the proxy's own pod.
	// It has no dot, so it never collides with a service cluster ("<name>.<namespace>").
	LocalAppClusterName = "local-app"

	// connectTimeout bounds TCP connects from a sidecar to a peer sidecar or to its own
	// app: both are in the cluster network, so a slow connect means a dead peer and
	// failing fast lets the router retry or return 503 instead of hanging.
	connectTimeout = time.Second
)

// ClusterName is the name of the Envoy cluster, and of its ClusterLoadAssignment, for a
// meshed Service: "<name>.<namespace>". Kubernetes Service names are RFC 1035 labels (no
// dots) and namespaces are RFC 1123 labels, so the name is unambiguous.
func ClusterName(svc *mesh.Service) string { return svc.Name + "." + svc.Namespace }

// StatName is the name a Service's cluster has in Envoy's stats: "<namespace>/<name>",
// the Service's Kubernetes key. The cluster name itself will not do: Envoy's default tag
// extraction takes a cluster stat's name up to the first dot
// (cluster.<envoy.cluster_name>.<stat>), so "app-3.default" would become the tag "app-3"
// and the rest would leak into the metric's name. A slash survives, and Prometheus shows
// envoy_cluster_name="default/app-3":
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-field-config-cluster-v3-cluster-alt-stat-name
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/metrics/v3/stats.proto#envoy-v3-api-field-config-metrics-v3-statsconfig-use-all-default-tags
func StatName(svc *mesh.Service) string { return svc.Namespace + "/" + svc.Name }

// Cluster returns the EDS cluster of a meshed Service. Its endpoints come over the same
// ADS stream (EDS), so a change of endpoints does not touch the cluster and does not
// make Envoy drain its connection pools:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/cluster.proto#envoy-v3-api-msg-config-cluster-v3-cluster-edsclusterconfig
//
// Unless the Service's mTLS mode is DISABLE, the cluster originates mutual TLS and
// checks that the callee is one of the Service's workloads in trustDomain (upstreamTLS):
// a PERMISSIVE callee accepts TLS as well as plaintext, so callers always use TLS.
func Cluster(svc *mesh.Service, trustDomain string) *clusterv3.Cluster {
	var ts *corev3.TransportSocket
	if svc.MTLS.Effective() != mesh.MTLSDisable {
		ts = upstreamTLS(svc, trustDomain)
	}
	return clusterWith(svc, ts)
}

// clusterWith is Cluster with its transport socket given: nil for plaintext, else what
// upstreamTLS returns for svc (which New shares between Services that have the same).
func clusterWith(svc *mesh.Service, ts *corev3.TransportSocket) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 ClusterName(svc),
		AltStatName:          StatName(svc),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		// service_name is left empty: the ClusterLoadAssignment then has the cluster's
		// name, one name fewer to keep in step.
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource()},
		ConnectTimeout:   durationpb.New(connectTimeout),
		LbPolicy:         clusterv3.Cluster_ROUND_ROBIN,
	}
	if svc.Protocol == mesh.ProtocolHTTP2 {
		// gRPC and h2c apps need HTTP/2 on every hop, so the caller's sidecar speaks it to
		// the callee's; the callee's sidecar carries it on to the app (LocalAppCluster).
		// Without options a cluster speaks HTTP/1.1, what every other Service gets.
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptionsKey: http2ProtocolOptions}
	}
	c.TransportSocket = ts
	p := svc.Policy
	if c.OutlierDetection = OutlierDetection(p.Outlier); c.OutlierDetection != nil {
		// With panic mode on (Envoy's default threshold is 50%), ejecting one of two
		// endpoints makes Envoy ignore health and keep sending to the bad one. Outlier
		// detection is asked for to stop exactly that, so panic mode is off, as Istio
		// does by default (minHealthPercent 0):
		// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/load_balancing/panic_threshold
		c.CommonLbConfig = &clusterv3.Cluster_CommonLbConfig{HealthyPanicThreshold: &typev3.Percent{Value: 0}}
	}
	if p.MaxConnections > 0 || p.MaxPendingRequests > 0 || p.MaxRequests > 0 {
		// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/circuit_breaker.proto
		t := &clusterv3.CircuitBreakers_Thresholds{}
		if p.MaxConnections > 0 {
			t.MaxConnections = wrapperspb.UInt32(p.MaxConnections)
		}
		if p.MaxPendingRequests > 0 {
			t.MaxPendingRequests = wrapperspb.UInt32(p.MaxPendingRequests)
		}
		if p.MaxRequests > 0 {
			t.MaxRequests = wrapperspb.UInt32(p.MaxRequests)
		}
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
	}
	return c
}

// OutlierDetection returns Envoy's outlier detection for a Service's policy, or nil when
// it is off. Unset fields keep Envoy's defaults:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/cluster/v3/outlier_detection.proto
func OutlierDetection(o mesh.OutlierDetection) *clusterv3.OutlierDetection {
	if !o.Enabled {
		return nil
	}
	od := &clusterv3.OutlierDetection{}
	if o.Consecutive5xx > 0 {
		od.Consecutive_5Xx = wrapperspb.UInt32(o.Consecutive5xx)
	}
	if o.Interval > 0 {
		od.Interval = durationpb.New(o.Interval)
	}
	if o.BaseEjectionTime > 0 {
		od.BaseEjectionTime = durationpb.New(o.BaseEjectionTime)
	}
	if o.MaxEjectionPercent > 0 {
		od.MaxEjectionPercent = wrapperspb.UInt32(o.MaxEjectionPercent)
	}
	return od
}

// ClusterLoadAssignment returns the endpoints of a meshed Service: each ready endpoint at
// the sidecar's inbound port (mesh.InboundPort), whatever the Service's targetPort says,
// because mesh traffic always enters a pod through its sidecar. A Service without ready
// endpoints still gets an (empty) assignment, so that its cluster finishes warming and
// requests fail fast with 503 instead of waiting for EDS:
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/cluster_manager
func ClusterLoadAssignment(svc *mesh.Service) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: ClusterName(svc)}
	if len(svc.Endpoints) == 0 {
		return cla
	}
	lbs := make([]*endpointv3.LbEndpoint, len(svc.Endpoints))
	for i, ep := range svc.Endpoints {
		lbs[i] = lbEndpoint(ep.IP, mesh.InboundPort)
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	return cla
}

// http2ProtocolOptions make a cluster speak HTTP/2 without TLS (h2c, prior knowledge)
// to its endpoints. Packed once: the same for every HTTP/2 Service.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto
var http2ProtocolOptions = mustAny(&upstreamhttpv3.HttpProtocolOptions{
	UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		},
	},
})

// downstreamProtocolOptions make a cluster speak to its endpoint the HTTP version the
// request came in with: HTTP/2 when http2_protocol_options is present and the
// downstream is HTTP/2, HTTP/1.1 otherwise.
var downstreamProtocolOptions = mustAny(&upstreamhttpv3.HttpProtocolOptions{
	UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
		UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
			HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
		},
	},
})

// LocalAppCluster returns the proxy's cluster of its own app, at n.AppAddress. It is
// STATIC: the app is in the same pod (or process group), at an address the proxy
// announced itself, so there is nothing to discover. It is plaintext: the hop never
// leaves the pod. n must be valid (Node.Validate).
//
// It speaks to the app the protocol the request arrived in. Callers' sidecars speak
// HTTP/2 to the Services that declare it (Cluster) and HTTP/1.1 to the others, so the
// app gets what its Service declares: gRPC stays HTTP/2 end to end, a WebSocket upgrade
// stays HTTP/1.1. It does not depend on which Services the pod serves, so every proxy
// with the same app address shares it.
func LocalAppCluster(n Node) *clusterv3.Cluster {
	host, port := mustSplitIPPort(n.AppAddress)
	return &clusterv3.Cluster{
		Name:                          LocalAppClusterName,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:                durationpb.New(connectTimeout),
		LbPolicy:                      clusterv3.Cluster_ROUND_ROBIN,
		LoadAssignment:                staticLoadAssignment(LocalAppClusterName, host, port),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsKey: downstreamProtocolOptions},
	}
}

// staticLoadAssignment is the inline assignment of a cluster with a single endpoint.
func staticLoadAssignment(cluster, host string, port uint32) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: cluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{lbEndpoint(host, port)},
		}},
	}
}

func lbEndpoint(host string, port uint32) *endpointv3.LbEndpoint {
	return &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: socketAddress(host, port)},
		},
	}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{
		SocketAddress: &corev3.SocketAddress{
			Protocol:      corev3.SocketAddress_TCP,
			Address:       host,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		},
	}}
}

// adsConfigSource says "this resource comes over the ADS stream of the bootstrap", with
// v3 resources: https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto#envoy-v3-api-msg-config-core-v3-aggregatedconfigsource
func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		ResourceApiVersion:    corev3.ApiVersion_V3,
	}
}

// typeURLPrefix is the prefix of every Any type URL Envoy accepts.
const typeURLPrefix = "type.googleapis.com/"

// mustAny packs m into an Any, deterministically: an Any's bytes are opaque to the outer
// message's deterministic marshal, so the inner message must be deterministic itself or
// equal content could hash differently. It panics only on a message that cannot be
// marshalled at all, which for the fixed, hand-built messages of this package is a bug.
func mustAny(m proto.Message) *anypb.Any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic("translate: marshal " + string(m.ProtoReflect().Descriptor().FullName()) + ": " + err.Error())
	}
	return &anypb.Any{TypeUrl: typeURLPrefix + string(m.ProtoReflect().Descriptor().FullName()), Value: b}
}
