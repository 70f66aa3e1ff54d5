package main

import (
	"sync"
	"testing"
	"time"
)

// taskProbe records which of a test's keygen tasks run, and holds them
// until the test releases them, so that limits can be read off exactly.
type taskProbe struct {
	mu      sync.Mutex
	running map[string]bool
	started chan string
	release map[string]chan struct{}
}

func newTaskProbe() *taskProbe {
	return &taskProbe{running: map[string]bool{}, started: make(chan string, 100), release: map[string]chan struct{}{}}
}

// task is a keygen task named name that runs until finish(name).
func (p *taskProbe) task(name string) func() {
	p.mu.Lock()
	p.release[name] = make(chan struct{})
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		p.running[name] = true
		rel := p.release[name]
		p.mu.Unlock()
		p.started <- name
		<-rel
		p.mu.Lock()
		delete(p.running, name)
		p.mu.Unlock()
	}
}

func (p *taskProbe) finish(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.release[name])
}

// awaitStart waits for the next task to start and says which.
func (p *taskProbe) awaitStart(t *testing.T) string {
	t.Helper()
	select {
	case name := <-p.started:
		return name
	case <-time.After(10 * time.Second):
		t.Fatal("no task started")
		return ""
	}
}

// running is how many tasks kg has started and not seen end: keygen
// starts tasks within submit, hurry, requestAnswered and a task's end, so
// once those returned it is exact.
func running(kg *keygen) int {
	kg.mu.Lock()
	defer kg.mu.Unlock()
	return kg.running
}

func wantRunning(t *testing.T, kg *keygen, want int) {
	t.Helper()
	if got := running(kg); got != want {
		t.Fatalf("%d tasks running, want %d", got, want)
	}
}

// testKeygen never opens by its delay: tests open it themselves.
func testKeygen(procs int) *keygen {
	return newKeygenWith(func() int { return procs }, time.Hour)
}

func TestKeygenBackgroundLeavesOneSchedulerFree(t *testing.T) {
	t.Parallel()
	for _, procs := range []int{2, 3, 4} {
		kg, p := testKeygen(procs), newTaskProbe()
		names := []string{"a", "b", "c", "d", "e"}
		for _, n := range names {
			kg.background(p.task(n))
		}
		started := map[string]bool{}
		for range procs - 1 {
			started[p.awaitStart(t)] = true
		}
		for _, n := range names[:procs-1] {
			if !started[n] {
				t.Fatalf("procs %d: started %v, want the first %d queued", procs, started, procs-1)
			}
		}
		wantRunning(t, kg, procs-1)
		p.finish(names[0])
		if got := p.awaitStart(t); got != names[procs-1] {
			t.Fatalf("procs %d: after one ended, started %s, want %s", procs, got, names[procs-1])
		}
		for _, n := range names[1:] {
			p.finish(n)
		}
	}
}

func TestKeygenSingleSchedulerWaitsForTheFirstAnswer(t *testing.T) {
	t.Parallel()
	kg, p := testKeygen(1), newTaskProbe()
	kg.background(p.task("spare"))
	kg.background(p.task("spare 2"))
	wantRunning(t, kg, 0)
	kg.requestAnswered()
	if got := p.awaitStart(t); got != "spare" {
		t.Fatalf("started %s", got)
	}
	wantRunning(t, kg, 1) // one at a time
	p.finish("spare")
	if got := p.awaitStart(t); got != "spare 2" {
		t.Fatalf("started %s", got)
	}
	p.finish("spare 2")
}

func TestKeygenSingleSchedulerStartsAfterTheDelay(t *testing.T) {
	t.Parallel()
	kg, p := newKeygenWith(func() int { return 1 }, time.Millisecond), newTaskProbe()
	kg.background(p.task("spare"))
	p.awaitStart(t)
	p.finish("spare")
}

// Urgent work may use every scheduler, background work included, and no
// more; hurrying a queued task lets it start at once.
func TestKeygenUrgentUsesEveryScheduler(t *testing.T) {
	t.Parallel()
	kg, p := testKeygen(2), newTaskProbe()
	kg.background(p.task("bg"))
	bg2 := kg.background(p.task("bg2"))
	p.awaitStart(t) // bg
	kg.hurry(kg.background(p.task("u1")))
	if got := p.awaitStart(t); got != "u1" {
		t.Fatalf("started %s, want u1", got)
	}
	kg.hurry(kg.background(p.task("u2")))
	wantRunning(t, kg, 2) // two schedulers, two tasks
	p.finish("bg")
	if got := p.awaitStart(t); got != "u2" {
		t.Fatalf("started %s, want the urgent u2 before the background bg2", got)
	}
	p.finish("u1")
	if got := p.awaitStart(t); got != "bg2" {
		t.Fatalf("started %s", got)
	}
	kg.hurry(bg2) // running already: nothing changes
	for _, n := range []string{"u2", "bg2"} {
		p.finish(n)
	}

	kg1, p1 := testKeygen(1), newTaskProbe()
	spare := kg1.background(p1.task("spare"))
	wantRunning(t, kg1, 0)
	kg1.hurry(spare)
	p1.awaitStart(t)
	p1.finish("spare")
}

func TestKeygenCancel(t *testing.T) {
	t.Parallel()
	kg, p := testKeygen(1), newTaskProbe()
	a := kg.background(p.task("a"))
	kg.background(p.task("b"))
	if !kg.cancel(a) {
		t.Fatal("a queued task could not be cancelled")
	}
	if kg.cancel(a) {
		t.Fatal("cancelled twice")
	}
	kg.requestAnswered()
	if got := p.awaitStart(t); got != "b" {
		t.Fatalf("started %s, a cancelled task", got)
	}
	p.finish("b")
}

// With one scheduler, the server's first answer starts background work.
func TestServerFirstAnswerStartsBackgroundWork(t *testing.T) {
	t.Parallel()
	kg, p := testKeygen(1), newTaskProbe()
	url, _ := startTestServer(t, serverConfig{}, serverOptions{Keygen: kg, WrappingKeys: testWrappingKeys(t)})
	kg.background(p.task("spare"))
	if running(kg) != 0 {
		t.Fatal("background work started before any answer")
	}
	if code, _ := call(t, "GET", url+"/status", ""); code != 200 {
		t.Fatalf("/status: %d", code)
	}
	p.awaitStart(t)
	p.finish("spare")
}
