package translate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Node metadata keys. The bootstrap writes them (see Bootstrap) and ParseNode reads them
// back from the first DiscoveryRequest of a stream, so a single bootstrap template serves
// every pod and nothing about a pod is configured by hand in the control plane.
const (
	MetadataPodName      = "pod_name"
	MetadataPodNamespace = "pod_namespace"
	MetadataListenIP     = "listen_ip"
	MetadataOutboundIP   = "outbound_ip"
	MetadataAppAddress   = "app_address"
)

// Defaults for the addresses a node may leave out of its metadata.
var (
	// DefaultListenIP is where a sidecar in a real pod binds its inbound and outbound
	// listeners: every interface, because peers reach the inbound port on the pod IP.
	DefaultListenIP = "0.0.0.0"
	// DefaultOutboundIP is where a sidecar in a real pod binds its outbound listener:
	// loopback, so that only the processes of its own pod can send through it. On the
	// pod IP it would be an open relay into the mesh for any other pod.
	DefaultOutboundIP = "127.0.0.1"
	// DefaultAppAddress is where the app listens inside the pod (mesh contract: 9090).
	DefaultAppAddress = net.JoinHostPort("127.0.0.1", strconv.Itoa(mesh.AppPort))
)

// Node is what a proxy says about itself in its bootstrap node (id + metadata).
type Node struct {
	// ID is node.id, "<pod>.<namespace>" when the bootstrap came from Bootstrap.
	ID string
	// PodNamespace and PodName name the proxy's pod, from the downward API.
	PodNamespace string
	PodName      string
	// ListenIP is the bind address of the inbound listener: "0.0.0.0" in a real pod, a
	// loopback address such as "127.0.1.N" when pods are local processes.
	ListenIP string
	// OutboundIP is the bind address of the outbound listener: "127.0.0.1" in a real
	// pod, a pod-local loopback address such as "127.0.2.N" when pods are local
	// processes.
	OutboundIP string
	// AppAddress is the host:port of the local app that inbound traffic goes to.
	AppAddress string
	// ServiceAccount and PodUID are the identity the control plane proved (identity.go);
	// empty when it proved none.
	ServiceAccount string
	PodUID         string
}

// ParseNode reads node.id and the metadata fields "pod_name", "pod_namespace",
// "listen_ip" (default DefaultListenIP), "outbound_ip" (default DefaultOutboundIP) and
// "app_address" (default DefaultAppAddress).
// A missing node.id defaults to "<pod>.<namespace>". Missing or malformed pod name or
// namespace, and malformed addresses, are errors that say which field is wrong.
func ParseNode(n *corev3.Node) (Node, error) {
	if n == nil {
		return Node{}, errors.New("translate: no node in the request (the first request of an xDS stream must carry it)")
	}
	var errs []error
	str := func(key string) string {
		v, ok := n.GetMetadata().GetFields()[key]
		if !ok {
			return ""
		}
		s, ok := v.GetKind().(*structpb.Value_StringValue)
		if !ok {
			errs = append(errs, fmt.Errorf("node metadata %q must be a string", key))
			return ""
		}
		return s.StringValue
	}
	node := Node{
		ID:           n.GetId(),
		PodName:      str(MetadataPodName),
		PodNamespace: str(MetadataPodNamespace),
		ListenIP:     str(MetadataListenIP),
		OutboundIP:   str(MetadataOutboundIP),
		AppAddress:   str(MetadataAppAddress),
		// Written by the control plane's authenticator, not by the bootstrap.
		ServiceAccount: str(MetadataServiceAccount),
		PodUID:         str(MetadataPodUID),
	}.withDefaults()
	if err := node.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return Node{}, fmt.Errorf("translate: node %q: %w", n.GetId(), err)
	}
	return node, nil
}

// withDefaults fills in the fields a node may leave out.
func (n Node) withDefaults() Node {
	if n.ListenIP == "" {
		n.ListenIP = DefaultListenIP
	}
	if n.OutboundIP == "" {
		n.OutboundIP = DefaultOutboundIP
	}
	if n.AppAddress == "" {
		n.AppAddress = DefaultAppAddress
	}
	if n.ID == "" && n.PodName != "" && n.PodNamespace != "" {
		n.ID = nodeID(n.PodName, n.PodNamespace)
	}
	return n
}

// Validate reports every malformed field of n, joined. ID is not checked: it is only a
// label, and withDefaults derives it from the pod. The builders that take a Node
// (InboundListener, OutboundListener, LocalAppCluster) assume a valid one.
func (n Node) Validate() error {
	var errs []error
	if err := validatePodName(MetadataPodName, n.PodName); err != nil {
		errs = append(errs, err)
	}
	if err := validateNamespace(MetadataPodNamespace, n.PodNamespace); err != nil {
		errs = append(errs, err)
	}
	if err := validateIP(MetadataListenIP, n.ListenIP); err != nil {
		errs = append(errs, err)
	}
	if err := validateIP(MetadataOutboundIP, n.OutboundIP); err != nil {
		errs = append(errs, err)
	}
	if _, _, err := splitIPPort(MetadataAppAddress, n.AppAddress); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func nodeID(pod, namespace string) string { return pod + "." + namespace }

// validateNamespace checks a Kubernetes namespace name: an RFC 1123 label. A value such as
// "$(POD_NAMESPACE)" or "" usually means the downward API is not wired into the sidecar.
func validateNamespace(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s is missing (set it from the downward API: metadata.namespace)", field)
	}
	if len(v) > 63 || !isDNSLabel(v) {
		return fmt.Errorf("%s %q is not a valid Kubernetes namespace (lowercase RFC 1123 label)", field, v)
	}
	return nil
}

// validatePodName checks a Kubernetes pod name: an RFC 1123 subdomain.
func validatePodName(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s is missing (set it from the downward API: metadata.name)", field)
	}
	if len(v) > 253 || !isDNSSubdomain(v) {
		return fmt.Errorf("%s %q is not a valid Kubernetes pod name (lowercase RFC 1123 subdomain)", field, v)
	}
	return nil
}

// isDNSLabel reports whether s is a lowercase RFC 1123 label: alphanumerics and '-',
// starting and ending with an alphanumeric.
func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is dot-separated RFC 1123 labels.
func isDNSSubdomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(label) {
			return false
		}
	}
	return true
}

// validateIP checks a bind address. Envoy listeners and the admin listener bind to a
// socket address, which must be an IP, not a name:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/address.proto#envoy-v3-api-msg-config-core-v3-socketaddress
func validateIP(field, v string) error {
	if v == "" {
		return fmt.Errorf("%s is empty", field)
	}
	a, err := netip.ParseAddr(v)
	if err != nil || a.Zone() != "" {
		return fmt.Errorf("%s %q is not an IP address", field, v)
	}
	return nil
}

// splitHostPort splits "host:port" and checks the port.
func splitHostPort(field, v string) (string, uint32, error) {
	if v == "" {
		return "", 0, fmt.Errorf("%s is empty (want host:port)", field)
	}
	host, p, err := net.SplitHostPort(v)
	if err != nil {
		return "", 0, fmt.Errorf("%s %q is not host:port: %w", field, v, err)
	}
	if host == "" {
		return "", 0, fmt.Errorf("%s %q has no host", field, v)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%s %q: port %q is not in 1-65535", field, v, p)
	}
	return host, uint32(port), nil
}

// splitIPPort is splitHostPort for addresses whose host must be an IP.
func splitIPPort(field, v string) (string, uint32, error) {
	host, port, err := splitHostPort(field, v)
	if err != nil {
		return "", 0, err
	}
	if err := validateIP(field+" host", host); err != nil {
		return "", 0, fmt.Errorf("%s %q: the host must be an IP address", field, v)
	}
	return host, port, nil
}

// mustSplitIPPort is for builders whose Node was validated: a malformed address yields
// port 0, which Envoy rejects loudly instead of silently using some other address.
func mustSplitIPPort(v string) (string, uint32) {
	host, port, err := splitIPPort("address", v)
	if err != nil {
		return v, 0
	}
	return host, port
}
