// Package xdstest is a test ADS client that plays Envoy's part against an ADS server:
// it subscribes to CDS and LDS by wildcard, to EDS and RDS by the names it finds in the
// clusters and listeners it receives, decodes every resource before it ACKs, and can be
// told to NACK. It records every response and every ACK with their times.
package xdstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// Type URLs, spelled out so that this package depends on nothing of the server's.
const (
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// Received is one response as the client got it.
type Received struct {
	TypeURL string
	Version string
	Nonce   string
	Names   []string // resource names, in response order
	At      time.Time
	Bytes   int
	NACKed  bool
}

// Client is one simulated proxy.
type Client struct {
	Node *corev3.Node
	// Nack, when set, is asked about every response; a non-empty message NACKs it.
	Nack func(typeURL string, names []string) string
	// Reject, when set, is asked about every response with its decoded resources by
	// name, as Envoy validates their content; a non-empty message NACKs it.
	Reject func(typeURL string, resources map[string]proto.Message) string
	// NoAck, when set, makes the client decode responses but never answer them.
	NoAck bool

	conn   *grpc.ClientConn
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient

	sendMu sync.Mutex
	first  bool

	ldsRequested bool // touched by the receive loop only

	mu       sync.Mutex
	cond     *sync.Cond
	received []Received
	state    map[string]*typeState
	err      error
	done     bool
}

type typeState struct {
	acked string   // last accepted version
	names []string // current subscription (EDS, RDS)
	// resources holds the latest content per name (for EDS and RDS, names never sent
	// again keep their last content, as in Envoy).
	resources map[string]proto.Message
}

// Dial connects to addr and opens an ADS stream for node.
func Dial(ctx context.Context, addr string, node *corev3.Node) (*Client, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open ADS stream: %w", err)
	}
	c := &Client{Node: node, conn: conn, stream: stream, first: true, state: map[string]*typeState{}}
	c.cond = sync.NewCond(&c.mu)
	for _, t := range []string{ClusterType, EndpointType, ListenerType, RouteType} {
		c.state[t] = &typeState{resources: map[string]proto.Message{}}
	}
	return c, nil
}

// Start subscribes to CDS and handles responses until the stream ends. Like Envoy, it
// subscribes to LDS once the clusters are initialized: after the first CDS response if
// no cluster uses EDS, else after the first EDS response.
func (c *Client) Start() error {
	if err := c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: ClusterType}); err != nil {
		return err
	}
	go c.recvLoop()
	return nil
}

// Close ends the stream and the connection.
func (c *Client) Close() {
	c.sendMu.Lock()
	_ = c.stream.CloseSend()
	c.sendMu.Unlock()
	c.conn.Close()
}

// Send sends a request, with the node on the first one only.
func (c *Client) Send(r *discoveryv3.DiscoveryRequest) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.first {
		r.Node = c.Node
		c.first = false
	}
	return c.stream.Send(r)
}

func (c *Client) recvLoop() {
	for {
		resp, err := c.stream.Recv()
		if err != nil {
			c.mu.Lock()
			if !errors.Is(err, io.EOF) {
				c.err = err
			}
			c.done = true
			c.cond.Broadcast()
			c.mu.Unlock()
			return
		}
		if err := c.handle(resp); err != nil {
			c.mu.Lock()
			c.err = err
			c.done = true
			c.cond.Broadcast()
			c.mu.Unlock()
			c.Close()
			return
		}
	}
}

func (c *Client) handle(resp *discoveryv3.DiscoveryResponse) error {
	rec := Received{TypeURL: resp.TypeUrl, Version: resp.VersionInfo, Nonce: resp.Nonce, At: time.Now()}
	decoded := map[string]proto.Message{}
	for _, a := range resp.Resources {
		if a.TypeUrl != resp.TypeUrl {
			return fmt.Errorf("resource of type %s in a %s response", a.TypeUrl, resp.TypeUrl)
		}
		m, name, err := decode(a.TypeUrl, a.Value)
		if err != nil {
			return err
		}
		if _, dup := decoded[name]; dup {
			return fmt.Errorf("duplicate %s resource %q in one response", resp.TypeUrl, name)
		}
		decoded[name] = m
		rec.Names = append(rec.Names, name)
		rec.Bytes += len(a.Value)
	}
	var nackMsg string
	if c.Nack != nil {
		nackMsg = c.Nack(resp.TypeUrl, rec.Names)
	}
	if nackMsg == "" && c.Reject != nil {
		nackMsg = c.Reject(resp.TypeUrl, decoded)
	}
	rec.NACKed = nackMsg != ""

	c.mu.Lock()
	st := c.state[resp.TypeUrl]
	if st == nil {
		c.mu.Unlock()
		return fmt.Errorf("response of unrequested type %s", resp.TypeUrl)
	}
	var follow *discoveryv3.DiscoveryRequest
	if !rec.NACKed {
		st.acked = resp.VersionInfo
		if resp.TypeUrl == ClusterType || resp.TypeUrl == ListenerType {
			st.resources = decoded // the full state of the world
		} else {
			for n, m := range decoded {
				st.resources[n] = m
			}
		}
		follow = c.followUp(resp.TypeUrl)
	}
	ack := &discoveryv3.DiscoveryRequest{TypeUrl: resp.TypeUrl, VersionInfo: st.acked, ResponseNonce: resp.Nonce, ResourceNames: st.names}
	if rec.NACKed {
		ack.ErrorDetail = &rpcstatus.Status{Code: 3, Message: nackMsg}
	}
	c.received = append(c.received, rec)
	c.cond.Broadcast()
	c.mu.Unlock()

	if c.NoAck {
		return nil
	}
	if err := c.Send(ack); err != nil {
		return err
	}
	if follow != nil {
		if err := c.Send(follow); err != nil {
			return err
		}
	}
	if !c.ldsRequested && (resp.TypeUrl == EndpointType || (resp.TypeUrl == ClusterType && len(c.names(EndpointType)) == 0)) {
		c.ldsRequested = true
		return c.Send(&discoveryv3.DiscoveryRequest{TypeUrl: ListenerType})
	}
	return nil
}

func (c *Client) names(typeURL string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state[typeURL].names
}

// followUp returns the EDS or RDS request that a new CDS or LDS state calls for, as
// Envoy does: the names those resources refer to. Called with c.mu held.
func (c *Client) followUp(typeURL string) *discoveryv3.DiscoveryRequest {
	var dep string
	var names []string
	switch typeURL {
	case ClusterType:
		dep = EndpointType
		for _, m := range c.state[ClusterType].resources {
			cl := m.(*clusterv3.Cluster)
			if cl.GetType() == clusterv3.Cluster_EDS {
				n := cl.GetEdsClusterConfig().GetServiceName()
				if n == "" {
					n = cl.GetName()
				}
				names = append(names, n)
			}
		}
	case ListenerType:
		dep = RouteType
		for _, m := range c.state[ListenerType].resources {
			names = append(names, routeNames(m.(*listenerv3.Listener))...)
		}
	default:
		return nil
	}
	slices.Sort(names)
	names = slices.Compact(names)
	st := c.state[dep]
	if slices.Equal(names, st.names) {
		return nil
	}
	st.names = names
	if names == nil {
		names = []string{}
	}
	return &discoveryv3.DiscoveryRequest{TypeUrl: dep, VersionInfo: st.acked, ResponseNonce: c.lastNonce(dep), ResourceNames: names}
}

func (c *Client) lastNonce(typeURL string) string {
	for i := len(c.received) - 1; i >= 0; i-- {
		if c.received[i].TypeURL == typeURL {
			return c.received[i].Nonce
		}
	}
	return ""
}

func routeNames(l *listenerv3.Listener) []string {
	var out []string
	for _, fc := range l.GetFilterChains() {
		for _, f := range fc.GetFilters() {
			var hcm hcmv3.HttpConnectionManager
			if f.GetTypedConfig() == nil || f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
				continue
			}
			if n := hcm.GetRds().GetRouteConfigName(); n != "" {
				out = append(out, n)
			}
		}
	}
	return out
}

func decode(typeURL string, b []byte) (proto.Message, string, error) {
	var m proto.Message
	switch typeURL {
	case ClusterType:
		m = &clusterv3.Cluster{}
	case EndpointType:
		m = &endpointv3.ClusterLoadAssignment{}
	case ListenerType:
		m = &listenerv3.Listener{}
	case RouteType:
		m = &routev3.RouteConfiguration{}
	default:
		return nil, "", fmt.Errorf("unexpected type %s", typeURL)
	}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", typeURL, err)
	}
	var name string
	switch r := m.(type) {
	case *clusterv3.Cluster:
		name = r.GetName()
	case *endpointv3.ClusterLoadAssignment:
		name = r.GetClusterName()
	case *listenerv3.Listener:
		name = r.GetName()
	case *routev3.RouteConfiguration:
		name = r.GetName()
	}
	if name == "" {
		return nil, "", fmt.Errorf("%s resource without a name", typeURL)
	}
	return m, name, nil
}

// Received returns a copy of every response so far.
func (c *Client) Received() []Received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.received)
}

// Resource returns the latest accepted content of a resource.
func (c *Client) Resource(typeURL, name string) proto.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state[typeURL].resources[name]
}

// Acked returns the last accepted version of a type.
func (c *Client) Acked(typeURL string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state[typeURL].acked
}

// Err returns the error that ended the stream, if any.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// WaitFor waits until cond, called with the responses so far, is true; or the timeout.
func (c *Client) WaitFor(timeout time.Duration, cond func([]Received) bool) error {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		c.mu.Lock()
		c.cond.Broadcast()
		c.mu.Unlock()
	})
	defer timer.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for !cond(c.received) {
		if c.done {
			return fmt.Errorf("stream ended (err %v) before the condition held", c.err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		c.cond.Wait()
	}
	return nil
}

// Count returns how many responses of typeURL were received.
func Count(rs []Received, typeURL string) int {
	n := 0
	for _, r := range rs {
		if r.TypeURL == typeURL {
			n++
		}
	}
	return n
}
