package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// BenchmarkUnWrapKey measures UnWrapKey through the gRPC server (grpc-go
// client, HTTP/2) against the stand-ins, next to /key/release of the same
// RSA key on the same server. Fresh: a new wrapping key and MAA token per
// call (TTL 0); reused: the wrapping key and token of the first call.
// Metrics as in BenchmarkKeyRelease.
func BenchmarkUnWrapKey(b *testing.B) {
	for _, tc := range []struct {
		name string
		ttl  time.Duration
	}{{"fresh-token-ttl0", 0}, {"reused-token", 5 * time.Minute}} {
		g := newGRPCEnv(b, releaseEnvOpts{ttl: tc.ttl})
		keyPath := writeWrapKeyFiles(b, b.TempDir(), keyRSA, &g.rsa.PublicKey, g.kv.host, g.maa.host)
		annotation := decodeWrapResults(b, mustCall(b, g, "key_provider", "WrapKey", map[string]string{wrapIn: wrapRequest(keyPath, []byte("a 32-byte layer key, more or less"))}))
		in := map[string]string{wrapIn: unwrapRequest(b64(annotation))}
		unwrap := func() error {
			_, err := invokeKeyProvider(context.Background(), b, g.conn, "key_provider", "UnWrapKey", in)
			return err
		}
		body := g.releaseBody(keyRSA, releaseBearer)
		release := func() error {
			resp, err := http.Post(g.url+"/key/release", "application/json", strings.NewReader(body))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				return &benchError{resp.StatusCode, string(raw)}
			}
			return nil
		}
		for _, call := range []struct {
			name string
			fn   func() error
		}{{"key-release", release}, {"UnWrapKey", unwrap}} {
			b.Run(call.name+"-"+tc.name, func(b *testing.B) {
				if err := call.fn(); err != nil { // warm up: connections, a spare key
					b.Fatal(err)
				}
				maa0, cpu0 := g.maa.count(), benchProcessCPU()
				start := time.Now()
				for b.Loop() {
					if err := call.fn(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(time.Since(start))/float64(b.N)/1e6, "latency-ms")
				b.ReportMetric(float64(benchProcessCPU()-cpu0)/float64(b.N)/1e6, "cpu-ms")
				b.ReportMetric(float64(g.maa.count()-maa0)/float64(b.N), "MAA-calls/call")
			})
		}
	}
}
