// Package workload generates bearkong-shaped meshes for the fleet simulator: S Services
// of E ready endpoints each, spread over namespaces of 100 Services, and N proxies (pods),
// and the changes the benchmark drives: one endpoint changes, one Service is added, one
// annotation changes, and a no-op.
//
// Everything is deterministic in the Config, so the driver (which connects the proxies)
// and the server process (which builds the snapshots) agree without talking.
//
// Addresses come from 198.18.0.0/15, the range set aside for benchmarks (RFC 2544). They
// are data only: nothing is ever sent to them.
package workload

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// PerNamespace is how many Services share a namespace.
const PerNamespace = 100

// BenchAnnotation is the annotation the "annotation" change sets. It carries the mesh
// prefix, so discovery keeps it in the snapshot, but no translate rule reads it today:
// the change reaches translate and must produce no push (the no-op-ish case).
const BenchAnnotation = mesh.AnnotationPrefix + "bench-note"

// Config sizes a mesh.
type Config struct {
	Services  int // S
	Endpoints int // E, ready endpoints per Service
	Proxies   int // N, pods with a sidecar, spread round-robin over the Services
}

// State is a mesh that changes. It is not safe for concurrent use.
type State struct {
	cfg      Config
	services []*service // sorted by namespace, then name
	nextIP   int        // next fresh address index for changed and new endpoints
	added    int
	gen      int
	proxies  []*mesh.Proxy // the last snapshot's, by pod index (see Snapshot)
}

type service struct {
	ns, name string
	index    int // position in the initial list; -1 for added Services
	ips      []string
	ann      map[string]string
	// built is the last snapshot's object for this Service, while no change touched it
	// (each change sets it to nil).
	built *mesh.Service
}

// New returns the initial mesh of cfg.
func New(cfg Config) *State {
	s := &State{cfg: cfg, nextIP: 1 << 16} // the first 65536 addresses are the initial ones
	for i := range cfg.Services {
		svc := &service{ns: Namespace(i), name: ServiceName(i), index: i, ann: map[string]string{}}
		for e := range cfg.Endpoints {
			svc.ips = append(svc.ips, IP(i*cfg.Endpoints+e))
		}
		sort.Strings(svc.ips)
		s.services = append(s.services, svc)
	}
	return s
}

// Namespace and ServiceName name the i-th initial Service.
func Namespace(i int) string   { return fmt.Sprintf("ns-%03d", i/PerNamespace) }
func ServiceName(i int) string { return fmt.Sprintf("svc-%05d", i) }

// ClusterName is the Envoy cluster (and ClusterLoadAssignment) name of the i-th Service.
func ClusterName(i int) string { return ServiceName(i) + "." + Namespace(i) }

// IP is the i-th address of 198.18.0.0/15, skipping the network address.
func IP(i int) string {
	base := netip.MustParseAddr("198.18.0.0").As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i + 1)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}).String()
}

// Pod is one simulated proxy.
type Pod struct {
	Namespace, Name string
	Service         int // index of the Service it serves
	Replica         int
}

// NodeID is the node id a bootstrap from translate.Bootstrap gives the pod.
func (p Pod) NodeID() string { return p.Name + "." + p.Namespace }

// Node is the node the pod's sidecar sends on its first request: id and the metadata
// bearkong's bootstrap sets. The listen IP and app address are left to their defaults,
// as in a real pod.
func (p Pod) Node() *corev3.Node {
	md, err := structpb.NewStruct(map[string]any{
		translate.MetadataPodName:      p.Name,
		translate.MetadataPodNamespace: p.Namespace,
	})
	if err != nil {
		panic(err)
	}
	return &corev3.Node{Id: p.NodeID(), Cluster: "bearkong-mesh", Metadata: md}
}

// Pods returns the N proxies: pod j serves Service j mod S, as replica j div S.
func Pods(cfg Config) []Pod {
	out := make([]Pod, cfg.Proxies)
	for j := range out {
		i := j % cfg.Services
		r := j / cfg.Services
		out[j] = Pod{Namespace: Namespace(i), Name: ServiceName(i) + "-" + strconv.Itoa(r), Service: i, Replica: r}
	}
	return out
}

// Change is one change applied to the mesh.
type Change struct {
	Kind string `json:"kind"`
	// Cluster is the cluster (and ClusterLoadAssignment) name of the Service changed or
	// added; empty for a no-op.
	Cluster string `json:"cluster,omitempty"`
}

// Change kinds.
const (
	Endpoint   = "endpoint"
	NewService = "service"
	Annotation = "annotation"
	// Policy sets mesh-max-connections on one Service: its cluster changes, and so
	// CDS and that one cluster's ClusterLoadAssignment are pushed.
	Policy = "policy"
	NoOp   = "noop"
)

// Apply changes the mesh; seq picks which Service (spread over the mesh).
func (s *State) Apply(kind string, seq int) (Change, error) {
	s.gen++
	pick := func() *service {
		for k := 0; ; k++ {
			svc := s.services[((seq+k)*7919+13)%len(s.services)]
			if svc.index >= 0 {
				return svc
			}
		}
	}
	switch kind {
	case Endpoint:
		svc := pick()
		ips := append([]string(nil), svc.ips...)
		ips[0] = IP(s.nextIP)
		s.nextIP++
		sort.Strings(ips)
		svc.ips = ips
		svc.built = nil
		return Change{Kind: kind, Cluster: svc.name + "." + svc.ns}, nil
	case NewService:
		svc := &service{ns: Namespace(0), name: fmt.Sprintf("svc-new-%04d", s.added), index: -1, ann: map[string]string{}}
		s.added++
		for range s.cfg.Endpoints {
			svc.ips = append(svc.ips, IP(s.nextIP))
			s.nextIP++
		}
		sort.Strings(svc.ips)
		s.services = append(s.services, svc)
		sort.Slice(s.services, func(a, b int) bool {
			x, y := s.services[a], s.services[b]
			if x.ns != y.ns {
				return x.ns < y.ns
			}
			return x.name < y.name
		})
		return Change{Kind: kind, Cluster: svc.name + "." + svc.ns}, nil
	case Annotation:
		svc := pick()
		ann := map[string]string{BenchAnnotation: "v" + strconv.Itoa(s.gen)}
		svc.ann = ann
		svc.built = nil
		return Change{Kind: kind, Cluster: svc.name + "." + svc.ns}, nil
	case Policy:
		svc := pick()
		ann := map[string]string{mesh.AnnotationMaxConnections: strconv.Itoa(100 + s.gen)}
		svc.ann = ann
		svc.built = nil
		return Change{Kind: kind, Cluster: svc.name + "." + svc.ns}, nil
	case NoOp:
		return Change{Kind: kind}, nil
	}
	return Change{}, fmt.Errorf("unknown change %q", kind)
}

// Snapshot builds the mesh as discovery does: equal content for equal state, and the
// objects of the last snapshot for the Services and proxies that did not change (a
// full build of pkg/discovery shares them too, and translate reuses a Service's
// resources for the same object). Shared objects are never modified.
func (s *State) Snapshot() *mesh.Snapshot {
	snap := &mesh.Snapshot{Services: make([]*mesh.Service, 0, len(s.services)), Proxies: make(map[string]*mesh.Proxy, s.cfg.Proxies)}
	byIndex := make(map[int]*mesh.Service, s.cfg.Services)
	for _, svc := range s.services {
		if svc.built == nil {
			svc.built = s.build(svc)
		}
		snap.Services = append(snap.Services, svc.built)
		if svc.index >= 0 {
			byIndex[svc.index] = svc.built
		}
	}
	pods := Pods(s.cfg)
	if len(s.proxies) != len(pods) {
		s.proxies = make([]*mesh.Proxy, len(pods))
	}
	for j, p := range pods {
		ms := byIndex[p.Service]
		ip := IP(1<<15 + j) // pods that are not endpoints get addresses of their own
		if p.Replica < len(ms.Endpoints) {
			ip = ms.Endpoints[p.Replica].IP
		}
		mp := s.proxies[j]
		if mp == nil || mp.IP != ip {
			mp = &mesh.Proxy{Namespace: p.Namespace, Name: p.Name, IP: ip, Services: []string{ms.Key()}}
			s.proxies[j] = mp
		}
		snap.Proxies[mp.Key()] = mp
	}
	return snap
}

// build makes svc's mesh.Service, its endpoints named after the pods that back them (pod
// j of Pods is replica j div S of Service j mod S).
func (s *State) build(svc *service) *mesh.Service {
	ms := &mesh.Service{
		Namespace:   svc.ns,
		Name:        svc.name,
		Annotations: make(map[string]string, len(svc.ann)),
		Ports:       []mesh.ServicePort{{Name: "http", Port: 80, TargetPort: "9090", Protocol: "TCP"}},
		Endpoints:   make([]mesh.Endpoint, 0, len(svc.ips)),
	}
	for k, v := range svc.ann {
		ms.Annotations[k] = v
	}
	ms.Policy, _ = mesh.ParsePolicy(ms.Namespace, ms.Name, ms.Annotations)
	for r, ip := range svc.ips {
		e := mesh.Endpoint{IP: ip}
		if svc.index >= 0 && r*s.cfg.Services+svc.index < s.cfg.Proxies {
			e.Pod = ServiceName(svc.index) + "-" + strconv.Itoa(r)
		}
		ms.Endpoints = append(ms.Endpoints, e)
	}
	return ms
}
