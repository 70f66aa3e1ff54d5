package main

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// standInPolicyWith is the recommended policy of the stand-in's tokens with
// one claim's wanted value replaced, or another authority.
func standInPolicyWith(authority, hostData, claim, value string) []byte {
	conds := []any{}
	for _, c := range [][2]string{
		{"x-ms-sevsnpvm-hostdata", hostData},
		{"x-ms-compliance-status", "azure-compliant-uvm"},
		{"x-ms-sevsnpvm-is-debuggable", "false"},
		{"x-ms-sevsnpvm-vmpl", "0"},
	} {
		if c[0] == claim {
			c[1] = value
		}
		conds = append(conds, map[string]any{"claim": c[0], "equals": c[1]})
	}
	return standInJSON(map[string]any{"version": "1.0.0", "anyOf": []any{map[string]any{"authority": authority, "allOf": conds}}})
}

// A release the vault refuses is explained against the key's release
// policy, read from the vault with the same bearer token: the claim that
// fails with both values, an authority that is not the MAA used, the
// missing permission when the policy is met, and what is known when the
// policy cannot be read.
func TestKeyReleaseRefusalExplained(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})
	maa := "https://" + e.maa.host
	otherHostData := strings.Repeat("ab", 32)
	e.kv.addKey(&kvKey{name: "vmpl-key", kty: "oct-HSM", material: e.oct, policy: standInPolicyWith(maa, e.hostData, "x-ms-sevsnpvm-vmpl", "1")})
	e.kv.addKey(&kvKey{name: "authority-key", kty: "oct-HSM", material: e.oct, policy: standInPolicyWith("https://sharedeus.eus.attest.azure.net", e.hostData, "", "")})
	cases := []struct {
		name string
		kid  string
		knob func(kv *kvStandIn, on bool)
		want []string
		not  []string
	}{
		{"host data", keyLocked, nil, []string{
			"does not meet the key's release policy: its only entry, anyOf[0] (authority " + maa + "), fails:",
			`claim x-ms-sevsnpvm-hostdata: the policy wants "` + otherHostData + `", the token carries "` + e.hostData + `"`,
			"Key Vault answered HTTP 403 (Forbidden: Target environment attestation statement cannot be verified. The key release policy is not satisfied.)",
		}, []string{"x-ms-sevsnpvm-vmpl", "no authority of the policy"}},
		{"VMPL", "vmpl-key", nil, []string{
			`claim x-ms-sevsnpvm-vmpl: the policy wants "1", the token carries 0`,
		}, []string{"x-ms-sevsnpvm-hostdata:"}},
		{"authority", "authority-key", nil, []string{
			"the token's issuer " + maa + " is not the authority https://sharedeus.eus.attest.azure.net",
			"no authority of the policy (https://sharedeus.eus.attest.azure.net) is " + maa + ", the maa_endpoint this release used",
		}, nil},
		{"policy met, no release permission", keyOct, func(kv *kvStandIn, on bool) { kv.denyRelease = on }, []string{
			"although this container group's MAA token meets its release policy (met by anyOf[0] (authority " + maa + "))",
			"lacks the release permission: grant it the role Key Vault Crypto Service Release User",
			"Caller is not authorized",
		}, nil},
		{"policy unreadable", keyLocked, func(kv *kvStandIn, on bool) { kv.readForbidden = on }, []string{
			"presents x-ms-sevsnpvm-hostdata " + e.hostData,
			"role Key Vault Crypto Service Release User",
			`the release policy could not be read to tell which: the identity may not read key "` + keyLocked + `" (GET /keys/` + keyLocked + `: Key Vault answered HTTP 403`,
		}, []string{"the policy wants"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.knob != nil {
				e.kv.set(func(kv *kvStandIn) { c.knob(kv, true) })
				defer e.kv.set(func(kv *kvStandIn) { c.knob(kv, false) })
			}
			status, out := e.release(t, c.kid)
			wantNoKey(t, status, out, http.StatusForbidden, append(c.want, "Key Vault: "+e.kv.host+" refused to release key \""+c.kid+"\"", "[x-ms-request-id standin-")...)
			msg, _ := out["error"].(string)
			for _, n := range c.not {
				if strings.Contains(msg, n) {
					t.Errorf("the explanation says %q:\n%s", n, msg)
				}
			}
			for _, tok := range append(e.maa.issuedTokens(), releaseBearer) {
				if enc, ok := leaked(msg, []byte(tok)); ok {
					t.Errorf("the explanation holds a token (%s):\n%s", enc, msg)
				}
			}
		})
	}
	// The vault still releases once it behaves.
	e.mustRelease(t, keyOct)
}

// The emulated vault explains a refusal with the same evaluator: the
// sidecar's message says it once, not twice.
func TestEmulatedRefusalExplainedOnce(t *testing.T) {
	t.Parallel()
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	status, out := releaseEmulated(t, base, emulatedVaultHost, demoDenied)
	wantNoKey(t, status, out, http.StatusForbidden, "does not meet the key's release policy: its only entry", "Key Vault answered HTTP 403 (Forbidden) [x-ms-request-id ")
	msg, _ := out["error"].(string)
	if n := strings.Count(msg, "the policy wants"); n != 1 {
		t.Errorf("the explanation is given %d times:\n%s", n, msg)
	}
}

func TestReleasePolicyOfKey(t *testing.T) {
	t.Parallel()
	policy := `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"v"}]}]}`
	for name, c := range map[string]struct {
		bundle string
		ok     bool
	}{
		"base64url":        {`{"release_policy":{"data":"` + b64url([]byte(policy)) + `"}}`, true},
		"standard base64":  {`{"release_policy":{"data":"eyJ2ZXJzaW9uIjoiMS4wLjAiLCJhbnlPZiI6W119"}}`, true},
		"no policy":        {`{"key":{"kid":"x"}}`, false},
		"empty data":       {`{"release_policy":{"data":""}}`, false},
		"not base64":       {`{"release_policy":{"data":"%%%"}}`, false},
		"not a key bundle": {`[1]`, false},
	} {
		_, err := releasePolicyOfKey([]byte(c.bundle))
		if (err == nil) != c.ok {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestReleaseRole(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]string{
		"myvault.vault.azure.net":       "Key Vault Crypto Service Release User",
		"myhsm.managedhsm.azure.net":    "Managed HSM Crypto Service Release User",
		"myhsm.managedhsm.azure.cn":     "Managed HSM Crypto Service Release User",
		emulatedHSMHost:                 "Managed HSM Crypto Service Release User",
		emulatedVaultHost:               "Key Vault Crypto Service Release User",
		"vault.privatelink.example:443": "Key Vault Crypto Service Release User",
	} {
		if got := releaseRole(host); got != want {
			t.Errorf("%s: %s, want %s", host, got, want)
		}
	}
}

// A key bundle is what a vault (or anything posing as one) answers.
func FuzzReleasePolicyOfKey(f *testing.F) {
	f.Add([]byte(`{"release_policy":{"data":"eyJ2ZXJzaW9uIjoiMS4wLjAiLCJhbnlPZiI6W119"}}`))
	f.Add([]byte(`{"key":{}}`))
	f.Add([]byte(`{"release_policy":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, err := releasePolicyOfKey(b)
		if err != nil {
			return
		}
		if p, err := parseReleasePolicy(raw); err == nil {
			_ = authorityHint(p, "maa.skr.localhost")
		}
	})
}
