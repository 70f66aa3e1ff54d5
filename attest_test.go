package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// /attest/raw and /attest/combined end to end through the real server,
// with go-sev-guest's fake /dev/sev-guest and with the emulator.

var testPolicy = []byte("package policy\n\napi_version := \"0.10.0\"\nallow_all := true\n")

// evidenceDevice is one way the server can get evidence in tests.
type evidenceDevice struct {
	name     string
	wantTEE  string
	emulated bool
	// setup returns the device and the security-context THIM JSON to hand
	// the container (nil when the device brings its own certificates).
	setup func(t *testing.T) (teeDevice, []byte)
	// hostData is what the reports' HOST_DATA must be.
	hostData [32]byte
}

func evidenceDevices() []evidenceDevice {
	return []evidenceDevice{
		{
			name: "fake /dev/sev-guest", wantTEE: "/dev/sev-guest",
			setup: func(t *testing.T) (teeDevice, []byte) {
				dev, pc := newFakeSevGuest(t)
				return dev, thimJSON(t, pc.VCEK, pc.ASK, pc.ARK, fmt.Sprintf("%016x", pc.TCB))
			},
		},
		{
			name: "emulator", wantTEE: "emulator", emulated: true,
			setup: func(t *testing.T) (teeDevice, []byte) {
				return newTestEmulator(t, testPolicy), nil
			},
			hostData: sha256.Sum256(testPolicy),
		},
	}
}

// startEvidenceServer runs the server over dev with a security context
// holding testPolicy, thim (when not nil) and refInfo.
func startEvidenceServer(t *testing.T, dev teeDevice, thim, refInfo []byte) (string, *syncBuffer) {
	t.Helper()
	dir := writeSecurityContext(t, testPolicy, thim)
	if refInfo != nil {
		writeFileB64(t, dir, fileReferenceInfo, refInfo)
	}
	return startTestServer(t, serverConfig{}, serverOptions{
		TEE:    dev,
		Getenv: envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}),
	})
}

func writeFileB64(t testing.TB, dir, name string, content []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(base64.StdEncoding.EncodeToString(content)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestAttestEndToEnd(t *testing.T) {
	t.Parallel()
	refInfo := []byte("\xd2\x84test COSE_Sign1 reference info")
	for _, d := range evidenceDevices() {
		t.Run(d.name, func(t *testing.T) {
			dev, thim := d.setup(t)
			base, logs := startEvidenceServer(t, dev, thim, refInfo)

			status, st := call(t, "GET", base+"/status", "")
			if status != 200 || st["tee"] != d.wantTEE || st["emulated"] != d.emulated || st["message"] != "Status OK" {
				t.Fatalf("/status = %d %v", status, st)
			}
			if st["host_data"] != hex.EncodeToString(sha256Sum(testPolicy)) {
				t.Errorf("/status host_data = %v", st["host_data"])
			}

			runtimeData := []byte(`{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}`)
			for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
				body := fmt.Sprintf(`{"runtime_data":%q}`, enc.EncodeToString(runtimeData))

				status, raw := call(t, "POST", base+"/attest/raw", body)
				if status != 200 {
					t.Fatalf("/attest/raw = %d %v\n%s", status, raw, logs)
				}
				report, err := hex.DecodeString(raw["report"].(string))
				if err != nil || len(report) != reportSize {
					t.Fatalf("report: %d bytes, %v", len(report), err)
				}
				rep := mustParseReport(t, report)
				checkBinding(t, rep, runtimeData, d.hostData)

				status, comb := call(t, "POST", base+"/attest/combined", body)
				if status != 200 {
					t.Fatalf("/attest/combined = %d %v\n%s", status, comb, logs)
				}
				tcb, chain, crep := combinedAnswer(t, comb)
				checkBinding(t, crep, runtimeData, d.hostData)
				if tcb != fmt.Sprintf("%016x", crep.ReportedTCB) {
					t.Errorf("endorsed_tcb %s, REPORTED_TCB %016x", tcb, crep.ReportedTCB)
				}
				certs, err := parsePEMCertificates(chain)
				if err != nil || len(certs) != 3 {
					t.Fatalf("endorsements: %d certificates, %v", len(certs), err)
				}
				// What was handed out verifies, checked by go-sev-guest's
				// verifier with the handed-out ASK/ARK as the only roots.
				pc := assemblePlatformCerts(certs[0], certs[1], certs[2], crep.ReportedTCB)
				if err := verifyWithGoSevGuest(t, crep.Raw, pc); err != nil {
					t.Fatalf("combined evidence does not verify: %v", err)
				}
				uvm, _ := base64.StdEncoding.DecodeString(comb["uvm_endorsements"].(string))
				if !bytes.Equal(uvm, refInfo) {
					t.Errorf("uvm_endorsements = %q", uvm)
				}
			}
			if d.emulated && !strings.Contains(logs.String(), "EMULATED EVIDENCE") {
				t.Errorf("the start-up log does not say the evidence is emulated:\n%s", logs)
			}
		})
	}
}

func sha256Sum(b []byte) []byte {
	h := sha256.Sum256(b)
	return h[:]
}

func mustParseReport(t *testing.T, raw []byte) *snpReport {
	t.Helper()
	rep, err := parseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// checkBinding checks REPORT_DATA = sha256(runtime data) ‖ zeros and HOST_DATA.
func checkBinding(t *testing.T, rep *snpReport, runtimeData []byte, hostData [32]byte) {
	t.Helper()
	want := sha256.Sum256(runtimeData)
	if !bytes.Equal(rep.ReportData[:32], want[:]) || !bytes.Equal(rep.ReportData[32:], make([]byte, 32)) {
		t.Errorf("REPORT_DATA = %x, want sha256 %x then zeros", rep.ReportData, want)
	}
	if rep.HostData != hostData {
		t.Errorf("HOST_DATA = %x, want %x", rep.HostData, hostData)
	}
}

// A VCEK for the right TCB and chip that did not sign the report must not
// be handed out: the relying party would reject the bundle later, far from
// the cause.
func TestAttestCombinedRefusesCertificatesThatDoNotVerify(t *testing.T) {
	t.Parallel()
	signer, impostor := newTestVCEK(t, specNew), newTestVCEK(t, specNew)
	dir := writeSecurityContext(t, testPolicy, thimJSON(t, impostor.cert, impostor.root.ask, impostor.root.ark, fmt.Sprintf("%016x", uint64(tcbNew))))
	base, _ := startTestServer(t, serverConfig{}, serverOptions{
		TEE:    &signingDevice{v: signer, tcb: tcbNew},
		Getenv: envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}),
	})
	status, body := call(t, "POST", base+"/attest/combined", `{"runtime_data":"aGVsbG8="}`)
	msg, _ := body["error"].(string)
	if status != http.StatusBadGateway || !strings.Contains(msg, "does not verify") {
		t.Fatalf("status %d, error %q; want 502 saying the report does not verify", status, msg)
	}
	if _, ok := body["evidence"]; ok {
		t.Fatal("evidence handed out with certificates that do not verify it")
	}
	// /attest/raw needs no certificates and still works.
	if status, _ := call(t, "POST", base+"/attest/raw", `{"runtime_data":"aGVsbG8="}`); status != 200 {
		t.Fatalf("/attest/raw = %d", status)
	}
}

// The certificate source is busy, then rate-limits: the server retries
// through both (honouring Retry-After) and hands out the fresh chain.
func TestAttestCombinedRefetchRetriesBusyKDS(t *testing.T) {
	t.Parallel()
	old, nw := newTestVCEK(t, specOld), newTestVCEK(t, specNew)
	kds := newKDSStandIn(t)
	kds.addVCEK(nw, specNew)
	kds.script = []scriptedAnswer{{status: 503, body: "busy"}, {status: 429, retryAfter: "1", body: "slow down"}}
	dir := writeSecurityContext(t, testPolicy, thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
	cfg := serverConfig{Args: &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}}}
	retry, waits := recordedRetry(defaultRetry)
	base, logs := startTestServer(t, cfg, serverOptions{
		TEE:    &signingDevice{v: nw, tcb: tcbNew},
		Roots:  trustPool(kds.srv),
		Getenv: envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}),
		Retry:  retry,
	})
	status, body := call(t, "POST", base+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
	if status != 200 {
		t.Fatalf("status %d %v\n%s", status, body, logs)
	}
	if tcb, _, _ := combinedAnswer(t, body); tcb != fmt.Sprintf("%016x", uint64(tcbNew)) {
		t.Fatalf("endorsed_tcb %s", tcb)
	}
	if n := kds.callsOf("vcek"); n != 3 {
		t.Errorf("VCEK requests = %d, want 3 (503, 429, 200)", n)
	}
	// The production backoff after the 503, then exactly what the 429 asked.
	got := waits.Delays()
	if len(got) != 2 || got[0] < defaultRetry.BaseDelay/2 || got[0] > defaultRetry.BaseDelay || got[1] != time.Second {
		t.Errorf("paused %v between tries, want a backoff of %v to %v, then the 429's Retry-After: 1s",
			got, defaultRetry.BaseDelay/2, defaultRetry.BaseDelay)
	}
}

// benchServer builds the real handler over dev without a listener, so the
// benchmark measures the sidecar rather than loopback TCP.
func benchServer(b *testing.B, dev teeDevice, thim []byte) http.Handler {
	b.Helper()
	dir := b.TempDir()
	if thim != nil {
		writeFileB64(b, dir, fileHostAMDCert, thim)
	}
	s, err := newServer(serverConfig{}, slog.New(slog.NewTextHandler(io.Discard, nil)), serverOptions{
		TEE: dev, Getenv: envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}), SecurityContextRoot: dir,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(s.rel.Close)
	return s.routes()
}

func benchEndpoint(b *testing.B, h http.Handler, path string) {
	body := `{"runtime_data":"eyJrZXlzIjpbXX0="}`
	// Warm up: the emulator's keys, the certificate cache.
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", path, strings.NewReader(body)))
	if rec.Code != 200 {
		b.Fatalf("%s = %d %s", path, rec.Code, rec.Body)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", path, strings.NewReader(body)))
		if rec.Code != 200 {
			b.Fatalf("%s = %d %s", path, rec.Code, rec.Body)
		}
	}
}

func BenchmarkAttestRaw(b *testing.B) {
	b.Run("emulator", func(b *testing.B) {
		benchEndpoint(b, benchServer(b, newTestEmulator(b, testPolicy), nil), "/attest/raw")
	})
	b.Run("fake-sev-guest", func(b *testing.B) {
		dev, pc := newFakeSevGuest(b)
		benchEndpoint(b, benchServer(b, dev, thimJSON(b, pc.VCEK, pc.ASK, pc.ARK, fmt.Sprintf("%016x", pc.TCB))), "/attest/raw")
	})
}

func BenchmarkAttestCombined(b *testing.B) {
	b.Run("emulator", func(b *testing.B) {
		benchEndpoint(b, benchServer(b, newTestEmulator(b, testPolicy), nil), "/attest/combined")
	})
	b.Run("fake-sev-guest", func(b *testing.B) {
		dev, pc := newFakeSevGuest(b)
		benchEndpoint(b, benchServer(b, dev, thimJSON(b, pc.VCEK, pc.ASK, pc.ARK, fmt.Sprintf("%016x", pc.TCB))), "/attest/combined")
	})
}

// Concurrent requests each get a report over their own runtime data: the
// device is shared, the answers are not mixed up.
func TestAttestConcurrentRequests(t *testing.T) {
	t.Parallel()
	for _, d := range evidenceDevices() {
		t.Run(d.name, func(t *testing.T) {
			dev, thim := d.setup(t)
			base, _ := startEvidenceServer(t, dev, thim, nil)
			// One connection per request: no spare connection, dialled for a
			// request that another connection served, holds up the
			// server's shutdown.
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			const n = 32
			errs := make(chan error, n)
			for i := range n {
				go func() {
					path := []string{"/attest/raw", "/attest/combined"}[i%2]
					rd := []byte(fmt.Sprintf("request %d", i))
					resp, err := client.Post(base+path, "application/json", strings.NewReader(fmt.Sprintf(`{"runtime_data":%q}`, base64.StdEncoding.EncodeToString(rd))))
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					var body map[string]string
					if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 {
						errs <- fmt.Errorf("%s: %d %v %v", path, resp.StatusCode, body, err)
						return
					}
					var raw []byte
					if path == "/attest/raw" {
						raw, err = hex.DecodeString(body["report"])
					} else {
						raw, err = base64.StdEncoding.DecodeString(body["evidence"])
					}
					if err != nil {
						errs <- err
						return
					}
					rep, err := parseReport(raw)
					if err != nil {
						errs <- err
						return
					}
					if rep.ReportData != reportDataFor(rd) {
						errs <- fmt.Errorf("request %d got a report over someone else's runtime data", i)
						return
					}
					errs <- nil
				}()
			}
			for range n {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// otherReportDataDevice answers every request with a genuine report over
// other REPORT_DATA than the one asked for, as a device replaying an older
// report, or answering another caller's request, would. It keeps the
// emulator's certificates, so that nothing is fetched.
type otherReportDataDevice struct {
	teeDevice
	platformCertSource
}

func (d otherReportDataDevice) GetReport(ctx context.Context, reportData [64]byte) ([]byte, error) {
	reportData[0] ^= 1
	return d.teeDevice.GetReport(ctx, reportData)
}

// A report that is not over the REPORT_DATA asked for is never handed out.
// Guards rawReport's comparison of the device's answer with its request.
func TestAttestRefusesReportOverOtherReportData(t *testing.T) {
	t.Parallel()
	emulator := newTestEmulator(t, testPolicy)
	dev := otherReportDataDevice{emulator, emulator.(platformCertSource)}
	base, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: dev})
	for _, path := range []string{"/attest/raw", "/attest/combined"} {
		status, out := call(t, "POST", base+path, `{"runtime_data":"aGVsbG8="}`)
		msg, _ := out["error"].(string)
		if status != http.StatusInternalServerError || !strings.Contains(msg, "REPORT_DATA") {
			t.Errorf("%s = %d, error %q; want 500 saying the REPORT_DATA is not the one asked for", path, status, msg)
		}
		if out["report"] != nil || out["evidence"] != nil {
			t.Errorf("%s handed out a report over other REPORT_DATA", path)
		}
	}
}

// stuckDevice never answers before the caller's deadline, as a paced
// /dev/sev-guest or an emulator still making its keys may not.
type stuckDevice struct{}

func (stuckDevice) Name() string { return "stuck device" }

func (stuckDevice) Emulated() bool { return false }

func (stuckDevice) GetReport(ctx context.Context, _ [64]byte) ([]byte, error) {
	<-ctx.Done()
	return nil, context.Cause(ctx)
}

func TestAttestDeviceTimeoutIs504(t *testing.T) {
	t.Parallel()
	base, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: stuckDevice{}, RequestTimeout: 100 * time.Millisecond})
	for _, path := range []string{"/attest/raw", "/attest/combined"} {
		status, out := call(t, "POST", base+path, `{"runtime_data":"YWJj"}`)
		if status != http.StatusGatewayTimeout {
			t.Errorf("%s = %d %v, want 504", path, status, out)
		}
	}
}

// lockProbe is a device that notes whether the server's device lock is
// held while it is asked for a report.
type lockProbe struct {
	teeDevice
	s          *server
	lockedHeld bool
}

func (p *lockProbe) GetReport(ctx context.Context, rd [64]byte) ([]byte, error) {
	if p.s.deviceMu.TryLock() {
		p.s.deviceMu.Unlock()
	} else {
		p.lockedHeld = true
	}
	return p.teeDevice.GetReport(ctx, rd)
}

// concurrentLockProbe is a lockProbe for a device marked concurrent.
type concurrentLockProbe struct{ *lockProbe }

func (concurrentLockProbe) concurrentReports() {}

// The emulator is asked for reports without the device lock, so that they
// are signed on every core; every other device, wrapped emulators
// included, one command at a time.
func TestDeviceLockOnlyForDevicesThatNeedIt(t *testing.T) {
	t.Parallel()
	emu := newTestEmulator(t, nil)
	if _, ok := emu.(concurrentDevice); !ok {
		t.Fatal("the emulator is not marked safe for concurrent reports")
	}
	if _, ok := teeDevice(deviceWithCerts{emu, nil}).(concurrentDevice); ok {
		t.Fatal("a wrapped device kept the mark")
	}
	for _, concurrent := range []bool{false, true} {
		s := &server{}
		probe := &lockProbe{teeDevice: emu, s: s}
		s.tee = probe
		if concurrent {
			s.tee = concurrentLockProbe{probe}
		}
		if _, err := s.deviceReport(context.Background(), [64]byte{1}); err != nil {
			t.Fatal(err)
		}
		if probe.lockedHeld == concurrent {
			t.Fatalf("concurrent device %v: lock held while asked = %v", concurrent, probe.lockedHeld)
		}
	}
}

// BenchmarkAttestRawParallel: /attest/raw requests per second through the
// real server, from 4×GOMAXPROCS clients in this process, with the emulator.
func BenchmarkAttestRawParallel(b *testing.B) {
	url, _ := startTestServer(b, serverConfig{Emulate: true, LogLevel: slog.LevelError}, serverOptions{
		TEE:          newTestEmulator(b, testPolicy),
		WrappingKeys: testWrappingKeys(b), // no RSA generation in the figures
	})
	body := `{"runtime_data":"eyJrZXlzIjpbXX0="}`
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	post := func() error {
		resp, err := client.Post(url+"/attest/raw", "application/json", strings.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("attest/raw: %s", resp.Status)
		}
		return nil
	}
	if err := post(); err != nil { // warm up: the emulator's keys
		b.Fatal(err)
	}
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := post(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	client.CloseIdleConnections()
}

func FuzzDecodeAttestRequest(f *testing.F) {
	for _, s := range []string{`{"runtime_data":"YWJj"}`, `{"runtime_data":"YW-_"}`, `{}`, `{"runtime_data":null}`, `nul`, "{\"runtime_data\":\"\xff\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req attestRequest
		if err := decodeRequestJSON(body, &req); err != nil {
			if statusFor(err) != http.StatusBadRequest {
				t.Fatalf("status %d for a bad body", statusFor(err))
			}
			return
		}
		if rd, err := requiredBase64("runtime_data", req.RuntimeData); err != nil {
			if statusFor(err) != http.StatusBadRequest {
				t.Fatalf("status %d for bad runtime data", statusFor(err))
			}
		} else if len(rd) > len(body) {
			t.Fatalf("decoded %d bytes from a %d-byte body", len(rd), len(body))
		}
	})
}
