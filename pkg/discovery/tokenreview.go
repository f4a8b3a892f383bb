package discovery

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrTokenRefused is wrapped by every error of TokenReviewer.Review that says the token
// does not prove a pod's identity; other errors are failures to ask (the API server is
// unreachable, or bearkong may not create TokenReviews).
var ErrTokenRefused = errors.New("token refused")

// PodIdentity is what a pod-bound ServiceAccount token proves.
type PodIdentity struct {
	Namespace, ServiceAccount, PodName, PodUID string
}

// Defaults of TokenReviewer.
const (
	DefaultTokenCacheTTL         = time.Minute
	DefaultTokenNegativeCacheTTL = 5 * time.Second
	DefaultTokenCacheSize        = 10000
)

// The user.extra keys the API server sets for a token bound to a pod:
// https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-tokens
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// TokenReviewer proves a proxy's identity from its pod's projected ServiceAccount token,
// with the API server's TokenReview (authentication.k8s.io/v1):
// https://kubernetes.io/docs/reference/kubernetes-api/authentication-resources/token-review-v1/
//
// Results are cached, keyed by a hash of the token (the token itself is never kept), so
// that proxies reconnecting all at once (a control-plane restart) cost one review per
// token, not one per attempt: a proven identity for PositiveTTL, but never past the
// token's expiry; a refusal for NegativeTTL, so that a token fixed by the kubelet (or a
// pod that now exists) is soon accepted. A pod deleted within PositiveTTL is still
// accepted for the rest of it: that is the price of the cache, bounded by its TTL.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audience is the audience the token must have been issued for (bearkong's own, so
	// that a token meant for the API server, or for anyone else, is refused).
	Audience string
	// PositiveTTL, NegativeTTL and MaxEntries bound the cache; zero means the defaults
	// above. Now is the clock (default time.Now).
	PositiveTTL, NegativeTTL time.Duration
	MaxEntries               int
	Now                      func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]reviewResult
}

type reviewResult struct {
	id      PodIdentity
	err     error
	expires time.Time
}

// Review returns the pod identity token proves, or an error that wraps ErrTokenRefused
// and says why not (never with the token in it).
func (r *TokenReviewer) Review(ctx context.Context, token string) (PodIdentity, error) {
	if token == "" {
		return PodIdentity{}, fmt.Errorf("%w: empty token", ErrTokenRefused)
	}
	now := r.now()
	key := sha256.Sum256([]byte(token))
	r.mu.Lock()
	if res, ok := r.cache[key]; ok && now.Before(res.expires) {
		r.mu.Unlock()
		return res.id, res.err
	}
	r.mu.Unlock()

	id, err := r.review(ctx, token)
	if err != nil && !errors.Is(err, ErrTokenRefused) {
		// The API server did not answer: nothing is known about the token.
		return PodIdentity{}, err
	}
	res := reviewResult{id: id, err: err}
	if err != nil {
		res.expires = now.Add(orDefault(r.NegativeTTL, DefaultTokenNegativeCacheTTL))
	} else {
		res.expires = now.Add(orDefault(r.PositiveTTL, DefaultTokenCacheTTL))
		exp, ok := tokenExpiry(token)
		if !ok {
			return id, nil // no expiry to bound the cache by: not cached
		}
		if exp.Before(res.expires) {
			res.expires = exp
		}
	}
	r.store(key, res, now)
	return id, err
}

func (r *TokenReviewer) review(ctx context.Context, token string) (PodIdentity, error) {
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token, Audiences: []string{r.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return PodIdentity{}, fmt.Errorf("TokenReview: %w", err)
	}
	st := tr.Status
	if !st.Authenticated {
		msg := st.Error
		if msg == "" {
			msg = "not authenticated"
		}
		return PodIdentity{}, fmt.Errorf("%w: the API server says: %s", ErrTokenRefused, msg)
	}
	if !slices.Contains(st.Audiences, r.Audience) {
		return PodIdentity{}, fmt.Errorf("%w: the token is not for audience %q (its audiences: %q)", ErrTokenRefused, r.Audience, st.Audiences)
	}
	const prefix = "system:serviceaccount:"
	ns, sa, ok := strings.Cut(strings.TrimPrefix(st.User.Username, prefix), ":")
	if !strings.HasPrefix(st.User.Username, prefix) || !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return PodIdentity{}, fmt.Errorf("%w: user %q is not a ServiceAccount", ErrTokenRefused, st.User.Username)
	}
	pod, uid := st.User.Extra[extraPodName], st.User.Extra[extraPodUID]
	if len(pod) != 1 || len(uid) != 1 || pod[0] == "" || uid[0] == "" {
		return PodIdentity{}, fmt.Errorf("%w: the token of %s/%s is not bound to a pod (use a projected ServiceAccount token)", ErrTokenRefused, ns, sa)
	}
	return PodIdentity{Namespace: ns, ServiceAccount: sa, PodName: pod[0], PodUID: uid[0]}, nil
}

// store caches res, making room first: expired entries go, and if none has expired, an
// arbitrary one (map order), which only costs a review later.
func (r *TokenReviewer) store(key [sha256.Size]byte, res reviewResult, now time.Time) {
	max := r.MaxEntries
	if max <= 0 {
		max = DefaultTokenCacheSize
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cache == nil {
		r.cache = map[[sha256.Size]byte]reviewResult{}
	}
	if _, ok := r.cache[key]; !ok && len(r.cache) >= max {
		for k, v := range r.cache {
			if !now.Before(v.expires) {
				delete(r.cache, k)
			}
		}
		for k := range r.cache {
			if len(r.cache) < max {
				break
			}
			delete(r.cache, k)
		}
	}
	r.cache[key] = res
}

// cached reports how many results the cache holds (for tests).
func (r *TokenReviewer) cached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cache)
}

func (r *TokenReviewer) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// tokenExpiry reads the exp claim of a JWT, without checking anything: the TokenReview
// did. It only bounds how long a proven identity is cached.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *int64 `json:"exp"`
	}
	if err := json.Unmarshal(b, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	return time.Unix(*claims.Exp, 0), true
}
