package main

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-sev-guest/abi"
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
