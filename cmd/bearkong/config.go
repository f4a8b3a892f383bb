package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"sigs.k8s.io/yaml"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
)

// errConfigDiffers is what `bearkong config --diff` returns when the proxy does not run
// what bearkong serves it, so that scripts can test the exit status.
var errConfigDiffers = errors.New("the proxy's config differs from what bearkong serves it")

func runConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bearkong config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := serverFlag(fs)
	var typeNames []string
	for _, t := range resource.Types {
		typeNames = append(typeNames, t.String())
	}
	typ := fs.String("type", "all", "the xDS type to show: "+strings.Join(typeNames, ", ")+", or all")
	output := fs.String("o", "json", "output format: json or yaml")
	diff := fs.Bool("diff", false, "compare with the proxy's own Envoy /config_dump instead of printing, per type: missing in Envoy, extra in Envoy, different; exits non-zero on any difference")
	admin := fs.String("admin", "", "the proxy's Envoy admin address for --diff (default http://<pod IP>:"+strconv.Itoa(mesh.AdminPort)+"; in a cluster, kubectl port-forward <pod> "+strconv.Itoa(mesh.AdminPort)+" and --admin http://127.0.0.1:"+strconv.Itoa(mesh.AdminPort)+")")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: bearkong config <pod> [--type cds|eds|lds|srds|rds|sds|all] [-o json|yaml] [--diff [--admin URL]] [--server URL[,URL...]]

The resources bearkong serves a proxy (<pod> or <pod>.<namespace>), decoded, as the
control plane's /debug/config shows them (secrets without their private keys). With
--diff, compares them with what the proxy's Envoy runs (its admin /config_dump).

`)
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("config takes one pod, got %q", pos)
	}
	if *typ != "all" && !slices.Contains(typeNames, *typ) {
		return fmt.Errorf("--type %q: want one of %s, or all", *typ, strings.Join(typeNames, ", "))
	}
	if *output != "json" && *output != "yaml" {
		return fmt.Errorf("-o %q: want json or yaml", *output)
	}
	srvs, err := servers(*server)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	ss, err := fetchStreams(ctx, srvs, "", stderr)
	if err != nil {
		return err
	}
	id, err := findProxy(ss, pos[0])
	if err != nil {
		return err
	}
	srv := ss[slices.IndexFunc(ss, func(s *streamInfo) bool { return s.Node == id })].server
	raw, err := get(ctx, srv+"/debug/config?node="+url.QueryEscape(id)+"&type="+url.QueryEscape(*typ))
	if err != nil {
		return err
	}
	if !*diff {
		return printConfig(stdout, raw, *output)
	}
	var pc controlplane.ProxyConfig
	if err := json.Unmarshal(raw, &pc); err != nil {
		return fmt.Errorf("decode /debug/config: %w", err)
	}
	adminURL := *admin
	if adminURL == "" {
		if pc.PodIP == "" {
			return fmt.Errorf("the control plane does not know %s's pod IP: give its Envoy admin address with --admin", id)
		}
		adminURL = "http://" + net.JoinHostPort(pc.PodIP, strconv.Itoa(mesh.AdminPort))
	} else if !strings.Contains(adminURL, "://") {
		adminURL = "http://" + adminURL
	}
	adminURL = strings.TrimRight(adminURL, "/")
	diffs, err := diffConfig(ctx, &pc, adminURL)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: bearkong (%s) against its Envoy (%s/config_dump)\n", id, srv, adminURL)
	if renderDiff(stdout, diffs) {
		return errConfigDiffers
	}
	return nil
}

// printConfig writes /debug/config's JSON indented, or as YAML.
func printConfig(w io.Writer, raw []byte, format string) error {
	if format == "yaml" {
		y, err := yaml.JSONToYAML(raw)
		if err != nil {
			return fmt.Errorf("convert to YAML: %w", err)
		}
		_, err = w.Write(y)
		return err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("decode /debug/config: %w", err)
	}
	if !bytes.HasSuffix(buf.Bytes(), []byte("\n")) {
		buf.WriteByte('\n')
	}
	_, err := w.Write(buf.Bytes())
	return err
}

// typeDiff is the comparison of one type.
type typeDiff struct {
	Type    string
	Version string // bearkong's version of the type
	Same    int
	// Missing are in bearkong's config and not in Envoy's, Extra the reverse.
	Missing, Extra []string
	Different      []resourceDiff
	// Skipped says why the type was not compared (Envoy's dump has no place for it).
	Skipped string
}

type resourceDiff struct {
	Name string
	// Hash is the content hash bearkong holds; EnvoyVersion the version_info of the
	// response that last updated the resource in Envoy.
	Hash, EnvoyVersion string
}

func (d *typeDiff) differs() bool {
	return len(d.Missing)+len(d.Extra)+len(d.Different) > 0
}

// envoySections maps a type URL to the section of Envoy's /config_dump that holds the
// dynamic resources of that type (the ?resource= parameter):
// https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--config_dump?resource={}
var envoySections = map[string]string{
	resource.Cluster.URL():  "dynamic_active_clusters",
	resource.Endpoint.URL(): "dynamic_endpoint_configs",
	resource.Listener.URL(): "dynamic_listeners",
	resource.Route.URL():    "dynamic_route_configs",
	resource.Secret.URL():   "dynamic_active_secrets",
	"type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration": "dynamic_scoped_route_configs",
}

// envoyResource is one resource as Envoy holds it.
type envoyResource struct {
	msg     proto.Message
	version string
}

// diffConfig compares every type of pc with the proxy's Envoy at adminURL.
func diffConfig(ctx context.Context, pc *controlplane.ProxyConfig, adminURL string) ([]*typeDiff, error) {
	var out []*typeDiff
	var edsClusters map[string]bool
	for _, tc := range pc.Types {
		d := &typeDiff{Type: tc.Type, Version: tc.Version}
		out = append(out, d)
		section, ok := envoySections[tc.TypeURL]
		if !ok {
			d.Skipped = "no /config_dump section known for " + tc.TypeURL
			continue
		}
		ours := map[string]proto.Message{}
		hashes := map[string]string{}
		for _, r := range tc.Resources {
			m, err := decodeJSON(tc.TypeURL, r.Resource)
			if err != nil {
				return nil, fmt.Errorf("bearkong's %s %q: %w", tc.Type, r.Name, err)
			}
			ours[r.Name], hashes[r.Name] = m, r.Hash
		}
		theirs, err := envoyConfig(ctx, adminURL, section)
		if err != nil {
			return nil, err
		}
		if tc.TypeURL == resource.Endpoint.URL() {
			// Envoy lists an assignment for every cluster a CDS update added, whatever
			// its discovery type; only EDS clusters' come from EDS.
			if edsClusters == nil {
				if edsClusters, err = envoyEDSClusters(ctx, adminURL); err != nil {
					return nil, err
				}
			}
			for name := range theirs {
				if !edsClusters[name] {
					delete(theirs, name)
				}
			}
		}
		for _, name := range sortedKeys(ours) {
			e, ok := theirs[name]
			switch {
			case !ok:
				d.Missing = append(d.Missing, name)
			case !proto.Equal(normalize(ours[name]), normalize(e.msg)):
				d.Different = append(d.Different, resourceDiff{Name: name, Hash: hashes[name], EnvoyVersion: e.version})
			default:
				d.Same++
			}
		}
		for _, name := range sortedKeys(theirs) {
			if _, ok := ours[name]; !ok {
				d.Extra = append(d.Extra, name)
			}
		}
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// decodeJSON decodes the protojson of a message of typeURL.
func decodeJSON(typeURL string, b []byte) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(typeURL)
	if err != nil {
		return nil, err
	}
	m := mt.New().Interface()
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, m); err != nil {
		return nil, err
	}
	return m, nil
}

// envoyConfig reads one section of Envoy's /config_dump, by resource name.
func envoyConfig(ctx context.Context, adminURL, section string) (map[string]envoyResource, error) {
	u := adminURL + "/config_dump?resource=" + section
	if section == "dynamic_endpoint_configs" {
		u += "&include_eds"
	}
	b, err := get(ctx, u)
	if err != nil {
		return nil, err
	}
	var dump adminv3.ConfigDump
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, &dump); err != nil {
		return nil, fmt.Errorf("decode %s: %w", u, err)
	}
	out := map[string]envoyResource{}
	add := func(a *anypb.Any, version string) error {
		if a == nil {
			return nil
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("decode %s: %w", u, err)
		}
		out[resourceName(m)] = envoyResource{msg: m, version: version}
		return nil
	}
	for _, c := range dump.GetConfigs() {
		m, err := c.UnmarshalNew()
		if err != nil {
			return nil, fmt.Errorf("decode %s: %w", u, err)
		}
		switch e := m.(type) {
		case *adminv3.ClustersConfigDump_DynamicCluster:
			err = add(e.GetCluster(), e.GetVersionInfo())
		case *adminv3.EndpointsConfigDump_DynamicEndpointConfig:
			err = add(e.GetEndpointConfig(), e.GetVersionInfo())
		case *adminv3.ListenersConfigDump_DynamicListener:
			// Only the listener in force counts; one still warming is not yet run.
			err = add(e.GetActiveState().GetListener(), e.GetActiveState().GetVersionInfo())
		case *adminv3.RoutesConfigDump_DynamicRouteConfig:
			err = add(e.GetRouteConfig(), e.GetVersionInfo())
		case *adminv3.ScopedRoutesConfigDump_DynamicScopedRouteConfigs:
			for _, a := range e.GetScopedRouteConfigs() {
				if err = add(a, e.GetVersionInfo()); err != nil {
					break
				}
			}
		case *adminv3.SecretsConfigDump_DynamicSecret:
			err = add(e.GetSecret(), e.GetVersionInfo())
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// envoyEDSClusters is the names under which Envoy's EDS clusters get their assignments.
func envoyEDSClusters(ctx context.Context, adminURL string) (map[string]bool, error) {
	clusters, err := envoyConfig(ctx, adminURL, "dynamic_active_clusters")
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for name, r := range clusters {
		c, ok := r.msg.(*clusterv3.Cluster)
		if !ok || c.GetType() != clusterv3.Cluster_EDS {
			continue
		}
		if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
			name = sn
		}
		out[name] = true
	}
	return out, nil
}

// resourceName is the name of an xDS resource.
func resourceName(m proto.Message) string {
	switch r := m.(type) {
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	case interface{ GetName() string }:
		return r.GetName()
	}
	return ""
}

// normalize returns m as both sides can be compared: secrets redacted (Envoy never dumps
// a private key), and an assignment as Envoy dumps it. Envoy does not keep the
// ClusterLoadAssignment it received but dumps its hosts: per priority, each endpoint's
// address, weight (1 when unset) and coarse health (HEALTHY for UNKNOWN, UNHEALTHY for
// DRAINING and TIMEOUT), with a default policy; so assignments are compared on those.
func normalize(m proto.Message) proto.Message {
	m = proto.Clone(m)
	switch r := m.(type) {
	case *tlsv3.Secret:
		controlplane.Redact(r)
	case *endpointv3.ClusterLoadAssignment:
		return canonicalAssignment(r)
	}
	return m
}

func canonicalAssignment(cla *endpointv3.ClusterLoadAssignment) *endpointv3.ClusterLoadAssignment {
	byPriority := map[uint32][]*endpointv3.LbEndpoint{}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			w := e.GetLoadBalancingWeight().GetValue()
			if w == 0 {
				w = 1
			}
			byPriority[l.GetPriority()] = append(byPriority[l.GetPriority()], &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: e.GetEndpoint().GetAddress(),
				}},
				HealthStatus:        coarseHealth(e.GetHealthStatus()),
				LoadBalancingWeight: wrapperspb.UInt32(w),
			})
		}
	}
	out := &endpointv3.ClusterLoadAssignment{ClusterName: cla.GetClusterName()}
	for _, p := range slices.Sorted(maps.Keys(byPriority)) {
		eps := byPriority[p]
		slices.SortFunc(eps, func(a, b *endpointv3.LbEndpoint) int {
			return strings.Compare(a.GetEndpoint().GetAddress().String(), b.GetEndpoint().GetAddress().String())
		})
		out.Endpoints = append(out.Endpoints, &endpointv3.LocalityLbEndpoints{Priority: p, LbEndpoints: eps})
	}
	return out
}

// coarseHealth is the health Envoy reports for a host sent with h.
func coarseHealth(h corev3.HealthStatus) corev3.HealthStatus {
	switch h {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
		return corev3.HealthStatus_HEALTHY
	case corev3.HealthStatus_DEGRADED:
		return corev3.HealthStatus_DEGRADED
	}
	return corev3.HealthStatus_UNHEALTHY
}

// renderDiff writes the comparison, a line per type and one per difference, and reports
// whether anything differs.
func renderDiff(w io.Writer, diffs []*typeDiff) bool {
	differs := false
	for _, d := range diffs {
		switch {
		case d.Skipped != "":
			fmt.Fprintf(w, "%-5s not compared: %s\n", d.Type, d.Skipped)
		case !d.differs():
			fmt.Fprintf(w, "%-5s in sync: %d resources, bearkong version %s\n", d.Type, d.Same, orDash(d.Version))
		default:
			differs = true
			fmt.Fprintf(w, "%-5s DIFFERENT: %d in sync, %d missing in Envoy, %d extra in Envoy, %d different; bearkong version %s\n",
				d.Type, d.Same, len(d.Missing), len(d.Extra), len(d.Different), orDash(d.Version))
			for _, n := range d.Missing {
				fmt.Fprintf(w, "      missing in Envoy: %s\n", n)
			}
			for _, n := range d.Extra {
				fmt.Fprintf(w, "      extra in Envoy: %s\n", n)
			}
			for _, r := range d.Different {
				fmt.Fprintf(w, "      different: %s (bearkong: content %s, version %s; Envoy: version %s)\n", r.Name, r.Hash, orDash(d.Version), orDash(r.EnvoyVersion))
			}
		}
	}
	return differs
}
