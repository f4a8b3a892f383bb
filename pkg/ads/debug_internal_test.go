package ads

import (
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"
)

// addFakeStreams registers n streams in the server's bookkeeping, each as its loop would
// publish it: node "node-<i>", every type SYNCED with subscribed names (EDS: names per
// stream), and a NACK with a long message on CDS.
func addFakeStreams(s *Server, n, names int, nackMsg string) {
	sub := make([]string, names)
	for i := range sub {
		sub[i] = fmt.Sprintf("service-%05d.namespace-%03d", i, i%100)
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range n {
		st := &stream{id: s.nextID.Add(1), peer: fmt.Sprintf("127.0.0.1:%d", 10000+i), connectedAt: now, wake: make(chan struct{}, 1)}
		info := &StreamInfo{ID: st.id, Node: fmt.Sprintf("node-%d", i), Serves: []string{"ns/app"}, Peer: st.peer, ConnectedAt: now}
		for _, ti := range []*TypeInfo{&info.Types.CDS, &info.Types.EDS, &info.Types.LDS, &info.Types.SRDS, &info.Types.RDS, &info.Types.SDS} {
			*ti = TypeInfo{Status: Synced, Subscribed: sub, VersionSent: "v1", NonceSent: "1", VersionAcked: "v1", Pushes: 1, Acks: 1}
		}
		info.Types.CDS.Subscribed = wildcardNames
		info.Types.CDS.Nacks = 1
		info.Types.CDS.LastNack = &Nack{Version: "v0", Nonce: "0", Message: nackMsg, At: now}
		st.info = info
		s.streams[st.id] = st
	}
}

type debugBody struct {
	Streams   []StreamInfo `json:"streams"`
	Total     int          `json:"total"`
	Truncated bool         `json:"truncated"`
}

// TestDebugStreamsBounded: with 10,000 streams of 1000 subscribed names each,
// /debug/streams answers a summary of at most a few MiB, says how many streams there
// are and that it left some out, and still gives one node's whole subscription with
// ?node=.
func TestDebugStreamsBounded(t *testing.T) {
	s := NewServer(Options{})
	const streams, names = 10000, 1000
	addFakeStreams(s, streams, names, strings.Repeat("x", 64<<10))

	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	allocBefore := ms.TotalAlloc
	rec := httptest.NewRecorder()
	s.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/streams", nil))
	runtime.ReadMemStats(&ms)
	t.Logf("/debug/streams at %d streams: %d KiB, %d KiB allocated", streams, rec.Body.Len()/1024, (ms.TotalAlloc-allocBefore)/1024)
	if rec.Body.Len() > 4<<20 {
		t.Errorf("/debug/streams is %d KiB, want at most 4 MiB", rec.Body.Len()/1024)
	}
	var body debugBody
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Total != streams || !body.Truncated || len(body.Streams) != DebugStreamsLimit {
		t.Fatalf("total %d, truncated %v, %d listed; want %d, true, %d", body.Total, body.Truncated, len(body.Streams), streams, DebugStreamsLimit)
	}
	first := body.Streams[0]
	eds := first.Types.EDS
	if eds.Subscribed != nil || eds.SubscribedCount != names || eds.SubscribedHash == "" || eds.Status != Synced || eds.Acks != 1 {
		t.Errorf("summary of EDS: %+v, want no names, a count of %d and a hash", eds, names)
	}
	if first.Types.CDS.SubscribedCount != 1 || first.Types.CDS.LastNack == nil || len(first.Types.CDS.LastNack.Message) > 1024 {
		t.Errorf("summary of CDS: count %d, last NACK %v", first.Types.CDS.SubscribedCount, first.Types.CDS.LastNack != nil)
	}

	// One node: the whole subscription, with the same count and hash.
	rec = httptest.NewRecorder()
	s.DebugHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/debug/streams?node="+first.Node, nil))
	body = debugBody{}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if len(body.Streams) != 1 || body.Total != 1 || body.Truncated {
		t.Fatalf("?node=%s: %d streams, total %d, truncated %v", first.Node, len(body.Streams), body.Total, body.Truncated)
	}
	full := body.Streams[0].Types.EDS
	if len(full.Subscribed) != names || full.SubscribedCount != names || full.SubscribedHash != eds.SubscribedHash {
		t.Errorf("?node= EDS: %d names, count %d, hash %q; want %d, %d, %q", len(full.Subscribed), full.SubscribedCount, full.SubscribedHash, names, names, eds.SubscribedHash)
	}
}
