package discovery

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
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
