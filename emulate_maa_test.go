package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// newTestEmulatedAzure is the emulated services over the shared test
// emulator with HOST_DATA sha256(policy), outside any server.
func newTestEmulatedAzure(t testing.TB, policy []byte) *emulatedAzure {
	t.Helper()
	tee := newTestEmulator(t, policy).(*emulator)
	return newEmulatedAzure(emulatedAzureConfig{Keys: readyAzureKeys(t), Trust: tee.PlatformCerts, HostData: tee.hostData})
}

// emulatedCall sends a request to an emulated service through the
// in-memory transport and returns the status and raw answer.
func emulatedCall(t testing.TB, a *emulatedAzure, method, url string, header http.Header, body []byte) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

const emulatedMAAURL = "https://" + emulatedMAAHost + "/attest/SevSnpVm?api-version=" + maaAPIVersion

// emulatorEvidence is a report of the test emulator over runtime with its
// chain.
func emulatorEvidence(t testing.TB, policy, runtime []byte) *evidence {
	t.Helper()
	tee := newTestEmulator(t, policy)
	raw, err := tee.GetReport(context.Background(), reportDataFor(runtime))
	if err != nil {
		t.Fatal(err)
	}
	certs, err := tee.(platformCertSource).PlatformCerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &evidence{Report: raw, Certs: certs}
}

func maaRequestBody(t testing.TB, ev *evidence, runtime []byte) []byte {
	t.Helper()
	b, err := buildMAARequest(ev, runtime, "n-1")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// emulatedMAAToken attests the test emulator's evidence over runtime.
func emulatedMAAToken(t testing.TB, a *emulatedAzure, policy, runtime []byte) string {
	t.Helper()
	status, _, raw := emulatedCall(t, a, "POST", emulatedMAAURL, nil, maaRequestBody(t, emulatorEvidence(t, policy, runtime), runtime))
	if status != 200 {
		t.Fatalf("emulated MAA: %d %s", status, raw)
	}
	tok, err := parseMAAResponse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

func jwsClaims(t testing.TB, tok string) (*parsedJWS, map[string]any) {
	t.Helper()
	jws, err := parseJWS(tok)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(jws.Payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		t.Fatal(err)
	}
	return jws, claims
}

func TestEmulatedMAAIssuesSEVSNPToken(t *testing.T) {
	t.Parallel()
	policy := []byte("package policy\n")
	a := newTestEmulatedAzure(t, policy)
	runtime := []byte(`{"keys":[{"kty":"RSA","kid":"k"}],"client":"app"}`)
	ev := emulatorEvidence(t, policy, runtime)
	tok := emulatedMAAToken(t, a, policy, runtime)
	jws, claims := jwsClaims(t, tok)
	keys := readyAzureKeys(t)

	if jws.Header.Alg != "RS256" || jws.Header.Typ != "JWT" || jws.Header.Kid != keys.maaKid || jws.Header.Jku != emulatedMAAIssuer+"/certs" {
		t.Errorf("header %+v", jws.Header)
	}
	// The signature verifies with the key the JWKS lists under the kid.
	status, _, raw := emulatedCall(t, a, "GET", emulatedMAAIssuer+"/certs", nil, nil)
	var set struct{ Keys []jwk }
	if status != 200 || json.Unmarshal(raw, &set) != nil || len(set.Keys) != 1 || set.Keys[0].Kid != keys.maaKid || len(set.Keys[0].X5C) == 0 {
		t.Fatalf("/certs: %d %s", status, raw)
	}
	chain, err := parseX5C(set.Keys[0].X5C)
	if err != nil {
		t.Fatal(err)
	}
	if err := jws.verify(chain[0].PublicKey, "RS256"); err != nil {
		t.Errorf("the token does not verify with the JWKS certificate: %v", err)
	}
	status, _, raw = emulatedCall(t, a, "GET", emulatedMAAIssuer+"/.well-known/openid-configuration", nil, nil)
	if status != 200 || !bytes.Contains(raw, []byte(`"jwks_uri":"https://maa.skr.localhost/certs"`)) {
		t.Errorf("openid-configuration: %d %s", status, raw)
	}

	rep, err := parseReport(ev.Report)
	if err != nil {
		t.Fatal(err)
	}
	hostData := sha256.Sum256(policy)
	want := map[string]string{
		"iss":                             emulatedMAAIssuer,
		"nonce":                           "n-1",
		"x-ms-ver":                        "1.0",
		"x-ms-attestation-type":           "sevsnpvm",
		"x-ms-compliance-status":          "azure-compliant-uvm",
		"x-ms-sevsnpvm-hostdata":          hex.EncodeToString(hostData[:]),
		"x-ms-sevsnpvm-launchmeasurement": hex.EncodeToString(rep.Measurement[:]),
		"x-ms-sevsnpvm-reportid":          hex.EncodeToString(rep.ReportID[:]),
		"x-ms-sevsnpvm-is-debuggable":     "false",
		"x-ms-sevsnpvm-smt-allowed":       "true",
		"x-ms-sevsnpvm-migration-allowed": "false",
		"x-ms-sevsnpvm-vmpl":              "0",
		"x-ms-sevsnpvm-guestsvn":          "0",
		// The emulator's TCB: boot loader 4, TEE 0, SNP 0x18, microcode 0xDB.
		"x-ms-sevsnpvm-bootloader-svn": "4",
		"x-ms-sevsnpvm-tee-svn":        "0",
		"x-ms-sevsnpvm-snpfw-svn":      "24",
		"x-ms-sevsnpvm-microcode-svn":  "219",
	}
	for name, v := range want {
		if got := claimValueString(claims[name]); got != v {
			t.Errorf("claim %s = %q, want %q", name, got, v)
		}
	}
	rd := reportDataFor(runtime)
	if claims["x-ms-sevsnpvm-reportdata"] != hex.EncodeToString(rd[:]) {
		t.Errorf("reportdata %v", claims["x-ms-sevsnpvm-reportdata"])
	}
	for _, name := range []string{"x-ms-sevsnpvm-idkeydigest", "x-ms-sevsnpvm-authorkeydigest", "x-ms-sevsnpvm-familyId", "x-ms-sevsnpvm-imageId", "x-ms-policy-hash", "jti"} {
		if s, _ := claims[name].(string); s == "" {
			t.Errorf("claim %s is missing", name)
		}
	}
	if rt, _ := claims["x-ms-runtime"].(map[string]any); rt["client"] != "app" {
		t.Errorf("x-ms-runtime %v", claims["x-ms-runtime"])
	}
	iat, _, _ := numericDate(claims, "iat")
	exp, _, _ := numericDate(claims, "exp")
	if exp.Sub(iat) != 8*time.Hour {
		t.Errorf("lifetime %v, want 8h", exp.Sub(iat))
	}
}

var otherEmulator struct {
	once sync.Once
	id   *emulatorIdentity
}

// anotherEmulator is a second emulated machine with its own ARK, ASK and
// VCEK: evidence from "another chain".
func anotherEmulator(t testing.TB) teeDevice {
	t.Helper()
	otherEmulator.once.Do(func() { otherEmulator.id = newEmulatorIdentity(2048, newKeygen(), slog.New(slog.DiscardHandler)) })
	return newEmulatorWith(otherEmulator.id, nil)
}

// The emulated MAA refuses what MAA refuses, with MAA's error shape.
func TestEmulatedMAARefuses(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	runtime := []byte(`{"keys":[]}`)
	good := emulatorEvidence(t, nil, runtime)

	tampered := *good
	tampered.Report = bytes.Clone(good.Report)
	tampered.Report[0x90] ^= 1 // MEASUREMENT, under the signature
	brokenSig := *good
	brokenSig.Report = bytes.Clone(good.Report)
	brokenSig.Report[signedPartSize+10] ^= 1 // R

	other := anotherEmulator(t)
	otherRaw, err := other.GetReport(context.Background(), reportDataFor(runtime))
	if err != nil {
		t.Fatal(err)
	}
	otherCerts, _ := other.(platformCertSource).PlatformCerts(context.Background())
	otherChain := &evidence{Report: otherRaw, Certs: otherCerts}
	// Another machine's VCEK presented with the trusted ASK and ARK.
	mixed := &evidence{Report: otherRaw, Certs: assemblePlatformCerts(otherCerts.VCEK, good.Certs.ASK, good.Certs.ARK, otherCerts.TCB)}

	// Reports the VCEK signs but does not certify: another TCB, another chip.
	resigned := func(off int, b byte) *evidence {
		ev := *good
		ev.Report = bytes.Clone(good.Report)
		ev.Report[off] ^= b
		if err := signReport(ev.Report, newTestEmulator(t, nil).(*emulator).id.vcek); err != nil {
			t.Fatal(err)
		}
		return &ev
	}
	otherTCB := resigned(0x180, 1)  // REPORTED_TCB's boot loader SPL
	otherChip := resigned(0x1A0, 1) // CHIP_ID
	stillGood := resigned(0x0E0, 1) // ID_KEY_DIGEST: signed, nothing to certify

	body := func(ev *evidence, rt []byte) []byte { return maaRequestBody(t, ev, rt) }
	inner := func(bundle map[string]string) []byte {
		b, _ := json.Marshal(bundle)
		out, _ := json.Marshal(map[string]any{"report": b64url(b), "runtimeData": map[string]string{"data": b64url(runtime), "dataType": "JSON"}})
		return out
	}
	replace := func(b []byte, from, to string) []byte { return bytes.Replace(b, []byte(from), []byte(to), 1) }
	withMember := func(b []byte, member string) []byte {
		return append(bytes.TrimSuffix(b, []byte("}")), []byte(","+member+"}")...)
	}
	initTime := func(data string) []byte {
		return withMember(body(good, runtime), `"initTimeData":{"data":"`+b64url([]byte(data))+`","dataType":"Binary"}`)
	}

	for name, c := range map[string]struct {
		body []byte
		want string
	}{
		"report signature broken":         {body(&brokenSig, runtime), "does not verify"},
		"report altered under signature":  {body(&tampered, runtime), "does not verify"},
		"VCEK from another chain":         {body(otherChain, runtime), "does not verify"},
		"another VCEK, trusted ASK/ARK":   {body(mixed, runtime), "does not verify"},
		"REPORT_DATA mismatch":            {body(good, []byte(`{"keys":[1]}`)), "REPORT_DATA"},
		"TCB the VCEK does not certify":   {body(otherTCB, runtime), "REPORTED_TCB"},
		"chip the VCEK is not for":        {body(otherChip, runtime), "CHIP_ID"},
		"HOST_DATA is not initTimeData's": {initTime("not the policy"), "HOST_DATA"},
		"runtimeData casing":              {replace(body(good, runtime), `"runtimeData"`, `"RuntimeData"`), "case-sensitive"},
		"dataType casing":                 {replace(body(good, runtime), `"dataType"`, `"datatype"`), "case-sensitive"},
		"SnpReport casing":                {inner(map[string]string{"snpReport": b64url(good.Report), "VcekCertChain": b64url(good.Certs.ChainPEM)}), "case-sensitive"},
		"standard base64 report":          {inner(map[string]string{"SnpReport": base64.StdEncoding.EncodeToString(good.Report), "VcekCertChain": b64url(good.Certs.ChainPEM)}), "SnpReport"},
		"no chain":                        {inner(map[string]string{"SnpReport": b64url(good.Report)}), "VcekCertChain"},
		"short report":                    {inner(map[string]string{"SnpReport": b64url(good.Report[:100]), "VcekCertChain": b64url(good.Certs.ChainPEM)}), "bytes"},
		"chain of two":                    {inner(map[string]string{"SnpReport": b64url(good.Report), "VcekCertChain": b64url(bytes.Join(bytes.SplitAfter(good.Certs.ChainPEM, []byte("-----END CERTIFICATE-----\n"))[:2], nil))}), "want the VCEK, ASK and ARK"},
		"JSON runtime data not JSON":      {replace(body(good, []byte("{}")), maaB64([]byte("{}"))+`"`, maaB64([]byte("{"))+`"`), "not JSON"},
		"unknown dataType":                {replace(body(good, runtime), `"JSON"`, `"Text"`), "dataType"},
		"draft policy":                    {withMember(body(good, runtime), `"draftPolicyForAttestation":"x"`), "default policy"},
		"nonce an object":                 {replace(body(good, runtime), `"nonce":"n-1"`, `"nonce":{}`), "nonce"},
		"not JSON":                        {[]byte("report=x"), "JSON"},
	} {
		status, _, raw := emulatedCall(t, a, "POST", emulatedMAAURL, nil, c.body)
		var e struct {
			Error struct{ Code, Message string } `json:"error"`
		}
		if status != 400 || json.Unmarshal(raw, &e) != nil || e.Error.Code == "" || !strings.Contains(e.Error.Message, c.want) {
			t.Errorf("%s: %d %s, want 400 mentioning %q", name, status, raw, c.want)
		}
	}

	// The request itself: route, api-version, content type.
	for name, c := range map[string]struct {
		url    string
		header http.Header
		status int
	}{
		"TPM attestation": {"https://" + emulatedMAAHost + "/attest/Tpm?api-version=" + maaAPIVersion, nil, 400},
		"no api-version":  {"https://" + emulatedMAAHost + "/attest/SevSnpVm", nil, 400},
		"text/plain":      {emulatedMAAURL, http.Header{"Content-Type": {"text/plain"}}, 415},
	} {
		if status, _, raw := emulatedCall(t, a, "POST", c.url, c.header, body(good, runtime)); status != c.status {
			t.Errorf("%s: %d %s, want %d", name, status, raw, c.status)
		}
	}

	// MAA accepts the nonce as a number (Microsoft's sidecar sends one),
	// the route in any case, and initTimeData bound to HOST_DATA.
	zeroPolicyInit := withMember(body(good, runtime), `"initTimeData":{"data":"","dataType":"Binary"}`)
	for name, b := range map[string][]byte{
		"numeric nonce":       replace(body(good, runtime), `"nonce":"n-1"`, `"nonce":12345678901234567890`),
		"SevSnpVM route case": body(good, runtime),
	} {
		u := emulatedMAAURL
		if name == "SevSnpVM route case" {
			u = strings.Replace(u, "SevSnpVm", "SevSnpVM", 1)
		}
		if status, _, raw := emulatedCall(t, a, "POST", u, nil, b); status != 200 {
			t.Errorf("%s: %d %s", name, status, raw)
		}
	}
	if status, _, raw := emulatedCall(t, a, "POST", emulatedMAAURL, nil, body(stillGood, runtime)); status != 200 {
		t.Errorf("a re-signed report: %d %s (the refusals above are not about re-signing)", status, raw)
	}
	if status, _, raw := emulatedCall(t, a, "POST", emulatedMAAURL, nil, zeroPolicyInit); status != 400 {
		// HOST_DATA is zero without a policy, and sha256("") is not zero.
		t.Errorf("empty initTimeData against zero HOST_DATA: %d %s", status, raw)
	}
}

// Without a trusted chain the emulated MAA attests nothing.
func TestEmulatedMAAWithoutTrustAnchor(t *testing.T) {
	t.Parallel()
	a := newEmulatedAzure(emulatedAzureConfig{Keys: readyAzureKeys(t)})
	runtime := []byte(`{}`)
	status, _, raw := emulatedCall(t, a, "POST", emulatedMAAURL, nil, maaRequestBody(t, emulatorEvidence(t, nil, runtime), runtime))
	if status != 400 || !bytes.Contains(raw, []byte("trusts no AMD chain")) {
		t.Errorf("%d %s", status, raw)
	}
}

func FuzzParseMAAAttestRequest(f *testing.F) {
	runtime := []byte(`{"keys":[]}`)
	ev := emulatorEvidence(f, nil, runtime)
	f.Add(maaRequestBody(f, ev, runtime))
	f.Add([]byte(`{"report":"e30","runtimeData":{"data":"e30","dataType":"JSON"},"nonce":1}`))
	f.Add([]byte(`{"report":"eyJTbnBSZXBvcnQiOiIiLCJWY2VrQ2VydENoYWluIjoiIiwiRW5kb3JzZW1lbnRzIjoiZTMwIn0"}`))
	f.Add([]byte(`{"report":"","initTimeData":{"data":"AA==","dataType":"Binary"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := parseMAAAttestRequest(body)
		if err != nil {
			return
		}
		if len(a.Report) != 1184 || len(a.ChainPEM) > len(body) || len(a.RuntimeData) > len(body) {
			t.Fatalf("accepted a report of %d bytes, chain %d, runtime %d from %d bytes", len(a.Report), len(a.ChainPEM), len(a.RuntimeData), len(body))
		}
		if a.RuntimeJSON && !json.Valid(a.RuntimeData) {
			t.Fatal("JSON runtime data that is not JSON")
		}
	})
}

// The token's x-ms-runtime is what Key Vault wraps to: the sidecar's
// wrapping key's JWK Set comes back as sent.
func TestEmulatedMAACarriesWrappingKey(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	wk, err := wrappingKeyFrom(standInRSAKey(t, rsaOther))
	if err != nil {
		t.Fatal(err)
	}
	_, claims := jwsClaims(t, emulatedMAAToken(t, a, nil, wk.runtimeData))
	pub, kid, err := runtimeWrappingKey(claims)
	if err != nil || kid != wk.kid || !pub.Equal(&wk.priv.PublicKey) {
		t.Errorf("runtime wrapping key %v %q: %v", pub != nil, kid, err)
	}
}
