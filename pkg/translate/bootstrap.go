package translate

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	overloadv3 "github.com/envoyproxy/go-control-plane/envoy/config/overload/v3"
	downstreamconnectionsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

const (
	// NodeCluster is node.cluster of every sidecar. Envoy requires a non-empty
	// node.cluster for some features (for example the health check filter); one value for
	// the whole mesh keeps it meaningless on purpose: identity is the pod.
	NodeCluster = "bearkong-mesh"
	// XDSClusterName is the bootstrap's only cluster: the bearkong control plane.
	XDSClusterName = "xds"

	// httpProtocolOptionsKey is the typed_extension_protocol_options key under which a
	// cluster takes its upstream HTTP options:
	// https://www.envoyproxy.io/docs/envoy/latest/api-v3/extensions/upstreams/http/v3/http_protocol_options.proto
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

	// Envoy's HTTP/2 keepalive on the ADS connection: a dead control plane (or a NAT
	// that dropped the flow) is noticed in about interval+timeout, not at the next TCP
	// retransmit timeout. pkg/ads must allow pings this often (see DESIGN.md).
	xdsKeepaliveInterval = 30 * time.Second
	xdsKeepaliveTimeout  = 5 * time.Second
)

// DefaultAdminAddress is the admin listener of a sidecar: loopback only, so that nothing
// outside the pod reaches the admin API (mesh contract: 8081).
var DefaultAdminAddress = net.JoinHostPort("127.0.0.1", strconv.Itoa(mesh.AdminPort))

// BootstrapOptions are the inputs of Bootstrap. PodName and PodNamespace come from the
// downward API; the addresses are data, so that a real pod and a local process differ
// only in values, never in code paths.
type BootstrapOptions struct {
	PodName      string
	PodNamespace string
	// Workload names the pod's workload in every stat of its sidecar (the mesh_workload
	// tag, see stats.go): the caller in outbound stats, the callee in inbound ones.
	// Typically the pod's app label, through the downward API; default PodName.
	Workload string
	// ListenIP is the bind address of the inbound listener (default DefaultListenIP).
	// It travels to the control plane as node metadata.
	ListenIP string
	// OutboundIP is the bind address of the outbound listener (default
	// DefaultOutboundIP). It travels to the control plane as node metadata.
	OutboundIP string
	// AppAddress is the local app's host:port (default DefaultAppAddress). It travels to
	// the control plane as node metadata.
	AppAddress string
	// AdminAddress is the admin listener's IP:port (default DefaultAdminAddress).
	AdminAddress string
	// XDSAddress is the control plane's host:port, or several, comma-separated (its
	// replicas). Required. Insecure mode: IPs make a STATIC cluster, DNS names a
	// STRICT_DNS one, one endpoint per address. Secure mode: one address is gRPC's
	// target as written; several must be IPs of one family, and become one ipv4: or
	// ipv6: target balanced round robin, so that each new ADS stream goes to a replica
	// that is up.
	XDSAddress string
	// XDSRootCA is the PEM of the roots that sign the control plane's certificate,
	// inlined into the bootstrap. Required unless XDSInsecure.
	XDSRootCA []byte
	// XDSTokenFile is the path of the pod's projected ServiceAccount token, which Envoy
	// reads and sends as "authorization: Bearer <token>" on every ADS stream. Required
	// unless XDSInsecure.
	XDSTokenFile string
	// XDSServerName is the name the control plane's certificate must hold (and the SNI
	// sent); default the host of XDSAddress, which several addresses must then share.
	XDSServerName string
	// XDSInsecure connects to the control plane in plaintext without credentials: for
	// development only; the control plane must run with --xds-insecure too.
	XDSInsecure bool
	// XDSProtocol is the xDS protocol of the ADS stream, XDSProtocolSotW or
	// XDSProtocolDelta (see XDSProtocols); "" is DefaultXDSProtocol.
	XDSProtocol string
}

// Bootstrap returns the Envoy bootstrap of a sidecar: the node identity, the admin
// listener and the ADS channel to the control plane: by default TLS with the pod's token
// (see secureXDS), or, with XDSInsecure, plaintext over a single static cluster. Everything else (listeners,
// routes, clusters, endpoints) comes over ADS, so the bootstrap is one template for every
// pod. https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/bootstrap/v3/bootstrap.proto
//
// Every malformed option is reported, joined in one error.
func Bootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if o.ListenIP == "" {
		o.ListenIP = DefaultListenIP
	}
	if o.OutboundIP == "" {
		o.OutboundIP = DefaultOutboundIP
	}
	if o.AppAddress == "" {
		o.AppAddress = DefaultAppAddress
	}
	if o.AdminAddress == "" {
		o.AdminAddress = DefaultAdminAddress
	}
	if o.Workload == "" {
		o.Workload = o.PodName
	}
	var errs []error
	if err := validatePodName("pod name", o.PodName); err != nil {
		errs = append(errs, err)
	}
	if err := validateNamespace("pod namespace", o.PodNamespace); err != nil {
		errs = append(errs, err)
	}
	if err := validateWorkload(o.Workload); o.Workload != o.PodName && err != nil {
		errs = append(errs, err)
	}
	if err := validateIP("listen IP", o.ListenIP); err != nil {
		errs = append(errs, err)
	}
	if err := validateIP("outbound IP", o.OutboundIP); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := splitIPPort("app address", o.AppAddress); err != nil {
		errs = append(errs, err)
	}
	adminHost, adminPort, err := splitIPPort("admin address", o.AdminAddress)
	if err != nil {
		errs = append(errs, err)
	}
	apiType, err := adsAPIType(o.XDSProtocol)
	if err != nil {
		errs = append(errs, err)
	}
	var xds *clusterv3.Cluster
	var grpcService *corev3.GrpcService
	eps, err := parseXDSAddresses(o.XDSAddress)
	switch {
	case err != nil:
		errs = append(errs, err)
	case o.XDSInsecure:
		xds = xdsCluster(eps)
		grpcService = &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSClusterName, RetryPolicy: xdsRetryPolicy()},
		}}
	default:
		// The secure channel is Envoy's Google gRPC client, which dials the control
		// plane itself: no cluster is needed.
		if grpcService, err = secureXDS(o, eps); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("translate: bootstrap: %w", err)
	}

	// Metadata values are strings only, so that ParseNode reads back exactly what was
	// written here, whatever the bootstrap's format (JSON, YAML, proto).
	meta := &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataPodName:      structpb.NewStringValue(o.PodName),
		MetadataPodNamespace: structpb.NewStringValue(o.PodNamespace),
		MetadataListenIP:     structpb.NewStringValue(o.ListenIP),
		MetadataOutboundIP:   structpb.NewStringValue(o.OutboundIP),
		MetadataAppAddress:   structpb.NewStringValue(o.AppAddress),
	}}
	return &bootstrapv3.Bootstrap{
		Node: &corev3.Node{
			Id:       nodeID(o.PodName, o.PodNamespace),
			Cluster:  NodeCluster,
			Metadata: meta,
		},
		Admin: &bootstrapv3.Admin{
			Address: socketAddress(adminHost, adminPort),
			// The admin listener stays reachable (for /stats, /ready and debugging) when
			// the connection limit below is reached.
			IgnoreGlobalConnLimit: true,
		},
		OverloadManager: overloadManager(),
		StaticResources: staticResources(xds),
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			// One gRPC stream carries every type, so the control plane can order a push
			// (CDS, EDS, LDS, RDS) and avoid traffic drops while config changes:
			// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#aggregated-discovery-service
			// Its protocol, state of the world or delta, is o.XDSProtocol's.
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices:        []*corev3.GrpcService{grpcService},
				// The node (with its metadata) is sent once per stream, not on every
				// request; pkg/ads remembers it from the first request:
				// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto#envoy-v3-api-field-config-core-v3-apiconfigsource-set-node-on-first-message-only
				SetNodeOnFirstMessageOnly: true,
			},
			CdsConfig: adsConfigSource(),
			LdsConfig: adsConfigSource(),
		},
		LayeredRuntime: layeredRuntime(),
		StatsConfig:    statsConfig(o.PodNamespace, o.Workload),
	}, nil
}

// staticResources holds the control plane's cluster, when there is one.
func staticResources(xds *clusterv3.Cluster) *bootstrapv3.Bootstrap_StaticResources {
	if xds == nil {
		return nil
	}
	return &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xds}}
}

// Runtime keys bearkong sets in every sidecar.
const (
	runtimeRE2ErrorLevel = "re2.max_program_size.error_level"
	runtimeRE2WarnLevel  = "re2.max_program_size.warn_level"
)

// layeredRuntime is the sidecar's runtime: one static layer. It pins the RE2 program-size
// limits to the ones pkg/discovery validates HTTPRoute regexes against
// (mesh.RegexMaxProgramSize), so that a regex bearkong accepts is one every proxy
// accepts, whatever Envoy's default of the day:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/type/matcher/v3/regex.proto
// https://www.envoyproxy.io/docs/envoy/latest/configuration/operations/runtime
func layeredRuntime() *bootstrapv3.LayeredRuntime {
	return &bootstrapv3.LayeredRuntime{
		Layers: []*bootstrapv3.RuntimeLayer{{
			Name: "bearkong",
			LayerSpecifier: &bootstrapv3.RuntimeLayer_StaticLayer{StaticLayer: &structpb.Struct{Fields: map[string]*structpb.Value{
				runtimeRE2ErrorLevel: structpb.NewNumberValue(mesh.RegexMaxProgramSize),
				runtimeRE2WarnLevel:  structpb.NewNumberValue(mesh.RegexWarnProgramSize),
			}}},
		}},
	}
}

// xdsCluster is the static cluster to the control plane, one endpoint per address.
// Literal IPs make a STATIC cluster; names (a Kubernetes Service, typically) a
// STRICT_DNS one, so that Envoy follows their addresses:
// https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery
func xdsCluster(eps []xdsEndpoint) *clusterv3.Cluster {
	typ := clusterv3.Cluster_STATIC
	if !eps[0].ip.IsValid() { // parseXDSAddresses allows no mix
		typ = clusterv3.Cluster_STRICT_DNS
	}
	// ADS is gRPC, so the cluster must speak HTTP/2 to the control plane. The keepalive
	// pings detect a half-open connection.
	opts := &upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
						ConnectionKeepalive: &corev3.KeepaliveSettings{
							Interval: durationpb.New(xdsKeepaliveInterval),
							Timeout:  durationpb.New(xdsKeepaliveTimeout),
						},
					},
				},
			},
		},
	}
	return &clusterv3.Cluster{
		Name:                 XDSClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: typ},
		// connect_timeout stays at Envoy's default (5s): the control plane may be
		// across the network, unlike the sidecars' own clusters.
		LoadAssignment: xdsLoadAssignment(eps),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsKey: mustAny(opts),
		},
	}
}

// MaxDownstreamConnections is the sidecar's limit on open downstream connections, over
// both its listeners (the admin listener is not counted). Beyond it Envoy refuses new
// connections instead of running out of file descriptors or memory. A sidecar serves one
// pod: its app's outgoing connections and its peers' incoming ones, which Envoy pools, so
// this is far above what a pod needs and only stops a runaway.
const MaxDownstreamConnections = 10000

// overloadManager sets Envoy's global downstream connection limit, the resource monitor
// Envoy asks for at start-up (it warns when none is configured):
// https://www.envoyproxy.io/docs/envoy/latest/configuration/operations/overload_manager/overload_manager#limiting-active-connections
func overloadManager() *overloadv3.OverloadManager {
	return &overloadv3.OverloadManager{
		ResourceMonitors: []*overloadv3.ResourceMonitor{{
			Name: "envoy.resource_monitors.global_downstream_max_connections",
			ConfigType: &overloadv3.ResourceMonitor_TypedConfig{TypedConfig: mustAny(&downstreamconnectionsv3.DownstreamConnectionsConfig{
				MaxActiveDownstreamConnections: MaxDownstreamConnections,
			})},
		}},
	}
}
