package main

import "testing"

func TestHostName(t *testing.T) {
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
