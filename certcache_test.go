package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestReportProduct(t *testing.T) {
	t.Parallel()
	amd := &certProvider{src: &certSource{Kind: sourceAMD, Product: productGenoa}}
	none := &certProvider{src: &certSource{Kind: sourceLocalTHIM}}
	turinVCEK := &vcekInfo{Product: productTurin}
	tests := []struct {
		name  string
		p     *certProvider
		rep   snpReport
		local *vcekInfo
		want  snpProduct
	}{
		{"v3 Milan", none, snpReport{Version: 3, CPUIDFamily: 0x19, CPUIDModel: 0x01}, turinVCEK, productMilan},
		{"v3 Genoa", none, snpReport{Version: 3, CPUIDFamily: 0x19, CPUIDModel: 0x11}, nil, productGenoa},
		{"v5 Turin", none, snpReport{Version: 5, CPUIDFamily: 0x1A, CPUIDModel: 0x02}, nil, productTurin},
		{"v3 unknown model falls back to the VCEK", none, snpReport{Version: 3, CPUIDFamily: 0x19, CPUIDModel: 0x99}, turinVCEK, productTurin},
		{"v2 uses the local VCEK", amd, snpReport{Version: 2}, turinVCEK, productTurin},
		{"v2 without local uses tee_type", amd, snpReport{Version: 2}, nil, productGenoa},
		{"v2 with nothing is Milan", none, snpReport{Version: 2}, nil, productMilan},
	}
	for _, tc := range tests {
		if got := tc.p.reportProduct(&tc.rep, tc.local); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

// kdsFixture: local THIM certificates for tcbOld, a report at tcbNew, and a
// KDS stand-in that has the VCEK for tcbNew.
type kdsFixture struct {
	kds      *kdsStandIn
	old, new *testVCEK
	rep      *snpReport
	p        *certProvider
	localN   int
	localMu  sync.Mutex
}

func newKDSFixture(t *testing.T) *kdsFixture {
	f := &kdsFixture{kds: newKDSStandIn(t), old: newTestVCEK(t, specOld), new: newTestVCEK(t, specNew)}
	f.kds.addVCEK(f.new, specNew)
	f.kds.addVCEK(f.old, specOld)
	f.rep = testReport(t, f.new, reportSpec{tcb: tcbNew, chipID: testChipID})
	local := f.old.certs(tcbOld)
	f.p = newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: f.kds.host()}, func(context.Context) (*platformCerts, error) {
		f.localMu.Lock()
		f.localN++
		f.localMu.Unlock()
		return local, nil
	}, f.kds.srv)
	return f
}

func TestCertProviderUsesMatchingLocalCertificates(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	rep := testReport(t, f.old, reportSpec{tcb: tcbOld, chipID: testChipID})
	for range 3 {
		pc, err := f.p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if !pc.VCEK.Equal(f.old.cert) {
			t.Fatal("not the local VCEK")
		}
	}
	if n := f.kds.total.Load(); n != 0 {
		t.Fatalf("%d calls to KDS, want none", n)
	}
	if f.localN != 1 {
		t.Fatalf("local source called %d times, want once", f.localN)
	}
}

func TestCertProviderRefetchesFromKDSOnTCBMismatch(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	pc, err := f.p.forReport(context.Background(), f.rep)
	if err != nil {
		t.Fatal(err)
	}
	if pc.TCB != tcbNew || !pc.VCEK.Equal(f.new.cert) {
		t.Fatalf("got TCB %016x", pc.TCB)
	}
	if err := verifyEvidence(f.rep, pc); err != nil {
		t.Fatal(err)
	}
	if f.kds.callsOf("vcek") != 1 || f.kds.callsOf("chain") != 1 {
		t.Fatalf("calls = %v", f.kds.calls)
	}
	// Cache hit: no second call.
	if _, err := f.p.forReport(context.Background(), f.rep); err != nil {
		t.Fatal(err)
	}
	if n := f.kds.total.Load(); n != 2 {
		t.Fatalf("%d calls after a cache hit, want still 2", n)
	}
}

func TestCertProviderRefetchesWhenLocalVCEKIsForAnotherChip(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	// Same TCB as the local certificates, but its VCEK names another chip.
	otherChip := testChipID
	otherChip[5] ^= 0xff
	local := newTestVCEK(t, vcekSpec{product: productMilan, bl: 4, snp: 0x18, ucode: 0xdb, hwid: otherChip[:]})
	p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: f.kds.host()}, staticLocal(local.certs(tcbNew)), f.kds.srv)
	pc, err := p.forReport(context.Background(), f.rep)
	if err != nil {
		t.Fatal(err)
	}
	if !pc.VCEK.Equal(f.new.cert) || f.kds.callsOf("vcek") != 1 {
		t.Fatalf("did not refetch: calls %v", f.kds.calls)
	}
}

func TestCertProviderTurinKDS(t *testing.T) {
	t.Parallel()
	spec := vcekSpec{product: productTurin, fmc: 1, bl: 5, snp: 0x16, ucode: 0x48}
	v := newTestVCEK(t, spec)
	kds := newKDSStandIn(t)
	kds.addVCEK(v, spec)
	rep := testReport(t, v, reportSpec{version: 3, family: 0x1A, model: 0x02, tcb: 0x4800000016000501, chipID: testChipID})
	p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}, nil, kds.srv)
	pc, err := p.forReport(context.Background(), rep)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyEvidence(rep, pc); err != nil {
		t.Fatal(err)
	}
}

func TestCertProviderRetries(t *testing.T) {
	t.Parallel()
	t.Run("503 then success", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 503, body: "busy"}}
		if _, err := f.p.forReport(context.Background(), f.rep); err != nil {
			t.Fatal(err)
		}
		if n := f.kds.callsOf("vcek"); n != 2 {
			t.Fatalf("vcek calls = %d, want 2", n)
		}
	})
	t.Run("429 with Retry-After", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 429, retryAfter: "1", body: "slow down"}}
		retry, waits := recordedRetry(f.p.retry)
		f.p.retry = *retry
		if _, err := f.p.forReport(context.Background(), f.rep); err != nil {
			t.Fatal(err)
		}
		if n := f.kds.callsOf("vcek"); n != 2 {
			t.Fatalf("vcek calls = %d, want 2", n)
		}
		// The test policy's own backoff is a millisecond: only the
		// server's Retry-After explains a pause of a second.
		if got := waits.Delays(); len(got) != 1 || got[0] != time.Second {
			t.Fatalf("paused %v between tries: Retry-After: 1 was not honoured", got)
		}
	})
	t.Run("final 404", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 404, body: "no such VCEK"}}
		_, err := f.p.forReport(context.Background(), f.rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "404") {
			t.Fatalf("err = %v (status %d)", err, statusFor(err))
		}
		if n := f.kds.callsOf("vcek"); n != 1 {
			t.Fatalf("vcek calls = %d, want 1 (404 is final)", n)
		}
	})
	t.Run("503 every time", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		for range 10 {
			f.kds.script = append(f.kds.script, scriptedAnswer{status: 503})
		}
		_, err := f.p.forReport(context.Background(), f.rep)
		if err == nil || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
		if n := f.kds.callsOf("vcek"); n != fastRetry.Attempts {
			t.Fatalf("vcek calls = %d, want %d", n, fastRetry.Attempts)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 200, body: "<html>not a certificate</html>"}}
		_, err := f.p.forReport(context.Background(), f.rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "unusable") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown TCB is a 404 from KDS", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		rep := testReport(t, f.new, reportSpec{tcb: 0xdb18000000000005, chipID: testChipID})
		_, err := f.p.forReport(context.Background(), rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "404") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("timeout is 504", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.hang = true
		f.p.fetches.timeout = 300 * time.Millisecond // the shared fetch gives up soon after the caller
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := f.p.forReport(ctx, f.rep)
		if err == nil || statusFor(err) != http.StatusGatewayTimeout {
			t.Fatalf("err = %v (status %d)", err, statusFor(err))
		}
	})
}

func TestCertProviderConcurrentRequestsShareOneFetch(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	f.kds.gate = make(chan struct{})
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc, err := f.p.forReport(context.Background(), f.rep)
			if err == nil && pc.TCB != tcbNew {
				err = errors.New("wrong TCB")
			}
			errs <- err
		}()
	}
	// Wait until every caller waits on the one fetch, then let the
	// stand-in answer.
	waitForTakers(t, &f.p.fetches, certKey{chipID: f.rep.ChipID, tcb: f.rep.ReportedTCB}, n)
	close(f.kds.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if f.kds.callsOf("vcek") != 1 || f.kds.callsOf("chain") != 1 {
		t.Fatalf("calls = %v, want one VCEK and one chain fetch", f.kds.calls)
	}
}

func TestCertProviderTHIM(t *testing.T) {
	t.Parallel()
	old, nw := newTestVCEK(t, specOld), newTestVCEK(t, specNew)
	rep := testReport(t, nw, reportSpec{tcb: tcbNew, chipID: testChipID})
	t.Run("fresh THIM matches", func(t *testing.T) {
		thim := newTHIMStandIn(t, thimJSON(t, nw.cert, nw.root.ask, nw.root.ark, "DB18000000000004"))
		p := newTestProvider(t, certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}, staticLocal(old.certs(tcbOld)), thim.srv)
		pc, err := p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyEvidence(rep, pc); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("THIM still has the old TCB", func(t *testing.T) {
		thim := newTHIMStandIn(t, thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
		p := newTestProvider(t, certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}, staticLocal(old.certs(tcbOld)), thim.srv)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
		for _, want := range []string{"7308000000000003", "db18000000000004", "ucode=115", "ucode=219", "snp=8", "snp=24"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not show %q: %v", want, err)
			}
		}
		// Failures are not cached: the next request asks again.
		p.forReport(context.Background(), rep)
		if n := thim.callsOf("thim"); n != 2 {
			t.Fatalf("THIM calls = %d, want 2", n)
		}
	})
	t.Run("stand-in refuses a request without Metadata: true", func(t *testing.T) {
		thim := newTHIMStandIn(t, nil)
		resp, err := thim.srv.Client().Get(thim.srv.URL + thimPath)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status = %d", resp.StatusCode)
		}
	})
	t.Run("garbage JSON", func(t *testing.T) {
		thim := newTHIMStandIn(t, []byte(`{"vcekCert":"nope"}`))
		p := newTestProvider(t, certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}, nil, thim.srv)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "local THIM") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCertProviderAzCache(t *testing.T) {
	t.Parallel()
	nw := newTestVCEK(t, specNew)
	rep := testReport(t, nw, reportSpec{tcb: tcbNew, chipID: testChipID})
	t.Run("VCEK, ASK and ARK", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		cache.add("SevSnpVM", "db18000000000004", pemCert(nw.cert)+pemCert(nw.root.ask)+pemCert(nw.root.ark))
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv)
		pc, err := p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyEvidence(rep, pc); err != nil {
			t.Fatal(err)
		}
		want := "/SevSnpVM/certificates/" + hex.EncodeToString(testChipID[:]) + "/db18000000000004?api-version=2020-10-15-preview&clientId=ConfidentialACI"
		if got := cache.lastURL.Load(); got != want {
			t.Fatalf("URL = %v, want %s", got, want)
		}
	})
	t.Run("VCEK alone: ASK and ARK from KDS", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		cache.add("SevSnpVM", "db18000000000004", pemCert(nw.cert))
		kds := newKDSStandIn(t)
		kds.addVCEK(nw, specNew)
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv, kds.srv)
		p.kdsBase = kds.srv.URL
		pc, err := p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyEvidence(rep, pc); err != nil {
			t.Fatal(err)
		}
		if kds.callsOf("chain") != 1 || kds.callsOf("vcek") != 0 {
			t.Fatalf("KDS calls = %v", kds.calls)
		}
	})
	t.Run("VCEK alone and KDS fails", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		cache.add("SevSnpVM", "db18000000000004", pemCert(nw.cert))
		kds := newKDSStandIn(t) // knows no chain: 404
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv, kds.srv)
		p.kdsBase = kds.srv.URL
		_, err := p.forReport(context.Background(), rep)
		if err == nil || !strings.Contains(err.Error(), "no ASK and ARK") || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown TCB", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || !strings.Contains(err.Error(), "certificate not found") || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCertProviderLocalSource(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specOld)
	rep := testReport(t, v, reportSpec{tcb: tcbOld, chipID: testChipID})
	t.Run("a context error is not remembered", func(t *testing.T) {
		var calls atomic.Int32 // the local source runs on a goroutine of its own
		local := func(ctx context.Context) (*platformCerts, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return v.certs(tcbOld), nil
		}
		p := newTestProvider(t, certCacheConfig{}, local)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := p.forReport(ctx, rep); !errors.Is(err, context.DeadlineExceeded) || statusFor(err) != http.StatusGatewayTimeout {
			t.Fatalf("err = %v", err)
		}
		pc, err := p.forReport(context.Background(), rep)
		if err != nil || !pc.VCEK.Equal(v.cert) {
			t.Fatalf("second call: %v", err)
		}
		if calls.Load() != 2 {
			t.Fatalf("local called %d times", calls.Load())
		}
	})
	t.Run("another error is remembered and fresh certificates are fetched", func(t *testing.T) {
		kds := newKDSStandIn(t)
		kds.addVCEK(v, specOld)
		calls := 0
		local := func(context.Context) (*platformCerts, error) {
			calls++
			return nil, errors.New("broken")
		}
		p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}, local, kds.srv)
		for range 2 {
			if _, err := p.forReport(context.Background(), rep); err != nil {
				t.Fatal(err)
			}
		}
		if calls != 1 || kds.callsOf("vcek") != 1 {
			t.Fatalf("local calls %d, KDS calls %v", calls, kds.calls)
		}
	})
	t.Run("misconfigured certcache", func(t *testing.T) {
		p := newCertProvider(certCacheConfig{EndpointType: "AMD", Endpoint: "http://kds.example"}, nil, nil, nil)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || !strings.Contains(err.Error(), "misconfigured") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("masked CHIP_ID cannot be asked of KDS", func(t *testing.T) {
		p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: "kds.invalid"}, nil)
		_, err := p.forReport(context.Background(), testReport(t, v, reportSpec{tcb: tcbOld}))
		if err == nil || !strings.Contains(err.Error(), "masked") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCertCacheIsBounded(t *testing.T) {
	t.Parallel()
	p := &certProvider{cache: map[certKey]*platformCerts{}}
	for i := range certCacheEntries + 5 {
		p.remember(certKey{tcb: uint64(i)}, &platformCerts{})
	}
	if len(p.cache) != certCacheEntries || len(p.order) != certCacheEntries {
		t.Fatalf("cache holds %d (%d in order)", len(p.cache), len(p.order))
	}
	if _, ok := p.cache[certKey{tcb: 0}]; ok {
		t.Fatal("oldest entry not evicted")
	}
}

func TestAllowTestingMismatchedTCBFlag(t *testing.T) {
	t.Parallel()
	for argv, want := range map[string]bool{"": false, "-allowTestingMismatchedTCB": true, "-allowTestingMismatchedTCB=false": false} {
		c, err := parseServeFlags(strings.Fields(argv), envOf(nil), io.Discard)
		if err != nil || c.AllowTestingMismatchedTCB != want {
			t.Errorf("%q: %+v, %v; want %v", argv, c, err, want)
		}
	}
}

// -allowTestingMismatchedTCB: certificates in the security context that
// match the report are still refetched, and the sidecar says so loudly.
func TestAllowTestingMismatchedTCBRefetches(t *testing.T) {
	t.Parallel()
	for _, allow := range []bool{false, true} {
		v := newTestVCEK(t, specNew)
		kds := newKDSStandIn(t)
		kds.addVCEK(v, specNew)
		policy := []byte("package policy\n")
		dir := writeSecurityContext(t, policy, thimJSON(t, v.cert, v.root.ask, v.root.ark, "db18000000000004"))
		cfg := serverConfig{
			Args:                      &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}},
			AllowTestingMismatchedTCB: allow,
			LogLevel:                  -4, // info: the refetch's reason
		}
		url, logs := startTestServer(t, cfg, serverOptions{
			TEE:    &signingDevice{v: v, tcb: tcbNew, hostData: sha256.Sum256(policy)},
			Roots:  trustPool(kds.srv),
			Getenv: func(k string) string { return map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}[k] },
		})
		status, body := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
		if status != http.StatusOK {
			t.Fatalf("allow=%v: status %d: %v\n%s", allow, status, body, logs)
		}
		if tcb, _, _ := combinedAnswer(t, body); tcb != "db18000000000004" {
			t.Fatalf("endorsed_tcb = %q", tcb)
		}
		_, st := call(t, http.MethodGet, url+"/status", "")
		warning, _ := st["testing_warning"].(string)
		if !allow {
			if kds.callsOf("vcek") != 0 || warning != "" || strings.Contains(logs.String(), "TESTING ONLY") {
				t.Fatalf("without the flag: KDS calls %v, warning %q", kds.calls, warning)
			}
			continue
		}
		if kds.callsOf("vcek") != 1 {
			t.Errorf("with the flag the matching certificates were not refetched: KDS calls %v", kds.calls)
		}
		if !strings.Contains(logs.String(), "-allowTestingMismatchedTCB makes them never match") {
			t.Errorf("the refetch's reason is not logged:\n%s", logs)
		}
		if !strings.Contains(logs.String(), "level=warning msg=\"TESTING ONLY (-allowTestingMismatchedTCB)") {
			t.Errorf("no start-up warning:\n%s", logs)
		}
		if warning != mismatchedTCBWarning {
			t.Errorf("/status testing_warning = %q", warning)
		}
	}
}
