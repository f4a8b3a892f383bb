package discovery

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/apis/bearkong/v1alpha1"
	"github.com/bearkong/bearkong/pkg/mesh"
)

// Incremental builds. In a mesh of thousands of Services most events are endpoint and
// pod changes of one Service, and rebuilding every Service from the listers for each
// made one change cost time in proportion to the whole mesh. So the handlers record
// which Services an event touches (touchedServices), and the next build recomputes only
// those (builder.build with a dirty set), reusing the other Services' parts of the last
// build. Everything that depends on more than one Service (the Proxies map, the
// mesh-timeout and mTLS conflicts between Services that share pods, HTTPRoutes and
// AuthorizationPolicies) is still computed from all the parts on every build; it reads
// no lister but the routes' and the policies'.
//
// Every kind of event is attributed: a Service added or deleted touches that Service
// alone (at S=10,000 a full build for one Service cost 0.7 CPU-seconds, and a new
// Service took 1.1 s to reach the proxies); a Namespace, its Services. Only a tombstone
// without an object and a quarantine decision make the next build a full one, and so do
// the first build and one every fullBuildEvery, as a safety net.

// fullBuildEvery bounds the time between full builds.
const fullBuildEvery = 5 * time.Minute

// touchedServices returns the keys ("namespace/name") of the Services whose part of the
// snapshot an event may change, or ok false when it cannot say, which calls for a full
// build. It reads the Service lister and the EndpointSlice cache (with its podIndex) as
// they are when the handler runs, which is safe for the reason filter.go gives: a part
// depends on a Service, its slices and its pods, and whichever of their events comes
// last finds the others in the caches and names the Service.
//
//   - An EndpointSlice touches the Service its kubernetes.io/service-name label names,
//     before and after the change (build reads a Service's slices by that label).
//   - A Pod touches the meshed Services of its namespace whose selector matches its old
//     or new labels (their proxies and named target ports), and the Services whose
//     slices name the pod (their ServiceAccounts, endpointServiceAccounts).
//   - A Service's event touches that Service.
//   - A Namespace's touches the Namespace (its name, no slash), and through it each of
//     its meshed Services.
//   - An HTTPRoute's or an AuthorizationPolicy's touches none: what they change is
//     computed on every build.
func touchedServices(services corelisters.ServiceLister, sliceIdx cache.Indexer, kind string, oldObj, obj any) (keys []string, ok bool) {
	if obj == nil {
		return nil, false // a tombstone without an object: nothing to attribute
	}
	switch kind {
	case kindEndpointSlice:
		for _, o := range []any{oldObj, obj} {
			if o == nil {
				continue
			}
			sl, isSlice := o.(*discoveryv1.EndpointSlice)
			if !isSlice {
				return nil, false
			}
			if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
				keys = append(keys, sl.Namespace+"/"+name)
			}
		}
		return keys, true
	case kindPod:
		for _, o := range []any{oldObj, obj} {
			if o == nil {
				continue
			}
			p, isPod := o.(*corev1.Pod)
			if !isPod {
				return nil, false
			}
			svcs, err := services.Services(p.Namespace).List(meshedSelector)
			if err != nil {
				return nil, false
			}
			set := labels.Set(p.Labels)
			for _, svc := range svcs {
				if len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(set) {
					keys = append(keys, svc.Namespace+"/"+svc.Name)
				}
			}
			naming, err := sliceIdx.ByIndex(podIndex, p.Namespace+"/"+p.Name)
			if err != nil {
				return nil, false
			}
			for _, s := range naming {
				sl, isSlice := s.(*discoveryv1.EndpointSlice)
				if !isSlice {
					return nil, false
				}
				if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
					keys = append(keys, sl.Namespace+"/"+name)
				}
			}
		}
		return keys, true
	case kindService:
		// A Service touches its own part, whatever the event: added, deleted, updated,
		// joining or leaving the mesh (builder.update adds or drops the part as the
		// lister has it). Its ports, selector (the pods of its part), annotations and
		// ServiceAccounts are read there; what spans Services (pods shared with others,
		// HTTPRoutes, AuthorizationPolicies, conflicts) is computed again from the parts
		// on every build, and an unmeshed Service, in no part, matters only to those.
		svc, isSvc := obj.(*corev1.Service)
		if !isSvc {
			return nil, false
		}
		if o, isSvc := oldObj.(*corev1.Service); oldObj != nil && (!isSvc || o.Namespace != svc.Namespace || o.Name != svc.Name) {
			return nil, false
		}
		return []string{svc.Namespace + "/" + svc.Name}, true
	case kindNamespace:
		// A Namespace's mesh-mtls is the mode of its Services that have none of their
		// own: its name asks builder.update to read the mode again and rebuild them.
		ns, isNS := obj.(*corev1.Namespace)
		if !isNS {
			return nil, false
		}
		return []string{ns.Name}, true
	case kindHTTPRoute, kindAuthzPolicy:
		// Read on every build from all of them (builder.snapshot's routeRules, and
		// authorize after it), on top of the parts, which they do not change: a build
		// with nothing to recompute.
		return nil, true
	}
	return nil, false
}

// ownTargets replaces, in snap, the Services the policies target with copies, before
// authorize sets their Authz: the builder shares a Service with every snapshot built
// since it last changed, and those must not change.
func ownTargets(snap *mesh.Snapshot, policies []*v1alpha1.AuthorizationPolicy) {
	copied := map[int]bool{}
	for _, p := range policies {
		i, found := sort.Find(len(snap.Services), func(i int) int {
			s := snap.Services[i]
			if c := strings.Compare(p.Namespace, s.Namespace); c != 0 {
				return c
			}
			return strings.Compare(p.Spec.TargetRef.Name, s.Name)
		})
		if found && !copied[i] {
			copied[i] = true
			c := *snap.Services[i]
			snap.Services[i] = &c
		}
	}
}

// Values of the kind label of bearkong_discovery_builds_total.
const (
	buildFull        = "full"
	buildIncremental = "incremental"
)

// newBuilds is bearkong_discovery_builds_total, with both series created up front.
func newBuilds(reg prometheus.Registerer) *prometheus.CounterVec {
	c := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "bearkong_discovery_builds_total",
		Help: "Snapshot builds attempted, by kind: full (every Service from the informer caches) or incremental (only the Services an event touched: an EndpointSlice, Pod, Service or Namespace change; none for an HTTPRoute or AuthorizationPolicy change).",
	}, []string{"kind"}))
	c.WithLabelValues(buildFull)
	c.WithLabelValues(buildIncremental)
	return c
}
