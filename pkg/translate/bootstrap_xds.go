package translate

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

// How fast a sidecar comes back to a control plane that was unreachable (a rollout, a
// crash, a node drain). Both of Envoy's xDS clients back off between attempts, and by
// default far too long for a control plane that is back in a second: Envoy's own gRPC
// client retries the ADS stream after a fully jittered exponential backoff from 500 ms
// up to 30 s, and gRPC core (the secure mode's Google gRPC client) reconnects from 1 s up
// to 120 s. With these, a proxy tries again at least every second, whatever the length
// of the outage (README, "Reconnects"); a fleet's attempts stay spread by the jitter.
const (
	// XDSRetryBaseInterval and XDSRetryMaxInterval bound the backoff of the ADS stream
	// (Envoy's own gRPC client, the insecure mode):
	// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/grpc_service.proto#envoy-v3-api-field-config-core-v3-grpcservice-envoygrpc-retry-policy
	XDSRetryBaseInterval = 250 * time.Millisecond
	XDSRetryMaxInterval  = time.Second
	// xdsReconnectInitial and xdsReconnectMax are gRPC core's reconnect backoff of the
	// secure mode's channel (grpc.initial_reconnect_backoff_ms, grpc.max_reconnect_backoff_ms):
	// https://github.com/grpc/grpc/blob/master/doc/connection-backoff.md
	xdsReconnectInitial = 250 * time.Millisecond
	xdsReconnectMax     = time.Second
	// xdsConnectTimeout is gRPC core's minimum connect timeout (the channel argument is
	// named grpc.min_reconnect_backoff_ms, but gRPC core uses it as the time a connection
	// attempt is given; 20 s by default). The insecure mode's cluster keeps Envoy's
	// connect_timeout of 5 s; the same here, so that a replica that drops packets is
	// given up for the next attempt as soon.
	xdsConnectTimeout = 5 * time.Second
)

// xdsRetryPolicy is the ADS stream's retry backoff for Envoy's own gRPC client.
func xdsRetryPolicy() *corev3.RetryPolicy {
	return &corev3.RetryPolicy{RetryBackOff: &corev3.BackoffStrategy{
		BaseInterval: durationpb.New(XDSRetryBaseInterval),
		MaxInterval:  durationpb.New(XDSRetryMaxInterval),
	}}
}

// xdsEndpoint is one control-plane address of BootstrapOptions.XDSAddress.
type xdsEndpoint struct {
	raw  string // as written
	host string
	port uint32
	ip   netip.Addr // valid when host is an IP
}

// parseXDSAddresses reads BootstrapOptions.XDSAddress: one host:port, or several,
// comma-separated (the replicas of the control plane). A list holds either DNS names or
// IPs, never both, with no empty item and no address twice.
func parseXDSAddresses(list string) ([]xdsEndpoint, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("xds address is required (host:port of the bearkong control plane)")
	}
	var out []xdsEndpoint
	var errs []error
	seen := map[string]bool{}
	names, ips := 0, 0
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			errs = append(errs, fmt.Errorf("xds address %q has an empty item", list))
			continue
		}
		host, port, err := splitHostPort("xds address", item)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		e := xdsEndpoint{raw: item, host: host, port: port}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() != "" {
				errs = append(errs, fmt.Errorf("xds address host %q: IP zones are not supported", host))
				continue
			}
			e.ip = a.Unmap()
			e.host = e.ip.String()
			ips++
		} else if !isDNSSubdomain(host) {
			errs = append(errs, fmt.Errorf("xds address host %q is neither an IP address nor a DNS name", host))
			continue
		} else {
			names++
		}
		key := fmt.Sprintf("%s|%d", e.host, e.port)
		if seen[key] {
			errs = append(errs, fmt.Errorf("xds address %q is listed twice", item))
			continue
		}
		seen[key] = true
		out = append(out, e)
	}
	if names > 0 && ips > 0 {
		errs = append(errs, fmt.Errorf("xds addresses %q mix IP addresses and DNS names: list IP addresses, or DNS names", list))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// xdsLoadAssignment is the insecure mode's control-plane cluster's endpoints: one per
// address, in one locality, so that each new ADS stream is balanced over the replicas
// (the cluster's round robin) and a dead one is skipped at the next attempt.
func xdsLoadAssignment(eps []xdsEndpoint) *endpointv3.ClusterLoadAssignment {
	lb := make([]*endpointv3.LbEndpoint, 0, len(eps))
	for _, e := range eps {
		lb = append(lb, lbEndpoint(e.host, e.port))
	}
	return &endpointv3.ClusterLoadAssignment{
		ClusterName: XDSClusterName,
		Endpoints:   []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lb}},
	}
}

// googleGrpcTarget is the secure mode's gRPC target for eps, and whether it needs
// round_robin. One address stays as written (a DNS name goes through gRPC's default
// resolver, dns:///). Several must be IPs of one family, and make one target of gRPC's
// ipv4: or ipv6: scheme, which lists them all:
// https://github.com/grpc/grpc/blob/master/doc/naming.md
func googleGrpcTarget(eps []xdsEndpoint) (string, bool, error) {
	if len(eps) == 1 {
		return eps[0].raw, false, nil
	}
	scheme := ""
	addrs := make([]string, 0, len(eps))
	for _, e := range eps {
		if !e.ip.IsValid() {
			return "", false, fmt.Errorf("several xds addresses must be IP addresses in the secure mode (gRPC's target holds one DNS name, or IPs); %q is a name", e.raw)
		}
		s := "ipv4"
		if e.ip.Is6() {
			s = "ipv6"
		}
		if scheme != "" && s != scheme {
			return "", false, errors.New("several xds addresses must be all IPv4 or all IPv6 in the secure mode (one gRPC target of the ipv4: or ipv6: scheme)")
		}
		scheme = s
		addrs = append(addrs, netip.AddrPortFrom(e.ip, uint16(e.port)).String())
	}
	return scheme + ":" + strings.Join(addrs, ","), true, nil
}

// defaultServerName is the name the control plane's certificate is checked for when
// none is given: the host of the address, which must then be the same for all.
func defaultServerName(eps []xdsEndpoint) (string, error) {
	for _, e := range eps[1:] {
		if e.host != eps[0].host {
			return "", errors.New("xds server name is required with xds addresses of different hosts: the name every replica's certificate holds")
		}
	}
	return eps[0].host, nil
}

// xdsServiceConfig is the gRPC service config of the secure mode's channel (channel
// argument grpc.service_config: the default config, as no resolver bearkong uses returns
// one): https://github.com/grpc/grpc/blob/master/doc/service_config.md
//
//   - waitForReady on the ADS method. Envoy backs the ADS stream off after each failed
//     attempt, from 500 ms up to 30 s, and its Google gRPC client takes no retry policy
//     (Envoy reads GrpcService.EnvoyGrpc.retry_policy only). Without waitForReady, gRPC
//     fails every stream started while the channel cannot connect, so a control plane
//     away for a few seconds leaves the proxy in a long backoff. With it, the stream
//     waits for the channel, which reconnects on its own short backoff, and starts the
//     moment a control plane is there.
//   - round_robin with several addresses: gRPC's default, pick_first, would put every
//     proxy on the first address that answers; round_robin keeps a connection to each
//     replica and starts each new stream on the next ready one.
//     https://github.com/grpc/grpc/blob/master/doc/load-balancing.md
func xdsServiceConfig(roundRobin bool) string {
	sc := `{"methodConfig":[{"name":[{"service":"envoy.service.discovery.v3.AggregatedDiscoveryService"}],"waitForReady":true}]`
	if roundRobin {
		sc += `,"loadBalancingConfig":[{"round_robin":{}}]`
	}
	return sc + "}"
}
