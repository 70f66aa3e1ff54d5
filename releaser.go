package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// tokenExpiryMargin keeps a reused MAA token well clear of its exp, so Key
// Vault never sees one that expires on the way.
const tokenExpiryMargin = 2 * time.Minute

// Bounds on what callers can make the releaser hold. Each credential is a
// 2048-bit RSA key and an MAA token (a few KiB); each attestation in flight
// also holds an SNP report, its certificates and an MAA round trip. A
// container group uses one or two MAA endpoints; any number of names beyond
// the cache only costs attestations, at most maxAttestations at a time.
const (
	maxCachedCredentials      = 8 // MAA endpoints whose credential is kept for reuse
	maxAttestations           = 8 // attestations in flight, in total
	maxAttestationsPerMAAHost = 4 // attestations in flight for one MAA endpoint
)

// attestFunc gets an MAA token from maaHost for runtimeData, the public JWK
// Set of a wrapping key.
type attestFunc func(ctx context.Context, maaHost string, runtimeData []byte) (attestation, error)

// attestation is an MAA token and what messages and logs say about it.
type attestation struct {
	token        string
	expires      time.Time // the token's exp; zero when it has none
	hostData     string    // hex HOST_DATA of the attested report, for error hints
	maaRequestID string    // MAA's x-ms-request-id, for a support case
}

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

	// Bounds; 0 = maxCachedCredentials, maxAttestations and
	// maxAttestationsPerMAAHost.
	MaxCached, MaxAttestations, MaxAttestationsPerHost int
}

// releaseCredential is a wrapping key and the MAA token whose x-ms-runtime
// carries its public half. Releases hold a reference while they use it; it
// is destroyed when retired (expired, replaced, or closed) and unused.
type releaseCredential struct {
	maaHost string
	key     *wrappingKey
	attestation
	reuseUntil time.Time
	stopTimer  func() bool // of the expiry, once the credential is current

	refs     int // guarded by releaser.mu
	retired  bool
	lastUsed uint64 // releaser.uses when last handed out, for eviction
}

// releaser holds the wrapping keys and MAA tokens that serve releases.
type releaser struct {
	cfg     releaserConfig
	pool    *keyPool
	flights flight[string, *releaseCredential] // by MAA host
	slots   attestSlots
	cancel  context.CancelFunc // ends attestations in flight

	mu      sync.Mutex
	current map[string]*releaseCredential // by MAA host; at most cfg.MaxCached
	uses    uint64                        // credentials handed out from current
	closed  bool
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
	cfg.MaxCached = cmp.Or(cfg.MaxCached, maxCachedCredentials)
	cfg.MaxAttestations = cmp.Or(cfg.MaxAttestations, maxAttestations)
	cfg.MaxAttestationsPerHost = cmp.Or(cfg.MaxAttestationsPerHost, maxAttestationsPerMAAHost)
	if cfg.Keygen == nil {
		cfg.Keygen = newKeygen()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &releaser{
		cfg:     cfg,
		pool:    newKeyPool(cfg.NewKey, cfg.Keygen, cfg.Clock, cfg.Log),
		slots:   attestSlots{total: cfg.MaxAttestations, perHost: cfg.MaxAttestationsPerHost},
		cancel:  cancel,
		current: map[string]*releaseCredential{},
	}
	// Shared attestations run on the releaser's context and deadline, so
	// that no single release giving up ends one for the others; once all
	// of them have given up, it ends, so that callers that left cost
	// nothing more.
	r.flights = flight[string, *releaseCredential]{base: ctx, timeout: cfg.Timeout, endAbandoned: true, settle: r.settle, abandon: r.put}
	return r
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
		c, err := r.fresh(ctx, host)
		return c, false, err
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

// fresh attests for one release only: the credential is neither shared nor
// kept, and is destroyed when handed back with put. The attestation runs
// on ctx, so it ends when its caller gives up.
func (r *releaser) fresh(ctx context.Context, host string) (*releaseCredential, error) {
	c, err := r.attest(ctx, host)
	if err != nil {
		return nil, err
	}
	c.refs, c.retired = 1, true
	return c, nil
}

// liveLocked is the current credential for host while it may be reused;
// one past its time is retired here, should its timer be late.
func (r *releaser) liveLocked(host string) *releaseCredential {
	c := r.current[host]
	if c == nil {
		return nil
	}
	if r.cfg.Clock.Now().Before(c.reuseUntil) {
		r.uses++
		c.lastUsed = r.uses
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
		} else if len(r.current) >= r.cfg.MaxCached {
			r.evictLocked()
		}
		r.uses++
		c.lastUsed = r.uses
		r.current[host] = c
		c.stopTimer = r.cfg.Clock.AfterFunc(c.reuseUntil.Sub(now), func() { r.expire(host, c) })
	}
	if c.retired && c.refs <= 0 {
		c.key.destroy()
	}
}

// evictLocked retires the credential used least recently, to make room.
func (r *releaser) evictLocked() {
	var lru *releaseCredential
	for _, c := range r.current {
		if lru == nil || c.lastUsed < lru.lastUsed {
			lru = c
		}
	}
	if lru == nil {
		return
	}
	delete(r.current, lru.maaHost)
	r.retireLocked(lru)
	r.cfg.Log.Debug("wrapping key evicted: more MAA endpoints than the cache holds", "maa_endpoint", lru.maaHost, "cached", r.cfg.MaxCached)
}

// attest takes a fresh wrapping key and gets an MAA token over its JWK Set,
// once a slot for it is free.
func (r *releaser) attest(ctx context.Context, host string) (*releaseCredential, error) {
	done, err := r.attestSlot(ctx, host)
	if err != nil {
		return nil, err
	}
	defer done()
	start := time.Now()
	key, err := r.pool.take(ctx)
	if err != nil {
		return nil, err
	}
	a, err := r.cfg.Attest(ctx, host, key.runtimeData)
	if err != nil {
		key.destroy()
		return nil, err
	}
	now := r.cfg.Clock.Now()
	until := reuseUntil(now, r.cfg.TTL, a.expires)
	r.cfg.Log.Debug("wrapping key attested", "step", "MAA", "maa_endpoint", host, "wrapping_kid", key.kid,
		"reuse_for", max(until.Sub(now), 0).Round(time.Second), "duration", time.Since(start).Round(time.Microsecond))
	return &releaseCredential{maaHost: host, key: key, attestation: a, reuseUntil: until}, nil
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

// attestSlot waits for room for one more attestation at host (every
// attestation takes one, /attest/maa's too); done gives it back.
func (r *releaser) attestSlot(ctx context.Context, host string) (done func(), err error) {
	if err := r.slots.acquire(ctx, host); err != nil {
		return nil, fmt.Errorf("MAA attestation at %s: wait for one of the %d attestations in flight (%d per MAA endpoint) to end: %w",
			host, r.slots.total, r.slots.perHost, err)
	}
	return func() { r.slots.release(host) }, nil
}

// attestSlots bounds the attestations in flight, in total and per MAA
// host. Callers beyond the bounds wait, each within its own deadline.
type attestSlots struct {
	total, perHost int

	mu      sync.Mutex
	inUse   int
	waiting int            // callers waiting for a slot
	byHost  map[string]int // only hosts with an attestation in flight
	freed   chan struct{}  // closed, and replaced, when a slot comes free
}

func (a *attestSlots) acquire(ctx context.Context, host string) error {
	for {
		a.mu.Lock()
		if a.byHost == nil {
			a.byHost = map[string]int{}
		}
		if a.inUse < a.total && a.byHost[host] < a.perHost {
			a.inUse++
			a.byHost[host]++
			a.mu.Unlock()
			return nil
		}
		if a.freed == nil {
			a.freed = make(chan struct{})
		}
		freed := a.freed
		a.waiting++
		a.mu.Unlock()
		var err error
		select {
		case <-freed:
		case <-ctx.Done():
			err = ctx.Err()
		}
		a.mu.Lock()
		a.waiting--
		a.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

func (a *attestSlots) release(host string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inUse--
	if a.byHost[host]--; a.byHost[host] <= 0 {
		delete(a.byHost, host)
	}
	if a.freed != nil {
		close(a.freed)
		a.freed = nil
	}
}
