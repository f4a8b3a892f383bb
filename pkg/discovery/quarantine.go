package discovery

import (
	"cmp"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// Quarantine: when proxies reject (NACK) a config, the proxy keeps running its last
// accepted version of that type and no later change of the type reaches it until
// bearkong sends something it accepts. One bad object would freeze the whole mesh, since
// every proxy shares the outbound routes. So the control plane tells discovery which
// config was rejected (Rejected) and which was accepted (Accepted); discovery works out
// which objects' contributions changed between the two, the suspects, and builds the
// next snapshots without them:
//
//   - one suspect is the culprit: it is quarantined, and reported (an HTTPRoute gets
//     Accepted=False; a Service keeps its last good policy, with a Warning Event and a
//     /debug/diagnostics entry);
//   - several suspects are all held back, then re-admitted one at a time, each waiting
//     for an ACK of a config that holds it (innocent) or a NACK that names it alone
//     (the culprit), so that no innocent object stays out;
//   - a quarantine lasts until the object changes (a new generation of the HTTPRoute, new
//     mesh annotations on the Service).
//
// Quarantine is state learnt from NACKs, kept in memory: a restarted control plane
// serves the object again, the proxies NACK it again, and it is quarantined again.

// Kinds of ObjectRef.
const (
	KindHTTPRoute = "HTTPRoute"
	KindService   = "Service"
)

// ObjectRef names an object whose contribution bearkong can leave out of the config.
type ObjectRef struct {
	Kind, Namespace, Name string
}

func (o ObjectRef) String() string { return o.Kind + " " + o.Namespace + "/" + o.Name }

func compareRefs(a, b ObjectRef) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Kind, b.Kind))
}

// hold is one object left out of the config. It is immutable once made: confirming a
// suspect replaces its hold.
type hold struct {
	ref  ObjectRef
	part mesh.ConfigPart
	// confirmed: the object alone made the proxies reject the config. Otherwise it is
	// a suspect held back until its turn to be re-admitted.
	confirmed bool
	message   string

	// What lifts it: the object as it was rejected.
	exists      bool              // it was in the informer cache
	generation  int64             // HTTPRoute
	annotations map[string]string // Service: its mesh annotations
	// Service: the policy kept in force, and the one that was rejected.
	lastGood, rejected mesh.Policy
}

// quarantine is the set of held objects and the re-admission of suspects. Its methods
// are called from the control plane's NACK/ACK handling and from discovery's worker.
type quarantine struct {
	mu    sync.Mutex
	held  map[ObjectRef]*hold
	probe *hold   // a suspect re-admitted, waiting for an ACK or a NACK
	queue []*hold // suspects still held, in the order they will be re-admitted
	// wantAcks is probe != nil || len(queue) > 0, readable without the lock: ACKs
	// matter only then, and there are many of them.
	wantAcks atomic.Bool
}

func newQuarantine() *quarantine { return &quarantine{held: map[ObjectRef]*hold{}} }

// verdict is what a call changed, for logs, metrics and the rebuild.
type verdict struct {
	confirmed []*hold // culprits, newly quarantined
	suspected []*hold // suspects, newly held back
	readmit   *hold   // a suspect re-admitted for a trial
	innocent  *hold   // a suspect found innocent
}

func (v verdict) changed() bool {
	return len(v.confirmed)+len(v.suspected) > 0 || v.readmit != nil || v.innocent != nil
}

// reject handles a NACK of part: ok is the snapshot of the config the proxy last
// accepted (nil if none), bad the one it rejected. describe makes the hold of an
// object as it is now (its generation or annotations).
func (q *quarantine) reject(part mesh.ConfigPart, ok, bad *mesh.Snapshot, message string, describe func(*hold)) verdict {
	sus := suspects(part, ok, bad)
	q.mu.Lock()
	defer q.mu.Unlock()
	defer q.update()
	var v verdict
	newHold := func(ref ObjectRef, confirmed bool) *hold {
		h := &hold{ref: ref, part: part, confirmed: confirmed, message: message}
		if ref.Kind == KindService {
			if s := ok.Service(ref.Namespace, ref.Name); s != nil {
				h.lastGood = s.Policy
			}
			if s := bad.Service(ref.Namespace, ref.Name); s != nil {
				h.rejected = s.Policy
			}
		}
		describe(h)
		return h
	}
	if q.probe != nil && len(sus) == 1 && sus[0] == q.probe.ref {
		// The suspect on trial made the proxies reject the config: the culprit.
		h := *q.probe
		h.confirmed, h.message = true, message
		q.held[h.ref] = &h
		q.probe = nil
		v.confirmed = append(v.confirmed, &h)
		return v
	}
	// The suspect on trial and another change rejected together: neither is proven, so
	// the one on trial is held back again, first in line.
	retried := false
	if q.probe != nil && slices.Contains(sus, q.probe.ref) {
		q.held[q.probe.ref] = q.probe
		q.queue = append([]*hold{q.probe}, q.queue...)
		q.probe = nil
		retried = true
	}
	// Objects already held are not suspects again: this NACK is a late one, of a
	// config that still had them.
	sus = slices.DeleteFunc(sus, func(r ObjectRef) bool { return q.held[r] != nil })
	switch {
	case len(sus) == 0:
	case len(sus) == 1 && !retried:
		h := newHold(sus[0], true)
		q.held[h.ref] = h
		v.confirmed = append(v.confirmed, h)
	default:
		for _, r := range sus {
			h := newHold(r, false)
			q.held[r] = h
			q.queue = append(q.queue, h)
			v.suspected = append(v.suspected, h)
		}
	}
	return v
}

// accept handles an ACK of part for a config built from snap: it clears the suspect on
// trial if snap holds it, and re-admits the next suspect once a config without the held
// ones has been accepted.
func (q *quarantine) accept(part mesh.ConfigPart, snap *mesh.Snapshot) verdict {
	q.mu.Lock()
	defer q.mu.Unlock()
	defer q.update()
	var v verdict
	if q.probe != nil {
		if q.probe.part != part || !contains(snap, q.probe) {
			return v // an ACK of an older config, or of another part
		}
		v.innocent = q.probe
		q.probe = nil
	}
	if len(q.queue) == 0 {
		return v
	}
	if v.innocent == nil {
		for h := range maps.Values(q.held) {
			if contains(snap, h) {
				return v // accepted, but from a config that did not leave them out yet
			}
		}
	}
	v.readmit = q.readmitNext()
	return v
}

// skipProbe handles a snapshot built after a suspect was re-admitted in which the suspect
// contributes nothing (it was deleted, or is not attached): there is nothing to try, so
// the next suspect is re-admitted.
func (q *quarantine) skipProbe(snap *mesh.Snapshot) verdict {
	q.mu.Lock()
	defer q.mu.Unlock()
	defer q.update()
	var v verdict
	if q.probe == nil || contributes(snap, q.probe) {
		return v
	}
	v.innocent = q.probe
	q.probe = nil
	if len(q.queue) > 0 {
		v.readmit = q.readmitNext()
	}
	return v
}

func (q *quarantine) readmitNext() *hold {
	h := q.queue[0]
	q.queue = q.queue[1:]
	delete(q.held, h.ref)
	q.probe = h
	return h
}

// lift ends the quarantine of the objects that changed since they were held: changed
// reports whether h's object is no longer as it was rejected.
func (q *quarantine) lift(changed func(*hold) bool) []*hold {
	q.mu.Lock()
	defer q.mu.Unlock()
	defer q.update()
	var lifted []*hold
	for ref, h := range q.held {
		if changed(h) {
			delete(q.held, ref)
			q.queue = slices.DeleteFunc(q.queue, func(x *hold) bool { return x == h })
			lifted = append(lifted, h)
		}
	}
	slices.SortFunc(lifted, func(a, b *hold) int { return compareRefs(a.ref, b.ref) })
	return lifted
}

// view returns the held objects, for a build.
func (q *quarantine) view() map[ObjectRef]*hold {
	q.mu.Lock()
	defer q.mu.Unlock()
	return maps.Clone(q.held)
}

func (q *quarantine) update() { q.wantAcks.Store(q.probe != nil || len(q.queue) > 0) }

// suspects returns the objects whose contribution to part differs between ok and bad,
// sorted. With no ok (the proxy never accepted this part), every object that contributes
// to it in bad is a suspect.
func suspects(part mesh.ConfigPart, ok, bad *mesh.Snapshot) []ObjectRef {
	var out []ObjectRef
	if part == mesh.RoutesPart {
		okRules, badRules := rulesByRoute(ok), rulesByRoute(bad)
		for key, rules := range badRules {
			if !reflect.DeepEqual(rules, okRules[key]) {
				ns, name := mesh.SplitKey(key)
				out = append(out, ObjectRef{KindHTTPRoute, ns, name})
			}
		}
	}
	if bad != nil {
		for _, s := range bad.Services {
			var before mesh.Policy
			if o := ok.Service(s.Namespace, s.Name); o != nil {
				before = o.Policy
			}
			if policyPart(part, s.Policy) != policyPart(part, before) {
				out = append(out, ObjectRef{KindService, s.Namespace, s.Name})
			}
		}
	}
	slices.SortFunc(out, compareRefs)
	return out
}

// rulesByRoute groups a snapshot's route rules by HTTPRoute.
func rulesByRoute(s *mesh.Snapshot) map[string][]mesh.RouteRule {
	out := map[string][]mesh.RouteRule{}
	if s == nil {
		return out
	}
	for _, svc := range s.Services {
		for _, r := range svc.Routes {
			out[r.Route] = append(out[r.Route], r)
		}
	}
	return out
}

// policyPart is the part of a Service's policy that goes into part of the config:
// mesh-timeout sets the inbound route, the rest the Service's cluster.
func policyPart(part mesh.ConfigPart, p mesh.Policy) mesh.Policy {
	switch part {
	case mesh.RoutesPart:
		return mesh.Policy{Timeout: p.Timeout}
	case mesh.ClustersPart:
		p.Timeout = 0
		return p
	}
	return mesh.Policy{}
}

// withPolicyPart returns p with the fields of part taken from from.
func withPolicyPart(part mesh.ConfigPart, p, from mesh.Policy) mesh.Policy {
	switch part {
	case mesh.RoutesPart:
		p.Timeout = from.Timeout
	case mesh.ClustersPart:
		from.Timeout = p.Timeout
		p = from
	}
	return p
}

// contains reports whether snap holds h's object as it was rejected.
func contains(snap *mesh.Snapshot, h *hold) bool {
	switch h.ref.Kind {
	case KindHTTPRoute:
		return contributes(snap, h)
	case KindService:
		s := snap.Service(h.ref.Namespace, h.ref.Name)
		return s != nil && policyPart(h.part, s.Policy) == policyPart(h.part, h.rejected)
	}
	return false
}

// contributes reports whether h's object is in snap at all.
func contributes(snap *mesh.Snapshot, h *hold) bool {
	switch h.ref.Kind {
	case KindHTTPRoute:
		key := h.ref.Namespace + "/" + h.ref.Name
		for _, s := range snap.Services {
			for _, r := range s.Routes {
				if r.Route == key {
					return true
				}
			}
		}
	case KindService:
		return snap.Service(h.ref.Namespace, h.ref.Name) != nil
	}
	return false
}

// rejectedMessage is what a quarantined object's status or Event says.
func rejectedMessage(h *hold) string {
	what := "route"
	if h.ref.Kind == KindService {
		what = "Service's mesh annotations (" + h.part.String() + "); the last good policy stays in force"
	}
	return fmt.Sprintf("Envoy rejected the configuration built from this %s: %s", what, truncate(h.message, 512))
}

// Rejected tells discovery that a proxy rejected the part of its config built from
// rejected, having last accepted the one built from accepted (nil if it never accepted
// one). The suspects are held out of the next snapshots; see the quarantine notes above.
// It is safe to call from any goroutine.
func (d *Discovery) Rejected(part mesh.ConfigPart, accepted, rejected *mesh.Snapshot, message string) {
	v := d.quarantine.reject(part, accepted, rejected, message, d.describe)
	if len(v.confirmed)+len(v.suspected) == 0 && v.readmit == nil {
		d.log.Debug("NACK names no new suspect", "part", part, "message", message)
	}
	d.applyVerdict(v)
}

// Accepted tells discovery that a proxy accepted the part of its config built from snap.
// Only needed while WantsAcks says so.
func (d *Discovery) Accepted(part mesh.ConfigPart, snap *mesh.Snapshot) {
	d.applyVerdict(d.quarantine.accept(part, snap))
}

// WantsAcks reports whether Accepted has anything to do: suspects are being re-admitted.
func (d *Discovery) WantsAcks() bool { return d.quarantine.wantAcks.Load() }

// describe records what the object looks like now, so that a change lifts its hold.
func (d *Discovery) describe(h *hold) {
	switch h.ref.Kind {
	case KindHTTPRoute:
		if d.routes != nil {
			if rt, err := d.routes.HTTPRoutes(h.ref.Namespace).Get(h.ref.Name); err == nil {
				h.exists, h.generation = true, rt.Generation
			}
		}
	case KindService:
		if svc, err := d.services.Services(h.ref.Namespace).Get(h.ref.Name); err == nil {
			h.exists, h.annotations = true, meshAnnotations(svc.Annotations)
		}
	}
}

// liftQuarantines ends the quarantine of the objects that changed since (deleted ones
// included: a Service created again under the same name starts afresh).
func (d *Discovery) liftQuarantines() {
	lifted := d.quarantine.lift(func(h *hold) bool {
		now := &hold{ref: h.ref}
		d.describe(now)
		return now.exists != h.exists || now.generation != h.generation || !maps.Equal(now.annotations, h.annotations)
	})
	for _, h := range lifted {
		d.log.Info("quarantine lifted: the object changed", "object", h.ref.String())
	}
	if len(lifted) > 0 {
		d.metrics.quarantined.Set(float64(len(d.quarantine.view())))
	}
}

// applyVerdict logs what the quarantine decided, once per decision, counts it, and asks
// for a new snapshot when the config must change.
func (d *Discovery) applyVerdict(v verdict) {
	for _, h := range v.confirmed {
		d.metrics.quarantines.WithLabelValues(h.ref.Kind).Inc()
		d.log.Warn("quarantined: proxies rejected the config built from this object; it is left out until it changes",
			"object", h.ref.String(), "part", h.part, "error", truncate(h.message, 512))
	}
	for _, h := range v.suspected {
		d.log.Warn("suspect held back: proxies rejected a config this object changed; it is re-admitted once the mesh converges",
			"object", h.ref.String(), "part", h.part)
	}
	if h := v.innocent; h != nil {
		d.log.Info("suspect re-admitted: proxies accepted it", "object", h.ref.String())
	}
	if h := v.readmit; h != nil {
		d.log.Info("suspect re-admitted for a trial", "object", h.ref.String())
	}
	if v.changed() {
		d.metrics.quarantined.Set(float64(len(d.quarantine.view())))
		d.markDirty(time.Now())
	}
}
