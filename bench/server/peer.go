package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/ca"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// peer is go-control-plane v0.14's SotW server, set up the way a well-tuned user would:
//   - the resources are translate's own (the same bytes bearkong serves: the scopes and
//     one route configuration per Service, over SRDS and RDS, included), decoded into
//     protos once and shared by every node and, while unchanged, across snapshots;
//   - each type's version is the same content hash bearkong uses, so a type whose
//     content did not change for a node is not sent again;
//   - every node gets the same SDS secrets bearkong gives it (its workload certificate
//     from a CA of its own and the trust bundle), issued once and kept while unchanged;
//   - nodes whose four other versions are equal share the same resource maps.
//
// Two caches:
//   - "peer" (the snapshot cache): one SetSnapshot per node per mesh snapshot, ADS mode;
//     a changed ClusterLoadAssignment resends every assignment the proxy subscribes to,
//     because the snapshot cache versions EDS as a whole;
//   - "peer-linear": the setup Contour uses (internal/xdscache/v3/snapshot.go): a
//     MuxCache that sends EDS requests to a LinearCache holding every
//     ClusterLoadAssignment by name, and everything else to the snapshot cache. The
//     LinearCache versions each assignment on its own and, in SotW, answers an EDS
//     watch with only the assignments that changed.
type peer struct {
	cache  cachev3.SnapshotCache
	linear *cachev3.LinearCache      // nil for the snapshot-cache peer
	mux    cachev3.Cache             // what the server reads: cache, or the MuxCache
	protos map[string]types.Resource // type, name, hash -> message, from the last snapshot
	// eds is what the LinearCache holds: name -> content hash.
	eds     map[string]string
	secrets map[string]*peerSecrets // node id -> its secrets
	// clusters are the service clusters' content hashes in the last snapshot, and
	// edsGen counts the snapshots in which one of them changed: see Apply.
	clusters map[string]string
	edsGen   int
	ca       *ca.Authority
}

type peerSecrets struct {
	chain   []byte
	version string
	items   []types.Resource
}

func newPeer(linear bool) (*peer, error) {
	m, err := ca.GenerateRoot(ca.DefaultTrustDomain, time.Now())
	if err != nil {
		return nil, err
	}
	a, err := ca.New(m, ca.Options{})
	if err != nil {
		return nil, err
	}
	p := &peer{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), protos: map[string]types.Resource{},
		eds: map[string]string{}, secrets: map[string]*peerSecrets{}, clusters: map[string]string{}, ca: a}
	p.mux = p.cache
	if linear {
		p.linear = cachev3.NewLinearCache(resourcev3.EndpointType)
		classify := func(typeURL string) string {
			if typeURL == resourcev3.EndpointType {
				return resourcev3.EndpointType
			}
			return "snapshot"
		}
		p.mux = &cachev3.MuxCache{
			Classify:      func(r *cachev3.Request) string { return classify(r.GetTypeUrl()) },
			ClassifyDelta: func(r *cachev3.DeltaRequest) string { return classify(r.GetTypeUrl()) },
			Caches:        map[string]cachev3.Cache{resourcev3.EndpointType: p.linear, "snapshot": p.cache},
		}
	}
	return p, nil
}

func (p *peer) Start(ctx context.Context) (string, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	// The same gRPC transport options as bearkong's control plane (keepalive, and the
	// small per-connection buffers of ads.ServerOptions), but gRPC's own proto codec:
	// bearkong's DiscoveryResponse codec is part of what is compared.
	g := grpc.NewServer(
		grpc.SharedWriteBuffer(true),
		grpc.ReadBufferSize(4<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	// One server answers both protocols: SotW (StreamAggregatedResources) and delta
	// (DeltaAggregatedResources), each from the same caches.
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, p.mux, nil))
	go func() { _ = g.Serve(lis) }()
	go func() { <-ctx.Done(); g.Stop() }()
	return lis.Addr().String(), nil
}

var peerTypes = [resource.NumTypes]types.ResponseType{
	resource.Cluster:     types.Cluster,
	resource.Endpoint:    types.Endpoint,
	resource.Listener:    types.Listener,
	resource.ScopedRoute: types.ScopedRoute,
	resource.Route:       types.Route,
	resource.Secret:      types.Secret,
}

// snapshotTypes are the types the snapshot cache serves; the peer's translate gives no
// Secret view (bearkong's control plane adds it), so secrets are issued here.
var snapshotTypes = []resource.Type{resource.Cluster, resource.Endpoint, resource.Listener, resource.ScopedRoute, resource.Route}

func (p *peer) Apply(snap *mesh.Snapshot) error {
	tr, err := translate.New(snap)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(snap.Proxies))
	for k := range snap.Proxies {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	protos := make(map[string]types.Resource, len(p.protos))
	shared := map[string]*cachev3.Snapshot{}
	ctx := context.Background()
	linearDone := false
	// A user who knows Envoy resends the assignment of a cluster whose config changed:
	// Envoy keeps such a cluster warming, on its previous version, until a fresh
	// ClusterLoadAssignment for it arrives (TestClientMatchesEnvoy in test/e2e), up to
	// its initial_fetch_timeout. The snapshot cache versions EDS as a whole, so its
	// EDS version moves on (every assignment is resent); the LinearCache is handed
	// the changed clusters' assignments again, which bumps their versions alone.
	changed := p.changedClusters(tr)
	if len(changed) > 0 {
		p.edsGen++
	}
	for _, k := range keys {
		mp := snap.Proxies[k]
		node := translate.Node{PodNamespace: mp.Namespace, PodName: mp.Name}
		px, err := tr.Proxy(node)
		if err != nil {
			return err
		}
		if p.linear != nil && !linearDone {
			// Every proxy has the same assignments: the LinearCache holds them once,
			// and is told only about those that changed.
			if err := p.updateLinear(protos, px.Views[resource.Endpoint], nil); err != nil {
				return err
			}
			linearDone = true
		}
		var versions [resource.NumTypes]string
		for _, t := range snapshotTypes {
			versions[t] = px.Views[t].Version()
		}
		versions[resource.Endpoint] += "-" + strconv.Itoa(p.edsGen)
		key := strings.Join(versions[:], "/")
		s := shared[key]
		if s == nil {
			s = &cachev3.Snapshot{}
			for _, t := range snapshotTypes {
				if t == resource.Endpoint && p.linear != nil {
					continue
				}
				all := px.Views[t].All()
				items := make([]types.Resource, 0, len(all))
				for _, r := range all {
					m, err := p.message(protos, t, r)
					if err != nil {
						return err
					}
					items = append(items, m)
				}
				s.Resources[peerTypes[t]] = cachev3.NewResources(versions[t], items)
			}
			shared[key] = s
		}
		id := mp.Name + "." + mp.Namespace
		sec, err := p.secretsOf(mp)
		if err != nil {
			return err
		}
		ns := *s // the shared maps, plus this node's own secrets
		ns.Resources[types.Secret] = cachev3.NewResources(sec.version, sec.items)
		if err := p.cache.SetSnapshot(ctx, id, &ns); err != nil {
			return err
		}
	}
	p.protos = protos
	if p.linear != nil && len(changed) > 0 {
		// The changed clusters' assignments go after their clusters: one that came
		// first would be taken for the old cluster, and the new one would still wait.
		upd := map[string]types.Resource{}
		for n := range changed {
			if m, ok := p.linear.GetResources()[n]; ok {
				upd[n] = m
			}
		}
		return p.linear.UpdateResources(upd, nil)
	}
	return nil
}

// updateLinear gives the LinearCache the assignments of v that are new or changed, and
// deletes those that went, in one update.
func (p *peer) updateLinear(protos map[string]types.Resource, v resource.View, changed map[string]bool) error {
	upd := map[string]types.Resource{}
	seen := make(map[string]bool, len(p.eds))
	for _, r := range v.All() {
		seen[r.Name] = true
		m, err := p.message(protos, resource.Endpoint, r)
		if err != nil {
			return err
		}
		if p.eds[r.Name] != r.Hash || changed[r.Name] {
			upd[r.Name] = m
			p.eds[r.Name] = r.Hash
		}
	}
	var del []string
	for n := range p.eds {
		if !seen[n] {
			del = append(del, n)
			delete(p.eds, n)
		}
	}
	if len(upd) == 0 && len(del) == 0 {
		return nil
	}
	return p.linear.UpdateResources(upd, del)
}

// changedClusters returns the EDS names of the service clusters whose config changed
// since the last snapshot (not those that are new: Envoy asks for their assignments).
func (p *peer) changedClusters(tr *translate.Translator) map[string]bool {
	px, err := tr.Proxy(translate.Node{PodNamespace: "peer-probe", PodName: "peer-probe"})
	if err != nil {
		return nil
	}
	next := map[string]string{}
	changed := map[string]bool{}
	for _, r := range px.Views[resource.Cluster].All() {
		next[r.Name] = r.Hash
		if old, ok := p.clusters[r.Name]; ok && old != r.Hash {
			changed[r.Name] = true
		}
	}
	p.clusters = next
	return changed
}

// secretsOf returns the proxy's workload certificate and the trust bundle, as bearkong's
// control plane issues them (same CA code, same secret names and contents).
func (p *peer) secretsOf(mp *mesh.Proxy) (*peerSecrets, error) {
	id := mp.Name + "." + mp.Namespace
	sa := mp.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	l, err := p.ca.Issue(ca.Workload{Namespace: mp.Namespace, ServiceAccount: sa, PodName: mp.Name})
	if err != nil {
		return nil, err
	}
	if cur := p.secrets[id]; cur != nil && bytes.Equal(cur.chain, l.ChainPEM) {
		return cur, nil
	}
	h := sha256.Sum256(l.ChainPEM)
	sec := &peerSecrets{chain: l.ChainPEM, version: hex.EncodeToString(h[:8]), items: []types.Resource{
		translate.WorkloadSecret(l.ChainPEM, l.KeyPEM),
		translate.TrustBundleSecret(p.ca.Bundle()),
	}}
	p.secrets[id] = sec
	return sec, nil
}

// message returns the proto of r, decoded once and reused while its content is unchanged.
func (p *peer) message(cur map[string]types.Resource, t resource.Type, r *resource.Resource) (types.Resource, error) {
	key := t.String() + "\x00" + r.Name + "\x00" + r.Hash
	if m, ok := cur[key]; ok {
		return m, nil
	}
	if m, ok := p.protos[key]; ok {
		cur[key] = m
		return m, nil
	}
	var m proto.Message
	switch t {
	case resource.Cluster:
		m = &clusterv3.Cluster{}
	case resource.Endpoint:
		m = &endpointv3.ClusterLoadAssignment{}
	case resource.Listener:
		m = &listenerv3.Listener{}
	case resource.ScopedRoute:
		m = &routev3.ScopedRouteConfiguration{}
	case resource.Route:
		m = &routev3.RouteConfiguration{}
	}
	if err := proto.Unmarshal(r.Any.GetValue(), m); err != nil {
		return nil, fmt.Errorf("peer: decode %s %q: %w", t, r.Name, err)
	}
	cur[key] = m
	return m, nil
}
