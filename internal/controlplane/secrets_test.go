package controlplane

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// stubCerts returns certificates of realistic size whose bytes depend only on their
// inputs, as pkg/ca's do within a window, without pkg/ca's own memo.
type stubCerts struct{}

func (stubCerts) Workload(namespace, serviceAccount, pod, podUID string) ([]byte, []byte, error) {
	id := namespace + "/" + serviceAccount + "/" + pod + "/" + podUID
	return bytes.Repeat([]byte(id+" chain "), 2048/len(id)), bytes.Repeat([]byte(id+" key "), 1024/len(id)), nil
}
func (stubCerts) Bundle() []byte                       { return []byte("bundle") }
func (stubCerts) NextRotation(now time.Time) time.Time { return now.Add(time.Hour) }

func liveHeap() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestSecretsOfUnknownPodsAreBounded plays clients that name pods the snapshot does not
// know: their workload sets must not accumulate until the next rotation, while the pods
// the snapshot knows keep the very same set from one config to the next.
func TestSecretsOfUnknownPodsAreBounded(t *testing.T) {
	snap := &mesh.Snapshot{Proxies: map[string]*mesh.Proxy{
		"default/app-0": {Namespace: "default", Name: "app-0", IP: "10.0.0.1", ServiceAccount: "app"},
	}}
	s := newSecrets(stubCerts{}, false)
	honest := translate.Node{PodNamespace: "default", PodName: "app-0"}
	v1, err := s.view(honest, snap)
	if err != nil {
		t.Fatal(err)
	}
	invent := func(i int) translate.Node {
		return translate.Node{PodNamespace: fmt.Sprintf("invented-%d", i), PodName: fmt.Sprintf("pod-%d", i)}
	}
	// Fill the bounded memo first: its residue is what the entry count below bounds.
	for i := range unknownSecretEntries {
		if _, err := s.view(invent(100000+i), snap); err != nil {
			t.Fatal(err)
		}
	}
	before := liveHeap()
	const invented = 2000
	for i := range invented {
		n := invent(i)
		v, err := s.view(n, snap)
		if err != nil {
			t.Fatal(err)
		}
		again, err := s.view(n, snap)
		if err != nil {
			t.Fatal(err)
		}
		if v.Version() != again.Version() {
			t.Fatalf("%s: two views of one pod differ in version", n.PodNamespace)
		}
	}
	s.mu.Lock()
	entries := len(s.cur) + len(s.prev) + len(s.unknown)
	s.mu.Unlock()
	if limit := 1 + unknownSecretEntries; entries > limit {
		t.Errorf("after %d invented pods the memo holds %d sets, want at most %d", invented, entries, limit)
	}
	after := liveHeap()
	t.Logf("heap after GC: %d KiB before, %d KiB after %d invented pods", before/1024, after/1024, invented)
	if after > before+before/10 {
		t.Errorf("heap grew from %d KiB to %d KiB (more than 10 %%)", before/1024, after/1024)
	}
	v2, err := s.view(honest, snap)
	if err != nil {
		t.Fatal(err)
	}
	if v1[0] != v2[0] {
		t.Error("the known pod's workload set is not kept between configs")
	}
}
