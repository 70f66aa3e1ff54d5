package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	sgtest "github.com/google/go-sev-guest/testing"
	"golang.org/x/sys/unix"
)

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

// newSevGuestDevice adapts d without pacing (a fake device, or a kernel
// that handles host throttling itself).
func newSevGuestDevice(d client.Device, name string) teeDevice {
	return newPacedSevGuestDevice(d, name, 0)
}

// extendedReport returns a report with the certificate table the host
// provides (SNP_GET_EXT_REPORT): two device commands.
func (d *sevGuestDevice) extendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error) {
	var table []byte
	report, err = d.gate.run(ctx, func() ([]byte, error) {
		r, c, err := client.GetRawExtendedReport(d.dev, reportData)
		if err != nil {
			return nil, fmt.Errorf("%s SNP_GET_EXT_REPORT: %w", d.name, err)
		}
		table = c
		return bytes.Clone(r[:reportSize]), nil
	})
	return report, table, err
}
