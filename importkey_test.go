package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

const (
	testBearer   = "kv-bearer-token-must-never-be-printed"
	testHostData = "73973b78d70cc68353426de188db5dfc57e5b766e399935fb73a61127ea26d20"
	testMAA      = "sharedeus.eus.attest.azure.net"
)

var (
	testKeysOnce sync.Once
	testRSAKey   *rsa.PrivateKey
	testECKey    *ecdsa.PrivateKey
)

// testKeys makes one RSA-2048 and one P-384 key per test binary: RSA
// generation is slow on a shared machine.
func testKeys(t *testing.T) (*rsa.PrivateKey, *ecdsa.PrivateKey) {
	t.Helper()
	testKeysOnce.Do(func() {
		var err error
		if testRSAKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if testECKey, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			panic(err)
		}
	})
	return testRSAKey, testECKey
}

// vaultStandIn is a TLS Key Vault that checks an import as the real one
// does: method, path, api-version, bearer token, a body whose JWK matches
// its kty, and a release policy. It answers with a KeyBundle.
type vaultStandIn struct {
	t        *testing.T
	srv      *httptest.Server
	token    string
	kid      string
	requests atomic.Int32
	status   int    // non-zero: answer this error instead
	code     string // its error code
	echo     bool   // answer 200 with the request echoed, without key.kid
	hangUp   bool   // read the request, then close the connection unanswered

	mu   sync.Mutex
	body map[string]any
}

func newVaultStandIn(t *testing.T, kid string) *vaultStandIn {
	v := &vaultStandIn{t: t, token: testBearer, kid: kid}
	v.srv = httptest.NewUnstartedServer(http.HandlerFunc(v.serve))
	// A client that refuses the certificate is a case under test, not
	// news for the test's output.
	v.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	v.srv.StartTLS()
	t.Cleanup(v.srv.Close)
	return v
}

func (v *vaultStandIn) host() string { return strings.TrimPrefix(v.srv.URL, "https://") }

func (v *vaultStandIn) fail(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (v *vaultStandIn) serve(w http.ResponseWriter, r *http.Request) {
	v.requests.Add(1)
	switch {
	case r.Method != http.MethodPut:
		v.fail(w, 405, "BadRequest", "want PUT")
		return
	case r.URL.Path != "/keys/"+v.kid:
		v.fail(w, 404, "NotFound", "path "+r.URL.Path)
		return
	case r.URL.Query().Get("api-version") != "7.4" || len(r.URL.Query()) != 1:
		v.fail(w, 400, "BadParameter", "api-version "+r.URL.RawQuery)
		return
	case r.Header.Get("Authorization") != "Bearer "+v.token:
		w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/x", resource="https://vault.azure.net"`)
		v.fail(w, 401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
		return
	case r.Header.Get("Content-Type") != "application/json":
		v.fail(w, 400, "BadParameter", "content type")
		return
	}
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		v.fail(w, 400, "BadParameter", "body is not JSON")
		return
	}
	if msg := checkImportShape(body); msg != "" {
		v.fail(w, 400, "BadParameter", msg)
		return
	}
	v.mu.Lock()
	v.body = body
	v.mu.Unlock()
	if v.status != 0 {
		v.fail(w, v.status, v.code, "stand-in refuses: "+v.code)
		return
	}
	if v.echo {
		w.Header().Set("Content-Type", "application/json")
		w.Write(raw)
		return
	}
	if v.hangUp {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	key := body["key"].(map[string]any)
	writeJSON(w, 200, map[string]any{
		"key":            map[string]any{"kid": "https://" + r.Host + "/keys/" + v.kid + "/0123456789abcdef", "kty": key["kty"]},
		"attributes":     map[string]any{"enabled": true, "exportable": true},
		"release_policy": body["release_policy"],
	})
}

// checkImportShape is what the service itself refuses with 400.
func checkImportShape(body map[string]any) string {
	key, ok := body["key"].(map[string]any)
	if !ok {
		return "no key"
	}
	var need []string
	switch key["kty"] {
	case "oct-HSM":
		need = []string{"k"}
	case "RSA-HSM":
		need = []string{"n", "e", "d", "p", "q", "dp", "dq", "qi"}
	case "EC-HSM":
		need = []string{"crv", "x", "y", "d"}
	default:
		return fmt.Sprintf("kty %v", key["kty"])
	}
	for _, f := range need {
		if s, _ := key[f].(string); s == "" {
			return "JWK property " + f + " is missing for kty " + key["kty"].(string)
		}
	}
	if rp, _ := body["release_policy"].(map[string]any); rp == nil {
		return "Exportable keys must have release policy"
	}
	return ""
}

func (v *vaultStandIn) lastBody() map[string]any {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.body
}

type importCase struct {
	KTY     string
	KeyOps  []string
	Extra   map[string]any // more fields of "key"
	Deriv   map[string]any // key_derivation
	NoToken bool
}

// writeImportConfig writes an importkeyconfig.json for the stand-in.
func writeImportConfig(t *testing.T, v *vaultStandIn, c importCase) string {
	t.Helper()
	key := map[string]any{
		"kid":       v.kid,
		"kty":       c.KTY,
		"authority": map[string]any{"endpoint": testMAA},
		"akv":       map[string]any{"endpoint": v.host(), "api_version": "api-version=7.4", "bearer_token": testBearer},
	}
	if c.NoToken {
		key["akv"].(map[string]any)["bearer_token"] = ""
	}
	if c.KeyOps != nil {
		key["key_ops"] = c.KeyOps
	}
	for k, val := range c.Extra {
		key[k] = val
	}
	cfg := map[string]any{"key": key, "claims": testClaims(), "identity": map[string]any{"client_id": "11111111-2222-3333-4444-555555555555"}}
	if c.Deriv != nil {
		cfg["key_derivation"] = c.Deriv
	}
	return writeJSONFile(t, cfg)
}

func testClaims() [][]map[string]any {
	return [][]map[string]any{{
		{"claim": "x-ms-sevsnpvm-hostdata", "equals": testHostData},
		{"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
		{"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
		{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"},
	}}
}

// expectedPolicy is the release policy the claims must turn into, written
// out independently of the code under test.
func expectedPolicy() any {
	var v any
	json.Unmarshal([]byte(`{"version":"1.0.0","anyOf":[{"authority":"https://`+testMAA+`","allOf":[
		{"claim":"x-ms-sevsnpvm-hostdata","equals":"`+testHostData+`"},
		{"claim":"x-ms-compliance-status","equals":"azure-compliant-uvm"},
		{"claim":"x-ms-sevsnpvm-is-debuggable","equals":"false"},
		{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}`), &v)
	return v
}

func writeJSONFile(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return writeTempFile(t, "importkeyconfig.json", b)
}

func writeTempFile(t *testing.T, name string, b []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// runImport runs importkey with a client that trusts the stand-in.
func runImport(t *testing.T, v *vaultStandIn, getenv func(string) string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := importKeyEnv{Getenv: getenv, Retry: &retryPolicy{Attempts: 1}}
	if v != nil {
		env.Client = v.srv.Client()
		env.IdentityTokenHosts = []string{v.srv.Listener.Addr().String()}
	}
	if env.Getenv == nil {
		env.Getenv = envMap(nil)
	}
	code := importKeyMain(args, &out, &errOut, env)
	return code, out.String(), errOut.String()
}

func b64urlBig(t *testing.T, key map[string]any, field string) *big.Int {
	t.Helper()
	s, _ := key[field].(string)
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 {
		t.Fatalf("JWK %s = %q is not b64url-raw: %v", field, s, err)
	}
	return new(big.Int).SetBytes(b)
}

// checkCommonBody checks what every import carries.
func checkCommonBody(t *testing.T, body map[string]any, kty string, keyOps []string) map[string]any {
	t.Helper()
	if body == nil {
		t.Fatal("the vault got no body")
	}
	if body["hsm"] != true {
		t.Errorf("hsm = %v", body["hsm"])
	}
	attrs, _ := body["attributes"].(map[string]any)
	if attrs["exportable"] != true || attrs["enabled"] != true {
		t.Errorf("attributes = %v", attrs)
	}
	key := body["key"].(map[string]any)
	if key["kty"] != kty {
		t.Errorf("kty = %v, want %s", key["kty"], kty)
	}
	if _, ok := key["kid"]; ok {
		t.Errorf("the JWK carries a kid: %v", key["kid"])
	}
	var gotOps []string
	if ops, ok := key["key_ops"].([]any); ok {
		for _, o := range ops {
			gotOps = append(gotOps, o.(string))
		}
	}
	if !reflect.DeepEqual(gotOps, keyOps) {
		t.Errorf("key_ops = %v, want %v", gotOps, keyOps)
	}
	rp := body["release_policy"].(map[string]any)
	if rp["contentType"] != "application/json; charset=utf-8" || rp["immutable"] != false {
		t.Errorf("release_policy = %v", rp)
	}
	data, err := base64.RawURLEncoding.DecodeString(rp["data"].(string))
	if err != nil {
		t.Fatalf("release_policy.data is not b64url-raw: %v", err)
	}
	var pol any
	if err := json.Unmarshal(data, &pol); err != nil {
		t.Fatalf("release_policy.data is not JSON: %v", err)
	}
	if !reflect.DeepEqual(pol, expectedPolicy()) {
		t.Errorf("release policy = %s", data)
	}
	return key
}

func checkSuccessOutput(t *testing.T, code int, out, errOut, kid string) {
	t.Helper()
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.SplitN(out, "\n", 2)
	if !strings.HasPrefix(lines[0], "https://") || !strings.HasSuffix(lines[0], "/keys/"+kid+"/0123456789abcdef") {
		t.Errorf("first line %q is not the new key's id", lines[0])
	}
	var pol any
	if err := json.Unmarshal([]byte(lines[1]), &pol); err != nil || !reflect.DeepEqual(pol, expectedPolicy()) {
		t.Errorf("the printed release policy %q is not the expected one (%v)", lines[1], err)
	}
	if strings.Contains(out+errOut, testBearer) {
		t.Error("the bearer token was printed")
	}
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return info.Mode().Perm()
}

func TestImportOctKey(t *testing.T) {
	t.Parallel()
	keyBytes, _ := hex.DecodeString("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	hexFile := writeTempFile(t, "key.hex", []byte(hex.EncodeToString(keyBytes)+"\n"))
	rawFile := writeTempFile(t, "key.bin", keyBytes)
	for _, tc := range []struct {
		name string
		kh   string
	}{
		{"hex argument", hex.EncodeToString(keyBytes)},
		{"file holding hex", hexFile},
		{"file holding raw bytes", rawFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "octkey")
			cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM", KeyOps: []string{"encrypt", "decrypt"}})
			dir := t.TempDir()
			code, out, errOut := runImport(t, v, nil, "-c", cfg, "-kh", tc.kh, "-keydir", dir)
			checkSuccessOutput(t, code, out, errOut, "octkey")
			key := checkCommonBody(t, v.lastBody(), "oct-HSM", []string{"encrypt", "decrypt"})
			if k, _ := base64.RawURLEncoding.DecodeString(key["k"].(string)); !bytes.Equal(k, keyBytes) {
				t.Errorf("k = %x, want %x", k, keyBytes)
			}
			if key["key_size"] != float64(256) {
				t.Errorf("key_size = %v", key["key_size"])
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("a given key was written out without -out: %v", entries)
			}
			if strings.Contains(out+errOut, hex.EncodeToString(keyBytes)) || strings.Contains(out+errOut, key["k"].(string)) {
				t.Error("the key was printed")
			}
		})
	}
}

func TestImportGeneratedOctKeyIsWrittenPrivately(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "gen-oct")
	cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM"})
	dir := t.TempDir()
	code, out, errOut := runImport(t, v, nil, "-c", cfg, "-keydir", dir)
	checkSuccessOutput(t, code, out, errOut, "gen-oct")
	key := checkCommonBody(t, v.lastBody(), "oct-HSM", nil)
	path := filepath.Join(dir, "gen-oct.hex")
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("mode %v", m)
	}
	saved, _ := os.ReadFile(path)
	k, _ := base64.RawURLEncoding.DecodeString(key["k"].(string))
	if len(k) != 32 || strings.TrimSpace(string(saved)) != hex.EncodeToString(k) {
		t.Errorf("the saved key %q is not the imported one (%d bytes)", saved, len(k))
	}
	if strings.Contains(out+errOut, hex.EncodeToString(k)) {
		t.Error("the generated key was printed")
	}
}

func TestImportRSAKeyFromPEM(t *testing.T) {
	t.Parallel()
	rsaKey, _ := testKeys(t)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	for _, tc := range []struct {
		name  string
		block *pem.Block
	}{
		{"PKCS#8", &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}},
		{"PKCS#1", &pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "rsakey")
			cfg := writeImportConfig(t, v, importCase{KTY: "RSA-HSM", KeyOps: []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"}})
			pemFile := writeTempFile(t, "key.pem", pem.EncodeToMemory(tc.block))
			code, out, errOut := runImport(t, v, nil, "-c", cfg, "-kp", pemFile, "-keydir", t.TempDir())
			checkSuccessOutput(t, code, out, errOut, "rsakey")
			key := checkCommonBody(t, v.lastBody(), "RSA-HSM", []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"})
			checkRSAJWK(t, key, rsaKey)
			if strings.Contains(out+errOut, key["d"].(string)) {
				t.Error("the private exponent was printed")
			}
		})
	}
}

func checkRSAJWK(t *testing.T, key map[string]any, want *rsa.PrivateKey) {
	t.Helper()
	for _, f := range []struct {
		name string
		want *big.Int
	}{
		{"n", want.N}, {"e", big.NewInt(int64(want.E))}, {"d", want.D},
		{"p", want.Primes[0]}, {"q", want.Primes[1]},
		{"dp", want.Precomputed.Dp}, {"dq", want.Precomputed.Dq}, {"qi", want.Precomputed.Qinv},
	} {
		if got := b64urlBig(t, key, f.name); got.Cmp(f.want) != 0 {
			t.Errorf("JWK %s does not match the key", f.name)
		}
	}
}

// hkdfSHA256 is RFC 5869 for one block, written out with HMAC so the test
// does not trust the code's use of crypto/hkdf.
func hkdfSHA256(secret, salt []byte, info string) []byte {
	ext := hmac.New(sha256.New, salt)
	ext.Write(secret)
	prk := ext.Sum(nil)
	exp := hmac.New(sha256.New, prk)
	exp.Write([]byte(info))
	exp.Write([]byte{1})
	return exp.Sum(nil)
}

func TestImportGeneratedRSAKeyWithDerivedKey(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "gen-rsa")
	salt := "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e"
	cfg := writeImportConfig(t, v, importCase{KTY: "RSA-HSM", Extra: map[string]any{"key_size": 2048},
		Deriv: map[string]any{"salt": salt, "label": "Model Encryption Key"}})
	dir := t.TempDir()
	code, out, errOut := runImport(t, v, nil, "-c", cfg, "-out", "-keydir", dir)
	checkSuccessOutput(t, code, out, errOut, "gen-rsa")
	key := checkCommonBody(t, v.lastBody(), "RSA-HSM", nil)

	pemPath := filepath.Join(dir, "gen-rsa.pem")
	if m := fileMode(t, pemPath); m != 0o600 {
		t.Errorf("%s mode %v", pemPath, m)
	}
	raw, _ := os.ReadFile(pemPath)
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("%s is not a PKCS#8 PEM", pemPath)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	priv := parsed.(*rsa.PrivateKey)
	if priv.N.BitLen() != 2048 {
		t.Errorf("generated %d bits, config asked 2048", priv.N.BitLen())
	}
	checkRSAJWK(t, key, priv)

	derivedPath := filepath.Join(dir, "gen-rsa.derived.hex")
	if m := fileMode(t, derivedPath); m != 0o600 {
		t.Errorf("%s mode %v", derivedPath, m)
	}
	saltBytes, _ := hex.DecodeString(salt)
	want := hex.EncodeToString(hkdfSHA256(priv.D.Bytes(), saltBytes, "Model Encryption Key"))
	got, _ := os.ReadFile(derivedPath)
	if strings.TrimSpace(string(got)) != want {
		t.Errorf("derived key %q, want %s", got, want)
	}
	if strings.Contains(out+errOut, want) || strings.Contains(out+errOut, "PRIVATE KEY") {
		t.Error("key material was printed")
	}
}

func TestImportECKey(t *testing.T) {
	t.Parallel()
	_, ecKey := testKeys(t)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(ecKey)
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	for _, tc := range []struct {
		name  string
		block *pem.Block
	}{
		{"PKCS#8", &pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}},
		{"SEC1", &pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "eckey")
			cfg := writeImportConfig(t, v, importCase{KTY: "EC-HSM", KeyOps: []string{"sign", "verify"}})
			pemFile := writeTempFile(t, "key.pem", pem.EncodeToMemory(tc.block))
			code, out, errOut := runImport(t, v, nil, "-c", cfg, "-kp", pemFile, "-keydir", t.TempDir())
			checkSuccessOutput(t, code, out, errOut, "eckey")
			key := checkCommonBody(t, v.lastBody(), "EC-HSM", []string{"sign", "verify"})
			if key["crv"] != "P-384" {
				t.Errorf("crv = %v", key["crv"])
			}
			if b64urlBig(t, key, "d").Cmp(ecKey.D) != 0 || b64urlBig(t, key, "x").Cmp(ecKey.X) != 0 || b64urlBig(t, key, "y").Cmp(ecKey.Y) != 0 {
				t.Error("JWK x, y or d does not match the key")
			}
		})
	}
}

func TestImportGeneratedECKey(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "gen-ec")
	cfg := writeImportConfig(t, v, importCase{KTY: "EC-HSM", Extra: map[string]any{"crv": "P-521"}})
	dir := t.TempDir()
	code, out, errOut := runImport(t, v, nil, "-c", cfg, "-keydir", dir)
	checkSuccessOutput(t, code, out, errOut, "gen-ec")
	key := checkCommonBody(t, v.lastBody(), "EC-HSM", nil)
	if key["crv"] != "P-521" {
		t.Errorf("crv = %v", key["crv"])
	}
	path := filepath.Join(dir, "gen-ec.pem")
	if m := fileMode(t, path); m != 0o600 {
		t.Errorf("mode %v", m)
	}
	raw, _ := os.ReadFile(path)
	block, _ := pem.Decode(raw)
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.(*ecdsa.PrivateKey).D.Cmp(b64urlBig(t, key, "d")) != 0 {
		t.Error("the saved key is not the imported one")
	}
}

// importIMDS is the IMDS stand-in of identity_test.go issuing token to the
// identity clientID.
func importIMDS(t *testing.T, clientID, token string) (string, *atomic.Int32) {
	imds := newIMDSStandIn(t, clientID)
	imds.token = token
	return imds.URL, &imds.calls
}

func TestImportWithManagedIdentityToken(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "mi-key")
	v.token = "token-from-imds"
	imds, calls := importIMDS(t, "11111111-2222-3333-4444-555555555555", v.token)
	cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM", NoToken: true})
	getenv := envMap(map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds})
	code, out, errOut := runImport(t, v, getenv, "-a", "-c", cfg, "-kh", strings.Repeat("ab", 32), "-keydir", t.TempDir())
	checkSuccessOutput(t, code, out, errOut, "mi-key")
	if calls.Load() == 0 {
		t.Error("IMDS was not asked")
	}
	if strings.Contains(out+errOut, v.token) {
		t.Error("the IMDS token was printed")
	}
}

// The identity's token opens every vault the identity may use: -a never
// sends it to a host that is not a Key Vault or Managed HSM.
func TestImportManagedIdentityTokenOnlyForVaultHosts(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "mi-key")
	imds, calls := importIMDS(t, "11111111-2222-3333-4444-555555555555", "token-from-imds")
	cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM", NoToken: true})
	getenv := envMap(map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds})
	var out, errOut bytes.Buffer
	env := importKeyEnv{Getenv: getenv, Retry: &retryPolicy{Attempts: 1}, Client: v.srv.Client()} // no IdentityTokenHosts
	code := importKeyMain([]string{"-a", "-c", cfg, "-kh", strings.Repeat("ab", 32), "-keydir", t.TempDir()}, &out, &errOut, env)
	if code == 0 || !strings.Contains(errOut.String(), "is not a Key Vault or Managed HSM host") {
		t.Fatalf("exit %d, stderr %q", code, errOut.String())
	}
	if calls.Load() != 0 || v.requests.Load() != 0 {
		t.Errorf("IMDS asked %d times, vault %d times", calls.Load(), v.requests.Load())
	}
}

func TestImportDryRunSendsAndWritesNothing(t *testing.T) {
	t.Parallel()
	rsaKey, _ := testKeys(t)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	pemFile := writeTempFile(t, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	imds, imdsCalls := importIMDS(t, "11111111-2222-3333-4444-555555555555", "imds-token")
	getenv := envMap(map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds})
	octHex := strings.Repeat("cd", 32)
	for _, tc := range []struct {
		name   string
		kty    string
		args   []string
		secret string
	}{
		{"oct given", "oct-HSM", []string{"-kh", octHex}, octHex},
		{"oct generated", "oct-HSM", nil, ""},
		{"RSA given, with -a and -out", "RSA-HSM", []string{"-kp", pemFile, "-a", "-out"}, b64url(rsaKey.D.Bytes())},
		{"EC generated", "EC-HSM", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "dry")
			cfg := writeImportConfig(t, v, importCase{KTY: tc.kty})
			dir := t.TempDir()
			args := append([]string{"-dry-run", "-c", cfg, "-keydir", dir}, tc.args...)
			code, out, errOut := runImport(t, v, getenv, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			if n := v.requests.Load(); n != 0 {
				t.Errorf("the vault got %d requests", n)
			}
			if strings.Contains(out+errOut, testBearer) || strings.Contains(out+errOut, "imds-token") {
				t.Error("a bearer token was printed")
			}
			if tc.secret != "" && strings.Contains(out+errOut, tc.secret) {
				t.Error("private key material was printed")
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("dry run wrote %v", entries)
			}
			for _, want := range []string{"PUT https://" + v.host() + "/keys/dry?api-version=7.4", `"x-ms-sevsnpvm-hostdata"`, `"hsm": true`, `"kty": "` + tc.kty + `"`, "<redacted"} {
				if !strings.Contains(out, want) {
					t.Errorf("dry run output lacks %q:\n%s", want, out)
				}
			}
		})
	}
	if imdsCalls.Load() != 0 {
		t.Errorf("dry run asked IMDS %d times", imdsCalls.Load())
	}
}

// Through dispatch, as subcommand and as link (dry run: the system client
// would not trust the stand-in).
func TestImportKeyDispatch(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "linked")
	cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM"})
	for _, argv0 := range [][]string{{"skr", "importkey"}, {"/bin/importkey"}} {
		argv := append(argv0, "-dry-run", "-c", cfg, "-kh", strings.Repeat("00", 16))
		code, out, errOut := runCmd(t, argv...)
		if code != 0 || !strings.Contains(out, "/keys/linked?api-version=7.4") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", argv, code, out, errOut)
		}
	}
	if code, _, errOut := runCmd(t, "importkey"); code != 2 || !strings.Contains(errOut, "-c CONFIG is required") {
		t.Errorf("without -c: exit %d, %q", code, errOut)
	}
	if code, _, errOut := runCmd(t, "skr", "importkey", "-h"); code != 0 || !strings.Contains(errOut, "-dry-run") {
		t.Errorf("-h: exit %d, %q", code, errOut)
	}
}

func TestImportVaultErrorsAreOneReadableLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		code   string
		token  string
		want   string
	}{
		{"401", 0, "", "wrong-token", "expired or for another audience"},
		{"403", 403, "Forbidden", "", "Key Vault Crypto Officer"},
		{"400", 400, "BadParameter", "", "matches the key material"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "errkey")
			v.status, v.code = tc.status, tc.code
			if tc.token != "" {
				v.token = tc.token
			}
			cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM"})
			dir := t.TempDir()
			code, out, errOut := runImport(t, v, nil, "-c", cfg, "-keydir", dir)
			if code == 0 || out != "" {
				t.Fatalf("exit %d, stdout %q", code, out)
			}
			if strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, tc.want) || !strings.Contains(errOut, "HTTP") {
				t.Errorf("stderr %q: want one line with %q", errOut, tc.want)
			}
			if strings.Contains(errOut, testBearer) {
				t.Error("the bearer token was printed")
			}
			// The vault refused: the generated key is useless and removed.
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("left %v behind", entries)
			}
		})
	}
}

func TestImportBadConfigsWriteNothing(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "bad")
	good := func() map[string]any {
		return map[string]any{
			"key": map[string]any{"kid": "bad", "kty": "RSA-HSM",
				"authority": map[string]any{"endpoint": testMAA},
				"akv":       map[string]any{"endpoint": v.host(), "bearer_token": testBearer}},
			"claims": testClaims(),
		}
	}
	keyOf := func(m map[string]any) map[string]any { return m["key"].(map[string]any) }
	for _, tc := range []struct {
		name   string
		mutate func(map[string]any)
		raw    string
		args   []string
		want   string
	}{
		{name: "malformed JSON", raw: `{"key": {"kid": "bad",`, want: "not valid JSON"},
		{name: "trailing data", raw: `{} {}`, want: "data after"},
		{name: "missing kid", mutate: func(m map[string]any) { delete(keyOf(m), "kid") }, want: "key.kid is missing"},
		{name: "kid with a slash", mutate: func(m map[string]any) { keyOf(m)["kid"] = "../x" }, want: "not a Key Vault key name"},
		{name: "placeholder kid", mutate: func(m map[string]any) { keyOf(m)["kid"] = "<key-vault-key-name>" }, want: `key.kid still holds the example's placeholder "<key-vault-key-name>": put the name`},
		{name: "kid as a key identifier", mutate: func(m map[string]any) { keyOf(m)["kid"] = "https://myhsm.managedhsm.azure.net/keys/k1" }, want: "put only the key's name in key.kid"},
		{name: "placeholder kty", mutate: func(m map[string]any) { keyOf(m)["kty"] = "<key-type-of-key-imported-to-akv>" }, want: `key.kty still holds the example's placeholder "<key-type-of-key-imported-to-akv>": put "oct-HSM"`},
		{name: "oct-HSM into a Key Vault", mutate: func(m map[string]any) {
			keyOf(m)["kty"] = "oct-HSM"
			keyOf(m)["akv"].(map[string]any)["endpoint"] = "myvault.vault.azure.net"
		}, want: `key.kty is oct-HSM, which only a Managed HSM holds, but key.akv.endpoint myvault.vault.azure.net is a Key Vault: set key.kty to "RSA-HSM"`},
		{name: "no kty, into a Key Vault", mutate: func(m map[string]any) {
			delete(keyOf(m), "kty")
			keyOf(m)["akv"].(map[string]any)["endpoint"] = "https://myvault.vault.azure.cn"
		}, want: "key.kty is not set, so oct-HSM, which only a Managed HSM holds"},
		{name: "placeholder vault endpoint", mutate: func(m map[string]any) { keyOf(m)["akv"].(map[string]any)["endpoint"] = "<key-vault-endpoint>" }, want: "key.akv.endpoint still holds the example's placeholder"},
		{name: "placeholder api version", mutate: func(m map[string]any) { keyOf(m)["akv"].(map[string]any)["api_version"] = "<api-version>" }, want: "key.akv.api_version still holds"},
		{name: "placeholder authority", mutate: func(m map[string]any) { keyOf(m)["authority"] = map[string]any{"endpoint": "<maa-endpoint>"} }, want: "key.authority.endpoint still holds the example's placeholder"},
		{name: "placeholder bearer token", mutate: func(m map[string]any) {
			keyOf(m)["akv"].(map[string]any)["bearer_token"] = "<aad-token-with-permissions-to-key-vault>"
		}, want: "key.akv.bearer_token still holds the example's placeholder \"<aad-token-with-permissions-to-key-vault>\": put the accessToken of az account get-access-token --resource https://vault.azure.net"},
		{name: "placeholder bearer token, dry run", mutate: func(m map[string]any) {
			keyOf(m)["akv"].(map[string]any)["bearer_token"] = "<aad-token>"
		}, args: []string{"-dry-run"}, want: "key.akv.bearer_token still holds"},
		{name: "placeholder client id with -a", mutate: func(m map[string]any) { m["identity"] = map[string]any{"client_id": "<client-id>"} }, args: []string{"-a"}, want: "identity.client_id still holds"},
		{name: "placeholder salt with -out", mutate: func(m map[string]any) {
			m["key_derivation"] = map[string]any{"salt": "<salt-for-key-derivation-valid-only-for-RSA-HSM-keys>", "label": "x"}
		}, args: []string{"-out"}, want: "key_derivation.salt still holds the example's placeholder"},
		{name: "placeholder label with -out", mutate: func(m map[string]any) {
			m["key_derivation"] = map[string]any{"label": "<label-for-derived-key-valid-only-for-RSA-HSM-keys>"}
		}, args: []string{"-out"}, want: `remove label for the default "Symmetric Encryption Key"`},
		{name: "placeholder claim value", mutate: func(m map[string]any) {
			m["claims"] = [][]map[string]any{{{"claim": "x-ms-sevsnpvm-hostdata", "equals": testHostData}, {"claim": "x-ms-compliance-status", "equals": "<status>"}}}
		}, want: `claim "x-ms-compliance-status" still holds the example's placeholder`},
		{name: "unknown kty", mutate: func(m map[string]any) { keyOf(m)["kty"] = "AES" }, want: `key.kty "AES" is not supported`},
		{name: "missing vault endpoint", mutate: func(m map[string]any) { delete(keyOf(m), "akv") }, want: "key.akv.endpoint is missing"},
		{name: "http vault endpoint", mutate: func(m map[string]any) { keyOf(m)["akv"].(map[string]any)["endpoint"] = "http://kv" }, want: "only https"},
		{name: "akv and mhsm", mutate: func(m map[string]any) { keyOf(m)["mhsm"] = keyOf(m)["akv"] }, want: "keep one"},
		{name: "missing authority", mutate: func(m map[string]any) { delete(keyOf(m), "authority") }, want: "key.authority.endpoint is missing"},
		{name: "no claims", mutate: func(m map[string]any) { delete(m, "claims") }, want: "no claims"},
		{name: "empty claims list", mutate: func(m map[string]any) { m["claims"] = [][]any{{}} }, want: "is empty"},
		{name: "claims twice", mutate: func(m map[string]any) { keyOf(m)["claims"] = testClaims() }, want: "both at the top level"},
		{name: "placeholder hostdata", mutate: func(m map[string]any) {
			m["claims"] = [][]map[string]any{{{"claim": "x-ms-sevsnpvm-hostdata", "equals": "<hash-digest-of-the-security-policy>"}}}
		}, want: "still holds the example's placeholder \"<hash-digest-of-the-security-policy>\": put the digest of your security policy"},
		{name: "hostdata not hex", mutate: func(m map[string]any) {
			m["claims"] = [][]map[string]any{{{"claim": "x-ms-sevsnpvm-hostdata", "equals": "ABC"}}}
		}, want: "64 lower-case hex"},
		{name: "object claim value", mutate: func(m map[string]any) {
			m["claims"] = [][]map[string]any{{{"claim": "x", "equals": map[string]any{}}}}
		}, want: "string, number or boolean"},
		{name: "claim without equals", mutate: func(m map[string]any) {
			m["claims"] = [][]map[string]any{{{"claim": "x"}}}
		}, want: `no "equals"`},
		{name: "claims not a list", mutate: func(m map[string]any) { m["claims"] = "x" }, want: `"claims" must be`},
		{name: "unknown key op", mutate: func(m map[string]any) { keyOf(m)["key_ops"] = []string{"encrypt", "frob"} }, want: `"frob"`},
		{name: "bad api version", mutate: func(m map[string]any) { keyOf(m)["akv"].(map[string]any)["api_version"] = "7.4&x=y" }, want: "api_version"},
		{name: "bad RSA size", mutate: func(m map[string]any) { keyOf(m)["key_size"] = 1024 }, want: "2048, 3072 or 4096"},
		{name: "bad curve", mutate: func(m map[string]any) { keyOf(m)["kty"] = "EC-HSM"; keyOf(m)["crv"] = "P-192" }, want: "P-256, P-384 or P-521"},
		{name: "bad salt hex", mutate: func(m map[string]any) { m["key_derivation"] = map[string]any{"salt": "zz"} }, args: []string{"-out"}, want: "salt is not hex"},
		{name: "bool flag with a stray value", args: []string{"-out", "maybe"}, want: `unexpected arguments ["maybe"]`},
		{name: "no token", mutate: func(m map[string]any) { delete(keyOf(m)["akv"].(map[string]any), "bearer_token") }, want: "no bearer token"},
		{name: "bad -kh hex", mutate: func(m map[string]any) { keyOf(m)["kty"] = "oct-HSM" }, args: []string{"-kh", "zz"}, want: "neither an existing file nor a hex string"},
		{name: "-kh of a wrong size", mutate: func(m map[string]any) { keyOf(m)["kty"] = "oct-HSM" }, args: []string{"-kh", "0011"}, want: "16, 24 or 32 bytes"},
		{name: "-kh with RSA-HSM", args: []string{"-kh", strings.Repeat("00", 32)}, want: "use -kp"},
		{name: "-kp missing file", args: []string{"-kp", "/nonexistent/key.pem"}, want: "-kp"},
		{name: "-kp not PEM", args: []string{"-kp", "/dev/null"}, want: "no PEM block"},
		{name: "-out with EC-HSM", mutate: func(m map[string]any) { keyOf(m)["kty"] = "EC-HSM" }, args: []string{"-out"}, want: "EC-HSM has neither"},
		{name: "missing keydir", args: []string{"-keydir", "/nonexistent"}, want: "not a folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var cfg string
			if tc.raw != "" {
				cfg = writeTempFile(t, "importkeyconfig.json", []byte(tc.raw))
			} else {
				m := good()
				if tc.mutate != nil {
					tc.mutate(m)
				}
				cfg = writeJSONFile(t, m)
			}
			dir := t.TempDir()
			args := append([]string{"-c", cfg, "-keydir", dir}, tc.args...)
			code, out, errOut := runImport(t, v, nil, args...)
			if code == 0 {
				t.Fatalf("exit 0; stdout %q", out)
			}
			if strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "skr importkey: ") || !strings.Contains(errOut, tc.want) {
				t.Errorf("stderr %q: want one line with %q", errOut, tc.want)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("wrote %v", entries)
			}
		})
	}
	if n := v.requests.Load(); n != 0 {
		t.Errorf("the vault got %d requests from bad configs", n)
	}
}

// A key file that exists is never overwritten, and nothing is imported.
func TestImportRefusesToOverwriteKeyFile(t *testing.T) {
	t.Parallel()
	v := newVaultStandIn(t, "exists")
	cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM"})
	dir := t.TempDir()
	path := filepath.Join(dir, "exists.hex")
	os.WriteFile(path, []byte("precious\n"), 0o600)
	code, _, errOut := runImport(t, v, nil, "-c", cfg, "-keydir", dir)
	if code == 0 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("exit %d, %q", code, errOut)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious\n" || v.requests.Load() != 0 {
		t.Error("the existing file was touched or the key imported")
	}
}

// The config shapes Microsoft's importkey accepts: "mhsm" for "akv",
// api_version with its "api-version=" prefix or without, claims under
// "key", one flat list.
func TestImportConfigVariants(t *testing.T) {
	t.Parallel()
	flat := testClaims()[0]
	for _, tc := range []struct {
		name string
		cfg  string
	}{
		{"mhsm and flat claims", `{"key":{"kid":"k","kty":"oct-HSM","authority":{"endpoint":"` + testMAA + `"},
			"mhsm":{"endpoint":"HOST","api_version":"7.4","bearer_token":"T"}},"claims":` + mustJSON(flat) + `}`},
		{"claims under key, https endpoints", `{"key":{"kid":"k","kty":"oct-HSM","authority":{"endpoint":"https://` + testMAA + `/"},
			"akv":{"endpoint":"https://HOST","bearer_token":"T"},"claims":` + mustJSON(testClaims()) + `}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "k")
			cfg := strings.NewReplacer("HOST", v.host(), `"T"`, `"`+testBearer+`"`).Replace(tc.cfg)
			code, out, errOut := runImport(t, v, nil, "-c", writeTempFile(t, "c.json", []byte(cfg)), "-kh", strings.Repeat("11", 24))
			checkSuccessOutput(t, code, out, errOut, "k")
			key := checkCommonBody(t, v.lastBody(), "oct-HSM", nil)
			if key["key_size"] != float64(192) {
				t.Errorf("key_size = %v", key["key_size"])
			}
		})
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func FuzzImportConfig(f *testing.F) {
	f.Add([]byte(`{"key":{"kid":"k","kty":"oct-HSM","authority":{"endpoint":"a"},"akv":{"endpoint":"b"}},"claims":[[{"claim":"c","equals":"d"}]]}`))
	f.Add([]byte(`{"claims":[{"claim":"c","equals":1}]}`))
	f.Add([]byte(`{"key":{"claims":[[{"claim":"x-ms-sevsnpvm-hostdata","equals":true}]]}}`))
	f.Add([]byte(`{"key":{"kid":"k","authority":{"endpoint":"a"},"akv":{"endpoint":"<b>"}},"key_derivation":{"salt":"<s>"},"claims":[[{"claim":"c","equals":"<d>"}]]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var cfg importKeyConfig
		if json.Unmarshal(b, &cfg) != nil {
			return
		}
		p, err := planFromConfig(&cfg)
		if err != nil {
			return
		}
		// An accepted config names a usable key and a policy with claims.
		if !isKeyName(p.KID) || len(p.Policy.AnyOf) == 0 || p.Vault == "" || (p.KTY != ktyOct && p.KTY != ktyRSA && p.KTY != ktyEC) {
			t.Fatalf("accepted an unusable config: %+v", p)
		}
		for _, a := range p.Policy.AnyOf {
			if len(a.AllOf) == 0 || !strings.HasPrefix(a.Authority, "https://") {
				t.Fatalf("accepted an empty or authority-less claims list: %+v", a)
			}
		}
	})
}

// Microsoft's example config carries a key_derivation block (with its
// placeholders) whatever the key type: where it does not apply it is
// ignored with a one-line warning, and the key is imported.
func TestImportKeyDerivationIgnoredWhereItDoesNotApply(t *testing.T) {
	t.Parallel()
	rsaKey, _ := testKeys(t)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	pemFile := writeTempFile(t, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}))
	deriv := map[string]any{"salt": "<salt-for-key-derivation-valid-only-for-RSA-HSM-keys>", "label": "<label-for-derived-key-valid-only-for-RSA-HSM-keys>"}
	for _, tc := range []struct {
		name, kty, imported string
		args                []string
		warnings            []string
	}{
		{"oct-HSM", "oct-HSM", "oct-HSM", nil, []string{"key_derivation is ignored: it applies only to RSA-HSM keys imported with -out, and key.kty is oct-HSM"}},
		{"EC-HSM", "EC-HSM", "EC-HSM", nil, []string{"key_derivation is ignored: it applies only to RSA-HSM keys imported with -out, and key.kty is EC-HSM"}},
		{"RSA-HSM without -out", "RSA-HSM", "RSA-HSM", []string{"-kp", pemFile}, []string{"key_derivation is ignored: it applies only with -out"}},
		{"kty not set", "", "oct-HSM", nil, []string{"key.kty is not set: importing an oct-HSM key", "key_derivation is ignored: it applies only to RSA-HSM keys imported with -out, and key.kty is oct-HSM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVaultStandIn(t, "deriv")
			cfg := writeImportConfig(t, v, importCase{KTY: tc.kty, Deriv: deriv})
			code, out, errOut := runImport(t, v, nil, append([]string{"-c", cfg, "-keydir", t.TempDir()}, tc.args...)...)
			checkSuccessOutput(t, code, out, errOut, "deriv")
			checkCommonBody(t, v.lastBody(), tc.imported, nil)
			lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
			var warnings []string
			for _, l := range lines {
				if strings.HasPrefix(l, "skr importkey: warning: ") {
					warnings = append(warnings, l)
				}
			}
			if len(warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %d", warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(warnings[i], w) {
					t.Errorf("warning %q, want %q", warnings[i], w)
				}
			}
		})
	}
}

// Microsoft's README runs "importkey -c importkeyconfig.json -out true
// [-kh FILE]": a bool flag's value after a space is taken as its value.
func TestImportOutWithSeparateValue(t *testing.T) {
	t.Parallel()
	keyHex := strings.Repeat("5a", 32)
	keyFile := writeTempFile(t, "encryptionKey", []byte(keyHex+"\n"))
	for _, tc := range []struct {
		value string
		files int
	}{{"true", 1}, {"false", 0}} {
		v := newVaultStandIn(t, "outkey")
		cfg := writeImportConfig(t, v, importCase{KTY: "oct-HSM"})
		dir := t.TempDir()
		code, out, errOut := runImport(t, v, nil, "-c", cfg, "-out", tc.value, "-kh", keyFile, "-keydir", dir)
		checkSuccessOutput(t, code, out, errOut, "outkey")
		key := checkCommonBody(t, v.lastBody(), "oct-HSM", nil)
		if key["k"] != b64url(mustHex(t, keyHex)) {
			t.Errorf("-out %s: imported k %v, want the -kh key", tc.value, key["k"])
		}
		if entries, _ := os.ReadDir(dir); len(entries) != tc.files {
			t.Errorf("-out %s wrote %v, want %d files", tc.value, entries, tc.files)
		}
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestJoinBoolFlagValues(t *testing.T) {
	t.Parallel()
	set := flag.NewFlagSet("t", flag.ContinueOnError)
	set.Bool("out", false, "")
	set.Bool("a", false, "")
	set.String("c", "", "")
	set.String("kh", "", "")
	for _, tc := range []struct{ in, want string }{
		{"-c x -out true", "-c x -out=true"},
		{"-out false -a", "-out=false -a"},
		{"--out true -a true", "--out=true -a=true"},
		{"-c -out true", "-c -out true"},     // -out is -c's value; "true" stays stray
		{"-kh true -out", "-kh true -out"},   // a string flag's value
		{"-out=true true", "-out=true true"}, // has its value already
		{"x -out true", "x -out true"},       // the flags ended at x
		{"-- -out true", "-- -out true"},     // ... or at --
		{"-out yes", "-out yes"},             // not a bool value
		{"-nosuch true", "-nosuch true"},     // the parser reports it
		{"-out", "-out"},
	} {
		got := strings.Join(joinBoolFlagValues(set, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q → %q, want %q", tc.in, got, tc.want)
		}
	}
}

// microsoftExamples holds Microsoft's own example importkey configs
// (see its README); they are read, never copied into the repository.
const microsoftExamples = "../shared/testdata/microsoft-examples"

// fillPlaceholders replaces every "<...>" of a decoded config with what a
// user puts there, chosen by the field's path. A placeholder in a field it
// does not know fails the test: a new field in Microsoft's example must be
// looked at.
func fillPlaceholders(t *testing.T, v any, path string, values map[string]string) any {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		for k, child := range x {
			p := k
			if path != "" {
				p = path + "." + k
			}
			x[k] = fillPlaceholders(t, child, p, values)
		}
	case []any:
		for i, child := range x {
			x[i] = fillPlaceholders(t, child, path+"[]", values)
		}
	case string:
		if strings.HasPrefix(x, "<") && strings.HasSuffix(x, ">") {
			val, ok := values[path]
			if !ok {
				t.Fatalf("placeholder %q at %s: no value for this field", x, path)
			}
			return val
		}
	}
	return v
}

func TestImportMicrosoftExampleConfigs(t *testing.T) {
	t.Parallel()
	const salt = "92a631483ca875aad7e2477da755d58cac3876b77d10bcdd7b33bfa11e7d8b8e"
	keyFile := writeTempFile(t, "encryptionKey", bytes.Repeat([]byte{0xa7}, 32)) // raw bytes, as Microsoft's -kh file
	for _, name := range []string{"importkeyconfig.json", "encfs-importkeyconfig.json"} {
		raw, err := os.ReadFile(filepath.Join(microsoftExamples, name))
		if errors.Is(err, fs.ErrNotExist) {
			t.Skipf("%s is absent", microsoftExamples)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct {
			name, kty, vault string
			args             []string
			warnings         []string
			want             []string // in the dry run's output
		}{
			{name: "oct-HSM", kty: "oct-HSM", vault: "myhsm.managedhsm.azure.net",
				warnings: []string{"key_derivation is ignored"},
				want:     []string{`"kty": "oct-HSM"`, "the oct-HSM key would be generated"}},
			{name: "RSA-HSM, README's -out true", kty: "RSA-HSM", vault: "myvault.vault.azure.net", args: []string{"-out", "true"},
				want: []string{`"kty": "RSA-HSM"`, "salt " + salt + `, label "Model Encryption Key"`}},
			{name: "kty removed, README's -out true -kh FILE", vault: "myhsm.managedhsm.azure.net", args: []string{"-out", "true", "-kh", keyFile},
				warnings: []string{"key.kty is not set", "key_derivation is ignored"},
				want:     []string{`"kty": "oct-HSM"`, `"key_size": 256`, "the oct-HSM key (hex)"}},
		} {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				var cfg map[string]any
				if err := json.Unmarshal(raw, &cfg); err != nil {
					t.Fatal(err)
				}
				values := map[string]string{
					"key.kid": "skr-example-key", "key.kty": tc.kty,
					"key.authority.endpoint": testMAA, "key.akv.endpoint": tc.vault,
					"key.akv.bearer_token": testBearer,
					"key_derivation.salt":  salt, "key_derivation.label": "Model Encryption Key",
					"claims[][].equals": testHostData,
				}
				fillPlaceholders(t, cfg, "", values)
				if tc.kty == "" {
					delete(cfg["key"].(map[string]any), "kty")
				}
				path := writeJSONFile(t, cfg)
				code, out, errOut := runImport(t, nil, nil, append([]string{"-dry-run", "-c", path, "-keydir", t.TempDir()}, tc.args...)...)
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				for _, w := range tc.warnings {
					if !strings.Contains(errOut, "skr importkey: warning: "+w) {
						t.Errorf("stderr lacks the warning %q: %s", w, errOut)
					}
				}
				if n := strings.Count(errOut, "\n"); n != len(tc.warnings) {
					t.Errorf("stderr has %d lines, want %d warnings: %s", n, len(tc.warnings), errOut)
				}
				for _, w := range append(tc.want, "PUT https://"+tc.vault+"/keys/skr-example-key?api-version=7.4") {
					if !strings.Contains(out, w) {
						t.Errorf("dry run output lacks %q:\n%s", w, out)
					}
				}
				_, rest, _ := strings.Cut(out, "release policy:\n")
				policy, _, _ := strings.Cut(rest, "\n\nrequest")
				var got any
				if err := json.Unmarshal([]byte(policy), &got); err != nil || !reflect.DeepEqual(got, expectedPolicy()) {
					t.Errorf("release policy %s (%v), want Microsoft's four claims under https://%s", policy, err, testMAA)
				}
				if strings.Contains(out+errOut, testBearer) {
					t.Error("the bearer token was printed")
				}
			})
		}
	}
}
