package main

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Key generation (RSA above all: tens of milliseconds of CPU per key) is
// the one heavy work the sidecar does on its own initiative, ahead of need.
// keygen decides when such work runs, so that it never keeps the server
// from answering:
//
//   - background work (keys made ahead of need) runs on at most
//     GOMAXPROCS-1 schedulers, so one is always free for requests; with a
//     single scheduler it waits until the first request has been answered
//     (a readiness probe, most likely) or backgroundStartDelay has passed,
//     and then runs one task at a time;
//   - work that someone waits for is urgent (hurried): it may use every
//     scheduler.
//
// Go preempts a goroutine only after 10 ms, so a request arriving while
// every scheduler computes a key waits that long: hence a scheduler kept
// free where there are two or more.
type keygen struct {
	procs func() int // how many schedulers there are now (GOMAXPROCS)
	// opened is set once background work may use the only scheduler.
	opened atomic.Bool

	mu        sync.Mutex
	running   int           // tasks running
	bgRunning int           // of which started as background work
	queue     []*keygenTask // not started yet, first come first served
}

// backgroundStartDelay is how long background work waits, with a single
// scheduler, for the first request to be answered before it starts anyway.
const backgroundStartDelay = 250 * time.Millisecond

type keygenTask struct {
	run    func()
	urgent bool // guarded by keygen.mu
	queued bool // guarded by keygen.mu
}

func newKeygen() *keygen {
	return newKeygenWith(func() int { return runtime.GOMAXPROCS(0) }, backgroundStartDelay)
}

func newKeygenWith(procs func() int, startDelay time.Duration) *keygen {
	k := &keygen{procs: procs}
	time.AfterFunc(startDelay, k.requestAnswered)
	return k
}

// requestAnswered tells keygen that the server has answered a request:
// from then on background work may use a single scheduler too.
func (k *keygen) requestAnswered() {
	if k.opened.Load() || k.opened.Swap(true) {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dispatchLocked()
}

// background queues run as background work; it runs on a goroutine of its
// own once a scheduler may take it, or at once when hurried.
func (k *keygen) background(run func()) *keygenTask {
	t := &keygenTask{run: run, queued: true}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.queue = append(k.queue, t)
	k.dispatchLocked()
	return t
}

// hurry makes t urgent: someone waits for it now. A task already running
// or done is left as it is.
func (k *keygen) hurry(t *keygenTask) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if t.queued && !t.urgent {
		t.urgent = true
		k.dispatchLocked()
	}
}

// cancel drops t if it has not started; it says whether it did.
func (k *keygen) cancel(t *keygenTask) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !t.queued {
		return false
	}
	t.queued = false
	k.queue = slices.DeleteFunc(k.queue, func(q *keygenTask) bool { return q == t })
	return true
}

// backgroundLimitLocked is how many background tasks may run at once.
func (k *keygen) backgroundLimitLocked(procs int) int {
	switch {
	case procs > 1:
		return procs - 1
	case k.opened.Load():
		return 1
	}
	return 0
}

// dispatchLocked starts the queued tasks that may run, in queue order,
// urgent ones first.
func (k *keygen) dispatchLocked() {
	procs := max(k.procs(), 1)
	for _, urgentPass := range []bool{true, false} {
		for i := 0; i < len(k.queue) && k.running < procs; {
			t := k.queue[i]
			background := !t.urgent
			if t.urgent != urgentPass || background && k.bgRunning >= k.backgroundLimitLocked(procs) {
				i++
				continue
			}
			k.queue = slices.Delete(k.queue, i, i+1)
			t.queued = false
			k.running++
			if background {
				k.bgRunning++
			}
			go k.runTask(t, background)
		}
	}
}

func (k *keygen) runTask(t *keygenTask, background bool) {
	defer func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		k.running--
		if background {
			k.bgRunning--
		}
		k.dispatchLocked()
	}()
	t.run()
}
