package translate

import (
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// The two variants of the xDS transport protocol a sidecar can speak to the control plane
// over its one ADS stream: state of the world, where each response of a type carries
// every resource the proxy subscribes to (LDS, CDS) or asked for (EDS, RDS), and
// incremental ("delta"), where a response carries only the resources that changed, and
// the names of those removed. bearkong serves both, on the same port.
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#variants-of-the-xds-transport-protocol
const (
	XDSProtocolSotW  = "sotw"
	XDSProtocolDelta = "delta"
)

// DefaultXDSProtocol is the protocol of a bootstrap that names none
// (BootstrapOptions.XDSProtocol "", `bearkong bootstrap` without --xds-protocol). To move
// it, change this line and regenerate the bootstrap goldens (`go test ./pkg/translate
// -update`); `make test` runs the whole e2e suite on it and the core tests on the other.
const DefaultXDSProtocol = XDSProtocolSotW

// XDSProtocols are the accepted values of BootstrapOptions.XDSProtocol, the default first.
var XDSProtocols = []string{XDSProtocolSotW, XDSProtocolDelta}

// adsAPIType is ads_config.api_type for protocol: GRPC opens
// StreamAggregatedResources, DELTA_GRPC DeltaAggregatedResources.
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/config_source.proto#enum-config-core-v3-apiconfigsource-apitype
func adsAPIType(protocol string) (corev3.ApiConfigSource_ApiType, error) {
	switch protocol {
	case "":
		return adsAPIType(DefaultXDSProtocol)
	case XDSProtocolSotW:
		return corev3.ApiConfigSource_GRPC, nil
	case XDSProtocolDelta:
		return corev3.ApiConfigSource_DELTA_GRPC, nil
	}
	return 0, fmt.Errorf("xds protocol %q is not one of: %s", protocol, strings.Join(XDSProtocols, ", "))
}
