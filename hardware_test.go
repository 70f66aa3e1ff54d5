package main

// Runs only inside a real SEV-SNP guest; skips everywhere else.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
)

// realGuestInterface names the first real guest interface on this machine,
// or "" when there is none.
func realGuestInterface() string {
	gi := defaultGuestInterfaces
	if _, err := openConfigfsTSM(osTSMFS{}, gi.ConfigfsTSM); err == nil {
		return gi.ConfigfsTSM
	}
	for _, p := range []string{gi.SevGuest, gi.LegacySev} {
		if checkCharDevice(p) == nil {
			return p
		}
	}
	return ""
}

// TestRealHardware gets a report from the real guest interface and verifies
// it against AMD's real roots (embedded in go-sev-guest), with the
// certificates the host provides in the extended report or else fetched
// from AMD KDS.
func TestRealHardware(t *testing.T) {
	t.Parallel()
	where := realGuestInterface()
	if where == "" {
		t.Skip("no SEV-SNP guest interface here (configfs-tsm with provider sev_guest, /dev/sev-guest, /dev/sev): run inside an SEV-SNP guest")
	}
	dev, err := openTEE(teeOptions{})
	if err != nil {
		t.Fatalf("%s is present but openTEE fails: %v", where, err)
	}
	t.Logf("guest interface %s (%s)", dev.Name(), where)
	runtimeData := make([]byte, 32)
	if _, err := rand.Read(runtimeData); err != nil {
		t.Fatal(err)
	}
	rd := reportDataFor(runtimeData)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var raw, table []byte
	if sg, ok := dev.(*sevGuestDevice); ok {
		raw, table, err = sg.extendedReport(ctx, rd)
		if err != nil {
			t.Logf("extended report failed (%v); falling back to a plain report and AMD KDS", err)
			raw, table, err = nil, nil, nil
		}
	}
	if raw == nil {
		if raw, err = dev.GetReport(ctx, rd); err != nil {
			t.Fatal(err)
		}
	}
	r, err := parseReport(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.ReportData != rd {
		t.Fatalf("REPORT_DATA %x, want %x", r.ReportData, rd)
	}
	t.Logf("report v%d policy %#x vmpl %d reported TCB %016x debuggable %v", r.Version, r.Policy, r.VMPL, r.ReportedTCB, r.Debuggable())

	rep, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	att := &spb.Attestation{Report: rep, CertificateChain: &spb.CertificateChain{}}
	if len(table) > 0 {
		var certs abi.CertTable
		if err := certs.Unmarshal(table); err != nil {
			t.Fatalf("host certificate table: %v", err)
		}
		att.CertificateChain = certs.Proto()
		t.Logf("certificates from the extended report: VCEK %d bytes, ASK %d, ARK %d", len(att.CertificateChain.VcekCert), len(att.CertificateChain.AskCert), len(att.CertificateChain.ArkCert))
	}
	// Missing certificates come from AMD KDS; the roots are AMD's own.
	opts := verify.DefaultOptions()
	if err := verify.SnpAttestationContext(ctx, att, opts); err != nil {
		t.Fatalf("the report does not verify against AMD's roots: %v", err)
	}
	if vcek, err := x509.ParseCertificate(att.CertificateChain.VcekCert); err == nil {
		checkVCEKTCB(t, vcek, r)
	}
}

// checkVCEKTCB checks that the VCEK that verified the report certifies
// the report's TCB and chip (a VCEK is per chip and TCB).
func checkVCEKTCB(t *testing.T, vcek *x509.Certificate, r *snpReport) {
	t.Helper()
	exts, err := kds.VcekCertificateExtensions(vcek)
	if err != nil {
		t.Errorf("VCEK extensions: %v", err)
		return
	}
	t.Logf("VCEK certifies TCB %016x, product %s", uint64(exts.TCBVersion), exts.ProductName)
	if uint64(exts.TCBVersion) != r.ReportedTCB {
		t.Errorf("VCEK TCB %016x, report's REPORTED_TCB %016x", uint64(exts.TCBVersion), r.ReportedTCB)
	}
	if r.ChipID != ([64]byte{}) && !bytes.Equal(exts.HWID, r.ChipID[:]) {
		t.Errorf("VCEK hwID is not the report's CHIP_ID")
	}
}
