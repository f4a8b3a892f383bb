package discovery

import (
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"
)

// The informers watch every Pod, Service and EndpointSlice of the cluster, and in a big
// cluster most of them have nothing to do with the mesh: a rollout of an unmeshed
// Deployment, a Job's pods, the endpoints of kube-dns. ignorable tells the handlers which
// events cannot change the snapshot, so that they cost no build.
//
// The rule that keeps this safe: an event is ignored only when the objects the cache now
// holds, read by the next build, give the same snapshot as before. The object itself is
// in the cache either way (the informer stores it before it calls the handlers), so if
// the other side changes later (a Service becomes meshed, its selector or its slices
// change), that change is an event of its own, its build reads the cache, and finds the
// ignored objects there. Deciding with the listers of other kinds, which an informer of
// another kind updates on its own schedule, is safe for the same reason: whichever of
// the two events comes last sees both objects and, if they matter together, builds.

// podIndex indexes EndpointSlices by the pods their endpoints name ("namespace/name"),
// so that a Pod event can ask whether a meshed Service's slice names the pod.
const podIndex = "pod"

// slicePods is the podIndex function.
func slicePods(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	var keys []string
	for _, ep := range sl.Endpoints {
		if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.Name != "" {
			keys = append(keys, sl.Namespace+"/"+ep.TargetRef.Name)
		}
	}
	return keys, nil
}

// ignorable reports whether an event cannot change the mesh. oldObj is nil except for
// updates; obj is the new state (the last known one for a delete), tombstones unwrapped
// (nil when the tombstone held nothing, which is never ignored).
func (d *Discovery) ignorable(kind, event string, oldObj, obj any) bool {
	if obj == nil {
		return false
	}
	if event == eventUpdate && sameKept(oldObj, obj) {
		// Only the resourceVersion or fields the transforms dropped changed (a Pod's
		// status conditions, an annotation other than mesh-*): the cache holds the same.
		return true
	}
	switch kind {
	case kindPod:
		// A pod is in the mesh only through a meshed Service: its selector, or, for a
		// Service without one, an EndpointSlice that names the pod (for its
		// ServiceAccount). Its old labels count too: a pod that leaves a Service
		// changes the Service.
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return false
		}
		if d.podMatters(p) {
			return false
		}
		if o, ok := oldObj.(*corev1.Pod); ok && d.podMatters(o) {
			return false
		}
		return true
	case kindEndpointSlice:
		// build reads a slice only as the slice of the meshed Service its
		// kubernetes.io/service-name label names.
		sl, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok {
			return false
		}
		if d.sliceMatters(sl) {
			return false
		}
		if o, ok := oldObj.(*discoveryv1.EndpointSlice); ok && d.sliceMatters(o) {
			return false
		}
		return true
	case kindService:
		// An unmeshed Service is in no snapshot. Its creation and deletion still
		// count: an AuthorizationPolicy that targets it says whether it exists.
		if event != eventUpdate {
			return false
		}
		o, ok1 := oldObj.(*corev1.Service)
		n, ok2 := obj.(*corev1.Service)
		return ok1 && ok2 && !isMeshed(o) && !isMeshed(n)
	case kindNamespace:
		// A Namespace matters only through its mesh-mtls annotation (the cache holds
		// nothing else of it).
		return event == eventUpdate && sameNamespaceMTLS(oldObj, obj)
	}
	return false
}

func isMeshed(svc *corev1.Service) bool {
	return meshedSelector.Matches(labels.Set(svc.Labels))
}

// podMatters reports whether a meshed Service in the pod's namespace selects the pod,
// or has an EndpointSlice that names it.
func (d *Discovery) podMatters(p *corev1.Pod) bool {
	svcs, err := d.services.Services(p.Namespace).List(meshedSelector)
	if err != nil {
		return true
	}
	set := labels.Set(p.Labels)
	for _, svc := range svcs {
		// An empty selector selects nothing (build reads such a Service's slices).
		if len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(set) {
			return true
		}
	}
	naming, err := d.sliceIndexer().ByIndex(podIndex, p.Namespace+"/"+p.Name)
	if err != nil {
		return true
	}
	for _, o := range naming {
		if sl, ok := o.(*discoveryv1.EndpointSlice); ok && d.sliceMatters(sl) {
			return true
		}
	}
	return false
}

// sliceMatters reports whether the slice's service-name label names a meshed Service.
func (d *Discovery) sliceMatters(sl *discoveryv1.EndpointSlice) bool {
	name := sl.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return false
	}
	svc, err := d.services.Services(sl.Namespace).Get(name)
	if err != nil {
		return false // no such Service (yet): its creation will build
	}
	return isMeshed(svc)
}

// sameKept reports whether two states of an object are equal but for their
// resourceVersion: with the transforms, equal in everything discovery keeps.
func sameKept(oldObj, newObj any) bool {
	o, ok1 := oldObj.(runtime.Object)
	n, ok2 := newObj.(runtime.Object)
	if !ok1 || !ok2 {
		return false
	}
	switch o.(type) {
	case *corev1.Pod, *corev1.Service, *discoveryv1.EndpointSlice:
	default:
		return false
	}
	o, n = o.DeepCopyObject(), n.DeepCopyObject()
	om, err1 := meta.Accessor(o)
	nm, err2 := meta.Accessor(n)
	if err1 != nil || err2 != nil {
		return false
	}
	om.SetResourceVersion("")
	nm.SetResourceVersion("")
	return equality.Semantic.DeepEqual(o, n)
}

// newIgnoredEvents is bearkong_discovery_events_ignored_total, with a series per kind
// created up front so that rate() sees zeros, not gaps.
func newIgnoredEvents(reg prometheus.Registerer) *prometheus.CounterVec {
	c := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bearkong_discovery_events_ignored_total",
		Help: "Kubernetes watch events discovery ignored because they cannot change the mesh (a Pod no meshed Service selects, an EndpointSlice of an unmeshed Service, an update of nothing bearkong reads), by object kind. They are also in bearkong_discovery_events_total; they cause no snapshot build.",
	}, []string{"kind"}))
	for _, kind := range []string{kindService, kindEndpointSlice, kindPod, kindNamespace} {
		c.WithLabelValues(kind)
	}
	return c
}

// sliceIndexer is the EndpointSlice informer's cache, with its podIndex.
func (d *Discovery) sliceIndexer() cache.Indexer {
	return d.factory.Discovery().V1().EndpointSlices().Informer().GetIndexer()
}
