package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bearkong/bearkong/pkg/resource"
)

// `bearkong status` and `bearkong config` talk to the control plane's HTTP address
// (--http-addr): /debug/streams and /debug/config. In a cluster, forward it first:
//
//	kubectl port-forward -n bearkong-system deploy/bearkong 9000
//
// With several replicas, each proxy's stream is on one of them: --server takes them all,
// comma-separated, and what they report is merged.

// defaultServer is --server's default: the control plane's HTTP address as `make run`
// (its replica 0) and `kubectl port-forward ... 9000` give it, unless $BEARKONG_SERVER
// says otherwise.
const defaultServer = "http://127.0.0.1:9000"

// serverFlag adds --server to fs.
func serverFlag(fs *flag.FlagSet) *string {
	return fs.String("server", envOr("BEARKONG_SERVER", defaultServer), "the control plane's HTTP address (--http-addr), or several, comma-separated: its replicas, whose reports are merged (default $BEARKONG_SERVER, else "+defaultServer+"; in a cluster: kubectl port-forward -n bearkong-system deploy/bearkong 9000)")
}

// servers splits and checks --server.
func servers(list string) ([]string, error) {
	var out []string
	for s := range strings.SplitSeq(list, ",") {
		s = strings.TrimRight(strings.TrimSpace(s), "/")
		if s == "" {
			continue
		}
		if !strings.Contains(s, "://") {
			s = "http://" + s
		}
		u, err := url.Parse(s)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("--server %q: not an address (want http://host:port)", s)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, errors.New("--server: no address")
	}
	return out, nil
}

// parseInterspersed parses args with fs, allowing flags after the positional arguments
// (`bearkong status app-1-0 --server ...`), which the flag package alone stops at.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// streamInfo is one stream of /debug/streams, decoded on its own terms so that the CLI
// reads any control plane: types it does not know are kept by name, fields it does not
// know are ignored, and protocol ("sotw" or "delta") shows when the server reports it.
type streamInfo struct {
	ID          uint64              `json:"id"`
	Node        string              `json:"node"`
	Serves      []string            `json:"serves"`
	Peer        string              `json:"peer"`
	ConnectedAt time.Time           `json:"connected_at"`
	Protocol    string              `json:"protocol,omitempty"`
	Types       map[string]typeInfo `json:"types"`

	// server is the replica that reported the stream (not in the JSON).
	server string
}

type typeInfo struct {
	Status          string     `json:"status"`
	Subscribed      []string   `json:"subscribed,omitempty"`
	SubscribedCount int        `json:"subscribed_count"`
	VersionSent     string     `json:"version_sent"`
	NonceSent       string     `json:"nonce_sent"`
	SentAt          *time.Time `json:"sent_at,omitempty"`
	VersionAcked    string     `json:"version_acked"`
	AckedAt         *time.Time `json:"acked_at,omitempty"`
	Pushes          uint64     `json:"pushes"`
	Acks            uint64     `json:"acks"`
	Nacks           uint64     `json:"nacks"`
	LastNack        *nackInfo  `json:"last_nack,omitempty"`
}

type nackInfo struct {
	Version string    `json:"version"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

// The statuses of /debug/streams, and how bad each is: problems first.
var statusRank = map[string]int{"NACKED": 0, "STALE": 1, "NOT_SENT": 2, "SYNCED": 3}

// rank is the worst status of s's types.
func (s *streamInfo) rank() int {
	r := len(statusRank)
	for _, ti := range s.Types {
		if v, ok := statusRank[ti.Status]; ok && v < r {
			r = v
		}
	}
	return r
}

func (s *streamInfo) podNamespace() (pod, namespace string) {
	// Node ids are "<pod>.<namespace>" (pkg/translate/node.go); a namespace holds no dot.
	i := strings.LastIndexByte(s.Node, '.')
	if i < 0 {
		return s.Node, ""
	}
	return s.Node[:i], s.Node[i+1:]
}

// fetchStreams GETs /debug/streams (with ?node= when node is set) of every server and
// merges them. A server that does not answer is reported on warn and skipped, unless
// none answers.
func fetchStreams(ctx context.Context, srvs []string, node string, warn io.Writer) ([]*streamInfo, error) {
	var all []*streamInfo
	var errs []error
	for _, srv := range srvs {
		path := "/debug/streams"
		if node != "" {
			path += "?node=" + url.QueryEscape(node)
		}
		var body struct {
			Streams   []*streamInfo `json:"streams"`
			Total     int           `json:"total"`
			Truncated bool          `json:"truncated"`
		}
		if err := getJSON(ctx, srv+path, &body); err != nil {
			errs = append(errs, err)
			continue
		}
		if body.Truncated {
			fmt.Fprintf(warn, "warning: %s lists %d of its %d streams\n", srv, len(body.Streams), body.Total)
		}
		for _, s := range body.Streams {
			s.server = srv
			all = append(all, s)
		}
	}
	if len(errs) == len(srvs) {
		return nil, errors.Join(errs...)
	}
	for _, err := range errs {
		fmt.Fprintf(warn, "warning: %v\n", err)
	}
	return mergeStreams(all), nil
}

// mergeStreams keeps one stream per node: the newest connected (a proxy that moved to
// another replica may still show on the old one until its stream there is closed).
// Streams that have not sent their node yet are dropped.
func mergeStreams(all []*streamInfo) []*streamInfo {
	byNode := map[string]*streamInfo{}
	for _, s := range all {
		if s.Node == "" {
			continue
		}
		if old, ok := byNode[s.Node]; !ok || s.ConnectedAt.After(old.ConnectedAt) {
			byNode[s.Node] = s
		}
	}
	out := make([]*streamInfo, 0, len(byNode))
	for _, s := range byNode {
		out = append(out, s)
	}
	sortStreams(out)
	return out
}

// sortStreams puts the problems first (NACKED, then STALE, then NOT_SENT), then by
// namespace and pod.
func sortStreams(ss []*streamInfo) {
	slices.SortFunc(ss, func(a, b *streamInfo) int {
		if ra, rb := a.rank(), b.rank(); ra != rb {
			return ra - rb
		}
		pa, na := a.podNamespace()
		pb, nb := b.podNamespace()
		if c := strings.Compare(na, nb); c != 0 {
			return c
		}
		return strings.Compare(pa, pb)
	})
}

// typeColumns are the type names to show, in push order, then any the server reports
// that this binary does not know.
func typeColumns(ss []*streamInfo) []string {
	var cols []string
	for _, t := range resource.Types {
		cols = append(cols, t.String())
	}
	var extra []string
	for _, s := range ss {
		for name := range s.Types {
			if !slices.Contains(cols, name) && !slices.Contains(extra, name) {
				extra = append(extra, name)
			}
		}
	}
	slices.Sort(extra)
	return append(cols, extra...)
}

// ago is d rounded for a table: "850ms", "12s", "4m3s", "5m", "2h5m".
func ago(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		d = d.Round(time.Second)
		if s := d % time.Minute; s != 0 {
			return fmt.Sprintf("%dm%ds", d/time.Minute, s/time.Second)
		}
		return fmt.Sprintf("%dm", d/time.Minute)
	}
	d = d.Round(time.Minute)
	return fmt.Sprintf("%dh%dm", d/time.Hour, (d%time.Hour)/time.Minute)
}

// cell is one type's state: its status and how long ago it got there (acked, sent, or
// rejected).
func (ti typeInfo) cell(now time.Time) string {
	var at *time.Time
	switch ti.Status {
	case "SYNCED":
		at = ti.AckedAt
	case "STALE":
		at = ti.SentAt
	case "NACKED":
		if ti.LastNack != nil {
			at = &ti.LastNack.At
		}
	}
	if ti.Status == "" {
		return "-"
	}
	if at == nil {
		return ti.Status
	}
	return ti.Status + " " + ago(now.Sub(*at))
}

// renderStatus writes the table of every proxy, then the last NACK of each NACKed one.
// replicas adds the replica column (several servers).
func renderStatus(w io.Writer, ss []*streamInfo, now time.Time, replicas bool) {
	cols := typeColumns(ss)
	protocol := slices.ContainsFunc(ss, func(s *streamInfo) bool { return s.Protocol != "" })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := []string{"POD", "NAMESPACE", "SERVICES"}
	for _, c := range cols {
		head = append(head, strings.ToUpper(c))
	}
	if protocol {
		head = append(head, "PROTOCOL")
	}
	if replicas {
		head = append(head, "REPLICA")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, s := range ss {
		pod, ns := s.podNamespace()
		row := []string{pod, ns, servicesOf(s)}
		for _, c := range cols {
			row = append(row, s.Types[c].cell(now))
		}
		if protocol {
			row = append(row, orDash(s.Protocol))
		}
		if replicas {
			row = append(row, s.server)
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	tw.Flush()
	if len(ss) == 0 {
		fmt.Fprintln(w, "(no proxy is connected)")
	}
	first := true
	for _, s := range ss {
		for _, c := range cols {
			ti := s.Types[c]
			if ti.Status != "NACKED" || ti.LastNack == nil {
				continue
			}
			if first {
				fmt.Fprintln(w, "\nRejected config (last NACK of each NACKed type):")
				first = false
			}
			fmt.Fprintf(w, "  %s %s, %s ago, version %s:\n    %s\n", s.Node, c, ago(now.Sub(ti.LastNack.At)), ti.LastNack.Version, indent(ti.LastNack.Message, "    "))
		}
	}
}

// servicesOf is what a proxy serves, "namespace/name" shortened to the name when in the
// proxy's namespace.
func servicesOf(s *streamInfo) string {
	_, ns := s.podNamespace()
	var out []string
	for _, svc := range s.Serves {
		out = append(out, strings.TrimPrefix(svc, ns+"/"))
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func indent(s, prefix string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "\n"+prefix)
}

// renderDetail writes one proxy's stream in full.
func renderDetail(w io.Writer, s *streamInfo, now time.Time) {
	pod, ns := s.podNamespace()
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Pod:\t%s\n", pod)
	fmt.Fprintf(tw, "Namespace:\t%s\n", ns)
	fmt.Fprintf(tw, "Node:\t%s\n", s.Node)
	fmt.Fprintf(tw, "Services:\t%s\n", strings.Join(s.Serves, ", "))
	fmt.Fprintf(tw, "Control plane:\t%s, stream %d from %s, connected %s ago\n", s.server, s.ID, s.Peer, ago(now.Sub(s.ConnectedAt)))
	if s.Protocol != "" {
		fmt.Fprintf(tw, "Protocol:\t%s\n", s.Protocol)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TYPE\tSTATUS\tVERSION SENT\tVERSION ACKED\tSENT\tACKED\tPUSHES\tACKS\tNACKS\tSUBSCRIBED")
	cols := typeColumns([]*streamInfo{s})
	for _, c := range cols {
		ti, ok := s.Types[c]
		if !ok {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", c, ti.Status, orDash(ti.VersionSent), orDash(ti.VersionAcked),
			agoPtr(now, ti.SentAt), agoPtr(now, ti.AckedAt), ti.Pushes, ti.Acks, ti.Nacks, subscribedSummary(ti))
	}
	tw.Flush()
	for _, c := range cols {
		if n := s.Types[c].LastNack; n != nil {
			state := "since accepted"
			if s.Types[c].Status == "NACKED" {
				state = "in force"
			}
			fmt.Fprintf(w, "\nLast NACK of %s (%s), %s ago, version %s:\n  %s\n", c, state, ago(now.Sub(n.At)), n.Version, indent(n.Message, "  "))
		}
	}
}

func agoPtr(now time.Time, t *time.Time) string {
	if t == nil {
		return "-"
	}
	return ago(now.Sub(*t)) + " ago"
}

// subscribedSummary lists a few subscribed names: "*" (all), or the names, cut after 3.
func subscribedSummary(ti typeInfo) string {
	names := ti.Subscribed
	if len(names) == 0 {
		if ti.SubscribedCount > 0 {
			return fmt.Sprintf("%d names", ti.SubscribedCount)
		}
		return "-"
	}
	if len(names) > 3 {
		return fmt.Sprintf("%s and %d more", strings.Join(names[:3], ","), len(names)-3)
	}
	return strings.Join(names, ",")
}

// findProxy resolves a pod argument, "<pod>" or "<pod>.<namespace>", to a node id among
// ss.
func findProxy(ss []*streamInfo, arg string) (string, error) {
	var matches []string
	for _, s := range ss {
		pod, _ := s.podNamespace()
		if s.Node == arg || pod == arg {
			matches = append(matches, s.Node)
		}
	}
	switch len(matches) {
	case 0:
		return "", fmt.Errorf("no proxy %q is connected to the control plane (bearkong status lists those that are)", arg)
	case 1:
		return matches[0], nil
	}
	if slices.Contains(matches, arg) {
		return arg, nil
	}
	return "", fmt.Errorf("%q is ambiguous: %s; name it <pod>.<namespace>", arg, strings.Join(matches, ", "))
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bearkong status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := serverFlag(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: bearkong status [pod] [--server URL[,URL...]]

Without a pod, a table of every proxy connected to the control plane: its Services, and
per xDS type SYNCED (acknowledged), STALE (sent, not yet acknowledged), NACKED (rejected)
or NOT_SENT, with how long ago; the proxies with a problem come first, then the last
rejection of each NACKed proxy. With a pod (<pod> or <pod>.<namespace>), that proxy in
detail.

`)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return fmt.Errorf("status takes at most one pod, got %q", pos)
	}
	srvs, err := servers(*server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ss, err := fetchStreams(ctx, srvs, "", stderr)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		renderStatus(stdout, ss, time.Now(), len(srvs) > 1)
		return nil
	}
	id, err := findProxy(ss, pos[0])
	if err != nil {
		return err
	}
	full, err := fetchStreams(ctx, srvs, id, stderr)
	if err != nil {
		return err
	}
	if len(full) == 0 {
		return fmt.Errorf("proxy %q disconnected", id)
	}
	renderDetail(stdout, full[0], time.Now())
	return nil
}

// httpClient is the CLI's client: a control plane or an Envoy admin that does not answer
// within it is reported, not waited for.
var httpClient = &http.Client{Timeout: 20 * time.Second}

// getJSON GETs u and decodes its JSON into v; a status other than 200 is an error with
// the body, which the control plane writes for people.
func getJSON(ctx context.Context, u string, v any) error {
	b, err := get(ctx, u)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}

func get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}
