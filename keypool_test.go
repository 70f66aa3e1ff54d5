package main

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// keyFactory makes wrapping keys for a pool under test and remembers them;
// with a gate, each generation waits for a value on it.
type keyFactory struct {
	copyKey func() (*wrappingKey, error)
	gate    chan struct{} // nil = no waiting
	fail    int           // the first fail generations fail
	opened  sync.Once

	mu       sync.Mutex
	made     []*wrappingKey
	calls    int
	inFlight int
	maxIn    int
}

func newKeyFactory(t testing.TB) *keyFactory { return &keyFactory{copyKey: testWrappingKeys(t)} }

func (f *keyFactory) gen() (*wrappingKey, error) {
	f.mu.Lock()
	f.calls++
	failing := f.calls <= f.fail
	f.inFlight++
	f.maxIn = max(f.maxIn, f.inFlight)
	f.mu.Unlock()
	if f.gate != nil {
		<-f.gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inFlight--
	if failing {
		return nil, errors.New("no entropy today")
	}
	k, err := f.copyKey()
	if err == nil {
		f.made = append(f.made, k)
	}
	return k, err
}

// openGate lets every generation through from now on.
func (f *keyFactory) openGate() { f.opened.Do(func() { close(f.gate) }) }

func (f *keyFactory) snapshot() (made []*wrappingKey, inFlight, maxIn int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*wrappingKey(nil), f.made...), f.inFlight, f.maxIn
}

func newTestPool(t *testing.T, f *keyFactory, kg *keygen, c clock) *keyPool {
	t.Helper()
	p := newKeyPool(f.gen, kg, c, slog.New(slog.DiscardHandler))
	t.Cleanup(p.close)
	return p
}

// newGatedPool is a pool on two schedulers whose generations each wait
// for a value on f.gate.
func newGatedPool(t *testing.T) (*keyFactory, *keyPool) {
	t.Helper()
	f := newKeyFactory(t)
	f.gate = make(chan struct{})
	p := newTestPool(t, f, testKeygen(2), newFakeClock())
	t.Cleanup(f.openGate) // before the pool's close, which waits for the generations
	return f, p
}

// eventually waits for cond, which background key generation makes true.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
	}
}

func spares(p *keyPool) int { return p.stats().Spares }

func TestKeyPoolHandsOutEachKeyOnce(t *testing.T) {
	t.Parallel()
	f := newKeyFactory(t)
	p := newTestPool(t, f, testKeygen(2), newFakeClock())
	const n = 40
	keys := make(chan *wrappingKey, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			k, err := p.take(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			keys <- k
		})
	}
	wg.Wait()
	close(keys)
	seen := map[*wrappingKey]bool{}
	for k := range keys {
		if seen[k] || k.priv == nil {
			t.Fatalf("key %p handed out twice or destroyed", k)
		}
		seen[k] = true
	}
	if st := p.stats(); st.Taken != n || len(seen) != n {
		t.Fatalf("taken %d, distinct %d, want %d", st.Taken, len(seen), n)
	}
}

// Spares follow demand: one when idle, as many as were taken in the last
// minute up to maxSpareKeys, and none outlives spareKeyMaxAge.
func TestKeyPoolSparesFollowDemandAndExpire(t *testing.T) {
	t.Parallel()
	f, clk := newKeyFactory(t), newFakeClock()
	p := newTestPool(t, f, testKeygen(2), clk)
	eventually(t, "one spare when idle", func() bool { return spares(p) == 1 })

	for range 3 {
		if _, err := p.take(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "three spares after three takes", func() bool { return spares(p) == 3 })
	for range 6 {
		if _, err := p.take(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "at most maxSpareKeys", func() bool { return spares(p) == maxSpareKeys })
	waitIdle(t, p)

	made, _, _ := f.snapshot()
	clk.Advance(spareKeyMaxAge)
	for _, k := range made {
		if k.priv != nil && !taken(p, k) {
			t.Fatalf("a spare made %v ago is still in memory", spareKeyMaxAge)
		}
	}
	// Demand is long past: one spare again, made after the expiry.
	eventually(t, "back to one spare", func() bool { return spares(p) == 1 })
	if st := p.stats(); st.Expired != maxSpareKeys {
		t.Fatalf("expired %d, want %d", st.Expired, maxSpareKeys)
	}
	k, err := p.take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if k.priv == nil || clk.Now().Sub(k.made) >= spareKeyMaxAge {
		t.Fatalf("handed out a key made %v ago", clk.Now().Sub(k.made))
	}
}

// taken reports whether k was handed out (the test keeps no such keys, so
// a live key is a spare).
func taken(p *keyPool, k *wrappingKey) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.spares {
		if s.key == k {
			return false
		}
	}
	return true
}

// waitIdle waits until the pool makes no key.
func waitIdle(t *testing.T, p *keyPool) {
	t.Helper()
	eventually(t, "no key being made", func() bool { return p.stats().Making == 0 })
}

// Releases waiting together get their keys made on every scheduler, not one
// after the other, and never on more schedulers than there are.
func TestKeyPoolWaitersGetKeysInParallel(t *testing.T) {
	t.Parallel()
	f, p := newGatedPool(t)
	const n = 4
	got := make(chan error, n)
	for range n {
		go func() {
			_, err := p.take(context.Background())
			got <- err
		}()
	}
	eventually(t, "two keys made at once", func() bool { _, in, _ := f.snapshot(); return in == 2 })
	eventually(t, "every taker waiting", func() bool { return p.stats().Waiting == n })
	f.openGate()
	for range n {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	if _, _, maxIn := f.snapshot(); maxIn != 2 {
		t.Fatalf("at most %d keys made at once, want 2 (the schedulers)", maxIn)
	}
}

// One release waiting while a spare is being made is enough to make keys on
// every scheduler: the next release will want one too.
func TestKeyPoolOneWaiterUsesEveryScheduler(t *testing.T) {
	t.Parallel()
	f, p := newGatedPool(t)
	eventually(t, "the first spare being made", func() bool { _, in, _ := f.snapshot(); return in == 1 })
	go p.take(context.Background())
	eventually(t, "two keys made at once", func() bool { _, in, _ := f.snapshot(); return in == 2 })
	f.openGate()
}

// With one scheduler, background work waits for the first answer; a
// release that needs a key before then must not wait for it.
func TestKeyPoolSingleSchedulerTakeDoesNotWaitForTheFirstAnswer(t *testing.T) {
	t.Parallel()
	f := newKeyFactory(t)
	kg := testKeygen(1)
	p := newTestPool(t, f, kg, newFakeClock())
	if st := p.stats(); st.Making != 1 || running(kg) != 0 {
		t.Fatalf("before the first answer: %+v, %d running; want one spare queued, none made", st, running(kg))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.take(ctx); err != nil {
		t.Fatal(err)
	}
}

// A key made for a taker that gave up was never used: it serves the next.
func TestKeyPoolAbandonedWaitKeepsTheKey(t *testing.T) {
	t.Parallel()
	f, p := newGatedPool(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := p.take(ctx)
		done <- err
	}()
	eventually(t, "a taker waiting", func() bool { return p.stats().Waiting == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	f.gate <- struct{}{}
	eventually(t, "the key kept as a spare", func() bool { return spares(p) == 1 })
	k, err := p.take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if made, _, _ := f.snapshot(); k != made[0] {
		t.Fatal("the next taker did not get the key made for the one who left")
	}
	f.openGate()
}

func TestKeyPoolRetriesAfterAFailure(t *testing.T) {
	t.Parallel()
	f, clk := newKeyFactory(t), newFakeClock()
	f.fail = 1
	p := newTestPool(t, f, testKeygen(2), clk)
	eventually(t, "the failure seen", func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.paused })
	if st := p.stats(); st.Making != 0 {
		t.Fatalf("%d keys being made during the pause", st.Making)
	}
	clk.Advance(genRetryDelay)
	eventually(t, "a spare after the retry", func() bool { return spares(p) == 1 })
}

// Closing destroys the spares, ends the waits, and destroys the keys that
// were still being made.
func TestKeyPoolCloseDestroysEverything(t *testing.T) {
	t.Parallel()
	f := newKeyFactory(t)
	p := newKeyPool(f.gen, testKeygen(2), newFakeClock(), slog.New(slog.DiscardHandler))
	eventually(t, "a spare", func() bool { return spares(p) == 1 })
	f.gate = make(chan struct{})
	if _, err := p.take(context.Background()); err != nil { // the spare; its replacement waits at the gate
		t.Fatal(err)
	}
	eventually(t, "a replacement being made", func() bool { _, in, _ := f.snapshot(); return in == 1 })
	waiting := make(chan error)
	go func() {
		_, err := p.take(context.Background())
		waiting <- err
	}()
	eventually(t, "a taker waiting", func() bool { return p.stats().Waiting == 1 })
	closed := make(chan struct{})
	go func() { p.close(); close(closed) }()
	if err := <-waiting; !errors.Is(err, errReleaserClosed) {
		t.Fatalf("waiting taker: %v", err)
	}
	f.openGate()
	<-closed
	made, _, _ := f.snapshot()
	for i, k := range made[1:] {
		if k.priv != nil {
			t.Fatalf("key %d of %d, made during close, kept its private key", i+2, len(made))
		}
	}
	if _, err := p.take(context.Background()); !errors.Is(err, errReleaserClosed) {
		t.Fatalf("take after close: %v", err)
	}
}

func TestKeyPoolCloseDestroysSpares(t *testing.T) {
	t.Parallel()
	f := newKeyFactory(t)
	p := newKeyPool(f.gen, testKeygen(2), newFakeClock(), slog.New(slog.DiscardHandler))
	eventually(t, "a spare", func() bool { return spares(p) == 1 })
	p.close()
	if made, _, _ := f.snapshot(); len(made) != 1 || made[0].priv != nil {
		t.Fatalf("made %d keys; the spare kept its private key after close", len(made))
	}
}

// A spare whose timer is late is not handed out past its maximum age.
func TestKeyPoolLateTimerDoesNotExtendAge(t *testing.T) {
	t.Parallel()
	f := newKeyFactory(t)
	clk := &lateClock{fakeClock: newFakeClock()}
	p := newTestPool(t, f, testKeygen(2), clk)
	eventually(t, "a spare", func() bool { return spares(p) == 1 })
	clk.Advance(spareKeyMaxAge)
	k, err := p.take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	made, _, _ := f.snapshot()
	if k == made[0] || made[0].priv != nil {
		t.Fatal("a spare past its maximum age was handed out or kept")
	}
}

// lateClock's timers never fire, as if the scheduler were late.
type lateClock struct{ *fakeClock }

func (lateClock) AfterFunc(time.Duration, func()) func() bool { return func() bool { return true } }

// testWrappingKeys makes wrapping keys quickly: copies of stand-in keys in
// turn, so that a server's first testWrappingKeyCount wrapping keys are
// distinct, as generated ones are, and destroying one leaves the stand-in
// alone.
func testWrappingKeys(t testing.TB) func() (*wrappingKey, error) {
	t.Helper()
	var keys [testWrappingKeyCount]*rsa.PrivateKey
	for i := range keys {
		keys[i] = standInRSAKey(t, rsaWrapping+i)
	}
	var next atomic.Int64
	return func() (*wrappingKey, error) {
		k, err := copyRSAKey(keys[next.Add(1)%int64(len(keys))])
		if err != nil {
			return nil, err
		}
		return wrappingKeyFrom(k)
	}
}

// destroy overwrites the private numbers in place, Precomputed values and
// primes included, not just drops the pointer to them.
func TestWrappingKeyDestroyZeroes(t *testing.T) {
	t.Parallel()
	wk, err := testWrappingKeys(t)()
	if err != nil {
		t.Fatal(err)
	}
	priv := wk.priv
	words := rsaSecretWords(priv)
	if len(words) != 6 {
		t.Fatalf("%d private numbers, want D, Dp, Dq, Qinv and two primes", len(words))
	}
	wk.destroy()
	if wk.priv != nil {
		t.Fatal("destroy kept the private key")
	}
	wantZeroWords(t, words)
	for _, x := range append([]*big.Int{priv.D, priv.Precomputed.Dp, priv.Precomputed.Dq, priv.Precomputed.Qinv}, priv.Primes...) {
		if x.Sign() != 0 {
			t.Fatal("a private number still reads non-zero")
		}
	}
	wk.destroy() // twice is harmless
}

func TestWrappingKeyRuntimeData(t *testing.T) {
	t.Parallel()
	wk, err := wrappingKeyFrom(standInRSAKey(t, rsaOther))
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(wk.runtimeData, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("runtime data %s: %v", wk.runtimeData, err)
	}
	k := set.Keys[0]
	if k["kty"] != "RSA" || k["kid"] != wk.kid || k["n"] == nil || k["e"] != "AQAB" {
		t.Fatalf("runtime JWK = %v", k)
	}
	if ops, _ := k["key_ops"].([]any); len(ops) != 1 || ops[0] != "encrypt" {
		t.Fatalf("key_ops = %v", k["key_ops"])
	}
	if _, ok := k["d"]; ok {
		t.Fatal("the runtime data holds the private exponent")
	}
	tp, _ := jwkThumbprint(rsaPublicJWK(&standInRSAKey(t, rsaOther).PublicKey))
	if wk.kid != tp {
		t.Fatalf("kid %q is not the thumbprint %q", wk.kid, tp)
	}
}
