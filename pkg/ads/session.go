package ads

import (
	"slices"
	"strconv"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/bearkong/bearkong/pkg/resource"
)

// Kind is what a DiscoveryRequest means for the stream's state of its type.
type Kind int

const (
	// Initial is a request with an empty response_nonce: the first request for a type
	// on a stream, including after a reconnect. It is answered with the full state.
	Initial Kind = iota
	// ACK accepts the latest response of its type.
	ACK
	// NACK rejects the latest response of its type: error_detail is set, and
	// version_info is the last version the proxy accepted.
	NACK
	// Stale carries a nonce that is not the latest one sent for its type on this stream.
	// The proxy has not seen our latest response yet; the request is ignored.
	Stale
)

func (k Kind) String() string {
	switch k {
	case Initial:
		return "initial"
	case ACK:
		return "ack"
	case NACK:
		return "nack"
	case Stale:
		return "stale"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Classify decides what a request means, given the last nonce sent for its type on the
// stream. It is the one place where ACK, NACK and stale are told apart.
//
// See https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-and-nack-semantics
// and #resource-updates (the nonce rules).
func Classify(lastNonce string, req *discoveryv3.DiscoveryRequest) Kind {
	switch {
	case req.GetResponseNonce() == "":
		return Initial
	case req.GetResponseNonce() != lastNonce:
		return Stale
	case req.GetErrorDetail() != nil:
		return NACK
	default:
		return ACK
	}
}

// Status summarizes a type's state on a stream for /debug/streams.
type Status string

const (
	// NotSent: nothing of this type has been sent on the stream yet.
	NotSent Status = "NOT_SENT"
	// Synced: the proxy ACKed the latest response.
	Synced Status = "SYNCED"
	// StaleStatus: the latest response is not ACKed yet.
	StaleStatus Status = "STALE"
	// Nacked: the proxy rejected the latest response; it runs on its last accepted version.
	Nacked Status = "NACKED"
)

// Nack records a rejected response.
type Nack struct {
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// typeState is one stream's state for one type. It is owned by the stream's loop and
// needs no lock.
type typeState struct {
	subscribed bool
	// names is the proxy's current subscription, sorted (EDS, RDS only; CDS and LDS are
	// always wildcard). It is never modified in place, so debug views may share it.
	names []string
	// sentNames and sentView are the subscription and the content as of the last
	// reconcile: for every name in sentNames, the proxy has been sent sentView's
	// resource of that name (when it had one).
	sentNames []string
	sentView  resource.View
	// needFull asks the next reconcile to send every subscribed resource, changed or not.
	needFull bool

	nonce         string // latest nonce sent
	version       string // version_info of the latest response
	sentAt        time.Time
	pushChangedAt time.Time // when the change behind the latest response was seen; zero if not a push
	status        Status

	ackedVersion string
	ackedAt      time.Time

	pushes, acks, nacks, stale uint64
	lastNack                   *Nack
}

// session is the protocol state of one ADS stream, free of gRPC so that it can be tested
// request by request. The stream loop feeds it requests and configs and sends what it
// returns, in order.
type session struct {
	nonce uint64
	cur   *resource.Proxy
	// curChangedAt is when the Kubernetes change behind cur was observed.
	curChangedAt time.Time
	types        [resource.NumTypes]typeState
	now          func() time.Time
	metrics      *Metrics
}

func newSession(m *Metrics, now func() time.Time) *session {
	if now == nil {
		now = time.Now
	}
	s := &session{now: now, metrics: m}
	for i := range s.types {
		s.types[i].status = NotSent
	}
	return s
}

// outcome is what a request did, for logging.
type outcome struct {
	typ  resource.Type
	kind Kind
}

// onRequest applies one request and returns the responses to send, in order.
func (s *session) onRequest(t resource.Type, req *discoveryv3.DiscoveryRequest) (outcome, []*discoveryv3.DiscoveryResponse) {
	ts := &s.types[t]
	kind := Classify(ts.nonce, req)
	out := outcome{typ: t, kind: kind}
	switch kind {
	case Stale:
		// The proxy will repeat its subscription with its next request; acting on an
		// old one could undo a newer one.
		ts.stale++
		s.metrics.stale(t)
		return out, nil
	case NACK:
		ts.nacks++
		ts.status = Nacked
		ts.lastNack = &Nack{Version: ts.version, Nonce: ts.nonce, Message: req.GetErrorDetail().GetMessage(), At: s.now()}
		s.metrics.nack(t)
		// Do not resend the same content: the proxy would reject it again. The next
		// change of content is sent as usual, since sentView now holds what was rejected.
	case ACK:
		ts.acks++
		ts.status = Synced
		ts.ackedVersion = req.GetVersionInfo()
		ts.ackedAt = s.now()
		s.metrics.ack(t)
		if !ts.pushChangedAt.IsZero() {
			s.metrics.converged(t, ts.ackedAt.Sub(ts.pushChangedAt))
			ts.pushChangedAt = time.Time{}
		}
	case Initial:
		// A first request, or a reconnect: answer with the full current state whatever
		// version the proxy says it has.
		ts.subscribed = true
		ts.needFull = true
		if v := req.GetVersionInfo(); v != "" && ts.ackedVersion == "" {
			ts.ackedVersion = v
		}
	}
	if !t.Wildcard() {
		// Envoy repeats its whole subscription on every request, ACKs included; it
		// rarely changes, so compare before normalizing.
		if names := req.GetResourceNames(); !slices.Equal(names, ts.names) {
			if names = normalizeNames(names); !slices.Equal(names, ts.names) {
				ts.names = s.canonicalNames(t, names)
			}
		}
		// An empty list unsubscribes: nothing is sent until names come back.
		ts.subscribed = len(ts.names) > 0
	}
	return out, s.reconcile()
}

// canonicalNames returns names (sorted, unique) in a form that costs the session no
// memory of its own where possible: a set's own name list when the subscription is
// exactly that set (the common case: EDS for every cluster), else a copy whose strings
// are the resources' names rather than the request's.
func (s *session) canonicalNames(t resource.Type, names []string) []string {
	if s.cur == nil || len(names) == 0 {
		return names
	}
	v := s.cur.Views[t]
	for _, set := range v {
		if slices.Equal(names, set.Names()) {
			return set.Names()
		}
	}
	for i, n := range names {
		if r, ok := v.Get(n); ok {
			names[i] = r.Name
		}
	}
	return names
}

// onConfig switches the session to a new config and returns the responses that bring the
// proxy up to date: only the types whose content changed for this proxy.
func (s *session) onConfig(p *resource.Proxy, changedAt time.Time) []*discoveryv3.DiscoveryResponse {
	s.cur = p
	s.curChangedAt = changedAt
	return s.reconcile()
}

// reconcile sends, in CDS, EDS, LDS, RDS order, whatever the proxy subscribes to and has
// not been sent yet. It is idempotent: with nothing new, it returns nothing.
func (s *session) reconcile() []*discoveryv3.DiscoveryResponse {
	if s.cur == nil {
		return nil // no config yet: the requests are remembered and answered later
	}
	var out []*discoveryv3.DiscoveryResponse
	cdsSent := false
	for _, t := range resource.Types {
		ts := &s.types[t]
		if !ts.subscribed {
			continue
		}
		if t == resource.Endpoint && cdsSent {
			// After a CDS update Envoy re-initializes the changed clusters and keeps
			// them warming until it gets their endpoints again, changed or not.
			ts.needFull = true
		}
		var resp *discoveryv3.DiscoveryResponse
		if t.Wildcard() {
			resp = s.reconcileWildcard(t, ts)
		} else {
			resp = s.reconcileNamed(t, ts)
		}
		if resp != nil {
			out = append(out, resp)
			if t == resource.Cluster {
				cdsSent = true
			}
		}
	}
	return out
}

func (s *session) reconcileWildcard(t resource.Type, ts *typeState) *discoveryv3.DiscoveryResponse {
	v := s.cur.Views[t]
	version := v.Version()
	if !ts.needFull && version == ts.version {
		return nil
	}
	ts.needFull = false
	ts.sentView = v
	return s.respond(t, ts, version, v.All())
}

func (s *session) reconcileNamed(t resource.Type, ts *typeState) *discoveryv3.DiscoveryResponse {
	v := s.cur.Views[t]
	version := v.Version()
	full := ts.needFull
	sameNames := sameSlice(ts.names, ts.sentNames)
	if !full && sameNames && ts.sentView != nil && version == ts.sentView.Version() {
		return nil
	}
	var send []*resource.Resource
	switch {
	case !full && sameNames && ts.sentView != nil:
		// Same subscription, new content: only what changed since sentView can need
		// sending. The view diff is computed once per pair of sets and shared by every
		// proxy, so this costs the size of the change, not of the subscription.
		if changed, ok := v.Changed(ts.sentView); ok {
			for _, n := range changed {
				if _, subscribed := slices.BinarySearch(ts.names, n); !subscribed {
					continue
				}
				if r, ok := v.Get(n); ok {
					send = append(send, r)
				}
			}
			return s.finishNamed(t, ts, v, version, send)
		}
	case full && len(v) == 1 && sameSlice(ts.names, v[0].Names()):
		// Everything, and the subscription is exactly the set: its shared list.
		return s.finishNamed(t, ts, v, version, v[0].All())
	}
	for _, n := range ts.names {
		r, ok := v.Get(n)
		if !ok {
			continue // remembered; sent when it appears
		}
		if !full {
			if _, known := slices.BinarySearch(ts.sentNames, n); known {
				if old, ok := ts.sentView.Get(n); ok && (old == r || old.Hash == r.Hash) {
					continue
				}
			}
		}
		send = append(send, r)
	}
	return s.finishNamed(t, ts, v, version, send)
}

// finishNamed records that the proxy now has v for its subscription and answers with
// send, if anything.
func (s *session) finishNamed(t resource.Type, ts *typeState, v resource.View, version string, send []*resource.Resource) *discoveryv3.DiscoveryResponse {
	ts.needFull = false
	ts.sentNames = ts.names
	ts.sentView = v
	if len(send) == 0 {
		return nil
	}
	return s.respond(t, ts, version, send)
}

func (s *session) respond(t resource.Type, ts *typeState, version string, rs []*resource.Resource) *discoveryv3.DiscoveryResponse {
	s.nonce++
	ts.nonce = strconv.FormatUint(s.nonce, 10)
	// A push is a new version sent to a proxy that had one: the convergence clock runs
	// from the Kubernetes change to its ACK. Answers to first requests do not count.
	if ts.version != "" && ts.version != version && !s.curChangedAt.IsZero() {
		ts.pushChangedAt = s.curChangedAt
	} else {
		ts.pushChangedAt = time.Time{}
	}
	ts.version = version
	ts.sentAt = s.now()
	ts.status = StaleStatus
	ts.pushes++
	resp := &discoveryv3.DiscoveryResponse{
		VersionInfo: version,
		TypeUrl:     t.URL(),
		Nonce:       ts.nonce,
		Resources:   make([]*anypb.Any, 0, len(rs)),
	}
	size := 0
	for _, r := range rs {
		resp.Resources = append(resp.Resources, r.Any)
		size += len(r.Any.Value)
	}
	s.metrics.push(t, len(rs), size)
	return resp
}

// normalizeNames sorts and dedupes a subscription. "*" alone, or nothing, means no
// names for EDS and RDS, which are never wildcard in bearkong's mesh.
func normalizeNames(in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := slices.Clone(in)
	slices.Sort(out)
	out = slices.Compact(out)
	if i, found := slices.BinarySearch(out, "*"); found {
		out = slices.Delete(out, i, i+1)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// sameSlice reports whether a and b are the same slice (not just equal): subscriptions are
// replaced, never edited, so identity means "unchanged".
func sameSlice(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
