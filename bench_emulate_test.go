package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// BenchmarkEmulatedRelease measures a /key/release of demo-oct through the
// HTTP server against the emulated MAA and Key Vault, all in one process:
// with a fresh wrapping key and MAA token per release (-wrapping-key-ttl
// 0), and reusing them. cpu-ms is the whole process's CPU per release: the
// emulated services' verification and signing are in it, and with TTL 0
// the wrapping key's generation too.
func BenchmarkEmulatedRelease(b *testing.B) {
	b.Run("fresh-ttl0", func(b *testing.B) { benchEmulatedRelease(b, 0, false) })
	b.Run("fresh-ttl0-spare-key-ready", func(b *testing.B) { benchEmulatedRelease(b, 0, true) })
	b.Run("reused-wrapping-key", func(b *testing.B) { benchEmulatedRelease(b, 5*time.Minute, false) })
}

func benchEmulatedRelease(b *testing.B, ttl time.Duration, pause bool) {
	readyAzureKeys(b)
	base := startEmulatedAzureServer(b, serverConfig{WrappingKeyTTL: ttl}, nil)
	body := `{"maa_endpoint":"maa.skr.localhost","akv_endpoint":"vault.skr.localhost","kid":"demo-oct"}`
	client := &http.Client{}
	release := func() time.Duration {
		start := time.Now()
		resp, err := client.Post(base+"/key/release", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("release: %d %s", resp.StatusCode, raw)
		}
		return time.Since(start)
	}
	release() // warm up: connections, the emulator's keys, a spare wrapping key
	var total time.Duration
	cpu0 := benchProcessCPU()
	for b.Loop() {
		if pause {
			b.StopTimer()
			time.Sleep(250 * time.Millisecond) // the pool makes a spare key meanwhile
			b.StartTimer()
		}
		total += release()
	}
	b.ReportMetric(float64(total)/float64(b.N)/1e6, "latency-ms")
	b.ReportMetric(float64(benchProcessCPU()-cpu0)/float64(b.N)/1e6, "cpu-ms")
}
