package main

import (
	"context"
	"sync"
	"time"
)

// flight runs at most one call per key at a time and hands its result to
// every caller that asks for the same key while it runs. The call runs on a
// context of its own, not on any caller's: a caller that gives up leaves
// without ending the call for the others, and a call that outlives all its
// callers still finishes, so that it can fill a cache for the next ones.
//
// Hooks run under the flight's lock; they may take their owner's lock, so
// the owner must not call do while holding that lock.
type flight[K comparable, V any] struct {
	// base is the context calls run on; nil means the context of the caller
	// that starts the call, without its cancellation and deadline.
	base context.Context
	// timeout bounds one call; 0 means no bound beyond base.
	timeout time.Duration
	// endAbandoned ends a call, and forgets it, once every caller has
	// given up on it, for a call that nobody else needs: then the next
	// caller starts afresh.
	endAbandoned bool
	// settle, when set, sees the result of a call before any caller does,
	// with the number of callers that will receive it: where a shared
	// value's references are counted.
	settle func(key K, v V, err error, takers int)
	// abandon, when set, gives back a value that settle counted for a
	// caller that gave up just as the call ended.
	abandon func(v V)

	mu    sync.Mutex
	calls map[K]*flightCall[V]
}

// flightCall is one call in flight and, once done is closed, its result.
type flightCall[V any] struct {
	done   chan struct{} // closed under flight.mu once v and err are set
	cancel context.CancelFunc
	takers int // callers waiting for the result
	v      V
	err    error
}

// do returns what cached finds, else the result of the call in flight for
// key, starting fn when there is none. cached (nil = no cache) runs under
// the flight's lock, so a result that fn stores before it returns is seen
// by every later caller, either in flight or in the cache. A caller whose
// ctx ends gets ctx.Err().
func (f *flight[K, V]) do(ctx context.Context, key K, cached func() (V, bool), fn func(context.Context) (V, error)) (V, error) {
	f.mu.Lock()
	if cached != nil {
		if v, ok := cached(); ok {
			f.mu.Unlock()
			return v, nil
		}
	}
	c := f.calls[key]
	if c == nil {
		c = &flightCall[V]{done: make(chan struct{})}
		if f.calls == nil {
			f.calls = map[K]*flightCall[V]{}
		}
		f.calls[key] = c
		var callCtx context.Context
		callCtx, c.cancel = f.callContext(ctx)
		go f.run(callCtx, key, c, fn)
	}
	c.takers++
	f.mu.Unlock()

	select {
	case <-c.done:
		return c.v, c.err
	case <-ctx.Done():
		return f.leave(ctx, key, c)
	}
}

func (f *flight[K, V]) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	base := f.base
	if base == nil {
		base = context.WithoutCancel(ctx)
	}
	if f.timeout > 0 {
		return context.WithTimeout(base, f.timeout)
	}
	return context.WithCancel(base)
}

func (f *flight[K, V]) run(ctx context.Context, key K, c *flightCall[V], fn func(context.Context) (V, error)) {
	defer c.cancel()
	v, err := fn(ctx)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forget(key, c)
	c.v, c.err = v, err
	if f.settle != nil {
		f.settle(key, v, err, c.takers)
	}
	close(c.done)
}

// leave takes a caller that gave up off the call, or, when the call ended
// meanwhile, gives back what settle counted for it.
func (f *flight[K, V]) leave(ctx context.Context, key K, c *flightCall[V]) (V, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-c.done:
		if c.err == nil && f.abandon != nil {
			f.abandon(c.v)
		}
	default:
		c.takers--
		if c.takers == 0 && f.endAbandoned {
			c.cancel()
			f.forget(key, c)
		}
	}
	var zero V
	return zero, ctx.Err()
}

// forget takes c off the calls in flight, unless a newer call took its
// place. f.mu is held.
func (f *flight[K, V]) forget(key K, c *flightCall[V]) {
	if f.calls[key] == c {
		delete(f.calls, key)
	}
}
