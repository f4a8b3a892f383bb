package discovery

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// reportingController names bearkong in the Events it writes.
const reportingController = "bearkong.dev/control-plane"

// eventAction is the Event's action: what bearkong was doing when it found the problem.
const eventAction = "ApplyMeshPolicy"

// The status workqueue's per-object backoff after a failed write: exponential from
// statusRetryBase, capped at statusRetryMax, so a write the API server keeps refusing
// is retried every half minute until it lands, and one refused once is back within a
// fraction of a second.
const (
	statusRetryBase = 200 * time.Millisecond
	statusRetryMax  = 30 * time.Second
	// statusWorkers write statuses in parallel; a slow write holds up only its object.
	statusWorkers = 2
	// requestTimeout bounds each request of a status write or of the Event listing.
	requestTimeout = 10 * time.Second
)

// Values of the resource label of bearkong_kube_api_writes_total.
const (
	writeEvents         = "events"
	writeRouteStatus    = "httproutes/status"
	writePolicyStatus   = "authorizationpolicies/status"
	statusKindRoute     = "HTTPRoute"
	statusKindPolicy    = "AuthorizationPolicy"
	eventListPageLength = 500
)

// reporter tells users about what the builds found, as a controller does
// (kubernetes/sample-controller): a log line for each new diagnostic on every replica;
// and, only on the replica that leads (leader.go), a Kubernetes Event for each
// diagnostic that asks for one, through client-go's events recorder, and the HTTPRoute
// and AuthorizationPolicy statuses, through a rate-limited workqueue.
//
// What is written is what differs from the API. Statuses are compared with the informer
// caches, and again with a fresh read before each write. Events are compared with the
// Events bearkong already wrote, which a new leader lists once when its term begins:
// a diagnostic whose Event exists (same object, reason and note) is not written again,
// by this replica or the next one, across restarts. A diagnostic that persists is never
// written twice; one that goes away and comes back is a new occurrence and gets an Event.
type reporter struct {
	d        *Discovery
	client   kubernetes.Interface
	gw       gwclient.Interface
	authz    v1alpha1.Interface
	leader   *Leadership
	writes   func(resource, verb string, err error)
	statusRL workqueue.TypedRateLimiter[statusKey]

	mu sync.Mutex
	// diags are the latest snapshot's diagnostics that ask for an Event.
	diags []mesh.Diagnostic
	// routes and policies are the statuses the latest build wants, by object.
	routes   map[statusKey]routeStatus
	policies map[statusKey]policyStatus
	// The rest exists only during a term (nil between terms). reported holds the keys of
	// the current diagnostics whose Event exists or is on its way.
	recorder events.EventRecorder
	reported map[eventKey]bool
	queue    workqueue.TypedRateLimitingInterface[statusKey]
}

// statusKey names an object whose status bearkong writes.
type statusKey struct {
	Kind, Namespace, Name string
}

// eventKey identifies an Event for deduplication: the object it is about (with its UID
// when known, so a Service deleted and created again gets its own Event) and what it
// says. The object's resourceVersion is left out: an unrelated change to the object
// does not make a persisting problem new.
type eventKey struct {
	Kind, Namespace, Name string
	UID                   types.UID
	Reason, Note          string
}

func newReporter(d *Discovery, client kubernetes.Interface, gw gwclient.Interface, authz v1alpha1.Interface) *reporter {
	r := &reporter{d: d, client: client, gw: gw, authz: authz, leader: d.leadership,
		routes: map[statusKey]routeStatus{}, policies: map[statusKey]policyStatus{},
		statusRL: workqueue.NewTypedItemExponentialFailureRateLimiter[statusKey](statusRetryBase, statusRetryMax)}
	// Every series this writes, up front, so that dashboards see zeros, not gaps.
	for _, rv := range [][2]string{{writeEvents, "create"}, {writeEvents, "patch"}, {writeRouteStatus, "update"}, {writePolicyStatus, "update"}} {
		for _, result := range []string{"ok", "error"} {
			d.metrics.apiWrites.WithLabelValues(rv[0], rv[1], result)
		}
	}
	r.writes = func(resource, verb string, err error) {
		result := "ok"
		if err != nil {
			result = "error"
		}
		d.metrics.apiWrites.WithLabelValues(resource, verb, result).Inc()
	}
	return r
}

// report logs the diagnostics of next that prev did not have, and has the Events of
// next's written (if this replica leads).
func (r *reporter) report(prev, next *mesh.Snapshot) {
	r.d.metrics.diagnostics.Set(float64(len(next.Diagnostics)))
	old := map[mesh.Diagnostic]bool{}
	if prev != nil {
		for _, dg := range prev.Diagnostics {
			old[dg] = true
		}
	}
	var want []mesh.Diagnostic
	for _, dg := range next.Diagnostics {
		if dg.Event {
			want = append(want, dg)
		}
		if !old[dg] {
			r.d.log.Warn("diagnostic", "object", dg.Kind+" "+dg.Namespace+"/"+dg.Name, "reason", dg.Reason, "message", dg.Message)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.diags = want
	r.emitLocked()
}

// emitLocked records an Event for each current diagnostic not reported yet, and
// forgets the diagnostics that went away. It does nothing between terms. r.mu is held.
func (r *reporter) emitLocked() {
	if r.recorder == nil {
		return
	}
	current := make(map[eventKey]bool, len(r.diags))
	for _, dg := range r.diags {
		obj := r.regarding(dg)
		key := keyOf(dg, obj)
		current[key] = true
		if r.reported[key] {
			continue
		}
		r.reported[key] = true
		// The note is the message itself, never a format (it quotes user input).
		r.recorder.Eventf(obj, nil, corev1.EventTypeWarning, dg.Reason, eventAction, "%s", truncate(dg.Message, 1024))
	}
	for key := range r.reported {
		if !current[key] {
			delete(r.reported, key)
		}
	}
}

// regarding returns the object a diagnostic is about, from the informer cache, so that
// its Event names the object's UID and resourceVersion. An object not in the cache
// (deleted meanwhile) is named by its name alone.
func (r *reporter) regarding(dg mesh.Diagnostic) runtime.Object {
	switch dg.Kind {
	case KindService:
		if svc, err := r.d.services.Services(dg.Namespace).Get(dg.Name); err == nil {
			return svc
		}
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: dg.Namespace, Name: dg.Name}}
	case KindNamespace:
		// An Event about a cluster-scoped object lives in "default" (the recorder puts
		// it there), the only namespace with kube-system the API server accepts for it;
		// kubectl describe finds it there.
		if ns, err := r.d.namespaces.Get(dg.Name); err == nil {
			return ns
		}
		return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: dg.Name}}
	}
	// Only Services and Namespaces ask for Events today; name anything else plainly.
	return &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: dg.Kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: dg.Namespace, Name: dg.Name}}
}

func keyOf(dg mesh.Diagnostic, obj runtime.Object) eventKey {
	k := eventKey{Kind: dg.Kind, Namespace: dg.Namespace, Name: dg.Name, Reason: dg.Reason, Note: truncate(dg.Message, 1024)}
	if m, ok := obj.(metav1.Object); ok {
		k.UID = m.GetUID()
	}
	return k
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", s[:n-3])
}

// run leads, term after term, until ctx ends. Writing happens here, off the snapshot
// path, so a slow or unreachable API server never delays config.
func (r *reporter) run(ctx context.Context) {
	for {
		term, cancel := r.leader.Await(ctx)
		if term == nil {
			return
		}
		r.lead(term)
		cancel()
	}
}

// lead writes for one term: statuses at once, through the workqueue; Events once it
// knows which exist (it writes those missing); until the term ends.
func (r *reporter) lead(term context.Context) {
	queue := workqueue.NewTypedRateLimitingQueueWithConfig(r.statusRL, workqueue.TypedRateLimitingQueueConfig[statusKey]{Name: "bearkong-status"})
	var workers sync.WaitGroup
	defer func() {
		r.mu.Lock()
		r.recorder, r.reported, r.queue = nil, nil, nil
		r.mu.Unlock()
		queue.ShutDown()
		workers.Wait()
	}()
	r.mu.Lock()
	r.queue = queue
	r.enqueueLocked()
	r.mu.Unlock()
	for range statusWorkers {
		workers.Go(func() {
			for r.processNext(term, queue) {
			}
		})
	}

	existing, ok := r.listEvents(term)
	if !ok {
		return // the term ended first
	}
	broadcaster := events.NewBroadcaster(&countingSink{EventSinkImpl: events.EventSinkImpl{Interface: r.client.EventsV1()}, writes: r.writes, r: r})
	defer broadcaster.Shutdown()
	if err := broadcaster.StartRecordingToSinkWithContext(term); err != nil {
		r.d.log.Error("cannot start the Event recorder; no Events this term", "err", err)
		<-term.Done()
		return
	}
	r.mu.Lock()
	r.recorder = broadcaster.NewRecorder(scheme.Scheme, reportingController)
	r.reported = map[eventKey]bool{}
	for _, dg := range r.diags {
		key := keyOf(dg, r.regarding(dg))
		if existing.has(key) {
			r.reported[key] = true
		}
	}
	r.emitLocked()
	r.mu.Unlock()
	<-term.Done()
}

// existingEvents indexes the Events bearkong wrote by key; the UID is matched apart,
// so that an Event or a diagnostic with no UID (the object was not in the cache) still
// counts.
type existingEvents map[eventKey][]types.UID

func (e existingEvents) has(k eventKey) bool {
	uid := k.UID
	k.UID = ""
	for _, u := range e[k] {
		if u == "" || uid == "" || u == uid {
			return true
		}
	}
	return false
}

// listEvents lists the Events bearkong wrote, in every namespace, retrying with backoff
// until it gets them or the term ends (ok false): writing before knowing what exists
// would write twice. The API server selects on reportingController for events.k8s.io
// (a field label of Events: k8s.io/kubernetes pkg/apis/events/v1 AddFieldLabelConversionsForEvent
// maps it to the reportingComponent that pkg/registry/core/event ToSelectableFields
// offers); the check is repeated here all the same.
func (r *reporter) listEvents(term context.Context) (existingEvents, bool) {
	backoff := time.Second
	for {
		out, err := r.tryListEvents(term)
		if err == nil {
			r.d.log.Info("listed the Events bearkong already wrote", "events", len(out))
			return out, true
		}
		r.d.log.Warn("cannot list the Events bearkong wrote; writing none until it can", "err", err, "retry_in", backoff)
		select {
		case <-term.Done():
			return nil, false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, statusRetryMax)
	}
}

func (r *reporter) tryListEvents(ctx context.Context) (existingEvents, error) {
	out := existingEvents{}
	opts := metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("reportingController", reportingController).String(),
		Limit:         eventListPageLength,
	}
	for {
		reqCtx, cancel := context.WithTimeout(ctx, requestTimeout)
		list, err := r.client.EventsV1().Events(metav1.NamespaceAll).List(reqCtx, opts)
		cancel()
		if err != nil {
			return nil, err
		}
		for _, e := range list.Items {
			if e.ReportingController != reportingController {
				continue
			}
			k := eventKey{Kind: e.Regarding.Kind, Namespace: e.Regarding.Namespace, Name: e.Regarding.Name, Reason: e.Reason, Note: e.Note}
			out[k] = append(out[k], e.Regarding.UID)
		}
		if list.Continue == "" {
			return out, nil
		}
		opts.Continue = list.Continue
	}
}

// countingSink is client-go's events.k8s.io sink, counting each write in
// bearkong_kube_api_writes_total.
type countingSink struct {
	events.EventSinkImpl
	writes func(resource, verb string, err error)
	r      *reporter
}

func (s *countingSink) Create(ctx context.Context, e *eventsv1.Event) (*eventsv1.Event, error) {
	out, err := s.EventSinkImpl.Create(ctx, e)
	s.writes(writeEvents, "create", err)
	s.log("create", e, err)
	return out, err
}

func (s *countingSink) Update(ctx context.Context, e *eventsv1.Event) (*eventsv1.Event, error) {
	out, err := s.EventSinkImpl.Update(ctx, e)
	s.writes(writeEvents, "update", err)
	s.log("update", e, err)
	return out, err
}

func (s *countingSink) Patch(ctx context.Context, e *eventsv1.Event, data []byte) (*eventsv1.Event, error) {
	out, err := s.EventSinkImpl.Patch(ctx, e, data)
	s.writes(writeEvents, "patch", err)
	s.log("patch", e, err)
	return out, err
}

func (s *countingSink) log(verb string, e *eventsv1.Event, err error) {
	if err != nil {
		// The recorder retries transport errors (12 tries, 10 s apart); either way the
		// diagnostic stays in the log and /debug/diagnostics.
		s.r.d.log.Warn("cannot write Event", "verb", verb, "object", e.Regarding.Kind+" "+e.Regarding.Namespace+"/"+e.Regarding.Name,
			"reason", e.Reason, "err", err)
	}
}

// syncRouteStatuses takes the statuses a build wants for the routes, and queues those
// that differ from what the routes in the informer cache say. Equal statuses cost
// nothing, so a steady mesh writes nothing. A route no longer wanted (deleted) drops out.
func (r *reporter) syncRouteStatuses(want []routeStatus) {
	if r.d.routes == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.routes = make(map[statusKey]routeStatus, len(want))
	for _, st := range want {
		r.routes[statusKey{statusKindRoute, st.Namespace, st.Name}] = st
	}
	r.enqueueLocked()
}

// syncPolicyStatuses does for AuthorizationPolicies what syncRouteStatuses does for
// routes.
func (r *reporter) syncPolicyStatuses(want []policyStatus) {
	if r.d.policies == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.policies = make(map[statusKey]policyStatus, len(want))
	for _, st := range want {
		r.policies[statusKey{statusKindPolicy, st.Namespace, st.Name}] = st
	}
	r.enqueueLocked()
}

// enqueueLocked queues every wanted status the informer cache does not show yet. It
// does nothing between terms. r.mu is held.
func (r *reporter) enqueueLocked() {
	if r.queue == nil {
		return
	}
	for key, st := range r.routes {
		rt, err := r.d.routes.HTTPRoutes(st.Namespace).Get(st.Name)
		if err == nil && !sameParents(ours(rt.Status.Parents), st.Parents) {
			r.queue.Add(key)
		}
	}
	for key, st := range r.policies {
		obj, ok, err := r.d.policies.GetByKey(st.Namespace + "/" + st.Name)
		if err != nil || !ok {
			continue
		}
		if p, ok := obj.(*v1alpha1.AuthorizationPolicy); ok && !sameCondition(findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted), st.Accepted) {
			r.queue.Add(key)
		}
	}
}

// processNext writes one queued status (sample-controller's processNextWorkItem). A
// write that fails for any reason is queued again with the object's backoff, until it
// lands; one that lands, or is no longer wanted, resets the backoff.
func (r *reporter) processNext(ctx context.Context, q workqueue.TypedRateLimitingInterface[statusKey]) bool {
	key, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(key)
	if err := r.writeStatus(ctx, key); err != nil {
		if ctx.Err() != nil {
			return true // the term ended: the next leader writes it
		}
		r.d.log.Warn("cannot write status; retrying with backoff", "kind", key.Kind, "object", key.Namespace+"/"+key.Name,
			"failures", q.NumRequeues(key)+1, "err", err)
		q.AddRateLimited(key)
		return true
	}
	q.Forget(key)
	return true
}

// writeStatus writes the status the latest build wants for key, if any.
func (r *reporter) writeStatus(ctx context.Context, key statusKey) error {
	r.mu.Lock()
	route, isRoute := r.routes[key]
	policy, isPolicy := r.policies[key]
	r.mu.Unlock()
	switch {
	case isRoute:
		return r.writeRouteStatus(ctx, route)
	case isPolicy:
		return r.writePolicyStatus(ctx, policy)
	}
	return nil // deleted, or no longer bearkong's
}

// ours returns the parent statuses bearkong wrote.
func ours(parents []gwv1.RouteParentStatus) []gwv1.RouteParentStatus {
	var out []gwv1.RouteParentStatus
	for _, p := range parents {
		if p.ControllerName == ControllerName {
			out = append(out, p)
		}
	}
	return out
}

// sameParents compares written statuses with wanted ones, ignoring transition times.
func sameParents(have []gwv1.RouteParentStatus, want []parentStatus) bool {
	if len(have) != len(want) {
		return false
	}
	for i, w := range want {
		h := have[i]
		if !reflect.DeepEqual(h.ParentRef, w.Ref) || len(h.Conditions) != 2 {
			return false
		}
		for j, c := range []metav1.Condition{w.Accepted, w.Resolved} {
			hc := h.Conditions[j]
			if hc.Type != c.Type || hc.Status != c.Status || hc.Reason != c.Reason || hc.Message != c.Message || hc.ObservedGeneration != c.ObservedGeneration {
				return false
			}
		}
	}
	return true
}

// writeRouteStatus replaces bearkong's parent statuses on one route, keeping the other
// controllers' entries, and each condition's transition time while its status holds.
// Each try reads the route afresh; a conflict (the route changed since) tries again at
// once (retry.RetryOnConflict), any other error goes back to the queue. A route that is
// gone, or already says what is wanted, needs no write.
func (r *reporter) writeRouteStatus(ctx context.Context, st routeStatus) error {
	routes := r.gw.GatewayV1().HTTPRoutes(st.Namespace)
	written := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		rt, err := routes.Get(ctx, st.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		old := ours(rt.Status.Parents)
		if sameParents(old, st.Parents) {
			return nil
		}
		var parents []gwv1.RouteParentStatus
		for _, p := range rt.Status.Parents {
			if p.ControllerName != ControllerName {
				parents = append(parents, p)
			}
		}
		now := metav1.NewTime(time.Now())
		for _, p := range st.Parents {
			conds := []metav1.Condition{p.Accepted, p.Resolved}
			for i := range conds {
				conds[i].LastTransitionTime = now
				for _, o := range old {
					if !reflect.DeepEqual(o.ParentRef, p.Ref) {
						continue
					}
					for _, oc := range o.Conditions {
						if oc.Type == conds[i].Type && oc.Status == conds[i].Status {
							conds[i].LastTransitionTime = oc.LastTransitionTime
						}
					}
				}
			}
			parents = append(parents, gwv1.RouteParentStatus{ParentRef: p.Ref, ControllerName: ControllerName, Conditions: conds})
		}
		rt.Status.Parents = parents
		_, err = routes.UpdateStatus(ctx, rt, metav1.UpdateOptions{})
		r.writes(writeRouteStatus, "update", err)
		written = err == nil
		return err
	})
	switch {
	case apierrors.IsNotFound(err):
		return nil // deleted meanwhile: nothing to report on
	case err != nil:
		return err
	case written:
		r.d.log.Info("HTTPRoute status written", "route", st.Namespace+"/"+st.Name)
	}
	return nil
}

func findCondition(conds []metav1.Condition, typ string) *metav1.Condition {
	for i := range conds {
		if conds[i].Type == typ {
			return &conds[i]
		}
	}
	return nil
}

// sameCondition compares a written condition with a wanted one, ignoring the
// transition time.
func sameCondition(have *metav1.Condition, want metav1.Condition) bool {
	return have != nil && have.Status == want.Status && have.Reason == want.Reason &&
		have.Message == want.Message && have.ObservedGeneration == want.ObservedGeneration
}

// writePolicyStatus sets the Accepted condition of one policy, keeping its transition
// time while its status holds and any other condition as it is, the way
// writeRouteStatus writes a route's.
func (r *reporter) writePolicyStatus(ctx context.Context, st policyStatus) error {
	policies := r.authz.AuthorizationPolicies(st.Namespace)
	written := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		p, err := policies.Get(ctx, st.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		old := findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		if sameCondition(old, st.Accepted) {
			return nil
		}
		c := st.Accepted
		c.LastTransitionTime = metav1.NewTime(time.Now())
		if old != nil && old.Status == c.Status {
			c.LastTransitionTime = old.LastTransitionTime
		}
		if old != nil {
			*old = c
		} else {
			p.Status.Conditions = append(p.Status.Conditions, c)
		}
		_, err = policies.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		r.writes(writePolicyStatus, "update", err)
		written = err == nil
		return err
	})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	case written:
		r.d.log.Info("AuthorizationPolicy status written", "policy", st.Namespace+"/"+st.Name,
			"accepted", st.Accepted.Status, "reason", st.Accepted.Reason)
	}
	return nil
}
