// Package sim is the fleet simulator: many ADS clients that behave like Envoy sidecars,
// lean enough that thousands fit in one process next to nothing else.
//
// Each client's protocol is internal/xdsclient's, the one the tests use, which behaves like
// Envoy 1.36: CDS and LDS by wildcard, SRDS by wildcard once the first listeners take
// scoped routes, EDS, RDS and SDS by the names the clusters, listeners and scopes refer to, in Envoy's watch order (newest first, not sorted); unsubscribed
// resources dropped; clusters warming until their endpoints and secrets come. It decodes every resource before
// it ACKs, checks that type URLs match and names do not repeat, and can be told to NACK or
// to never ACK. Per response it records the type, the number of resources, the bytes,
// when it arrived and when it was ACKed. Unlike internal/xdstest it keeps no decoded
// resources, only names, so that the simulator's memory stays small and the server's can
// be measured apart from it.
package sim

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"slices"
	"sync"
	"sync/atomic"
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

// Type is an xDS type, in the order Envoy initializes them.
type Type = xdsclient.Type

// The types.
const (
	CDS      = xdsclient.CDS
	EDS      = xdsclient.EDS
	LDS      = xdsclient.LDS
	SRDS     = xdsclient.SRDS
	RDS      = xdsclient.RDS
	SDS      = xdsclient.SDS
	NumTypes = xdsclient.NumTypes
)

func typeOf(url string) (Type, bool) { return xdsclient.TypeOf(url) }

// Mode is how a client answers.
type Mode int

const (
	// Normal ACKs every response after decoding it.
	Normal Mode = iota
	// NeverACK sends the first request of each type, as Envoy does while it initializes,
	// and then never answers a response: a stuck proxy.
	NeverACK
)

// Event is one response as a client got it.
type Event struct {
	Type  Type
	N     int32 // resources
	Bytes int32 // size of the DiscoveryResponse message
	Recv  int64 // unix ns, when Recv returned
	Ack   int64 // unix ns, when the ACK (or NACK) was handed to gRPC; 0 if none
	// Removed is the number of names in a delta response's removed_resources.
	Removed int32
	NACK    bool
	// Hit says the response carried the resource the fleet watches (Fleet.Watch).
	Hit bool
	// Names are the resource names when there are at most four, to check what a small
	// push carried.
	Names []string
	nonce string
}

// Client is one simulated proxy.
type Client struct {
	ID   int
	Node *corev3.Node
	Mode Mode
	// Nack, when set, is asked about every response; a non-empty message NACKs it.
	Nack func(t Type, names []string) string

	fleet  *Fleet
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient

	// Owned by the receive goroutine.
	proto *xdsclient.Client
	// On a delta stream (Options.Delta), these instead.
	dstream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	dproto  *deltaProto
	// openDelta opens a new delta stream, and cancelStream ends the current one; with
	// reconnecting set, the receive goroutine opens a new stream instead of finishing
	// (Fleet.Reconnect).
	openDelta    func() (discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, context.CancelFunc, error)
	cancelStream context.CancelFunc
	reconnecting atomic.Bool

	mu       sync.Mutex
	events   []Event
	synced   [NumTypes]bool // has ACKed at least one response of the type
	asked    [NumTypes]bool // has sent a request for the type
	syncedAt int64          // unix ns when every type asked for was first ACKed (see allSynced)
	done     bool
	err      error
}

// Fleet is a set of clients sharing counters.
type Fleet struct {
	Clients []*Client
	conns   []*grpc.ClientConn

	Responses atomic.Int64
	LastRecv  atomic.Int64 // unix ns of the latest response any client got
	Decoded   atomic.Int64 // resources decoded

	watch atomic.Pointer[string]
}

// Watch makes every client flag (Event.Hit) the responses that carry a resource of this
// name; "" stops it.
func (f *Fleet) Watch(name string) {
	if name == "" {
		f.watch.Store(nil)
		return
	}
	f.watch.Store(&name)
}

// Options configure Dial.
type Options struct {
	// Conns is the number of gRPC connections the clients share, round-robin; 0 gives
	// each client a connection of its own, as each Envoy has.
	Conns int
	// NeverACK is the number of clients (the last ones) that never ACK.
	NeverACK int
	// Window is each connection's HTTP/2 stream and connection flow-control window;
	// 0 leaves gRPC's default, which grows with the measured bandwidth-delay product.
	//
	// Why it matters here: Envoy's windows are large (256 MiB), which is right when each
	// proxy has its own host. Here all proxies share one kernel: with large windows the
	// server can push a full configuration to every proxy at once, and the loopback
	// socket buffers of thousands of connections then hold gigabytes, which the kernel
	// throttles. A 64 KiB window (HTTP/2's initial one) bounds that.
	Window int
	// Delta makes the clients speak incremental xDS (DeltaAggregatedResources) instead
	// of state of the world.
	Delta bool
}

// Dial connects one client per node to addr and starts them all. The clients run until
// ctx ends or Close.
func Dial(ctx context.Context, addr string, nodes []*corev3.Node, o Options) (*Fleet, error) {
	nconns := o.Conns
	if nconns <= 0 || nconns > len(nodes) {
		nconns = len(nodes)
	}
	f := &Fleet{}
	for range nconns {
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.ForceCodecV2(codec{})),
		}
		if o.Window > 0 {
			opts = append(opts, grpc.WithInitialWindowSize(int32(o.Window)), grpc.WithInitialConnWindowSize(int32(o.Window)))
		}
		cc, err := grpc.NewClient(addr, opts...)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		f.conns = append(f.conns, cc)
	}
	for i, n := range nodes {
		c := &Client{ID: i, Node: n, fleet: f}
		if i >= len(nodes)-o.NeverACK {
			c.Mode = NeverACK
		}
		f.Clients = append(f.Clients, c)
	}
	// Open the streams from a few goroutines: all at once, like a fleet reconnecting.
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	work := make(chan *Client)
	for range 16 {
		wg.Go(func() {
			for c := range work {
				cc := f.conns[c.ID%len(f.conns)]
				ads := discoveryv3.NewAggregatedDiscoveryServiceClient(cc)
				var err error
				if o.Delta {
					c.openDelta = func() (discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, context.CancelFunc, error) {
						sctx, cancel := context.WithCancel(ctx)
						s, err := ads.DeltaAggregatedResources(sctx)
						if err != nil {
							cancel()
						}
						return s, cancel, err
					}
					c.dstream, c.cancelStream, err = c.openDelta()
				} else {
					c.stream, err = ads.StreamAggregatedResources(ctx)
				}
				if err != nil {
					select {
					case errs <- fmt.Errorf("client %d: open stream: %w", c.ID, err):
					default:
					}
					continue
				}
				if o.Delta {
					go c.runDelta()
				} else {
					go c.run()
				}
			}
		})
	}
	for _, c := range f.Clients {
		work <- c
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return f, err
	default:
	}
	return f, nil
}

// Close closes every connection.
func (f *Fleet) Close() {
	for _, cc := range f.conns {
		cc.Close()
	}
}

// Mark forgets every client's events, to measure from now on.
func (f *Fleet) Mark() {
	for _, c := range f.Clients {
		c.mu.Lock()
		c.events = c.events[:0:0]
		c.mu.Unlock()
	}
}

// Status is a fleet-wide summary.
type Status struct {
	Synced  int // clients that ACKed every type they asked for (never-ACK clients: that got them)
	Done    int // clients whose stream ended
	Err     error
	Pending int // responses received and not answered, over normal clients
}

// Status summarizes the clients.
func (f *Fleet) Status() Status {
	var st Status
	for _, c := range f.Clients {
		c.mu.Lock()
		if c.allSynced() {
			st.Synced++
		}
		if c.done {
			st.Done++
			if st.Err == nil && c.err != nil {
				st.Err = fmt.Errorf("client %d (%s): %w", c.ID, c.Node.GetId(), c.err)
			}
		}
		c.mu.Unlock()
	}
	return st
}

// Events returns a copy of the client's events since the last Mark.
func (c *Client) Events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

// EventsMatch reports whether f says true of the client's events since the last Mark,
// read in place: the driver asks it of every client every few milliseconds while a
// change spreads, and a copy each time was garbage for the GC to chase.
func (c *Client) EventsMatch(f func([]Event) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f(c.events)
}

// Lost reports whether the client's stream ended.
func (c *Client) Lost() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

// SyncedAt returns when the client had first ACKed (or, never ACKing, received) every
// type it asked for, in unix ns; 0 if not yet.
func (c *Client) SyncedAt() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncedAt
}

// allSynced reports whether the client ACKed CDS, EDS, LDS and RDS, SRDS if it asked for
// scopes and SDS if it asked for secrets: an Envoy asks for those before (SDS) or with
// (SRDS) its first RDS request, so a client that never asked by the time it has routes
// needs none. The caller holds c.mu; c.proto belongs to the receive
// goroutine, so only synced is read.
func (c *Client) allSynced() bool {
	return c.synced[CDS] && c.synced[EDS] && c.synced[LDS] && c.synced[RDS] && (!c.asked[SRDS] || c.synced[SRDS]) && (!c.asked[SDS] || c.synced[SDS])
}

func (c *Client) finish(err error) {
	c.mu.Lock()
	c.done = true
	if errors.Is(err, io.EOF) {
		// The server ended the stream with an OK status: still a lost stream to a
		// proxy, which must reconnect and resync.
		err = errors.New("the server ended the stream (EOF)")
	}
	if err != nil {
		c.err = err
	}
	c.mu.Unlock()
}

func (c *Client) send(r *discoveryv3.DiscoveryRequest) error {
	return c.stream.Send(r)
}

func (c *Client) run() {
	c.proto = xdsclient.New()
	first := c.proto.Start()
	first.Node = c.Node
	if err := c.send(first); err != nil {
		c.finish(err)
		return
	}
	var d decoder
	for {
		var resp rawResponse
		if err := c.stream.RecvMsg(&resp); err != nil {
			c.finish(err)
			return
		}
		err := c.handle(&d, &resp)
		resp.release()
		if err != nil {
			c.finish(err)
			return
		}
	}
}

func (c *Client) handle(d *decoder, resp *rawResponse) error {
	recv := time.Now().UnixNano()
	c.fleet.Responses.Add(1)
	c.fleet.LastRecv.Store(recv)
	t, ok := typeOf(resp.TypeURL)
	if !ok {
		return fmt.Errorf("response of unknown type %q", resp.TypeURL)
	}
	ev := Event{Type: t, N: int32(len(resp.Resources)), Bytes: int32(resp.Size), Recv: recv}
	dr, err := d.decode(t, resp)
	if err != nil {
		return err
	}
	names := dr.names
	c.fleet.Decoded.Add(int64(len(names)))
	if len(names) <= 4 {
		ev.Names = slices.Clone(names)
	}
	if w := c.fleet.watch.Load(); w != nil {
		_, ev.Hit = slices.BinarySearch(names, *w)
	}
	nackMsg := ""
	if c.Nack != nil {
		nackMsg = c.Nack(t, names)
	}
	reqs, err := c.proto.Response(t, resp.Version, resp.Nonce, dr.res, nackMsg)
	if err != nil {
		return err
	}
	var send []*discoveryv3.DiscoveryRequest
	switch c.Mode {
	case Normal:
		send = reqs
		ev.NACK = nackMsg != ""
	case NeverACK:
		// A stuck client only ever makes its first request of each type.
		for _, r := range reqs {
			if r.ResponseNonce == "" {
				send = append(send, r)
			}
		}
	}
	ev.nonce = resp.Nonce
	now := time.Now().UnixNano()
	c.mu.Lock()
	c.events = append(c.events, ev)
	for _, r := range send {
		rt, _ := typeOf(r.TypeUrl)
		c.asked[rt] = true
		if r.ResponseNonce == "" || r.ErrorDetail != nil && r.ResponseNonce != resp.Nonce {
			continue
		}
		// The ACK (or NACK) of a response: of this one, or of an earlier CDS response
		// whose ACK Envoy held while its clusters warmed.
		for i := len(c.events) - 1; i >= 0; i-- {
			if e := &c.events[i]; e.Type == rt && e.nonce == r.ResponseNonce {
				e.Ack = now
				break
			}
		}
		if r.ErrorDetail == nil {
			c.synced[rt] = true
		}
	}
	if c.Mode == NeverACK && nackMsg == "" {
		c.synced[t] = true
	}
	if c.syncedAt == 0 && c.allSynced() {
		c.syncedAt = now
	}
	c.mu.Unlock()

	for _, r := range send {
		if err := c.send(r); err != nil {
			return err
		}
	}
	return nil
}

// decoder decodes resources into reused messages.
type decoder struct {
	cluster  clusterv3.Cluster
	cla      endpointv3.ClusterLoadAssignment
	listener listenerv3.Listener
	route    routev3.RouteConfiguration
	scope    routev3.ScopedRouteConfiguration
	secret   tlsv3.Secret
}

func (d *decoder) reset() {
	proto.Reset(&d.cluster)
	proto.Reset(&d.cla)
	proto.Reset(&d.listener)
	proto.Reset(&d.route)
	proto.Reset(&d.scope)
	proto.Reset(&d.secret)
}

// decoded is what a resource's bytes say, as far as the simulator cares.
type decoded struct {
	name string
	hash uint64   // of the bytes
	ref  string   // the EDS name a cluster refers to, if any
	refs []string // the RDS names a listener or a scope refers to
	// scoped: a listener's connection manager takes its scopes from SRDS.
	scoped bool
	// secrets are the SDS names a cluster's or listener's TLS sockets refer to.
	secrets []string
}

// decodedResponse is what all the resources of a response say: their names, sorted and
// without duplicates, and the names they refer to, sorted and unique. Shared; read-only.
type decodedResponse struct {
	names, refs []string
	// res are the resources in response order, as the protocol state takes them.
	res []xdsclient.Resource
}

// Memoized decoding. The first client to receive some bytes unmarshals them; later
// clients that receive the same bytes (most of a fleet gets the same resources) reuse the
// result, found by a 64-bit hash of the bytes. Whole responses are memoized the same
// way, so that a client that gets the same 1000 clusters as the others checks them with
// one pass of hashing over the bytes instead of 1000 unmarshals.
var (
	memoSeed  = maphash.MakeSeed()
	memo      shardedMap[memoKey, *decoded]
	respMemo  shardedMap[memoKey, *decodedResponse]
	hashBytes = func(b []byte) uint64 { return maphash.Bytes(memoSeed, b) }
)

type memoKey struct {
	t    Type
	h    uint64
	n, m int // length, and resource count for responses
}

// FullDecode makes every client unmarshal every resource it receives, as each Envoy
// does, instead of reusing the result for bytes already decoded by another client. On a
// small machine the simulator then spends most of the CPU time, not the servers.
var FullDecode = false

// decode checks every resource of resp and returns their names (sorted) and, for CDS
// and LDS, the EDS or RDS names they refer to (sorted, unique). It fails on a resource
// whose type URL is not the response's, one that does not unmarshal, one without a name,
// or a repeated name. The slices are shared: read-only.
func (d *decoder) decode(t Type, resp *rawResponse) (*decodedResponse, error) {
	url := t.URL()
	var rkey memoKey
	if !FullDecode {
		var h maphash.Hash
		h.SetSeed(memoSeed)
		var n int
		for _, a := range resp.Resources {
			if string(a.TypeURL) != url {
				return nil, fmt.Errorf("resource of type %s in a %s response", a.TypeURL, t)
			}
			var l [8]byte
			binary.LittleEndian.PutUint64(l[:], uint64(len(a.Value)))
			h.Write(l[:])
			h.Write(a.Value)
			n += len(a.Value)
		}
		rkey = memoKey{t: t, h: h.Sum64(), n: n, m: len(resp.Resources)}
		if r, ok := respMemo.load(rkey); ok {
			return r, nil
		}
	}
	names := make([]string, 0, len(resp.Resources))
	var refs []string
	res := make([]xdsclient.Resource, 0, len(resp.Resources))
	for _, a := range resp.Resources {
		if string(a.TypeURL) != url {
			return nil, fmt.Errorf("resource of type %s in a %s response", a.TypeURL, t)
		}
		var r *decoded
		var key memoKey
		if !FullDecode {
			key = memoKey{t: t, h: hashBytes(a.Value), n: len(a.Value)}
			r, _ = memo.load(key)
		}
		if r == nil {
			var err error
			if r, err = d.unmarshal(t, a.Value); err != nil {
				return nil, err
			}
			r.hash = hashBytes(a.Value)
			if !FullDecode {
				memo.store(key, r)
			}
		}
		names = append(names, r.name)
		res = append(res, xdsclient.Resource{Name: r.name, Hash: r.hash, EDS: r.ref, Routes: r.refs, Scoped: r.scoped, Secrets: r.secrets})
		if r.ref != "" {
			refs = append(refs, r.ref)
		}
		refs = append(refs, r.refs...)
	}
	slices.Sort(names)
	for i := 1; i < len(names); i++ {
		if names[i] == names[i-1] {
			return nil, fmt.Errorf("duplicate %s resource %q in one response", t, names[i])
		}
	}
	slices.Sort(refs)
	refs = slices.Compact(refs)
	dr := &decodedResponse{names: names, refs: refs, res: res}
	if !FullDecode {
		respMemo.store(rkey, dr)
	}
	return dr, nil
}

// shardedMap is a map for many concurrent readers.
type shardedMap[K comparable, V any] struct {
	shards [64]struct {
		sync.RWMutex
		m map[K]V
	}
}

func (s *shardedMap[K, V]) shard(k K) int {
	return int(maphash.Comparable(memoSeed, k) % 64)
}

func (s *shardedMap[K, V]) load(k K) (V, bool) {
	sh := &s.shards[s.shard(k)]
	sh.RLock()
	v, ok := sh.m[k]
	sh.RUnlock()
	return v, ok
}

func (s *shardedMap[K, V]) store(k K, v V) {
	sh := &s.shards[s.shard(k)]
	sh.Lock()
	if sh.m == nil {
		sh.m = map[K]V{}
	}
	sh.m[k] = v
	sh.Unlock()
}

func (d *decoder) unmarshal(t Type, b []byte) (*decoded, error) {
	// What a decoded message holds is dropped once read: a client that kept its last
	// RouteConfiguration (every Service's routes) would hold megabytes, and with every
	// client decoding (FullDecode) a fleet of them would not fit in memory.
	defer d.reset()
	r := &decoded{}
	switch t {
	case CDS:
		if err := proto.Unmarshal(b, &d.cluster); err != nil {
			return nil, fmt.Errorf("decode cluster: %w", err)
		}
		r.name = d.cluster.GetName()
		if d.cluster.GetType() == clusterv3.Cluster_EDS {
			r.ref = d.cluster.GetEdsClusterConfig().GetServiceName()
			if r.ref == "" {
				r.ref = r.name
			}
		}
		r.secrets = xdsclient.ClusterSecrets(&d.cluster)
	case EDS:
		if err := proto.Unmarshal(b, &d.cla); err != nil {
			return nil, fmt.Errorf("decode cluster load assignment: %w", err)
		}
		r.name = d.cla.GetClusterName()
	case LDS:
		if err := proto.Unmarshal(b, &d.listener); err != nil {
			return nil, fmt.Errorf("decode listener: %w", err)
		}
		r.name = d.listener.GetName()
		r.secrets = xdsclient.ListenerSecrets(&d.listener)
		// The RDS names and whether scopes come from SRDS, read as the protocol
		// state reads them.
		r.refs, r.scoped = xdsclient.ListenerRoutes(&d.listener)
	case SRDS:
		if err := proto.Unmarshal(b, &d.scope); err != nil {
			return nil, fmt.Errorf("decode scoped route configuration: %w", err)
		}
		r.name = d.scope.GetName()
		if n := d.scope.GetRouteConfigurationName(); n != "" {
			r.refs = []string{n}
		}
	case RDS:
		if err := proto.Unmarshal(b, &d.route); err != nil {
			return nil, fmt.Errorf("decode route configuration: %w", err)
		}
		r.name = d.route.GetName()
	case SDS:
		if err := proto.Unmarshal(b, &d.secret); err != nil {
			return nil, fmt.Errorf("decode secret: %w", err)
		}
		r.name = d.secret.GetName()
	}
	if r.name == "" {
		return nil, fmt.Errorf("%s resource without a name", t)
	}
	return r, nil
}
