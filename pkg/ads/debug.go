package ads

import (
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/bearkong/bearkong/pkg/resource"
)

// StreamInfo is one stream as /debug/streams shows it. It holds names, versions, nonces
// and counts, never a resource's content: secrets carry private keys.
type StreamInfo struct {
	ID          uint64    `json:"id"`
	Node        string    `json:"node"`
	Serves      []string  `json:"serves"`
	Peer        string    `json:"peer"`
	ConnectedAt time.Time `json:"connected_at"`
	Types       TypeInfos `json:"types"`
}

// TypeInfos holds the per-type state, in push order.
type TypeInfos struct {
	CDS TypeInfo `json:"cds"`
	EDS TypeInfo `json:"eds"`
	LDS TypeInfo `json:"lds"`
	RDS TypeInfo `json:"rds"`
	SDS TypeInfo `json:"sds"`
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
	Subscribed    []string   `json:"subscribed"`
	VersionSent   string     `json:"version_sent"`
	NonceSent     string     `json:"nonce_sent"`
	SentAt        *time.Time `json:"sent_at,omitempty"`
	VersionAcked  string     `json:"version_acked"`
	AckedAt       *time.Time `json:"acked_at,omitempty"`
	Pushes        uint64     `json:"pushes"`
	Acks          uint64     `json:"acks"`
	Nacks         uint64     `json:"nacks"`
	StaleRequests uint64     `json:"stale_requests"`
	LastNack      *Nack      `json:"last_nack,omitempty"`
}

var wildcardNames = []string{"*"}

// publish makes the loop's current state visible to /debug/streams. The slices it shares
// (names, serves) are never modified in place.
func (l *loop) publish() {
	info := &StreamInfo{
		ID:          l.st.id,
		Node:        l.nodeID,
		Serves:      l.serves,
		Peer:        l.st.peer,
		ConnectedAt: l.st.connectedAt,
	}
	for _, t := range resource.Types {
		ts := &l.sess.types[t]
		ti := info.Types.Get(t)
		ti.Status = ts.status
		switch {
		case ts.sub.wildcard && len(ts.sub.names) == 0:
			ti.Subscribed = wildcardNames
		case ts.sub.wildcard:
			ti.Subscribed = append(slices.Clone(wildcardNames), ts.sub.names...)
		default:
			ti.Subscribed = ts.sub.names
		}
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
	l.st.info.Store(info)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// DebugHandler serves /debug/streams: JSON, one entry per connected stream, filtered by
// the node id in ?node= when given.
func (s *Server) DebugHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		streams := s.Streams(r.URL.Query().Get("node"))
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(struct {
			Streams []*StreamInfo `json:"streams"`
		}{streams})
	})
}
