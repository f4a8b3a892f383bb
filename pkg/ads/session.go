package ads

import (
	"crypto/sha256"
	"encoding/hex"
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
	// The proxy has not seen our latest response yet; the request is ignored (in delta,
	// only its ACK or NACK is: its subscription change still applies).
	Stale
	// Update is a delta request, after the first of its type, that answers no response
	// (no response_nonce): it only changes the subscription.
	Update
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
	case Update:
		return "update"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Classify decides what a request means, given whether it is the stream's first request
// for its type and the last nonce sent for that type on the stream. It is the one place
// where ACK, NACK and stale are told apart.
//
// A first request is initial whatever nonce it carries: nonces do not survive a
// reconnect, and a client that kept one (gRPC's xDS client may) still has nothing of this
// stream. Istio and go-control-plane do the same.
//
// See https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#ack-and-nack-semantics
// and #resource-updates (the nonce rules).
func Classify(first bool, lastNonce string, req *discoveryv3.DiscoveryRequest) Kind {
	switch {
	case first || req.GetResponseNonce() == "":
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

// subscription is what a proxy asks for of one type on a stream, by the rules of
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#how-the-client-specifies-what-resources-to-return
type subscription struct {
	// wildcard asks for every resource of the type: with "*" (alone or next to names),
	// or, for LDS and CDS, in the legacy form: no request for the type on the stream has
	// named anything yet.
	wildcard bool
	// names are the names asked for explicitly, sorted and unique, without "*". The
	// slice is replaced, never modified in place, so debug views may share it.
	names []string
	// keep holds names' list in the index of live name lists when names is a shared
	// list (see setNames), so that the request decoder hands that very list to the
	// proxy's next requests. When names is replaced without setNames, keep may hold an
	// older list for a while: that costs nothing but the list.
	keep resource.Names
}

// setNames makes n the subscription's names, and keeps its list alive while the
// subscription holds it.
func (s *subscription) setNames(n resource.Names) {
	s.names, s.keep = n.List(), n
}

func (s subscription) empty() bool { return !s.wildcard && len(s.names) == 0 }

// has reports whether the subscription covers the named resource.
func (s subscription) has(name string) bool {
	if s.wildcard {
		return true
	}
	_, ok := slices.BinarySearch(s.names, name)
	return ok
}

// same reports whether s and o are the same subscription; names are compared by identity
// (see sameSlice), which is what an unchanged subscription keeps.
func (s subscription) same(o subscription) bool {
	return s.wildcard == o.wildcard && sameSlice(s.names, o.names)
}

// typeState is one stream's state for one type. It is owned by the stream's loop and
// needs no lock.
type typeState struct {
	// requested: a request for the type came on this stream. named: one of them named
	// resources, which ends legacy wildcard for good.
	requested, named bool
	sub              subscription
	// sentSub and sentView are the subscription and the content as of the last
	// reconcile: for every name sentSub covers, the proxy has been sent sentView's
	// resource of that name (when it had one). A nil sentView means nothing is known to
	// be held: the proxy unsubscribed, or nothing was sent yet. Names that leave the
	// subscription leave sentSub, so asking for them again gets them again.
	sentSub  subscription
	sentView resource.View
	// needFull asks the next reconcile to send every subscribed resource, changed or not.
	needFull bool
	// refresh (EDS) lists, sorted, the names to send at the next reconcile even if their
	// content did not change: the clusters that the CDS response just sent added or
	// changed, which Envoy keeps warming until their ClusterLoadAssignment comes. A
	// cluster's assignment is taken to have the cluster's name, as it does when the
	// cluster leaves eds_cluster_config.service_name empty (see Config).
	refresh []string

	typeStats
}

// typeStats is what /debug/streams and the metrics show of one type on one stream,
// whatever the protocol: the latest response, the latest ACK, the counts and the last
// NACK.
type typeStats struct {
	nonce         string // latest nonce sent
	version       string // version_info (delta: system_version_info) of the latest response
	sentAt        time.Time
	pushChangedAt time.Time // when the change behind the latest response was seen; zero if not a push
	status        Status

	ackedVersion string
	ackedAt      time.Time

	pushes, acks, nacks, stale uint64
	lastNack                   *Nack
}

// onAck records an ACK of a response of version, and the convergence of the push
// behind it when the ACK answers the latest response.
func (st *typeStats) onAck(m *Metrics, t resource.Type, version string, now time.Time, latest bool) {
	st.acks++
	st.ackedVersion = version
	st.ackedAt = now
	m.ack(t)
	if latest && !st.pushChangedAt.IsZero() {
		m.converged(t, now.Sub(st.pushChangedAt))
		st.pushChangedAt = time.Time{}
	}
}

// onNack records a NACK of the response of version and nonce.
func (st *typeStats) onNack(m *Metrics, t resource.Type, version, nonce, msg string, now time.Time) {
	st.nacks++
	st.status = Nacked
	st.lastNack = &Nack{Version: version, Nonce: nonce, Message: msg, At: now}
	m.nack(t)
}

// onStale counts a request whose nonce is not one the stream is waiting for.
func (st *typeStats) onStale(m *Metrics, t resource.Type) {
	st.stale++
	m.stale(t)
}

// onSend records a response of version with nonce, sent at now. A push is a new version
// sent to a proxy that had one: the convergence clock runs from the Kubernetes change
// (changedAt) to its ACK. Answers to first requests do not count.
func (st *typeStats) onSend(version, nonce string, changedAt, now time.Time) {
	if st.version != "" && st.version != version && !changedAt.IsZero() {
		st.pushChangedAt = changedAt
	} else {
		st.pushChangedAt = time.Time{}
	}
	st.nonce = nonce
	st.version = version
	st.sentAt = now
	st.status = StaleStatus
	st.pushes++
}

// forget drops what the proxy is known to hold of the type: it unsubscribed, and Envoy
// drops unsubscribed resources from its cache.
func (ts *typeState) forget() {
	ts.sentSub = subscription{}
	ts.sentView = nil
	ts.refresh = nil
}

// session is the protocol state of one ADS stream, free of gRPC so that it can be tested
// request by request. The stream loop feeds it requests and configs and sends what it
// returns, in order.
type session struct {
	sessionCore
	types [resource.NumTypes]typeState
}

// sessionCore is what the sessions of both protocols keep beside their per-type state.
type sessionCore struct {
	nonce uint64 // the stream's nonce counter
	cur   *resource.Proxy
	// curChangedAt is when the Kubernetes change behind cur was observed.
	curChangedAt time.Time
	now          func() time.Time
	metrics      *Metrics
}

func newSessionCore(m *Metrics, now func() time.Time) sessionCore {
	if now == nil {
		now = time.Now
	}
	return sessionCore{now: now, metrics: m}
}

func newSession(m *Metrics, now func() time.Time) *session {
	s := &session{sessionCore: newSessionCore(m, now)}
	for i := range s.types {
		s.types[i].status = NotSent
	}
	return s
}

// outcome is what a request did, for logging.
type outcome struct {
	typ  resource.Type
	kind Kind
	// repeat: a NACK of a response already NACKed, not counted again.
	repeat bool
	// answered is the delta response an ACK or NACK answers.
	answered *discoveryv3.DeltaDiscoveryResponse
}

// onRequest applies one request and returns the responses to send, in order.
func (s *session) onRequest(t resource.Type, req *discoveryv3.DiscoveryRequest) (outcome, []*discoveryv3.DiscoveryResponse) {
	ts := &s.types[t]
	kind := Classify(!ts.requested, ts.nonce, req)
	out := outcome{typ: t, kind: kind}
	switch kind {
	case Stale:
		// The proxy will repeat its subscription with its next request; acting on an
		// old one could undo a newer one.
		ts.onStale(s.metrics, t)
		return out, nil
	case NACK:
		if ts.lastNack != nil && ts.lastNack.Nonce == ts.nonce {
			// The same response rejected again (a client that repeats itself): it was
			// counted, stored and reported the first time.
			out.repeat = true
			break
		}
		ts.onNack(s.metrics, t, ts.version, ts.nonce, req.GetErrorDetail().GetMessage(), s.now())
		// Do not resend the same content: the proxy would reject it again. The next
		// change of content is sent as usual, since sentView now holds what was rejected.
	case ACK:
		ts.status = Synced
		ts.onAck(s.metrics, t, req.GetVersionInfo(), s.now(), true)
	case Initial:
		// A first request, or a reconnect: answer with the full current state whatever
		// version the proxy says it has.
		ts.requested = true
		ts.needFull = true
		if v := req.GetVersionInfo(); v != "" && ts.ackedVersion == "" {
			ts.ackedVersion = v
		}
	}
	s.subscribe(t, ts, req.GetResourceNames())
	return out, s.reconcile()
}

// subscribe applies the names of a request to the type's subscription
// (xds_protocol#how-the-client-specifies-what-resources-to-return).
func (s *session) subscribe(t resource.Type, ts *typeState, names []string) {
	if len(names) == 0 {
		// No names: legacy wildcard for LDS and CDS while no request has named anything;
		// otherwise, and for EDS and RDS always, it unsubscribes from everything.
		if ts.sub.wildcard != (t.Wildcard() && !ts.named) || len(ts.sub.names) > 0 {
			ts.sub = subscription{wildcard: t.Wildcard() && !ts.named}
		}
		return
	}
	ts.named = true
	// Envoy repeats its whole subscription on every request, ACKs included, and it
	// rarely changes: compare before normalizing. The codec hands over a set's own name
	// list when the request names exactly that set, in whatever order.
	if !ts.sub.wildcard && (sameSlice(names, ts.sub.names) || slices.Equal(names, ts.sub.names)) {
		return
	}
	sub := subscription{wildcard: slices.Contains(names, "*"), names: normalizeNames(names)}
	if sub.wildcard == ts.sub.wildcard && slices.Equal(sub.names, ts.sub.names) {
		return
	}
	// A form that costs the session no memory of its own where possible: a list shared
	// with the sets or with the other proxies that subscribe to the same names (EDS for
	// every cluster; RDS for every Service and the inbound route configuration).
	var v resource.View
	if s.cur != nil {
		v = s.cur.Views[t]
	}
	sub.setNames(resource.CanonicalNames(v, sub.names))
	ts.sub = sub
}

// onConfig switches the session to a new config and returns the responses that bring the
// proxy up to date: only the types whose content changed for this proxy.
func (s *session) onConfig(p *resource.Proxy, changedAt time.Time) []*discoveryv3.DiscoveryResponse {
	s.cur = p
	s.curChangedAt = changedAt
	return s.reconcile()
}

// reconcile sends whatever the proxy subscribes to and has not been sent yet, make before
// break (xds_protocol#eventual-consistency-considerations): clusters added or changed go
// first, then their endpoints, then listeners and routes, which may name the new
// clusters; clusters removed go last, once the routes no longer name them. When a push
// both adds and removes clusters, CDS goes twice: first with the removed clusters kept,
// last without them. It is idempotent: with nothing new, it returns nothing.
func (s *session) reconcile() []*discoveryv3.DiscoveryResponse {
	if s.cur == nil {
		return nil // no config yet: the requests are remembered and answered later
	}
	var out []*discoveryv3.DiscoveryResponse
	add := func(r *discoveryv3.DiscoveryResponse) {
		if r != nil {
			out = append(out, r)
		}
	}
	cds := &s.types[resource.Cluster]
	var final func() *discoveryv3.DiscoveryResponse
	if cds.requested && !cds.sub.empty() {
		final = s.reconcileClusters(cds, add)
	} else {
		cds.forget()
	}
	for _, t := range resource.Types[1:] {
		ts := &s.types[t]
		switch {
		case !ts.requested:
		case ts.sub.empty():
			ts.forget()
		case t.Wildcard():
			add(s.reconcileFull(t, ts))
		default:
			add(s.reconcileNamed(t, ts))
		}
	}
	if final != nil {
		add(final())
	}
	return out
}

// reconcileClusters brings CDS up to date. Added and changed clusters are sent at once
// (through add) and their names queued for EDS; the response that removes clusters is
// returned as a function, for the caller to build and send after the listeners and
// routes.
func (s *session) reconcileClusters(ts *typeState, add func(*discoveryv3.DiscoveryResponse)) (final func() *discoveryv3.DiscoveryResponse) {
	v := s.view(resource.Cluster)
	version := v.Version()
	if !ts.needFull && ts.sub.same(ts.sentSub) && ts.sentView != nil && version == ts.sentView.Version() {
		return nil
	}
	eds := &s.types[resource.Endpoint]
	if ts.needFull || ts.sentView == nil {
		// The proxy may hold nothing: every cluster warms, every assignment goes.
		eds.needFull = true
		add(s.reconcileFull(resource.Cluster, ts))
		return nil
	}
	changed := s.changedNames(ts, v)
	removed := removedNames(ts, v)
	eds.refresh = mergeNames(eds.refresh, changed)
	switch {
	case len(removed) == 0:
		add(s.reconcileFull(resource.Cluster, ts))
		return nil
	case len(changed) == 0:
		return func() *discoveryv3.DiscoveryResponse { return s.reconcileFull(resource.Cluster, ts) }
	}
	// Both: the new state plus the clusters that are going, now; the new state alone,
	// last.
	send := slices.Clone(subscribed(ts.sub, v))
	for _, n := range removed {
		r, _ := ts.sentView.Get(n)
		send = append(send, r)
	}
	add(s.respond(resource.Cluster, ts, keepVersion(version, send), send))
	return func() *discoveryv3.DiscoveryResponse { return s.reconcileFull(resource.Cluster, ts) }
}

// view returns the current config's view of t. A config without one has no resources
// of t: the view is then empty but not nil, since a nil sentView means that nothing was
// sent (a wildcard subscription would be answered again on every reconcile).
func (s *session) view(t resource.Type) resource.View {
	if v := s.cur.Views[t]; v != nil {
		return v
	}
	return resource.View{}
}

// changedNames lists, sorted, the resources of v in the subscription that the proxy does
// not hold as they are now: new, changed, or newly subscribed.
func (s *session) changedNames(ts *typeState, v resource.View) []string {
	if ts.sub.same(ts.sentSub) {
		if changed, ok := v.Changed(ts.sentView); ok {
			out := changed
			if !ts.sub.wildcard {
				out = nil
				for _, n := range changed {
					if ts.sub.has(n) {
						out = append(out, n)
					}
				}
			}
			return out
		}
	}
	// The subscription changed: each subscribed resource the proxy was not sent as it is
	// now (a first subscription of a thousand names costs no look-up in sentSub: there is
	// no sentView; nor in sub, which gave the resources).
	var out []string
	for _, r := range subscribed(ts.sub, v) {
		if ts.sentView == nil || !ts.sentSub.has(r.Name) {
			out = append(out, r.Name)
		} else if old, ok := ts.sentView.Get(r.Name); !ok || (old != r && old.Hash != r.Hash) {
			out = append(out, r.Name)
		}
	}
	if !slices.IsSorted(out) {
		slices.Sort(out)
	}
	return out
}

// holds reports whether the proxy was sent r's current content and still subscribes to it.
func (ts *typeState) holds(r *resource.Resource) bool {
	if ts.sentView == nil || !ts.sentSub.has(r.Name) || !ts.sub.has(r.Name) {
		return false
	}
	old, ok := ts.sentView.Get(r.Name)
	return ok && (old == r || old.Hash == r.Hash)
}

// removedNames lists the resources the proxy was sent and still subscribes to that v no
// longer has.
func removedNames(ts *typeState, v resource.View) []string {
	var out []string
	for _, n := range goneNames(ts.sentView, v) {
		if ts.sentSub.has(n) && ts.sub.has(n) {
			out = append(out, n)
		}
	}
	return out
}

// subscribed returns the resources of v that sub covers.
func subscribed(sub subscription, v resource.View) []*resource.Resource {
	if sub.wildcard {
		return v.All()
	}
	out := make([]*resource.Resource, 0, len(sub.names))
	for _, n := range sub.names {
		if r, ok := v.Get(n); ok {
			out = append(out, r)
		}
	}
	return out
}

// keepVersion is the version of a CDS response that keeps removed clusters for a while:
// a content hash like every version, distinct from the final state's.
func keepVersion(version string, rs []*resource.Resource) string {
	h := sha256.New()
	h.Write([]byte(version))
	for _, r := range rs {
		h.Write([]byte{0})
		h.Write([]byte(r.Name))
		h.Write([]byte{0})
		h.Write([]byte(r.Hash))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// reconcileFull handles LDS and CDS, whose responses carry every subscribed resource.
func (s *session) reconcileFull(t resource.Type, ts *typeState) *discoveryv3.DiscoveryResponse {
	v := s.view(t)
	version := v.Version()
	if !ts.needFull && ts.sub.same(ts.sentSub) && ts.sentView != nil {
		if version == ts.sentView.Version() {
			return nil
		}
		if !ts.sub.wildcard && len(s.changedNames(ts, v)) == 0 && len(removedNames(ts, v)) == 0 {
			// Named, and nothing it names changed.
			ts.sentView = v
			return nil
		}
	}
	ts.needFull = false
	ts.sentSub = ts.sub
	ts.sentView = v
	return s.respond(t, ts, version, subscribed(ts.sub, v))
}

// reconcileNamed handles EDS and RDS, whose responses carry only the resources that need
// sending: new, changed, newly subscribed, or queued in refresh.
func (s *session) reconcileNamed(t resource.Type, ts *typeState) *discoveryv3.DiscoveryResponse {
	v := s.view(t)
	version := v.Version()
	full := ts.needFull || ts.sentView == nil
	sameSub := ts.sub.same(ts.sentSub)
	if !full && sameSub && len(ts.refresh) == 0 && version == ts.sentView.Version() {
		return nil
	}
	var send []*resource.Resource
	switch {
	case full && len(v) == 1 && (ts.sub.wildcard || sameSlice(ts.sub.names, v[0].Names())):
		// Everything, and the subscription is exactly the set: its shared list.
		send = v[0].All()
	case full:
		send = subscribed(ts.sub, v)
	default:
		// Only what the proxy does not hold can need sending. When the subscription is
		// unchanged, the view diff is computed once per pair of sets and shared by every
		// proxy, so this costs the size of the change, not of the subscription.
		// changedNames are all subscribed: only the refreshed names need the check
		// (refresh may be a list shared by every proxy: filtered into a new one, and
		// only when some name is not subscribed, which is rare).
		refresh := ts.refresh
		if i := slices.IndexFunc(refresh, func(n string) bool { return !ts.sub.has(n) }); i >= 0 {
			refresh = slices.Clone(refresh[:i])
			for _, n := range ts.refresh[i+1:] {
				if ts.sub.has(n) {
					refresh = append(refresh, n)
				}
			}
		}
		for _, n := range mergeNames(s.changedNames(ts, v), refresh) {
			if r, ok := v.Get(n); ok {
				send = append(send, r)
			}
		}
	}
	ts.needFull = false
	ts.refresh = nil
	ts.sentSub = ts.sub
	ts.sentView = v
	if len(send) == 0 {
		if full || sameSub || ts.version == version {
			return nil
		}
		// The subscription changed (names went away) and nothing needs sending, but the
		// view's version moved on. Answer with no resources at the current version, as
		// DESIGN.md's checklist asks of a changed resource_names list: the version the
		// proxy holds then names what it holds, so a restarted control plane, which
		// answers the same subscription with the same content, sends the same version.
		return s.respond(t, ts, version, nil)
	}
	return s.respond(t, ts, version, send)
}

// mergeNames returns the sorted union of two sorted lists; it may return either.
func mergeNames(a, b []string) []string {
	switch {
	case len(b) == 0:
		return a
	case len(a) == 0:
		return b
	}
	// Both are sorted and unique: merge them in one pass (a new Service adds one name
	// to a subscription of a thousand).
	out := make([]string, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		switch {
		case a[0] < b[0]:
			out, a = append(out, a[0]), a[1:]
		case b[0] < a[0]:
			out, b = append(out, b[0]), b[1:]
		default:
			out, a, b = append(out, a[0]), a[1:], b[1:]
		}
	}
	return append(append(out, a...), b...)
}

func (s *session) respond(t resource.Type, ts *typeState, version string, rs []*resource.Resource) *discoveryv3.DiscoveryResponse {
	s.nonce++
	ts.onSend(version, strconv.FormatUint(s.nonce, 10), s.curChangedAt, s.now())
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

// normalizeNames sorts and dedupes a subscription's names and drops "*", which the
// caller reads as the wildcard.
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
