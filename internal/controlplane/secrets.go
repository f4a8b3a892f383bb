package controlplane

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/ca"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/resource"
	"github.com/bearkong/bearkong/pkg/translate"
)

// Certificates issues the proxies' workload certificates (pkg/ca in production).
type Certificates interface {
	// Workload returns the PEM chain and key of the certificate of a pod running as a
	// ServiceAccount, for the current rotation window. Equal inputs in one window give
	// equal bytes.
	Workload(namespace, serviceAccount, pod, podUID string) (chainPEM, keyPEM []byte, err error)
	// Bundle returns the PEM roots every proxy trusts.
	Bundle() []byte
	// NextRotation returns when the certificates issued at now are replaced.
	NextRotation(now time.Time) time.Time
}

// AuthorityCertificates gives the control plane the certificates of a pkg/ca Authority.
func AuthorityCertificates(a *ca.Authority) Certificates { return authorityCerts{a} }

type authorityCerts struct{ a *ca.Authority }

func (c authorityCerts) Workload(namespace, serviceAccount, pod, podUID string) ([]byte, []byte, error) {
	l, err := c.a.Issue(ca.Workload{Namespace: namespace, ServiceAccount: serviceAccount, PodName: pod, PodUID: podUID})
	if err != nil {
		return nil, nil, err
	}
	return l.ChainPEM, l.KeyPEM, nil
}

func (c authorityCerts) Bundle() []byte                       { return c.a.Bundle() }
func (c authorityCerts) NextRotation(now time.Time) time.Time { return c.a.NextRotation(now) }

// secrets builds each proxy's SDS view: its own certificate, and the trust bundle shared
// by all. Sets are kept between configs so that a proxy whose certificate did not change
// keeps the very same set, and so gets no push; they age out two rotations after their
// last use. Only pods the snapshot knows are kept that way: a client can name any pod,
// so the sets of unknown ones (not yet in the snapshot, or invented) share a memo of at
// most unknownSecretEntries, emptied at each rotation (issue 16). A set dropped from it
// is built again with the same bytes, so its proxy gets no push.
type secrets struct {
	certs Certificates
	// trustNode reports whether the node's service_account metadata comes from the
	// authenticator (true) or from the client, which is then not believed.
	trustNode bool

	mu        sync.Mutex
	bundle    *resource.Set
	bundleSrc []byte
	cur, prev map[workloadKey]*workloadSet
	unknown   map[workloadKey]*workloadSet
}

// workloadKey is what a workload certificate depends on besides the window. A struct, not
// a joined string: view runs for every proxy at every config.
type workloadKey struct{ namespace, pod, uid, serviceAccount string }

// unknownSecretEntries bounds the workload sets kept for pods the snapshot does not
// know: enough for the sidecars of pods that select into no meshed Service (clients
// only) in a small mesh, and at a few KiB each, little for a client that invents pods.
const unknownSecretEntries = 32

type workloadSet struct {
	chain []byte
	set   *resource.Set
}

func newSecrets(certs Certificates, trustNode bool) *secrets {
	return &secrets{certs: certs, trustNode: trustNode, cur: map[workloadKey]*workloadSet{}, prev: map[workloadKey]*workloadSet{}, unknown: map[workloadKey]*workloadSet{}}
}

// view returns the Secret view of the proxy n, whose pod snap may know.
func (s *secrets) view(n translate.Node, snap *mesh.Snapshot) (resource.View, error) {
	sa := ""
	if s.trustNode {
		sa = n.ServiceAccount
	}
	p := snap.Proxy(n.PodNamespace, n.PodName)
	if sa == "" && p != nil {
		sa = p.ServiceAccount
	}
	if sa == "" {
		sa = "default" // what the API server gives a pod that names none
	}
	uid := ""
	if s.trustNode {
		uid = n.PodUID
	}
	chain, key, err := s.certs.Workload(n.PodNamespace, sa, n.PodName, uid)
	if err != nil {
		return nil, fmt.Errorf("issue the certificate of %s/%s: %w", n.PodNamespace, n.PodName, err)
	}
	k := workloadKey{n.PodNamespace, n.PodName, uid, sa}

	s.mu.Lock()
	defer s.mu.Unlock()
	bundle, err := s.bundleLocked()
	if err != nil {
		return nil, err
	}
	var w *workloadSet
	if p != nil {
		if w = s.cur[k]; w == nil {
			w = s.prev[k]
		}
	} else {
		w = s.unknown[k]
	}
	if w == nil || !bytes.Equal(w.chain, chain) {
		set, err := newSecretSet(translate.WorkloadSecretName, translate.WorkloadSecret(chain, key))
		if err != nil {
			return nil, err
		}
		w = &workloadSet{chain: chain, set: set}
	}
	if p != nil {
		s.cur[k] = w
	} else {
		if _, ok := s.unknown[k]; !ok && len(s.unknown) >= unknownSecretEntries {
			for old := range s.unknown { // any one: the map's order is random enough
				delete(s.unknown, old)
				break
			}
		}
		s.unknown[k] = w
	}
	return resource.View{w.set, bundle}, nil
}

func (s *secrets) bundleLocked() (*resource.Set, error) {
	b := s.certs.Bundle()
	if s.bundle != nil && bytes.Equal(s.bundleSrc, b) {
		return s.bundle, nil
	}
	set, err := newSecretSet(translate.TrustBundleSecretName, translate.TrustBundleSecret(b))
	if err != nil {
		return nil, err
	}
	s.bundle, s.bundleSrc = set, b
	return set, nil
}

// rotated ages the memo: sets unused since the previous rotation go.
func (s *secrets) rotated() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prev, s.cur = s.cur, map[workloadKey]*workloadSet{}
	clear(s.unknown)
}

func newSecretSet(name string, msg proto.Message) (*resource.Set, error) {
	r, err := resource.New(resource.Secret, name, msg)
	if err != nil {
		return nil, err
	}
	return resource.NewSet(r), nil
}

// rotate hands the ADS server the current config again at every rotation, so that every
// proxy gets its new certificate (an SDS-only push: nothing else changed), until ctx ends.
func (cp *ControlPlane) rotate(ctx context.Context) {
	for {
		now := time.Now()
		// A little past the boundary, so that the certificates issued are the new ones
		// whatever the rounding.
		wait := cp.secrets.certs.NextRotation(now).Sub(now) + 50*time.Millisecond
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		cp.secrets.rotated()
		if c := cp.current.Load(); c != nil {
			cp.ads.SetConfig(&ads.Config{Resolve: c.Resolve, ChangedAt: time.Now()})
			cp.log.Info("workload certificates rotated")
		}
	}
}
