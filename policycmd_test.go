package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// checkClaims are a token's claims as MAA issues them for SEV-SNP, with
// nested runtime data.
const checkClaims = `{"iss":"https://maa.skr.localhost","iat":1700000000,"exp":1700028800,
 "x-ms-sevsnpvm-hostdata":"` + evalHostData + `","x-ms-compliance-status":"azure-compliant-uvm",
 "x-ms-sevsnpvm-is-debuggable":false,"x-ms-sevsnpvm-vmpl":0,
 "x-ms-runtime":{"client":{"name":"app","tier":3},"keys":[{"kid":"k1","kty":"RSA"}]}}`

// checkPolicy is a policy over checkClaims' issuer with these conditions.
func checkPolicy(conds string) string {
	return `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[` + conds + `]}]}`
}

// recommendedConds are the four claims every entry should pin.
const recommendedConds = `{"claim":"x-ms-sevsnpvm-hostdata","equals":"` + evalHostData + `"},
 {"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"},
 {"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"},
 {"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}`

// signedCheckToken is checkClaims as a compact JWT signed by a key nobody
// trusts: policy check reads claims without the signature.
func signedCheckToken(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := signJWS(map[string]any{"typ": "JWT"}, []byte(checkClaims), key, "ES256")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func runPolicyCheck(t *testing.T, env policyEnv, args ...string) (int, string, string) {
	t.Helper()
	if env.Getenv == nil {
		env.Getenv = envOf(nil)
	}
	var out, errOut bytes.Buffer
	code := policyMain(append([]string{"check"}, args...), &out, &errOut, env)
	return code, out.String(), errOut.String()
}

// Policies in every form against tokens in every form: the verdict, its
// explanation and the exit status.
func TestPolicyCheck(t *testing.T) {
	t.Parallel()
	tok := signedCheckToken(t)
	tokens := map[string]string{
		"compact token":      tok,
		"/attest/maa answer": `{"token":"` + tok + `"}`,
		"claims":             checkClaims,
	}
	importConfig := `{"key":{"kid":"k","kty":"oct-HSM","authority":{"endpoint":"maa.skr.localhost"},"akv":{"endpoint":"hsm.skr.localhost"}},
	 "claims":[[` + recommendedConds + `]]}`
	met := checkPolicy(recommendedConds)
	cases := []struct {
		name   string
		policy string
		code   int
		want   []string
	}{
		{"policy JSON", met, 0, []string{"policy:  release policy JSON", "verdict: met: met by anyOf[0] (authority https://maa.skr.localhost)"}},
		{"base64url", base64.RawURLEncoding.EncodeToString([]byte(met)), 0, []string{"release policy, base64url (release_policy.data)", "verdict: met"}},
		{"standard base64", base64.StdEncoding.EncodeToString([]byte(met)), 0, []string{"verdict: met"}},
		{"a key as GET /keys answers", `{"key":{"kid":"https://v/keys/k/1"},"release_policy":{"contentType":"application/json; charset=utf-8","data":"` + b64url([]byte(met)) + `"}}`, 0,
			[]string{"the release policy of a key (GET /keys)", "verdict: met"}},
		{"release_policy object", `{"contentType":"application/json; charset=utf-8","data":"` + b64url([]byte(met)) + `","immutable":false}`, 0,
			[]string{"release_policy (contentType, data)", "verdict: met"}},
		{"importkey config", importConfig, 0, []string{"the policy of an importkey config", "verdict: met"}},
		{"other host data", checkPolicy(strings.Replace(recommendedConds, evalHostData, strings.Repeat("ab", 32), 1)), 1, []string{
			"verdict: not met: its only entry, anyOf[0] (authority https://maa.skr.localhost), fails: claim x-ms-sevsnpvm-hostdata: the policy wants \"" + strings.Repeat("ab", 32) + "\", the token carries \"" + evalHostData + "\""}},
		{"nested x-ms-runtime claim met", checkPolicy(recommendedConds + `,{"claim":"x-ms-runtime.client.name","equals":"app"},{"claim":"x-ms-runtime.client.tier","equals":"3"}`), 0, []string{"verdict: met"}},
		{"nested x-ms-runtime claim not met", checkPolicy(recommendedConds + `,{"claim":"x-ms-runtime.client.name","equals":"other"}`), 1, []string{
			`claim x-ms-runtime.client.name: the policy wants "other", the token carries "app"`}},
		{"nested x-ms-runtime claim absent", checkPolicy(recommendedConds + `,{"claim":"x-ms-runtime.client.region","exists":true}`), 1, []string{
			"claim x-ms-runtime.client.region: the policy wants it present, the token has no such claim"}},
		{"another authority", `{"version":"1.0.0","anyOf":[{"authority":"https://sharedeus.eus.attest.azure.net/","allOf":[` + recommendedConds + `]}]}`, 1, []string{
			"the token's issuer https://maa.skr.localhost is not the authority https://sharedeus.eus.attest.azure.net/"}},
	}
	for _, c := range cases {
		for tname, token := range tokens {
			t.Run(c.name+"/"+tname, func(t *testing.T) {
				code, out, errOut := runPolicyCheck(t, policyEnv{}, "-p", writeTemp(t, "policy", c.policy), "-t", writeTemp(t, "token", token))
				if code != c.code {
					t.Fatalf("exit %d, want %d:\n%s%s", code, c.code, out, errOut)
				}
				for _, w := range c.want {
					if !strings.Contains(out, w) {
						t.Errorf("output lacks %q:\n%s", w, out)
					}
				}
				if c.code == 0 && strings.Contains(out, "warning:") {
					t.Errorf("warnings for the recommended policy:\n%s", out)
				}
				if !strings.Contains(out, "from https://maa.skr.localhost") {
					t.Errorf("the issuer is not named:\n%s", out)
				}
			})
		}
	}
}

// Every lint warning, each on a policy that has just that gap.
func TestPolicyCheckLint(t *testing.T) {
	t.Parallel()
	without := func(claim string) string {
		var kept []string
		for _, c := range strings.Split(recommendedConds, ",\n") {
			if !strings.Contains(c, `"`+claim+`"`) {
				kept = append(kept, c)
			}
		}
		return strings.Join(kept, ",")
	}
	replaced := func(claim, value string) string {
		return without(claim) + `,{"claim":"` + claim + `","equals":` + value + `}`
	}
	cases := []struct {
		name   string
		policy string
		code   int
		want   []string
	}{
		{"no VMPL", checkPolicy(without("x-ms-sevsnpvm-vmpl")), 0, []string{"anyOf[0]: does not require x-ms-sevsnpvm-vmpl = 0"}},
		{"VMPL 2", checkPolicy(replaced("x-ms-sevsnpvm-vmpl", `"2"`)), 1, []string{"anyOf[0]: requires x-ms-sevsnpvm-vmpl = 2, not 0"}},
		{"debuggable not pinned", checkPolicy(without("x-ms-sevsnpvm-is-debuggable")), 0, []string{"does not require x-ms-sevsnpvm-is-debuggable = false"}},
		{"debuggable allowed", checkPolicy(replaced("x-ms-sevsnpvm-is-debuggable", `true`)), 1, []string{"allows a debuggable guest (x-ms-sevsnpvm-is-debuggable = true)"}},
		{"no host data", checkPolicy(without(hostDataClaim)), 0, []string{"does not pin x-ms-sevsnpvm-hostdata"}},
		{"zero host data", checkPolicy(replaced(hostDataClaim, `"`+strings.Repeat("0", 64)+`"`)), 1, []string{"x-ms-sevsnpvm-hostdata is all zeros"}},
		{"no compliance status", checkPolicy(without("x-ms-compliance-status")), 0, []string{"has no x-ms-compliance-status claim"}},
		{"authority without https", `{"version":"1.0.0","anyOf":[{"authority":"maa.skr.localhost","allOf":[` + recommendedConds + `]}]}`, 1, []string{
			`anyOf[0]: authority "maa.skr.localhost" lacks https://`, "warning: not a valid release policy: anyOf[0]: authority", "verdict: not met"}},
		{"empty anyOf", `{"version":"1.0.0","anyOf":[]}`, 1, []string{"the policy's anyOf is empty", "verdict: not met"}},
		{"empty allOf", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[]}]}`, 1, []string{"anyOf[0]: its allOf / anyOf is empty", "verdict: not met"}},
		{"empty nested group", checkPolicy(recommendedConds + `,{"anyOf":[]}`), 1, []string{"anyOf[0], condition 4: a group whose allOf / anyOf is empty"}},
		{"claims pinned inside a one-member anyOf and an allOf group count", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","anyOf":[{"allOf":[` + recommendedConds + `]}]}]}`, 0, nil},
	}
	token := writeTemp(t, "token", checkClaims)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := runPolicyCheck(t, policyEnv{}, "-p", writeTemp(t, "policy", c.policy), "-t", token)
			if code != c.code {
				t.Fatalf("exit %d, want %d:\n%s%s", code, c.code, out, errOut)
			}
			for _, w := range c.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if n := strings.Count(out, "warning: "); n != len(c.want) && c.code == 0 {
				t.Errorf("%d warnings, want %d:\n%s", n, len(c.want), out)
			}
		})
	}
}

func TestPolicyCheckBadInput(t *testing.T) {
	t.Parallel()
	policy := writeTemp(t, "policy", checkPolicy(recommendedConds))
	token := writeTemp(t, "token", checkClaims)
	for name, args := range map[string][]string{
		"no -p":                              {"-t", token},
		"neither -t nor -emulate":            {"-p", policy},
		"both -t and -emulate":               {"-p", policy, "-t", token, "-emulate"},
		"no such policy":                     {"-p", filepath.Join(t.TempDir(), "absent"), "-t", token},
		"policy not JSON":                    {"-p", writeTemp(t, "p", "this is not a policy"), "-t", token},
		"policy an array":                    {"-p", writeTemp(t, "p", "[1]"), "-t", token},
		"importkey config without authority": {"-p", writeTemp(t, "p", `{"key":{"kid":"k"},"claims":[[{"claim":"c","equals":"v"}]]}`), "-t", token},
		"token garbage":                      {"-p", policy, "-t", writeTemp(t, "t", "garbage")},
		"token answer garbage":               {"-p", policy, "-t", writeTemp(t, "t", `{"token":"garbage"}`)},
		"extra argument":                     {"-p", policy, "-t", token, "extra"},
	} {
		if code, out, errOut := runPolicyCheck(t, policyEnv{}, args...); code != 2 || errOut == "" {
			t.Errorf("%s: exit %d:\n%s%s", name, code, out, errOut)
		}
	}
	var out, errOut bytes.Buffer
	if code := policyMain([]string{"lint"}, &out, &errOut, policyEnv{Getenv: envOf(nil)}); code != 2 {
		t.Errorf("skr policy lint: exit %d", code)
	}
}

// -emulate: the claims of the token a release would send, from the
// emulator's evidence; a policy for another MAA gets a note on what its
// claims alone would give.
func TestPolicyCheckEmulated(t *testing.T) {
	t.Parallel()
	env := policyEnv{Server: serverOptions{TEE: newTestEmulator(t, nil), AzureKeys: sharedAzureKeys(), GuestInterfaces: &guestInterfaces{}, WrappingKeys: testWrappingKeys(t)}}
	zero := strings.Repeat("0", 64)
	ours := strings.Replace(recommendedConds, evalHostData, zero, 1)
	code, out, errOut := runPolicyCheck(t, env, "-emulate", "-p", writeTemp(t, "p", checkPolicy(ours+`,{"claim":"x-ms-runtime.keys","exists":true}`)))
	if code != 0 || !strings.Contains(out, "verdict: met") || !strings.Contains(out, "the emulated MAA's token for the emulator's evidence, from https://maa.skr.localhost") {
		t.Errorf("exit %d:\n%s%s", code, out, errOut)
	}
	other := `{"version":"1.0.0","anyOf":[{"authority":"https://sharedeus.eus.attest.azure.net","allOf":[` + ours + `]}]}`
	code, out, errOut = runPolicyCheck(t, env, "-emulate", "-p", writeTemp(t, "p", other))
	if code != 1 || !strings.Contains(out, "note:    the emulated MAA issues its tokens as https://maa.skr.localhost; from https://sharedeus.eus.attest.azure.net the same claims would give: met") {
		t.Errorf("exit %d:\n%s%s", code, out, errOut)
	}
}

// A policy file and a token file are whatever the user points at.
func FuzzParsePolicyInput(f *testing.F) {
	for _, s := range []string{
		checkPolicy(recommendedConds),
		base64.RawURLEncoding.EncodeToString([]byte(checkPolicy(recommendedConds))),
		`{"release_policy":{"data":"` + b64url([]byte(checkPolicy(recommendedConds))) + `"}}`,
		`{"contentType":"application/json","data":"e30"}`,
		`{"key":{"authority":{"endpoint":"maa.skr.localhost"}},"claims":[[{"claim":"c","equals":"v"}]]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"a","anyOf":[{"anyOf":[]},{"allOf":[{"claim":"x","exists":true}]}]}]}`,
		`{"version":"1.0.0","anyOf":[]}`, `[]`, ``, `eyJ9`,
	} {
		f.Add([]byte(s))
	}
	claims := tokenClaims(f, checkClaims)
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := parsePolicyInput(b)
		if err != nil {
			return
		}
		_ = lintReleasePolicy(in.policy)
		var out bytes.Buffer
		in.source = "fuzz"
		reportPolicyCheck(&out, in, claims, "fuzz", true)
	})
}

func FuzzParseClaimsInput(f *testing.F) {
	for _, s := range []string{checkClaims, `{"token":"a.b.c"}`, `eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln`, `{}`, `null`, ``} {
		f.Add([]byte(s))
	}
	policy, err := decodeReleasePolicy([]byte(checkPolicy(recommendedConds)))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		claims, err := parseClaimsInput(b)
		if err != nil {
			return
		}
		_ = evaluateReleasePolicy(policy, claims).String()
		_ = describeMAAClaims(claims, time.Now())
		_ = clockResult(claims, time.Now())
	})
}
