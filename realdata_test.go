package main

// Real data captured on Azure Container Instances (../shared/testdata):
// the certificate code must accept exactly what the platform hands out.

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func parseRealReport(t *testing.T, name string) *snpReport {
	t.Helper()
	rep, err := parseReport(readSharedTestdata(t, name))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return rep
}

func realTHIM(t *testing.T) *platformCerts {
	t.Helper()
	pc, err := parseTHIM(readSharedTestdata(t, "uvm_host_amd_certificate.json"))
	if err != nil {
		t.Fatalf("uvm_host_amd_certificate.json: %v", err)
	}
	return pc
}

func TestRealReportsParse(t *testing.T) {
	t.Parallel()
	v2 := parseRealReport(t, "snp_report.bin")
	if v2.Version != 2 || v2.ReportedTCB != 0x7308000000000003 || v2.SignatureAlgo != 1 {
		t.Errorf("v2 report: version %d, REPORTED_TCB %016x, algo %d", v2.Version, v2.ReportedTCB, v2.SignatureAlgo)
	}
	v3 := parseRealReport(t, "snp_report_v3.bin")
	if v3.Version < 3 {
		t.Fatalf("v3 report has version %d", v3.Version)
	}
	p := &certProvider{src: &certSource{Kind: sourceLocalTHIM}}
	if got := p.reportProduct(v3, nil); got != productMilan {
		t.Errorf("v3 report product = %s (CPUID %02x/%02x), want Milan", got, v3.CPUIDFamily, v3.CPUIDModel)
	}
	// Its microcode SPL is 0xdb: the KDS URL must say 219, not a byte
	// read at a fixed offset of some encoding.
	if got := decomposeTCB(productMilan, v3.ReportedTCB); got.Ucode != 0xdb || got.SNP != 0x18 || got.BL != 4 {
		t.Errorf("v3 REPORTED_TCB %016x decomposes to %+v", v3.ReportedTCB, got)
	}
	if u := kdsVCEKURL("https://kdsintf.amd.com", productMilan, v3.ChipID, v3.ReportedTCB); !strings.HasSuffix(u, "?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219") {
		t.Errorf("v3 KDS URL = %s", u)
	}
}

func TestRealReportVerifiesWithTHIMCertificates(t *testing.T) {
	t.Parallel()
	rep := parseRealReport(t, "snp_report.bin")
	pc := realTHIM(t)
	if err := verifyEvidence(rep, pc); err != nil {
		t.Fatalf("the real report does not verify with the real VCEK/ASK/ARK: %v", err)
	}
	// And a single flipped bit is caught.
	raw := bytes.Clone(rep.Raw)
	raw[0x50] ^= 1
	bad, err := parseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyEvidence(bad, pc); err == nil {
		t.Fatal("a tampered real report verified")
	}
}

func TestRealTCBAgreesEverywhere(t *testing.T) {
	t.Parallel()
	rep := parseRealReport(t, "snp_report.bin")
	pc := realTHIM(t)
	info, err := parseVCEKExtensions(pc.VCEK)
	if err != nil {
		t.Fatal(err)
	}
	if pc.TCB != rep.ReportedTCB || info.TCB != rep.ReportedTCB {
		t.Fatalf("tcbm %016x, VCEK extensions %016x, REPORTED_TCB %016x", pc.TCB, info.TCB, rep.ReportedTCB)
	}
	if info.ProductName != "Milan-B0" || !hwidMatchesChip(info.HWID, rep.ChipID) {
		t.Fatalf("VCEK product %q, hwid matches CHIP_ID: %v", info.ProductName, hwidMatchesChip(info.HWID, rep.ChipID))
	}
	if pc.ASK.Subject.CommonName != "SEV-Milan" || pc.ARK.Subject.CommonName != "ARK-Milan" {
		t.Fatalf("ASK %q, ARK %q", pc.ASK.Subject.CommonName, pc.ARK.Subject.CommonName)
	}
	// The real certificates are handed out only for their own TCB.
	p := newCertProvider(certCacheConfig{}, staticLocal(pc), nil, nil)
	if got, why := p.src.Kind, mismatch(pc, info, rep); got != sourceLocalTHIM || why != "" {
		t.Fatalf("source %s, mismatch %q", got, why)
	}
}

func TestRealHostDataIsPolicyDigest(t *testing.T) {
	t.Parallel()
	rep := parseRealReport(t, "snp_report.bin")
	d, err := policyDigest(string(readSharedTestdata(t, "uvm_security_policy.base64")))
	if err != nil {
		t.Fatal(err)
	}
	if rep.HostData != d {
		t.Fatalf("HOST_DATA %x, policy digest %x", rep.HostData, d)
	}
}

// realSecurityContextDir is the absolute path of the real security-context
// folder, or skips.
func realSecurityContextDir(t *testing.T) string {
	t.Helper()
	readSharedTestdata(t, "security-context/host-amd-cert-base64")
	dir, err := filepath.Abs(filepath.Join(sharedTestdata, "security-context"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func checkRealInputs(t *testing.T, in *uvmInputs) {
	t.Helper()
	if len(in.SecurityPolicy) == 0 || len(in.HostAMDCert) == 0 || len(in.ReferenceInfo) == 0 {
		t.Fatalf("inputs from %q are incomplete: policy %d, cert %d, reference info %d bytes",
			in.Source, len(in.SecurityPolicy), len(in.HostAMDCert), len(in.ReferenceInfo))
	}
	pc, err := parseTHIM(in.HostAMDCert)
	if err != nil {
		t.Fatalf("host-amd-cert of %s: %v", in.Source, err)
	}
	if err := verifyChain(pc); err != nil {
		t.Fatalf("host-amd-cert chain: %v", err)
	}
	if pc.TCB != 0x7308000000000003 {
		t.Fatalf("host-amd-cert TCB %016x", pc.TCB)
	}
	if !strings.Contains(string(in.SecurityPolicy), "package policy") {
		t.Fatalf("security policy does not look like Rego: %q", truncate(string(in.SecurityPolicy), 80))
	}
}

func TestRealSecurityContextLoads(t *testing.T) {
	t.Parallel()
	dir := realSecurityContextDir(t)
	noEnv := func(string) string { return "" }

	t.Run("UVM_SECURITY_CONTEXT_DIR", func(t *testing.T) {
		env := func(k string) string {
			if k == "UVM_SECURITY_CONTEXT_DIR" {
				return dir
			}
			return ""
		}
		in, err := loadUVMInputs(env, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if in.Source != dir {
			t.Fatalf("source = %q", in.Source)
		}
		checkRealInputs(t, in)
	})

	t.Run("security-context-* under the root", func(t *testing.T) {
		root := t.TempDir()
		// A decoy that sorts later must not be picked.
		if err := os.Mkdir(filepath.Join(root, "security-context-zzz"), 0o755); err != nil {
			t.Fatal(err)
		}
		// The platform mounts a real directory (a symlink is not picked).
		copyDir(t, dir, filepath.Join(root, "security-context-0000"))
		in, err := loadUVMInputs(noEnv, root)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(in.Source) != "security-context-0000" {
			t.Fatalf("source = %q", in.Source)
		}
		checkRealInputs(t, in)
	})

	t.Run("environment fallback", func(t *testing.T) {
		vars := map[string]string{}
		for env, file := range map[string]string{
			"UVM_SECURITY_POLICY":      "security-policy-base64",
			"UVM_HOST_AMD_CERTIFICATE": "host-amd-cert-base64",
			"UVM_REFERENCE_INFO":       "reference-info-base64",
		} {
			b, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			vars[env] = string(b)
		}
		in, err := loadUVMInputs(func(k string) string { return vars[k] }, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(in.Source, "env ") {
			t.Fatalf("source = %q", in.Source)
		}
		checkRealInputs(t, in)
	})

	t.Run("THIM JSON of the sample as UVM_HOST_AMD_CERTIFICATE", func(t *testing.T) {
		b64 := base64.StdEncoding.EncodeToString(readSharedTestdata(t, "uvm_host_amd_certificate.json"))
		in, err := loadUVMInputs(func(k string) string {
			if k == "UVM_HOST_AMD_CERTIFICATE" {
				return b64
			}
			return ""
		}, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := parseTHIM(in.HostAMDCert); err != nil {
			t.Fatal(err)
		}
	})
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkParseTHIMReal(b *testing.B) {
	doc := readSharedTestdata(b, "uvm_host_amd_certificate.json")
	for b.Loop() {
		if _, err := parseTHIM(doc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyEvidenceReal(b *testing.B) {
	rep, err := parseReport(readSharedTestdata(b, "snp_report.bin"))
	if err != nil {
		b.Fatal(err)
	}
	pc, err := parseTHIM(readSharedTestdata(b, "uvm_host_amd_certificate.json"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := verifyEvidence(rep, pc); err != nil {
			b.Fatal(err)
		}
	}
}
