package main

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

func TestVerifyEvidence(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specNew)
	good := func() (*snpReport, *platformCerts) {
		return testReport(t, v, reportSpec{tcb: tcbNew, chipID: testChipID}), v.certs(tcbNew)
	}
	rep, pc := good()
	if err := verifyEvidence(rep, pc); err != nil {
		t.Fatalf("good evidence: %v", err)
	}
	// A report with a masked CHIP_ID verifies too.
	if err := verifyEvidence(testReport(t, v, reportSpec{tcb: tcbNew}), pc); err != nil {
		t.Fatalf("masked CHIP_ID: %v", err)
	}

	otherVCEK := newTestVCEK(t, specNew)
	otherRoot := testOtherRoot(t, productMilan)
	tests := []struct {
		name    string
		mutate  func(rep *snpReport, pc *platformCerts)
		wantErr string
	}{
		{"tampered byte", func(rep *snpReport, pc *platformCerts) { rep.Raw[0x90] ^= 1 }, "does not verify"},
		{"other VCEK", func(rep *snpReport, pc *platformCerts) { pc.VCEK = otherVCEK.cert }, "does not verify"},
		{"ASK from another ARK", func(rep *snpReport, pc *platformCerts) { pc.ASK = otherRoot.ask }, "not signed by the ARK"},
		{"VCEK not signed by the ASK", func(rep *snpReport, pc *platformCerts) { pc.ASK, pc.ARK = otherRoot.ask, otherRoot.ark }, "VCEK is not signed by the ASK"},
		{"ARK not self-signed", func(rep *snpReport, pc *platformCerts) { pc.ARK = pc.ASK }, "self-signed"},
		{"TCB handed out differs", func(rep *snpReport, pc *platformCerts) { pc.TCB = tcbOld }, "REPORTED_TCB"},
		{"VLEK-signed report", func(rep *snpReport, pc *platformCerts) { rep.SignerInfo = 1 << 2 }, "VLEK"},
		{"other algorithm", func(rep *snpReport, pc *platformCerts) { rep.SignatureAlgo = 2 }, "SIGNATURE_ALGO"},
		{"missing ASK", func(rep *snpReport, pc *platformCerts) { pc.ASK = nil }, "incomplete"},
		{"truncated raw", func(rep *snpReport, pc *platformCerts) { rep.Raw = rep.Raw[:100] }, "raw bytes"},
		{"another chip", func(rep *snpReport, pc *platformCerts) {
			rep.ChipID[0] ^= 1
			copy(rep.Raw[0x1A0:], rep.ChipID[:])
			signTestReport(t, v.key, rep.Raw)
			*rep = *decodeTestReport(rep.Raw)
		}, "CHIP_ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, pc := good()
			tc.mutate(rep, pc)
			err := verifyEvidence(rep, pc)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}

	// A report whose TCB is not the VCEK's: signed by the right key, but
	// the VCEK does not certify that TCB.
	rep = testReport(t, v, reportSpec{tcb: tcbOld, chipID: testChipID})
	if err := verifyEvidence(rep, v.certs(tcbOld)); err == nil || !strings.Contains(err.Error(), "db18000000000004") || !strings.Contains(err.Error(), "7308000000000003") {
		t.Fatalf("TCB not certified: err = %v", err)
	}
}

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

// Debuggable is POLICY.DEBUG.
func (r *snpReport) Debuggable() bool { return r.Policy&(1<<19) != 0 }
