package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRuntimeDataType(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`{"keys":[]}`:      maaDataJSON,
		` [1,2] `:          maaDataJSON,
		`{"a":`:            maaDataBinary,
		`"a string"`:       maaDataBinary,
		`42`:               maaDataBinary,
		"\x00\x01binary":   maaDataBinary,
		"":                 maaDataBinary,
		`{"a":1} trailing`: maaDataBinary,
	} {
		if got := runtimeDataType([]byte(in)); got != want {
			t.Errorf("runtimeDataType(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestBuildMAARequestShape decodes the request the way MAA does and checks
// every name, casing and encoding.
func TestBuildMAARequestShape(t *testing.T) {
	t.Parallel()
	report := bytes.Repeat([]byte{0xfb}, reportSize) // 0xfb.. encodes to - and _ in base64url
	chain := []byte("-----BEGIN CERTIFICATE-----\nVCEK\n-----END CERTIFICATE-----\n")
	runtime := []byte(`{"keys":[{"kty":"RSA","kid":"k"}]}`)
	for _, uvm := range [][]byte{nil, []byte("cose sign1 \xff\xfe")} {
		ev := &evidence{Report: report, Certs: &platformCerts{ChainPEM: chain}, UVMReferenceInfo: uvm}
		body, err := buildMAARequest(ev, runtime, "nonce-1")
		if err != nil {
			t.Fatal(err)
		}
		outer, err := standInExactKeys(body, []string{"report", "runtimeData", "nonce"})
		if err != nil {
			t.Fatalf("outer: %v: %s", err, body)
		}
		var rt struct {
			Data     string `json:"data"`
			DataType string `json:"dataType"`
		}
		if _, err := standInExactKeys(outer["runtimeData"], []string{"data", "dataType"}); err != nil {
			t.Fatal(err)
		}
		json.Unmarshal(outer["runtimeData"], &rt)
		if data, err := base64.URLEncoding.DecodeString(rt.Data); err != nil || !bytes.Equal(data, runtime) || rt.DataType != "JSON" {
			t.Fatalf("runtimeData = %+v (%v)", rt, err)
		}
		var reportB64, nonce string
		json.Unmarshal(outer["report"], &reportB64)
		json.Unmarshal(outer["nonce"], &nonce)
		if nonce != "nonce-1" {
			t.Fatalf("nonce = %q", nonce)
		}
		inner, err := base64.URLEncoding.DecodeString(reportB64)
		if err != nil {
			t.Fatalf("report is not padded base64url: %v", err)
		}
		required := []string{"SnpReport", "VcekCertChain"}
		if uvm != nil {
			required = append(required, "Endorsements")
		}
		bundle, err := standInExactKeys(inner, required)
		if err != nil {
			t.Fatalf("bundle: %v: %s", err, inner)
		}
		var snp, vcek string
		json.Unmarshal(bundle["SnpReport"], &snp)
		json.Unmarshal(bundle["VcekCertChain"], &vcek)
		if b, err := base64.URLEncoding.DecodeString(snp); err != nil || !bytes.Equal(b, report) {
			t.Fatalf("SnpReport does not decode to the report: %v", err)
		}
		if strings.ContainsAny(snp, "+/") {
			t.Fatal("SnpReport uses the standard alphabet")
		}
		if b, err := base64.URLEncoding.DecodeString(vcek); err != nil || !bytes.Equal(b, chain) {
			t.Fatalf("VcekCertChain does not decode to the PEM chain: %v", err)
		}
		if uvm != nil {
			var e string
			json.Unmarshal(bundle["Endorsements"], &e)
			ej, err := base64.URLEncoding.DecodeString(e)
			if err != nil {
				t.Fatal(err)
			}
			var end struct {
				Uvm []string `json:"Uvm"`
			}
			if _, err := standInExactKeys(ej, []string{"Uvm"}); err != nil {
				t.Fatal(err)
			}
			json.Unmarshal(ej, &end)
			if len(end.Uvm) != 1 {
				t.Fatalf("Uvm = %v", end.Uvm)
			}
			if b, err := base64.URLEncoding.DecodeString(end.Uvm[0]); err != nil || !bytes.Equal(b, uvm) {
				t.Fatalf("Uvm[0] does not decode to the reference info: %v", err)
			}
		}
	}
	if _, err := buildMAARequest(&evidence{Report: report}, runtime, "n"); err == nil {
		t.Fatal("built a request without a certificate chain")
	}
}

func TestParseMAAResponse(t *testing.T) {
	t.Parallel()
	key := standInRSAKey(t, rsaMAASigner)
	exp := time.Now().Add(8 * time.Hour).Unix()
	tok, err := signJWS(map[string]any{"alg": "RS256", "typ": "JWT"}, standInJSON(map[string]any{"exp": exp}), key, "RS256")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseMAAResponse(standInJSON(map[string]string{"token": tok}))
	if err != nil || got.Token != tok || got.Expires.Unix() != exp {
		t.Fatalf("parseMAAResponse = %+v, %v", got, err)
	}
	for _, bad := range []string{`{}`, `{"token":""}`, `{"token":"not a jws"}`, `[]`, `{"token":1}`} {
		if _, err := parseMAAResponse([]byte(bad)); err == nil {
			t.Errorf("parseMAAResponse(%s) accepted it", bad)
		}
	}
}

func attestMAABody(endpoint string, runtime []byte) string {
	return string(standInJSON(map[string]string{"maa_endpoint": endpoint, "runtime_data": base64.StdEncoding.EncodeToString(runtime)}))
}

func TestAttestMAAEndToEnd(t *testing.T) {
	t.Parallel()
	for _, device := range []string{deviceEmulator, deviceFakeGuest} {
		t.Run(device, func(t *testing.T) {
			e := newReleaseEnv(t, releaseEnvOpts{device: device})
			runtime := []byte(`{"keys":[{"kty":"oct","kid":"caller"}],"purpose":"test"}`)
			status, out := call(t, "POST", e.url+"/attest/maa", attestMAABody("https://"+e.maa.host, runtime))
			if status != http.StatusOK {
				t.Fatalf("status %d: %v", status, out)
			}
			tok, _ := out["token"].(string)
			claims := verifyStandInToken(t, e.maa, tok)
			if claims["x-ms-attestation-type"] != "sevsnpvm" || claims["x-ms-sevsnpvm-hostdata"] != e.hostData {
				t.Fatalf("claims: %v", claims)
			}
			if rt, _ := claims["x-ms-runtime"].(map[string]any); rt["purpose"] != "test" {
				t.Fatalf("x-ms-runtime = %v", claims["x-ms-runtime"])
			}
			sum := sha256.Sum256(runtime)
			if rd, _ := claims["x-ms-sevsnpvm-reportdata"].(string); !strings.HasPrefix(rd, hex.EncodeToString(sum[:])) {
				t.Fatalf("reportdata %s is not sha256 of the runtime data", rd)
			}
			if claims["x-ms-compliance-status"] != "azure-compliant-uvm" {
				t.Fatalf("the UVM endorsement did not reach MAA: %v", claims["x-ms-compliance-status"])
			}
			// Binary runtime data (not JSON) is accepted as such.
			status, out = call(t, "POST", e.url+"/attest/maa", attestMAABody(e.maa.host, []byte("\x00\x01 raw")))
			if status != http.StatusOK {
				t.Fatalf("binary runtime data: status %d: %v", status, out)
			}
			if _, ok := e.maa.claims()["x-ms-runtime"]; ok {
				t.Fatal("binary runtime data came back as x-ms-runtime")
			}
			e.maa.mu.Lock()
			ua := e.maa.userAgents[0]
			e.maa.mu.Unlock()
			if !strings.HasPrefix(ua, "skr/") {
				t.Fatalf("User-Agent = %q", ua)
			}
		})
	}
}

// verifyStandInToken checks a token as a relying party would.
func verifyStandInToken(t *testing.T, m *maaStandIn, tok string) map[string]any {
	t.Helper()
	jws, err := parseJWS(tok)
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	if jws.Header.Kid != m.kid || jws.Header.Jku != "https://"+m.host+"/certs" {
		t.Fatalf("token header = %+v", jws.Header)
	}
	if err := jws.verify(&m.signer.PublicKey, "RS256"); err != nil {
		t.Fatalf("token signature: %v", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(jws.Payload, &claims); err != nil {
		t.Fatal(err)
	}
	if err := checkJWTTimes(claims, time.Now(), 0); err != nil {
		t.Fatal(err)
	}
	return claims
}

func TestAttestMAAUserAgentFromArgs(t *testing.T) {
	t.Parallel()
	args := &SkrSideCarArgs{}
	args.MAAConfig.UserAgent = "contoso-app/1.2"
	e := newReleaseEnv(t, releaseEnvOpts{args: args})
	status, out := call(t, "POST", e.url+"/attest/maa", attestMAABody(e.maa.host, []byte(`{}`)))
	if status != http.StatusOK {
		t.Fatalf("status %d: %v", status, out)
	}
	e.maa.mu.Lock()
	defer e.maa.mu.Unlock()
	if e.maa.userAgents[0] != "contoso-app/1.2" {
		t.Fatalf("User-Agent = %q", e.maa.userAgents[0])
	}
}

func TestAttestMAABadInputs(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{})
	rt := base64.StdEncoding.EncodeToString([]byte(`{}`))
	for name, body := range map[string]string{
		"empty":               "",
		"not JSON":            "nope",
		"no endpoint":         `{"runtime_data":"` + rt + `"}`,
		"no runtime data":     `{"maa_endpoint":"` + e.maa.host + `"}`,
		"bad base64":          `{"maa_endpoint":"` + e.maa.host + `","runtime_data":"!!!"}`,
		"plain http":          `{"maa_endpoint":"http://` + e.maa.host + `","runtime_data":"` + rt + `"}`,
		"endpoint with path":  `{"maa_endpoint":"` + e.maa.host + `/attest","runtime_data":"` + rt + `"}`,
		"endpoint with query": `{"maa_endpoint":"` + e.maa.host + `?x=1","runtime_data":"` + rt + `"}`,
		"endpoint with user":  `{"maa_endpoint":"https://u@` + e.maa.host + `","runtime_data":"` + rt + `"}`,
		"bad port":            `{"maa_endpoint":"localhost:99999","runtime_data":"` + rt + `"}`,
	} {
		t.Run(name, func(t *testing.T) {
			status, out := call(t, "POST", e.url+"/attest/maa", body)
			if status != http.StatusBadRequest || out["token"] != nil {
				t.Fatalf("status %d: %v", status, out)
			}
		})
	}
	if e.maa.count() != 0 {
		t.Fatalf("bad requests reached MAA %d times", e.maa.count())
	}
}

// newMAAEnv runs the server over the emulator against an MAA stand-in,
// with the production retry policy whose pauses are recorded, not slept.
func newMAAEnv(t *testing.T, timeout time.Duration) (url string, maa *maaStandIn, waits *waitRecorder) {
	t.Helper()
	tee, certs, _ := releaseTestDevice(t, deviceEmulator)
	maa = newMAAStandIn(t, certs.ARK)
	retry, waits := recordedRetry(defaultRetry)
	url, _ = startTestServer(t, serverConfig{}, serverOptions{
		TEE: tee, Roots: getStandInPKI().roots(), RequestTimeout: timeout, Retry: retry,
	})
	return url, maa, waits
}

func TestAttestMAAFailures(t *testing.T) {
	t.Parallel()
	url, maa, waits := newMAAEnv(t, 0)
	body := attestMAABody(maa.host, []byte(`{"k":1}`))

	t.Run("untrusted ARK", func(t *testing.T) {
		other := newStandInCA("not AMD", nil)
		maa.mu.Lock()
		ark := maa.ark
		maa.ark = other.cert
		maa.mu.Unlock()
		defer func() { maa.mu.Lock(); maa.ark = ark; maa.mu.Unlock() }()
		status, out := call(t, "POST", url+"/attest/maa", body)
		if status != http.StatusBadGateway || !strings.Contains(out["error"].(string), "MAA") {
			t.Fatalf("status %d: %v", status, out)
		}
	})
	t.Run("500 then 200", func(t *testing.T) {
		before, waited := maa.count(), len(waits.Delays())
		maa.failNext(1, http.StatusInternalServerError, "")
		status, out := call(t, "POST", url+"/attest/maa", body)
		if status != http.StatusOK || maa.count()-before != 2 {
			t.Fatalf("status %d after %d calls: %v", status, maa.count()-before, out)
		}
		// One pause, the production backoff's first: its base, jittered.
		got := waits.Delays()[waited:]
		if len(got) != 1 || got[0] < defaultRetry.BaseDelay/2 || got[0] > defaultRetry.BaseDelay {
			t.Fatalf("paused %v between tries, want one pause of %v to %v", got, defaultRetry.BaseDelay/2, defaultRetry.BaseDelay)
		}
	})
	t.Run("403", func(t *testing.T) {
		maa.failNext(1, http.StatusForbidden, "")
		status, out := call(t, "POST", url+"/attest/maa", body)
		if status != http.StatusForbidden {
			t.Fatalf("status %d: %v", status, out)
		}
	})
	t.Run("hang", func(t *testing.T) {
		t.Parallel()
		// Its own server: the request deadline is what ends the hang.
		url, maa, _ := newMAAEnv(t, 300*time.Millisecond)
		maa.setHang(true)
		status, out := call(t, "POST", url+"/attest/maa", attestMAABody(maa.host, []byte(`{"k":1}`)))
		if status != http.StatusGatewayTimeout || maa.count() == 0 {
			t.Fatalf("status %d after %d MAA calls: %v; want 504 from a hanging MAA", status, maa.count(), out)
		}
	})
}

func TestAttestMAAEmptyToken(t *testing.T) {
	t.Parallel()
	for name, answer := range map[string]string{"empty token": `{"token":""}`, "no token": `{}`, "garbage": `<html>`} {
		t.Run(name, func(t *testing.T) {
			srv, host := startTLSStandIn(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Write([]byte(answer))
			}))
			defer srv.Close()
			tee, _, _ := releaseTestDevice(t, deviceEmulator)
			url, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: tee, Roots: getStandInPKI().roots()})
			status, out := call(t, "POST", url+"/attest/maa", attestMAABody(host, []byte(`{}`)))
			if status != http.StatusBadGateway || out["token"] != nil {
				t.Fatalf("status %d: %v", status, out)
			}
		})
	}
}

// FuzzParseMAAResponse: any answer is a token or an error, never a panic.
func FuzzParseMAAResponse(f *testing.F) {
	f.Add([]byte(`{"token":"eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjF9.c2ln"}`))
	f.Add([]byte(`{"token":""}`))
	f.Add([]byte(`{"token":"a.b.c","exp":"x"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := parseMAAResponse(body)
		if err == nil && (tok.Token == "" || len(tok.Token) > maxMAATokenSize) {
			t.Fatalf("accepted %q", tok.Token)
		}
	})
}
