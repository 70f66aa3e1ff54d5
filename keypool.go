package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// wrappingKeyBits is the size of the RSA key Key Vault wraps released keys
// to. 2048 is what Microsoft's sidecar sends and the only size known to be
// accepted by Key Vault and Managed HSM release in production; the key
// lives only in this process's (TEE) memory and only for minutes.
const wrappingKeyBits = 2048

// wrappingKey is an RSA key pair made for release, and its public JWK Set:
// the runtime data sent to MAA. runtimeData is marshalled once because
// REPORT_DATA is the sha256 of these exact bytes.
type wrappingKey struct {
	priv        *rsa.PrivateKey
	kid         string // RFC 7638 thumbprint of the public key
	runtimeData []byte // {"keys":[{"kty":"RSA","n","e","kid","key_ops":["encrypt"]}]}
	made        time.Time
}

// newWrappingKey generates a key; it is slow, so only the key pool calls it,
// under keygen's limits.
func newWrappingKey() (*wrappingKey, error) {
	priv, err := rsa.GenerateKey(rand.Reader, wrappingKeyBits)
	if err != nil {
		return nil, fmt.Errorf("generate RSA-%d wrapping key: %w", wrappingKeyBits, err)
	}
	return wrappingKeyFrom(priv)
}

func wrappingKeyFrom(priv *rsa.PrivateKey) (*wrappingKey, error) {
	priv = withoutHiddenCopy(priv) // the key lives minutes: all of it must be in destroy's reach
	pub := rsaPublicJWK(&priv.PublicKey)
	if pub.Kid == "" {
		return nil, errors.New("wrapping key has no thumbprint kid")
	}
	pub.KeyOps = []string{"encrypt"}
	set, err := json.Marshal(struct {
		Keys []jwk `json:"keys"`
	}{Keys: []jwk{pub}})
	if err != nil {
		return nil, fmt.Errorf("encode wrapping key set: %w", err)
	}
	return &wrappingKey{priv: priv, kid: pub.Kid, runtimeData: set}, nil
}

// destroy overwrites what Go lets us reach of the private key and drops it.
func (k *wrappingKey) destroy() {
	if k == nil || k.priv == nil {
		return
	}
	zeroPrivateKey(k.priv)
	k.priv = nil
}

// How many spare keys the pool keeps, and for how long. Spares follow
// demand: as many as were taken in the last demandWindow, at least one and
// at most maxSpareKeys. A spare never used is destroyed at spareKeyMaxAge,
// so that no private key waits in memory for long.
const (
	maxSpareKeys   = 4
	demandWindow   = time.Minute
	spareKeyMaxAge = 5 * time.Minute
	// genRetryDelay is how long the pool waits after a failed generation.
	genRetryDelay = time.Second
)

// keyPool hands out wrapping keys, each key once. It keeps spare keys,
// made in the background, so that a release rarely waits for RSA key
// generation; when one must wait, the keys it waits for are urgent work
// for keygen, which then uses every scheduler: releases waiting together
// get their keys made in parallel.
type keyPool struct {
	gen   func() (*wrappingKey, error)
	kg    *keygen
	clock clock
	log   *slog.Logger

	mu      sync.Mutex
	spares  []*spareKey         // oldest first
	waiters []chan *wrappingKey // takers without a key, first come first served
	making  []*generation       // queued or running, oldest first
	takes   []time.Time         // when the latest keys were taken, at most maxSpareKeys
	paused  bool                // after a failed generation, for genRetryDelay
	closed  bool
	counts  keyPoolCounts
	running sync.WaitGroup // generations queued or running, which close waits for
}

type spareKey struct {
	key  *wrappingKey
	stop func() bool // the timer of its maximum age
}

// generation is one key being made, for the pool to hurry or cancel.
type generation struct{ task *keygenTask }

// keyPoolCounts say how the pool has fared, for diagnostics.
type keyPoolCounts struct {
	Generated uint64 // keys made
	Taken     uint64 // keys handed out
	Waited    uint64 // takes that found no spare and waited for a key
	Expired   uint64 // spares destroyed unused at their maximum age
}

// keyPoolStats is the pool's state now, and its counts.
type keyPoolStats struct {
	Spares, Waiting, Making int
	keyPoolCounts
}

var errReleaserClosed = errors.New("the sidecar is shutting down")

func newKeyPool(gen func() (*wrappingKey, error), kg *keygen, c clock, log *slog.Logger) *keyPool {
	p := &keyPool{gen: gen, kg: kg, clock: c, log: log}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refillLocked()
	return p
}

// take hands out a key never handed out before: a spare, else the first
// one made.
func (p *keyPool) take(ctx context.Context) (*wrappingKey, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errReleaserClosed
	}
	p.noteTakeLocked()
	p.dropOldSparesLocked()
	if len(p.spares) > 0 {
		s := p.spares[0]
		p.spares = slices.Delete(p.spares, 0, 1)
		s.stop()
		p.counts.Taken++
		p.refillLocked()
		p.mu.Unlock()
		return s.key, nil
	}
	p.counts.Waited++
	ch := make(chan *wrappingKey, 1)
	p.waiters = append(p.waiters, ch)
	p.refillLocked()
	p.mu.Unlock()

	select {
	case k := <-ch:
		if k == nil {
			return nil, errReleaserClosed
		}
		return k, nil
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		p.waiters = slices.DeleteFunc(p.waiters, func(w chan *wrappingKey) bool { return w == ch })
		select {
		case k := <-ch: // made for this taker just now, and never used
			if k != nil {
				p.counts.Taken--
				p.addLocked(k)
			}
		default:
		}
		return nil, fmt.Errorf("wait for a wrapping key: %w", ctx.Err())
	}
}

func (p *keyPool) noteTakeLocked() {
	p.takes = append(p.takes, p.clock.Now())
	if len(p.takes) > maxSpareKeys {
		p.takes = slices.Delete(p.takes, 0, 1)
	}
}

// spareTargetLocked is how many spares to keep now.
func (p *keyPool) spareTargetLocked() int {
	since := p.clock.Now().Add(-demandWindow)
	recent := 0
	for _, t := range p.takes {
		if t.After(since) {
			recent++
		}
	}
	return min(max(recent, 1), maxSpareKeys)
}

// refillLocked makes sure that enough keys are being made: one for each
// waiting taker, and the spares wanted. Keys queued but no longer wanted
// are not made.
func (p *keyPool) refillLocked() {
	if p.closed {
		return
	}
	want := len(p.waiters) + p.spareTargetLocked() - len(p.spares)
	if p.paused {
		want = 0
	}
	for len(p.making) < want {
		g := &generation{}
		p.running.Add(1)
		g.task = p.kg.background(func() { p.generate(g) })
		p.making = append(p.making, g)
	}
	for i := len(p.making) - 1; i >= 0 && len(p.making) > max(want, 0); i-- {
		if p.kg.cancel(p.making[i].task) {
			p.making = slices.Delete(p.making, i, i+1)
			p.running.Done()
		}
	}
	// While takers wait, every key wanted is made as fast as the CPUs
	// allow: the first to be done goes to the first taker, the rest are
	// the spares that demand asks for.
	if len(p.waiters) > 0 {
		for _, g := range p.making {
			p.kg.hurry(g.task)
		}
	}
}

// generate makes one key, for the first waiter or as a spare.
func (p *keyPool) generate(g *generation) {
	defer p.running.Done()
	start := time.Now()
	k, err := p.gen()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.making = slices.DeleteFunc(p.making, func(x *generation) bool { return x == g })
	if err != nil {
		p.log.Error("wrapping key generation failed; retrying", "err", err, "retry_in", genRetryDelay)
		if !p.paused {
			p.paused = true
			p.clock.AfterFunc(genRetryDelay, p.resume)
		}
		return
	}
	p.counts.Generated++
	p.log.Log(context.Background(), levelTrace, "wrapping key ready", "duration", time.Since(start).Round(time.Microsecond))
	k.made = p.clock.Now()
	p.addLocked(k)
	p.refillLocked()
}

func (p *keyPool) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.paused = false
	p.refillLocked()
}

// addLocked places a key that no one has used: with the first waiter, else
// among the spares while they are wanted and it is young enough, else it is
// destroyed.
func (p *keyPool) addLocked(k *wrappingKey) {
	if p.closed {
		k.destroy()
		return
	}
	if len(p.waiters) > 0 {
		p.waiters[0] <- k // buffered, and only ever given one key
		p.waiters = slices.Delete(p.waiters, 0, 1)
		p.counts.Taken++
		return
	}
	life := k.made.Add(spareKeyMaxAge).Sub(p.clock.Now())
	if len(p.spares) >= p.spareTargetLocked() || life <= 0 {
		k.destroy()
		return
	}
	s := &spareKey{key: k}
	s.stop = p.clock.AfterFunc(life, func() { p.expire(s) })
	p.spares = append(p.spares, s)
}

// dropOldSparesLocked destroys the spares that have reached their maximum
// age, should their timers be late.
func (p *keyPool) dropOldSparesLocked() {
	now := p.clock.Now()
	for len(p.spares) > 0 && !now.Before(p.spares[0].key.made.Add(spareKeyMaxAge)) {
		s := p.spares[0]
		p.spares = slices.Delete(p.spares, 0, 1)
		s.stop()
		s.key.destroy()
		p.counts.Expired++
	}
}

// expire destroys a spare that has reached its maximum age unused.
func (p *keyPool) expire(s *spareKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := slices.Index(p.spares, s)
	if i < 0 {
		return // taken or closed meanwhile
	}
	p.spares = slices.Delete(p.spares, i, i+1)
	s.key.destroy()
	p.counts.Expired++
	p.refillLocked()
}

// stats is the pool's state, for diagnostics.
func (p *keyPool) stats() keyPoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return keyPoolStats{Spares: len(p.spares), Waiting: len(p.waiters), Making: len(p.making), keyPoolCounts: p.counts}
}

// close destroys the spares, ends the waits and waits for the keys being
// made, which are destroyed as they come.
func (p *keyPool) close() {
	p.mu.Lock()
	p.closed = true
	for _, s := range p.spares {
		s.stop()
		s.key.destroy()
	}
	p.spares = nil
	for _, w := range p.waiters {
		close(w)
	}
	p.waiters = nil
	for _, g := range p.making {
		if p.kg.cancel(g.task) {
			p.running.Done()
		}
	}
	p.mu.Unlock()
	p.running.Wait()
}

// spareCount is how many keys wait to be taken.
func (p *keyPool) spareCount() int { return p.stats().Spares }
