package main

import (
	"bytes"
	"encoding/base64"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// doctorLine is one check line of the doctor's report.
type doctorLine struct {
	status, name, detail string
	fix                  string
}

// parseDoctorOutput reads the report: a header, a line per check (with a
// "what to do" line under any that is not ok), and the summary.
func parseDoctorOutput(t *testing.T, out string) (lines []doctorLine, summary string) {
	t.Helper()
	text := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(text) < 2 || !strings.HasPrefix(text[0], "skr doctor ") {
		t.Fatalf("no header:\n%s", out)
	}
	for _, l := range text[1 : len(text)-1] {
		if fix, ok := strings.CutPrefix(strings.TrimSpace(l), "what to do: "); ok && strings.HasPrefix(l, strings.Repeat(" ", 6)) {
			if len(lines) == 0 {
				t.Fatalf("a fix before any check:\n%s", out)
			}
			lines[len(lines)-1].fix = fix
			continue
		}
		if len(l) < 6+checkNameWidth+2 {
			t.Fatalf("short line %q", l)
		}
		lines = append(lines, doctorLine{status: strings.TrimSpace(l[:6]), name: strings.TrimSpace(l[6 : 6+checkNameWidth]), detail: l[6+checkNameWidth+2:]})
	}
	return lines, text[len(text)-1]
}

// doctorEnvFor is the test environment of an in-process doctor: the shared
// emulated Azure keys, the test keyring, no real device, fast retries. Tests
// that run with -emulate add the shared test emulator as its TEE.
func doctorEnvFor(t *testing.T, env map[string]string) doctorEnv {
	t.Helper()
	gi := absentGuestInterfaces(t)
	return doctorEnv{
		Getenv: envOf(env),
		Server: serverOptions{AzureKeys: sharedAzureKeys(), GuestInterfaces: &gi, Retry: &releaseRetry, SecurityContextRoot: t.TempDir(),
			WrappingKeys: testWrappingKeys(t)},
	}
}

func runDoctorTest(t *testing.T, env doctorEnv, args ...string) (int, []doctorLine, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := doctorMain(args, &out, &errOut, env)
	if code == 2 {
		return code, nil, "", errOut.String()
	}
	lines, summary := parseDoctorOutput(t, out.String())
	return code, lines, summary, out.String()
}

// lineOf is the report's line for check name.
func lineOf(t *testing.T, lines []doctorLine, name string) doctorLine {
	t.Helper()
	for _, l := range lines {
		if l.name == name {
			return l
		}
	}
	t.Fatalf("no check %q in %v", name, lines)
	return doctorLine{}
}

// wantLine checks one line's status and that its detail says each of want.
func wantLine(t *testing.T, lines []doctorLine, name, status string, want ...string) doctorLine {
	t.Helper()
	l := lineOf(t, lines, name)
	if l.status != status {
		t.Errorf("%s: %s, want %s: %s (%s)", name, l.status, status, l.detail, l.fix)
	}
	for _, w := range want {
		if !strings.Contains(l.detail, w) {
			t.Errorf("%s: %q does not say %q", name, l.detail, w)
		}
	}
	if (status == "fail" || status == "warn") && l.fix == "" {
		t.Errorf("%s: %s without what to do", name, status)
	}
	return l
}

var doctorChecks = []string{"guest interface", "security context", "platform certs", "certificate source", "identity token",
	"MAA endpoint", "vault endpoint", "MAA token", "release policy", "key release", "clock"}

// skr doctor -emulate against the emulator and the emulated services: every
// check passes, the release too.
func TestDoctorEmulatedAllOK(t *testing.T) {
	t.Parallel()
	env := doctorEnvFor(t, nil)
	env.Server.TEE = newTestEmulator(t, nil)
	code, lines, summary, out := runDoctorTest(t, env, "-emulate", "-maa", "maa.skr.localhost", "-akv", "vault.skr.localhost", "-kid", "demo-oct", "-release")
	if code != 0 || summary != "11 ok, 0 warnings, 0 failed, 0 skipped" {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for i, l := range lines {
		if l.name != doctorChecks[i] || l.status != "ok" {
			t.Errorf("line %d: %+v, want %s ok", i, l, doctorChecks[i])
		}
	}
	wantLine(t, lines, "release policy", "ok", `key "demo-oct" at vault.skr.localhost: met by anyOf[0] (authority https://maa.skr.localhost)`)
	wantLine(t, lines, "key release", "ok", "released a key of kty oct, kid https://vault.skr.localhost/keys/demo-oct/")
	wantLine(t, lines, "MAA token", "ok", `x-ms-sevsnpvm-hostdata "`+strings.Repeat("0", 64)+`"`, `x-ms-compliance-status "azure-compliant-uvm"`)
	keys := readyAzureKeys(t)
	if enc, found := leaked(out, keys.demo.oct); found {
		t.Errorf("the report holds the released key (%s)", enc)
	}
}

// demo-denied: the policy check fails with the explanation, and so does the
// release; the exit status is 1.
func TestDoctorDeniedPolicy(t *testing.T) {
	t.Parallel()
	env := doctorEnvFor(t, nil)
	env.Server.TEE = newTestEmulator(t, nil)
	code, lines, _, out := runDoctorTest(t, env, "-emulate", "-maa", "maa.skr.localhost", "-akv", "vault.skr.localhost", "-kid", "demo-denied", "-release")
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	var zero [32]byte
	wantLine(t, lines, "release policy", "fail", `not met by this container group's MAA token: its only entry, anyOf[0] (authority https://maa.skr.localhost), fails: claim x-ms-sevsnpvm-hostdata: the policy wants "`+demoDeniedHostData(zero)+`", the token carries "`+strings.Repeat("0", 64)+`"`)
	wantLine(t, lines, "key release", "fail", "Key Vault step", "does not meet the key's release policy")
	wantLine(t, lines, "guest interface", "ok")
}

// No guest interface: the first check fails and says what to do, the
// checks that need a report are skipped.
func TestDoctorNoDevice(t *testing.T) {
	t.Parallel()
	code, lines, _, out := runDoctorTest(t, doctorEnvFor(t, nil))
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	l := wantLine(t, lines, "guest interface", "fail", "no SEV-SNP guest interface", "configfs-tsm", "sev-guest (absent)")
	if !strings.Contains(l.fix, "-emulate") {
		t.Errorf("what to do: %q", l.fix)
	}
	for _, name := range []string{"security context", "platform certs", "identity token", "MAA endpoint", "vault endpoint", "MAA token", "release policy", "key release", "clock"} {
		wantLine(t, lines, name, "skip")
	}
}

// The platform's certificates certify another TCB than the report's, and
// fresh ones cannot be fetched: the certificate checks fail.
func TestDoctorStaleCertificates(t *testing.T) {
	t.Parallel()
	_, stale := newFakeSevGuest(t) // certifies another TCB than the emulator's reports
	args := base64.StdEncoding.EncodeToString([]byte(`{"certcache":{"endpoint_type":"AMD","endpoint":"127.0.0.1:1"}}`))
	env := doctorEnvFor(t, map[string]string{"SkrSideCarArgs": args})
	env.Server.TEE = deviceWithCerts{newTestEmulator(t, nil), stale}
	code, lines, _, out := runDoctorTest(t, env)
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	l := wantLine(t, lines, "platform certs", "fail", "the platform's are stale (they certify TCB 7308000000000003", "the report's REPORTED_TCB is db18000000000004", "fetching fresh ones failed", "https://127.0.0.1:1/vcek/v1/Milan/")
	if !strings.Contains(l.fix, "certcache") {
		t.Errorf("what to do: %q", l.fix)
	}
	wantLine(t, lines, "certificate source", "fail", "AMD KDS (https://127.0.0.1:1) did not give the certificates for TCB db18000000000004")
	wantLine(t, lines, "guest interface", "ok")
}

// An MAA endpoint nobody answers at: its TLS check and the token fail,
// the policy check is skipped.
func TestDoctorUnreachableMAA(t *testing.T) {
	t.Parallel()
	env := doctorEnvFor(t, nil)
	env.Server.TEE = newTestEmulator(t, nil)
	code, lines, _, out := runDoctorTest(t, env, "-emulate", "-maa", "127.0.0.1:1", "-akv", "vault.skr.localhost", "-kid", "demo-oct")
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	wantLine(t, lines, "MAA endpoint", "fail", "127.0.0.1:1: resolves to 127.0.0.1, but TLS:", "connection refused")
	wantLine(t, lines, "MAA token", "fail", "MAA attestation at 127.0.0.1:1")
	wantLine(t, lines, "release policy", "skip")
	wantLine(t, lines, "vault endpoint", "ok")
	wantLine(t, lines, "identity token", "ok")
}

// The managed identity named in SkrSideCarArgs is not attached: IMDS
// refuses, and the identity check says what to attach.
func TestDoctorRefusedIdentity(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "") // system-assigned identity only
	kv := newKVStandIn(t, "unused")
	args := base64.StdEncoding.EncodeToString([]byte(`{"identity":{"client_id":"11111111-2222-3333-4444-555555555555"}}`))
	env := doctorEnvFor(t, map[string]string{"SkrSideCarArgs": args, "AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL})
	env.Server.TEE = newTestEmulator(t, nil)
	env.Server.Roots = getStandInPKI().roots()
	env.Server.IdentityTokenHosts = []string{kv.host}
	code, lines, _, out := runDoctorTest(t, env, "-akv", kv.host)
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	l := wantLine(t, lines, "identity token", "fail", "managed identity via IMDS (client id 11111111-2222-3333-4444-555555555555)", "Identity not found")
	if !strings.Contains(l.fix, "identity.client_id") {
		t.Errorf("what to do: %q", l.fix)
	}
	wantLine(t, lines, "vault endpoint", "ok", kv.host+": resolves to", "certificate for localhost")
	wantLine(t, lines, "guest interface", "ok")
}

func TestDoctorUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-kid", "k"},
		{"-kid", "k", "-akv", "v.vault.azure.net"},
		{"-release", "-maa", "m", "-akv", "v.vault.azure.net"},
		{"-maa", "http://maa.example"},
		{"-kid", "not a name", "-maa", "m", "-akv", "v"},
		{"-addr", "127.0.0.1:1", "-emulate"},
		{"-addr", "https://127.0.0.1:1"},
		{"-nope"},
		{"extra"},
	} {
		var out, errOut bytes.Buffer
		if code := doctorMain(args, &out, &errOut, doctorEnv{Getenv: envOf(nil)}); code != 2 || out.Len() != 0 {
			t.Errorf("%q: exit %d, stdout %q", args, code, out.String())
		}
	}
}

// skr doctor -addr checks a running sidecar through its API: all ok with
// -emulate and demo-oct, a failing policy with demo-denied, and a sidecar
// that is not ready says why.
func TestDoctorAgainstRunningSidecar(t *testing.T) {
	t.Parallel()
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	u, _ := url.Parse(base)
	env := doctorEnv{Getenv: envOf(nil)}
	code, lines, summary, out := runDoctorTest(t, env, "-addr", u.Host, "-maa", "maa.skr.localhost", "-akv", "hsm.skr.localhost", "-kid", "demo-rsa", "-release")
	if code != 0 || summary != "10 ok, 0 warnings, 0 failed, 0 skipped" {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	wantLine(t, lines, "sidecar", "ok", "answers and is ready: tee emulator")
	wantLine(t, lines, "evidence", "ok", "the certificates handed out certify it and it verifies")
	wantLine(t, lines, "key release", "ok", "released a key of kty RSA, kid https://hsm.skr.localhost/keys/demo-rsa/")

	code, lines, _, out = runDoctorTest(t, env, "-addr", u.Host, "-maa", "maa.skr.localhost", "-akv", "vault.skr.localhost", "-kid", "demo-denied")
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	wantLine(t, lines, "release policy", "fail", `claim x-ms-sevsnpvm-hostdata: the policy wants "`)

	noDevice, _ := startTestServer(t, serverConfig{}, serverOptions{})
	nu, _ := url.Parse(noDevice)
	code, lines, _, out = runDoctorTest(t, env, "-addr", nu.Host)
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	wantLine(t, lines, "sidecar", "fail", "is not ready", "no SEV-SNP guest interface")

	code, lines, _, out = runDoctorTest(t, env, "-addr", "127.0.0.1:1")
	if code != 1 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	wantLine(t, lines, "sidecar", "fail", "no answer")
}

func TestClockResult(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	for skew, want := range map[time.Duration]checkStatus{0: checkOK, 30 * time.Second: checkOK, -2 * time.Minute: checkWarn, 3 * time.Minute: checkWarn, 10 * time.Minute: checkFail, -time.Hour: checkFail} {
		claims := map[string]any{"iat": float64(now.Add(-skew).Unix())}
		if got := clockResult(claims, now); got.status != want {
			t.Errorf("skew %v: %v (%s), want %v", skew, got.status, got.detail, want)
		}
	}
	if got := clockResult(nil, now); got.status != checkSkip {
		t.Errorf("no token: %v", got.status)
	}
}

// The README's "When a release fails" runs, as written: the doctor passing
// with demo-oct and failing with demo-denied, and policy check, each with
// the output the README shows (statuses, checks, summary, the explanation).
func TestREADMEWhenAReleaseFails(t *testing.T) {
	t.Parallel()
	steps, files := parseWalkthrough(t, readmeSection(t, "## When a release fails"))
	dir := t.TempDir()
	var doctorRuns, policyRuns int
	for _, st := range steps {
		if st.args == nil || len(st.shown) == 0 {
			t.Fatalf("%s: not a go run command with its output", st.line)
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
		var out, errOut bytes.Buffer
		switch st.args[0] {
		case "doctor":
			env := doctorEnvFor(t, nil)
			env.Server.TEE = newTestEmulator(t, nil)
			code := doctorMain(args, &out, &errOut, env)
			shown, shownSummary := parseDoctorOutput(t, strings.Join(st.shown, "\n")+"\n")
			real, realSummary := parseDoctorOutput(t, out.String())
			if shownSummary != realSummary || len(shown) != len(real) {
				t.Fatalf("%s: the README shows %q, the run gives\n%s", st.line, shownSummary, out.String())
			}
			for i := range real {
				same := shown[i].status == real[i].status && shown[i].name == real[i].name
				if real[i].status == "fail" {
					same = same && shown[i] == real[i]
				}
				if !same {
					t.Errorf("%s: the README shows %+v, the run gives %+v", st.line, shown[i], real[i])
				}
			}
			if want := map[bool]int{true: 0, false: 1}[strings.Contains(realSummary, " 0 failed")]; code != want {
				t.Errorf("%s: exit %d", st.line, code)
			}
			doctorRuns++
		case "policy":
			env := policyEnv{Getenv: envOf(nil), Server: doctorEnvFor(t, nil).Server}
			env.Server.TEE = newTestEmulator(t, nil)
			policyMain(args, &out, &errOut, env)
			real := strings.ReplaceAll(out.String(), dir+string(filepath.Separator), "")
			if shown := strings.Join(st.shown, "\n") + "\n"; shown != real {
				t.Errorf("%s: the README shows\n%s\nthe run gives\n%s%s", st.line, shown, real, errOut.String())
			}
			policyRuns++
		default:
			t.Fatalf("unexpected command %s", st.line)
		}
	}
	if doctorRuns != 2 || policyRuns != 1 {
		t.Errorf("the section runs the doctor %d times and policy check %d times, want 2 and 1", doctorRuns, policyRuns)
	}
}
