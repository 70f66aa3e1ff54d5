package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The runtime data of Microsoft's example attestation client: a JWKS, base64.
const seedRuntimeData = "eyJrZXlzIjpbeyJlIjoiQVFBQiIsImtleV9vcHMiOlsiZW5jcnlwdCJdLCJraWQiOiJOdmhmdXEyY0NJT0FCOFhSNFhpOVByME5QXzlDZU16V1FHdFdfSEFMel93Iiwia3R5IjoiUlNBIiwibiI6InY5NjVTUm15cDh6Ykc1ZU5GdURDbW1pU2VhSHB1akcyYkNfa2VMU3V6dkRNTE8xV3lyVUp2ZWFhNWJ6TW9PMHBBNDZwWGttYnFIaXNvelZ6cGlORExDbzZkM3o0VHJHTWVGUGYyQVBJTXUtUlNyek41NnF2SFZ5SXI1Y2FXZkhXay1GTVJEd0FlZnlOWVJIa2RZWWtnbUZLNDRoaFVkdGxDQUtFdjVVUXBGWmp2aDRpSTlqVkJkR1lNeUJhS1FMaGpJNVdJaC1RRzZaYTVzU3VPQ0ZNbm11eXV2TjVEZmxwTEZ6NTk1U3MtRW9CSVktTmlsNmxDdHZjR2dSLUlialVZSEFPczVhamFtVHpnZU84a3gzVkNFOUhjeUtteVVac2l5aUY2SURScDJCcHkzTkhUakl6N3Rta3BUSHg3dEhuUnRsZkUyRlV2MEI2aV9RWWxfWkE1USJ9XX0="

// secretKeyMaterial stands for a released key; it must reach only the file.
const secretKeyMaterial = "c2VjcmV0LWtleS1tYXRlcmlhbC1uZXZlci1wcmludGVk"

// sidecarStandIn answers like the sidecar and records what it was sent. It
// refuses what the real sidecar refuses: wrong method, no JSON body.
type sidecarStandIn struct {
	mu       sync.Mutex
	requests map[string]map[string]string
	status   int
}

func newSidecarStandIn(t *testing.T, status int) (*sidecarStandIn, string) {
	s := &sidecarStandIn{requests: map[string]map[string]string{}, status: status}
	ts := httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(ts.Close)
	return s, ts.URL
}

func (s *sidecarStandIn) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "want POST with JSON"})
		return
	}
	var body map[string]string
	raw, _ := io.ReadAll(r.Body)
	if err := json.Unmarshal(raw, &body); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "bad JSON"})
		return
	}
	s.mu.Lock()
	s.requests[r.URL.Path] = body
	s.mu.Unlock()
	if s.status != http.StatusOK {
		writeJSON(w, s.status, map[string]string{"error": "no SEV-SNP guest interface: stand-in says so"})
		return
	}
	switch r.URL.Path {
	case "/attest/raw":
		writeJSON(w, 200, map[string]string{"report": "00ff"})
	case "/attest/combined":
		writeJSON(w, 200, map[string]string{"evidence": "AA==", "endorsements": "", "endorsed_tcb": "0", "uvm_endorsements": ""})
	case "/attest/maa":
		writeJSON(w, 200, map[string]string{"token": "eyJ.maa.token"})
	case "/key/release":
		key, _ := json.Marshal(map[string]any{"kty": "oct-HSM", "kid": "https://v/keys/" + body["kid"] + "/1", "k": secretKeyMaterial})
		writeJSON(w, 200, map[string]string{"key": string(key)})
	default:
		writeJSON(w, 404, map[string]string{"error": "no endpoint"})
	}
}

func (s *sidecarStandIn) got(path string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[path]
}

func envMap(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func readOut(t *testing.T, dir, name string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if info.Mode().Perm() != mode {
		t.Errorf("%s has mode %v, want %v", name, info.Mode().Perm(), mode)
	}
	b, _ := os.ReadFile(path)
	return string(b)
}

func TestAttestClientRawAndCombined(t *testing.T) {
	t.Parallel()
	sc, addr := newSidecarStandIn(t, http.StatusOK)
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := attestClientMain([]string{"-once", "-addr", addr, "-out", out}, &stdout, &stderr, envMap(map[string]string{envAttestRuntimeData: seedRuntimeData}))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	for _, p := range []string{"/attest/raw", "/attest/combined"} {
		if got := sc.got(p); got["runtime_data"] != seedRuntimeData || len(got) != 1 {
			t.Errorf("%s got %v, want only the runtime data passed through", p, got)
		}
	}
	if sc.got("/attest/maa") != nil {
		t.Error("called /attest/maa without an MAA endpoint")
	}
	if got := readOut(t, out, outRaw, 0o644); !strings.Contains(got, `"report":"00ff"`) {
		t.Errorf("raw.out = %q", got)
	}
	if got := readOut(t, out, outCombined, 0o644); !strings.Contains(got, `"evidence"`) {
		t.Errorf("combined.out = %q", got)
	}
	assertNoTempFiles(t, out)
}

func TestAttestClientMAAFromPositionalArguments(t *testing.T) {
	t.Parallel()
	sc, addr := newSidecarStandIn(t, http.StatusOK)
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := attestClientMain([]string{"-once", "-addr", addr, "-out", out, seedRuntimeData, "sharedeus.eus.attest.azure.net"}, &stdout, &stderr, envMap(nil))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	got := sc.got("/attest/maa")
	if got["maa_endpoint"] != "sharedeus.eus.attest.azure.net" || got["runtime_data"] != seedRuntimeData {
		t.Fatalf("/attest/maa got %v", got)
	}
	if sc.got("/attest/raw") != nil {
		t.Error("called /attest/raw although an MAA endpoint was given")
	}
	if got := readOut(t, out, outMAAToken, 0o600); !strings.Contains(got, "eyJ.maa.token") {
		t.Errorf("maatoken.out = %q", got)
	}
	if strings.Contains(stdout.String()+stderr.String(), "eyJ.maa.token") {
		t.Error("the MAA token was printed")
	}
}

func TestReleaseClientWritesKeyPrivatelyAndNeverPrintsIt(t *testing.T) {
	t.Parallel()
	for _, akvEnv := range []string{envReleaseAKV, envReleaseMHSM} {
		t.Run(akvEnv, func(t *testing.T) {
			sc, addr := newSidecarStandIn(t, http.StatusOK)
			out := t.TempDir()
			var stdout, stderr bytes.Buffer
			env := map[string]string{envReleaseKID: "mykey", akvEnv: "myhsm.managedhsm.azure.net", envReleaseMAA: "sharedeus.eus.attest.azure.net"}
			code := releaseClientMain([]string{"-once", "-addr", addr, "-out", out}, &stdout, &stderr, envMap(env))
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			want := map[string]string{"maa_endpoint": "sharedeus.eus.attest.azure.net", "akv_endpoint": "myhsm.managedhsm.azure.net", "kid": "mykey"}
			if got := sc.got("/key/release"); !mapsEqual(got, want) {
				t.Fatalf("/key/release got %v, want %v", got, want)
			}
			if got := readOut(t, out, outKeyRelease, 0o600); !strings.Contains(got, secretKeyMaterial) {
				t.Errorf("keyrelease.out lacks the key: %q", got)
			}
			printed := stdout.String() + stderr.String()
			if strings.Contains(printed, secretKeyMaterial) {
				t.Fatalf("the released key was printed: %q", printed)
			}
			if !strings.Contains(printed, "kid=https://v/keys/mykey/1") {
				t.Errorf("output does not name the released key: %q", printed)
			}
			assertNoTempFiles(t, out)
		})
	}
}

func TestReleaseClientPositionalArguments(t *testing.T) {
	t.Parallel()
	sc, addr := newSidecarStandIn(t, http.StatusOK)
	var stdout, stderr bytes.Buffer
	code := releaseClientMain([]string{"-once", "-addr", addr, "-out", t.TempDir(), "maa.example", "kv.example", "k1"}, &stdout, &stderr, envMap(nil))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	want := map[string]string{"maa_endpoint": "maa.example", "akv_endpoint": "kv.example", "kid": "k1"}
	if got := sc.got("/key/release"); !mapsEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

// A failing sidecar makes -once exit 1, and its error answer is kept in
// the .out file, as curl > FILE kept it.
func TestClientsOnceFailure(t *testing.T) {
	t.Parallel()
	_, addr := newSidecarStandIn(t, http.StatusServiceUnavailable)
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := attestClientMain([]string{"-once", "-addr", addr, "-out", out}, &stdout, &stderr, envMap(map[string]string{envAttestRuntimeData: seedRuntimeData}))
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(stderr.String(), "HTTP 503: no SEV-SNP guest interface") {
		t.Errorf("stderr = %q", stderr.String())
	}
	if got := readOut(t, out, outRaw, 0o644); !strings.Contains(got, "no SEV-SNP") {
		t.Errorf("raw.out = %q", got)
	}

	// Nobody listening: exit 1, nothing written.
	out2 := t.TempDir()
	code = releaseClientMain([]string{"-once", "-addr", "http://127.0.0.1:1", "-out", out2, "m", "a", "k"}, io.Discard, &stderr, envMap(nil))
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if entries, _ := os.ReadDir(out2); len(entries) != 0 {
		t.Errorf("wrote %v without an answer", entries)
	}
}

func TestClientsRefuseBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name string
		argv []string
		env  map[string]string
		want string
	}{
		{"attest without runtime data", []string{"attest_client.sh", "-once"}, nil, "no runtime data"},
		{"attest runtime data not base64", []string{"attest_client.sh", "-once", "not base64!"}, nil, "not base64"},
		{"attest too many arguments", []string{"skr", "attest-client", "a", "b", "c"}, nil, "too many arguments"},
		{"release missing kid", []string{"skr_client.sh", "-once", "maa", "akv"}, nil, "missing SkrClientKID"},
		{"release bad addr", []string{"skr", "release-client", "-addr", "localhost:8080", "m", "a", "k"}, nil, "-addr"},
		{"release zero interval", []string{"skr_client.sh", "-interval", "0s", "m", "a", "k"}, nil, "positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			code, _, errOut := runCmd(t, tc.argv...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q, want 2 and %q", code, errOut, tc.want)
			}
		})
	}
}

// Every link and subcommand of the clients reaches them through dispatch.
func TestClientsDispatch(t *testing.T) {
	sc, addr := newSidecarStandIn(t, http.StatusOK)
	t.Setenv(envAttestRuntimeData, "")
	t.Setenv(envAttestMAAEndpoint, "")
	for _, k := range []string{envReleaseKID, envReleaseAKV, envReleaseMHSM, envReleaseMAA} {
		t.Setenv(k, "")
	}
	for _, argv := range [][]string{
		{"/tests/skr/attest_client.sh", "-once", "-addr", addr, "-out", t.TempDir(), "YWJj"},
		{"/tests/attest_client.sh", "-once", "-addr", addr, "-out", t.TempDir(), "YWJj"},
		{"skr", "attest-client", "-once", "-addr", addr, "-out", t.TempDir(), "YWJj"},
		{"/tests/skr/skr_client.sh", "-once", "-addr", addr, "-out", t.TempDir(), "m", "a", "k"},
		{"/tests/skr_client.sh", "-once", "-addr", addr, "-out", t.TempDir(), "m", "a", "k"},
		{"skr", "release-client", "-once", "-addr", addr, "-out", t.TempDir(), "m", "a", "k"},
	} {
		if code, _, errOut := runCmd(t, argv...); code != 0 {
			t.Errorf("%q: exit %d: %s", argv, code, errOut)
		}
	}
	if sc.got("/attest/raw")["runtime_data"] != "YWJj" || sc.got("/key/release")["kid"] != "k" {
		t.Error("the stand-in did not get the expected requests")
	}
}

func TestWriteFileAtomicReplaces(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "x.out")
	for _, content := range []string{"first", "second"} {
		if err := writeFileAtomic(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := readOut(t, dir, "x.out", 0o600); got != content {
			t.Fatalf("got %q, want %q", got, content)
		}
	}
	assertNoTempFiles(t, dir)
	if err := writeFileAtomic(filepath.Join(dir, "missing", "x.out"), []byte("x"), 0o600); err == nil {
		t.Fatal("wrote into a missing folder")
	}
}

func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// The attestation client against the real server with the emulator: the
// files hold a report bound to the runtime data and its certificates.
func TestAttestClientAgainstEmulatedServer(t *testing.T) {
	t.Parallel()
	base, _ := startTestServer(t, serverConfig{Emulate: true}, serverOptions{TEE: newTestEmulator(t, nil)})
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := attestClientMain([]string{"-once", "-addr", base, "-out", out}, &stdout, &stderr, envMap(map[string]string{envAttestRuntimeData: seedRuntimeData}))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	runtimeData, _ := base64.StdEncoding.DecodeString(seedRuntimeData)
	wantRD := sha256.Sum256(runtimeData)

	var raw struct{ Report string }
	if err := json.Unmarshal([]byte(readOut(t, out, outRaw, 0o644)), &raw); err != nil {
		t.Fatal(err)
	}
	report, err := hex.DecodeString(raw.Report)
	if err != nil || len(report) != 1184 || !bytes.Equal(report[0x50:0x70], wantRD[:]) {
		t.Fatalf("raw.out report (%d bytes, %v) is not bound to the runtime data", len(report), err)
	}

	var combined struct {
		Evidence     string `json:"evidence"`
		Endorsements string `json:"endorsements"`
	}
	if err := json.Unmarshal([]byte(readOut(t, out, outCombined, 0o644)), &combined); err != nil {
		t.Fatal(err)
	}
	ev, _ := base64.StdEncoding.DecodeString(combined.Evidence)
	chain, _ := base64.StdEncoding.DecodeString(combined.Endorsements)
	if len(ev) != 1184 || !bytes.Equal(ev[0x50:0x70], wantRD[:]) {
		t.Errorf("combined.out evidence is not a report bound to the runtime data")
	}
	if n := strings.Count(string(chain), "-----BEGIN CERTIFICATE-----"); n != 3 {
		t.Errorf("combined.out endorsements hold %d certificates, want VCEK, ASK, ARK", n)
	}
}

// The release client against the real server when the release cannot
// succeed: exit 1, and the server's error answer kept in keyrelease.out.
func TestReleaseClientAgainstServerFailure(t *testing.T) {
	t.Parallel()
	// The test emulator, whose keys are made once per run: this test is
	// about the client's handling of a failure, not the emulator.
	base, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: newTestEmulator(t, nil)})
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := releaseClientMain([]string{"-once", "-addr", base, "-out", out, "127.0.0.1:1", "127.0.0.1:1", "k1"}, &stdout, &stderr, envMap(nil))
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %s", code, stderr.String())
	}
	var ans map[string]string
	if err := json.Unmarshal([]byte(readOut(t, out, outKeyRelease, 0o600)), &ans); err != nil || ans["error"] == "" {
		t.Fatalf("keyrelease.out is not the server's error answer: %v %v", ans, err)
	}
	if !strings.Contains(stderr.String(), ans["error"][:min(len(ans["error"]), 40)]) {
		t.Errorf("stderr %q does not carry the server's error", stderr.String())
	}
}
