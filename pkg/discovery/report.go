package discovery

import (
	"context"
	"fmt"
	"os"
	"reflect"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// reportingController names bearkong in the Events it writes.
const reportingController = "bearkong.dev/control-plane"

// reporter tells users about diagnostics: a log line for each new one, and a Kubernetes
// Event on the object for those that ask for it. It only reports what is new since the
// last published snapshot, so a steady mesh writes nothing to the API.
type reporter struct {
	d        *Discovery
	client   kubernetes.Interface
	gw       gwclient.Interface
	authz    v1alpha1.Interface
	instance string
	queue    chan mesh.Diagnostic

	// statuses holds the route statuses to write, by "namespace/name"; the newest wins.
	mu       sync.Mutex
	statuses map[string]routeStatus
	// policyStatuses holds the AuthorizationPolicy statuses to write, the same way.
	policyStatuses map[string]policyStatus
	kick           chan struct{}
}

func newReporter(d *Discovery, client kubernetes.Interface, gw gwclient.Interface, authz v1alpha1.Interface) *reporter {
	instance, err := os.Hostname()
	if err != nil || instance == "" {
		instance = "bearkong"
	}
	return &reporter{d: d, client: client, gw: gw, authz: authz, instance: instance, queue: make(chan mesh.Diagnostic, 256),
		statuses: map[string]routeStatus{}, policyStatuses: map[string]policyStatus{}, kick: make(chan struct{}, 1)}
}

// report logs and queues the diagnostics of next that prev did not have.
func (r *reporter) report(prev, next *mesh.Snapshot) {
	r.d.metrics.diagnostics.Set(float64(len(next.Diagnostics)))
	old := map[mesh.Diagnostic]bool{}
	if prev != nil {
		for _, dg := range prev.Diagnostics {
			old[dg] = true
		}
	}
	for _, dg := range next.Diagnostics {
		if old[dg] {
			continue
		}
		r.d.log.Warn("diagnostic", "object", dg.Kind+" "+dg.Namespace+"/"+dg.Name, "reason", dg.Reason, "message", dg.Message)
		if !dg.Event {
			continue
		}
		select {
		case r.queue <- dg:
		default:
			r.d.log.Warn("too many diagnostics at once; not writing an Event for this one", "object", dg.Namespace+"/"+dg.Name, "reason", dg.Reason)
		}
	}
}

// run writes the queued Events until ctx ends. Writing happens here, off the snapshot
// path, so a slow or unreachable API server never delays config.
func (r *reporter) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case dg := <-r.queue:
			r.writeEvent(ctx, dg)
		case <-r.kick:
			r.mu.Lock()
			pending := r.statuses
			r.statuses = map[string]routeStatus{}
			pendingPolicies := r.policyStatuses
			r.policyStatuses = map[string]policyStatus{}
			r.mu.Unlock()
			for _, st := range pending {
				r.writeRouteStatus(ctx, st)
			}
			for _, st := range pendingPolicies {
				r.writePolicyStatus(ctx, st)
			}
		}
	}
}

func (r *reporter) writeEvent(ctx context.Context, dg mesh.Diagnostic) {
	regarding := corev1.ObjectReference{APIVersion: "v1", Kind: dg.Kind, Namespace: dg.Namespace, Name: dg.Name}
	// An Event lives in its object's namespace; one about a cluster-scoped object, such
	// as a Namespace, lives in "default", the only namespace (with kube-system) the API
	// server accepts for it. kubectl describe finds it there.
	eventNS := dg.Namespace
	switch dg.Kind {
	case KindService:
		if svc, err := r.d.services.Services(dg.Namespace).Get(dg.Name); err == nil {
			regarding.UID = svc.UID
			regarding.ResourceVersion = svc.ResourceVersion
		}
	case KindNamespace:
		eventNS = metav1.NamespaceDefault
		if ns, err := r.d.namespaces.Get(dg.Name); err == nil {
			regarding.UID = ns.UID
			regarding.ResourceVersion = ns.ResourceVersion
		}
	}
	ev := &eventsv1.Event{
		// A name of the object's and a unique suffix, as client-go's recorders do.
		ObjectMeta:          metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", dg.Name, time.Now().UnixNano()), Namespace: eventNS},
		EventTime:           metav1.NewMicroTime(time.Now()),
		ReportingController: reportingController,
		ReportingInstance:   r.instance,
		Action:              "ApplyMeshPolicy",
		Reason:              dg.Reason,
		Regarding:           regarding,
		Note:                truncate(dg.Message, 1024),
		Type:                corev1.EventTypeWarning,
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := r.client.EventsV1().Events(eventNS).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		r.d.metrics.apiWrites.WithLabelValues("events", "create", "error").Inc()
		r.d.log.Warn("cannot write Event; the diagnostic is still in the log and /debug/diagnostics",
			"object", dg.Namespace+"/"+dg.Name, "reason", dg.Reason, "err", err)
		return
	}
	r.d.metrics.apiWrites.WithLabelValues("events", "create", "ok").Inc()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s...", s[:n-3])
}

// syncRouteStatuses queues the statuses that differ from what the routes in the
// informer cache say. Equal statuses cost nothing, so a steady mesh writes nothing.
func (r *reporter) syncRouteStatuses(want []routeStatus) {
	if r.d.routes == nil {
		return
	}
	queued := false
	for _, st := range want {
		rt, err := r.d.routes.HTTPRoutes(st.Namespace).Get(st.Name)
		if err != nil || sameParents(ours(rt.Status.Parents), st.Parents) {
			continue
		}
		r.mu.Lock()
		r.statuses[st.Namespace+"/"+st.Name] = st
		r.mu.Unlock()
		queued = true
	}
	if queued {
		r.wake()
	}
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
func (r *reporter) writeRouteStatus(ctx context.Context, st routeStatus) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	routes := r.gw.GatewayV1().HTTPRoutes(st.Namespace)
	rt, err := routes.Get(ctx, st.Name, metav1.GetOptions{})
	if err != nil {
		return // deleted meanwhile, or the API is away: the next build tries again
	}
	if sameParents(ours(rt.Status.Parents), st.Parents) {
		return
	}
	old := ours(rt.Status.Parents)
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
	if _, err := routes.UpdateStatus(ctx, rt, metav1.UpdateOptions{}); err != nil {
		r.d.metrics.apiWrites.WithLabelValues("httproutes/status", "update", "error").Inc()
		r.d.log.Warn("cannot write HTTPRoute status", "route", st.Namespace+"/"+st.Name, "err", err)
		return
	}
	r.d.metrics.apiWrites.WithLabelValues("httproutes/status", "update", "ok").Inc()
	r.d.log.Info("HTTPRoute status written", "route", st.Namespace+"/"+st.Name)
}

// syncPolicyStatuses queues the Accepted conditions that differ from what the policies
// in the informer cache say, as syncRouteStatuses does for routes.
func (r *reporter) syncPolicyStatuses(want []policyStatus) {
	if r.d.policies == nil {
		return
	}
	queued := false
	for _, st := range want {
		obj, ok, err := r.d.policies.GetByKey(st.Namespace + "/" + st.Name)
		if err != nil || !ok {
			continue
		}
		p, ok := obj.(*v1alpha1.AuthorizationPolicy)
		if !ok || sameCondition(findCondition(p.Status.Conditions, v1alpha1.ConditionAccepted), st.Accepted) {
			continue
		}
		r.mu.Lock()
		r.policyStatuses[st.Namespace+"/"+st.Name] = st
		r.mu.Unlock()
		queued = true
	}
	if queued {
		r.wake()
	}
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
// time while its status holds and any other condition as it is. A conflict (the policy
// changed since it was read) is retried on a fresh read; if the spec changed, the next
// build brings a condition of the new generation anyway.
func (r *reporter) writePolicyStatus(ctx context.Context, st policyStatus) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	policies := r.authz.AuthorizationPolicies(st.Namespace)
	written := false
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
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
		written = err == nil
		return err
	})
	switch {
	case apierrors.IsNotFound(err):
		// Deleted meanwhile: nothing to report on.
	case err != nil:
		// The API is away, or bearkong may not write: the next build tries again.
		r.d.metrics.apiWrites.WithLabelValues("authorizationpolicies/status", "update", "error").Inc()
		r.d.log.Warn("cannot write AuthorizationPolicy status", "policy", st.Namespace+"/"+st.Name, "err", err)
	case written:
		r.d.metrics.apiWrites.WithLabelValues("authorizationpolicies/status", "update", "ok").Inc()
		r.d.log.Info("AuthorizationPolicy status written", "policy", st.Namespace+"/"+st.Name,
			"accepted", st.Accepted.Status, "reason", st.Accepted.Reason)
	}
}

// wake tells the writer goroutine that statuses are queued; a wake-up already pending
// covers them.
func (r *reporter) wake() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}
