package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	wrapVault = "myhsm.managedhsm.azure.net"
	wrapMAA   = "sharedeus.eus.attest.azure.net"
)

// writeWrapKeyFiles writes NAME-pub.pem and NAME-info.json as Microsoft's
// key setup script does and returns the key path DIR/NAME.
func writeWrapKeyFiles(t testing.TB, dir, name string, pub *rsa.PublicKey, vault, maa string) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	pubPath := filepath.Join(dir, name+"-pub.pem")
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	info := fmt.Sprintf("{\n\"public_key_path\": %q,\n\"kms_endpoint\": %q,\n\"attester_endpoint\": %q\n}\n", pubPath, vault, maa)
	if err := os.WriteFile(filepath.Join(dir, name+"-info.json"), []byte(info), 0o644); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, name)
}

func TestWrapForKeyWritesMicrosoftsPacket(t *testing.T) {
	t.Parallel()
	priv := standInRSAKey(t, rsaReleased)
	keyPath := writeWrapKeyFiles(t, t.TempDir(), "testkey000", &priv.PublicKey, wrapVault, wrapMAA)
	secret := []byte("a layer key")
	raw, err := wrapForKey(secret, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	var members map[string]any
	if err := json.Unmarshal(raw, &members); err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range members {
		names = append(names, k)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"attester_endpoint", "kid", "kms_endpoint", "wrap_type", "wrapped_data"}) {
		t.Fatalf("packet members = %q", names)
	}
	if members["kid"] != "testkey000" || members["kms_endpoint"] != wrapVault || members["attester_endpoint"] != wrapMAA || members["wrap_type"] != "rsa_2048" {
		t.Errorf("packet = %v", members)
	}
	ct, err := base64.StdEncoding.DecodeString(members["wrapped_data"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := rsa.DecryptOAEP(sha256.New(), nil, priv, ct, nil); err != nil || !bytes.Equal(plain, secret) {
		t.Fatalf("wrapped_data does not decrypt to the secret with RSA-OAEP-SHA256: %v", err)
	}
	// What UnWrapKey reads back.
	packet, p, err := parseAnnotation(base64.StdEncoding.EncodeToString(raw))
	if err != nil || p.Key.Name != "testkey000" || p.VaultHost != wrapVault || p.MAAHost != wrapMAA || !bytes.Equal(packet.WrappedData, ct) {
		t.Fatalf("parseAnnotation = %+v %+v %v", packet, p, err)
	}
}

func TestWrapForKeyFindsThePublicKey(t *testing.T) {
	priv := standInRSAKey(t, rsaReleased)
	dir := t.TempDir()
	keyPath := writeWrapKeyFiles(t, dir, "k1", &priv.PublicKey, wrapVault, wrapMAA)
	// Relative to the current directory, as Microsoft's script writes it.
	t.Chdir(dir)
	info := `{"public_key_path": "k1-pub.pem", "kms_endpoint": "` + wrapVault + `", "attester_endpoint": "` + wrapMAA + `"}`
	if err := os.WriteFile(keyPath+"-info.json", []byte(info), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := wrapForKey([]byte("x"), keyPath); err != nil {
		t.Fatalf("relative public_key_path: %v", err)
	}
	// Without public_key_path: KEYPATH-pub.pem.
	info = `{"kms_endpoint": "` + wrapVault + `", "attester_endpoint": "` + wrapMAA + `"}`
	if err := os.WriteFile(keyPath+"-info.json", []byte(info), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := wrapForKey([]byte("x"), filepath.Join("..", filepath.Base(dir), "k1")); err != nil {
		t.Fatalf("no public_key_path: %v", err)
	}
}

func TestWrapForKeyRefuses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rsaKey := &standInRSAKey(t, rsaReleased).PublicKey
	good := writeWrapKeyFiles(t, dir, "good", rsaKey, wrapVault, wrapMAA)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ecDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	keyWithInfo := func(name, info string) string {
		if err := os.WriteFile(filepath.Join(dir, name+"-info.json"), []byte(info), 0o644); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, name)
	}
	infoFor := func(pub string) string {
		return `{"public_key_path":"` + pub + `","kms_endpoint":"` + wrapVault + `","attester_endpoint":"` + wrapMAA + `"}`
	}
	tests := []struct {
		name, keyPath string
		secret        []byte
		want          string
	}{
		{"no key path", "", nil, "no key path"},
		{"not a key name", filepath.Join(dir, "bad_name"), nil, "must be the Key Vault key name"},
		{"no info file", filepath.Join(dir, "absent"), nil, "absent-info.json"},
		{"info not JSON", keyWithInfo("notjson", "{"), nil, "is not the JSON object"},
		{"no vault", keyWithInfo("novault", `{"attester_endpoint":"`+wrapMAA+`"}`), nil, `"kms_endpoint"`},
		{"plain http MAA", keyWithInfo("httpmaa", `{"kms_endpoint":"`+wrapVault+`","attester_endpoint":"http://`+wrapMAA+`"}`), nil, "only https"},
		{"no public key", keyWithInfo("nopub", infoFor(filepath.Join(dir, "missing.pem"))), nil, "missing.pem"},
		{"not PEM", keyWithInfo("notpem", infoFor(filepath.Join(dir, "good-info.json"))), nil, "no PEM block"},
		{"private key PEM", keyWithInfo("privpem", infoFor(writePEM("priv.pem", "PRIVATE KEY", []byte{1}))), nil, "want PUBLIC KEY"},
		{"EC key", keyWithInfo("ec", infoFor(writePEM("ec.pem", "PUBLIC KEY", ecDER))), nil, "want an RSA public key"},
		{"RSA-1024", keyWithInfo("small", infoFor(writePEM("small.pem", "PUBLIC KEY", smallDER))), nil, "at least 2048"},
		{"secret too long", good, make([]byte, 191), "wraps at most 190"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := wrapForKey(tc.secret, tc.keyPath)
			if err == nil || !strings.Contains(err.Error(), tc.want) || errorKind(err) != kindInvalid {
				t.Fatalf("err = %v (kind %v), want an invalid-request error mentioning %q", err, errorKind(err), tc.want)
			}
		})
	}
	if _, err := wrapForKey(make([]byte, 190), good); err != nil {
		t.Fatalf("the largest secret RSA-2048 wraps: %v", err)
	}
}

func TestParseAnnotationRefuses(t *testing.T) {
	t.Parallel()
	packet := func(m map[string]any) string {
		full := map[string]any{"kid": "k", "wrapped_data": "eA==", "kms_endpoint": wrapVault, "attester_endpoint": wrapMAA}
		for k, v := range m {
			if v == nil {
				delete(full, k)
			} else {
				full[k] = v
			}
		}
		b, _ := json.Marshal(full)
		return base64.StdEncoding.EncodeToString(b)
	}
	if _, p, err := parseAnnotation(packet(map[string]any{"kid": "k/0123456789abcdef0123456789abcdef", "wrap_type": "rsa_3072", "iv": ""})); err != nil || p.Key.Version == "" {
		t.Fatalf("a packet with a pinned version: %+v %v", p, err)
	}
	for name, tc := range map[string]struct {
		b64, want string
	}{
		"empty":            {"", `"annotation"`},
		"not JSON":         {base64.StdEncoding.EncodeToString([]byte("[")), "annotation packet"},
		"no wrapped data":  {packet(map[string]any{"wrapped_data": nil}), "no wrapped_data"},
		"AES wrap type":    {packet(map[string]any{"wrap_type": "aes_256_gcm"}), "not RSA-OAEP"},
		"no kid":           {packet(map[string]any{"kid": nil}), `"kid"`},
		"path in kid":      {packet(map[string]any{"kid": "../k"}), `"kid"`},
		"no MAA":           {packet(map[string]any{"attester_endpoint": ""}), "attester_endpoint"},
		"vault with path":  {packet(map[string]any{"kms_endpoint": wrapVault + "/keys"}), "kms_endpoint"},
		"data not base64":  {packet(map[string]any{"wrapped_data": "%%"}), "annotation packet"},
		"trailing garbage": {base64.StdEncoding.EncodeToString([]byte(`{"kid":"k"} x`)), "after the JSON object"},
	} {
		if _, _, err := parseAnnotation(tc.b64); err == nil || !strings.Contains(err.Error(), tc.want) || errorKind(err) != kindInvalid {
			t.Errorf("%s: err = %v, want an invalid-request error mentioning %q", name, err, tc.want)
		}
	}
}

func TestWrapCommandLine(t *testing.T) {
	t.Parallel()
	priv := standInRSAKey(t, rsaReleased)
	dir := t.TempDir()
	keyPath := writeWrapKeyFiles(t, dir, "k1", &priv.PublicKey, wrapVault, wrapMAA)
	in := filepath.Join(dir, "plaintext")
	if err := os.WriteFile(in, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "wrapped")
	tests := []struct {
		argv []string
		code int
		want string
	}{
		{[]string{"skr", "wrap", "-h"}, 0, "-keypath"},
		{[]string{"skr", "wrap", "-infile", in, "-keypath", keyPath}, 2, "-outfile are required"},
		{[]string{"skr", "-infile", in, "-outfile", out}, 2, "required"},
		{[]string{"skr", "wrap", "-infile", in, "-keypath", keyPath, "-outfile", out, "extra"}, 2, "nothing else"},
		{[]string{"skr", "-infile", in, "-keypath", keyPath, "-outfile", out, "-port", "1"}, 2, "flag provided but not defined: -port"},
		{[]string{"skr", "-infile", filepath.Join(dir, "absent"), "-keypath", keyPath, "-outfile", out}, 1, "read the secret"},
		{[]string{"skr", "-infile=" + in, "-keypath=" + filepath.Join(dir, "nokey"), "-outfile=" + out}, 1, "nokey-info.json"},
		{[]string{"skr", "-infile=" + in, "-keypath=" + keyPath, "-outfile=" + out}, 0, "wrapped"},
	}
	for _, tc := range tests {
		var stdout, stderr bytes.Buffer
		code := dispatch(tc.argv, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String()+stderr.String(), tc.want) {
			t.Errorf("%q: exit %d, output %q; want exit %d and %q", tc.argv, code, stdout.String()+stderr.String(), tc.code, tc.want)
		}
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := parseAnnotation(string(raw)); err != nil || bytes.ContainsAny(raw, "\n{") {
		t.Fatalf("the output is not one base64 annotation: %v %q", err, raw)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o644 {
		t.Errorf("output mode %v, want 0644", fi.Mode().Perm())
	}
}

func TestIsWrapInvocation(t *testing.T) {
	t.Parallel()
	for args, want := range map[string]bool{
		"-infile f -keypath k":  true,
		"--infile f":            true,
		"-infile=f":             true,
		"--infile=f":            true,
		"-port 8080":            false,
		"-base64 -infile":       true,
		"-loglevel infile":      false,
		"-infiles x":            false,
		"-server_type grpc":     false,
		"-logfile /tmp/-infile": false,
	} {
		if got := isWrapInvocation(strings.Fields(args)); got != want {
			t.Errorf("isWrapInvocation(%q) = %v, want %v", args, got, want)
		}
	}
}
