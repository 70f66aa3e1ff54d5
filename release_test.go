package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	releaseBearer     = "eyJ0ZXN0IjoiYmVhcmVyIn0.test-bearer-token-for-key-vault"
	releasePolicyText = "package policy\n\napi_version := \"0.10.0\"\n\nmount_device := {\"allowed\": true}\n"
	releaseUVMRefInfo = "test UVM reference info (COSE_Sign1 stand-in)"
	keyOct            = "oct-key"
	keyRSA            = "rsa-key"
	keyEC             = "ec-key"
	keyLocked         = "locked-key"
	deviceEmulator    = "emulator"
	deviceFakeGuest   = "go-sev-guest fake"
)

type releaseEnvOpts struct {
	device  string // deviceEmulator (default) or deviceFakeGuest
	ttl     time.Duration
	timeout time.Duration
	kvToken string            // the bearer Key Vault expects; "" = releaseBearer
	env     map[string]string // extra environment for the server
	args    *SkrSideCarArgs
	clock   clock                        // of the wrapping keys' reuse; nil = the system clock
	newKey  func() (*wrappingKey, error) // nil = newWrappingKey
	grpc    bool                         // serve gRPC (ServerType=grpc)
	// allow, when set, gives SkrSideCarArgs' allow lists, which may name
	// the stand-ins.
	allow func(e *releaseEnv) allowList
}

// releaseRetry keeps the production retry decisions, without their delays.
var releaseRetry = fastRetryPolicy(defaultRetry)

type releaseEnv struct {
	url      string
	logs     *syncBuffer
	maa      *maaStandIn
	kv       *kvStandIn
	hostData string // hex HOST_DATA the device reports

	oct []byte
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

// deviceWithCerts hands a device's own certificates to the server as the
// platform certificates, as the security context does on ACI.
type deviceWithCerts struct {
	teeDevice
	certs *platformCerts
}

func (d deviceWithCerts) PlatformCerts(context.Context) (*platformCerts, error) { return d.certs, nil }

// releaseTestDevice returns the device, its ARK and the HOST_DATA it reports.
func releaseTestDevice(t testing.TB, kind string) (teeDevice, *platformCerts, string) {
	t.Helper()
	switch kind {
	case "", deviceEmulator:
		tee := newTestEmulator(t, []byte(releasePolicyText))
		src, ok := tee.(platformCertSource)
		if !ok {
			t.Fatal("the emulator brings no platform certificates")
		}
		certs, err := src.PlatformCerts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(releasePolicyText))
		return tee, certs, hex.EncodeToString(sum[:])
	case deviceFakeGuest:
		tee, certs := newFakeSevGuest(t)
		raw, err := tee.GetReport(context.Background(), [64]byte{})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := parseReport(raw)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := tee.(platformCertSource); !ok {
			tee = deviceWithCerts{tee, certs}
		}
		return tee, certs, hex.EncodeToString(rep.HostData[:])
	}
	t.Fatalf("unknown device %q", kind)
	return nil, nil, ""
}

func newReleaseEnv(t testing.TB, o releaseEnvOpts) *releaseEnv {
	t.Helper()
	tee, certs, hostData := releaseTestDevice(t, o.device)
	e := &releaseEnv{hostData: hostData}
	e.maa = newMAAStandIn(t, certs.ARK)
	kvToken := o.kvToken
	if kvToken == "" {
		kvToken = releaseBearer
	}
	e.kv = newKVStandIn(t, kvToken)

	e.oct = make([]byte, 32)
	rand.Read(e.oct)
	e.rsa = standInRSAKey(t, rsaReleased)
	e.ec = standInECKey()
	policy := standInReleasePolicy(e.maa.host, hostData)
	e.kv.addKey(&kvKey{name: keyOct, kty: "oct-HSM", keyOps: []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"}, material: e.oct, policy: policy})
	e.kv.addKey(&kvKey{name: keyRSA, kty: "RSA-HSM", keyOps: []string{"sign", "verify", "decrypt"}, material: e.rsa, policy: policy})
	e.kv.addKey(&kvKey{name: keyEC, kty: "EC-HSM", keyOps: []string{"sign"}, material: e.ec, policy: policy})
	e.kv.addKey(&kvKey{name: keyLocked, kty: "oct-HSM", material: []byte("0123456789abcdef0123456789abcdef"),
		policy: standInReleasePolicy(e.maa.host, strings.Repeat("ab", 32))})

	env := map[string]string{"UVM_REFERENCE_INFO": base64.StdEncoding.EncodeToString([]byte(releaseUVMRefInfo))}
	for k, v := range o.env {
		env[k] = v
	}
	cfg := serverConfig{WrappingKeyTTL: o.ttl, Args: o.args}
	if o.grpc {
		cfg.ServerType = serverTypeGRPC
	}
	if o.allow != nil {
		cfg.Args = &SkrSideCarArgs{Allow: o.allow(e)}
		if err := cfg.Args.Allow.check(); err != nil {
			t.Fatal(err)
		}
	}
	opts := serverOptions{
		TEE:            tee,
		Roots:          getStandInPKI().roots(),
		Getenv:         func(k string) string { return env[k] },
		RequestTimeout: o.timeout,
		// The stand-in listens on 127.0.0.1; the identity's token goes
		// only to vault hosts, and this is one.
		IdentityTokenHosts: []string{e.kv.host},
		Retry:              &releaseRetry,
		TokenRetry:         fastRetryPolicy,
		WrappingKeys:       o.newKey,
		Clock:              o.clock,
	}
	e.url, e.logs = startTestServer(t, cfg, opts)
	return e
}

// releaseBody is a /key/release request against the stand-ins.
func (e *releaseEnv) releaseBody(kid, accessToken string) string {
	m := map[string]string{"maa_endpoint": e.maa.host, "akv_endpoint": e.kv.host, "kid": kid}
	if accessToken != "" {
		m["access_token"] = accessToken
	}
	return string(standInJSON(m))
}

func (e *releaseEnv) release(t testing.TB, kid string) (int, map[string]any) {
	t.Helper()
	return call(t, "POST", e.url+"/key/release", e.releaseBody(kid, releaseBearer))
}

func (e *releaseEnv) mustRelease(t testing.TB, kid string) jwk {
	t.Helper()
	status, out := e.release(t, kid)
	return releasedJWK(t, status, out)
}

func (e *releaseEnv) mustReleaseBody(t testing.TB, body string) jwk {
	t.Helper()
	status, out := call(t, "POST", e.url+"/key/release", body)
	return releasedJWK(t, status, out)
}

// releasedJWK decodes the {"key": "<JWK JSON>"} answer.
func releasedJWK(t testing.TB, status int, out map[string]any) jwk {
	t.Helper()
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, out)
	}
	s, ok := out["key"].(string)
	if !ok {
		t.Fatalf("answer has no key string: %v", out)
	}
	k, err := parseJWK([]byte(s))
	if err != nil {
		t.Fatalf("released key is not a JWK: %v: %s", err, s)
	}
	return k
}

func wantNoKey(t testing.TB, status int, out map[string]any, wantStatus int, wantInError ...string) {
	t.Helper()
	if _, ok := out["key"]; ok {
		t.Fatalf("a key was returned: status %d", status)
	}
	if status != wantStatus {
		t.Fatalf("status = %d, want %d: %v", status, wantStatus, out)
	}
	msg, _ := out["error"].(string)
	for _, w := range wantInError {
		if !strings.Contains(msg, w) {
			t.Errorf("error %q does not mention %q", msg, w)
		}
	}
}

func TestKeyReleaseEndToEnd(t *testing.T) {
	t.Parallel()
	for _, device := range []string{deviceEmulator, deviceFakeGuest} {
		t.Run(device, func(t *testing.T) {
			e := newReleaseEnv(t, releaseEnvOpts{device: device, ttl: time.Minute})
			t.Run("oct", func(t *testing.T) {
				k := e.mustRelease(t, keyOct)
				if k.Kty != "oct" || k.K != b64url(e.oct) {
					t.Fatalf("released oct key = kty %q k %q, want the vault's key", k.Kty, k.K)
				}
				checkKidAndOps(t, k, e, keyOct, []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"})
			})
			t.Run("RSA", func(t *testing.T) {
				k := e.mustRelease(t, keyRSA)
				if k.Kty != "RSA" || k.D == "" || k.P == "" || k.Q == "" || k.DP == "" || k.DQ == "" || k.QI == "" {
					t.Fatalf("released RSA JWK lacks private members: %+v", k.Kty)
				}
				priv, err := k.PrivateKey()
				if err != nil {
					t.Fatal(err)
				}
				if !e.rsa.Equal(priv) {
					t.Fatal("released RSA key is not the vault's key")
				}
				checkKidAndOps(t, k, e, keyRSA, []string{"sign", "verify", "decrypt"})
			})
			t.Run("EC", func(t *testing.T) {
				k := e.mustRelease(t, keyEC)
				if k.Kty != "EC" || k.Crv != "P-256" || k.D == "" {
					t.Fatalf("released EC JWK = kty %q crv %q", k.Kty, k.Crv)
				}
				priv, err := k.PrivateKey()
				if err != nil {
					t.Fatal(err)
				}
				if !e.ec.Equal(priv) {
					t.Fatal("released EC key is not the vault's key")
				}
				checkKidAndOps(t, k, e, keyEC, []string{"sign"})
			})
			if got := e.maa.count(); got != 1 {
				t.Errorf("MAA was called %d times for three releases within the TTL, want 1", got)
			}
			claims := e.maa.claims()
			if claims["x-ms-sevsnpvm-hostdata"] != e.hostData || claims["x-ms-compliance-status"] != "azure-compliant-uvm" {
				t.Errorf("MAA claims hostdata %v compliance %v", claims["x-ms-sevsnpvm-hostdata"], claims["x-ms-compliance-status"])
			}
		})
	}
}

func checkKidAndOps(t *testing.T, k jwk, e *releaseEnv, name string, ops []string) {
	t.Helper()
	if !strings.HasPrefix(k.Kid, "https://"+e.kv.host+"/keys/"+name+"/") {
		t.Errorf("kid = %q, want the vault's key identifier", k.Kid)
	}
	if !slices.Equal(k.KeyOps, ops) {
		t.Errorf("key_ops = %q, want %q", k.KeyOps, ops)
	}
}

func TestKeyReleaseEncVariants(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	for _, enc := range []string{encRSAAESKeyWrapSHA1, encRSAAESKeyWrap256, encRSAAESKeyWrap384} {
		t.Run(enc, func(t *testing.T) {
			e.kv.set(func(kv *kvStandIn) { kv.enc = enc })
			k := e.mustRelease(t, keyOct)
			if k.K != b64url(e.oct) {
				t.Fatal("wrong key released")
			}
			k = e.mustRelease(t, keyRSA)
			if priv, err := k.PrivateKey(); err != nil || !e.rsa.Equal(priv) {
				t.Fatalf("RSA key with %s: %v", enc, err)
			}
		})
	}
}

func TestKeyReleaseVersionPinned(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	k := e.mustRelease(t, keyOct)
	_, ver, err := keyIDParts(k.Kid)
	if err != nil {
		t.Fatal(err)
	}
	e.mustRelease(t, keyOct+"/"+ver)
	status, out := e.release(t, keyOct+"/"+strings.Repeat("f", 32))
	wantNoKey(t, status, out, http.StatusBadGateway, "Key Vault", keyOct, e.kv.host)
}

func TestKeyReleasePolicyNotMet(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	status, out := e.release(t, keyLocked)
	wantNoKey(t, status, out, http.StatusForbidden, "Key Vault", "release policy", e.hostData, keyLocked)

	// Compliance status not what the policy wants: same refusal.
	e2 := newReleaseEnv(t, releaseEnvOpts{ttl: 0})
	e2.maa.setCompliance("not-compliant")
	status, out = e2.release(t, keyOct)
	wantNoKey(t, status, out, http.StatusForbidden, "release policy", `claim x-ms-compliance-status: the policy wants "azure-compliant-uvm", the token carries "not-compliant"`)
}

func TestKeyReleaseResponseVerification(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	cases := []struct {
		name   string
		knob   func(kv *kvStandIn, on bool)
		status int
		step   string
	}{
		{"bad JWS signature", func(kv *kvStandIn, on bool) { kv.wrongSigner = on }, http.StatusForbidden, "verify"},
		{"untrusted chain", func(kv *kvStandIn, on bool) { kv.untrustedCA = on }, http.StatusForbidden, "verify"},
		{"wrong host name", func(kv *kvStandIn, on bool) { kv.wrongHost = on }, http.StatusForbidden, "verify"},
		{"wrapped to another key", func(kv *kvStandIn, on bool) { kv.wrapToOther = on }, http.StatusForbidden, "verify"},
		{"tampered ciphertext", func(kv *kvStandIn, on bool) { kv.tamper = on }, http.StatusBadGateway, "unwrap"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.kv.set(func(kv *kvStandIn) { c.knob(kv, true) })
			defer e.kv.set(func(kv *kvStandIn) { c.knob(kv, false) })
			for _, kid := range []string{keyOct, keyRSA} {
				status, out := e.release(t, kid)
				wantNoKey(t, status, out, c.status, c.step, kid)
			}
		})
	}
	// The same environment still releases once the vault behaves.
	e.mustRelease(t, keyOct)
}

func TestKeyReleaseUnauthorized(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	status, out := call(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, "not-the-right-token"))
	wantNoKey(t, status, out, http.StatusForbidden, "Key Vault", "access_token from the request", "401")
}

func TestKeyReleaseKeyNotFound(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	status, out := e.release(t, "no-such-key")
	wantNoKey(t, status, out, http.StatusBadGateway, "no key", "no-such-key", e.kv.host)
}

func TestKeyReleaseRetries(t *testing.T) {
	t.Parallel()
	t.Run("MAA 500 then 200", func(t *testing.T) {
		t.Parallel()
		e := newReleaseEnv(t, releaseEnvOpts{ttl: 0})
		e.maa.failNext(1, http.StatusInternalServerError, "")
		e.mustRelease(t, keyOct)
		if got := e.maa.count(); got != 2 {
			t.Fatalf("MAA calls = %d, want 2", got)
		}
	})
	t.Run("MAA 429 with Retry-After", func(t *testing.T) {
		t.Parallel()
		e := newReleaseEnv(t, releaseEnvOpts{ttl: 0})
		e.maa.failNext(1, http.StatusTooManyRequests, "1")
		e.mustRelease(t, keyOct)
		if got := e.maa.count(); got != 2 {
			t.Fatalf("MAA calls = %d, want 2", got)
		}
		// The 1 s asked for, capped by the policy's MaxDelay; the policy's
		// own backoff before a second try is below a millisecond.
		want := fmt.Sprintf("service=MAA attempt=1 delay=%v", releaseRetry.MaxDelay)
		if logs := e.logs.String(); !strings.Contains(logs, want) {
			t.Fatalf("no retry after the Retry-After (want %q) in the log:\n%s", want, logs)
		}
	})
	t.Run("Key Vault 503 then 200", func(t *testing.T) {
		t.Parallel()
		e := newReleaseEnv(t, releaseEnvOpts{ttl: 0})
		e.kv.failNext(2, http.StatusServiceUnavailable, "")
		e.mustRelease(t, keyOct)
		if got := e.kv.count(); got != 3 {
			t.Fatalf("Key Vault calls = %d, want 3", got)
		}
	})
	t.Run("MAA 500 for good", func(t *testing.T) {
		t.Parallel()
		e := newReleaseEnv(t, releaseEnvOpts{ttl: 0})
		e.maa.failNext(100, http.StatusInternalServerError, "")
		status, out := e.release(t, keyOct)
		wantNoKey(t, status, out, http.StatusBadGateway, "MAA", e.maa.host)
		if got := e.maa.count(); got != defaultRetry.Attempts {
			t.Fatalf("MAA calls = %d, want %d", got, defaultRetry.Attempts)
		}
	})
}

func TestKeyReleaseDeadline(t *testing.T) {
	t.Parallel()
	// Short, so that the test is quick; a hanging service costs a release
	// its whole deadline.
	const timeout = 400 * time.Millisecond
	for _, svc := range []string{"MAA", "Key Vault"} {
		t.Run(svc, func(t *testing.T) {
			t.Parallel()
			// A ready-made wrapping key: RSA generation under -race on a
			// busy machine could otherwise spend the whole deadline.
			e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute, timeout: timeout, newKey: testWrappingKeys(t)})
			if svc == "MAA" {
				e.maa.setHang(true)
			} else {
				e.warmUp(t)
				e.kv.setHang(true)
			}
			start := time.Now()
			status, out := e.release(t, keyOct)
			wantNoKey(t, status, out, http.StatusGatewayTimeout, svc)
			if d := time.Since(start); d > timeout+5*time.Second {
				t.Fatalf("answered after %v, long past the %v deadline", d, timeout)
			}
		})
	}
}

// warmUp releases once, so that a wrapping key with its MAA token is ready
// for the next release within the TTL. A slow machine may spend a short
// deadline on the attestation: then try again, a few times.
func (e *releaseEnv) warmUp(t *testing.T) {
	t.Helper()
	for range 10 {
		status, out := e.release(t, keyOct)
		if status == http.StatusOK {
			return
		}
		if status != http.StatusGatewayTimeout {
			t.Fatalf("warm-up release: status %d: %v", status, out)
		}
	}
	t.Fatal("no release within the deadline in 10 tries")
}

func TestKeyReleaseConcurrentShareOneAttestation(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: 5 * time.Minute})
	const n = 16
	var wg sync.WaitGroup
	var failed atomic.Int32
	kids := []string{keyOct, keyRSA, keyEC}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := e.releaseBody(kids[i%len(kids)], releaseBearer)
			resp, err := http.Post(e.url+"/key/release", "application/json", strings.NewReader(body))
			if err != nil {
				failed.Add(1)
				return
			}
			var out map[string]any
			json.NewDecoder(resp.Body).Decode(&out)
			resp.Body.Close()
			if resp.StatusCode != 200 || out["key"] == nil {
				t.Errorf("release %d: status %d %v", i, resp.StatusCode, out["error"])
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d concurrent releases failed", failed.Load(), n)
	}
	if got := e.maa.count(); got != 1 {
		t.Fatalf("MAA calls = %d for %d concurrent releases, want 1 shared attestation", got, n)
	}
	if got := e.kv.count(); got != n {
		t.Fatalf("Key Vault calls = %d, want %d", got, n)
	}
}

func TestKeyReleaseTTLZeroAttestsEachTime(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: 0})
	seen := map[string]bool{}
	for range 3 {
		e.mustRelease(t, keyOct)
		e.kv.mu.Lock()
		seen[e.kv.lastReleaseTo] = true
		e.kv.mu.Unlock()
	}
	if got := e.maa.count(); got != 3 {
		t.Fatalf("MAA calls = %d for 3 releases with TTL 0, want 3", got)
	}
	if len(seen) != 3 {
		t.Fatalf("%d distinct wrapping keys for 3 releases with TTL 0, want 3", len(seen))
	}
}

func TestKeyReleaseTTLReuse(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: 5 * time.Minute})
	for _, kid := range []string{keyOct, keyRSA, keyEC, keyOct} {
		e.mustRelease(t, kid)
	}
	if got := e.maa.count(); got != 1 {
		t.Fatalf("MAA calls = %d for 4 releases within the TTL, want 1", got)
	}
}

func TestKeyReleaseTTLExpires(t *testing.T) {
	t.Parallel()
	const ttl = 5 * time.Minute
	clock := newFakeClock()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: ttl, clock: clock})
	e.mustRelease(t, keyOct)
	clock.Advance(ttl - time.Second)
	e.mustRelease(t, keyOct)
	if got := e.maa.count(); got != 1 {
		t.Fatalf("MAA calls = %d within the TTL, want 1", got)
	}
	clock.Advance(time.Second)
	e.mustRelease(t, keyOct)
	if got := e.maa.count(); got != 2 {
		t.Fatalf("MAA calls = %d after the TTL, want 2", got)
	}
}

// newReleaseIMDS is the IMDS stand-in of identity_test.go, issuing token to the
// system-assigned identity.
func newReleaseIMDS(t testing.TB, token string) *imdsStandIn {
	imds := newIMDSStandIn(t, "")
	imds.token = token
	return imds
}

func TestKeyReleaseBearerFromIMDS(t *testing.T) {
	t.Parallel()
	const imdsToken = "imds-issued-token-for-the-vault"
	imds := newReleaseIMDS(t, imdsToken)
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute, kvToken: imdsToken,
		env: map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL}})
	status, out := call(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, ""))
	k := releasedJWK(t, status, out)
	if k.K != b64url(e.oct) {
		t.Fatal("wrong key")
	}
	if imds.calls.Load() < 1 {
		t.Fatal("IMDS was not asked for a token")
	}
	res := imds.askedResources()
	if len(res) == 0 || !strings.HasPrefix(res[0], "https://vault.azure.net") {
		t.Errorf("IMDS resources = %q, want the Key Vault audience", res)
	}
	// A request's access_token wins over the identity.
	status, out = call(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, "wrong-request-token"))
	wantNoKey(t, status, out, http.StatusForbidden, "access_token from the request")
}

func TestKeyReleaseIMDSRefusesVaultToken(t *testing.T) {
	t.Parallel()
	imds := newReleaseIMDS(t, "a-token-the-vault-does-not-take")
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute,
		env: map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL}})
	for i := 1; i <= 2; i++ {
		status, out := call(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, ""))
		wantNoKey(t, status, out, http.StatusForbidden, "Key Vault", "IMDS")
		// A refused token is not served again from the cache.
		if n := imds.calls.Load(); n != int32(i) {
			t.Fatalf("after %d refusals IMDS was asked %d times", i, n)
		}
	}
}

func TestKeyReleaseBadRequests(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	good := map[string]string{"maa_endpoint": e.maa.host, "akv_endpoint": e.kv.host, "kid": keyOct, "access_token": releaseBearer}
	with := func(k, v string) string {
		m := map[string]string{}
		for a, b := range good {
			m[a] = b
		}
		if v == "\x00delete" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return string(standInJSON(m))
	}
	cases := map[string]string{
		"empty body":         "",
		"not JSON":           "{",
		"trailing data":      with("kid", keyOct) + "{}",
		"no kid":             with("kid", "\x00delete"),
		"kid with slash":     with("kid", "a/b/c"),
		"kid with dots":      with("kid", "../keys"),
		"kid bad version":    with("kid", keyOct+"/xyz"),
		"kid too long":       with("kid", strings.Repeat("a", 128)),
		"no maa endpoint":    with("maa_endpoint", "\x00delete"),
		"http maa endpoint":  with("maa_endpoint", "http://"+e.maa.host),
		"http akv endpoint":  with("akv_endpoint", "http://"+e.kv.host),
		"akv with path":      with("akv_endpoint", e.kv.host+"/keys"),
		"token with space":   with("access_token", "Bearer abc"),
		"token with newline": with("access_token", "abc\r\nX: y"),
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			status, out := call(t, "POST", e.url+"/key/release", body)
			wantNoKey(t, status, out, http.StatusBadRequest)
		})
	}
	if e.maa.count() != 0 || e.kv.count() != 0 {
		t.Fatalf("bad requests reached MAA (%d) or Key Vault (%d)", e.maa.count(), e.kv.count())
	}
	status, out := call(t, "GET", e.url+"/key/release", "")
	wantNoKey(t, status, out, http.StatusMethodNotAllowed)
}

// TestKeyReleaseLogsNoSecrets runs whole releases at trace level and looks
// for every secret, in every encoding, in the log.
func TestKeyReleaseLogsNoSecrets(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var wrapping []*rsa.PrivateKey
	newKey := func() (*wrappingKey, error) {
		k, err := newWrappingKey()
		if err == nil {
			mu.Lock()
			// Copy what the releaser will zero when it drops the key.
			c := *k.priv
			c.D = new(big.Int).Set(k.priv.D)
			c.Primes = []*big.Int{new(big.Int).Set(k.priv.Primes[0]), new(big.Int).Set(k.priv.Primes[1])}
			wrapping = append(wrapping, &c)
			mu.Unlock()
		}
		return k, err
	}

	const imdsToken = "imds-token-that-must-never-be-logged"
	imds := newReleaseIMDS(t, imdsToken)
	e := newReleaseEnv(t, releaseEnvOpts{ttl: 0, kvToken: imdsToken, newKey: newKey,
		env: map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL}})
	for _, kid := range []string{keyOct, keyRSA, keyEC} {
		e.mustReleaseBody(t, e.releaseBody(kid, ""))
	}
	// A failing release logs its error too: no secret in it either.
	status, out := call(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, releaseBearer))
	wantNoKey(t, status, out, http.StatusForbidden)
	e.mustReleaseBody(t, e.releaseBody(keyOct, imdsToken))

	secrets := map[string][]byte{
		"bearer (IMDS)":    []byte(imdsToken),
		"bearer (request)": []byte(releaseBearer),
		"oct key":          e.oct,
		"RSA key d":        e.rsa.D.Bytes(),
		"RSA key p":        e.rsa.Primes[0].Bytes(),
		"EC key d":         mustECBytes(t, e.ec),
	}
	for i, tok := range e.maa.issuedTokens() {
		secrets[fmt.Sprintf("MAA token %d", i)] = []byte(tok)
		parts := strings.Split(tok, ".")
		secrets[fmt.Sprintf("MAA token %d signature", i)] = []byte(parts[len(parts)-1])
	}
	mu.Lock()
	for i, k := range wrapping {
		secrets[fmt.Sprintf("wrapping key %d d", i)] = k.D.Bytes()
		secrets[fmt.Sprintf("wrapping key %d p", i)] = k.Primes[0].Bytes()
	}
	made := len(wrapping)
	mu.Unlock()
	if made < 4 {
		t.Fatalf("only %d wrapping keys were made for 5 releases with TTL 0", made)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "key released") || !strings.Contains(logs, "level=trace") {
		t.Fatalf("the log does not show trace-level release lines:\n%s", logs)
	}
	for name, s := range secrets {
		if enc, ok := leaked(logs, s); ok {
			t.Errorf("the log contains (part of) the %s, %s", name, enc)
		}
	}
}

func mustECBytes(t testing.TB, k *ecdsa.PrivateKey) []byte {
	b, err := k.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// leakWindow is the length of the shortest fragment of an encoded secret
// that counts as a leak: long enough never to occur by chance.
const leakWindow = 20

// leaked looks for a secret in a log in the forms it could take there
// (raw, hex, base64 variants, decimal), whole or as any fragment of
// 2*leakWindow characters, so a truncated dump is caught too.
func leaked(logs string, secret []byte) (encoding string, found bool) {
	for enc, form := range secretEncodings(secret) {
		if len(form) < leakWindow {
			continue
		}
		for i := 0; i+leakWindow <= len(form); i += leakWindow {
			if strings.Contains(logs, form[i:i+leakWindow]) {
				return enc, true
			}
		}
	}
	return "", false
}

func secretEncodings(b []byte) map[string]string {
	return map[string]string{
		"raw":       string(b),
		"hex":       hex.EncodeToString(b),
		"HEX":       strings.ToUpper(hex.EncodeToString(b)),
		"base64url": base64.RawURLEncoding.EncodeToString(b),
		"base64":    base64.RawStdEncoding.EncodeToString(b),
		"decimal":   new(big.Int).SetBytes(b).String(),
	}
}

func TestParseKeyRef(t *testing.T) {
	t.Parallel()
	ver := strings.Repeat("a1", 16)
	for _, c := range []struct {
		in      string
		want    keyRef
		wantErr bool
	}{
		{"mykey", keyRef{Name: "mykey"}, false},
		{"My-Key-01", keyRef{Name: "My-Key-01"}, false},
		{" mykey ", keyRef{Name: "mykey"}, false},
		{"mykey/" + ver, keyRef{Name: "mykey", Version: ver}, false},
		{"", keyRef{}, true},
		{"my_key", keyRef{}, true},
		{"my key", keyRef{}, true},
		{"mykey/", keyRef{}, true},
		{"mykey/short", keyRef{}, true},
		{"mykey/" + ver + "/release", keyRef{}, true},
		{"https://v.vault.azure.net/keys/mykey", keyRef{}, true},
		{strings.Repeat("k", 127), keyRef{Name: strings.Repeat("k", 127)}, false},
		{strings.Repeat("k", 128), keyRef{}, true},
	} {
		got, err := parseKeyRef(c.in)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("parseKeyRef(%q) = %+v, %v", c.in, got, err)
		}
		if err != nil && statusFor(err) != http.StatusBadRequest {
			t.Errorf("parseKeyRef(%q) status %d", c.in, statusFor(err))
		}
	}
}

func TestReleasePolicyEvaluation(t *testing.T) {
	t.Parallel()
	claims := map[string]any{
		"iss": "https://maa.example", "x-ms-sevsnpvm-is-debuggable": false, "x-ms-sevsnpvm-vmpl": float64(0),
		"x-ms-sevsnpvm-hostdata": "abcd", "x-ms-isolation-tee": map[string]any{"x-ms-attestation-type": "sevsnpvm"},
	}
	pol := func(authority string, body map[string]any) []byte {
		a := map[string]any{"authority": authority}
		for k, v := range body {
			a[k] = v
		}
		return standInJSON(map[string]any{"version": "1.0.0", "anyOf": []any{a}})
	}
	eq := func(c string, v any) map[string]any { return map[string]any{"claim": c, "equals": v} }
	for _, c := range []struct {
		name   string
		policy []byte
		want   bool
	}{
		{"all met, string forms", pol("https://maa.example/", map[string]any{"allOf": []any{eq("x-ms-sevsnpvm-is-debuggable", "false"), eq("x-ms-sevsnpvm-vmpl", "0"), eq("x-ms-sevsnpvm-hostdata", "abcd")}}), true},
		{"native forms", pol("https://maa.example", map[string]any{"allOf": []any{eq("x-ms-sevsnpvm-is-debuggable", false), eq("x-ms-sevsnpvm-vmpl", 0)}}), true},
		{"one unmet", pol("https://maa.example", map[string]any{"allOf": []any{eq("x-ms-sevsnpvm-hostdata", "ffff"), eq("x-ms-sevsnpvm-vmpl", "0")}}), false},
		{"anyOf", pol("https://maa.example", map[string]any{"anyOf": []any{eq("x-ms-sevsnpvm-hostdata", "ffff"), eq("x-ms-sevsnpvm-vmpl", "0")}}), true},
		{"nested", pol("https://maa.example", map[string]any{"allOf": []any{map[string]any{"anyOf": []any{eq("x-ms-sevsnpvm-hostdata", "ffff"), eq("x-ms-isolation-tee.x-ms-attestation-type", "sevsnpvm")}}}}), true},
		{"missing claim", pol("https://maa.example", map[string]any{"allOf": []any{eq("x-ms-compliance-status", "azure-compliant-uvm")}}), false},
		{"other authority", pol("https://other.example", map[string]any{"allOf": []any{eq("x-ms-sevsnpvm-vmpl", "0")}}), false},
	} {
		got, _ := kvEvalPolicy(c.policy, claims)
		if got != c.want {
			t.Errorf("%s: met = %v, want %v", c.name, got, c.want)
		}
	}
}

// FuzzDecodeKeyReleaseRequest: any body is either refused with 400 or
// yields endpoints and a key name that are safe to put in a URL.
func FuzzDecodeKeyReleaseRequest(f *testing.F) {
	f.Add([]byte(`{"maa_endpoint":"sharedeus.eus.attest.azure.net","akv_endpoint":"v.vault.azure.net","kid":"k"}`))
	f.Add([]byte(`{"maa_endpoint":"https://m:443","akv_endpoint":"v:8443","kid":"k/0123456789abcdef0123456789abcdef","access_token":"x.y.z"}`))
	f.Add([]byte(`{"maa_endpoint":"http://m","akv_endpoint":"v","kid":"../k"}`))
	f.Add([]byte(`{"kid":1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodeKeyReleaseRequest(body)
		if err != nil {
			if statusFor(err) != http.StatusBadRequest {
				t.Fatalf("status %d for a bad body: %v", statusFor(err), err)
			}
			return
		}
		if !isKeyName(p.Key.Name) || strings.ContainsAny(p.MAAHost+p.VaultHost, "/?#@ ") || p.MAAHost == "" || p.VaultHost == "" {
			t.Fatalf("accepted unsafe request %+v", p)
		}
		for _, c := range []byte(p.AccessToken) {
			if c <= ' ' || c >= 0x7f {
				t.Fatalf("accepted access token with byte %#x", c)
			}
		}
	})
}

// The identity's token opens every vault the identity may use: it goes
// only to Key Vault / Managed HSM hosts, never to whatever akv_endpoint a
// request names.
func TestKeyReleaseIdentityTokenOnlyForVaultHosts(t *testing.T) {
	t.Parallel()
	imds := newReleaseIMDS(t, "imds-token-for-vaults-only")
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute, kvToken: "imds-token-for-vaults-only",
		env: map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL}})
	body := fmt.Sprintf(`{"maa_endpoint":%q,"akv_endpoint":%q,"kid":%q}`, e.maa.host, e.maa.host, keyOct)
	status, out := call(t, "POST", e.url+"/key/release", body)
	msg, _ := out["error"].(string)
	if status != http.StatusBadRequest || !strings.Contains(msg, "not a Key Vault or Managed HSM host") {
		t.Fatalf("status %d, error %q", status, msg)
	}
	if n := imds.calls.Load(); n != 0 {
		t.Errorf("IMDS was asked %d times for a token bound for %s", n, e.maa.host)
	}
	// With the caller's own token, any https host is the caller's business.
	body = fmt.Sprintf(`{"maa_endpoint":%q,"akv_endpoint":%q,"kid":%q,"access_token":"caller-token"}`, e.maa.host, e.maa.host, keyOct)
	if status, out := call(t, "POST", e.url+"/key/release", body); status == http.StatusBadRequest {
		t.Errorf("access_token for another host refused: %v", out)
	}
}
