package main

// /attest/maa and /key/release: the wrapping keys and the MAA tokens that
// carry them, the Key Vault release call, and the checks a release
// response must pass before its key material is touched.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
)

// wrappingKeyBits is the size of the RSA key Key Vault wraps released keys
// to. 2048 is what Microsoft's sidecar sends and the only size known to be
// accepted by Key Vault and Managed HSM release in production; the key
// lives only in this process's (TEE) memory and only for minutes.
const wrappingKeyBits = 2048

// tokenExpiryMargin keeps a reused MAA token well clear of its exp, so Key
// Vault never sees one that expires on the way.
const tokenExpiryMargin = 2 * time.Minute

// wrappingKey is an RSA key pair made for release, and its public JWK Set:
// the runtime data sent to MAA. runtimeData is marshalled once because
// REPORT_DATA is the sha256 of these exact bytes.
type wrappingKey struct {
	priv        *rsa.PrivateKey
	kid         string // RFC 7638 thumbprint of the public key
	runtimeData []byte // {"keys":[{"kty":"RSA","n","e","kid","key_ops":["encrypt"]}]}
}

// generateWrappingKey is how the key pool makes keys; tests replace it to
// learn the private keys they must never find in a log.
var generateWrappingKey = newWrappingKey

// newWrappingKey generates a key; it is slow, so only the key pool calls it.
func newWrappingKey() (*wrappingKey, error) {
	priv, err := rsa.GenerateKey(rand.Reader, wrappingKeyBits)
	if err != nil {
		return nil, fmt.Errorf("generate RSA-%d wrapping key: %w", wrappingKeyBits, err)
	}
	return wrappingKeyFrom(priv)
}

func wrappingKeyFrom(priv *rsa.PrivateKey) (*wrappingKey, error) {
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
	zeroBigInts(k.priv.D, k.priv.Precomputed.Dp, k.priv.Precomputed.Dq, k.priv.Precomputed.Qinv)
	zeroBigInts(k.priv.Primes...)
	k.priv = nil
}

func zeroBigInts(xs ...*big.Int) {
	for _, x := range xs {
		if x != nil {
			clear(x.Bits())
			x.SetInt64(0)
		}
	}
}

// keyPool keeps one wrapping key generated ahead, in the background, so
// that no request waits for RSA key generation unless keys are consumed
// faster than they can be made.
type keyPool struct {
	ready    chan *wrappingKey // unbuffered: exactly one spare waits here
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
		select {
		case p.ready <- k:
		case <-p.stop:
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

func (p *keyPool) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
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

// ---- HTTP handlers ----

type maaAttestRequest struct {
	MAAEndpoint string `json:"maa_endpoint"`
	RuntimeData string `json:"runtime_data"`
}

func (s *server) handleAttestMAA(w http.ResponseWriter, r *http.Request) {
	var req maaAttestRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	host, err := normalizeEndpoint("maa_endpoint", req.MAAEndpoint)
	if err != nil {
		writeError(w, err)
		return
	}
	runtimeData, err := requiredBase64("runtime_data", req.RuntimeData)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	start := time.Now()
	ev, err := s.evidence(ctx, runtimeData)
	if err != nil {
		s.log.Warn("attest/maa failed", "step", "evidence", "maa_endpoint", host, "err", err)
		writeError(w, err)
		return
	}
	tok, err := s.attestMAA(ctx, host, ev, runtimeData)
	if err != nil {
		s.log.Warn("attest/maa failed", "step", "MAA", "maa_endpoint", host, "err", err)
		writeError(w, err)
		return
	}
	s.log.Info("MAA token issued", "maa_endpoint", host, "duration", time.Since(start).Round(time.Microsecond))
	writeJSON(w, http.StatusOK, map[string]string{"token": tok.Token})
}

// keyReleaseRequest is the /key/release body.
type keyReleaseRequest struct {
	MAAEndpoint string `json:"maa_endpoint"`
	AKVEndpoint string `json:"akv_endpoint"`
	Kid         string `json:"kid"`
	AccessToken string `json:"access_token"`
}

// keyRef names a key in a vault: a name, optionally pinned to a version.
type keyRef struct {
	Name    string
	Version string // "" = the latest version
}

func (k keyRef) String() string {
	if k.Version == "" {
		return k.Name
	}
	return k.Name + "/" + k.Version
}

// keyReleaseParams is a validated /key/release request.
type keyReleaseParams struct {
	MAAHost     string
	VaultHost   string
	Key         keyRef
	AccessToken string
}

// keyVersionPattern is a Key Vault key version; names follow
// keyNamePattern, shared with importkey.
var keyVersionPattern = regexp.MustCompile(`^[0-9a-fA-F]{32}$`)

// maxAccessToken bounds a caller's bearer token (Entra tokens are 1–4 KiB).
const maxAccessToken = 16 << 10

// decodeKeyReleaseRequest parses and validates the body of /key/release.
func decodeKeyReleaseRequest(body []byte) (*keyReleaseParams, error) {
	var req keyReleaseRequest
	if err := decodeRequestJSON(body, &req); err != nil {
		return nil, err
	}
	maaHost, err := normalizeEndpoint("maa_endpoint", req.MAAEndpoint)
	if err != nil {
		return nil, err
	}
	vaultHost, err := normalizeEndpoint("akv_endpoint", req.AKVEndpoint)
	if err != nil {
		return nil, err
	}
	key, err := parseKeyRef(req.Kid)
	if err != nil {
		return nil, err
	}
	tok := strings.TrimSpace(req.AccessToken)
	if len(tok) > maxAccessToken {
		return nil, newAPIError(http.StatusBadRequest, nil, "field \"access_token\" is longer than %d bytes", maxAccessToken)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return nil, newAPIError(http.StatusBadRequest, nil, "field \"access_token\" must be a bare bearer token (printable ASCII, no spaces, no \"Bearer \" prefix)")
		}
	}
	return &keyReleaseParams{MAAHost: maaHost, VaultHost: vaultHost, Key: key, AccessToken: tok}, nil
}

// parseKeyRef accepts a key name as Microsoft's sidecar does, and also
// NAME/VERSION to pin a version (Key Vault versions are 32 hex digits).
func parseKeyRef(kid string) (keyRef, error) {
	kid = strings.TrimSpace(kid)
	if kid == "" {
		return keyRef{}, newAPIError(http.StatusBadRequest, nil, "missing field %q", "kid")
	}
	name, ver, hasVer := strings.Cut(kid, "/")
	if !keyNamePattern.MatchString(name) {
		return keyRef{}, newAPIError(http.StatusBadRequest, nil, "field \"kid\": %q is not a key name (1-127 letters, digits and dashes), optionally followed by /VERSION", truncate(kid, 200))
	}
	if hasVer && !keyVersionPattern.MatchString(ver) {
		return keyRef{}, newAPIError(http.StatusBadRequest, nil, "field \"kid\": version %q is not 32 hex digits", truncate(ver, 100))
	}
	return keyRef{Name: name, Version: ver}, nil
}

func (s *server) handleKeyRelease(w http.ResponseWriter, r *http.Request) {
	body, err := readRequestBody(r)
	if err != nil {
		writeError(w, err)
		return
	}
	p, err := decodeKeyReleaseRequest(body)
	clear(body) // our copy of the raw request; the decoded token lives on in p
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	start := time.Now()
	key, step, err := s.releaseKey(ctx, p)
	if err != nil {
		s.log.Warn("key release failed", "kid", p.Key.String(), "akv_endpoint", p.VaultHost, "maa_endpoint", p.MAAHost,
			"step", step, "duration", time.Since(start).Round(time.Microsecond), "err", err)
		writeError(w, err)
		return
	}
	s.log.Info("key released", "kid", p.Key.String(), "akv_endpoint", p.VaultHost, "maa_endpoint", p.MAAHost,
		"duration", time.Since(start).Round(time.Microsecond))
	writeJSON(w, http.StatusOK, map[string]string{"key": key})
}

// readRequestBody reads a bounded body; decodeRequestJSON refuses one over
// the limit.
func readRequestBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		return nil, newAPIError(http.StatusBadRequest, err, "read request body")
	}
	return body, nil
}

// releaseKey does one release and returns the key as a JWK JSON string, or
// the step that failed.
func (s *server) releaseKey(ctx context.Context, p *keyReleaseParams) (key, step string, err error) {
	// Before any token is fetched: without evidence there is no release.
	if err := s.requireTEE(); err != nil {
		return "", "evidence", err
	}
	bearer, source, err := s.bearerToken(ctx, p)
	if err != nil {
		return "", "token", err
	}
	cred, reused, err := s.rel.credential(ctx, p.MAAHost)
	if err != nil {
		return "", "MAA", err
	}
	defer s.rel.put(cred)
	s.log.Log(ctx, levelTrace, "release credential", "maa_endpoint", p.MAAHost, "reused", reused, "wrapping_kid", cred.key.kid)

	start := time.Now()
	jws, err := s.requestKeyRelease(ctx, p.VaultHost, p.Key, bearer, cred.token)
	if err != nil {
		var ue *upstreamError
		if p.AccessToken == "" && errors.As(err, &ue) && ue.StatusCode == http.StatusUnauthorized {
			s.tokens.Forget(p.VaultHost)
		}
		return "", "Key Vault", keyVaultFailure(err, p, source, cred.hostData)
	}
	s.log.Log(ctx, levelTrace, "Key Vault answered", "kid", p.Key.String(), "akv_endpoint", p.VaultHost, "duration", time.Since(start).Round(time.Microsecond))

	payload, err := verifyReleaseJWS(jws, p.VaultHost, s.upstreamRoots(), time.Now())
	if err != nil {
		return "", "verify", newAPIError(http.StatusForbidden, err, "verify: the Key Vault response for key %q from %s failed verification; no key was released", p.Key.String(), p.VaultHost)
	}
	env, err := parseReleasePayload(payload)
	if err != nil {
		return "", "verify", newAPIError(http.StatusBadGateway, err, "verify: the signed Key Vault response for key %q from %s is malformed", p.Key.String(), p.VaultHost)
	}
	if err := env.checkBinding(p.Key, p.VaultHost, cred.key); err != nil {
		return "", "verify", newAPIError(http.StatusForbidden, err, "verify: the Key Vault response for key %q from %s is not for this request", p.Key.String(), p.VaultHost)
	}
	out, err := env.unwrap(cred.key)
	if err != nil {
		return "", "unwrap", newAPIError(http.StatusBadGateway, err, "unwrap: key %q released by %s could not be unwrapped", p.Key.String(), p.VaultHost)
	}
	return out, "", nil
}

// bearerToken is the request's access_token, else one from the identity
// sources (workload identity, then IMDS). source names where it came from,
// for error messages; it never holds the token.
func (s *server) bearerToken(ctx context.Context, p *keyReleaseParams) (token, source string, err error) {
	if p.AccessToken != "" {
		return p.AccessToken, "access_token from the request", nil
	}
	start := time.Now()
	tok, source, err := s.tokens.Token(ctx, p.VaultHost)
	if err != nil {
		if source == "" {
			source = "workload identity or IMDS managed identity"
		}
		return "", source, fmt.Errorf("token: get a bearer token for %s (%s): %w", p.VaultHost, source, err)
	}
	if tok == "" {
		return "", source, newAPIError(http.StatusBadGateway, nil, "token: %s returned an empty bearer token for %s", source, p.VaultHost)
	}
	s.log.Log(ctx, levelTrace, "bearer token ready", "step", "token", "source", source, "duration", time.Since(start).Round(time.Microsecond))
	return tok, source, nil
}

// keyVaultFailure turns a Key Vault refusal into the status and hint a user
// can act on.
func keyVaultFailure(err error, p *keyReleaseParams, source, hostData string) error {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		return fmt.Errorf("Key Vault: release of key %q at %s: %w", p.Key.String(), p.VaultHost, err)
	}
	switch ue.StatusCode {
	case http.StatusUnauthorized:
		return newAPIError(http.StatusForbidden, err,
			"Key Vault: %s did not accept the bearer token (%s) for key %q: check that the token is current and its audience is %s",
			p.VaultHost, source, p.Key.String(), vaultResource(p.VaultHost))
	case http.StatusForbidden:
		return newAPIError(http.StatusForbidden, err,
			"Key Vault: %s refused to release key %q: the key's release policy was not met by this container group's MAA token "+
				"(this container group presents x-ms-sevsnpvm-hostdata %s: compare it with the key's release policy), "+
				"or the identity (%s) lacks the release permission (role Key Vault Crypto Service Release User or Managed HSM Crypto Service Release User)",
			p.VaultHost, p.Key.String(), hostData, source)
	case http.StatusNotFound:
		return newAPIError(http.StatusBadGateway, err,
			"Key Vault: %s has no key %q: check the key name (and version) and the vault endpoint", p.VaultHost, p.Key.String())
	}
	return fmt.Errorf("Key Vault: release of key %q at %s: %w", p.Key.String(), p.VaultHost, err)
}
