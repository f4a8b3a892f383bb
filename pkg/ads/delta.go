package ads

import (
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
//     The server must therefore know what each client holds. It does not keep a map per
//     client for that: after each reconcile the client holds exactly the covered
//     resources of the view it was brought up to date with (deltaType.sentView, shared
//     by every proxy), so only what happened since (deltaType.override) is its own.
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
	// sub is the subscription. Its wildcard is set explicitly ("*"), or in the legacy
	// form, by a first request that names nothing, and only unsubscribing "*" ends it
	// (xds_protocol#how-the-client-specifies-what-resources-to-return). Its names are
	// replaced, never modified, and are a set's own list when they are its names.
	sub subscription
	// sentView is the view of the last reconcile: the client then held, of every
	// resource of sentView that sub covers, that resource's content (sent, or declared
	// in initial_resource_versions; NACKed content too, so that it is not sent again
	// until it changes). nil before the first reconcile.
	sentView resource.View
	// override holds what changed since the last reconcile in what the client holds:
	// name to the content hash held, "" for nothing (it subscribed again and may have
	// dropped it, or the wildcard newly covers it). It wins over sentView. nil when empty.
	override map[string]string
	// unheld lists (sorted) names the client subscribed to since the last reconcile: it
	// holds none of them, whatever sentView says (it did not cover them). One list
	// rather than an override entry per name: a first subscription names every cluster.
	unheld []string
	// answer lists names that the next reconcile must answer: sent if they exist and are
	// covered, else named in removed_resources. A name that does not exist is said not
	// to (xds_protocol#knowing-when-a-requested-resource-does-not-exist, for the
	// incremental variants), and a name unsubscribed while the wildcard covers it must be
	// sent or removed (xds_protocol#unsubscribing-from-resources). nil when empty.
	answer map[string]struct{}
	// dirty: what the client holds changed since the last reconcile other than by
	// names newly subscribed (unheld, answer) or dropped, which must then look at every
	// covered resource instead of the view's diff. Names subscribed or unsubscribed
	// alone do not make it dirty: Envoy subscribes to one cluster's assignment and one
	// route configuration per new Service, and a walk over every subscribed name for
	// each of those requests made a new Service cost O(S) per proxy.
	dirty bool
	// refresh (EDS) lists, sorted by name, the clusters whose assignments the next
	// reconcile sends even if the client holds them: those the CDS responses just sent,
	// which Envoy keeps warming until their ClusterLoadAssignment comes (checked with
	// Envoy 1.36 on delta: without it a changed cluster stays warming). It is the CDS
	// response's own list while there is one (no copy of a thousand names per initial
	// sync); only the names count.
	refresh []*resource.Resource
	// pending are the responses sent and not answered yet, oldest first.
	pending []deltaPending
	// rejected maps the resources of NACKed responses to the hash rejected ("" for a
	// removal), until one of them changes, goes or comes back: then every one of them is
	// sent (or removed) again (see diff). While it is not empty, the type's status is
	// NACKED. nil when empty.
	rejected map[string]string
}

type deltaPending struct {
	resp      *discoveryv3.DeltaDiscoveryResponse
	changedAt time.Time
}

// held returns the content hash the client holds of the named resource.
func (ts *deltaType) held(name string) (string, bool) {
	if h, ok := ts.override[name]; ok {
		return h, h != ""
	}
	if _, ok := slices.BinarySearch(ts.unheld, name); ok {
		return "", false
	}
	if ts.sub.has(name) {
		if r, ok := ts.sentView.Get(name); ok {
			return r.Hash, true
		}
	}
	return "", false
}

// needs reports whether the client does not hold r as it is.
func (ts *deltaType) needs(r *resource.Resource) bool {
	h, ok := ts.held(r.Name)
	return !ok || h != r.Hash
}

// setHeld records that the client holds hash of name ("" for nothing), until the next
// reconcile.
func (ts *deltaType) setHeld(name, hash string) {
	ts.dirty = true
	if ts.override == nil {
		ts.override = map[string]string{}
	}
	ts.override[name] = hash
}

// answerName records that the next reconcile must answer name.
func (ts *deltaType) answerName(name string) {
	if ts.answer == nil {
		ts.answer = map[string]struct{}{}
	}
	ts.answer[name] = struct{}{}
}

// mustAnswer records that the next reconcile must answer name: send it, or name it in
// removed_resources. view is the config the session has now (nil before the first): a
// name it holds and the client does not is sent anyway, so only the others need an entry.
func (ts *deltaType) mustAnswer(name string, view resource.View) {
	if view != nil {
		if _, ok := view.Get(name); ok {
			if _, held := ts.held(name); !held {
				return
			}
		}
	}
	ts.answerName(name)
}

// deltaSession is the protocol state of one delta ADS stream, free of gRPC so that it can
// be tested request by request. The stream loop feeds it requests and configs and sends
// what it returns, in order.
type deltaSession struct {
	sessionCore
	types [resource.NumTypes]deltaType
}

func newDeltaSession(m *Metrics, now func() time.Time) *deltaSession {
	s := &deltaSession{sessionCore: newSessionCore(m, now)}
	for i := range s.types {
		s.types[i].status = NotSent
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
	return s.onDecoded(t, req, nil)
}

// onDecoded is onRequest for a request whose initial_resource_versions the codec
// decoded apart (see deltaRequest): initial, or nil to read req's map. The session keeps
// nothing of initial once it returns.
func (s *deltaSession) onDecoded(t resource.Type, req *discoveryv3.DeltaDiscoveryRequest, initial *resourceVersions) (outcome, []*discoveryv3.DeltaDiscoveryResponse) {
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
			if ts.rejected == nil {
				ts.rejected = map[string]string{}
			}
			// Only what the server still takes the client to hold from that response:
			// a later response may already have sent newer content (or removed it),
			// and that one gets its own answer.
			for _, r := range answered.resp.Resources {
				if h, ok := ts.held(r.Name); ok && h == r.Version {
					ts.rejected[r.Name] = r.Version
				}
			}
			for _, n := range answered.resp.RemovedResources {
				if _, ok := ts.held(n); !ok {
					ts.rejected[n] = "" // a removal rejected with the rest
				}
			}
			ts.onNack(s.metrics, t, answered.resp.SystemVersionInfo, answered.resp.Nonce, req.GetErrorDetail().GetMessage(), s.now())
			// Nothing is resent: the client is taken to hold what it rejected, so only
			// new content goes.
			break
		}
		if latest {
			ts.status = Synced
			if len(ts.rejected) > 0 {
				ts.status = Nacked
			}
		}
		ts.onAck(s.metrics, t, answered.resp.SystemVersionInfo, s.now(), latest)
	}
	s.subscribe(t, ts, req, initial)
	return out, s.reconcile()
}

// subscribe applies a request's subscription delta, and on the first request of the
// type, what the client says it already holds (initial, or nil for req's map).
func (s *deltaSession) subscribe(t resource.Type, ts *deltaType, req *discoveryv3.DeltaDiscoveryRequest, initial *resourceVersions) {
	first := !ts.requested
	ts.requested = true
	sub, unsub := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe()
	if (first && len(sub) == 0 && len(unsub) == 0 && t.Wildcard()) || slices.Contains(sub, "*") {
		// Legacy wildcard (the first request of a type that is requested as a whole
		// names nothing), or "*".
		s.wildcard(ts, true)
	}
	add, remove := normalizeNames(sub), normalizeNames(unsub)
	if len(add) > 0 {
		// Sent again even if held: the client may have dropped it.
		for _, n := range add {
			delete(ts.override, n)
		}
		ts.unheld = mergeNames(ts.unheld, add)
		// The client holds none of them now (unheld): those the view has are sent
		// anyway, so only the others need answering.
		if v := s.view(t); !inOneSet(add, v) {
			for _, n := range add {
				if _, ok := v.Get(n); !ok {
					ts.answerName(n)
				}
			}
		}
	}
	old := ts.sub.names
	for _, n := range remove {
		if !hasName(old, n) && !hasName(add, n) {
			continue // a phantom unsubscription: nothing to do
		}
		if ts.sub.wildcard {
			// Still covered by the wildcard, but the client cannot know whether to
			// keep it: answer it.
			ts.setHeld(n, "")
			ts.mustAnswer(n, s.view(t))
			continue
		}
		// Envoy drops what it unsubscribes from: forgotten (no longer covered), so
		// that subscribing again gets it again.
		delete(ts.override, n)
		delete(ts.answer, n)
		delete(ts.rejected, n)
	}
	if len(add) > 0 || len(remove) > 0 {
		s.editNames(t, &ts.sub, add, remove)
	}
	if slices.Contains(unsub, "*") {
		s.wildcard(ts, false)
	}
	if first {
		if initial == nil {
			initial = versionsOf(req.GetInitialResourceVersions())
		}
		s.initialVersions(t, ts, initial)
	}
}

// editNames makes sub's names the sorted union of its names and add, less remove (both
// sorted and unique), in the form that costs the session the least memory of its own
// (see resource.CanonicalNames). The list it had is not modified: it may be shared (a
// set's, another proxy's, /debug/streams').
//
// Why not build the new list first: Envoy subscribes to one more assignment and route
// configuration per new Service, and the list that results is then a shared one (the
// new set's, or the union every proxy of the same view converges to). Building it to
// find that out cost each proxy a copy of its whole subscription per name (16 KB at
// S=1000); resource.SharedEdit finds it from the edit alone.
func (s *deltaSession) editNames(t resource.Type, sub *subscription, add, remove []string) {
	v := s.view(t)
	if s.cur != nil {
		if n, ok := resource.SharedEdit(v, sub.names, sub.keep, add, remove); ok {
			sub.setNames(n)
			return
		}
	}
	// mergeNames returns a new list or one of its own (add, normalizeNames' copy).
	names := mergeNames(sub.names, add)
	if len(remove) > 0 {
		// Both are sorted: one pass.
		kept := make([]string, 0, len(names))
		j := 0
		for _, n := range names {
			for j < len(remove) && remove[j] < n {
				j++
			}
			if j == len(remove) || remove[j] != n {
				kept = append(kept, n)
			}
		}
		names = kept
	}
	switch {
	case s.cur == nil:
		sub.names = names
	case len(add) > 0:
		// Names gained names (whose strings may be the request's): its own list, which
		// CanonicalNames may rewrite.
		sub.setNames(resource.CanonicalNames(v, names))
	default:
		// Only lost some: its strings are the previous list's, already the resources'.
		if n, ok := resource.SharedNames(v, names); ok {
			sub.setNames(n)
		} else {
			sub.names = names
		}
	}
}

// inOneSet reports whether names (sorted) are exactly the names of a set of v: then v
// has every one of them, with no look-up per name (a first subscription to every
// cluster's assignment).
func inOneSet(names []string, v resource.View) bool {
	for _, set := range v {
		if set.Len() == len(names) && slices.Equal(set.Names(), names) {
			return true
		}
	}
	return false
}

// hasName reports whether the sorted list holds name.
func hasName(list []string, name string) bool {
	_, ok := slices.BinarySearch(list, name)
	return ok
}

// initialVersions records what a reconnecting client says it holds of the names it
// subscribes to.
func (s *deltaSession) initialVersions(t resource.Type, ts *deltaType, initial *resourceVersions) {
	if initial.empty() {
		return
	}
	ts.dirty = true
	if s.cur != nil && ts.sentView == nil {
		// Take the client to hold the current view as it is, and record only where it
		// differs: what it lacks (unheld), what it holds in another version or holds
		// though it is gone (override). A client that reconnects to a replica with the
		// same config, the common case, then costs no entry per name (a map entry per
		// name per type per proxy was most of a delta reconnect's memory).
		v := s.cur.Views[t]
		ts.sentView = v
		if initial.sameAsCovered(ts.sub, v) {
			// Exactly what it covers, as it is: nothing to record, and no entry to
			// look at (see resourceVersions). What it subscribed to, it holds; a
			// name to answer that it holds is answered.
			ts.unheld = nil
			for n := range ts.answer {
				if _, ok := v.Get(n); ok && n != "*" && ts.sub.has(n) {
					delete(ts.answer, n)
				}
			}
			return
		}
		covered := coveredBy(ts.sub, v)
		var lacks []string
		declared := 0 // entries of initial that name a covered resource
		for _, r := range covered {
			switch found, same := initial.holds(r.Name, r.Hash); {
			case !found:
				lacks = append(lacks, r.Name)
			case !same:
				declared++
				ts.setHeld(r.Name, initial.version(r.Name))
			default:
				declared++
			}
		}
		ts.unheld = lacks // in name order, as covered
		for n := range ts.answer {
			if initial.has(n) && n != "*" && ts.sub.has(n) {
				delete(ts.answer, n)
			}
		}
		if initial.has("*") {
			declared++
		}
		if declared == initial.len() {
			return // every entry was a covered resource: the common case
		}
		initial.each(func(n string) {
			if n == "*" || !ts.sub.has(n) {
				return
			}
			if _, ok := v.Get(n); !ok {
				ts.declareHeld(n, initial.version(n))
			}
		})
		return
	}
	initial.each(func(n string) {
		if n != "*" && ts.sub.has(n) {
			delete(ts.answer, n)
			ts.declareHeld(n, initial.version(n))
		}
	})
}

// declareHeld records that the client says it holds name at version. An empty version
// (bearkong sends none, a peer control plane may have) is a resource held all the same,
// which override cannot say ("" is nothing): the next reconcile answers it instead, sent
// if it exists and removed if not.
func (ts *deltaType) declareHeld(name, version string) {
	ts.setHeld(name, version)
	if version == "" {
		ts.answerName(name)
	}
}

// wildcard turns the wildcard subscription on or off.
func (s *deltaSession) wildcard(ts *deltaType, on bool) {
	if ts.sub.wildcard == on {
		return
	}
	ts.dirty = true
	if on {
		// What the wildcard newly covers, the client was not sent.
		for _, r := range ts.sentView.All() {
			if !ts.sub.has(r.Name) {
				ts.setHeld(r.Name, "")
			}
		}
		ts.sub.wildcard = true
		return
	}
	// The client drops what only the wildcard covered.
	ts.sub.wildcard = false
	for n := range ts.override {
		if !ts.sub.has(n) {
			delete(ts.override, n)
		}
	}
	for n := range ts.answer {
		if !ts.sub.has(n) {
			delete(ts.answer, n)
		}
	}
	for n := range ts.rejected {
		if !ts.sub.has(n) {
			delete(ts.rejected, n)
		}
	}
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
		if t == resource.Cluster && len(send) > 0 {
			eds := &s.types[resource.Endpoint]
			eds.refresh = mergeResources(eds.refresh, send)
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
// holds or asked for that do not exist. The client is then taken to hold the view.
//
// It runs for every proxy on every change and on every initial sync and reconnect, so
// it looks nothing up that it can walk: the lists it compares (the covered resources,
// unheld, refresh) are sorted, and walked together; a first reconcile, where the client
// holds nothing, sends what is covered without looking at anything; and what it builds
// in name order is not sorted again.
func (s *deltaSession) diff(t resource.Type, ts *deltaType) (send []*resource.Resource, removed []string) {
	v := s.cur.Views[t]
	var changed []string
	fast := false
	if !ts.dirty && ts.sentView != nil && !ts.manyUnheld(v) {
		// Nothing changed but the content: only what the views' diff names (computed
		// once per pair of sets, for every proxy) and what went can need anything.
		changed, fast = v.Changed(ts.sentView)
	}
	ordered := false // send is sorted by name, without repeats
	if fast {
		for _, n := range changed {
			if r, ok := v.Get(n); ok && ts.sub.has(n) {
				send = append(send, r)
			}
		}
		for _, n := range goneNames(ts.sentView, v) {
			if ts.sub.has(n) {
				removed = append(removed, n)
			}
		}
		// Names subscribed since: the client holds none of them.
		for _, n := range ts.unheld {
			if r, ok := v.Get(n); ok && ts.sub.has(n) {
				send = append(send, r)
			}
		}
		for n := range ts.answer {
			if r, ok := v.Get(n); !ok {
				if _, held := ts.held(n); !held {
					removed = append(removed, n)
				}
			} else if ts.sub.has(n) && ts.needs(r) {
				send = append(send, r)
			}
		}
		for _, r := range ts.refresh {
			if r, ok := v.Get(r.Name); ok && ts.sub.has(r.Name) {
				send = append(send, r)
			}
		}
	} else {
		covered := coveredBy(ts.sub, v)
		if ts.sentView == nil && len(ts.override) == 0 {
			// The client holds nothing of the type: everything covered goes, refresh
			// included. Clipped: appended to below only as a copy.
			send = slices.Clip(covered)
		} else {
			send = ts.needed(covered, v)
		}
		ordered = true
		gone := func(n string) bool { _, ok := v.Get(n); return !ok }
		for n, h := range ts.override {
			if h != "" && gone(n) {
				removed = append(removed, n)
			}
		}
		for n := range ts.answer {
			if _, held := ts.held(n); !held && gone(n) {
				removed = append(removed, n)
			}
		}
		for _, n := range goneNames(ts.sentView, v) {
			if _, overridden := ts.override[n]; !overridden && ts.sub.has(n) {
				removed = append(removed, n)
			}
		}
	}
	if len(ts.rejected) > 0 && rejectedMoved(ts, v) {
		// A NACKed response may have been rejected whole (a resource that does not
		// decode) or in part (Envoy applies the clusters it can and names the others only
		// in its message): what the client holds of it is not known. Once the content
		// moves on (the fix), every resource of it is sent again, as it is now.
		for n := range ts.rejected {
			switch r, ok := v.Get(n); {
			case !ok:
				removed = append(removed, n)
			case ts.sub.has(n):
				send, ordered = append(send, r), false
			}
		}
		ts.rejected = nil
	}
	if !ordered && !sortedUnique(send) {
		// A copy: send may be a set's own list.
		send = slices.Clone(send)
		slices.SortFunc(send, func(a, b *resource.Resource) int { return strings.Compare(a.Name, b.Name) })
		send = slices.CompactFunc(send, func(a, b *resource.Resource) bool { return a.Name == b.Name })
	}
	if len(removed) > 1 {
		slices.Sort(removed)
		removed = slices.Compact(removed)
	}
	for _, n := range removed {
		delete(ts.rejected, n)
	}
	ts.override, ts.unheld, ts.answer, ts.refresh = nil, nil, nil, nil
	ts.dirty = false
	ts.sentView = v
	return send, removed
}

// manyUnheld reports whether the names subscribed or refreshed since the last reconcile
// are a good part of what the subscription covers in v: a first subscription to every
// cluster's assignment after an empty one, or a CDS response of every cluster. Looking
// each of them up costs more than walking the covered resources beside them.
func (ts *deltaType) manyUnheld(v resource.View) bool {
	n := len(ts.unheld) + len(ts.refresh)
	if n < 16 {
		return false
	}
	covered := len(ts.sub.names)
	if ts.sub.wildcard {
		covered = v.Len()
	}
	return n > covered/4
}

// needed returns the resources of covered (sorted by name) that the client does not hold
// as they are, or that refresh names. unheld and refresh, sorted too, are walked beside
// covered rather than searched for each resource; where the client was brought up to v
// itself (a reconnect that holds the current config), the sets are v's and nothing is
// looked up.
func (ts *deltaType) needed(covered []*resource.Resource, v resource.View) []*resource.Resource {
	var send []*resource.Resource
	unheld, refresh := ts.unheld, ts.refresh
	same := sameView(ts.sentView, v)
	for _, r := range covered {
		n := r.Name
		var need bool
		for len(unheld) > 0 && unheld[0] < n {
			unheld = unheld[1:]
		}
		// As held: what override says wins, then unheld, then sentView.
		if h, ok := ts.override[n]; ok {
			need = h != r.Hash
		} else if len(unheld) > 0 && unheld[0] == n {
			need = true
		} else if !same {
			old, ok := ts.sentView.Get(n)
			need = !ok || (old != r && old.Hash != r.Hash)
		}
		for len(refresh) > 0 && refresh[0].Name < n {
			refresh = refresh[1:]
		}
		need = need || (len(refresh) > 0 && refresh[0].Name == n)
		if need {
			send = append(send, r)
		}
	}
	return send
}

// coveredBy returns the resources of v that sub covers, sorted by name. A subscription
// to exactly a set's names (its very list, as resource.CanonicalNames leaves it) is that
// set's list, with no look-up per name; the caller must not modify it.
func coveredBy(sub subscription, v resource.View) []*resource.Resource {
	if sub.wildcard {
		if len(v) <= 1 {
			return v.All()
		}
		// A proxy's own set beside the shared one (its inbound cluster): merged in
		// name order rather than sorted.
		var all []*resource.Resource
		for _, set := range v {
			all = mergeResources(all, set.All())
		}
		return all
	}
	for _, set := range v {
		if sameSlice(sub.names, set.Names()) {
			return set.All()
		}
	}
	return subscribed(sub, v)
}

// sameView reports whether a and b are the same sets.
func sameView(a, b resource.View) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b))
}

// sortedUnique reports whether rs is sorted by name without repeats.
func sortedUnique(rs []*resource.Resource) bool {
	for i := 1; i < len(rs); i++ {
		if rs[i-1].Name >= rs[i].Name {
			return false
		}
	}
	return true
}

// mergeResources returns the union of two lists sorted by name (of a name in both, b's
// resource); it may return either. The shorter list's resources are placed by binary
// search and the runs of the longer one between them copied: merging a proxy's own set
// of a few resources into the shared set of a thousand costs a few comparisons, not a
// thousand.
func mergeResources(a, b []*resource.Resource) []*resource.Resource {
	switch {
	case len(b) == 0:
		return a
	case len(a) == 0:
		return b
	}
	if len(a) < len(b) {
		a, b = b, a
	}
	out := make([]*resource.Resource, 0, len(a)+len(b))
	for _, r := range b {
		i, found := slices.BinarySearchFunc(a, r.Name, func(x *resource.Resource, n string) int { return strings.Compare(x.Name, n) })
		out, a = append(out, a[:i]...), a[i:]
		if found {
			a = a[1:]
		}
		out = append(out, r)
	}
	return append(out, a...)
}

// rejectedMoved reports whether a resource of ts.rejected changed, went, or (for a
// removal that was rejected) came back in v.
func rejectedMoved(ts *deltaType, v resource.View) bool {
	for n, h := range ts.rejected {
		r, ok := v.Get(n)
		if h == "" {
			if ok {
				return true
			}
			continue
		}
		if !ok || r.Hash != h || !ts.sub.has(n) {
			return true
		}
	}
	return false
}

// goneNames lists the names of old that v does not have. Sets keep their name list
// while their names do not change, so the common case costs one comparison per set; when
// a set's names changed, the names it lost are among what its diff to the new set lists
// (Set.Changed, computed once for every proxy that makes the same move).
func goneNames(old, v resource.View) []string {
	var out []string
	if len(v) == len(old) {
		for i := range v {
			if sameSlice(v[i].Names(), old[i].Names()) {
				continue
			}
			for _, n := range old[i].Changed(v[i]) {
				if _, ok := v.Get(n); !ok {
					out = append(out, n)
				}
			}
		}
		return out
	}
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
		resp.Resources = append(resp.Resources, r.Delta())
		size += len(r.Any.Value)
	}
	if len(ts.pending) == maxPending {
		ts.pending = slices.Delete(ts.pending, 0, 1)
	}
	ts.pending = append(ts.pending, deltaPending{resp: resp, changedAt: s.curChangedAt})
	s.metrics.push(t, len(send), size)
	return resp
}

// delta is the incremental protocol on a stream.
type delta struct {
	gs   discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer
	sess *deltaSession
}

func (p *delta) name() string { return "delta" }

// names counts the names of the request, initial_resource_versions included: as the
// proto's map holds them, or, as the codec decoded them for the stream, as given (a name
// given twice counts twice).
func (p *delta) names(req request) int {
	var r *discoveryv3.DeltaDiscoveryRequest
	n := 0
	switch req := req.(type) {
	case *deltaRequest:
		r, n = req.DeltaDiscoveryRequest, req.versions.size()
	case *discoveryv3.DeltaDiscoveryRequest:
		r = req
	}
	return n + len(r.GetResourceNamesSubscribe()) + len(r.GetResourceNamesUnsubscribe()) + len(r.GetInitialResourceVersions())
}

func (p *delta) onRequest(t resource.Type, req request) (outcome, []response) {
	var out outcome
	var resps []*discoveryv3.DeltaDiscoveryResponse
	switch req := req.(type) {
	case *deltaRequest:
		out, resps = p.sess.onDecoded(t, req.DeltaDiscoveryRequest, req.initial())
		// The session kept none of it: the entries can serve another request.
		req.versions.release()
	case *discoveryv3.DeltaDiscoveryRequest:
		out, resps = p.sess.onRequest(t, req)
	}
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

func (ts *deltaType) subscribed() []string { return subscriptionNames(ts.sub) }

// view returns the session's current view of type t, nil before the first config.
func (s *deltaSession) view(t resource.Type) resource.View {
	if s.cur == nil {
		return nil
	}
	return s.cur.Views[t]
}
