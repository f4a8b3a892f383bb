package ads

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	"github.com/bearkong/bearkong/pkg/resource"
)

// This file is the incremental ("delta") variant of ADS, DeltaAggregatedResources:
// https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#incremental-xds
//
// The differences from state of the world that shape it:
//   - The client sends subscription deltas (resource_names_subscribe / _unsubscribe),
//     and the server must apply them even when the request's nonce is stale: a delta
//     ignored is lost, where a SotW request only repeats the whole list.
//   - Each resource has its own version: bearkong uses the resource's content hash, so
//     every replica and every restart gives the same versions, and a reconnecting
//     client's initial_resource_versions can be compared with them.
//   - A response carries only what changed, and names what went in removed_resources.
//     The server must therefore know what each client holds: deltaType.held.
//   - system_version_info is for debugging only; bearkong sends the type view's version,
//     as the SotW side's version_info.

// maxPending bounds the responses of a type that wait for their ACK or NACK. Envoy
// answers each in order, so a few are ever outstanding; a client that never answers
// costs no more than this. An answer to a response dropped from the list is stale.
const maxPending = 16

// deltaType is one delta stream's state for one type. It is owned by the stream's loop.
type deltaType struct {
	typeStats
	// requested: a request for the type came on this stream.
	requested bool
	// wildcard subscribes to every resource of the type: explicitly ("*"), or in the
	// legacy form, by a first request that names nothing. Only unsubscribing "*" ends
	// it (xds_protocol#how-the-client-specifies-what-resources-to-return).
	wildcard bool
	// names are the names subscribed explicitly, without "*".
	names map[string]struct{}
	// sortedNames caches names, sorted with "*" first when wildcard, for /debug/streams;
	// nil when it must be rebuilt. The slice is replaced, never modified.
	sortedNames []string
	// held maps each resource the client holds, as far as the server knows (it was sent
	// or the client declared it in initial_resource_versions) and is still subscribed to,
	// to the content hash it holds. After each reconcile, held names exactly the covered
	// resources of the current view, with their current hashes: content that was NACKed
	// stays there too, so that it is not sent again until it changes.
	held map[string]string
	// answer lists names that the next reconcile must answer whatever held says: sent if
	// they exist and are covered, else named in removed_resources. A name subscribed
	// again must be sent again (the client may have dropped it), a name that does not
	// exist is said not to (xds_protocol#knowing-when-a-requested-resource-does-not-exist,
	// for the incremental variants), and a name unsubscribed while the wildcard covers it
	// must be sent or removed (xds_protocol#unsubscribing-from-resources).
	answer map[string]struct{}
	// dirty: the subscription or held changed since the last reconcile, which must then
	// look at every covered resource instead of the view's diff.
	dirty bool
	// sentView is the view held was brought up to date with by the last reconcile.
	sentView resource.View
	// refresh (EDS) lists, sorted, the assignments to send at the next reconcile even if
	// the client holds them: those of the clusters the CDS response just sent added or
	// changed, which Envoy keeps warming until their ClusterLoadAssignment comes.
	refresh []string
	// pending are the responses sent and not answered yet, oldest first.
	pending []deltaPending
	// rejected maps the resources of NACKed responses to the hash rejected, until a later
	// response that sends or removes them is ACKed or the client unsubscribes: while it
	// is not empty, the type's status is NACKED.
	rejected map[string]string
}

type deltaPending struct {
	resp      *discoveryv3.DeltaDiscoveryResponse
	changedAt time.Time
}

// covers reports whether the subscription covers the named resource.
func (ts *deltaType) covers(name string) bool {
	if ts.wildcard {
		return true
	}
	_, ok := ts.names[name]
	return ok
}

// deltaSession is the protocol state of one delta ADS stream, free of gRPC so that it can
// be tested request by request. The stream loop feeds it requests and configs and sends
// what it returns, in order.
type deltaSession struct {
	nonce        uint64
	cur          *resource.Proxy
	curChangedAt time.Time
	types        [resource.NumTypes]deltaType
	now          func() time.Time
	metrics      *Metrics
}

func newDeltaSession(m *Metrics, now func() time.Time) *deltaSession {
	if now == nil {
		now = time.Now
	}
	s := &deltaSession{now: now, metrics: m}
	for i := range s.types {
		ts := &s.types[i]
		ts.status = NotSent
		ts.names, ts.held, ts.answer, ts.rejected = map[string]struct{}{}, map[string]string{}, map[string]struct{}{}, map[string]string{}
	}
	return s
}

// classifyDelta decides what a delta request means for its type's ACK state. A first
// request is initial whatever nonce it carries (nonces do not survive a reconnect); a
// request without a nonce answers nothing; a nonce of a response still waiting for its
// answer ACKs or NACKs that response; any other nonce is stale. The index is the
// position of the answered response in pending.
func classifyDelta(ts *deltaType, req *discoveryv3.DeltaDiscoveryRequest) (Kind, int) {
	switch {
	case !ts.requested:
		return Initial, -1
	case req.GetResponseNonce() == "":
		return Update, -1
	}
	i := slices.IndexFunc(ts.pending, func(p deltaPending) bool { return p.resp.Nonce == req.GetResponseNonce() })
	switch {
	case i < 0:
		return Stale, -1
	case req.GetErrorDetail() != nil:
		return NACK, i
	}
	return ACK, i
}

// onRequest applies one request and returns the responses to send, in order. The
// subscription change applies whatever the nonce says; the nonce decides only whether the
// request ACKs or NACKs a response.
func (s *deltaSession) onRequest(t resource.Type, req *discoveryv3.DeltaDiscoveryRequest) (outcome, []*discoveryv3.DeltaDiscoveryResponse) {
	ts := &s.types[t]
	kind, i := classifyDelta(ts, req)
	out := outcome{typ: t, kind: kind}
	switch kind {
	case Stale:
		ts.onStale(s.metrics, t)
	case ACK, NACK:
		answered := ts.pending[i]
		out.answered = answered.resp
		ts.pending = slices.Delete(ts.pending, 0, i+1)
		latest := len(ts.pending) == 0
		if kind == NACK {
			for _, r := range answered.resp.Resources {
				ts.rejected[r.Name] = r.Version
			}
			ts.onNack(s.metrics, t, answered.resp.SystemVersionInfo, answered.resp.Nonce, req.GetErrorDetail().GetMessage(), s.now())
			// Nothing is resent: held has what was rejected, so only new content goes.
			break
		}
		for _, r := range answered.resp.Resources {
			if ts.rejected[r.Name] != r.Version {
				delete(ts.rejected, r.Name)
			}
		}
		for _, n := range answered.resp.RemovedResources {
			delete(ts.rejected, n)
		}
		if latest {
			ts.status = Synced
			if len(ts.rejected) > 0 {
				ts.status = Nacked
			}
		}
		ts.onAck(s.metrics, t, answered.resp.SystemVersionInfo, s.now(), latest)
	}
	s.subscribe(t, ts, req)
	return out, s.reconcile()
}

// subscribe applies a request's subscription delta, and on the first request of the
// type, what the client says it already holds.
func (s *deltaSession) subscribe(t resource.Type, ts *deltaType, req *discoveryv3.DeltaDiscoveryRequest) {
	first := !ts.requested
	ts.requested = true
	sub, unsub := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()
	if first && len(sub) == 0 && len(unsub) == 0 && t.Wildcard() {
		// Legacy wildcard: the first request of a type that is requested as a whole
		// names nothing.
		ts.wildcard = true
		ts.changed()
	}
	for _, n := range sub {
		ts.changed()
		if n == "*" {
			ts.wildcard = true
			continue
		}
		ts.names[n] = struct{}{}
		// Sent again even if held: the client may have dropped it.
		delete(ts.held, n)
		ts.answer[n] = struct{}{}
	}
	for _, n := range unsub {
		if n == "*" {
			if ts.wildcard {
				ts.wildcard = false
				ts.changed()
				// The client drops what only the wildcard covered.
				for h := range ts.held {
					if _, named := ts.names[h]; !named {
						ts.forget(h)
					}
				}
			}
			continue
		}
		if _, ok := ts.names[n]; !ok {
			continue // a phantom unsubscription: nothing to do
		}
		ts.changed()
		delete(ts.names, n)
		if ts.wildcard {
			// Still covered by the wildcard, but the client cannot know whether to keep
			// it: answer it.
			delete(ts.held, n)
			ts.answer[n] = struct{}{}
			continue
		}
		// Envoy drops what it unsubscribes from: forget it, so that subscribing again
		// gets it again.
		ts.forget(n)
	}
	if first {
		for n, v := range req.GetInitialResourceVersions() {
			if n != "*" && ts.covers(n) {
				ts.held[n] = v
				delete(ts.answer, n)
			}
		}
	}
}

// changed marks the subscription changed.
func (ts *deltaType) changed() {
	ts.dirty = true
	ts.sortedNames = nil
}

// forget drops what the client held of a name it no longer subscribes to.
func (ts *deltaType) forget(n string) {
	delete(ts.held, n)
	delete(ts.answer, n)
	delete(ts.rejected, n)
}

// onConfig switches the session to a new config and returns the responses that bring the
// proxy up to date: the resources that changed for it, and those that went.
func (s *deltaSession) onConfig(p *resource.Proxy, changedAt time.Time) []*discoveryv3.DeltaDiscoveryResponse {
	s.cur = p
	s.curChangedAt = changedAt
	return s.reconcile()
}

// reconcile sends whatever the client subscribes to and does not hold as it is now, and
// removes what it holds that went, make before break as the SotW side
// (xds_protocol#eventual-consistency-considerations): clusters added or changed first,
// then their endpoints (with the assignments of those clusters again), then the other
// types in resource.Types order; the clusters that went, and their assignments, last,
// once the routes no longer name them. With nothing new, it returns nothing.
func (s *deltaSession) reconcile() []*discoveryv3.DeltaDiscoveryResponse {
	if s.cur == nil {
		return nil // no config yet: the requests are remembered and answered later
	}
	var out, final []*discoveryv3.DeltaDiscoveryResponse
	add := func(dst *[]*discoveryv3.DeltaDiscoveryResponse, t resource.Type, ts *deltaType, send []*resource.Resource, removed []string) {
		if len(send) > 0 || len(removed) > 0 {
			*dst = append(*dst, s.respond(t, ts, send, removed))
		}
	}
	var late [resource.NumTypes][]string
	for _, t := range resource.Types {
		ts := &s.types[t]
		if !ts.requested {
			continue
		}
		send, removed := s.diff(t, ts)
		if t == resource.Cluster {
			eds := &s.types[resource.Endpoint]
			for _, r := range send {
				eds.refresh = append(eds.refresh, r.Name)
			}
		}
		if t == resource.Cluster || t == resource.Endpoint {
			// Clusters and their assignments go last.
			late[t], removed = removed, nil
		}
		if ts.pushes == 0 && len(send) == 0 && len(removed) == 0 && len(late[t]) == 0 {
			// The first request of a type is answered even when there is nothing to
			// send: Envoy waits for a CDS and an LDS answer before it finishes starting
			// (an empty mesh has no clusters), and a reconnecting client that holds
			// everything learns, from the ACK it sends back, that its versions stand.
			out = append(out, s.respond(t, ts, nil, nil))
			continue
		}
		add(&out, t, ts, send, removed)
	}
	for _, t := range []resource.Type{resource.Cluster, resource.Endpoint} {
		add(&final, t, &s.types[t], nil, late[t])
	}
	return append(out, final...)
}

// diff works out what type t needs: the covered resources the client does not hold as
// they are now (or must be answered, or refreshed), sorted by name, and the names it
// holds or asked for that do not exist. It brings held up to date as if both were sent.
func (s *deltaSession) diff(t resource.Type, ts *deltaType) (send []*resource.Resource, removed []string) {
	v := s.cur.Views[t]
	needs := func(r *resource.Resource) bool {
		h, ok := ts.held[r.Name]
		return !ok || h != r.Hash
	}
	var changed []string
	fast := false
	if !ts.dirty && ts.sentView != nil {
		// The subscription did not change, so held matches sentView: only what the
		// views' diff names (computed once per pair of sets, for every proxy) and the
		// names sentView has and v has not can need anything.
		changed, fast = v.Changed(ts.sentView)
	}
	if fast {
		for _, n := range changed {
			if r, ok := v.Get(n); ok && ts.covers(n) && needs(r) {
				send = append(send, r)
			}
		}
		for _, n := range goneNames(ts.sentView, v) {
			if _, ok := ts.held[n]; ok {
				removed = append(removed, n)
			}
		}
	} else {
		if ts.wildcard {
			for _, r := range v.All() {
				if needs(r) {
					send = append(send, r)
				}
			}
		} else {
			for n := range ts.names {
				if r, ok := v.Get(n); ok && needs(r) {
					send = append(send, r)
				}
			}
		}
		for n := range ts.held {
			if _, ok := v.Get(n); !ok || !ts.covers(n) {
				removed = append(removed, n)
			}
		}
		for n := range ts.answer {
			if _, held := ts.held[n]; !held {
				if _, ok := v.Get(n); !ok {
					removed = append(removed, n)
				}
			}
		}
	}
	for _, n := range ts.refresh {
		if r, ok := v.Get(n); ok && ts.covers(n) && !needs(r) {
			send = append(send, r)
		}
	}
	slices.SortFunc(send, func(a, b *resource.Resource) int { return strings.Compare(a.Name, b.Name) })
	send = slices.CompactFunc(send, func(a, b *resource.Resource) bool { return a.Name == b.Name })
	slices.Sort(removed)
	removed = slices.Compact(removed)
	for _, r := range send {
		ts.held[r.Name] = r.Hash
	}
	for _, n := range removed {
		delete(ts.held, n)
		delete(ts.rejected, n)
	}
	clear(ts.answer)
	ts.refresh = nil
	ts.dirty = false
	ts.sentView = v
	return send, removed
}

// goneNames lists the names of old that v does not have. Sets keep their name list
// while their names do not change, so the common case costs one comparison per set.
func goneNames(old, v resource.View) []string {
	if len(v) == len(old) {
		same := true
		for i := range v {
			same = same && sameSlice(v[i].Names(), old[i].Names())
		}
		if same {
			return nil
		}
	}
	var out []string
	for _, set := range old {
		for _, n := range set.Names() {
			if _, ok := v.Get(n); !ok {
				out = append(out, n)
			}
		}
	}
	return out
}

func (s *deltaSession) respond(t resource.Type, ts *deltaType, send []*resource.Resource, removed []string) *discoveryv3.DeltaDiscoveryResponse {
	s.nonce++
	version := s.cur.Views[t].Version()
	ts.onSend(version, strconv.FormatUint(s.nonce, 10), s.curChangedAt, s.now())
	resp := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: version,
		TypeUrl:           t.URL(),
		Nonce:             ts.nonce,
		Resources:         make([]*discoveryv3.Resource, 0, len(send)),
		RemovedResources:  removed,
	}
	size := 0
	for _, r := range send {
		// Version is the content hash: the same content has the same version on every
		// replica and after every restart, which is what initial_resource_versions is
		// compared with.
		resp.Resources = append(resp.Resources, &discoveryv3.Resource{Name: r.Name, Version: r.Hash, Resource: r.Any})
		size += len(r.Any.Value)
	}
	if len(ts.pending) == maxPending {
		ts.pending = slices.Delete(ts.pending, 0, 1)
	}
	ts.pending = append(ts.pending, deltaPending{resp: resp, changedAt: s.curChangedAt})
	s.metrics.push(t, len(send), size)
	return resp
}

// subscribed lists the subscription for /debug/streams: "*" first for a wildcard, then
// the names, sorted.
func (ts *deltaType) subscribed() []string {
	if ts.sortedNames == nil {
		names := slices.Sorted(maps.Keys(ts.names))
		if ts.wildcard {
			names = append(slices.Clone(wildcardNames), names...)
		}
		if names == nil {
			names = []string{}
		}
		ts.sortedNames = names
	}
	return ts.sortedNames
}

// delta is the incremental protocol on a stream.
type delta struct {
	gs   discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	sess *deltaSession
}

func (p *delta) name() string { return "delta" }

func (p *delta) names(req request) int {
	r := req.(*discoveryv3.DeltaDiscoveryRequest)
	return len(r.GetResourceNamesSubscribe()) + len(r.GetResourceNamesUnsubscribe()) + len(r.GetInitialResourceVersions())
}

func (p *delta) onRequest(t resource.Type, req request) (outcome, []response) {
	out, resps := p.sess.onRequest(t, req.(*discoveryv3.DeltaDiscoveryRequest))
	return out, responses(resps)
}

func (p *delta) onConfig(px *resource.Proxy, changedAt time.Time) []response {
	return responses(p.sess.onConfig(px, changedAt))
}

func (p *delta) send(r response) error { return p.gs.Send(r.(*discoveryv3.DeltaDiscoveryResponse)) }

func (p *delta) sent(response, *resource.Proxy) {}

func (p *delta) report(r *Report, _ request, out outcome) {
	r.Version = out.answered.GetSystemVersionInfo()
	r.AckedVersion = p.sess.types[r.Type].ackedVersion
	if r.Kind != NACK {
		return
	}
	for _, res := range out.answered.GetResources() {
		r.Resources = append(r.Resources, ResourceRef{Name: res.Name, Hash: res.Version})
	}
}

func (p *delta) describe(r response) (string, int) {
	d := r.(*discoveryv3.DeltaDiscoveryResponse)
	return d.GetSystemVersionInfo(), len(d.GetResources()) + len(d.GetRemovedResources())
}

func (p *delta) stats(t resource.Type) *typeStats { return &p.sess.types[t].typeStats }

func (p *delta) subscribed(t resource.Type) []string { return p.sess.types[t].subscribed() }
