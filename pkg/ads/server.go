// Package ads is bearkong's hand-written state-of-the-world Aggregated Discovery Service.
//
// It knows nothing of Kubernetes or of the mesh: it serves resources (type, name,
// serialized bytes, content hash) that a Config resolves for each proxy's node, and it
// tracks, per stream and per type, the version and nonce sent, the ACKs and the NACKs.
//
// Each stream has one receive goroutine and one loop. The loop owns the stream's protocol
// state (a session), so that state needs no lock. A new Config only wakes the loops; each
// loop resolves its proxy's resources and sends the types whose content changed for that
// proxy, make before break: what is added or changed in CDS, EDS, LDS, RDS, SDS order,
// and clusters that go away last, after the routes that named them. A slow proxy delays only
// its own stream.
//
// Protocol: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol
package ads

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/pkg/resource"
)

// Config is what the server serves: a way to resolve any proxy's resources. A Config is
// immutable; the server swaps whole Configs.
//
// An EDS cluster's ClusterLoadAssignment must have the cluster's name (its
// eds_cluster_config.service_name left empty): after a CDS push, the server resends the
// assignments of the clusters that were added or changed by that name, since Envoy keeps
// such clusters warming until a fresh one arrives.
type Config struct {
	// Resolve returns the resources of the proxy that identifies itself with node. It is
	// called from many stream loops at once and must be safe for concurrent use.
	Resolve func(node *corev3.Node) (*resource.Proxy, error)
	// ChangedAt is when the change that produced this Config was first observed; it
	// starts the convergence clock. Zero means unknown.
	ChangedAt time.Time
}

// Options configure a Server.
type Options struct {
	Logger  *slog.Logger
	Metrics *Metrics // may be nil
	// Observe, when set, is told of every ACK and NACK, from the stream loops: it must
	// be safe for concurrent use and must not block (hand the report to a goroutine).
	// It is how the layer above learns which config the proxies reject; pkg/ads itself
	// only records NACKs.
	Observe func(Report)
	// Authenticate, when set, vets the node of a stream's first request before anything
	// is resolved or sent. The node it returns (which may carry metadata that only the
	// authenticator vouches for) is the one the stream uses from then on: to resolve, in
	// logs and in /debug/streams. A non-nil error ends the stream with the error's gRPC
	// status (Unauthenticated when it carries none) and nothing is sent. ctx is the
	// stream's: it carries the peer and the request metadata. It is called from many
	// streams at once and must be safe for concurrent use.
	Authenticate func(ctx context.Context, node *corev3.Node) (*corev3.Node, error)
	// Limits bound what one client can make the server hold, log or do; zero fields take
	// their defaults. Pass the same Limits to ServerOptionsWith.
	Limits Limits
	// SummaryInterval is how often, at most, the INFO summary of streams opened, closed
	// and refused is logged (only when something happened). Zero means a minute.
	SummaryInterval time.Duration
}

// Report is one ACK or NACK, for Options.Observe.
type Report struct {
	Kind Kind // ACK or NACK
	Node *corev3.Node
	Type resource.Type
	// Version is the version_info of the response acknowledged or rejected.
	Version string
	// AckedVersion is the last version the proxy accepted: Version for an ACK, the
	// request's version_info for a NACK ("" if it never accepted one).
	AckedVersion string
	// Resources are the names and content hashes of the resources in the rejected
	// response (NACK only).
	Resources []ResourceRef
	// Message is Envoy's error_detail (NACK only).
	Message string
}

// ResourceRef names one resource of a response and its content.
type ResourceRef struct {
	Name, Hash string
}

// Server implements the ADS gRPC service.
type Server struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer

	log     *slog.Logger
	metrics *Metrics
	observe func(Report)
	authn   func(context.Context, *corev3.Node) (*corev3.Node, error)
	config  atomic.Pointer[Config]
	nextID  atomic.Uint64
	limits  Limits
	summary *summary

	mu      sync.Mutex
	streams map[uint64]*stream
	nodes   map[string]int // streams open per node id, for Limits.MaxStreamsPerNode
}

// NewServer returns a Server with no config: streams are accepted, and their requests are
// answered once the first Config arrives.
func NewServer(o Options) *Server {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{log: log, metrics: o.Metrics, observe: o.Observe, authn: o.Authenticate, limits: o.Limits.withDefaults(),
		streams: map[uint64]*stream{}, nodes: map[string]int{}}
	s.summary = newSummary(log, o.SummaryInterval, func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.streams)
	})
	return s
}

// Register adds the ADS service to g.
func (s *Server) Register(g *grpc.Server) {
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, s)
}

// SetConfig makes c the config and wakes every stream. It never blocks on a stream.
func (s *Server) SetConfig(c *Config) {
	s.config.Store(c)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.streams {
		select {
		case st.wake <- struct{}{}:
		default: // already woken; the loop reads the newest config anyway
		}
	}
}

// HasConfig reports whether a Config has been set.
func (s *Server) HasConfig() bool { return s.config.Load() != nil }

type stream struct {
	id          uint64
	protocol    string
	peer        string
	connectedAt time.Time
	wake        chan struct{}

	// mu guards what /debug/streams reads of the stream: the fields below, and the
	// loop's node and session state, which the loop changes only while holding it.
	//
	// Why not a snapshot per change: the loop used to build a StreamInfo after every
	// request and response, about 1 KB each time, though /debug/streams and the status
	// metrics read it every few seconds at most. That was 8 % of the server's CPU for a
	// new Service at N=5000 on delta. Now the loop only marks the stream dirty, and a
	// reader builds the snapshot when it finds it so.
	mu    sync.Mutex
	loop  *loop       // nil for streams made by tests
	info  *StreamInfo // the last snapshot built
	dirty bool        // the loop changed something since info was built
}

// request is what the shared stream loop reads of a DiscoveryRequest or a
// DeltaDiscoveryRequest.
type request interface {
	GetNode() *corev3.Node
	GetTypeUrl() string
	GetResponseNonce() string
	GetErrorDetail() *rpcstatus.Status
}

// response is what the shared stream loop reads of a DiscoveryResponse or a
// DeltaDiscoveryResponse.
type response interface {
	GetTypeUrl() string
	GetNonce() string
}

// protocol is what one ADS variant, state of the world or delta, adds to the shared
// stream loop: its session, which decides what to send and keeps the per-type state, and
// the gRPC stream it sends on. Everything else (limits, node checks, authentication,
// config wakeups, metrics, logs, /debug/streams, Options.Observe) is the loop's, the same
// for both.
type protocol interface {
	// name is StreamInfo.Protocol: "sotw" or "delta".
	name() string
	// names counts the resource names of a request, for Limits.MaxResourceNames.
	names(req request) int
	onRequest(t resource.Type, req request) (outcome, []response)
	onConfig(p *resource.Proxy, changedAt time.Time) []response
	// send hands one response to gRPC; it may block while the client does not read.
	send(r response) error
	// sent is told of each response once sent, with the config it was built from.
	sent(r response, p *resource.Proxy)
	// report fills in r, an ACK or NACK of type t that req carried, the response it
	// answers: its version and, for a NACK, what it held.
	report(r *Report, req request, out outcome)
	// describe returns the version and the number of resources of r, for logs.
	describe(r response) (version string, resources int)
	// stats and subscribed are the state of type t for /debug/streams.
	stats(t resource.Type) *typeStats
	subscribed(t resource.Type) []string
}

// StreamAggregatedResources serves one proxy's state-of-the-world ADS stream.
func (s *Server) StreamAggregatedResources(gs discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	p := &sotw{gs: gs, sess: newSession(s.metrics, nil), keep: s.observe != nil}
	r := &sotwRequest{recent: &recentNames{}}
	return s.serve(gs.Context(), p, func() (request, error) {
		// Not gs.Recv: the codec finds a request's names in the stream's recentNames.
		r.DiscoveryRequest = &discoveryv3.DiscoveryRequest{}
		if err := gs.RecvMsg(r); err != nil {
			return nil, err
		}
		return r.DiscoveryRequest, nil
	})
}

// serve runs one stream of either protocol until it ends.
func (s *Server) serve(ctx context.Context, p protocol, recv func() (request, error)) error {
	st := &stream{id: s.nextID.Add(1), protocol: p.name(), connectedAt: time.Now(), wake: make(chan struct{}, 1)}
	if pr, ok := peer.FromContext(ctx); ok && pr.Addr != nil {
		st.peer = pr.Addr.String()
	}
	l := &loop{ctx: ctx, srv: s, st: st, proto: p, log: s.log.With("stream", st.id)}
	st.loop = l
	s.mu.Lock()
	full := len(s.streams) >= s.limits.MaxStreams
	if !full {
		s.streams[st.id] = st
	}
	s.mu.Unlock()
	if full {
		return l.limit(ReasonTooManyStreams, status.Errorf(codes.ResourceExhausted,
			"bearkong serves at most %d xDS streams at once (--xds-max-streams); retry later", s.limits.MaxStreams))
	}
	s.metrics.streamOpened(st.protocol)
	s.summary.open()
	defer func() {
		s.mu.Lock()
		delete(s.streams, st.id)
		if l.nodeCounted {
			if s.nodes[l.nodeID]--; s.nodes[l.nodeID] <= 0 {
				delete(s.nodes, l.nodeID)
			}
		}
		s.mu.Unlock()
		s.metrics.streamClosed(st.protocol)
		s.summary.close()
	}()

	reqs := make(chan request)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()

	err := l.run(ctx, reqs, recvErr)
	// Open and close are DEBUG: a fleet that reconnects would otherwise write two lines
	// per proxy; the summary counts them at INFO.
	if err != nil {
		l.log.Debug("stream closed", "err", err)
	} else {
		l.log.Debug("stream closed")
	}
	return err
}

// loop is one stream's send loop. It owns the protocol's session.
type loop struct {
	ctx    context.Context
	srv    *Server
	st     *stream
	proto  protocol
	log    *slog.Logger
	node   *corev3.Node
	nodeID string
	// nodeCounted: the stream counts in srv.nodes under nodeID.
	nodeCounted bool
	// sentNode is the node as the client sent it, before Options.Authenticate: a later
	// request that carries a node must carry this one.
	sentNode *corev3.Node
	config   *Config // the config the session's proxy was resolved from
	// sendDone and sendTimer are sendOne's, made on the first send.
	sendDone  chan error
	sendTimer *time.Timer
	serves    []string
	proxy     *resource.Proxy // the resolved config
}

// sotw is the state-of-the-world protocol.
type sotw struct {
	gs   discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer
	sess *session
	// keep: Options.Observe is set, so last keeps the latest response of each type not
	// yet answered, with the view it was built from: what a NACK rejected.
	keep bool
	last [resource.NumTypes]lastResponse
}

type lastResponse struct {
	resp *discoveryv3.DiscoveryResponse
	view resource.View
}

func (p *sotw) name() string { return "sotw" }

func (p *sotw) names(req request) int {
	return len(req.(*discoveryv3.DiscoveryRequest).GetResourceNames())
}

func (p *sotw) onRequest(t resource.Type, req request) (outcome, []response) {
	out, resps := p.sess.onRequest(t, req.(*discoveryv3.DiscoveryRequest))
	return out, responses(resps)
}

func (p *sotw) onConfig(px *resource.Proxy, changedAt time.Time) []response {
	return responses(p.sess.onConfig(px, changedAt))
}

func responses[R response](rs []R) []response {
	if len(rs) == 0 {
		return nil
	}
	out := make([]response, len(rs))
	for i, r := range rs {
		out[i] = r
	}
	return out
}

func (p *sotw) send(r response) error { return p.gs.Send(r.(*discoveryv3.DiscoveryResponse)) }

func (p *sotw) sent(r response, px *resource.Proxy) {
	if t, ok := resource.TypeFromURL(r.GetTypeUrl()); ok && px != nil && p.keep {
		p.last[t] = lastResponse{resp: r.(*discoveryv3.DiscoveryResponse), view: px.Views[t]}
	}
}

func (p *sotw) report(r *Report, req request, out outcome) {
	last := p.last[r.Type]
	// The response is answered: let it go, so that a steady stream holds no response.
	p.last[r.Type] = lastResponse{}
	r.Version, r.AckedVersion = last.resp.GetVersionInfo(), req.(*discoveryv3.DiscoveryRequest).GetVersionInfo()
	if r.Kind != NACK {
		return
	}
	// The response holds the resources' Anys; the view it was built from names them.
	byAny := make(map[*anypb.Any]*resource.Resource, last.view.Len())
	for _, res := range last.view.All() {
		byAny[res.Any] = res
	}
	for _, a := range last.resp.GetResources() {
		if res, ok := byAny[a]; ok {
			r.Resources = append(r.Resources, ResourceRef{Name: res.Name, Hash: res.Hash})
		}
	}
}

func (p *sotw) describe(r response) (string, int) {
	d := r.(*discoveryv3.DiscoveryResponse)
	return d.GetVersionInfo(), len(d.GetResources())
}

func (p *sotw) stats(t resource.Type) *typeStats { return &p.sess.types[t].typeStats }

var wildcardNames = []string{"*"}

func (p *sotw) subscribed(t resource.Type) []string { return subscriptionNames(p.sess.types[t].sub) }

// subscriptionNames lists a subscription for /debug/streams: "*" first for a wildcard,
// then the names.
func subscriptionNames(sub subscription) []string {
	switch {
	case sub.wildcard && len(sub.names) == 0:
		return wildcardNames
	case sub.wildcard:
		return append(slices.Clone(wildcardNames), sub.names...)
	}
	return sub.names
}

func (l *loop) run(ctx context.Context, reqs <-chan request, recvErr <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
				return nil
			}
			return err
		case req := <-reqs:
			if err := l.onRequest(req); err != nil {
				return err
			}
		case <-l.st.wake:
			if err := l.onWake(); err != nil {
				return err
			}
		}
	}
}

func (l *loop) onRequest(req request) error {
	if n := l.proto.names(req); n > l.srv.limits.MaxResourceNames {
		// InvalidArgument rather than ResourceExhausted: the request is too large
		// whatever the server's load, and retrying it cannot succeed. Checked first,
		// before a first request's node is resolved.
		return l.limit(ReasonTooManyNames, status.Errorf(codes.InvalidArgument,
			"a DiscoveryRequest names %d resources; bearkong accepts at most %d (--xds-max-resource-names)", n, l.srv.limits.MaxResourceNames))
	}
	if l.node == nil {
		// The node comes on the first request only (set_node_on_first_message_only).
		if req.GetNode() == nil || req.GetNode().GetId() == "" {
			return status.Error(codes.InvalidArgument, "the first DiscoveryRequest on a stream must carry the node with its id")
		}
		if err := l.checkNode(req.GetNode()); err != nil {
			return err
		}
		node, err := l.authenticate(req.GetNode())
		if err != nil {
			return err
		}
		l.st.mu.Lock()
		l.sentNode = req.GetNode()
		l.node = node
		l.nodeID = l.node.GetId()
		l.st.dirty = true
		l.st.mu.Unlock()
		l.log = l.log.With("node", prefix(l.nodeID))
		if err := l.countNode(); err != nil {
			return err
		}
		l.log.Debug("stream opened", "peer", l.st.peer, "protocol", l.proto.name())
		// Resolve the current config before answering, so the first answer is complete.
		if err := l.refresh(); err != nil {
			return err
		}
	} else if n := req.GetNode(); n != nil && n != l.sentNode && !proto.Equal(n, l.sentNode) {
		// The stream's identity is what its first request proved; a client that sends
		// another node later is asking for someone else's config on credentials that
		// were checked for the first one. That is a matter of permission, not of a
		// malformed request (the node itself may be well formed), hence PermissionDenied.
		return l.refuse(ReasonNodeChanged, status.Errorf(codes.PermissionDenied,
			"the node of a stream cannot change: the stream was opened as %q, a later request says %q", prefix(l.sentNode.GetId()), prefix(n.GetId())))
	}
	var cut bool
	if d := req.GetErrorDetail(); d != nil {
		// Cut before anything keeps, logs or reports it: a client may send MiBs.
		d.Message, cut = truncate(d.Message, l.srv.limits.MaxNackDetailBytes)
	}
	t, ok := resource.TypeFromURL(req.GetTypeUrl())
	if !ok {
		// Envoy may ask for types bearkong does not serve (secrets, runtime). Leaving
		// them unanswered is what the protocol allows for unknown types.
		l.log.Debug("ignoring request for an unserved type", "type_url", req.GetTypeUrl())
		return nil
	}
	l.st.mu.Lock()
	out, resps := l.proto.onRequest(t, req)
	l.st.dirty = true
	l.st.mu.Unlock()
	if cut && !out.repeat {
		l.srv.metrics.nackTruncated()
	}
	switch {
	case out.kind == NACK && out.repeat:
		l.log.Debug("proxy rejected the same response again", "type", t, "nonce", req.GetResponseNonce())
	case out.kind == NACK:
		l.log.Warn("proxy rejected config", "type", t, "version", l.proto.stats(t).version,
			"nonce", req.GetResponseNonce(), "error", req.GetErrorDetail().GetMessage())
		l.report(NACK, t, req, out)
	case out.kind == Stale:
		l.log.Debug("stale request", "type", t, "nonce", req.GetResponseNonce())
	case out.kind == ACK:
		l.log.Debug("ack", "type", t, "version", l.proto.stats(t).ackedVersion, "nonce", req.GetResponseNonce())
		l.report(ACK, t, req, out)
	}
	return l.send(resps)
}

// Reasons of bearkong_xds_auth_failures_total.
const (
	ReasonUnauthenticated  = "unauthenticated"   // no or bad credentials
	ReasonPermissionDenied = "permission_denied" // credentials of someone else than the node
	ReasonNodeChanged      = "node_changed"      // a later request carried another node
	ReasonOther            = "other"             // any other status from Authenticate
)

// authenticate runs Options.Authenticate on the first request's node.
func (l *loop) authenticate(node *corev3.Node) (*corev3.Node, error) {
	if l.srv.authn == nil {
		return node, nil
	}
	out, err := l.srv.authn(l.ctx, node)
	if err == nil && out.GetId() == "" {
		err = status.Error(codes.Internal, "the authenticator returned no node")
	}
	if err != nil {
		st, ok := status.FromError(err)
		if !ok {
			// An authenticator that cannot say why it refuses still refuses: without a
			// status of its own, the proxy is not authenticated.
			st = status.New(codes.Unauthenticated, err.Error())
		}
		reason := ReasonOther
		switch st.Code() {
		case codes.Unauthenticated:
			reason = ReasonUnauthenticated
		case codes.PermissionDenied:
			reason = ReasonPermissionDenied
		}
		l.log = l.log.With("node", prefix(node.GetId()))
		return nil, l.refuse(reason, st.Err())
	}
	return out, nil
}

// refuse counts and logs a stream refused for its identity. The error names what was
// wrong, never the credentials.
func (l *loop) refuse(reason string, err error) error {
	l.srv.metrics.authFailure(reason)
	l.logRefusal(reason, err)
	return err
}

// limit counts and logs a stream refused or cut by one of the Limits.
func (l *loop) limit(reason string, err error) error {
	l.srv.metrics.refused(reason)
	l.logRefusal(reason, err)
	return err
}

// logRefusal logs the first refusal of each reason in a summary interval at WARN and the
// others at DEBUG; the summary counts them all. A client refused in a loop costs a few
// lines a minute, not one per attempt.
func (l *loop) logRefusal(reason string, err error) {
	level := slog.LevelDebug
	if l.srv.summary.refuse(reason) {
		level = slog.LevelWarn
	}
	l.log.Log(l.ctx, level, "xds stream refused", "peer", l.st.peer, "reason", reason, "err", err)
}

// checkNode refuses a node larger than the limits, before anything keeps or logs it.
func (l *loop) checkNode(n *corev3.Node) error {
	lim := l.srv.limits
	if len(n.GetId()) > lim.MaxNodeIDBytes {
		l.log = l.log.With("node", prefix(n.GetId()))
		return l.limit(ReasonNodeIDTooLong, status.Errorf(codes.InvalidArgument,
			"the node id is %d bytes; bearkong accepts at most %d (--xds-max-node-id-bytes)", len(n.GetId()), lim.MaxNodeIDBytes))
	}
	if size := proto.Size(n.GetMetadata()); size > lim.MaxNodeMetadataBytes {
		l.log = l.log.With("node", prefix(n.GetId()))
		return l.limit(ReasonNodeMetadataTooLarge, status.Errorf(codes.InvalidArgument,
			"the node metadata is %d bytes serialized; bearkong accepts at most %d (--xds-max-node-metadata-bytes)", size, lim.MaxNodeMetadataBytes))
	}
	return nil
}

// countNode counts the stream under its node id, or refuses it when the node has as many
// streams as Limits.MaxStreamsPerNode: the streams already open, honest or not, keep
// running.
func (l *loop) countNode() error {
	s := l.srv
	s.mu.Lock()
	full := s.nodes[l.nodeID] >= s.limits.MaxStreamsPerNode
	if !full {
		s.nodes[l.nodeID]++
		l.nodeCounted = true
	}
	s.mu.Unlock()
	if full {
		return l.limit(ReasonTooManyNodeStreams, status.Errorf(codes.ResourceExhausted,
			"node %q already has %d xDS streams open, the most bearkong allows (--xds-max-streams-per-node); retry once one closes", prefix(l.nodeID), s.limits.MaxStreamsPerNode))
	}
	return nil
}

// report tells Options.Observe about an ACK or a NACK of a response of type t.
func (l *loop) report(kind Kind, t resource.Type, req request, out outcome) {
	if l.srv.observe == nil {
		return
	}
	r := Report{Kind: kind, Node: l.node, Type: t}
	if kind == NACK {
		r.Message = req.GetErrorDetail().GetMessage()
	}
	l.proto.report(&r, req, out)
	l.srv.observe(r)
}

func (l *loop) onWake() error {
	if l.node == nil {
		return nil // nothing to resolve for yet; the first request resolves
	}
	return l.refresh()
}

// refresh resolves the proxy's resources from the newest config and sends what changed.
func (l *loop) refresh() error {
	c := l.srv.config.Load()
	if c == nil || c == l.config {
		return nil
	}
	p, err := c.Resolve(l.node)
	if err != nil {
		l.srv.metrics.resolveError()
		l.log.Error("cannot build config for proxy", "err", err)
		return status.Errorf(codes.InvalidArgument, "bearkong cannot build config for node %q: %v", l.nodeID, err)
	}
	l.st.mu.Lock()
	l.config = c
	l.serves = p.Serves
	l.proxy = p
	resps := l.proto.onConfig(p, c.ChangedAt)
	l.st.dirty = true
	l.st.mu.Unlock()
	return l.send(resps)
}

func (l *loop) send(resps []response) error {
	for _, r := range resps {
		if err := l.sendOne(r); err != nil {
			return err
		}
		l.st.mu.Lock()
		l.proto.sent(r, l.proxy)
		l.st.dirty = true
		l.st.mu.Unlock()
		if l.log.Enabled(l.ctx, slog.LevelDebug) {
			version, n := l.proto.describe(r)
			l.log.Debug("sent", "type", typeName(r.GetTypeUrl()), "version", version, "nonce", r.GetNonce(), "resources", n)
		}
	}
	return nil
}

// sendOne sends r within Limits.SendTimeout. gRPC's Send blocks while the client does
// not read (HTTP/2 flow control) and no context of the handler's unblocks it, so Send
// runs in a goroutine of its own while the loop waits for it or the deadline. On the
// deadline the handler returns DeadlineExceeded: gRPC then ends the stream, which
// cancels the transport stream and makes the blocked Send return, and the goroutine
// ends. Send is never called twice at once: the loop waits for each one.
func (l *loop) sendOne(r response) error {
	if l.sendDone == nil {
		// One channel and one timer per stream, not per response: a push sends a
		// response to every stream, and each was two allocations, 6 % of what a new
		// Service allocates at N=5000 on delta. The channel has room for the one Send
		// in flight: after a timeout the stream ends, and the blocked Send's result
		// lands in the channel that nothing reads any more.
		l.sendDone = make(chan error, 1)
		l.sendTimer = time.NewTimer(l.srv.limits.SendTimeout)
	} else {
		l.sendTimer.Reset(l.srv.limits.SendTimeout)
	}
	go func() { l.sendDone <- l.proto.send(r) }()
	select {
	case err := <-l.sendDone:
		l.sendTimer.Stop()
		return err
	case <-l.sendTimer.C:
		return l.limit(ReasonSendTimeout, status.Errorf(codes.DeadlineExceeded,
			"the proxy did not take a %s response within %s (--xds-send-timeout); reconnect", typeName(r.GetTypeUrl()), l.srv.limits.SendTimeout))
	}
}

func typeName(url string) string {
	if t, ok := resource.TypeFromURL(url); ok {
		return t.String()
	}
	return url
}

// Streams returns the state of every connected stream, sorted by id. With node set, only
// the streams of that node id.
func (s *Server) Streams(node string) []*StreamInfo {
	s.mu.Lock()
	streams := make([]*stream, 0, len(s.streams))
	for _, st := range s.streams {
		streams = append(streams, st)
	}
	s.mu.Unlock()
	// Each snapshot is built outside s.mu: new streams need not wait for thousands.
	out := make([]*StreamInfo, 0, len(streams))
	for _, st := range streams {
		if info := st.snapshot(node); info != nil {
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
