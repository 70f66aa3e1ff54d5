package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// BenchmarkKeyRelease measures whole releases through the HTTP server
// against the stand-ins (emulated device). Metrics: releases/s, and per
// release latency-ms and p50-ms (mean and median time from request to
// answer) and cpu-ms (user+system
// CPU of the whole test process, so it includes the stand-ins' share:
// MAA's report verification and token signing, Key Vault's wrapping and
// JWS signing; with TTL 0 it also includes generating the wrapping key).
func BenchmarkKeyRelease(b *testing.B) {
	b.Run("fresh-token-ttl0", func(b *testing.B) { benchRelease(b, 0, 1) })
	b.Run("fresh-token-ttl0-spare-key-ready", func(b *testing.B) { benchReleaseSpareReady(b) })
	b.Run("reused-token", func(b *testing.B) { benchRelease(b, 5*time.Minute, 1) })
	b.Run("8-concurrent-reused-token", func(b *testing.B) { benchRelease(b, 5*time.Minute, 8) })
	b.Run("8-concurrent-fresh-token-ttl0", func(b *testing.B) { benchRelease(b, 0, 8) })
}

func benchRelease(b *testing.B, ttl time.Duration, workers int) {
	e := newReleaseEnv(b, releaseEnvOpts{ttl: ttl, env: map[string]string{}})
	body := e.releaseBody(keyOct, releaseBearer)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	release := func() (time.Duration, error) {
		start := time.Now()
		resp, err := client.Post(e.url+"/key/release", "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out map[string]string
		if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &out) != nil || out["key"] == "" {
			return 0, &benchError{resp.StatusCode, string(raw)}
		}
		return time.Since(start), nil
	}
	if _, err := release(); err != nil { // warm up: connections, a spare key
		b.Fatal(err)
	}
	cpu0 := benchProcessCPU()
	var lat latencies
	b.ResetTimer()
	if workers == 1 {
		for i := 0; i < b.N; i++ {
			d, err := release()
			if err != nil {
				b.Fatal(err)
			}
			lat.add(d)
		}
	} else {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(b.N) {
					d, err := release()
					if err != nil {
						b.Error(err)
						return
					}
					lat.add(d)
				}
			}()
		}
		wg.Wait()
	}
	b.StopTimer()
	cpu := benchProcessCPU() - cpu0
	lat.report(b)
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "releases/s")
	b.ReportMetric(float64(cpu)/float64(b.N)/1e6, "cpu-ms")
	b.ReportMetric(float64(e.maa.count()-1)/float64(b.N), "MAA-calls/release")
}

// benchReleaseSpareReady is a fresh attestation per release as a workload
// sees it when releases are not back to back: the background generator has
// a wrapping key ready, so the latency is report + MAA + Key Vault + unwrap.
// cpu-ms still includes generating that key.
func benchReleaseSpareReady(b *testing.B) {
	e := newReleaseEnv(b, releaseEnvOpts{ttl: 0, env: map[string]string{}})
	body := e.releaseBody(keyOct, releaseBearer)
	var lat latencies
	cpu0 := benchProcessCPU()
	for b.Loop() {
		b.StopTimer()
		time.Sleep(250 * time.Millisecond) // RSA-2048 generation takes ~60 ms here
		b.StartTimer()
		start := time.Now()
		resp, err := http.Post(e.url+"/key/release", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("release: %d %s", resp.StatusCode, raw)
		}
		lat.add(time.Since(start))
	}
	lat.report(b)
	b.ReportMetric(float64(benchProcessCPU()-cpu0)/float64(b.N)/1e6, "cpu-ms")
	b.ReportMetric(float64(e.maa.count())/float64(b.N), "MAA-calls/release")
}

// latencies collects request latencies from any number of goroutines.
type latencies struct {
	mu sync.Mutex
	ds []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ds = append(l.ds, d)
}

// report gives their mean and median as latency-ms and p50-ms.
func (l *latencies) report(b *testing.B) {
	var sum time.Duration
	for _, d := range l.ds {
		sum += d
	}
	if len(l.ds) > 0 {
		b.ReportMetric(float64(sum)/float64(len(l.ds))/1e6, "latency-ms")
	}
	b.ReportMetric(percentileMS(l.ds, 0.5), "p50-ms")
}

type benchError struct {
	status int
	body   string
}

func (e *benchError) Error() string {
	return "release: HTTP " + http.StatusText(e.status) + ": " + e.body
}

// benchProcessCPU is the user+system CPU time this process has used.
func benchProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
