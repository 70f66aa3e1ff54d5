package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
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
}

// newWrappingKey generates a key; it is slow, so only the key pool calls it.
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

// keyPool keeps one wrapping key generated ahead, in the background, so
// that no request waits for RSA key generation unless keys are consumed
// faster than they can be made.
type keyPool struct {
	ready    chan *wrappingKey // unbuffered: exactly one spare waits here
	spares   atomic.Int32      // keys made and waiting to be taken, for metrics
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

var errReleaserClosed = errors.New("the sidecar is shutting down")

func newKeyPool(gen func() (*wrappingKey, error), log *slog.Logger) *keyPool {
	p := &keyPool{ready: make(chan *wrappingKey), stop: make(chan struct{}), done: make(chan struct{})}
	go p.run(gen, log)
	return p
}

func (p *keyPool) run(gen func() (*wrappingKey, error), log *slog.Logger) {
	defer close(p.done)
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		start := time.Now()
		k, err := gen()
		if err != nil {
			log.Error("wrapping key generation failed; retrying", "err", err)
			select {
			case <-p.stop:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		log.Log(context.Background(), levelTrace, "wrapping key ready", "duration", time.Since(start).Round(time.Microsecond))
		p.spares.Add(1)
		select {
		case p.ready <- k:
			p.spares.Add(-1)
		case <-p.stop:
			p.spares.Add(-1)
			k.destroy()
			return
		}
	}
}

// take hands out the spare key; the generator then starts the next one.
func (p *keyPool) take(ctx context.Context) (*wrappingKey, error) {
	select {
	case k := <-p.ready:
		return k, nil
	case <-p.stop:
		return nil, errReleaserClosed
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for a wrapping key: %w", ctx.Err())
	}
}

// spareCount is how many keys wait to be taken.
func (p *keyPool) spareCount() int { return int(p.spares.Load()) }

func (p *keyPool) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
}
