package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A vault that answers 200 without key.kid, echoing what it got: the
// message about it never shows key material, in any encoding.
func TestImportAnswerWithoutKidIsRedacted(t *testing.T) {
	t.Parallel()
	rsaKey, _ := testKeys(t)
	pemPath := writeTempFile(t, "key.pem", pemPKCS8(t, rsaKey))
	for _, tc := range []struct {
		kty  string
		args []string
	}{
		{"oct-HSM", []string{"-kh", strings.Repeat("a5", 32)}},
		{"RSA-HSM", []string{"-kp", pemPath}},
	} {
		t.Run(tc.kty, func(t *testing.T) {
			v := newVaultStandIn(t, "echo")
			v.echo = true
			cfg := writeImportConfig(t, v, importCase{KTY: tc.kty})
			code, out, errOut := runImport(t, v, nil, append([]string{"-c", cfg, "-keydir", t.TempDir()}, tc.args...)...)
			if code == 0 || !strings.Contains(errOut, "no key.kid") || tc.kty == "oct-HSM" && !strings.Contains(errOut, "[redacted]") {
				t.Errorf("exit %d, stderr %q", code, errOut)
			}
			key := v.lastBody()["key"].(map[string]any)
			for _, m := range []string{"k", "d", "p", "q", "dp", "dq", "qi"} {
				if s, _ := key[m].(string); s != "" {
					b, _ := b64urlDecode(s)
					if enc, found := leaked(out+errOut, b); found {
						t.Errorf("the output shows JWK member %s (%s)", m, enc)
					}
				}
			}
			if strings.Contains(out+errOut, testBearer) {
				t.Error("the bearer token was printed")
			}
		})
	}
}

func pemPKCS8(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// A failed upload that never reached the vault leaves no key file behind,
// so the next run starts; one that may have reached it keeps the file and
// says how to import the same key again.
func TestImportCleanupAfterFailedUpload(t *testing.T) {
	t.Parallel()
	closedPort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return addr
	}
	for _, tc := range []struct {
		name string
		kty  string
		// setup returns the vault to send to and the client to send with.
		setup    func(t *testing.T, v *vaultStandIn) (endpoint string, client *http.Client)
		kept     bool
		wantText string
	}{
		{"connection refused", "oct-HSM", func(t *testing.T, v *vaultStandIn) (string, *http.Client) {
			return closedPort(), v.srv.Client()
		}, false, "never reached the vault"},
		{"TLS failure", "EC-HSM", func(t *testing.T, v *vaultStandIn) (string, *http.Client) {
			return v.host(), &http.Client{} // does not trust the stand-in's certificate
		}, false, "never reached the vault"},
		{"connection cut after sending", "oct-HSM", func(t *testing.T, v *vaultStandIn) (string, *http.Client) {
			v.hangUp = true
			return v.host(), v.srv.Client()
		}, true, "-kh "},
		{"connection cut after sending (EC)", "EC-HSM", func(t *testing.T, v *vaultStandIn) (string, *http.Client) {
			v.hangUp = true
			return v.host(), v.srv.Client()
		}, true, "-kp "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := newVaultStandIn(t, "retry")
			endpoint, client := tc.setup(t, v)
			cfgMap := importConfigMap(t, v, tc.kty)
			cfgMap["key"].(map[string]any)["akv"].(map[string]any)["endpoint"] = endpoint
			cfg := writeJSONFile(t, cfgMap)
			dir := t.TempDir()
			code, _, errOut := runImportWith(t, client, "-c", cfg, "-keydir", dir)
			if code == 0 || !strings.Contains(errOut, tc.wantText) {
				t.Fatalf("exit %d, stderr %q; want %q", code, errOut, tc.wantText)
			}
			entries, _ := os.ReadDir(dir)
			if kept := len(entries) > 0; kept != tc.kept {
				t.Fatalf("key files kept: %v, want %v (%v)", kept, tc.kept, entries)
			}
			if !tc.kept {
				// Nothing in the way of the next run, -dry-run or not.
				if code, _, errOut := runImportWith(t, client, "-c", cfg, "-keydir", dir, "-dry-run"); code != 0 {
					t.Fatalf("the next -dry-run: exit %d: %s", code, errOut)
				}
				return
			}
			// The hint names the file; following it imports the same key.
			path := filepath.Join(dir, entries[0].Name())
			flag := map[bool]string{true: "-kp", false: "-kh"}[strings.HasSuffix(path, ".pem")]
			if !strings.Contains(errOut, flag+" "+path) {
				t.Fatalf("stderr %q does not say %s %s", errOut, flag, path)
			}
			v.hangUp = false
			cfgMap["key"].(map[string]any)["akv"].(map[string]any)["endpoint"] = v.host()
			code, out, errOut := runImportWith(t, v.srv.Client(), "-c", writeJSONFile(t, cfgMap), "-keydir", t.TempDir(), flag, path)
			checkSuccessOutput(t, code, out, errOut, "retry")
		})
	}
}

func importConfigMap(t *testing.T, v *vaultStandIn, kty string) map[string]any {
	t.Helper()
	var m map[string]any
	raw, err := os.ReadFile(writeImportConfig(t, v, importCase{KTY: kty}))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// runImportWith runs importkey with the given client and one try.
func runImportWith(t *testing.T, client *http.Client, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut strings.Builder
	code := importKeyMain(args, &out, &errOut, importKeyEnv{Client: client, Getenv: envMap(nil), Retry: &retryPolicy{Attempts: 1}})
	return code, out.String(), errOut.String()
}

func TestImportNeverSent(t *testing.T) {
	t.Parallel()
	urlErr := func(err error) error { return &url.Error{Op: "Put", URL: "https://v", Err: err} }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"DNS", urlErr(&net.OpError{Op: "dial", Err: &net.DNSError{Err: "no such host", Name: "v", IsNotFound: true}}), true},
		{"DNS, explained", fmt.Errorf("import: cannot resolve (%w)", &net.DNSError{Err: "no such host"}), true},
		{"refused", urlErr(&net.OpError{Op: "dial", Err: errors.New("connection refused")}), true},
		{"unknown CA", urlErr(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), true},
		{"wrong host", urlErr(x509.HostnameError{Host: "v"}), true},
		{"not TLS", urlErr(tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), true},
		{"alert", urlErr(tls.AlertError(40)), true},
		{"read after sending", urlErr(&net.OpError{Op: "read", Err: errors.New("connection reset by peer")}), false},
		{"EOF", urlErr(errors.New("EOF")), false},
		{"HTTP 500", &upstreamError{Service: "Key Vault", StatusCode: 500}, false},
		{"timeout", fmt.Errorf("Key Vault: %w", errors.New("context deadline exceeded")), false},
	} {
		if got := importNeverSent(tc.err); got != tc.want {
			t.Errorf("%s: importNeverSent = %v, want %v", tc.name, got, tc.want)
		}
	}
}
