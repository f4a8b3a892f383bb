package server

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// peer is go-control-plane v0.14's snapshot cache in ADS mode and its SotW server, set up
// the way a well-tuned user would:
//   - the resources are translate's own (the same bytes bearkong serves), decoded into
//     protos once and shared by every node and, while unchanged, across snapshots;
//   - each type's version is the same content hash bearkong uses, so a type whose
//     content did not change for a node is not sent again;
//   - nodes whose four versions are equal share one *cachev3.Snapshot.
//
// It gets one SetSnapshot per node per mesh snapshot, in ADS mode.
type peer struct {
	cache  cachev3.SnapshotCache
	protos map[string]types.Resource // type, name, hash -> message, from the last snapshot
}

func newPeer() *peer {
	return &peer{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), protos: map[string]types.Resource{}}
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
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, p.cache, nil))
	go func() { _ = g.Serve(lis) }()
	go func() { <-ctx.Done(); g.Stop() }()
	return lis.Addr().String(), nil
}

var peerTypes = [resource.NumTypes]types.ResponseType{
	resource.Cluster:  types.Cluster,
	resource.Endpoint: types.Endpoint,
	resource.Listener: types.Listener,
	resource.Route:    types.Route,
}

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
	for _, k := range keys {
		mp := snap.Proxies[k]
		node := translate.Node{PodNamespace: mp.Namespace, PodName: mp.Name}
		px, err := tr.Proxy(node)
		if err != nil {
			return err
		}
		var versions [resource.NumTypes]string
		for _, t := range resource.Types {
			versions[t] = px.Views[t].Version()
		}
		key := strings.Join(versions[:], "/")
		s := shared[key]
		if s == nil {
			s = &cachev3.Snapshot{}
			for _, t := range resource.Types {
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
		if err := p.cache.SetSnapshot(ctx, mp.Name+"."+mp.Namespace, s); err != nil {
			return err
		}
	}
	p.protos = protos
	return nil
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
	case resource.Route:
		m = &routev3.RouteConfiguration{}
	}
	if err := proto.Unmarshal(r.Any.GetValue(), m); err != nil {
		return nil, fmt.Errorf("peer: decode %s %q: %w", t, r.Name, err)
	}
	cur[key] = m
	return m, nil
}
