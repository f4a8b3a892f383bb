package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Defaults for LeaderElectionConfig: client-go's usual values, those of
// kube-controller-manager and kube-scheduler.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// LeaderElectionConfig makes replicas elect one writer through a coordination.k8s.io/v1
// Lease (client-go's leaderelection). Every replica watches, builds snapshots and serves
// xDS; only the holder of the Lease writes to the API (Events, HTTPRoute and
// AuthorizationPolicy statuses, and, through Discovery.Leadership, the CA root
// ConfigMaps), so replicas never write the same thing twice or fight over a status.
type LeaderElectionConfig struct {
	// Namespace and Name name the Lease. Both required.
	Namespace, Name string
	// Identity is this replica's name in the Lease's holderIdentity. It must differ
	// between replicas (two holders of one identity would both lead). Required.
	Identity string
	// LeaseDuration is how long the other replicas wait after the holder's last renewal
	// before they take the Lease. Default DefaultLeaseDuration.
	LeaseDuration time.Duration
	// RenewDeadline is how long the holder keeps trying to renew before it gives up
	// leading. Default DefaultRenewDeadline.
	RenewDeadline time.Duration
	// RetryPeriod is the interval between tries to take or renew the Lease. Default
	// DefaultRetryPeriod.
	RetryPeriod time.Duration
}

// Leadership says whether this replica may write to the API. A replica leads in terms:
// each term has a context that ends when the term does (the Lease was lost, or
// Discovery stopped), so work done for a term stops with it. Without leader election
// there is one term, from New on, that never ends.
//
// Its methods are safe for concurrent use.
type Leadership struct {
	gauge prometheus.Gauge

	mu sync.Mutex
	// term is the current term's context, nil between terms.
	term context.Context
	end  context.CancelFunc
	// changed is closed, and replaced, at every start and end of a term.
	changed chan struct{}
}

func newLeadership(gauge prometheus.Gauge) *Leadership {
	return &Leadership{gauge: gauge, changed: make(chan struct{})}
}

// Leading reports whether this replica leads now.
func (l *Leadership) Leading() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.term != nil && l.term.Err() == nil
}

// Await waits until this replica leads and returns a context that ends with the term
// or with ctx, whichever comes first, and its cancel function. It returns nil, nil when
// ctx ends first.
func (l *Leadership) Await(ctx context.Context) (context.Context, context.CancelFunc) {
	for ctx.Err() == nil {
		l.mu.Lock()
		term, changed := l.term, l.changed
		l.mu.Unlock()
		if term != nil && term.Err() == nil {
			c, cancel := context.WithCancel(ctx)
			stop := context.AfterFunc(term, cancel)
			return c, func() { stop(); cancel() }
		}
		select {
		case <-ctx.Done():
		case <-changed:
		}
	}
	return nil, nil
}

// begin starts a term that lasts as long as ctx. A ctx already done starts nothing:
// client-go calls OnStartedLeading in a goroutine that may run after the term ended.
func (l *Leadership) begin(ctx context.Context) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	if l.end != nil {
		l.end()
	}
	l.term, l.end = context.WithCancel(ctx)
	l.gauge.Set(1)
	close(l.changed)
	l.changed = make(chan struct{})
	return true
}

// stop ends the current term, if any, and reports whether there was one.
func (l *Leadership) stop() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.term == nil {
		return false
	}
	l.end()
	l.term, l.end = nil, nil
	l.gauge.Set(0)
	close(l.changed)
	l.changed = make(chan struct{})
	return true
}

// ValidateLeaderElection fills in c's defaults and checks it as client-go would, so that
// a bad flag fails at start rather than in a loop. New calls it too.
func ValidateLeaderElection(c *LeaderElectionConfig) error {
	if c.LeaseDuration <= 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline <= 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod <= 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	switch {
	case c.Namespace == "" || c.Name == "":
		return errors.New("discovery: leader election needs the Lease's namespace and name")
	case c.Identity == "":
		return errors.New("discovery: leader election needs an identity")
	case c.LeaseDuration <= c.RenewDeadline:
		return fmt.Errorf("discovery: leader election: lease duration %s must be longer than renew deadline %s", c.LeaseDuration, c.RenewDeadline)
	case float64(c.RenewDeadline) <= leaderelection.JitterFactor*float64(c.RetryPeriod):
		return fmt.Errorf("discovery: leader election: renew deadline %s must be longer than %.1f × retry period %s", c.RenewDeadline, leaderelection.JitterFactor, c.RetryPeriod)
	}
	return nil
}

// campaign takes part in the election until ctx ends: it waits for the Lease, leads
// while it holds it, and when it loses it (the API server was out of reach for longer
// than the renew deadline, say) it campaigns again. Losing the Lease never stops the
// process: this replica goes on serving xDS, and only stops writing. When ctx ends the
// Lease is released (ReleaseOnCancel), so that another replica takes over at once
// rather than after the lease duration.
func campaign(ctx context.Context, client kubernetes.Interface, c LeaderElectionConfig, l *Leadership, log *slog.Logger) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: c.Namespace, Name: c.Name},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: c.Identity},
	}
	log = log.With("lease", c.Namespace+"/"+c.Name, "identity", c.Identity)
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   c.LeaseDuration,
			RenewDeadline:   c.RenewDeadline,
			RetryPeriod:     c.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            c.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(term context.Context) {
					if l.begin(term) {
						log.Info("became leader: this replica writes Events, statuses and the CA root")
					}
				},
				// Called whenever Run returns, led or not, after the term's context
				// ended; only a term that began ends here.
				OnStoppedLeading: func() {
					if l.stop() {
						if ctx.Err() == nil {
							log.Warn("lost leadership: this replica stops writing, keeps serving xDS, and campaigns again")
						} else {
							log.Info("lost leadership: shutting down; the Lease is released")
						}
					}
				},
				OnNewLeader: func(identity string) {
					if identity != c.Identity {
						log.Info("the leader is another replica", "leader", identity)
					}
				},
			},
		})
		if err != nil {
			// ValidateLeaderElection ruled out every error NewLeaderElector returns.
			log.Error("leader election", "err", err)
			return
		}
		le.Run(ctx) // returns when the Lease is lost, or ctx ends
	}
}
