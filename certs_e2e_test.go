package main

// End to end through the real server: /attest/combined hands out the
// certificates that match the report, refetching them when the security
// context's THIM JSON is behind the firmware's TCB.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeSecurityContext writes a security-context directory as the
// platform does (each file standard base64) and returns its path.
func writeSecurityContext(t *testing.T, policy, thim []byte) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "security-context-test")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string][]byte{
		fileSecurityPolicy: policy,
		fileHostAMDCert:    thim,
		fileReferenceInfo:  []byte("not really COSE, passed through unchanged"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(base64.StdEncoding.EncodeToString(content)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// combinedAnswer decodes a 200 /attest/combined answer.
func combinedAnswer(t *testing.T, body map[string]any) (tcb string, certs []byte, rep *snpReport) {
	t.Helper()
	raw, _ := json.Marshal(body)
	var resp combinedResponse
	if err := json.Unmarshal(raw, &resp); err != nil {
		t.Fatal(err)
	}
	certs, err := base64.StdEncoding.DecodeString(resp.Endorsements)
	if err != nil {
		t.Fatal(err)
	}
	evidence, err := base64.StdEncoding.DecodeString(resp.Evidence)
	if err != nil || len(evidence) != reportSize {
		t.Fatalf("evidence: %d bytes, %v", len(evidence), err)
	}
	return resp.EndorsedTCB, certs, decodeTestReport(evidence)
}

func TestAttestCombinedRefetchesCertificatesOnTCBMismatch(t *testing.T) {
	t.Parallel()
	old, nw := newTestVCEK(t, specOld), newTestVCEK(t, specNew)
	kds := newKDSStandIn(t)
	kds.addVCEK(nw, specNew)
	policy := []byte("package policy\n\napi_version := \"0.10.0\"\n")
	// The platform handed out certificates for the TCB before an update;
	// the firmware now reports tcbNew.
	dir := writeSecurityContext(t, policy, thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
	dev := &signingDevice{v: nw, tcb: tcbNew, hostData: sha256.Sum256(policy)}
	cfg := serverConfig{Args: &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}}}
	url, logs := startTestServer(t, cfg, serverOptions{
		TEE:    dev,
		Roots:  trustPool(kds.srv),
		Getenv: func(k string) string { return map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}[k] },
	})

	for i := range 2 {
		status, body := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
		if status != http.StatusOK {
			t.Fatalf("call %d: status %d: %v\n%s", i, status, body, logs)
		}
		tcb, chain, rep := combinedAnswer(t, body)
		if tcb != "db18000000000004" {
			t.Fatalf("endorsed_tcb = %q", tcb)
		}
		certs, err := parsePEMCertificates(chain)
		if err != nil || len(certs) != 3 {
			t.Fatalf("endorsements: %d certificates, %v", len(certs), err)
		}
		if !certs[0].Equal(nw.cert) || !certs[1].Equal(nw.root.ask) || !certs[2].Equal(nw.root.ark) {
			t.Fatal("endorsements are not the fresh VCEK, ASK, ARK")
		}
		if want := reportDataFor([]byte("hello")); rep.ReportData != want {
			t.Fatal("REPORT_DATA is not sha256(runtime_data)")
		}
		// What was handed out verifies, checked from the client's side.
		if err := verifyEvidence(rep, assemblePlatformCerts(certs[0], certs[1], certs[2], tcbNew)); err != nil {
			t.Fatal(err)
		}
	}
	// One fetch, then the cache.
	if kds.callsOf("vcek") != 1 || kds.callsOf("chain") != 1 {
		t.Fatalf("KDS calls = %v, want one VCEK and one chain", kds.calls)
	}
	if !strings.Contains(logs.String(), "fetching fresh ones") {
		t.Errorf("the refetch is not logged:\n%s", logs)
	}
}

func TestAttestCombinedFailsWhenNoSourceHasTheTCB(t *testing.T) {
	t.Parallel()
	old, nw := newTestVCEK(t, specOld), newTestVCEK(t, specNew)
	// THIM, the default source, still serves the old certificates.
	thim := newTHIMStandIn(t, thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
	dir := writeSecurityContext(t, []byte("package policy\n"), thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
	cfg := serverConfig{Args: &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}}}
	url, _ := startTestServer(t, cfg, serverOptions{
		TEE:    &signingDevice{v: nw, tcb: tcbNew},
		Roots:  trustPool(thim.srv),
		Getenv: func(k string) string { return map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}[k] },
	})
	status, body := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
	msg, _ := body["error"].(string)
	if status != http.StatusBadGateway || !strings.Contains(msg, "7308000000000003") || !strings.Contains(msg, "db18000000000004") {
		t.Fatalf("status %d, error %q", status, msg)
	}
	if thim.callsOf("thim") != 1 {
		t.Fatalf("THIM calls = %d", thim.callsOf("thim"))
	}
}

// The same refetch with go-sev-guest's fake /dev/sev-guest as the device:
// its reports come through go-sev-guest's client code and are signed by
// go-sev-guest's test chain, which KDS (the stand-in) serves.
func TestAttestCombinedRefetchWithFakeSevGuest(t *testing.T) {
	t.Parallel()
	dev, fake := newFakeSevGuest(t)
	if fakeSevGuestHWID != testChipID {
		t.Fatal("the fake device's CHIP_ID is not testChipID: register its VCEK under its own hwid")
	}
	kds := newKDSStandIn(t)
	kds.addCerts(specOld, fake.VCEK, fake.ASK, fake.ARK) // fakeSevGuestTCB = tcbOld
	// The security context is behind: it holds a VCEK of another TCB.
	stale := newTestVCEK(t, specNew)
	dir := writeSecurityContext(t, []byte("package policy\n"), thimJSON(t, stale.cert, stale.root.ask, stale.root.ark, "db18000000000004"))
	cfg := serverConfig{Args: &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}}}
	url, logs := startTestServer(t, cfg, serverOptions{
		TEE:    dev,
		Roots:  trustPool(kds.srv),
		Getenv: func(k string) string { return map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}[k] },
	})
	status, body := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
	if status != http.StatusOK {
		t.Fatalf("status %d: %v\n%s", status, body, logs)
	}
	tcb, chain, _ := combinedAnswer(t, body)
	if tcb != "7308000000000003" || !bytes.Equal(chain, fake.ChainPEM) {
		t.Fatalf("endorsed_tcb %q; endorsements are the fake chain: %v", tcb, bytes.Equal(chain, fake.ChainPEM))
	}
	rep, err := parseReport(decodeB64(t, body["evidence"]))
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyEvidence(rep, fake); err != nil {
		t.Fatal(err)
	}
	if kds.callsOf("vcek") != 1 || kds.callsOf("chain") != 1 {
		t.Fatalf("KDS calls = %v", kds.calls)
	}
}

func decodeB64(t *testing.T, v any) []byte {
	t.Helper()
	s, _ := v.(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
