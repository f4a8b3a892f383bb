package discovery

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// BenchmarkBuild builds the snapshot of 50 namespaces of 20 meshed Services with 3 pods
// each (3000 endpoints): the work every burst of changes costs.
func BenchmarkBuild(b *testing.B) {
	newIndexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, slices, pods, nss := newIndexer(), newIndexer(), newIndexer(), newIndexer()
	for n := range 50 {
		ns := fmt.Sprintf("ns-%d", n)
		if err := nss.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			b.Fatal(err)
		}
		for s := range 20 {
			name := fmt.Sprintf("svc-%d", s)
			if err := svcs.Add(service(ns, name, meshed)); err != nil {
				b.Fatal(err)
			}
			var eps []discoveryv1.Endpoint
			for p := range 3 {
				pn := fmt.Sprintf("%s-%d", name, p)
				ip := fmt.Sprintf("10.%d.%d.%d", n, s, p+1)
				eps = append(eps, endpoint(ip, pn))
				if err := pods.Add(withServiceAccount(pod(ns, pn, ip, map[string]string{"app": name}), name)); err != nil {
					b.Fatal(err)
				}
			}
			if err := slices.Add(endpointSlice(ns, name+"-x", name, discoveryv1.AddressTypeIPv4, eps...)); err != nil {
				b.Fatal(err)
			}
		}
	}
	sl, el, pl := corelisters.NewServiceLister(svcs), discoverylisters.NewEndpointSliceLister(slices), corelisters.NewPodLister(pods)
	opts := &buildOptions{namespaces: corelisters.NewNamespaceLister(nss)}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := build(sl, el, pl, nil, opts); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBuildPerChange is the cost of one endpoint change: one EndpointSlice of one
// Service updated (an endpoint turns ready or not ready), then the snapshot built, in
// meshes of S meshed Services of 3 pods each, 100 Services to a namespace, without
// diagnostics. "full" rebuilds every Service from the listers, as every build did before
// incremental builds; "full-after-build" is the same by a builder that built before, as
// the worker's full builds are (it shares what came out the same with the last build);
// "incremental" is what the worker does for such a change: the handlers'
// attribution (touchedServices) and a build that recomputes the touched Service only
// (incremental.go). "service-add-or-delete" is the same for a Service created or
// deleted.
func BenchmarkBuildPerChange(b *testing.B) {
	for _, s := range []int{1000, 5000, 10000} {
		svcs, slices, pods, nss := benchMesh(b, s, 100)
		sl, el, pl := corelisters.NewServiceLister(svcs), discoverylisters.NewEndpointSliceLister(slices), corelisters.NewPodLister(pods)
		opts := &buildOptions{namespaces: corelisters.NewNamespaceLister(nss)}
		// change updates the slice of a Service in the middle of the mesh, as the
		// informer's cache would before the handler runs, and returns the old and new.
		n := 0
		change := func() (oldObj, obj any) {
			n++
			cur, _, _ := slices.GetByKey(fmt.Sprintf("ns-%d/svc-%d-x", s/200, 50))
			old := cur.(*discoveryv1.EndpointSlice)
			sl := old.DeepCopy()
			ready := n%2 == 0
			sl.Endpoints[0].Conditions.Ready = &ready
			sl.ResourceVersion = fmt.Sprint(n + 1)
			if err := slices.Update(sl); err != nil {
				b.Fatal(err)
			}
			return old, sl
		}
		b.Run(fmt.Sprintf("S=%d/full", s), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				change()
				if _, _, err := build(sl, el, pl, nil, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("S=%d/full-after-build", s), func(b *testing.B) {
			// A full build by the worker's builder (a Service event): it compares each
			// Service with the last build's to share what did not change.
			var bl builder
			if _, _, err := bl.build(nil, sl, el, pl, nil, opts); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				change()
				if _, _, err := bl.build(nil, sl, el, pl, nil, opts); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("S=%d/incremental", s), func(b *testing.B) {
			var bl builder
			if _, _, err := bl.build(nil, sl, el, pl, nil, opts); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				oldObj, obj := change()
				buildChange(b, &bl, kindEndpointSlice, oldObj, obj, sl, slices, el, pl, opts)
			}
		})
		b.Run(fmt.Sprintf("S=%d/service-add-or-delete", s), func(b *testing.B) {
			// A meshed Service created, then deleted, in turns, in the middle of the
			// mesh; it selects the pods of another Service. Incremental since Service
			// events are (it was a full build).
			var bl builder
			if _, _, err := bl.build(nil, sl, el, pl, nil, opts); err != nil {
				b.Fatal(err)
			}
			ns := fmt.Sprintf("ns-%d", s/200)
			extra := service(ns, "extra", meshed, withSelector(map[string]string{"app": "svc-50"}))
			b.ReportAllocs()
			for b.Loop() {
				if _, exists, _ := svcs.Get(extra); exists {
					if err := svcs.Delete(extra); err != nil {
						b.Fatal(err)
					}
				} else if err := svcs.Add(extra); err != nil {
					b.Fatal(err)
				}
				buildChange(b, &bl, kindService, nil, extra, sl, slices, el, pl, opts)
			}
		})
	}
}

// buildChange is what the worker does for one event: the handler's attribution
// (touchedServices), then an incremental build of the Services it names.
func buildChange(b *testing.B, bl *builder, kind string, oldObj, obj any, sl corelisters.ServiceLister, sliceIdx cache.Indexer,
	el discoverylisters.EndpointSliceLister, pl corelisters.PodLister, opts *buildOptions) {
	keys, ok := touchedServices(sl, sliceIdx, kind, oldObj, obj)
	if !ok || len(keys) == 0 {
		b.Fatalf("change not attributed: %v", keys)
	}
	dirty := map[string]bool{}
	for _, k := range keys {
		dirty[k] = true
	}
	if _, _, err := bl.build(dirty, sl, el, pl, nil, opts); err != nil {
		b.Fatal(err)
	}
	if bl.wasFull {
		b.Fatal("a full build")
	}
}

// benchMesh fills indexers with s meshed Services of 3 pods each, perNS to a namespace,
// each with one EndpointSlice; the slices are indexed by pod, as the informer's are.
func benchMesh(b *testing.B, s, perNS int) (svcs, slices, pods, nss cache.Indexer) {
	b.Helper()
	newIndexer := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, pods, nss = newIndexer(), newIndexer(), newIndexer()
	slices = cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc, podIndex: slicePods})
	for i := range s {
		n, k := i/perNS, i%perNS
		ns, name := fmt.Sprintf("ns-%d", n), fmt.Sprintf("svc-%d", k)
		if k == 0 {
			if err := nss.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
				b.Fatal(err)
			}
		}
		// A healthy mesh: the targetPort is the sidecar's, so no Service has a
		// diagnostic (each diagnostic is copied into every snapshot).
		port := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(mesh.InboundPort), Protocol: corev1.ProtocolTCP}
		if err := svcs.Add(service(ns, name, meshed, withPorts(port))); err != nil {
			b.Fatal(err)
		}
		var eps []discoveryv1.Endpoint
		for p := range 3 {
			pn := fmt.Sprintf("%s-%d", name, p)
			ip := fmt.Sprintf("10.%d.%d.%d", n/256, n%256, k*3+p+1)
			eps = append(eps, endpoint(ip, pn))
			if err := pods.Add(withServiceAccount(pod(ns, pn, ip, map[string]string{"app": name}), name)); err != nil {
				b.Fatal(err)
			}
		}
		if err := slices.Add(endpointSlice(ns, name+"-x", name, discoveryv1.AddressTypeIPv4, eps...)); err != nil {
			b.Fatal(err)
		}
	}
	return svcs, slices, pods, nss
}
