package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// End to end through the real server: an outbound service that cannot be
// reached, or whose answer breaks off, is the service's failure (502), never
// the sidecar's (500), and the error names the step and the endpoint.

// unreachableTarget is one way for an endpoint to fail.
type unreachableTarget struct {
	mode  string
	host  string        // host[:port], as a request or a configuration names it
	calls *atomic.Int32 // requests the stand-in got; nil when nothing listens
}

// closedLoopbackPort is a port on 127.0.0.1 where nothing listens.
func closedLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// truncatingHandler declares a body it never finishes: the headers promise
// 4096 bytes, a few arrive, then the connection closes.
func truncatingHandler(calls *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, r.Body)
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n{\"token\":\"eyJ")
		buf.Flush()
	})
}

// unreachableTargets are the three failures: a name that does not resolve,
// a refused connection and a truncated answer, the last over TLS (trusted
// by the stand-in PKI) or, for IMDS, plain http.
func unreachableTargets(t *testing.T, name string, plainHTTP bool) []unreachableTarget {
	t.Helper()
	var calls atomic.Int32
	var host string
	if plainHTTP {
		srv := httptest.NewServer(truncatingHandler(&calls))
		t.Cleanup(srv.Close)
		host = srv.Listener.Addr().String()
	} else {
		srv, h := startTLSStandIn(t, truncatingHandler(&calls))
		t.Cleanup(srv.Close)
		host = h
	}
	return []unreachableTarget{
		{mode: "DNS failure", host: name + ".invalid"},
		{mode: "refused connection", host: closedLoopbackPort(t)},
		{mode: "truncated body", host: host, calls: &calls},
	}
}

// wantBadGateway checks a 502 whose error names every one of want.
func wantBadGateway(t *testing.T, tg unreachableTarget, status int, out map[string]any, want ...string) {
	t.Helper()
	msg, _ := out["error"].(string)
	if status != http.StatusBadGateway {
		t.Errorf("%s: status %d, want 502: %q", tg.mode, status, msg)
	}
	for _, w := range append(want, tg.host) {
		if !strings.Contains(msg, w) {
			t.Errorf("%s: error %q does not name %q", tg.mode, msg, w)
		}
	}
	if tg.calls != nil && tg.calls.Load() == 0 {
		t.Errorf("%s: the stand-in was never called", tg.mode)
	}
}

func TestUnreachableMAAIsBadGateway(t *testing.T) {
	t.Parallel()
	tee, _, _ := releaseTestDevice(t, deviceEmulator)
	url, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: tee, Roots: getStandInPKI().roots(), Retry: &releaseRetry})
	for _, tg := range unreachableTargets(t, "maa", false) {
		status, out := call(t, "POST", url+"/attest/maa", attestMAABody(tg.host, []byte("hello")))
		wantBadGateway(t, tg, status, out, "MAA")
	}
}

func TestUnreachableKeyVaultIsBadGateway(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	for _, tg := range unreachableTargets(t, "kv", false) {
		body := fmt.Sprintf(`{"maa_endpoint":%q,"akv_endpoint":%q,"kid":%q,"access_token":%q}`, e.maa.host, tg.host, keyOct, releaseBearer)
		status, out := call(t, "POST", e.url+"/key/release", body)
		wantBadGateway(t, tg, status, out, "Key Vault", keyOct)
	}
}

func TestUnreachableIdentityIsBadGateway(t *testing.T) {
	t.Parallel()
	for _, tg := range unreachableTargets(t, "imds", true) {
		e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute,
			env: map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://" + tg.host}})
		status, out := call(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, ""))
		wantBadGateway(t, tg, status, out, "token", "IMDS")
	}
}

func TestUnreachableCertificateSourceIsBadGateway(t *testing.T) {
	t.Parallel()
	old, nw := newTestVCEK(t, specOld), newTestVCEK(t, specNew)
	policy := []byte("package policy\n")
	// The security context's certificates are for an older TCB than the
	// firmware reports, so fresh ones must be fetched.
	dir := writeSecurityContext(t, policy, thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
	for _, tg := range unreachableTargets(t, "kds", false) {
		cfg := serverConfig{Args: &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: tg.host}}}
		url, _ := startTestServer(t, cfg, serverOptions{
			TEE:    &signingDevice{v: nw, tcb: tcbNew, hostData: sha256.Sum256(policy)},
			Roots:  getStandInPKI().roots(),
			Getenv: func(k string) string { return map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}[k] },
			Retry:  &releaseRetry,
		})
		status, out := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
		wantBadGateway(t, tg, status, out, "certificates")
	}
}
