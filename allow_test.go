package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestAllowListConfig(t *testing.T) {
	t.Parallel()
	args, err := parseSkrSideCarArgs(b64Args(`{"allow":{"maa_endpoints":["HTTPS://Shared.Attest.Example.:443/"],"akv_endpoints":["v.vault.azure.net:8443"],"kids":["k1","k2/0123456789abcdef0123456789abcdef"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := args.Allow.MAAEndpoints; len(got) != 1 || got[0] != "shared.attest.example" {
		t.Errorf("maa_endpoints kept as %q, want the canonical spelling", got)
	}
	if len(args.warnings) != 0 {
		t.Errorf("warnings %q", args.warnings)
	}
	for name, json := range map[string]string{
		"empty list":         `{"allow":{"kids":[]}}`,
		"http endpoint":      `{"allow":{"akv_endpoints":["http://v.vault.azure.net"]}}`,
		"endpoint with path": `{"allow":{"maa_endpoints":["m.example/x"]}}`,
		"bad kid":            `{"allow":{"kids":["a/b/c"]}}`,
		"bad kid version":    `{"allow":{"kids":["k/xyz"]}}`,
	} {
		if _, err := parseSkrSideCarArgs(b64Args(json)); err == nil || !strings.Contains(err.Error(), "allow") {
			t.Errorf("%s: err = %v, want a refusal naming allow", name, err)
		}
	}
	if args, err := parseSkrSideCarArgs(b64Args(`{"allow":{"kid":["k"]}}`)); err != nil || len(args.warnings) != 1 || !strings.Contains(args.warnings[0], "allow.kid") {
		t.Errorf("a misspelt list is not warned about: %v %q", err, args.warnings)
	}
}

// A request outside the allow lists is a 403 that names the list, before
// anything is attested or fetched; requests inside them, however spelt,
// are served.
func TestAllowListRefusals(t *testing.T) {
	t.Parallel()
	rsaVersion := fmt.Sprintf("%032x", 2) // keyRSA is the second key the stand-in holds
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute, allow: func(e *releaseEnv) allowList {
		return allowList{
			MAAEndpoints: []string{e.maa.host},
			AKVEndpoints: []string{e.kv.host},
			Kids:         []string{keyOct, keyRSA + "/" + rsaVersion},
		}
	}})
	other := "other.attest.example"
	for _, tc := range []struct {
		name, path, body string
		want             int
		list             string
	}{
		{"allowed", "/key/release", e.releaseBody(keyOct, releaseBearer), 200, ""},
		{"allowed, spelt otherwise", "/key/release", strings.Replace(e.releaseBody(keyOct, releaseBearer), e.maa.host, "HTTPS://"+strings.ToUpper(e.maa.host)+"/", 1), 200, ""},
		{"pinned version", "/key/release", e.releaseBody(keyRSA+"/"+rsaVersion, releaseBearer), 200, ""},
		{"unlisted key", "/key/release", e.releaseBody(keyEC, releaseBearer), 403, "allow.kids"},
		{"pinned key without its version", "/key/release", e.releaseBody(keyRSA, releaseBearer), 403, "allow.kids"},
		{"unlisted MAA", "/key/release", strings.Replace(e.releaseBody(keyOct, releaseBearer), e.maa.host, other, 1), 403, "allow.maa_endpoints"},
		{"unlisted vault", "/key/release", strings.Replace(e.releaseBody(keyOct, releaseBearer), e.kv.host, "rogue.vault.azure.net", 1), 403, "allow.akv_endpoints"},
		{"unlisted MAA for a token", "/attest/maa", `{"maa_endpoint":"` + other + `","runtime_data":"aGVsbG8="}`, 403, "allow.maa_endpoints"},
		{"listed MAA for a token", "/attest/maa", `{"maa_endpoint":"` + e.maa.host + `","runtime_data":"aGVsbG8="}`, 200, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.maa.count()
			status, out := call(t, "POST", e.url+tc.path, tc.body)
			if status != tc.want {
				t.Fatalf("status %d %v, want %d", status, out, tc.want)
			}
			if tc.want == 403 {
				msg, _ := out["error"].(string)
				if !strings.Contains(msg, tc.list) || !strings.Contains(msg, "lists") {
					t.Errorf("error %q does not name %s and its entries", msg, tc.list)
				}
				if out["key"] != nil || out["token"] != nil || e.maa.count() != before {
					t.Error("a refused request reached MAA or got an answer")
				}
			}
		})
	}
}
