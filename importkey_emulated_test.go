package main

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// emulatedImportConfig is an importkeyconfig.json for an emulated vault,
// with the policy the emulator (zero HOST_DATA) meets.
func emulatedImportConfig(t *testing.T, kid, kty, vault string) string {
	t.Helper()
	cfg := map[string]any{
		"key": map[string]any{"kid": kid, "kty": kty, "authority": map[string]string{"endpoint": emulatedMAAHost}, "akv": map[string]string{"endpoint": vault}},
		"claims": [][]map[string]string{{
			{"claim": hostDataClaim, "equals": strings.Repeat("0", 64)},
			{"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
		}},
	}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(t.TempDir(), "importkeyconfig.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func runEmulatedImport(t *testing.T, port string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := importKeyMain(args, &stdout, &stderr, importKeyEnv{Getenv: envOf(map[string]string{"Port": port})})
	return code, stdout.String(), stderr.String()
}

func portOf(t *testing.T, base string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

// An RSA key from a PEM file into the emulated Key Vault, then released
// through the sidecar: the same key comes back. -port wins over Port.
func TestImportKeyIntoEmulatedKeyVault(t *testing.T) {
	t.Parallel()
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	key := standInRSAKey(t, rsaReleased)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	pemPath := filepath.Join(t.TempDir(), "k.pem")
	os.WriteFile(pemPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	cfg := emulatedImportConfig(t, "imported-rsa", ktyRSA, emulatedVaultHost)
	code, stdout, stderr := runEmulatedImport(t, "1", "-c", cfg, "-kp", pemPath, "-port", portOf(t, base))
	if code != 0 || !strings.HasPrefix(stdout, "https://vault.skr.localhost/keys/imported-rsa/") {
		t.Fatalf("exit %d: %s %s", code, stdout, stderr)
	}
	status, out := releaseEmulated(t, base, emulatedVaultHost, "imported-rsa")
	k := releasedJWK(t, status, out)
	priv, err := k.PrivateKey()
	if err != nil || !key.Equal(priv.(*rsa.PrivateKey)) {
		t.Fatalf("released another key: %v", err)
	}
}

// Each way an import into the emulator cannot work is said as such.
func TestImportKeyEmulatedRefusals(t *testing.T) {
	t.Parallel()
	plain, _ := startTestServer(t, serverConfig{}, serverOptions{})
	emulating := startEmulatedAzureServer(t, serverConfig{}, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silent := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close() // nothing answers there now
	hex32 := strings.Repeat("ab", 32)
	oct := emulatedImportConfig(t, "k", ktyOct, emulatedHSMHost)
	for name, c := range map[string]struct {
		args []string
		port string
		want string
	}{
		"no sidecar":               {[]string{"-c", oct, "-kh", hex32}, silent, "no skr sidecar answers at 127.0.0.1:" + silent},
		"sidecar without -emulate": {[]string{"-c", oct, "-kh", hex32}, portOf(t, plain), "was not started with -emulate"},
		"-a":                       {[]string{"-c", oct, "-kh", hex32, "-a"}, portOf(t, emulating), "drop -a"},
		"the MAA is no vault":      {[]string{"-c", emulatedImportConfig(t, "k", ktyOct, emulatedMAAHost), "-kh", hex32}, portOf(t, emulating), "not an emulated vault"},
		"a port on the name":       {[]string{"-c", emulatedImportConfig(t, "k", ktyOct, emulatedHSMHost+":8443"), "-kh", hex32}, portOf(t, emulating), "no port"},
		"Port not a number":        {[]string{"-c", oct, "-kh", hex32}, "eighty", "not a port number"},
		"oct into the Key Vault":   {[]string{"-c", emulatedImportConfig(t, "k", ktyOct, emulatedVaultHost), "-kh", hex32}, portOf(t, emulating), "Managed HSM only"},
		"a port flag out of range": {[]string{"-c", oct, "-kh", hex32, "-port", "70000"}, "", "out of range"},
	} {
		code, _, stderr := runEmulatedImport(t, c.port, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d: %q, want %q", name, code, stderr, c.want)
		}
	}
	// A dry run asks no sidecar.
	code, stdout, stderr := runEmulatedImport(t, silent, "-c", oct, "-kh", hex32, "-dry-run")
	if code != 0 || !strings.Contains(stdout, "PUT https://hsm.skr.localhost/keys/k?api-version=7.4") {
		t.Errorf("dry run: exit %d: %s %s", code, stdout, stderr)
	}
}
