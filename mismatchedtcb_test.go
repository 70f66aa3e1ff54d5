package main

import (
	"crypto/sha256"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestAllowTestingMismatchedTCBFlag(t *testing.T) {
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
