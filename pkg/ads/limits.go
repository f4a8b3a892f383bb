package ads

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
)

// Limits bound what one xDS client can make the server hold, log or do. A zero field takes
// its default (the Default* constants); the defaults are sized for bearkong's largest
// supported mesh with room to spare, so that an honest Envoy never meets them, and a
// broken or hostile client costs the server a bounded amount.
type Limits struct {
	// MaxNodeIDBytes bounds the node id of a stream's first request. Beyond it the stream
	// is refused with InvalidArgument.
	MaxNodeIDBytes int
	// MaxNodeMetadataBytes bounds the node's metadata, serialized. Beyond it the stream is
	// refused with InvalidArgument: the node is kept for the stream's life.
	MaxNodeMetadataBytes int
	// MaxResourceNames bounds the resource_names of one request (delta: its
	// resource_names_subscribe, resource_names_unsubscribe and initial_resource_versions
	// together). Beyond it the stream is refused with InvalidArgument.
	MaxResourceNames int
	// MaxNackDetailBytes is how much of a NACK's error_detail message is kept (stored for
	// /debug/streams, logged and handed to Options.Observe); the rest is cut, and the
	// message says how much.
	MaxNackDetailBytes int
	// MaxStreamsPerNode bounds the streams open at once with one node id. A new stream
	// beyond it is refused with ResourceExhausted; the streams already open are kept.
	MaxStreamsPerNode int
	// MaxStreams bounds the streams open at once. A new stream beyond it is refused with
	// ResourceExhausted.
	MaxStreams int
	// SendTimeout bounds how long one response may take to be handed to the connection.
	// A stream whose client does not read for that long is closed with DeadlineExceeded.
	SendTimeout time.Duration
	// MaxConcurrentStreamsPerConnection is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS of
	// every connection (ServerOptionsWith).
	MaxConcurrentStreamsPerConnection uint32
}

// Defaults of Limits.
const (
	// bearkong's bootstrap makes the node id <pod>.<namespace>: a pod name is a DNS
	// subdomain (253 bytes at most) and a namespace a DNS label (63), 317 bytes at
	// worst. 512 covers every pod; the id is logged on every line of its stream.
	DefaultMaxNodeIDBytes = 512
	// The bootstrap's metadata is a handful of short strings (namespace, service
	// account, pod uid, listen IPs); Envoy adds nothing large. 64 KiB is a hundred times
	// that.
	DefaultMaxNodeMetadataBytes = 64 << 10
	// bearkong's largest subscriptions are EDS and RDS, one name per meshed Service (and
	// port) a proxy talks to. The largest mesh bearkong is measured at is 1000 Services
	// (BENCHMARKS.md); 50,000 leaves fifty times that and still bounds a request's
	// names to a few MiB, which the 4 MiB message limit bounds too.
	DefaultMaxResourceNames = 50000
	// 4 KiB holds the first errors of any NACK Envoy sends, which name the resource and
	// the field; the rest repeats them for other resources.
	DefaultMaxNackDetailBytes = 4 << 10
	// A reconnecting Envoy has, for a short while, its old stream (not yet seen dead)
	// and its new one.
	DefaultMaxStreamsPerNode = 2
	// A stream costs about 200 KiB of heap with a large mesh's subscriptions; 20,000 is
	// ten times the largest fleet measured (BENCHMARKS.md) and about 4 GiB.
	DefaultMaxStreams = 20000
	// An Envoy that takes longer than this to accept one response is stuck (stopped,
	// swapping); cutting it frees its memory and it reconnects when it runs again.
	DefaultSendTimeout = 30 * time.Second
	// Envoy opens one ADS stream per connection (SDS comes over the same stream in
	// bearkong); 4 leaves room for a stream that is being replaced on the same
	// connection and for grpc clients that multiplex a few.
	DefaultMaxConcurrentStreamsPerConnection = 4
)

// withDefaults returns l with every zero field at its default.
func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxNodeIDBytes, DefaultMaxNodeIDBytes)
	def(&l.MaxNodeMetadataBytes, DefaultMaxNodeMetadataBytes)
	def(&l.MaxResourceNames, DefaultMaxResourceNames)
	def(&l.MaxNackDetailBytes, DefaultMaxNackDetailBytes)
	def(&l.MaxStreamsPerNode, DefaultMaxStreamsPerNode)
	def(&l.MaxStreams, DefaultMaxStreams)
	if l.SendTimeout <= 0 {
		l.SendTimeout = DefaultSendTimeout
	}
	if l.MaxConcurrentStreamsPerConnection == 0 {
		l.MaxConcurrentStreamsPerConnection = DefaultMaxConcurrentStreamsPerConnection
	}
	return l
}

// Reasons of bearkong_xds_refused_total: streams refused or cut by a limit.
const (
	ReasonNodeIDTooLong        = "node_id_too_long"
	ReasonNodeMetadataTooLarge = "node_metadata_too_large"
	ReasonTooManyNames         = "too_many_resource_names"
	ReasonTooManyNodeStreams   = "too_many_streams_per_node"
	ReasonTooManyStreams       = "too_many_streams"
	ReasonSendTimeout          = "send_timeout"
)

var limitReasons = []string{ReasonNodeIDTooLong, ReasonNodeMetadataTooLarge, ReasonTooManyNames,
	ReasonTooManyNodeStreams, ReasonTooManyStreams, ReasonSendTimeout}

// truncate cuts s to at most max bytes, at a rune boundary, and says how much it cut.
func truncate(s string, max int) (string, bool) {
	if len(s) <= max {
		return s, false
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… [bearkong cut %d of %d bytes]", len(s)-cut, len(s)), true
}

// prefix is s for a log line: at most 64 bytes of it, said to be cut.
func prefix(s string) string {
	p, _ := truncate(s, 64)
	return p
}

// ServerOptions returns ServerOptionsWith(Limits{}): the default limits.
func ServerOptions() []grpc.ServerOption { return ServerOptionsWith(Limits{}) }

// summaryInterval is how often, at most, the INFO summary of streams is logged.
const summaryInterval = time.Minute

// summary counts what happened to streams since it was last logged, so that stream
// open and close are logged at DEBUG and an operator still sees, at INFO, once a minute
// and only when something happened, how many streams came, went, or were refused. The
// first refusal of each reason in an interval is logged at WARN (who, and why); the
// others only count: a client that reconnects in a loop writes a few lines a minute.
type summary struct {
	log   *slog.Logger
	every time.Duration

	mu             sync.Mutex
	armed          bool
	opened, closed int
	refused        map[string]int
	warned         map[string]bool
	connected      func() int
}

func newSummary(log *slog.Logger, every time.Duration, connected func() int) *summary {
	if every <= 0 {
		every = summaryInterval
	}
	return &summary{log: log, every: every, refused: map[string]int{}, warned: map[string]bool{}, connected: connected}
}

// arm schedules the next summary; mu is held.
func (s *summary) arm() {
	if !s.armed {
		s.armed = true
		time.AfterFunc(s.every, s.flush)
	}
}

func (s *summary) open() {
	s.mu.Lock()
	s.opened++
	s.arm()
	s.mu.Unlock()
}

func (s *summary) close() {
	s.mu.Lock()
	s.closed++
	s.arm()
	s.mu.Unlock()
}

// refuse counts a refusal and reports whether it is the first of its reason in this
// interval, to be logged at WARN.
func (s *summary) refuse(reason string) (first bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refused[reason]++
	s.arm()
	first = !s.warned[reason]
	s.warned[reason] = true
	return first
}

func (s *summary) flush() {
	s.mu.Lock()
	opened, closed, refused := s.opened, s.closed, s.refused
	s.opened, s.closed, s.refused, s.warned = 0, 0, map[string]int{}, map[string]bool{}
	s.armed = false
	s.mu.Unlock()
	attrs := []any{"opened", opened, "closed", closed, "connected", s.connected()}
	if len(refused) > 0 {
		var b strings.Builder
		for _, r := range slices.Sorted(maps.Keys(refused)) {
			if b.Len() > 0 {
				b.WriteByte(' ')
			}
			fmt.Fprintf(&b, "%s=%d", r, refused[r])
		}
		attrs = append(attrs, "refused", b.String())
	}
	s.log.Info("xds streams", attrs...)
}
