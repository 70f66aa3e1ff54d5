package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// cached reports how many credentials are held.
func (r *releaser) cached() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.current)
}

// fakeClock moves only when a test says so; Advance runs the timers that
// fall due before it returns.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	at      time.Time
	f       func()
	stopped bool // guarded by fakeClock.mu
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due, pending []*fakeTimer
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.at.After(c.now):
			t.stopped = true
			due = append(due, t)
		default:
			pending = append(pending, t)
		}
	}
	c.timers = pending
	c.mu.Unlock()
	slices.SortFunc(due, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for _, t := range due {
		t.f()
	}
}

// tokenFor is an attestFunc whose tokens expire life after clock's now;
// it counts its calls and, when gate is not nil, waits for it to close.
type tokenFor struct {
	clock *fakeClock
	life  time.Duration // 0 = a token without exp
	gate  chan struct{}
	calls atomic.Int32
}

func (a *tokenFor) attest(ctx context.Context, host string, runtimeData []byte) (attestation, error) {
	a.calls.Add(1)
	if a.gate != nil {
		<-a.gate
	}
	if a.life == 0 {
		return attestation{token: "t", hostData: "hd"}, nil
	}
	return attestation{token: "t", expires: a.clock.Now().Add(a.life), hostData: "hd"}, nil
}

func newUnitReleaser(t *testing.T, ttl time.Duration, a *tokenFor) *releaser {
	t.Helper()
	r := newReleaser(releaserConfig{
		TTL: ttl, Timeout: 5 * time.Second, Attest: a.attest, NewKey: testWrappingKeys(t),
		Log: newLogger(&syncBuffer{}, levelTrace), Clock: a.clock,
	})
	t.Cleanup(r.Close)
	return r
}

func mustCredential(t *testing.T, r *releaser) (*releaseCredential, bool) {
	t.Helper()
	c, reused, err := r.credential(context.Background(), "maa.example")
	if err != nil {
		t.Fatal(err)
	}
	return c, reused
}

func TestReleaserSingleFlightAndDrop(t *testing.T) {
	t.Parallel()
	a := &tokenFor{clock: newFakeClock(), life: time.Hour, gate: make(chan struct{})}
	r := newUnitReleaser(t, time.Minute, a)
	const n = 16
	creds := make(chan *releaseCredential, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, _, err := r.credential(context.Background(), "maa.example")
			if err != nil {
				t.Error(err)
				return
			}
			creds <- c
		})
	}
	// One caller gives up while the attestation is in flight.
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, _, err := r.credential(ctx, "maa.example")
		gaveUp <- err
	}()
	waitForTakers(t, &r.flights, "maa.example", n+1)
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up got %v", err)
	}
	close(a.gate)
	wg.Wait()
	close(creds)
	var first *releaseCredential
	for c := range creds {
		if first == nil {
			first = c
		}
		if c != first {
			t.Fatal("concurrent callers got different credentials")
		}
	}
	if a.calls.Load() != 1 {
		t.Fatalf("attestations = %d, want 1", a.calls.Load())
	}
	r.mu.Lock()
	refs := first.refs
	r.mu.Unlock()
	if refs != n {
		t.Fatalf("refs = %d, want %d (the caller that gave up holds none)", refs, n)
	}
	for range n {
		r.put(first)
	}
	if first.key.priv == nil {
		t.Fatal("a live cached key was dropped")
	}
	// Cached: the next caller reuses it without attesting.
	if c, reused := mustCredential(t, r); !reused || c != first {
		t.Fatalf("reuse: %v", reused)
	}
	r.put(first)
	r.Close()
	if first.key.priv != nil {
		t.Fatal("Close left the wrapping key in memory")
	}
	if r.cached() != 0 {
		t.Fatal("Close left credentials")
	}
}

func TestReleaserExpiryWaitsForUsers(t *testing.T) {
	t.Parallel()
	a := &tokenFor{clock: newFakeClock(), life: time.Hour}
	r := newUnitReleaser(t, time.Minute, a)
	c, _ := mustCredential(t, r)
	a.clock.Advance(time.Minute)
	if c.key.priv == nil {
		t.Fatal("the key was dropped while a release still used it")
	}
	if r.cached() != 0 {
		t.Fatal("an expired credential is still cached")
	}
	r.put(c)
	if c.key.priv != nil {
		t.Fatal("an expired key was kept after its last user")
	}
}

func TestReleaserExpiryDropsUnusedKey(t *testing.T) {
	t.Parallel()
	a := &tokenFor{clock: newFakeClock(), life: time.Hour}
	r := newUnitReleaser(t, time.Minute, a)
	c, _ := mustCredential(t, r)
	r.put(c)
	a.clock.Advance(time.Minute - time.Second)
	if c.key.priv == nil || r.cached() != 1 {
		t.Fatal("a credential was dropped within its TTL")
	}
	// Nobody asks again: the key goes when the TTL ends all the same.
	a.clock.Advance(time.Second)
	if c.key.priv != nil || r.cached() != 0 {
		t.Fatal("an unused credential outlived its TTL")
	}
}

// The reuse window of a wrapping key ends tokenExpiryMargin before its MAA
// token's exp when that comes before the TTL.
func TestReleaserReuseCappedByTokenExpiry(t *testing.T) {
	t.Parallel()
	const life = 10 * time.Minute
	a := &tokenFor{clock: newFakeClock(), life: life}
	r := newUnitReleaser(t, time.Hour, a)
	first, _ := mustCredential(t, r)
	r.put(first)
	a.clock.Advance(life - tokenExpiryMargin - time.Second)
	if c, reused := mustCredential(t, r); !reused || c != first {
		t.Fatal("not reused within the token's lifetime less the margin")
	}
	r.put(first)
	a.clock.Advance(2 * time.Second)
	c, reused := mustCredential(t, r)
	defer r.put(c)
	if reused || c == first || a.calls.Load() != 2 {
		t.Fatalf("reused %v, attestations %d: a token within %v of its exp was reused", reused, a.calls.Load(), tokenExpiryMargin)
	}
	if first.key.priv != nil {
		t.Fatal("the retired key was kept")
	}
}

func TestReleaserTokenExpiryBoundsReuse(t *testing.T) {
	t.Parallel()
	for name, life := range map[string]time.Duration{
		"token expiring within the margin": tokenExpiryMargin - time.Second,
		"token without exp":                0,
	} {
		t.Run(name, func(t *testing.T) {
			// Used once, never cached.
			a := &tokenFor{clock: newFakeClock(), life: life}
			r := newUnitReleaser(t, time.Hour, a)
			c, _ := mustCredential(t, r)
			r.put(c)
			if c.key.priv != nil || r.cached() != 0 {
				t.Fatal("a credential past its reuse time was kept")
			}
		})
	}
}

func TestReuseUntil(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		exp  time.Time
		want time.Time
	}{
		{"TTL first", time.Minute, now.Add(time.Hour), now.Add(time.Minute)},
		{"exp less the margin first", time.Hour, now.Add(10 * time.Minute), now.Add(10*time.Minute - tokenExpiryMargin)},
		{"exp within the margin", time.Hour, now.Add(time.Minute), now.Add(time.Minute - tokenExpiryMargin)},
		{"no exp", time.Hour, time.Time{}, now},
	} {
		if got := reuseUntil(now, tc.ttl, tc.exp); !got.Equal(tc.want) {
			t.Errorf("%s: reuseUntil = %v, want %v", tc.name, got.Sub(now), tc.want.Sub(now))
		}
	}
}

// slotCounts is what the attestation bounds hold now.
func (r *releaser) slotCounts() (inUse, waiting int) {
	r.slots.mu.Lock()
	defer r.slots.mu.Unlock()
	return r.slots.inUse, r.slots.waiting
}

// cachedHosts lists the MAA hosts with a cached credential.
func (r *releaser) cachedHosts() map[string]*releaseCredential {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]*releaseCredential{}
	for h, c := range r.current {
		out[h] = c
	}
	return out
}

// waitFor polls cond until it holds; the releaser's state changes in
// goroutines the test does not control.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// gatedAttest is an attestFunc that counts the attestations running at
// once and holds each until gate closes or its context ends.
type gatedAttest struct {
	clock     *fakeClock
	gate      chan struct{}
	running   atomic.Int32
	peak      atomic.Int32
	calls     atomic.Int32
	cancelled atomic.Int32
	mu        sync.Mutex
	byHost    map[string]int
	peakHost  int
}

func newGatedAttest() *gatedAttest {
	return &gatedAttest{clock: newFakeClock(), gate: make(chan struct{}), byHost: map[string]int{}}
}

func (a *gatedAttest) attest(ctx context.Context, host string, _ []byte) (attestation, error) {
	a.calls.Add(1)
	n := a.running.Add(1)
	defer a.running.Add(-1)
	for p := a.peak.Load(); n > p && !a.peak.CompareAndSwap(p, n); p = a.peak.Load() {
	}
	a.mu.Lock()
	a.byHost[host]++
	a.peakHost = max(a.peakHost, a.byHost[host])
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.byHost[host]--
		a.mu.Unlock()
	}()
	select {
	case <-a.gate:
		return attestation{token: "t", expires: a.clock.Now().Add(time.Hour), hostData: "hd"}, nil
	case <-ctx.Done():
		a.cancelled.Add(1)
		return attestation{}, ctx.Err()
	}
}

func newBoundedReleaser(t *testing.T, a attestFunc, clk clock) *releaser {
	t.Helper()
	r := newReleaser(releaserConfig{TTL: time.Minute, Timeout: time.Minute, Attest: a, NewKey: testWrappingKeys(t), Clock: clk})
	t.Cleanup(r.Close)
	return r
}

// The cache-fill attack: 200 distinct MAA names at once. Whatever the
// names, at most maxAttestations attestations run at a time (the others
// wait), and at most maxCachedCredentials credentials stay afterwards;
// every other wrapping key is destroyed once its release is done. That is
// the memory bound: maxCachedCredentials + maxAttestations wrapping keys
// with their tokens, however many names are tried.
func TestReleaserBoundsCacheAndAttestationsUnderManyNames(t *testing.T) {
	t.Parallel()
	a := newGatedAttest()
	r := newBoundedReleaser(t, a.attest, a.clock)
	const names = 200
	creds := make(chan *releaseCredential, names)
	var wg sync.WaitGroup
	for i := range names {
		wg.Go(func() {
			c, _, err := r.credential(context.Background(), fmt.Sprintf("maa%d.example", i))
			if err != nil {
				t.Error(err)
				return
			}
			creds <- c
		})
	}
	waitFor(t, "the attestations beyond the bound to wait", func() bool {
		inUse, waiting := r.slotCounts()
		// A slot is taken before the wrapping key: the attestation itself
		// starts once the key pool has handed one out.
		return inUse == maxAttestations && waiting == names-maxAttestations && a.calls.Load() == maxAttestations
	})
	if got := a.calls.Load(); got != maxAttestations {
		t.Fatalf("%d attestations started for %d names, want %d", got, names, maxAttestations)
	}
	close(a.gate)
	wg.Wait()
	close(creds)
	if p := a.peak.Load(); p > maxAttestations {
		t.Fatalf("%d attestations ran at once, more than %d", p, maxAttestations)
	}
	var all []*releaseCredential
	for c := range creds {
		all = append(all, c)
		r.put(c)
	}
	if len(all) != names {
		t.Fatalf("%d credentials for %d names", len(all), names)
	}
	live := 0
	for _, c := range all {
		if c.key.priv != nil {
			live++
		}
	}
	if n := r.cached(); n != maxCachedCredentials || live != maxCachedCredentials {
		t.Fatalf("after %d names: %d cached credentials, %d wrapping keys alive; want %d of each", names, n, live, maxCachedCredentials)
	}
	if inUse, waiting := r.slotCounts(); inUse != 0 || waiting != 0 || len(r.slots.byHost) != 0 {
		t.Fatalf("slots after the attack: %d in use, %d waiting, %d hosts", inUse, waiting, len(r.slots.byHost))
	}
}

// Names beyond the bound evict the credential used least recently, and
// destroy its key; one in use survives until its release is done.
func TestReleaserEvictsLeastRecentlyUsed(t *testing.T) {
	t.Parallel()
	a := &tokenFor{clock: newFakeClock(), life: time.Hour}
	r := newUnitReleaser(t, time.Hour, a)
	get := func(host string) *releaseCredential {
		t.Helper()
		c, _, err := r.credential(context.Background(), host)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := map[string]*releaseCredential{}
	for i := range maxCachedCredentials {
		h := fmt.Sprintf("maa%d.example", i)
		first[h] = get(h)
		r.put(first[h])
	}
	// Used again, in this order: maa1 (held by a release), maa2 ... maa7,
	// and maa0 last.
	inUse := get("maa1.example")
	for i := 2; i < maxCachedCredentials; i++ {
		r.put(get(fmt.Sprintf("maa%d.example", i)))
	}
	r.put(get("maa0.example"))
	// maa1 is the least recently used: it goes first, while its release
	// still holds it.
	r.put(get("new1.example"))
	hosts := r.cachedHosts()
	if _, ok := hosts["maa1.example"]; ok || len(hosts) != maxCachedCredentials {
		t.Fatalf("cached after one name too many: %v", keysOf(hosts))
	}
	if inUse.key.priv == nil {
		t.Fatal("an evicted credential was destroyed while a release used it")
	}
	r.put(inUse)
	if inUse.key.priv != nil {
		t.Fatal("an evicted credential outlived its last release")
	}
	// The next name evicts maa2, the oldest of the rest; maa0 stays.
	r.put(get("new2.example"))
	hosts = r.cachedHosts()
	if _, ok := hosts["maa2.example"]; ok {
		t.Fatalf("maa2 was not evicted: %v", keysOf(hosts))
	}
	if _, ok := hosts["maa0.example"]; !ok {
		t.Fatalf("maa0, used recently, was evicted: %v", keysOf(hosts))
	}
	if first["maa2.example"].key.priv != nil {
		t.Fatal("the evicted key is still in memory")
	}
	if n := a.calls.Load(); n != maxCachedCredentials+2 {
		t.Fatalf("%d attestations, want %d: reuse within the cache must not attest", n, maxCachedCredentials+2)
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// Fresh attestations for one MAA endpoint (a rogue vault, or TTL 0) run at
// most maxAttestationsPerMAAHost at a time, leaving room for other hosts.
func TestReleaserBoundsAttestationsPerHost(t *testing.T) {
	t.Parallel()
	a := newGatedAttest()
	r := newBoundedReleaser(t, a.attest, a.clock)
	const n = 20
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			c, err := r.fresh(context.Background(), "one.example")
			if err != nil {
				t.Error(err)
				return
			}
			r.put(c)
		})
	}
	waitFor(t, "the attestations beyond the per-host bound to wait", func() bool {
		inUse, waiting := r.slotCounts()
		return inUse == maxAttestationsPerMAAHost && waiting == n-maxAttestationsPerMAAHost
	})
	// Another host still gets a slot.
	other := make(chan error, 1)
	go func() {
		c, err := r.fresh(context.Background(), "other.example")
		if err == nil {
			r.put(c)
		}
		other <- err
	}()
	waitFor(t, "the other host's attestation to start", func() bool {
		inUse, _ := r.slotCounts()
		return inUse == maxAttestationsPerMAAHost+1
	})
	close(a.gate)
	wg.Wait()
	if err := <-other; err != nil {
		t.Fatal(err)
	}
	if a.peakHost > maxAttestationsPerMAAHost {
		t.Fatalf("%d attestations for one host at once, more than %d", a.peakHost, maxAttestationsPerMAAHost)
	}
	if r.cached() != 0 {
		t.Fatal("a fresh credential was cached")
	}
}

// A caller that gives up stops costing: waiting for a slot ends with its
// context, and a shared attestation that every caller left is cancelled.
func TestReleaserAbandonedAttestationsEnd(t *testing.T) {
	t.Parallel()
	a := newGatedAttest()
	r := newBoundedReleaser(t, a.attest, a.clock)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := r.credential(ctx, "maa.example")
		done <- err
	}()
	waitFor(t, "the attestation to start", func() bool { return a.running.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller got %v", err)
	}
	waitFor(t, "the abandoned attestation to end", func() bool { return a.cancelled.Load() == 1 && a.running.Load() == 0 })
	waitFor(t, "its slot to come free", func() bool { inUse, _ := r.slotCounts(); return inUse == 0 })

	// Waiting for a slot ends with the caller's deadline.
	for i := range maxAttestations {
		go r.fresh(t.Context(), fmt.Sprintf("busy%d.example", i))
	}
	waitFor(t, "every slot to be taken", func() bool { inUse, _ := r.slotCounts(); return inUse == maxAttestations })
	wctx, wcancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer wcancel()
	_, err := r.fresh(wctx, "late.example")
	if !errors.Is(err, context.DeadlineExceeded) || statusFor(err) != http.StatusGatewayTimeout {
		t.Fatalf("a caller past its deadline got %v (status %d)", err, statusFor(err))
	}
	if _, waiting := r.slotCounts(); waiting != 0 {
		t.Fatalf("%d callers still wait after giving up", waiting)
	}
}

// A release from a host that is not a Key Vault or Managed HSM gets a
// wrapping key and MAA token of its own, never the shared one that a real
// vault honours, and never reused; the vaults' shared credential is left
// as it was.
func TestKeyReleaseRogueVaultGetsFreshCredential(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Hour})
	rogue := newKVStandIn(t, "rogue-token")
	rogue.addKey(&kvKey{name: "bait", kty: "oct-HSM", material: []byte("0123456789abcdef0123456789abcdef"),
		policy: standInReleasePolicy(e.maa.host, e.hostData)})
	wrappedTo := func(kv *kvStandIn) string {
		kv.mu.Lock()
		defer kv.mu.Unlock()
		return kv.lastReleaseTo
	}
	rogueBody := fmt.Sprintf(`{"maa_endpoint":%q,"akv_endpoint":%q,"kid":"bait","access_token":"rogue-token"}`, e.maa.host, rogue.host)

	e.mustRelease(t, keyOct)
	shared := wrappedTo(e.kv)
	seen := map[string]bool{shared: true}
	for i := range 2 {
		k := e.mustReleaseBody(t, rogueBody)
		if !strings.HasPrefix(k.Kid, "https://"+rogue.host+"/keys/bait/") {
			t.Fatalf("kid %q does not name the host asked", k.Kid)
		}
		if to := wrappedTo(rogue); seen[to] {
			t.Fatalf("rogue release %d got a wrapping key already used (shared %v)", i+1, to == shared)
		} else {
			seen[to] = true
		}
		e.mustRelease(t, keyOct)
		if to := wrappedTo(e.kv); to != shared {
			t.Fatal("the vault's shared credential was replaced by a rogue release")
		}
	}
	if got := e.maa.count(); got != 3 {
		t.Fatalf("MAA calls = %d, want 1 shared + 1 per rogue release", got)
	}
	found := false
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, "key released") && strings.Contains(line, "akv_endpoint="+rogue.host) {
			found = true
			if !strings.Contains(line, `signed_by="*.vault.azure.net (issued by `) {
				t.Errorf("the release log does not name the signer: %s", line)
			}
		}
	}
	if !found {
		t.Error("no log line for the rogue releases")
	}
}

// /attest/maa attestations count against the same bound as the releases'.
func TestAttestMAASharesTheAttestationBound(t *testing.T) {
	t.Parallel()
	tee := &gatedTEE{teeDevice: newTestEmulator(t, nil), entered: make(chan struct{}, 64), gate: make(chan struct{})}
	gi := absentGuestInterfaces(t)
	s, err := newServer(serverConfig{}, newLogger(&syncBuffer{}, levelTrace), serverOptions{TEE: tee, Getenv: envOf(nil), SecurityContextRoot: t.TempDir(), GuestInterfaces: &gi, Retry: &releaseRetry,
		WrappingKeys: testWrappingKeys(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.rel.Close)
	srv := httptest.NewServer(s.routes())
	t.Cleanup(srv.Close)
	const n = maxAttestations + 4
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			body := fmt.Sprintf(`{"maa_endpoint":"maa%d.invalid","runtime_data":"aGVsbG8="}`, i)
			resp, err := http.Post(srv.URL+"/attest/maa", "application/json", strings.NewReader(body))
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	waitFor(t, "the attestations beyond the bound to wait", func() bool {
		inUse, waiting := s.rel.slotCounts()
		return inUse == maxAttestations && waiting == n-maxAttestations
	})
	close(tee.gate)
	wg.Wait()
	if inUse, waiting := s.rel.slotCounts(); inUse != 0 || waiting != 0 {
		t.Fatalf("slots after: %d in use, %d waiting", inUse, waiting)
	}
}
