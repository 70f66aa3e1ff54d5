package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseUpstreamError(t *testing.T) {
	t.Parallel()
	ue := parseUpstreamError("Key Vault", 404, []byte(`{"error":{"code":"KeyNotFound","message":"A key with (name/id) k1 was not found"}}`), nil)
	if ue.Code != "KeyNotFound" || !strings.Contains(ue.Error(), "k1 was not found") || !strings.Contains(ue.Error(), "HTTP 404") {
		t.Errorf("nested shape: %+v / %v", ue, ue)
	}
	ue = parseUpstreamError("IMDS", 400, []byte(`{"error":"invalid_resource","error_description":"bad resource"}`), nil)
	if ue.Code != "invalid_resource" || ue.Message != "bad resource" {
		t.Errorf("flat shape: %+v", ue)
	}
	ue = parseUpstreamError("AMD KDS", 502, []byte("<html>bad gateway</html>"), nil)
	if !strings.Contains(ue.Error(), "bad gateway") {
		t.Errorf("raw body: %v", ue)
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{"-1", 0},
		{"soon", 0},
		{now.Add(7 * time.Second).Format(http.TimeFormat), 7 * time.Second},
		{now.Add(-7 * time.Second).Format(http.TimeFormat), 0},
	}
	for _, tc := range tests {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

// flakyServer answers with the given statuses in order, then 200 "ok".
func flakyServer(t *testing.T, statuses []int, header http.Header) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(calls.Add(1)) - 1
		if n < len(statuses) {
			for k, v := range header {
				w.Header()[k] = v
			}
			w.WriteHeader(statuses[n])
			fmt.Fprintf(w, `{"error":{"code":"Busy%d","message":"try later"}}`, n)
			return
		}
		w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func getter(url string) func(context.Context) (*http.Request, error) {
	return func(ctx context.Context) (*http.Request, error) {
		return http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	}
}

func TestDoWithRetry(t *testing.T) {
	t.Parallel()
	fast := retryPolicy{Attempts: 4, BaseDelay: time.Millisecond, MaxDelay: 20 * time.Millisecond}
	tests := []struct {
		name      string
		statuses  []int
		wantCalls int32
		wantErr   bool
		wantCode  int
	}{
		{"first try", nil, 1, false, 0},
		{"500 then 200", []int{500}, 2, false, 0},
		{"429 and 503 then 200", []int{429, 503}, 3, false, 0},
		{"408 retried", []int{408}, 2, false, 0},
		{"404 is final", []int{404}, 1, true, 404},
		{"401 is final", []int{401}, 1, true, 401},
		{"gives up after attempts", []int{500, 500, 500, 500, 500}, 4, true, 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv, calls := flakyServer(t, tc.statuses, nil)
			body, _, err := doWithRetry(context.Background(), srv.Client(), "test", fast, nil, getter(srv.URL))
			if calls.Load() != tc.wantCalls {
				t.Errorf("calls = %d, want %d", calls.Load(), tc.wantCalls)
			}
			if tc.wantErr {
				var ue *upstreamError
				if !errors.As(err, &ue) || ue.StatusCode != tc.wantCode {
					t.Fatalf("err = %v, want upstreamError %d", err, tc.wantCode)
				}
				return
			}
			if err != nil || string(body) != "ok" {
				t.Fatalf("body %q, err %v", body, err)
			}
		})
	}
}

// waitRecorder stands in for the pause between retries: it notes each
// delay and returns at once, so that a test checks the delays a policy
// chose without sleeping through them.
type waitRecorder struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (w *waitRecorder) Wait(ctx context.Context, d time.Duration) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.delays = append(w.delays, d)
	return ctx.Err()
}

func (w *waitRecorder) Delays() []time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]time.Duration(nil), w.delays...)
}

// recordedRetry is p with its pauses recorded instead of slept.
func recordedRetry(p retryPolicy) (*retryPolicy, *waitRecorder) {
	rec := &waitRecorder{}
	p.Wait = rec.Wait
	return &p, rec
}

func TestDoWithRetryHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	srv, calls := flakyServer(t, []int{429}, http.Header{"Retry-After": {"1"}})
	p, waits := recordedRetry(retryPolicy{Attempts: 2, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Second})
	if _, _, err := doWithRetry(context.Background(), srv.Client(), "test", *p, nil, getter(srv.URL)); err != nil {
		t.Fatal(err)
	}
	// The jittered backoff alone would be about a millisecond: a pause of
	// exactly a second is only explained by Retry-After.
	if got := waits.Delays(); len(got) != 1 || got[0] != time.Second {
		t.Errorf("paused %v between tries, want [1s] as the server asked", got)
	}
	if calls.Load() != 2 {
		t.Errorf("calls = %d", calls.Load())
	}
}

// The real pause between tries waits its delay, and no longer than the
// caller's context.
func TestRetryWaitUsesATimerAndHonoursTheContext(t *testing.T) {
	t.Parallel()
	start := time.Now()
	if err := (retryPolicy{}).wait(context.Background(), 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 20*time.Millisecond {
		t.Errorf("waited %v, want at least 20ms", waited)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := (retryPolicy{}).wait(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("wait on a cancelled context = %v, want context.Canceled", err)
	}
}

func TestDoWithRetryStopsAtDeadline(t *testing.T) {
	t.Parallel()
	srv, _ := flakyServer(t, []int{503, 503, 503, 503, 503, 503}, http.Header{"Retry-After": {"30"}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	p := retryPolicy{Attempts: 6, BaseDelay: time.Millisecond, MaxDelay: time.Minute}
	_, _, err := doWithRetry(ctx, srv.Client(), "test", p, nil, getter(srv.URL))
	if !errors.Is(err, context.DeadlineExceeded) || statusFor(err) != http.StatusGatewayTimeout {
		t.Fatalf("err = %v (status %d), want a deadline → 504", err, statusFor(err))
	}
}

func TestDoWithRetryRetriesNetworkErrors(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // connection refused from now on
	p := retryPolicy{Attempts: 3, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}
	_, _, err := doWithRetry(context.Background(), http.DefaultClient, "test", p, nil, getter(url))
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("err = %v, want connection refused", err)
	}
}

// A service that cannot be reached is a 502 naming it; one that does not
// answer before the client's own timeout (the request's context still
// running) is a 504.
func TestDoWithRetryTransportFailureKinds(t *testing.T) {
	t.Parallel()
	refused := httptest.NewServer(http.NotFoundHandler())
	refused.Close()
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	p := retryPolicy{Attempts: 2, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}
	for _, tc := range []struct {
		name   string
		client *http.Client
		url    string
		status int
	}{
		{"refused", http.DefaultClient, refused.URL, http.StatusBadGateway},
		{"client timeout", &http.Client{Timeout: 20 * time.Millisecond}, slow.URL, http.StatusGatewayTimeout},
	} {
		_, _, err := doWithRetry(context.Background(), tc.client, "test service", p, nil, getter(tc.url))
		host := strings.TrimPrefix(tc.url, "http://")
		if err == nil || statusFor(err) != tc.status || !strings.Contains(err.Error(), "test service at "+host) {
			t.Errorf("%s: err = %v (status %d), want %d naming the service and %s", tc.name, err, statusFor(err), tc.status, host)
		}
	}
}

func TestBackoffIsBoundedAndJittered(t *testing.T) {
	t.Parallel()
	p := retryPolicy{BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}
	seen := map[time.Duration]bool{}
	for attempt := 1; attempt <= 10; attempt++ {
		for range 20 {
			d := backoff(p, attempt, 0)
			if d <= 0 || d > time.Second {
				t.Fatalf("backoff(%d) = %v", attempt, d)
			}
			seen[d] = true
		}
	}
	if len(seen) < 10 {
		t.Errorf("backoff shows no jitter: %v", seen)
	}
	if d := backoff(p, 1, time.Hour); d != time.Second {
		t.Errorf("Retry-After is not capped: %v", d)
	}
}
