package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// tokenClaims decodes claims as the emulated vault does (numbers kept as
// written).
func tokenClaims(t testing.TB, s string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

const evalHostData = "cadd74f71ebb8fbf9782baab649612520f3c416bc5ce9ac768808ddc8d9b031c"

// evalClaims is an SEV-SNP token as MAA issues it, trimmed.
var evalClaims = `{"iss":"https://maa.skr.localhost","x-ms-sevsnpvm-hostdata":"` + evalHostData + `",
 "x-ms-compliance-status":"azure-compliant-uvm","x-ms-sevsnpvm-is-debuggable":false,"x-ms-sevsnpvm-vmpl":0,
 "x-ms-sevsnpvm-guestsvn":2,"x-ms-runtime":{"keys":[{"kid":"k1"}],"client":{"name":"app","tier":3}}}`

func TestEvaluateReleasePolicy(t *testing.T) {
	t.Parallel()
	standard := `{"claim":"x-ms-sevsnpvm-hostdata","equals":"` + evalHostData + `"},
		{"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"},
		{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"},
		{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}`
	tests := []struct {
		name    string
		policy  string
		met     bool
		closest int
		explain []string // substrings of the explanation
	}{
		{"the recommended policy", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[` + standard + `]}]}`,
			true, 0, []string{"met by anyOf[0]"}},
		{"authority with a trailing slash and another case", `{"version":"1.0.0","anyOf":[{"authority":"https://MAA.skr.localhost/","allOf":[` + standard + `]}]}`,
			true, 0, nil},
		{"booleans and numbers as JSON values", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[
			{"claim":"x-ms-sevsnpvm-is-debuggable","equals":false},{"claim":"x-ms-sevsnpvm-vmpl","equals":0},{"claim":"x-ms-sevsnpvm-guestsvn","equals":2}]}]}`,
			true, 0, nil},
		{"version 0.2", `{"version":"0.2","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}`,
			true, 0, nil},
		{"nested x-ms-runtime claims", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[
			{"claim":"x-ms-runtime.client.name","equals":"app"},{"claim":"x-ms-runtime.client.tier","equals":"3"}]}]}`,
			true, 0, nil},
		{"exists and absent", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[
			{"claim":"x-ms-runtime.keys","exists":true},{"claim":"x-ms-inittime","exists":false}]}]}`,
			true, 0, nil},
		{"authority-level anyOf", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","anyOf":[
			{"claim":"x-ms-sevsnpvm-vmpl","equals":"3"},{"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"}]}]}`,
			true, 0, nil},
		{"nested groups", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[
			{"anyOf":[{"claim":"x-ms-sevsnpvm-hostdata","equals":"00"},{"allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"},{"claim":"x-ms-sevsnpvm-guestsvn","equals":"2"}]}]}]}]}`,
			true, 0, nil},
		{"second entry met", `{"version":"1.0.0","anyOf":[
			{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-hostdata","equals":"` + strings.Repeat("ab", 32) + `"}]},
			{"authority":"https://maa.skr.localhost","allOf":[` + standard + `]}]}`,
			true, 1, []string{"met by anyOf[1]"}},

		{"other host data", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[
			{"claim":"x-ms-sevsnpvm-hostdata","equals":"` + strings.Repeat("ab", 32) + `"},{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}`,
			false, 0, []string{"its only entry, anyOf[0] (authority https://maa.skr.localhost), fails: ",
				`claim x-ms-sevsnpvm-hostdata: the policy wants "` + strings.Repeat("ab", 32) + `", the token carries "` + evalHostData + `"`}},
		{"missing claim", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-idkeydigest","equals":"00"}]}]}`,
			false, 0, []string{`claim x-ms-sevsnpvm-idkeydigest: the policy wants "00", the token has no such claim`}},
		{"debuggable written as a string compares as a string", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"False"}]}]}`,
			false, 0, []string{`the policy wants "False", the token carries false`}},
		{"an object is no scalar", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-runtime","equals":"{}"}]}]}`,
			false, 0, []string{"the token carries an object"}},
		{"exists false on a present claim", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-runtime","exists":false}]}]}`,
			false, 0, []string{"claim x-ms-runtime: the policy wants it absent, the token carries an object"}},
		{"other authority", `{"version":"1.0.0","anyOf":[{"authority":"https://sharedeus.eus.attest.azure.net","allOf":[` + standard + `]}]}`,
			false, 0, []string{"the token's issuer https://maa.skr.localhost is not the authority https://sharedeus.eus.attest.azure.net"}},
		{"authority with a path is another authority", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost/tenant","allOf":[` + standard + `]}]}`,
			false, 0, []string{"is not the authority"}},
		{"closest prefers the matching authority", `{"version":"1.0.0","anyOf":[
			{"authority":"https://other.attest.azure.net","allOf":[` + standard + `]},
			{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"1"},{"claim":"x-ms-sevsnpvm-guestsvn","equals":"9"}]}]}`,
			false, 1, []string{"the closest entry, anyOf[1]", `x-ms-sevsnpvm-vmpl: the policy wants "1", the token carries 0`, `x-ms-sevsnpvm-guestsvn: the policy wants "9", the token carries 2`}},
		{"closest has the fewest failures", `{"version":"1.0.0","anyOf":[
			{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"1"},{"claim":"x-ms-sevsnpvm-guestsvn","equals":"9"}]},
			{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"1"}]}]}`,
			false, 1, []string{"the closest entry, anyOf[1]"}},
		{"no alternative of an anyOf holds", `{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[
			{"anyOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"1"},{"claim":"x-ms-sevsnpvm-guestsvn","equals":"9"}]}]}]}`,
			false, 0, []string{`none of (claim x-ms-sevsnpvm-vmpl: the policy wants "1", the token carries 0 | claim x-ms-sevsnpvm-guestsvn: the policy wants "9", the token carries 2)`}},
	}
	claims := tokenClaims(t, evalClaims)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseReleasePolicy([]byte(tc.policy))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			v := evaluateReleasePolicy(p, claims)
			if v.Met != tc.met || v.Closest != tc.closest {
				t.Errorf("met %v closest %d, want %v %d: %s", v.Met, v.Closest, tc.met, tc.closest, v)
			}
			for _, want := range tc.explain {
				if !strings.Contains(v.String(), want) {
					t.Errorf("explanation %q lacks %q", v.String(), want)
				}
			}
		})
	}
}

func TestEvaluateReleasePolicyWithoutIssuer(t *testing.T) {
	t.Parallel()
	p, err := parseReleasePolicy([]byte(`{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	v := evaluateReleasePolicy(p, tokenClaims(t, `{"x-ms-sevsnpvm-vmpl":0}`))
	if v.Met || !strings.Contains(v.String(), "issuer (none)") {
		t.Errorf("a token without iss: %v %s", v.Met, v)
	}
}

func TestParseReleasePolicyRefuses(t *testing.T) {
	t.Parallel()
	ok := `{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}`
	for name, policy := range map[string]string{
		"not JSON":               `{`,
		"an array":               `[]`,
		"unknown version":        `{"version":"2.0","anyOf":[{"authority":"https://a","allOf":[` + ok + `]}]}`,
		"no version":             `{"anyOf":[{"authority":"https://a","allOf":[` + ok + `]}]}`,
		"no authorities":         `{"version":"1.0.0","anyOf":[]}`,
		"http authority":         `{"version":"1.0.0","anyOf":[{"authority":"http://a","allOf":[` + ok + `]}]}`,
		"bare host authority":    `{"version":"1.0.0","anyOf":[{"authority":"maa.skr.localhost","allOf":[` + ok + `]}]}`,
		"allOf and anyOf":        `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[` + ok + `],"anyOf":[` + ok + `]}]}`,
		"empty allOf":            `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[]}]}`,
		"no operator":            `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c"}]}]}`,
		"unsupported operator":   `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","notEquals":"x"}]}]}`,
		"legacy condition form":  `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","condition":"equals","value":"x"}]}]}`,
		"two operators":          `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"x","exists":true}]}]}`,
		"object value":           `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":{"a":1}}]}]}`,
		"null value":             `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":null}]}]}`,
		"exists not a boolean":   `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","exists":"yes"}]}]}`,
		"claim and group":        `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"x","allOf":[` + ok + `]}]}]}`,
		"operator without claim": `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"equals":"x"}]}]}`,
		"empty nested group":     `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"anyOf":[]}]}]}`,
		"too deep":               `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[` + strings.Repeat(`{"allOf":[`, maxPolicyDepth) + ok + strings.Repeat(`]}`, maxPolicyDepth) + `]}]}`,
		"too many conditions":    `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[` + strings.TrimSuffix(strings.Repeat(ok+",", maxPolicyConditions+1), ",") + `]}]}`,
		"too large":              `{"version":"1.0.0","pad":"` + strings.Repeat("x", maxPolicySize) + `"}`,
	} {
		if _, err := parseReleasePolicy([]byte(policy)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// The policies importkey writes are policies the evaluator reads.
func TestImportKeyPolicyParses(t *testing.T) {
	t.Parallel()
	var warnings []string
	sets := claimSets{{{Claim: hostDataClaim, Equals: json.RawMessage(`"` + evalHostData + `"`)}, {Claim: "x-ms-sevsnpvm-vmpl", Equals: json.RawMessage(`"0"`)}}}
	pol, err := buildReleasePolicy("https://maa.skr.localhost", sets, nil, &warnings)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := marshalJSON(pol)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("exists")) || bytes.Contains(raw, []byte(`"anyOf":null`)) {
		t.Errorf("importkey's policy carries members it did not set: %s", raw)
	}
	p, err := parseReleasePolicy(raw)
	if err != nil {
		t.Fatalf("importkey's policy does not parse: %v: %s", err, raw)
	}
	if v := evaluateReleasePolicy(p, tokenClaims(t, evalClaims)); !v.Met {
		t.Errorf("not met: %s", v)
	}
}

func FuzzParseReleasePolicy(f *testing.F) {
	for _, s := range []string{
		`{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"https://a","anyOf":[{"anyOf":[{"claim":"x-ms-runtime.keys","exists":true}]}]}]}`,
		`{"version":"0.2","anyOf":[{"authority":"https://a/","allOf":[{"claim":"c","equals":1.5e3}]}]}`,
		`{}`, `[]`, `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":null}]}]}`,
	} {
		f.Add([]byte(s))
	}
	claims := tokenClaims(f, evalClaims)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseReleasePolicy(b)
		if err != nil {
			return
		}
		v := evaluateReleasePolicy(p, claims)
		if len(v.Branches) != len(p.AnyOf) || v.Closest < 0 || v.Closest >= len(v.Branches) {
			t.Fatalf("verdict %+v for %d authorities", v, len(p.AnyOf))
		}
		if v.Met != v.Branches[v.Closest].met() {
			t.Fatalf("met %v but closest branch met %v", v.Met, v.Branches[v.Closest].met())
		}
		_ = v.String()
	})
}
