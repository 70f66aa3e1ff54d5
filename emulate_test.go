package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/kds"
)

func emulatorReport(t *testing.T, dev teeDevice, runtimeData string) (*snpReport, *platformCerts) {
	t.Helper()
	rd := reportDataFor([]byte(runtimeData))
	raw, err := dev.GetReport(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseReport(raw)
	if err != nil {
		t.Fatalf("our parser refuses the emulator's report: %v", err)
	}
	if r.ReportData != rd {
		t.Fatalf("REPORT_DATA %x, want %x", r.ReportData, rd)
	}
	pc, err := dev.(platformCertSource).PlatformCerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return r, pc
}

func TestEmulatorReportVerifiesWithGoSevGuest(t *testing.T) {
	t.Parallel()
	policy := []byte("package policy\napi_version := \"0.10.0\"\n")
	r, pc := emulatorReport(t, newTestEmulator(t, policy), "runtime")
	if err := verifyWithGoSevGuest(t, r.Raw, pc); err != nil {
		t.Fatalf("go-sev-guest rejects the emulator's report: %v", err)
	}
	compareWithGoSevGuest(t, r.Raw, r) // also: every reserved byte is zero
	checkVCEKMatchesReport(t, pc.VCEK, r)

	if r.HostData != sha256.Sum256(policy) {
		t.Errorf("HOST_DATA %x, want sha256(policy)", r.HostData)
	}
	tcb := composeTCB(productMilan, emulatedTCB)
	if tcb != 0xDB18000000000004 {
		t.Fatalf("emulated TCB %#x", tcb)
	}
	for name, got := range map[string]uint64{"CURRENT": r.CurrentTCB, "REPORTED": r.ReportedTCB, "COMMITTED": r.CommittedTCB, "LAUNCH": r.LaunchTCB, "certified": pc.TCB} {
		if got != tcb {
			t.Errorf("%s TCB %#x, want %#x", name, got, tcb)
		}
	}
	if r.Version != 3 || r.Policy != 0x3001F || r.VMPL != 0 || r.SignatureAlgo != 1 || r.Debuggable() || r.SigningKey() != 0 {
		t.Errorf("version %d policy %#x vmpl %d algo %d", r.Version, r.Policy, r.VMPL, r.SignatureAlgo)
	}
	if r.CPUIDFamily != 0x19 || r.CPUIDModel != 0x01 || r.CPUIDStepping != 0x01 {
		t.Errorf("CPUID %x/%x/%x, want Milan 19/01/01", r.CPUIDFamily, r.CPUIDModel, r.CPUIDStepping)
	}
	if r.ChipID == ([64]byte{}) || r.Measurement == ([48]byte{}) || r.ReportID == ([32]byte{}) {
		t.Error("CHIP_ID, MEASUREMENT and REPORT_ID must be set")
	}

	tampered := bytes.Clone(r.Raw)
	tampered[0xC0] ^= 1
	if err := verifyWithGoSevGuest(t, tampered, pc); err == nil {
		t.Fatal("a tampered emulated report verifies")
	}
	_, other := newFakeSevGuest(t)
	if err := verifyWithGoSevGuest(t, r.Raw, other); err == nil {
		t.Fatal("the emulated report verifies with another chain")
	}
}

func TestEmulatorHostDataPerPolicy(t *testing.T) {
	t.Parallel()
	none, pcNone := emulatorReport(t, newTestEmulator(t, nil), "a")
	if none.HostData != ([32]byte{}) {
		t.Errorf("HOST_DATA without a policy = %x, want zero", none.HostData)
	}
	p1, pc1 := emulatorReport(t, newTestEmulator(t, []byte("one")), "a")
	p2, _ := emulatorReport(t, newTestEmulator(t, []byte("two")), "a")
	if p1.HostData != sha256.Sum256([]byte("one")) || p2.HostData != sha256.Sum256([]byte("two")) {
		t.Error("HOST_DATA is not the sha256 of each emulator's policy")
	}
	if pc1 != pcNone {
		t.Error("test emulators should share one machine")
	}
	if p1.Measurement != p2.Measurement || p1.ChipID != p2.ChipID {
		t.Error("one machine, one MEASUREMENT and CHIP_ID")
	}
}

func TestEmulatorChainLooksLikeAMDs(t *testing.T) {
	t.Parallel()
	_, pc := emulatorReport(t, newTestEmulator(t, nil), "chain")
	for _, c := range []struct {
		cert         *x509.Certificate
		subject      string
		issuer       string
		isCA         bool
		wantECDSA384 bool
	}{
		{pc.ARK, "ARK-Milan", "ARK-Milan", true, false},
		{pc.ASK, "SEV-Milan", "ARK-Milan", true, false},
		{pc.VCEK, "SEV-VCEK", "SEV-Milan", false, true},
	} {
		if c.cert.Subject.CommonName != c.subject || c.cert.Issuer.CommonName != c.issuer {
			t.Errorf("%s: subject %q issuer %q", c.subject, c.cert.Subject.CommonName, c.cert.Issuer.CommonName)
		}
		if c.cert.SignatureAlgorithm != x509.SHA384WithRSAPSS {
			t.Errorf("%s signed with %v, want RSASSA-PSS SHA-384", c.subject, c.cert.SignatureAlgorithm)
		}
		if got := c.cert.Subject.Organization; len(got) != 1 || got[0] != "Advanced Micro Devices" {
			t.Errorf("%s organization %v", c.subject, got)
		}
		if c.cert.IsCA != c.isCA {
			t.Errorf("%s IsCA %v", c.subject, c.cert.IsCA)
		}
		if k, ok := c.cert.PublicKey.(*ecdsa.PublicKey); c.wantECDSA384 && (!ok || k.Curve.Params().Name != "P-384") {
			t.Errorf("%s key is not ECDSA P-384", c.subject)
		}
	}
	if pc.VCEK.SerialNumber.Sign() != 0 {
		t.Errorf("VCEK serial %v, want 0 as AMD's", pc.VCEK.SerialNumber)
	}
	if err := pc.ARK.CheckSignatureFrom(pc.ARK); err != nil {
		t.Errorf("ARK is not self-signed: %v", err)
	}
	var ders [][]byte
	for rest := pc.ChainPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		ders = append(ders, b.Bytes)
	}
	if len(ders) != 3 || !bytes.Equal(ders[0], pc.VCEK.Raw) || !bytes.Equal(ders[1], pc.ASK.Raw) || !bytes.Equal(ders[2], pc.ARK.Raw) {
		t.Error("ChainPEM is not VCEK, ASK, ARK")
	}
}

func TestVCEKExtensions(t *testing.T) {
	t.Parallel()
	hwID := bytes.Repeat([]byte{0xC3}, 64)
	tcb := tcbParts{BL: 0x81, TEE: 0x7F, SNP: 0x80, Ucode: 0xFF}
	exts, err := vcekExtensions(tcb, hwID, "Milan-B0")
	if err != nil {
		t.Fatal(err)
	}
	byOID := map[string][]byte{}
	for _, e := range exts {
		byOID[e.Id.String()] = e.Value
	}
	wantRaw := map[string]string{
		"1.3.6.1.4.1.3704.1.1":   "020101",
		"1.3.6.1.4.1.3704.1.2":   hex.EncodeToString(append([]byte{0x16, 8}, "Milan-B0"...)),
		"1.3.6.1.4.1.3704.1.3.1": "02020081", // >= 0x80: a leading zero byte
		"1.3.6.1.4.1.3704.1.3.2": "02017f",
		"1.3.6.1.4.1.3704.1.3.3": "02020080",
		"1.3.6.1.4.1.3704.1.3.4": "020100",
		"1.3.6.1.4.1.3704.1.3.7": "020100",
		"1.3.6.1.4.1.3704.1.3.8": "020200ff",
		"1.3.6.1.4.1.3704.1.4":   hex.EncodeToString(hwID), // raw, no DER tag
	}
	for oid, want := range wantRaw {
		if got := hex.EncodeToString(byOID[oid]); got != want {
			t.Errorf("%s = %s, want %s", oid, got, want)
		}
	}
	if len(exts) != 11 {
		t.Errorf("%d extensions, want 11", len(exts))
	}
	// go-sev-guest's kds reads back the same TCB from a certificate (it
	// allows 0-255 for microcode, 0-127 for the other SPLs).
	tcb = tcbParts{BL: 0x7F, TEE: 2, SNP: 0x18, Ucode: 0xFF}
	if exts, err = vcekExtensions(tcb, hwID, "Milan-B0"); err != nil {
		t.Fatal(err)
	}
	cert := &x509.Certificate{Extensions: exts}
	parsed, err := kds.VcekCertificateExtensions(cert)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(parsed.TCBVersion) != composeTCB(productMilan, tcb) || !bytes.Equal(parsed.HWID, hwID) || parsed.StructVersion != 1 {
		t.Errorf("kds reads TCB %#x hwID %x version %d", uint64(parsed.TCBVersion), parsed.HWID[:4], parsed.StructVersion)
	}
	if _, err := vcekExtensions(tcb, hwID[:8], "Milan-B0"); err == nil {
		t.Error("an 8-byte hwID was accepted for Milan")
	}
}

func TestMilanTCBLayout(t *testing.T) {
	t.Parallel()
	if got := composeTCB(productMilan, tcbParts{BL: 3, TEE: 0, SNP: 8, Ucode: 0x73}); got != 0x7308000000000003 {
		t.Fatalf("%#x, want the ACI sample's 0x7308000000000003", got)
	}
	if got := composeTCB(productMilan, tcbParts{TEE: 1}); got != 0x100 {
		t.Fatalf("TEE SPL is byte 1: %#x", got)
	}
}

func TestPutLittleEndian(t *testing.T) {
	t.Parallel()
	dst := make([]byte, 72)
	putLittleEndian(dst, big.NewInt(0x010203))
	if dst[0] != 3 || dst[1] != 2 || dst[2] != 1 || !bytes.Equal(dst[3:], make([]byte, 69)) {
		t.Fatalf("%x", dst[:8])
	}
}

// pendingIdentity never becomes ready: what the emulator is while its keys
// are still being made.
func pendingIdentity() *emulatorIdentity {
	return &emulatorIdentity{backgroundWork: &backgroundWork{what: "the SNP emulator's keys", ready: make(chan struct{})}}
}

func TestEmulatorWaitsForKeysWithinTheDeadline(t *testing.T) {
	t.Parallel()
	e := newEmulatorWith(pendingIdentity(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.GetReport(ctx, [64]byte{}); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "emulator's keys") {
		t.Fatalf("GetReport err = %v", err)
	}
	if _, err := e.PlatformCerts(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("PlatformCerts err = %v", err)
	}
}

func TestEmulatorKeyFailureIsReported(t *testing.T) {
	t.Parallel()
	id := &emulatorIdentity{backgroundWork: &backgroundWork{ready: make(chan struct{}), err: errors.New("no entropy")}}
	close(id.ready)
	if _, err := newEmulatorWith(id, nil).GetReport(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "no entropy") {
		t.Fatalf("err = %v", err)
	}
}

// TestStatusDoesNotWaitForEmulatorKeys: /status answers, saying the
// evidence is emulated, while the emulator's keys do not exist yet; an
// attestation request then fails within its deadline instead of hanging.
func TestStatusDoesNotWaitForEmulatorKeys(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{Emulate: true}, serverOptions{
		TEE:            newEmulatorWith(pendingIdentity(), nil),
		RequestTimeout: 200 * time.Millisecond,
	})
	code, st := call(t, "GET", url+"/status", "")
	if code != http.StatusOK || st["emulated"] != true || st["tee"] != "emulator" || !strings.Contains(fmt.Sprint(st["warning"]), "EMULATED") {
		t.Fatalf("%d %v", code, st)
	}
	code, body := call(t, "POST", url+"/attest/raw", `{"runtime_data":"eA=="}`)
	if code < 500 {
		t.Fatalf("attest/raw without keys: %d %v", code, body)
	}
}

func TestEmulatorLogsNothingSecret(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	id := newEmulatorIdentity(2048, newKeygen(), newLogger(&logs, levelTrace))
	if err := id.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "SNP emulator ready") {
		t.Fatalf("no ready line: %q", out)
	}
	d := id.vcek.D.Bytes()
	for _, secret := range []string{hex.EncodeToString(d), id.vcek.D.String(), "PRIVATE KEY"} {
		if strings.Contains(strings.ToLower(out), strings.ToLower(secret)) {
			t.Fatalf("the log shows the VCEK private key: %q", out)
		}
	}
}

// BenchmarkEmulatorReport: reports per second once the keys exist.
func BenchmarkEmulatorReport(b *testing.B) {
	dev := newTestEmulator(b, []byte("policy"))
	ctx := context.Background()
	if _, err := dev.GetReport(ctx, [64]byte{}); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := dev.GetReport(ctx, [64]byte{1}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}

// BenchmarkEmulatorFirstReport: what the first request after start-up
// waits for at worst, with the production key sizes: making the keys and
// chain, then one report. Run with -benchtime=5x.
func BenchmarkEmulatorFirstReport(b *testing.B) {
	for b.Loop() {
		e := newEmulator(teeOptions{SecurityPolicy: []byte("p"), Log: slog.New(slog.DiscardHandler)})
		if _, err := e.GetReport(context.Background(), [64]byte{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStatus: /status latency through the real server, with -emulate
// (keys being made in the background at first) and without a device.
func BenchmarkStatus(b *testing.B) {
	for _, emulate := range []bool{true, false} {
		b.Run(fmt.Sprintf("emulate=%v", emulate), func(b *testing.B) {
			url, _ := startTestServer(b, serverConfig{Emulate: emulate, LogLevel: slog.LevelError}, serverOptions{})
			for b.Loop() {
				resp, err := http.Get(url + "/status")
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatal(resp.Status)
				}
			}
		})
	}
}

// TestAttestRawWithEmulator goes through the real server: the report it
// hands out binds the runtime data and verifies with the emulated chain.
func TestAttestRawWithEmulator(t *testing.T) {
	t.Parallel()
	dev := newTestEmulator(t, nil)
	url, _ := startTestServer(t, serverConfig{Emulate: true}, serverOptions{TEE: dev})
	code, body := call(t, "POST", url+"/attest/raw", `{"runtime_data":"aGVsbG8="}`)
	if code != http.StatusOK {
		t.Fatalf("%d %v", code, body)
	}
	raw, err := hex.DecodeString(fmt.Sprint(body["report"]))
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.ReportData != reportDataFor([]byte("hello")) {
		t.Fatalf("REPORT_DATA %x is not sha256(runtime data) ‖ zeros", r.ReportData)
	}
	pc, err := dev.(platformCertSource).PlatformCerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
		t.Fatal(err)
	}
}

var (
	testEmulatorOnce sync.Once
	testEmulatorID   *emulatorIdentity
)

// newTestEmulator returns the emulator with HOST_DATA = sha256(policy)
// (zero for an empty policy). Its keys are made once per test binary
// (RSA-2048 to keep tests fast), so every emulator of a run shares one
// emulated machine and chain.
func newTestEmulator(t testing.TB, policy []byte) teeDevice {
	t.Helper()
	testEmulatorOnce.Do(func() {
		testEmulatorID = newEmulatorIdentity(2048, newKeygen(), slog.New(slog.DiscardHandler))
	})
	return newEmulatorWith(testEmulatorID, policy)
}
