// Package xdstest is a test ADS client that plays Envoy's part against an ADS server. The
// protocol is internal/xdsclient's, shared with the fleet simulator: CDS and LDS by
// wildcard, EDS, RDS and SDS by the names the clusters and listeners refer to, in Envoy's
// watch order; unsubscribed resources dropped; clusters warming until their endpoints and
// secrets come. It
// decodes every resource before it ACKs, can be told to NACK, and records every response
// with its time.
package xdstest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"slices"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/internal/xdsclient"
)

// Type URLs, spelled out so that this package depends on nothing of the server's.
const (
	ClusterType     = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType    = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	ListenerType    = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ScopedRouteType = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
	RouteType       = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	SecretType      = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
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

	mu       sync.Mutex
	cond     *sync.Cond
	proto    *xdsclient.Client
	received []Received
	// resources holds the decoded content of what proto holds, per type URL.
	resources map[string]map[string]proto.Message
	err       error
	done      bool
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
	c := &Client{Node: node, conn: conn, stream: stream, first: true, proto: xdsclient.New(), resources: map[string]map[string]proto.Message{}}
	c.cond = sync.NewCond(&c.mu)
	return c, nil
}

// Start subscribes to CDS and handles responses until the stream ends.
func (c *Client) Start() error {
	c.mu.Lock()
	first := c.proto.Start()
	c.mu.Unlock()
	if err := c.Send(first); err != nil {
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

var hashSeed = maphash.MakeSeed()

func (c *Client) handle(resp *discoveryv3.DiscoveryResponse) error {
	rec := Received{TypeURL: resp.TypeUrl, Version: resp.VersionInfo, Nonce: resp.Nonce, At: time.Now()}
	t, ok := xdsclient.TypeOf(resp.TypeUrl)
	if !ok {
		return fmt.Errorf("response of unknown type %s", resp.TypeUrl)
	}
	decoded := map[string]proto.Message{}
	rs := make([]xdsclient.Resource, 0, len(resp.Resources))
	for _, a := range resp.Resources {
		if a.TypeUrl != resp.TypeUrl {
			return fmt.Errorf("resource of type %s in a %s response", a.TypeUrl, resp.TypeUrl)
		}
		m, name, err := decode(a.TypeUrl, a.Value)
		if err != nil {
			return err
		}
		decoded[name] = m
		r := xdsclient.Resource{Name: name, Hash: maphash.Bytes(hashSeed, a.Value)}
		switch m := m.(type) {
		case *clusterv3.Cluster:
			if m.GetType() == clusterv3.Cluster_EDS {
				r.EDS = cmp.Or(m.GetEdsClusterConfig().GetServiceName(), m.GetName())
			}
			r.Secrets = xdsclient.ClusterSecrets(m)
		case *listenerv3.Listener:
			r.Routes, r.Scoped = xdsclient.ListenerRoutes(m)
			r.Secrets = xdsclient.ListenerSecrets(m)
		case *routev3.ScopedRouteConfiguration:
			r.Routes = []string{m.GetRouteConfigurationName()}
		}
		rs = append(rs, r)
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
	reqs, err := c.proto.Response(t, resp.VersionInfo, resp.Nonce, rs, nackMsg)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if !rec.NACKed {
		// Keep the decoded content of what the protocol state holds, no more.
		held := c.resources[resp.TypeUrl]
		if held == nil || t == xdsclient.CDS || t == xdsclient.LDS || t == xdsclient.SRDS {
			held = map[string]proto.Message{}
			c.resources[resp.TypeUrl] = held
		}
		for n, m := range decoded {
			held[n] = m
		}
		for _, tt := range []xdsclient.Type{xdsclient.EDS, xdsclient.RDS, xdsclient.SDS} {
			for n := range c.resources[tt.URL()] {
				if _, ok := c.proto.Has(tt, n); !ok {
					delete(c.resources[tt.URL()], n)
				}
			}
		}
	}
	c.received = append(c.received, rec)
	c.cond.Broadcast()
	c.mu.Unlock()

	if c.NoAck {
		return nil
	}
	for _, r := range reqs {
		if err := c.Send(r); err != nil {
			return err
		}
	}
	return nil
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
	case ScopedRouteType:
		m = &routev3.ScopedRouteConfiguration{}
	case RouteType:
		m = &routev3.RouteConfiguration{}
	case SecretType:
		m = &tlsv3.Secret{}
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
	case *routev3.ScopedRouteConfiguration:
		name = r.GetName()
	case *tlsv3.Secret:
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

// Resource returns the latest accepted content of a resource the client holds.
func (c *Client) Resource(typeURL, name string) proto.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.resources[typeURL][name]
}

// Acked returns the last accepted version of a type.
func (c *Client) Acked(typeURL string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, _ := xdsclient.TypeOf(typeURL)
	return c.proto.Acked(t)
}

// Names returns the EDS, RDS or SDS subscription, in the order the client sends it.
func (c *Client) Names(typeURL string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, _ := xdsclient.TypeOf(typeURL)
	return slices.Clone(c.proto.Names(t))
}

// Warming returns the clusters that wait for their ClusterLoadAssignment, sorted.
func (c *Client) Warming() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proto.Warming()
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
