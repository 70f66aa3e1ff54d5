package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// takers is how many callers wait for the call in flight for key; 0 when
// none is in flight.
func (f *flight[K, V]) takers(key K) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if c := f.calls[key]; c != nil {
		return c.takers
	}
	return 0
}

// waitForTakers waits until n callers wait for the call in flight for key.
func waitForTakers[K comparable, V any](t testing.TB, f *flight[K, V], key K, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for f.takers(key) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d callers wait for the call, want %d", f.takers(key), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFlightSharesOneCall(t *testing.T) {
	t.Parallel()
	var f flight[string, int]
	var calls atomic.Int32
	gate := make(chan struct{})
	fn := func(context.Context) (int, error) {
		calls.Add(1)
		<-gate
		return 42, nil
	}
	const n = 8
	got := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { got[i], _ = f.do(context.Background(), "k", nil, fn) })
	}
	waitForTakers(t, &f, "k", n)
	close(gate)
	wg.Wait()
	for i, v := range got {
		if v != 42 {
			t.Fatalf("caller %d got %d", i, v)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("calls = %d, want 1", calls.Load())
	}
	if f.takers("k") != 0 || len(f.calls) != 0 {
		t.Fatal("a finished call is still in flight")
	}
}

func TestFlightCallerLeavesCallGoesOn(t *testing.T) {
	t.Parallel()
	var f flight[string, string]
	gate := make(chan struct{})
	callDone := make(chan error, 1)
	fn := func(ctx context.Context) (string, error) {
		<-gate
		callDone <- ctx.Err()
		return "v", nil
	}
	// The caller that starts the call is the one that gives up.
	impatient, cancel := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := f.do(impatient, "k", nil, fn)
		left <- err
	}()
	waitForTakers(t, &f, "k", 1)
	var patient string
	var wg sync.WaitGroup
	wg.Go(func() { patient, _ = f.do(context.Background(), "k", nil, fn) })
	waitForTakers(t, &f, "k", 2)
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller that gave up got %v", err)
	}
	if f.takers("k") != 1 {
		t.Fatalf("takers = %d after one left, want 1", f.takers("k"))
	}
	close(gate)
	wg.Wait()
	if err := <-callDone; err != nil {
		t.Fatalf("the call's context ended with its caller: %v", err)
	}
	if patient != "v" {
		t.Fatalf("the patient caller got %q", patient)
	}
}

func TestFlightCallContext(t *testing.T) {
	t.Parallel()
	type ctxKey struct{}
	t.Run("detached from the caller, bounded by timeout", func(t *testing.T) {
		f := flight[int, bool]{timeout: time.Hour}
		ctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "caller"))
		defer cancel()
		_, err := f.do(ctx, 1, nil, func(ctx context.Context) (bool, error) {
			dl, ok := ctx.Deadline()
			if !ok || time.Until(dl) > time.Hour || ctx.Value(ctxKey{}) != "caller" {
				return false, errors.New("not the caller's values with the flight's own deadline")
			}
			return true, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("on base, which ends it", func(t *testing.T) {
		base, cancel := context.WithCancel(context.Background())
		f := flight[int, bool]{base: base}
		cancel()
		_, err := f.do(context.Background(), 1, nil, func(ctx context.Context) (bool, error) { return false, ctx.Err() })
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want the base's cancellation", err)
		}
	})
}

func TestFlightCachedAndErrors(t *testing.T) {
	t.Parallel()
	var f flight[string, int]
	var mu sync.Mutex
	cache := map[string]int{}
	cached := func() (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		v, ok := cache["k"]
		return v, ok
	}
	calls := 0
	fail := errors.New("down")
	fn := func(context.Context) (int, error) {
		calls++
		if calls == 1 {
			return 0, fail
		}
		mu.Lock()
		cache["k"] = 7
		mu.Unlock()
		return 7, nil
	}
	if _, err := f.do(context.Background(), "k", cached, fn); !errors.Is(err, fail) {
		t.Fatalf("err = %v", err)
	}
	for range 3 {
		if v, err := f.do(context.Background(), "k", cached, fn); v != 7 || err != nil {
			t.Fatalf("got %d, %v", v, err)
		}
	}
	if calls != 2 {
		t.Fatalf("calls = %d, want 2 (a failure is not kept, a cached value is used)", calls)
	}
}

func TestFlightSettleAndAbandon(t *testing.T) {
	t.Parallel()
	var settled, abandoned []int
	f := flight[string, int]{
		settle:  func(_ string, v int, err error, takers int) { settled = append(settled, takers) },
		abandon: func(v int) { abandoned = append(abandoned, v) },
	}
	gate := make(chan struct{})
	fn := func(context.Context) (int, error) { <-gate; return 5, nil }
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { f.do(context.Background(), "k", nil, fn) })
	}
	waitForTakers(t, &f, "k", 3)
	close(gate)
	wg.Wait()
	if len(settled) != 1 || settled[0] != 3 {
		t.Fatalf("settle saw takers %v, want [3]", settled)
	}
	// A caller that gives up once the call has ended was counted by
	// settle: leaving gives its share back.
	done := &flightCall[int]{done: make(chan struct{}), takers: 1, v: 5}
	close(done.done)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := f.leave(ctx, "k", done); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if len(abandoned) != 1 || abandoned[0] != 5 {
		t.Fatalf("abandoned %v, want [5]", abandoned)
	}
	// One that leaves before the end is simply not counted.
	running := &flightCall[int]{done: make(chan struct{}), takers: 2}
	f.leave(ctx, "k", running)
	if running.takers != 1 || len(abandoned) != 1 {
		t.Fatalf("takers %d, abandoned %v", running.takers, abandoned)
	}
}

func TestFlightEndAbandoned(t *testing.T) {
	t.Parallel()
	f := flight[string, int]{endAbandoned: true}
	var calls atomic.Int32
	ended := make(chan error, 1)
	fn := func(ctx context.Context) (int, error) {
		if calls.Add(1) == 1 {
			<-ctx.Done()
			ended <- ctx.Err()
			return 0, ctx.Err()
		}
		return 9, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	left := make(chan error, 1)
	go func() {
		_, err := f.do(ctx, "k", nil, fn)
		left <- err
	}()
	waitForTakers(t, &f, "k", 1)
	cancel()
	if err := <-left; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller got %v", err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the abandoned call ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the abandoned call goes on")
	}
	// The next caller starts afresh instead of joining the ended call.
	if v, err := f.do(context.Background(), "k", nil, fn); v != 9 || err != nil {
		t.Fatalf("got %d, %v", v, err)
	}
}
