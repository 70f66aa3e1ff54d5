package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"time"
)

// tokenExpiryMargin keeps a reused MAA token well clear of its exp, so Key
// Vault never sees one that expires on the way.
const tokenExpiryMargin = 2 * time.Minute

// releaseCredential is a wrapping key and the MAA token whose x-ms-runtime
// carries its public half. Releases hold a reference while they use it; it
// is destroyed when retired (expired, replaced, or closed) and unused.
type releaseCredential struct {
	maaHost    string
	key        *wrappingKey
	token      string
	hostData   string // hex HOST_DATA of the attested report, for error hints
	reuseUntil time.Time
	timer      *time.Timer

	refs    int // guarded by releaser.mu
	retired bool
}

// attestFlight is one attestation shared by every release that needs a new
// token for the same MAA endpoint at the same time.
type attestFlight struct {
	done    chan struct{} // closed under releaser.mu once cred/err are set
	waiters int
	cred    *releaseCredential
	err     error
}

// releaser holds the wrapping keys and MAA tokens that serve releases.
type releaser struct {
	s    *server
	ttl  time.Duration
	pool *keyPool
	now  func() time.Time
	// attestFn gets a credential for a host: attest, unless a test says
	// otherwise.
	attestFn func(ctx context.Context, host string) (*releaseCredential, error)

	baseCtx context.Context // ends on Close: stops attestations in flight
	cancel  context.CancelFunc

	mu      sync.Mutex
	current map[string]*releaseCredential // by MAA host
	flights map[string]*attestFlight      // by MAA host
	closed  bool
}

func newReleaser(s *server) *releaser {
	ctx, cancel := context.WithCancel(context.Background())
	r := &releaser{
		s:       s,
		ttl:     s.cfg.WrappingKeyTTL,
		pool:    newKeyPool(generateWrappingKey, s.log),
		now:     time.Now,
		baseCtx: ctx,
		cancel:  cancel,
		current: map[string]*releaseCredential{},
		flights: map[string]*attestFlight{},
	}
	r.attestFn = r.attest
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
	if r.ttl <= 0 {
		// No reuse, hence nothing to share: each release attests for itself.
		c, err := r.attestFn(ctx, host)
		if err != nil {
			return nil, false, err
		}
		c.refs, c.retired = 1, true
		return c, false, nil
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, false, errReleaserClosed
	}
	if c := r.current[host]; c != nil && r.now().Before(c.reuseUntil) {
		c.refs++
		r.mu.Unlock()
		return c, true, nil
	}
	f := r.flights[host]
	if f == nil {
		f = &attestFlight{done: make(chan struct{})}
		r.flights[host] = f
		go r.fly(host, f)
	}
	f.waiters++
	r.mu.Unlock()

	select {
	case <-f.done:
		return f.cred, false, f.err
	case <-ctx.Done():
		r.mu.Lock()
		defer r.mu.Unlock()
		select {
		case <-f.done:
			// Finished meanwhile: our reference was counted, give it back.
			if f.cred != nil {
				r.putLocked(f.cred)
			}
		default:
			f.waiters--
		}
		return nil, false, fmt.Errorf("MAA attestation at %s: %w", host, ctx.Err())
	}
}

// fly runs a shared attestation on the releaser's own context and deadline,
// so that no single caller giving up ends it for the others.
func (r *releaser) fly(host string, f *attestFlight) {
	ctx, cancel := context.WithTimeout(r.baseCtx, r.s.timeout)
	defer cancel()
	c, err := r.attestFn(ctx, host)

	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.flights, host)
	if err == nil {
		c.refs = f.waiters
		if r.closed || !r.now().Before(c.reuseUntil) {
			c.retired = true
		} else {
			if old := r.current[host]; old != nil {
				r.retireLocked(old)
			}
			r.current[host] = c
			c.timer = time.AfterFunc(c.reuseUntil.Sub(r.now()), func() { r.expire(host, c) })
		}
		if c.retired && c.refs == 0 {
			c.key.destroy()
			c = nil
		}
	}
	f.cred, f.err = c, err
	close(f.done)
}

// attest takes a fresh wrapping key and gets an MAA token over its JWK Set.
func (r *releaser) attest(ctx context.Context, host string) (*releaseCredential, error) {
	start := time.Now()
	key, err := r.pool.take(ctx)
	if err != nil {
		return nil, err
	}
	ev, err := r.s.evidence(ctx, key.runtimeData)
	if err != nil {
		key.destroy()
		return nil, fmt.Errorf("evidence for MAA: %w", err)
	}
	tok, err := r.s.attestMAA(ctx, host, ev, key.runtimeData)
	if err != nil {
		key.destroy()
		return nil, err
	}
	now := r.now()
	until := now.Add(r.ttl)
	switch {
	case tok.Expires.IsZero():
		until = now // without exp we cannot know how long it stays good
	case tok.Expires.Add(-tokenExpiryMargin).Before(until):
		until = tok.Expires.Add(-tokenExpiryMargin)
	}
	r.s.log.Debug("wrapping key attested", "step", "MAA", "maa_endpoint", host, "wrapping_kid", key.kid,
		"reuse_for", max(until.Sub(now), 0).Round(time.Second), "duration", time.Since(start).Round(time.Microsecond))
	return &releaseCredential{
		maaHost:    host,
		key:        key,
		token:      tok.Token,
		hostData:   hex.EncodeToString(ev.Parsed.HostData[:]),
		reuseUntil: until,
	}, nil
}

// put hands back a credential got from credential.
func (r *releaser) put(c *releaseCredential) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.putLocked(c)
}

func (r *releaser) putLocked(c *releaseCredential) {
	c.refs--
	if c.retired && c.refs <= 0 {
		c.key.destroy()
	}
}

func (r *releaser) retireLocked(c *releaseCredential) {
	if c.timer != nil {
		c.timer.Stop()
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

// cached reports how many credentials are held, for tests.
func (r *releaser) cached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.current)
}
