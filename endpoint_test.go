package main

import (
	"net/http"
	"strings"
	"testing"
)

func TestHostName(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"myvault.vault.azure.net":                         "myvault.vault.azure.net",
		" MyVault.Vault.Azure.NET. ":                      "myvault.vault.azure.net",
		"myvault.vault.azure.net:443":                     "myvault.vault.azure.net",
		"myvault.vault.azure.net.:443":                    "myvault.vault.azure.net",
		"169.254.169.254/metadata/THIM/amd/certification": "169.254.169.254",
		"169.254.169.254:80/metadata":                     "169.254.169.254",
		"[::1]:8443":                                      "::1",
		"[::1]":                                           "::1",
		"127.0.0.1:1234":                                  "127.0.0.1",
		"":                                                "",
	} {
		if got := hostName(in); got != want {
			t.Errorf("hostName(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every spelling of one service is one endpoint: the credential cache and
// the allow lists are keyed by it.
func TestNormalizeEndpointCanonical(t *testing.T) {
	t.Parallel()
	for want, spellings := range map[string][]string{
		"maa.example": {"maa.example", "MAA.Example", "maa.example.", "https://maa.example", "HTTPS://maa.example/",
			"maa.example:443", "https://Maa.Example.:443/", " maa.example "},
		"maa.example:8443": {"maa.example:8443", "https://MAA.example.:8443", "maa.example:8443/"},
		"127.0.0.1:8443":   {"127.0.0.1:8443", "https://127.0.0.1:8443/"},
		"[::1]:8443":       {"[::1]:8443", "[0:0:0:0:0:0:0:1]:8443", "https://[::1]:8443"},
	} {
		for _, s := range spellings {
			got, err := normalizeEndpoint("maa_endpoint", s)
			if err != nil || got != want {
				t.Errorf("normalizeEndpoint(%q) = %q, %v; want %q", s, got, err, want)
			}
		}
	}
}

func TestNormalizeEndpointRefusesNonCanonicalOrOversized(t *testing.T) {
	t.Parallel()
	label63 := strings.Repeat("a", 63)
	name253 := strings.Repeat(label63+".", 3) + strings.Repeat("b", 253-3*64) // 253 characters
	if len(name253) != 253 {
		t.Fatalf("test name is %d characters", len(name253))
	}
	if got, err := normalizeEndpoint("maa_endpoint", name253); err != nil || got != name253 {
		t.Fatalf("a 253-character name: %q, %v", got, err)
	}
	for name, in := range map[string]string{
		"port with leading zeros":      "127.0.0.1:0047443",
		"port zero":                    "maa.example:0",
		"port too large":               "maa.example:65536",
		"name of 254 characters":       name253 + "c",
		"label of 64 characters":       label63 + "a.example",
		"empty label":                  "maa..example",
		"character a name cannot have": "maa!.example",
		"percent-encoded name":         "maa%2eexample",
		"IPv6 zone":                    "[fe80::1%25eth0]:443",
		"half a megabyte":              strings.Repeat("a", 500_000) + ".example",
		"query without value":          "maa.example?",
	} {
		got, err := normalizeEndpoint("maa_endpoint", in)
		if err == nil {
			t.Errorf("%s: normalizeEndpoint = %q, want an error", name, got)
			continue
		}
		if statusFor(err) != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, statusFor(err))
		}
		if len(err.Error()) > 2*maxEchoed+200 {
			t.Errorf("%s: the error repeats %d bytes of the input", name, len(err.Error()))
		}
	}
}

func TestNormalizeEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"sharedeus.eus.attest.azure.net", "sharedeus.eus.attest.azure.net", true},
		{"https://myvault.vault.azure.net", "myvault.vault.azure.net", true},
		{"https://myvault.vault.azure.net/", "myvault.vault.azure.net", true},
		{"MyHSM.managedhsm.azure.net", "myhsm.managedhsm.azure.net", true},
		{"127.0.0.1:8443", "127.0.0.1:8443", true},
		{" localhost:443 ", "localhost", true},
		{"http://myvault.vault.azure.net", "", false},
		{"ftp://x", "", false},
		{"https://user@host", "", false},
		{"host/path", "", false},
		{"host?x=1", "", false},
		{"host:99999", "", false},
		{"", "", false},
		{"https://", "", false},
	}
	for _, tc := range tests {
		got, err := normalizeEndpoint("maa_endpoint", tc.in)
		if tc.ok && (err != nil || got != tc.want) {
			t.Errorf("normalizeEndpoint(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if !tc.ok {
			if err == nil {
				t.Errorf("normalizeEndpoint(%q) = %q, want an error", tc.in, got)
			} else if statusFor(err) != http.StatusBadRequest {
				t.Errorf("normalizeEndpoint(%q) status %d, want 400", tc.in, statusFor(err))
			}
		}
	}
}
