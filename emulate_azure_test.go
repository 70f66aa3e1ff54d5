package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var sharedAzure struct {
	once sync.Once
	keys *emulatedAzureKeys
}

// sharedAzureKeys are the emulated services' keys, made once per test
// binary in the background, as the server makes them.
func sharedAzureKeys() *emulatedAzureKeys {
	sharedAzure.once.Do(func() { sharedAzure.keys = newEmulatedAzureKeys(nil, slog.New(slog.DiscardHandler)) })
	return sharedAzure.keys
}

// readyAzureKeys waits for the shared keys.
func readyAzureKeys(t testing.TB) *emulatedAzureKeys {
	t.Helper()
	k := sharedAzureKeys()
	if err := k.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	return k
}

// startEmulatedAzureServer runs the sidecar with -emulate over the shared
// test emulator, whose HOST_DATA is sha256(policy) (zero without one).
func startEmulatedAzureServer(t testing.TB, cfg serverConfig, policy []byte) string {
	t.Helper()
	cfg.Emulate = true
	url, _ := startTestServer(t, cfg, serverOptions{TEE: newTestEmulator(t, policy)})
	return url
}

func releaseEmulated(t testing.TB, base, vault, kid string) (int, map[string]any) {
	t.Helper()
	return call(t, "POST", base+"/key/release", `{"maa_endpoint":"maa.skr.localhost","akv_endpoint":"`+vault+`","kid":"`+kid+`"}`)
}

// ---- the README's walkthrough, run as written ----

// readmeSection is the text of the README section under heading, up to the
// next section of the same level.
func readmeSection(t *testing.T, heading string) string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Skipf("no README: %v", err)
	}
	s := string(readme)
	start := strings.Index(s, "\n"+heading+"\n")
	if start < 0 {
		t.Fatalf("README has no section %q", heading)
	}
	end := strings.Index(s[start+1:], "\n## ")
	if end < 0 {
		return s[start:]
	}
	return s[start : start+1+end]
}

// walkthroughStep is one command of the README walkthrough with the output
// the README shows for it.
type walkthroughStep struct {
	line   string
	shown  []string // the lines printed under the command, up to a blank line
	method string   // curl
	path   string
	body   string
	args   []string // go run . ...
}

// parseWalkthrough reads the shell blocks of a README section: go run
// lines, curl lines (method, path, -d body), heredoc files, and the output
// lines shown under each command.
func parseWalkthrough(t *testing.T, section string) (steps []*walkthroughStep, files map[string]string) {
	t.Helper()
	files = map[string]string{}
	inShell := false
	var last *walkthroughStep
	sc := bufio.NewScanner(strings.NewReader(section))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```sh":
			inShell, last = true, nil
			continue
		case strings.HasPrefix(line, "```"):
			inShell, last = false, nil
			continue
		case !inShell:
			continue
		}
		if name, ok := strings.CutPrefix(line, "cat > "); ok {
			name, _, _ = strings.Cut(name, " ")
			var content []string
			for sc.Scan() && sc.Text() != "EOF" {
				content = append(content, sc.Text())
			}
			files[name] = strings.Join(content, "\n") + "\n"
			last = nil
			continue
		}
		switch {
		case strings.TrimSpace(line) == "":
			last = nil
		case strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "go run . "):
			cmd, _, _ := strings.Cut(strings.TrimPrefix(line, "go run . "), "#")
			last = &walkthroughStep{line: line, args: strings.Fields(strings.TrimSuffix(strings.TrimSpace(cmd), "&"))}
			steps = append(steps, last)
		case strings.HasPrefix(line, "curl "):
			last = parseCurl(t, line)
			steps = append(steps, last)
		case last != nil:
			last.shown = append(last.shown, line)
		default:
			t.Fatalf("README walkthrough: a line that is neither a command nor its output: %q", line)
		}
	}
	return steps, files
}

// parseCurl reads the curl lines of the walkthrough: curl -s [-X METHOD]
// localhost:8080/PATH [-d 'BODY'].
func parseCurl(t *testing.T, line string) *walkthroughStep {
	t.Helper()
	st := &walkthroughStep{line: line, method: "GET"}
	rest := line
	if i := strings.Index(rest, " -d '"); i >= 0 {
		body := rest[i+len(" -d '"):]
		j := strings.LastIndex(body, "'")
		if j < 0 {
			t.Fatalf("unterminated -d in %q", line)
		}
		st.body, rest = body[:j], rest[:i]
		st.method = "POST"
	}
	for _, f := range strings.Fields(rest) {
		if p, ok := strings.CutPrefix(f, "localhost:8080"); ok {
			st.path = p
		}
	}
	if strings.Contains(rest, "-X POST") {
		st.method = "POST"
	}
	if st.path == "" {
		t.Fatalf("curl line without localhost:8080: %q", line)
	}
	return st
}

// The README's emulated walkthrough, command by command through the real
// server: each demo key is released with the demo material, demo-denied is
// a 403 naming the host data claim with both values, the MAA token carries
// the runtime data, and the key imported with -kh is released with exactly
// those bytes. The output the README shows must be of the same kind.
func TestREADMEEmulatedWalkthrough(t *testing.T) {
	t.Parallel()
	steps, files := parseWalkthrough(t, readmeSection(t, "## A whole key release on one machine"))
	keys := readyAzureKeys(t)
	var base string
	dir := t.TempDir()
	seen := map[string]bool{}
	for _, st := range steps {
		switch {
		case st.args != nil && st.args[0] == "importkey":
			if base == "" {
				t.Fatal("importkey before the sidecar started")
			}
			args := append([]string(nil), st.args[1:]...)
			for i := range args {
				if content, ok := files[args[i]]; ok {
					args[i] = filepath.Join(dir, args[i])
					if err := os.WriteFile(args[i], []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			u, _ := url.Parse(base)
			var stdout, stderr bytes.Buffer
			code := importKeyMain(append(args, "-keydir", dir), &stdout, &stderr, importKeyEnv{Getenv: envOf(map[string]string{"Port": u.Port()})})
			if code != 0 {
				t.Fatalf("%s: exit %d: %s", st.line, code, stderr.String())
			}
			if stderr.Len() != 0 {
				t.Errorf("%s: warnings %q", st.line, stderr.String())
			}
			kid, _, _ := strings.Cut(stdout.String(), "\n")
			checkShownImport(t, st, kid)
			seen["importkey"] = true
		case st.args != nil:
			cfg, err := parseServeFlags(st.args, envOf(nil), io.Discard)
			if err != nil || !cfg.Emulate {
				t.Fatalf("%s: %v, emulate %v", st.line, err, cfg != nil && cfg.Emulate)
			}
			base = startEmulatedAzureServer(t, *cfg, nil)
		default:
			if base == "" {
				t.Fatalf("%s: before the sidecar started", st.line)
			}
			status, out := call(t, st.method, base+st.path, st.body)
			checkShownAnswer(t, st, out)
			switch st.path {
			case "/status":
				az, _ := out["emulated_azure"].(map[string]any)
				if status != 200 || az["maa"] != emulatedMAAHost || az["key_vault"] != emulatedVaultHost || az["managed_hsm"] != emulatedHSMHost {
					t.Errorf("/status: %d %v", status, out)
				}
				seen["status"] = true
			case "/attest/maa":
				checkWalkthroughToken(t, status, out)
				seen["maa"] = true
			case "/key/release":
				var req keyReleaseRequest
				if err := json.Unmarshal([]byte(st.body), &req); err != nil {
					t.Fatal(err)
				}
				checkWalkthroughRelease(t, keys, req, status, out, st.line)
				seen[req.Kid] = true
			default:
				t.Fatalf("unexpected path in %s", st.line)
			}
		}
	}
	for _, want := range []string{"status", demoOct, demoRSA, demoEC, demoDenied, "maa", "importkey", "my-key"} {
		if !seen[want] {
			t.Errorf("the walkthrough does not show %s", want)
		}
	}
}

// checkShownAnswer wants the README's output line to be a JSON answer with
// the same members as the real one (the values differ from run to run).
func checkShownAnswer(t *testing.T, st *walkthroughStep, real map[string]any) {
	t.Helper()
	if len(st.shown) == 0 {
		t.Errorf("the README shows no output for %s", st.line)
		return
	}
	var shown map[string]any
	if err := json.Unmarshal([]byte(strings.Join(st.shown, "\n")), &shown); err != nil {
		t.Errorf("the README's output for %s is not a JSON answer: %v", st.line, err)
		return
	}
	for k := range real {
		if _, ok := shown[k]; !ok && k != "uptime" {
			t.Errorf("the README's output for %s lacks %q", st.line, k)
		}
	}
}

func checkShownImport(t *testing.T, st *walkthroughStep, kid string) {
	t.Helper()
	prefix := "https://" + emulatedHSMHost + "/keys/my-key/"
	if !strings.HasPrefix(kid, prefix) {
		t.Errorf("importkey printed key id %q", kid)
	}
	if len(st.shown) < 2 || !strings.HasPrefix(st.shown[0], prefix) || st.shown[1] != "{" {
		t.Errorf("the README shows %q for %s, not a key id and the policy", st.shown, st.line)
	}
}

func checkWalkthroughToken(t *testing.T, status int, out map[string]any) {
	t.Helper()
	tok, _ := out["token"].(string)
	if status != 200 || tok == "" {
		t.Fatalf("/attest/maa: %d %v", status, out)
	}
	jws, err := parseJWS(tok)
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	json.Unmarshal(jws.Payload, &claims)
	rt, _ := claims["x-ms-runtime"].(map[string]any)
	if claims["iss"] != emulatedMAAIssuer || rt["nonce"] != "42" || jws.Header.Jku != emulatedMAAIssuer+"/certs" {
		t.Errorf("token header %+v claims %v", jws.Header, claims)
	}
}

func checkWalkthroughRelease(t *testing.T, keys *emulatedAzureKeys, req keyReleaseRequest, status int, out map[string]any, line string) {
	t.Helper()
	if req.Kid == demoDenied {
		msg, _ := out["error"].(string)
		var zero [32]byte
		if status != http.StatusForbidden || !strings.Contains(msg, hostDataClaim) ||
			!strings.Contains(msg, `"`+demoDeniedHostData(zero)+`"`) || !strings.Contains(msg, `"`+strings.Repeat("0", 64)+`"`) {
			t.Errorf("%s: %d %q, want 403 naming %s with the wanted and the presented value", line, status, msg, hostDataClaim)
		}
		return
	}
	k := releasedJWK(t, status, out)
	if want := "https://" + req.AKVEndpoint + "/keys/" + req.Kid + "/"; !strings.HasPrefix(k.Kid, want) {
		t.Errorf("%s: kid %q, want %s...", line, k.Kid, want)
	}
	priv, err := k.PrivateKey()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	switch req.Kid {
	case demoOct:
		if !bytes.Equal(priv.([]byte), keys.demo.oct) {
			t.Errorf("%s: not the demo oct key", line)
		}
	case demoRSA:
		if rk, ok := priv.(*rsa.PrivateKey); !ok || !rk.Equal(keys.demo.rsa) {
			t.Errorf("%s: not the demo RSA key", line)
		}
	case demoEC:
		if !keys.demo.ec.Equal(priv) {
			t.Errorf("%s: not the demo EC key", line)
		}
	case "my-key":
		want, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
		if !bytes.Equal(priv.([]byte), want) {
			t.Errorf("%s: k is %x, not the -kh bytes", line, priv)
		}
	default:
		t.Errorf("unexpected key %q", req.Kid)
	}
}

// ---- the reserved names ----

// Without -emulate the reserved names are a 400 that says to start with
// -emulate, from the API and on the listener, with or without a device.
func TestEmulatedNamesRefusedWithoutEmulate(t *testing.T) {
	t.Parallel()
	withDevice, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: newTestEmulator(t, nil)})
	noDevice, _ := startTestServer(t, serverConfig{}, serverOptions{})
	for _, base := range []string{withDevice, noDevice} {
		for _, c := range []struct{ path, body string }{
			{"/key/release", `{"maa_endpoint":"maa.skr.localhost","akv_endpoint":"vault.skr.localhost","kid":"demo-oct"}`},
			{"/key/release", `{"maa_endpoint":"sharedeus.eus.attest.azure.net","akv_endpoint":"hsm.skr.localhost","kid":"demo-oct"}`},
			{"/key/release", `{"maa_endpoint":"maa.skr.localhost","akv_endpoint":"myvault.vault.azure.net","kid":"demo-oct"}`},
			{"/attest/maa", `{"maa_endpoint":"https://MAA.skr.localhost","runtime_data":"aGVsbG8="}`},
		} {
			status, out := call(t, "POST", base+c.path, c.body)
			if msg, _ := out["error"].(string); status != 400 || !strings.Contains(msg, "start it with -emulate") {
				t.Errorf("%s %s: %d %v", c.path, c.body, status, out)
			}
		}
		req, _ := http.NewRequest("PUT", base+"/keys/k?api-version=7.4", strings.NewReader(`{}`))
		req.Host = emulatedVaultHost
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "-emulate") {
			t.Errorf("listener, Host %s: %d %s", emulatedVaultHost, resp.StatusCode, body)
		}
	}
}

// With -emulate, names under skr.localhost other than the three, and the
// three with a port, are refused before anything is attested.
func TestEmulatedNamesUnknownOrWithPort(t *testing.T) {
	t.Parallel()
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	for _, body := range []string{
		`{"maa_endpoint":"maa.skr.localhost:8443","akv_endpoint":"vault.skr.localhost","kid":"demo-oct"}`,
		`{"maa_endpoint":"maa.skr.localhost","akv_endpoint":"vault.skr.localhost:8443","kid":"demo-oct"}`,
		`{"maa_endpoint":"attest.skr.localhost","akv_endpoint":"vault.skr.localhost","kid":"demo-oct"}`,
		`{"maa_endpoint":"maa.skr.localhost","akv_endpoint":"skr.localhost","kid":"demo-oct"}`,
	} {
		if status, out := call(t, "POST", base+"/key/release", body); status != 400 {
			t.Errorf("%s: %d %v", body, status, out)
		}
	}
}

// The emulated vault's answer is trusted only for the emulated names: its
// JWS chains to the run's CA, which is no root for any other host.
func TestEmulatedCATrustedOnlyForEmulatedNames(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	if a.rootsFor("myvault.vault.azure.net") != nil {
		t.Fatal("another host gets roots other than the sidecar's")
	}
	jws := emulatedReleaseJWS(t, a, emulatedVaultHost, demoOct)
	if _, _, err := verifyReleaseJWS(jws, emulatedVaultHost, a.rootsFor(emulatedVaultHost), time.Now()); err != nil {
		t.Fatalf("the emulated vault's answer does not verify: %v", err)
	}
	for name, c := range map[string]struct{ host string }{
		"another vault name":              {"myvault.vault.azure.net"},
		"the other emulated vault's name": {emulatedHSMHost},
	} {
		if _, _, err := verifyReleaseJWS(jws, c.host, a.rootsFor(c.host), time.Now()); err == nil {
			t.Errorf("%s: verified", name)
		}
	}
	if _, _, err := verifyReleaseJWS(jws, emulatedVaultHost, nil, time.Now()); err == nil {
		t.Error("the run's CA is among the system roots")
	}
	notReady := &emulatedAzure{keys: &emulatedAzureKeys{backgroundWork: &backgroundWork{what: "the emulated Azure services' keys", ready: make(chan struct{})}}}
	if _, _, err := verifyReleaseJWS(jws, emulatedVaultHost, notReady.rootsFor(emulatedVaultHost), time.Now()); err == nil {
		t.Error("roots of keys not yet made verify an answer")
	}
}

// /status answers while the emulated services' keys are still being made,
// and a release waits for them only as long as its deadline.
func TestEmulatedAzureKeysOffTheStartPath(t *testing.T) {
	t.Parallel()
	never := &emulatedAzureKeys{backgroundWork: &backgroundWork{what: "the emulated Azure services' keys", ready: make(chan struct{})}}
	base, _ := startTestServer(t, serverConfig{Emulate: true}, serverOptions{TEE: newTestEmulator(t, nil), AzureKeys: never, RequestTimeout: 300 * time.Millisecond})
	status, out := call(t, "GET", base+"/status", "")
	if status != 200 || out["emulated_azure"] == nil {
		t.Fatalf("/status: %d %v", status, out)
	}
	if status, out := releaseEmulated(t, base, emulatedVaultHost, demoOct); status != http.StatusGatewayTimeout {
		t.Errorf("release without the keys: %d %v, want 504", status, out)
	}
}

// With -emulate every other endpoint still goes to the real service: a
// release from the MAA and Key Vault stand-ins, with their own roots.
func TestEmulateStillReachesRealServices(t *testing.T) {
	t.Parallel()
	tee, certs, hostData := releaseTestDevice(t, deviceEmulator)
	maa := newMAAStandIn(t, certs.ARK)
	kv := newKVStandIn(t, releaseBearer)
	oct := []byte("0123456789abcdef0123456789abcdef")
	kv.addKey(&kvKey{name: "real-key", kty: "oct-HSM", material: oct, policy: standInReleasePolicy(maa.host, hostData)})
	base, _ := startTestServer(t, serverConfig{Emulate: true}, serverOptions{TEE: tee, Roots: getStandInPKI().roots(),
		Getenv: envOf(map[string]string{"UVM_REFERENCE_INFO": "dGVzdA=="})})
	status, out := call(t, "POST", base+"/key/release", `{"maa_endpoint":"`+maa.host+`","akv_endpoint":"`+kv.host+`","kid":"real-key","access_token":"`+releaseBearer+`"}`)
	k := releasedJWK(t, status, out)
	if got, _ := k.PrivateKey(); !bytes.Equal(got.([]byte), oct) {
		t.Error("not the stand-in vault's key")
	}
}

// The built-in clients and the request Microsoft's shell client sends work
// against the emulated names.
func TestClientsAgainstEmulatedAzure(t *testing.T) {
	t.Parallel()
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	keys := readyAzureKeys(t)
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	env := envMap(map[string]string{envReleaseMAA: emulatedMAAHost, envReleaseAKV: emulatedVaultHost, envReleaseKID: demoOct})
	if code := releaseClientMain([]string{"-once", "-addr", base, "-out", out}, &stdout, &stderr, env); code != 0 {
		t.Fatalf("release client: exit %d: %s", code, stderr.String())
	}
	var ans map[string]string
	json.Unmarshal([]byte(readOut(t, out, outKeyRelease, 0o600)), &ans)
	k, err := parseJWK([]byte(ans["key"]))
	if err != nil || k.K != b64url(keys.demo.oct) {
		t.Errorf("keyrelease.out: %v %v", ans, err)
	}
	stdout.Reset()
	stderr.Reset()
	env = envMap(map[string]string{envAttestRuntimeData: "eyJhIjoxfQ==", envAttestMAAEndpoint: emulatedMAAHost})
	if code := attestClientMain([]string{"-once", "-addr", base, "-out", out}, &stdout, &stderr, env); code != 0 {
		t.Fatalf("attest client: exit %d: %s", code, stderr.String())
	}
	json.Unmarshal([]byte(readOut(t, out, outMAAToken, 0o600)), &ans)
	if _, err := parseJWS(ans["token"]); err != nil {
		t.Errorf("maatoken.out: %v", err)
	}

	// Microsoft's skr_client.sh is a curl loop: one round of its request,
	// built from its SkrClient* variables as it builds it.
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl")
	}
	cmd := exec.Command("sh", "-c", `curl -s -X POST -H 'Content-Type: application/json' -d "{\"maa_endpoint\": \"$SkrClientMAAEndpoint\", \"akv_endpoint\": \"$SkrClientAKVEndpoint\", \"kid\": \"$SkrClientKID\"}" "$ADDR/key/release"`)
	cmd.Env = append(os.Environ(), "SkrClientMAAEndpoint="+emulatedMAAHost, "SkrClientAKVEndpoint="+emulatedHSMHost, "SkrClientKID="+demoRSA, "ADDR="+base)
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	if err := json.Unmarshal(raw, &ans); err != nil || ans["key"] == "" {
		t.Fatalf("curl answer %q", raw)
	}
	k, _ = parseJWK([]byte(ans["key"]))
	if priv, err := k.PrivateKey(); err != nil || !keys.demo.rsa.Equal(priv) {
		t.Errorf("the shell client's release is not demo-rsa: %v", err)
	}
}

// A page in a browser may call the reserved names too (they are loopback
// names): with an Origin it is refused like any other browser request.
func TestEmulatedNamesRefuseBrowsers(t *testing.T) {
	t.Parallel()
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	for _, origin := range []string{"", "https://attacker.example"} {
		req, err := http.NewRequest("GET", base+"/keys/demo-oct?api-version=7.4", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = emulatedVaultHost
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.StatusCode == http.StatusForbidden && origin != ""; got != (origin != "") {
			t.Errorf("Origin %q: status %d", origin, resp.StatusCode)
		}
	}
}
