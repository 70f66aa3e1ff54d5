package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// tokenExpiryMargin keeps a reused MAA token well clear of its exp, so Key
// Vault never sees one that expires on the way.
const tokenExpiryMargin = 2 * time.Minute

// attestFunc gets an MAA token from maaHost for runtimeData, the public JWK
// Set of a wrapping key. expires is the token's exp (zero when it has
// none); hostData is the attested HOST_DATA in hex, for error hints.
type attestFunc func(ctx context.Context, maaHost string, runtimeData []byte) (token string, expires time.Time, hostData string, err error)

// clock is the releaser's time: when now is, and what to do when later.
type clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// releaserConfig is what the releaser is given by its owner.
type releaserConfig struct {
	TTL     time.Duration // how long a credential serves releases; 0 = one attestation per release
	Timeout time.Duration // bound of one shared attestation
	Attest  attestFunc
	NewKey  func() (*wrappingKey, error) // how the key pool makes keys; nil = newWrappingKey
	Keygen  *keygen                      // where the key pool makes them; nil = a keygen of its own
	Log     *slog.Logger                 // nil = discard
	Clock   clock                        // nil = the system clock
}

// releaseCredential is a wrapping key and the MAA token whose x-ms-runtime
// carries its public half. Releases hold a reference while they use it; it
// is destroyed when retired (expired, replaced, or closed) and unused.
type releaseCredential struct {
	maaHost    string
	key        *wrappingKey
	token      string
	hostData   string // hex HOST_DATA of the attested report, for error hints
	reuseUntil time.Time
	stopTimer  func() bool // of the expiry, once the credential is current

	refs    int // guarded by releaser.mu
	retired bool
}

// releaser holds the wrapping keys and MAA tokens that serve releases.
type releaser struct {
	cfg     releaserConfig
	pool    *keyPool
	flights flight[string, *releaseCredential] // by MAA host
	cancel  context.CancelFunc                 // ends attestations in flight

	mu      sync.Mutex
	current map[string]*releaseCredential // by MAA host
	closed  bool

	reused, attested atomic.Uint64 // credentials handed out again, and made
}

func newReleaser(cfg releaserConfig) *releaser {
	if cfg.NewKey == nil {
		cfg.NewKey = newWrappingKey
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}
	if cfg.Keygen == nil {
		cfg.Keygen = newKeygen()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &releaser{
		cfg:     cfg,
		pool:    newKeyPool(cfg.NewKey, cfg.Keygen, cfg.Clock, cfg.Log),
		cancel:  cancel,
		current: map[string]*releaseCredential{},
	}
	// Attestations run on the releaser's context and deadline, so that no
	// single release giving up ends one for the others.
	r.flights = flight[string, *releaseCredential]{base: ctx, timeout: cfg.Timeout, settle: r.settle, abandon: r.put}
	return r
}

// releaserStats say how releases got their credentials, for diagnostics.
type releaserStats struct {
	Reused   uint64 // releases served by a credential made for an earlier one
	Attested uint64 // credentials made: wrapping keys attested at MAA
	Pool     keyPoolStats
}

func (r *releaser) stats() releaserStats {
	return releaserStats{Reused: r.reused.Load(), Attested: r.attested.Load(), Pool: r.pool.stats()}
}

// Close drops every wrapping key from memory.
func (r *releaser) Close() {
	r.mu.Lock()
	r.closed = true
	for host, c := range r.current {
		delete(r.current, host)
		r.retireLocked(c)
	}
	r.mu.Unlock()
	r.cancel()
	r.pool.close()
}

// credential returns a wrapping key with its MAA token for host, reusing a
// live one when the TTL allows, else joining or starting the one
// attestation for host. The caller must hand it back with put.
func (r *releaser) credential(ctx context.Context, host string) (cred *releaseCredential, reused bool, err error) {
	if r.cfg.TTL <= 0 {
		// No reuse, hence nothing to share: each release attests for itself.
		c, err := r.attest(ctx, host)
		if err != nil {
			return nil, false, err
		}
		c.refs, c.retired = 1, true
		return c, false, nil
	}
	closed := false
	live := func() (*releaseCredential, bool) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if closed = r.closed; closed {
			return nil, true
		}
		c := r.liveLocked(host)
		if c == nil {
			return nil, false
		}
		c.refs++
		reused = true
		r.reused.Add(1)
		return c, true
	}
	c, err := r.flights.do(ctx, host, live, func(ctx context.Context) (*releaseCredential, error) { return r.attest(ctx, host) })
	switch {
	case closed:
		return nil, false, errReleaserClosed
	case err != nil && ctx.Err() != nil:
		return nil, false, fmt.Errorf("MAA attestation at %s: %w", host, err)
	}
	return c, reused, err
}

// liveLocked is the current credential for host while it may be reused;
// one past its time is retired here, should its timer be late.
func (r *releaser) liveLocked(host string) *releaseCredential {
	c := r.current[host]
	if c == nil || r.cfg.Clock.Now().Before(c.reuseUntil) {
		return c
	}
	delete(r.current, host)
	r.retireLocked(c)
	return nil
}

// settle hands a new credential to the takers of its attestation and,
// when it may be reused, makes it host's current one until reuseUntil.
func (r *releaser) settle(host string, c *releaseCredential, err error, takers int) {
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	c.refs = takers
	now := r.cfg.Clock.Now()
	if r.closed || !now.Before(c.reuseUntil) {
		c.retired = true
	} else {
		if old := r.current[host]; old != nil {
			r.retireLocked(old)
		}
		r.current[host] = c
		c.stopTimer = r.cfg.Clock.AfterFunc(c.reuseUntil.Sub(now), func() { r.expire(host, c) })
	}
	if c.retired && c.refs <= 0 {
		c.key.destroy()
	}
}

// attest takes a fresh wrapping key and gets an MAA token over its JWK Set.
func (r *releaser) attest(ctx context.Context, host string) (*releaseCredential, error) {
	start := time.Now()
	key, err := r.pool.take(ctx)
	if err != nil {
		return nil, err
	}
	token, expires, hostData, err := r.cfg.Attest(ctx, host, key.runtimeData)
	if err != nil {
		key.destroy()
		return nil, err
	}
	r.attested.Add(1)
	now := r.cfg.Clock.Now()
	until := reuseUntil(now, r.cfg.TTL, expires)
	r.cfg.Log.Debug("wrapping key attested", "step", "MAA", "maa_endpoint", host, "wrapping_kid", key.kid,
		"reuse_for", max(until.Sub(now), 0).Round(time.Second), "duration", time.Since(start).Round(time.Microsecond))
	return &releaseCredential{maaHost: host, key: key, token: token, hostData: hostData, reuseUntil: until}, nil
}

// reuseUntil is when a credential attested at now stops serving releases:
// after the TTL, or earlier so that its token never reaches Key Vault
// within tokenExpiryMargin of its exp. A token without exp serves once.
func reuseUntil(now time.Time, ttl time.Duration, exp time.Time) time.Time {
	if exp.IsZero() {
		return now
	}
	return minTime(now.Add(ttl), exp.Add(-tokenExpiryMargin))
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// put hands back a credential got from credential.
func (r *releaser) put(c *releaseCredential) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.refs--
	if c.retired && c.refs <= 0 {
		c.key.destroy()
	}
}

func (r *releaser) retireLocked(c *releaseCredential) {
	if c.stopTimer != nil {
		c.stopTimer()
	}
	c.retired = true
	if c.refs <= 0 {
		c.key.destroy()
	}
}

func (r *releaser) expire(host string, c *releaseCredential) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current[host] == c {
		delete(r.current, host)
	}
	if !c.retired {
		r.retireLocked(c)
	}
}
