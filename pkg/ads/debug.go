package ads

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/bearkong/bearkong/pkg/resource"
)

// StreamInfo is one stream as /debug/streams shows it. It holds names, versions, nonces
// and counts, never a resource's content: secrets carry private keys.
type StreamInfo struct {
	ID uint64 `json:"id"`
	// Protocol is the ADS variant the stream speaks: "sotw" (StreamAggregatedResources)
	// or "delta" (DeltaAggregatedResources).
	Protocol    string    `json:"protocol"`
	Node        string    `json:"node"`
	Serves      []string  `json:"serves"`
	Peer        string    `json:"peer"`
	ConnectedAt time.Time `json:"connected_at"`
	Types       TypeInfos `json:"types"`
	// node is the stream's node as Options.Authenticate returned it (see NodeProto).
	node *corev3.Node
}

// NodeProto returns the node the stream resolves its config with: the first request's
// node, as Options.Authenticate returned it (with the metadata it vouches for); nil
// before the first request. The layer above resolves the same config with it for
// /debug/config. The caller must not modify it.
func (i *StreamInfo) NodeProto() *corev3.Node { return i.node }

// TypeInfos holds the per-type state, in push order.
type TypeInfos struct {
	CDS  TypeInfo `json:"cds"`
	EDS  TypeInfo `json:"eds"`
	LDS  TypeInfo `json:"lds"`
	SRDS TypeInfo `json:"srds"`
	RDS  TypeInfo `json:"rds"`
	SDS  TypeInfo `json:"sds"`
}

// Get returns the info of type t.
func (ti *TypeInfos) Get(t resource.Type) *TypeInfo {
	switch t {
	case resource.Cluster:
		return &ti.CDS
	case resource.Endpoint:
		return &ti.EDS
	case resource.Listener:
		return &ti.LDS
	case resource.ScopedRoute:
		return &ti.SRDS
	case resource.Route:
		return &ti.RDS
	default:
		return &ti.SDS
	}
}

// TypeInfo is one type's state on one stream.
type TypeInfo struct {
	Status Status `json:"status"`
	// Subscribed lists the requested names, with "*" first for a wildcard subscription.
	// Only /debug/streams?node= shows it: the summary of every stream leaves it out.
	Subscribed []string `json:"subscribed,omitempty"`
	// SubscribedCount is len(Subscribed), and SubscribedHash a hash of the names in
	// order: enough to see that two streams ask for the same, without listing them.
	SubscribedCount int        `json:"subscribed_count"`
	SubscribedHash  string     `json:"subscribed_hash"`
	VersionSent     string     `json:"version_sent"`
	NonceSent       string     `json:"nonce_sent"`
	SentAt          *time.Time `json:"sent_at,omitempty"`
	VersionAcked    string     `json:"version_acked"`
	AckedAt         *time.Time `json:"acked_at,omitempty"`
	Pushes          uint64     `json:"pushes"`
	Acks            uint64     `json:"acks"`
	Nacks           uint64     `json:"nacks"`
	StaleRequests   uint64     `json:"stale_requests"`
	LastNack        *Nack      `json:"last_nack,omitempty"`
}

// snapshot returns the stream's state as /debug/streams shows it, or nil when node is
// set and the stream is not that node's. It is built again only when the loop changed
// something since the last one.
func (st *stream) snapshot(node string) *StreamInfo {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.loop != nil {
		if node != "" && st.loop.nodeID != node {
			return nil
		}
		if st.dirty || st.info == nil {
			st.info = st.loop.info()
			st.dirty = false
		}
	}
	info := st.info
	if info == nil {
		info = &StreamInfo{ID: st.id, Protocol: st.protocol, Peer: st.peer, ConnectedAt: st.connectedAt}
	}
	if node != "" && info.Node != node {
		return nil
	}
	return info
}

// info builds the loop's state for /debug/streams; the caller holds st.mu. The slices it
// shares (names, serves) are never modified in place.
func (l *loop) info() *StreamInfo {
	if l.node == nil {
		// No request yet: nothing but the connection.
		return &StreamInfo{ID: l.st.id, Protocol: l.st.protocol, Peer: l.st.peer, ConnectedAt: l.st.connectedAt}
	}
	info := &StreamInfo{
		ID:          l.st.id,
		Protocol:    l.proto.name(),
		Node:        l.nodeID,
		Serves:      l.serves,
		Peer:        l.st.peer,
		ConnectedAt: l.st.connectedAt,
		node:        l.node,
	}
	for _, t := range resource.Types {
		ts := l.proto.stats(t)
		ti := info.Types.Get(t)
		ti.Status = ts.status
		ti.Subscribed = l.proto.subscribed(t)
		if ti.Subscribed == nil {
			ti.Subscribed = []string{}
		}
		ti.VersionSent, ti.NonceSent, ti.VersionAcked = ts.version, ts.nonce, ts.ackedVersion
		ti.SentAt, ti.AckedAt = timePtr(ts.sentAt), timePtr(ts.ackedAt)
		ti.Pushes, ti.Acks, ti.Nacks, ti.StaleRequests = ts.pushes, ts.acks, ts.nacks, ts.stale
		ti.LastNack = ts.lastNack
	}
	if info.Serves == nil {
		info.Serves = []string{}
	}
	return info
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// DebugStreamsLimit is the most streams /debug/streams lists. Beyond it the response
// says how many there are ("total") and that it left some out ("truncated"): at 10,000
// streams the full view was over 100 MiB (issue 16), the summary of 1000 is about 2.5 MiB.
const DebugStreamsLimit = 1000

// debugNackLimit is how much of a NACK's message the summary shows; ?node= shows what
// the stream keeps.
const debugNackLimit = 512

// DebugHandler serves /debug/streams: JSON, with "total" streams connected and at most
// DebugStreamsLimit of them listed, sorted by id ("truncated" when some were left out).
// Without ?node= each stream is a summary: per type its state and counters, the number
// and a hash of the subscribed names but not the names, and the start of the last NACK
// message. With ?node= only that node's streams are listed, whole.
func (s *Server) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		node := r.URL.Query().Get("node")
		streams := s.Streams(node)
		total := len(streams)
		truncated := total > DebugStreamsLimit
		if truncated {
			streams = streams[:DebugStreamsLimit]
		}
		for i, info := range streams {
			streams[i] = debugView(info, node != "")
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(struct {
			Streams   []*StreamInfo `json:"streams"`
			Total     int           `json:"total"`
			Truncated bool          `json:"truncated"`
		}{streams, total, truncated})
	})
}

// debugView returns a copy of info with the counts and hashes of the subscriptions,
// and, unless full, without the names and with the last NACK message cut short. info
// itself is shared with the loop and never modified.
func debugView(info *StreamInfo, full bool) *StreamInfo {
	v := *info
	for _, t := range resource.Types {
		ti := v.Types.Get(t)
		ti.SubscribedCount = len(ti.Subscribed)
		ti.SubscribedHash = hashNames(ti.Subscribed)
		if full {
			continue
		}
		ti.Subscribed = nil
		if n := ti.LastNack; n != nil && len(n.Message) > debugNackLimit {
			cut := *n
			cut.Message = fmt.Sprintf("%s... (cut: %d bytes; /debug/streams?node= shows more)", strings.ToValidUTF8(n.Message[:debugNackLimit], ""), len(n.Message))
			ti.LastNack = &cut
		}
	}
	return &v
}

// hashNames is an FNV-1a hash of the names in order, each ended by a NUL (which no
// resource name holds), in hex.
func hashNames(names []string) string {
	h := fnv.New64a()
	for _, n := range names {
		h.Write([]byte(n))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%016x", h.Sum64())
}
