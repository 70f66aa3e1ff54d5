package main

import (
	"context"
	"fmt"
	"time"
)

// backgroundWork is work started at once whose outcome callers wait for,
// each only as long as its own deadline allows: key generation that must
// not delay start-up or the first /status.
type backgroundWork struct {
	what  string        // what is being made, for the error of a caller that gave up
	ready chan struct{} // closed once err and took are set
	err   error
	took  time.Duration

	kg   *keygen     // runs the work within its scheduler limits; nil = a goroutine of its own
	task *keygenTask // the work queued at kg
}

// startBackgroundOn queues work at kg, which runs it when a scheduler may
// be spared; a caller that waits for it hurries it. Without kg the work
// starts at once.
func startBackgroundOn(kg *keygen, what string, work func() error) *backgroundWork {
	if kg == nil {
		return startBackground(what, work)
	}
	b := &backgroundWork{what: what, ready: make(chan struct{}), kg: kg}
	b.task = kg.background(func() { b.finish(work) })
	return b
}

// finish runs work and publishes its outcome.
func (b *backgroundWork) finish(work func() error) {
	start := time.Now()
	b.err = work()
	b.took = time.Since(start)
	close(b.ready)
}

// startBackground runs work in a goroutine and returns at once.
func startBackground(what string, work func() error) *backgroundWork {
	b := &backgroundWork{what: what, ready: make(chan struct{})}
	go b.finish(work)
	return b
}

// wait blocks until the work is done or ctx ends.
func (b *backgroundWork) wait(ctx context.Context) error {
	select {
	case <-b.ready:
		return b.err
	default:
	}
	if b.task != nil {
		b.kg.hurry(b.task)
	}
	select {
	case <-b.ready:
		return b.err
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s: %w", b.what, context.Cause(ctx))
	}
}

// succeeded reports, without waiting, whether the work is done and did
// not fail.
func (b *backgroundWork) succeeded() bool {
	select {
	case <-b.ready:
		return b.err == nil
	default:
		return false
	}
}

// state reports, without waiting, whether the work is done and how it
// ended.
func (b *backgroundWork) state() (done bool, err error) {
	select {
	case <-b.ready:
		return true, b.err
	default:
		return false, nil
	}
}
