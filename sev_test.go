package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sgtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
	"golang.org/x/sys/unix"
)

// compareWithGoSevGuest checks every field of our parse against
// go-sev-guest's independent parser of the same bytes.
func compareWithGoSevGuest(t *testing.T, raw []byte, r *snpReport) {
	t.Helper()
	p, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatalf("go-sev-guest cannot parse the report: %v", err)
	}
	fam, mod, step := abi.FmsFromCpuid1Eax(p.GetCpuid1EaxFms())
	u64 := []struct {
		name      string
		got, want uint64
	}{
		{"Version", uint64(r.Version), uint64(p.Version)},
		{"GuestSVN", uint64(r.GuestSVN), uint64(p.GuestSvn)},
		{"Policy", r.Policy, p.Policy},
		{"VMPL", uint64(r.VMPL), uint64(p.Vmpl)},
		{"SignatureAlgo", uint64(r.SignatureAlgo), uint64(p.SignatureAlgo)},
		{"CurrentTCB", r.CurrentTCB, p.CurrentTcb},
		{"PlatformInfo", r.PlatformInfo, p.PlatformInfo},
		{"SignerInfo", uint64(r.SignerInfo), uint64(p.SignerInfo)},
		{"ReportedTCB", r.ReportedTCB, p.ReportedTcb},
		{"CommittedTCB", r.CommittedTCB, p.CommittedTcb},
		{"LaunchTCB", r.LaunchTCB, p.LaunchTcb},
		{"CPUIDFamily", uint64(r.CPUIDFamily), uint64(fam)},
		{"CPUIDModel", uint64(r.CPUIDModel), uint64(mod)},
		{"CPUIDStepping", uint64(r.CPUIDStepping), uint64(step)},
	}
	for _, f := range u64 {
		if f.got != f.want {
			t.Errorf("%s = %#x, go-sev-guest says %#x", f.name, f.got, f.want)
		}
	}
	bs := []struct {
		name      string
		got, want []byte
	}{
		{"FamilyID", r.FamilyID[:], p.FamilyId},
		{"ImageID", r.ImageID[:], p.ImageId},
		{"ReportData", r.ReportData[:], p.ReportData},
		{"Measurement", r.Measurement[:], p.Measurement},
		{"HostData", r.HostData[:], p.HostData},
		{"IDKeyDigest", r.IDKeyDigest[:], p.IdKeyDigest},
		{"AuthorKeyDigest", r.AuthorKeyDigest[:], p.AuthorKeyDigest},
		{"ReportID", r.ReportID[:], p.ReportId},
		{"ReportIDMA", r.ReportIDMA[:], p.ReportIdMa},
		{"ChipID", r.ChipID[:], p.ChipId},
		{"SignatureR", r.SignatureR[:], p.Signature[0:72]},
		{"SignatureS", r.SignatureS[:], p.Signature[72:144]},
		{"Raw", r.Raw, raw},
	}
	for _, f := range bs {
		if !bytes.Equal(f.got, f.want) {
			t.Errorf("%s = %x, go-sev-guest says %x", f.name, f.got, f.want)
		}
	}
}

func TestParseReportRealReports(t *testing.T) {
	t.Parallel()
	tests := []struct {
		file                  string
		version               uint32
		policy                uint64
		reportedTCB           uint64
		family, model, stepng uint8
	}{
		{"snp_report.bin", 2, 0x3001F, 0x7308000000000003, 0, 0, 0},
		{"snp_report_v3.bin", 3, 0x3001F, 0xdb18000000000004, 0x19, 0x01, 0x01},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			raw := readSharedTestdata(t, tc.file)
			r, err := parseReport(raw)
			if err != nil {
				t.Fatal(err)
			}
			if r.Version != tc.version || r.Policy != tc.policy || r.VMPL != 0 || r.ReportedTCB != tc.reportedTCB {
				t.Errorf("version %d policy %#x vmpl %d reported TCB %#x; want %d %#x 0 %#x",
					r.Version, r.Policy, r.VMPL, r.ReportedTCB, tc.version, tc.policy, tc.reportedTCB)
			}
			if r.CPUIDFamily != tc.family || r.CPUIDModel != tc.model || r.CPUIDStepping != tc.stepng {
				t.Errorf("CPUID %#x/%#x/%#x, want %#x/%#x/%#x", r.CPUIDFamily, r.CPUIDModel, r.CPUIDStepping, tc.family, tc.model, tc.stepng)
			}
			if r.Debuggable() || r.SigningKey() != 0 {
				t.Errorf("debuggable %v signing key %d: want false, 0 (VCEK)", r.Debuggable(), r.SigningKey())
			}
			compareWithGoSevGuest(t, raw, r)
			raw[0x50] ^= 1
			if r.Raw[0x50] == raw[0x50] {
				t.Error("Raw aliases the caller's buffer")
			}
		})
	}
}

func TestParseReportV2TCBsAgree(t *testing.T) {
	t.Parallel()
	r, err := parseReport(readSharedTestdata(t, "snp_report.bin"))
	if err != nil {
		t.Fatal(err)
	}
	const want = 0x7308000000000003
	if r.CurrentTCB != want || r.CommittedTCB != want || r.LaunchTCB != want {
		t.Errorf("current %#x committed %#x launch %#x, want all %#x", r.CurrentTCB, r.CommittedTCB, r.LaunchTCB, uint64(want))
	}
}

// validReport is a minimal report parseReport accepts.
func validReport(version uint32) []byte {
	b := make([]byte, reportSize)
	binary.LittleEndian.PutUint32(b[0:], version)
	binary.LittleEndian.PutUint32(b[0x34:], 1)
	return b
}

func TestParseReportRejects(t *testing.T) {
	t.Parallel()
	with := func(f func(b []byte) []byte) []byte { return f(validReport(3)) }
	tests := []struct {
		name    string
		b       []byte
		wantErr string
	}{
		{"empty", nil, "is 0 bytes"},
		{"short", make([]byte, reportSize-1), "is 1183 bytes"},
		{"long (report with cert table)", make([]byte, reportSize+1), "is 1185 bytes"},
		{"version 0", validReport(0), "version 0"},
		{"version 1", validReport(1), "version 1"},
		{"absurd version", validReport(0xFFFFFFFF), "version 4294967295"},
		{"version 16", validReport(16), "version 16"},
		{"no signature algorithm", with(func(b []byte) []byte { b[0x34] = 0; return b }), "signature algorithm 0"},
		{"unknown signature algorithm", with(func(b []byte) []byte { b[0x34] = 2; return b }), "signature algorithm 2"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseReport(tc.b)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseReportAcceptsKnownAndNewerVersions(t *testing.T) {
	t.Parallel()
	for _, v := range []uint32{2, 3, 4, 5, 6, 15} {
		b := validReport(v)
		b[0x188], b[0x189], b[0x18A] = 0x19, 0x11, 0x01
		b[0x04C] = 0xAA // reserved bytes are ignored, not refused
		r, err := parseReport(b)
		if err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		wantFamily := uint8(0x19)
		if v == 2 {
			wantFamily = 0 // reserved in version 2
		}
		if r.CPUIDFamily != wantFamily {
			t.Errorf("version %d: CPUID family %#x, want %#x", v, r.CPUIDFamily, wantFamily)
		}
	}
}

func FuzzParseReport(f *testing.F) {
	f.Add(validReport(2))
	f.Add(validReport(3))
	f.Add([]byte{})
	f.Add(make([]byte, reportSize))
	for _, name := range []string{"snp_report.bin", "snp_report_v3.bin"} {
		if b, err := readSharedFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseReport(b)
		if err != nil {
			return
		}
		if len(b) != reportSize || !bytes.Equal(r.Raw, b) {
			t.Fatalf("accepted %d bytes, Raw %d bytes", len(b), len(r.Raw))
		}
		if r.Version < minReportVersion || r.Version > maxReportVersion || r.SignatureAlgo != 1 {
			t.Fatalf("accepted version %d algo %d", r.Version, r.SignatureAlgo)
		}
		if binary.LittleEndian.Uint64(b[0x180:]) != r.ReportedTCB || !bytes.Equal(r.ReportData[:], b[0x50:0x90]) || !bytes.Equal(r.ChipID[:], b[0x1A0:0x1E0]) {
			t.Fatal("fields not at their offsets")
		}
	})
}

// readSharedFile reads shared test data without a testing.TB (fuzz seeds).
func readSharedFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(sharedTestdata, name))
}

// ---------------------------------------------------------------------------
// Test helpers for every helper's tests.
// ---------------------------------------------------------------------------

// fakeSevGuestTCB is the REPORTED_TCB of the fake device's reports and the
// TCB its VCEK certifies: the real ACI sample's (ucode 0x73, SNP 8, BL 3).
const fakeSevGuestTCB = 0x7308000000000003

// fakeSevGuestHWID is the fake machine's CHIP_ID (= VCEK hwID).
var fakeSevGuestHWID = func() (h [64]byte) {
	for i := range h {
		h[i] = byte(0xA0 + i)
	}
	return h
}()

// anyReportDataDevice answers every REPORT_DATA, which go-sev-guest's fake
// device only does for data registered in advance: it registers a copy of
// template with the requested REPORT_DATA, then lets the fake device sign it
// with its test VCEK.
type anyReportDataDevice struct {
	*sgtest.Device
	template []byte
}

func (d *anyReportDataDevice) Ioctl(command uintptr, req any) (uintptr, error) {
	if r, ok := req.(*labi.SnpUserGuestRequest); ok {
		var rd [64]byte
		switch q := r.ReqData.(type) {
		case *labi.SnpReportReqABI:
			rd = q.ReportData
		case *labi.SnpExtendedReportReq:
			rd = q.Data.ReportData
		}
		resp := &sgtest.GetReportResponse{}
		copy(resp.Resp.Data[:], d.template)
		copy(resp.Resp.Data[0x50:0x90], rd[:])
		key := hex.EncodeToString(rd[:])
		d.ReportDataRsp[key] = resp
		defer delete(d.ReportDataRsp, key)
	}
	return d.Device.Ioctl(command, req)
}

// fakeSevGuestTemplate is a version 3 Milan report as the fake machine
// reports it, unsigned and without REPORT_DATA.
func fakeSevGuestTemplate() []byte {
	b := make([]byte, reportSize)
	le := binary.LittleEndian
	le.PutUint32(b[0x000:], 3)
	le.PutUint64(b[0x008:], 0x3001F)
	le.PutUint32(b[0x034:], 1)
	for _, off := range []int{0x038, 0x180, 0x1E0, 0x1F0} {
		le.PutUint64(b[off:], fakeSevGuestTCB)
	}
	copy(b[0x090:], bytes.Repeat([]byte{0x4D}, 48)) // MEASUREMENT
	copy(b[0x160:0x180], bytes.Repeat([]byte{0xFF}, 32))
	b[0x188], b[0x189], b[0x18A] = 0x19, 0x01, 0x01
	copy(b[0x1A0:], fakeSevGuestHWID[:])
	return b
}

var (
	fakeSignerOnce sync.Once
	fakeSigner     *sgtest.AmdSigner
	fakeSignerErr  error
)

// newFakeSevGuest returns a teeDevice over go-sev-guest's fake
// /dev/sev-guest (the real ioctl code path of go-sev-guest's client, minus
// the kernel) whose reports are really signed by a go-sev-guest test chain,
// and the platform certificates of that chain: VCEK (with AMD's extensions:
// TCB fakeSevGuestTCB, hwID fakeSevGuestHWID), ASK, ARK, ChainPEM, TCB.
// Reports: version 3 Milan, POLICY 0x3001F, VMPL 0, HOST_DATA zero.
func newFakeSevGuest(t testing.TB) (teeDevice, *platformCerts) {
	t.Helper()
	fakeSignerOnce.Do(func() {
		exts, err := vcekExtensions(tcbParts{BL: 3, SNP: 8, Ucode: 0x73}, fakeSevGuestHWID[:], "Milan-B0")
		if err != nil {
			fakeSignerErr = err
			return
		}
		now := time.Now().Add(-time.Hour)
		b := &sgtest.AmdSignerBuilder{
			Keys:             sgtest.DefaultAmdKeys(),
			ProductName:      "Milan-B0",
			ArkCreationTime:  now,
			AskCreationTime:  now,
			AsvkCreationTime: now,
			VcekCreationTime: now,
			VlekCreationTime: now,
			CSPID:            "go-sev-guest",
			HWID:             fakeSevGuestHWID,
			VcekCustom:       sgtest.CertOverride{Extensions: exts},
		}
		fakeSigner, fakeSignerErr = b.TestOnlyCertChain()
	})
	if fakeSignerErr != nil {
		t.Fatalf("go-sev-guest test chain: %v", fakeSignerErr)
	}
	table, err := fakeSigner.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	dev := &anyReportDataDevice{
		Device:   &sgtest.Device{ReportDataRsp: map[string]any{}, Certs: table, Signer: fakeSigner},
		template: fakeSevGuestTemplate(),
	}
	if err := dev.Open("/dev/sev-guest"); err != nil {
		t.Fatal(err)
	}
	var chain bytes.Buffer
	for _, c := range []*x509.Certificate{fakeSigner.Vcek, fakeSigner.Ask, fakeSigner.Ark} {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return newSevGuestDevice(dev, "/dev/sev-guest"), &platformCerts{
		VCEK: fakeSigner.Vcek, ASK: fakeSigner.Ask, ARK: fakeSigner.Ark,
		ChainPEM: chain.Bytes(), TCB: fakeSevGuestTCB,
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

// verifyWithGoSevGuest checks a report with go-sev-guest's verifier (an
// independent implementation), trusting only pc's ASK and ARK.
func verifyWithGoSevGuest(t testing.TB, raw []byte, pc *platformCerts) error {
	t.Helper()
	return goSevGuestVerify(raw, pc)
}

// goSevGuestVerify is verifyWithGoSevGuest for stand-ins, which have no t.
func goSevGuestVerify(raw []byte, pc *platformCerts) error {
	root := trust.AMDRootCertsProduct("Milan")
	root.ProductCerts = &trust.ProductCerts{Ask: pc.ASK, Ark: pc.ARK}
	rep, err := abi.ReportToProto(raw)
	if err != nil {
		return err
	}
	return verify.SnpAttestation(&spb.Attestation{
		Report:           rep,
		CertificateChain: &spb.CertificateChain{VcekCert: pc.VCEK.Raw, AskCert: pc.ASK.Raw, ArkCert: pc.ARK.Raw},
	}, &verify.Options{
		DisableCertFetching: true,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{"Milan": {root}},
		Now:                 time.Now(),
	})
}

// checkVCEKMatchesReport checks with go-sev-guest's kds parser that the
// VCEK's extensions carry the report's REPORTED_TCB and CHIP_ID.
func checkVCEKMatchesReport(t testing.TB, vcek *x509.Certificate, r *snpReport) {
	t.Helper()
	exts, err := kds.VcekCertificateExtensions(vcek)
	if err != nil {
		t.Fatalf("VCEK extensions: %v", err)
	}
	if got := uint64(exts.TCBVersion); got != r.ReportedTCB {
		t.Errorf("VCEK TCB %#x, report's REPORTED_TCB %#x", got, r.ReportedTCB)
	}
	if !bytes.Equal(exts.HWID, r.ChipID[:]) {
		t.Errorf("VCEK hwID %x, report's CHIP_ID %x", exts.HWID, r.ChipID)
	}
	if exts.ProductName != "Milan-B0" {
		t.Errorf("VCEK product %q", exts.ProductName)
	}
}

// ---------------------------------------------------------------------------
// /dev/sev-guest through go-sev-guest's fake device
// ---------------------------------------------------------------------------

func TestFakeSevGuestReportsVerify(t *testing.T) {
	t.Parallel()
	dev, pc := newFakeSevGuest(t)
	rd := reportDataFor([]byte("runtime data"))
	raw, err := dev.GetReport(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	r, err := parseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.ReportData != rd || r.ReportedTCB != pc.TCB || r.ChipID != fakeSevGuestHWID {
		t.Fatalf("report data %x TCB %#x chip %x", r.ReportData, r.ReportedTCB, r.ChipID[:4])
	}
	compareWithGoSevGuest(t, raw, r)
	if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
		t.Fatalf("go-sev-guest rejects the fake device's report: %v", err)
	}
	checkVCEKMatchesReport(t, pc.VCEK, r)
	if !bytes.HasPrefix(pc.ChainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: pc.VCEK.Raw})) {
		t.Error("ChainPEM does not start with the VCEK")
	}
	raw[0x50] ^= 1
	if err := verifyWithGoSevGuest(t, raw, pc); err == nil {
		t.Fatal("a tampered report verifies: the check proves nothing")
	}
}

func TestFakeSevGuestExtendedReport(t *testing.T) {
	t.Parallel()
	dev, pc := newFakeSevGuest(t)
	rd := reportDataFor([]byte("x"))
	report, table, err := dev.(*sevGuestDevice).extendedReport(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	var certs abi.CertTable
	if err := certs.Unmarshal(table); err != nil {
		t.Fatal(err)
	}
	vcek, err := certs.GetByGUIDString(abi.VcekGUID)
	if err != nil || !bytes.Equal(vcek, pc.VCEK.Raw) {
		t.Fatalf("VCEK in the cert table: %v", err)
	}
	if err := verifyWithGoSevGuest(t, report, pc); err != nil {
		t.Fatal(err)
	}
}

// failingDevice is a client.Device whose firmware refuses every request.
type failingDevice struct{ sgtest.Device }

func (failingDevice) Ioctl(_ uintptr, req any) (uintptr, error) {
	req.(*labi.SnpUserGuestRequest).FwErr = uint64(abi.GuestRequestInvalidLength) + 1
	return 0, unix.EIO
}

func TestSevGuestDeviceError(t *testing.T) {
	t.Parallel()
	dev := newSevGuestDevice(&failingDevice{}, "/dev/sev-guest")
	_, err := dev.GetReport(context.Background(), [64]byte{})
	if err == nil || !strings.Contains(err.Error(), "/dev/sev-guest SNP_GET_REPORT") {
		t.Fatalf("err = %v", err)
	}
}

// BenchmarkSevGuestReport measures reports per second through the
// /dev/sev-guest adapter (deviceGate, go-sev-guest's client ioctl path and
// fake device, which signs each report with ECDSA P-384) unpaced, as on
// Linux >= 6.3. Older kernels are paced to one command per 2 s by design.
func BenchmarkSevGuestReport(b *testing.B) {
	dev, _ := newFakeSevGuest(b)
	ctx := context.Background()
	var rd [64]byte
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		binary.LittleEndian.PutUint64(rd[:], uint64(i))
		if _, err := dev.GetReport(ctx, rd); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}

// ---------------------------------------------------------------------------
// Pacing and the device gate
// ---------------------------------------------------------------------------

func TestKernelAtLeast(t *testing.T) {
	t.Parallel()
	tests := []struct {
		release string
		want    bool
	}{
		{"6.3.0", true},
		{"6.18.44-fc-v669", true},
		{"7.0", true},
		{"6.2.16-azure", false},
		{"6.1.0-18-amd64", false},
		{"6.1.58.mshv4", false},
		{"5.15.0-1052-azure", false},
		{"6.6rc1", true},
		{"6", false},
		{"", false},
		{"garbage", false},
	}
	for _, tc := range tests {
		if got := kernelAtLeast(tc.release, 6, 3); got != tc.want {
			t.Errorf("kernelAtLeast(%q, 6, 3) = %v, want %v", tc.release, got, tc.want)
		}
	}
	if sevGuestPacing("6.1.0") != 2*time.Second || sevGuestPacing("6.8.0") != 0 || sevGuestPacing("") != 2*time.Second {
		t.Error("pacing: want 2 s before 6.3 (and when unknown), none from 6.3")
	}
}

func TestDeviceGatePause(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	g := newDeviceGate(2 * time.Second)
	g.now = func() time.Time { return now }
	if d := g.pause(); d != 0 {
		t.Fatalf("first command waits %v", d)
	}
	if _, err := g.run(context.Background(), func() ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	now = now.Add(500 * time.Millisecond)
	if d := g.pause(); d != 1500*time.Millisecond {
		t.Fatalf("pause after 0.5 s = %v, want 1.5 s", d)
	}
	now = now.Add(2 * time.Second)
	if d := g.pause(); d > 0 {
		t.Fatalf("pause after 2.5 s = %v", d)
	}
	if d := newDeviceGate(0).pause(); d != 0 {
		t.Fatalf("unpaced gate pauses %v", d)
	}
}

func TestDeviceGateHonoursContextWhilePacing(t *testing.T) {
	t.Parallel()
	g := newDeviceGate(time.Hour)
	if _, err := g.run(context.Background(), func() ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	_, err := g.run(ctx, func() ([]byte, error) { ran = true; return nil, nil })
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("err = %v, ran = %v", err, ran)
	}
	// The gate is free again (not leaked by the cancelled wait).
	g.interval = 0
	if _, err := g.run(context.Background(), func() ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceGateAbandonedCommandHoldsDevice(t *testing.T) {
	t.Parallel()
	g := newDeviceGate(0)
	release := make(chan struct{})
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := g.run(ctx, func() ([]byte, error) { close(started); <-release; return nil, nil })
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "abandoned") {
		t.Fatalf("err = %v", err)
	}
	// While the abandoned command runs, another caller waits for the device
	// and gives up with its own deadline.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := g.run(ctx2, func() ([]byte, error) { t.Error("ran while the device was busy"); return nil, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	close(release)
	got, err := g.run(context.Background(), func() ([]byte, error) { return []byte("ok"), nil })
	if err != nil || string(got) != "ok" {
		t.Fatalf("after the command ended: %q, %v", got, err)
	}
}

// ---------------------------------------------------------------------------
// openTEE
// ---------------------------------------------------------------------------

// absentGuestInterfaces points every interface at a path that does not exist.
func absentGuestInterfaces(t testing.TB) guestInterfaces {
	dir := t.TempDir()
	return guestInterfaces{
		ConfigfsTSM:   filepath.Join(dir, "tsm", "report"),
		SevGuest:      filepath.Join(dir, "sev-guest"),
		LegacySev:     filepath.Join(dir, "sev"),
		KernelRelease: func() string { return "6.8.0" },
	}
}

func TestOpenTEENoInterfaceNamesEveryPathAndEmulate(t *testing.T) {
	t.Parallel()
	gi := absentGuestInterfaces(t)
	// A regular file where a device should be is refused, not opened.
	if err := os.WriteFile(gi.SevGuest, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := openTEEFrom(teeOptions{}, gi)
	if err == nil || dev != nil {
		t.Fatalf("got %v, %v; want no device and an error", dev, err)
	}
	for _, want := range []string{gi.ConfigfsTSM, gi.SevGuest, gi.LegacySev, "-emulate", "SKR_EMULATE=1", "absent", "not a character device"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestOpenTEEDefaultPathsHere(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/dev/sev-guest"); err == nil {
		t.Skip("this machine has an SEV-SNP guest device")
	}
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this machine has an SEV-SNP guest device")
	}
	if _, err := os.Stat(defaultGuestInterfaces.ConfigfsTSM); err == nil {
		t.Skip("this machine has configfs-tsm")
	}
	_, err := openTEE(teeOptions{})
	if err == nil || !strings.Contains(err.Error(), "/sys/kernel/config/tsm/report") || !strings.Contains(err.Error(), "/dev/sev-guest") || !strings.Contains(err.Error(), "/dev/sev (") {
		t.Fatalf("err = %v", err)
	}
}

func TestOpenTEEEmulate(t *testing.T) {
	t.Parallel()
	dev, err := openTEEFrom(teeOptions{Emulate: true}, absentGuestInterfaces(t))
	if err != nil {
		t.Fatal(err)
	}
	if dev.Name() != "emulator" || !dev.Emulated() {
		t.Fatalf("name %q emulated %v", dev.Name(), dev.Emulated())
	}
	if _, ok := dev.(platformCertSource); !ok {
		t.Fatal("the emulator does not bring its platform certificates")
	}
}

// ---------------------------------------------------------------------------
// configfs-tsm against a directory that behaves like configfs
// ---------------------------------------------------------------------------

// fakeConfigfs makes a plain directory behave like configfs-tsm: mkdir
// populates the entry's attributes, writing inblob bumps generation and
// makes outblob (report ‖ a certificate table, as the kernel may hand
// out more than the report), rmdir removes the entry.
type fakeConfigfs struct {
	provider  string
	dev       teeDevice                 // signs the reports
	interfere func(entry string, n int) // called after the n-th inblob write
	mu        sync.Mutex
	writes    int
	mkdirs    int
	rmdirs    int
}

func (f *fakeConfigfs) Mkdir(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	f.mu.Lock()
	f.mkdirs++
	f.mu.Unlock()
	for name, v := range map[string]string{"generation": "0\n", "provider": f.provider + "\n", "privlevel_floor": "0\n"} {
		if err := os.WriteFile(filepath.Join(path, name), []byte(v), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeConfigfs) Rmdir(path string) error {
	f.mu.Lock()
	f.rmdirs++
	f.mu.Unlock()
	return os.RemoveAll(path)
}

func (f *fakeConfigfs) ReadFile(path string, limit int64) ([]byte, error) {
	return readBounded(path, limit)
}

func (f *fakeConfigfs) WriteFile(path string, b []byte) error {
	entry, name := filepath.Split(path)
	entry = filepath.Clean(entry)
	if name != "inblob" {
		return os.WriteFile(path, b, 0o600)
	}
	if len(b) != 64 {
		return fmt.Errorf("inblob: %d bytes, want 64", len(b))
	}
	if err := f.bumpGeneration(entry); err != nil {
		return err
	}
	report, err := f.dev.GetReport(context.Background(), [64]byte(b))
	if err != nil {
		return err
	}
	out := append(report, []byte("cert table follows")...)
	if err := os.WriteFile(filepath.Join(entry, "outblob"), out, 0o600); err != nil {
		return err
	}
	f.mu.Lock()
	f.writes++
	n := f.writes
	f.mu.Unlock()
	if f.interfere != nil {
		f.interfere(entry, n)
	}
	return nil
}

func (f *fakeConfigfs) bumpGeneration(entry string) error {
	p := filepath.Join(entry, "generation")
	g, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(g)))
	if err != nil {
		return err
	}
	return os.WriteFile(p, []byte(strconv.Itoa(n+1)+"\n"), 0o600)
}

func (f *fakeConfigfs) counts() (mkdirs, rmdirs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mkdirs, f.rmdirs
}

func newConfigfsGuest(t *testing.T, provider string) (guestInterfaces, *fakeConfigfs, *platformCerts) {
	gi := absentGuestInterfaces(t)
	if err := os.MkdirAll(gi.ConfigfsTSM, 0o700); err != nil {
		t.Fatal(err)
	}
	dev, pc := newFakeSevGuest(t)
	fake := &fakeConfigfs{provider: provider, dev: dev}
	gi.FS = fake
	return gi, fake, pc
}

func TestConfigfsTSMReport(t *testing.T) {
	t.Parallel()
	gi, fake, pc := newConfigfsGuest(t, "sev_guest")
	dev, err := openTEEFrom(teeOptions{}, gi)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Name() != "configfs-tsm" || dev.Emulated() {
		t.Fatalf("name %q emulated %v", dev.Name(), dev.Emulated())
	}
	rd := reportDataFor([]byte("configfs"))
	raw, err := dev.GetReport(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != reportSize {
		t.Fatalf("%d bytes: want exactly the report, without the table after it", len(raw))
	}
	if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
		t.Fatal(err)
	}
	if r, _ := parseReport(raw); r.ReportData != rd {
		t.Fatal("REPORT_DATA is not the one written to inblob")
	}
	mk, rm := fake.counts()
	if mk != 2 || rm != 2 { // the probe at open, then the report
		t.Fatalf("mkdir %d rmdir %d: every entry must be removed", mk, rm)
	}
	if left, _ := os.ReadDir(gi.ConfigfsTSM); len(left) != 0 {
		t.Fatalf("entries left behind: %v", left)
	}
}

func TestConfigfsTSMOtherProviderFallsThrough(t *testing.T) {
	t.Parallel()
	gi, _, _ := newConfigfsGuest(t, "tdx_guest")
	_, err := openTEEFrom(teeOptions{}, gi)
	if err == nil || !strings.Contains(err.Error(), `provider is "tdx_guest", not sev_guest`) {
		t.Fatalf("err = %v", err)
	}
	if left, _ := os.ReadDir(gi.ConfigfsTSM); len(left) != 0 {
		t.Fatalf("the probe left entries behind: %v", left)
	}
}

func TestConfigfsTSMConcurrentWriter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		interfere int // inblob writes after which another writer strikes
		wantErr   string
	}{
		{"once: retried", 1, ""},
		{"twice: error", 2, "another writer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gi, fake, pc := newConfigfsGuest(t, "sev_guest")
			dev, err := openConfigfsTSM(gi.FS, gi.ConfigfsTSM)
			if err != nil {
				t.Fatal(err)
			}
			fake.interfere = func(entry string, n int) {
				if n <= tc.interfere {
					if err := fake.bumpGeneration(entry); err != nil {
						t.Error(err)
					}
				}
			}
			raw, err := dev.GetReport(context.Background(), reportDataFor([]byte("c")))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
					t.Fatal(err)
				}
			}
			if mk, rm := fake.counts(); mk != rm {
				t.Fatalf("mkdir %d rmdir %d", mk, rm)
			}
		})
	}
}

func TestConfigfsTSMShortOutblob(t *testing.T) {
	t.Parallel()
	gi, fake, _ := newConfigfsGuest(t, "sev_guest")
	dev, err := openConfigfsTSM(gi.FS, gi.ConfigfsTSM)
	if err != nil {
		t.Fatal(err)
	}
	fake.interfere = func(entry string, _ int) {
		os.WriteFile(filepath.Join(entry, "outblob"), make([]byte, 100), 0o600)
	}
	if _, err := dev.GetReport(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "outblob is 100 bytes") {
		t.Fatalf("err = %v", err)
	}
}

// ---------------------------------------------------------------------------
// Legacy /dev/sev
// ---------------------------------------------------------------------------

func TestLegacyRequestLayout(t *testing.T) {
	t.Parallel()
	var r legacySnpGuestRequest
	if unsafe.Sizeof(r) != 40 {
		t.Fatalf("size %d, want 40 (the ioctl number encodes it: 0xC0285301)", unsafe.Sizeof(r))
	}
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"req_msg_type", unsafe.Offsetof(r.ReqMsgType), 0},
		{"rsp_msg_type", unsafe.Offsetof(r.RspMsgType), 1},
		{"msg_version", unsafe.Offsetof(r.MsgVersion), 2},
		{"request_len", unsafe.Offsetof(r.RequestLen), 4},
		{"request_uaddr", unsafe.Offsetof(r.Request), 8},
		{"response_len", unsafe.Offsetof(r.ResponseLen), 16},
		{"response_uaddr", unsafe.Offsetof(r.Response), 24},
		{"error", unsafe.Offsetof(r.FirmwareErr), 32},
	} {
		if f.got != f.want {
			t.Errorf("%s at %d, want %d", f.name, f.got, f.want)
		}
	}
	if got := uintptr(0xC0000000 | 40<<16 | 'S'<<8 | 1); got != legacyIocSnpReport {
		t.Errorf("_IOWR('S', 1, 40 bytes) = %#x, constant is %#x", got, legacyIocSnpReport)
	}
}

// fakeLegacyIoctl behaves like the legacy driver: it checks the request
// and writes MSG_REPORT_RSP with a report from dev.
func fakeLegacyIoctl(t *testing.T, dev teeDevice, status, size, fwErr uint32, errno error) func(int, *legacySnpGuestRequest) error {
	return func(_ int, req *legacySnpGuestRequest) error {
		if req.ReqMsgType != 5 || req.RspMsgType != 6 || req.MsgVersion != 1 || req.RequestLen != 96 || req.ResponseLen != 1280 {
			t.Errorf("request header %+v", *req)
		}
		in := (*[96]byte)(req.Request)
		if !bytes.Equal(in[64:], make([]byte, 32)) {
			t.Errorf("VMPL and reserved bytes are not zero: %x", in[64:])
		}
		report, err := dev.GetReport(context.Background(), [64]byte(in[:64]))
		if err != nil {
			return err
		}
		out := (*[1280]byte)(req.Response)
		binary.LittleEndian.PutUint32(out[0:], status)
		binary.LittleEndian.PutUint32(out[4:], size)
		copy(out[0x20:], report)
		req.FirmwareErr = fwErr
		return errno
	}
}

func TestLegacySevReport(t *testing.T) {
	t.Parallel()
	fake, pc := newFakeSevGuest(t)
	tests := []struct {
		name    string
		status  uint32
		size    uint32
		fwErr   uint32
		errno   error
		wantErr string
	}{
		{"ok", 0, reportSize, 0, nil, ""},
		{"invalid parameters", 0x16, reportSize, 0, nil, "invalid parameters (status 0x16)"},
		{"other status", 0x27, reportSize, 0, nil, "firmware status 0x27"},
		{"wrong size", 0, 1000, 0, nil, "REPORT_SIZE is 1000"},
		{"ioctl error with firmware error", 0, reportSize, 0x16, unix.EIO, "firmware error 0x16"},
		{"ioctl error", 0, reportSize, 0, unix.ENOTTY, "inappropriate ioctl"},
		{"firmware error without errno", 0, reportSize, 0x5, nil, "firmware error 0x5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := &legacySevDevice{fd: -1, gate: newDeviceGate(0), ioctl: fakeLegacyIoctl(t, fake, tc.status, tc.size, tc.fwErr, tc.errno)}
			rd := reportDataFor([]byte(tc.name))
			raw, err := dev.GetReport(context.Background(), rd)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseReport(raw)
			if err != nil || r.ReportData != rd {
				t.Fatalf("parse: %v", err)
			}
			if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Debuggable is POLICY.DEBUG.
func (r *snpReport) Debuggable() bool { return r.Policy&(1<<19) != 0 }
