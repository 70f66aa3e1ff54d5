package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

func TestReleaseEnc(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ req, hdr, want string }{
		{encRSAAESKeyWrap256, "", encRSAAESKeyWrap256},
		{encRSAAESKeyWrap256, encRSAAESKeyWrap256, encRSAAESKeyWrap256},
		{"", encRSAAESKeyWrapSHA1, encRSAAESKeyWrapSHA1},
		{encRSAAESKeyWrap384, encRSAAESKeyWrap256, ""},
		{"", "", ""},
		{"A256KW", "", ""},
	} {
		got, err := releaseEnc(c.req, c.hdr)
		if got != c.want || (err != nil) != (c.want == "") {
			t.Errorf("releaseEnc(%q, %q) = %q, %v", c.req, c.hdr, got, err)
		}
	}
}

// FuzzParseReleasePayload: the payload parser never panics and whatever it
// accepts names a known algorithm and key type.
func FuzzParseReleasePayload(f *testing.F) {
	blob := b64url(standInJSON(map[string]any{"schema_version": "1.0", "header": map[string]string{"alg": "dir", "enc": encRSAAESKeyWrap256, "kid": "w"}, "ciphertext": b64url([]byte("ct"))}))
	f.Add(standInJSON(map[string]any{"request": map[string]any{"enc": encRSAAESKeyWrap256}, "response": map[string]any{"key": map[string]any{"key": map[string]any{"kid": "https://v/keys/k/1", "kty": "oct-HSM", "key_hsm": blob}}}}))
	f.Add(standInJSON(map[string]any{"request": map[string]any{"enc": encRSAAESKeyWrapSHA1}, "response": map[string]any{"key": map[string]any{"key": map[string]any{"kid": "https://v/keys/k/1", "kty": "RSA", "n": "AQ", "e": "AQAB", "key_hsm": blob}}}}))
	f.Add([]byte(`{"response":{"key":{"key":{"kty":"EC-HSM","crv":"P-256","x":"AA","y":"AA","kid":"x","key_hsm":"e30"}}}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		env, err := parseReleasePayload(payload)
		if err != nil {
			return
		}
		if _, err := oaepHash(env.Enc); err != nil {
			t.Fatalf("accepted enc %q", env.Enc)
		}
		if env.Kty != "RSA" && env.Kty != "EC" && env.Kty != "oct" {
			t.Fatalf("accepted kty %q", env.Kty)
		}
		if len(env.Ciphertext) == 0 || env.WrappingKid == "" || env.Kid == "" {
			t.Fatalf("accepted an incomplete envelope %+v", env)
		}
		// Unwrapping garbage must fail cleanly, never panic.
		wk := &wrappingKey{priv: standInRSAKey(t, rsaOther), kid: env.WrappingKid}
		if _, err := env.unwrap(wk); err == nil && len(env.Ciphertext) < 256 {
			t.Fatal("unwrapped a ciphertext shorter than the modulus")
		}
	})
}

func TestReleaseEnvelopeBinding(t *testing.T) {
	t.Parallel()
	wk := &wrappingKey{kid: "our-wrapping-kid"}
	want := keyRef{Name: "mykey"}
	tests := []struct {
		name, kid, wrappedTo, vault string
		ok                          bool
	}{
		{"ours", "https://myvault.vault.azure.net/keys/mykey/0123", "our-wrapping-kid", "myvault.vault.azure.net", true},
		{"vault host case and port", "https://MyVault.vault.azure.net:443/keys/mykey/0123", "our-wrapping-kid", "myvault.vault.azure.net", true},
		{"another vault", "https://other.vault.azure.net/keys/mykey/0123", "our-wrapping-kid", "myvault.vault.azure.net", false},
		{"another key", "https://myvault.vault.azure.net/keys/otherkey/0123", "our-wrapping-kid", "myvault.vault.azure.net", false},
		{"wrapped to someone else", "https://myvault.vault.azure.net/keys/mykey/0123", "their-kid", "myvault.vault.azure.net", false},
		{"not a key id", "https://myvault.vault.azure.net/secrets/mykey", "our-wrapping-kid", "myvault.vault.azure.net", false},
		{"plain http", "http://myvault.vault.azure.net/keys/mykey/0123", "our-wrapping-kid", "myvault.vault.azure.net", false},
	}
	for _, tc := range tests {
		e := &releaseEnvelope{Kid: tc.kid, WrappingKid: tc.wrappedTo}
		if err := e.checkBinding(want, tc.vault, wk); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// releasePayloadWrapping is a release payload as Key Vault signs it: the
// public members it claims for the key beside key_hsm, which holds plain
// wrapped to wk.
func releasePayloadWrapping(t *testing.T, wk *wrappingKey, kty string, public map[string]any, plain []byte) []byte {
	t.Helper()
	const enc = "RSA_AES_KEY_WRAP_256"
	kek := make([]byte, 32)
	rand.Read(kek)
	wrappedKEK, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &wk.priv.PublicKey, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	wrapped, err := standInAESKeyWrapPad(kek, plain)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	keyHSM := standInJSON(map[string]any{
		"schema_version": "1.0",
		"header":         map[string]string{"alg": "dir", "enc": enc, "kid": wk.kid},
		"ciphertext":     b64(append(wrappedKEK, wrapped...)),
	})
	kid := "https://contoso.vault.azure.net/keys/released/0123456789abcdef0123456789abcdef"
	key := map[string]any{"kid": kid, "kty": kty, "key_hsm": b64(keyHSM)}
	for k, v := range public {
		key[k] = v
	}
	return standInJSON(map[string]any{
		"request":  map[string]any{"api-version": "7.4", "enc": enc, "kid": kid},
		"response": map[string]any{"key": map[string]any{"key": key}},
	})
}

// An unwrapped private key whose public part is not the one Key Vault
// signed beside it is refused: the signature covers the public members,
// not the wrapped bytes' meaning. Guards the matchRSAPublic (and
// matchECPublic) checks in releaseEnvelope.decodePlaintext.
func TestReleasedKeyMustMatchTheSignedPublicKey(t *testing.T) {
	t.Parallel()
	wk, err := wrappingKeyFrom(standInRSAKey(t, rsaOther))
	if err != nil {
		t.Fatal(err)
	}
	released, other := standInRSAKey(t, rsaReleased), standInRSAKey(t, rsaMAASigner)
	ecReleased, ecOther := standInECKey(), standInECKey()
	public := func(k any) map[string]any {
		m, err := kvPublicMembers(&kvKey{material: k})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	otherExponent := public(released)
	otherExponent["e"] = base64.RawURLEncoding.EncodeToString([]byte{3})
	for _, tc := range []struct {
		name   string
		kty    string
		public map[string]any
		plain  []byte
		want   map[string]any // public members of the JWK handed out; nil = refused
	}{
		{"RSA key as signed", "RSA-HSM", public(released), pkcs8(released), public(released)},
		{"another RSA key than signed", "RSA-HSM", public(released), pkcs8(other), nil},
		{"RSA key with another exponent signed", "RSA-HSM", otherExponent, pkcs8(released), nil},
		{"EC key as signed", "EC-HSM", public(ecReleased), pkcs8(ecReleased), public(ecReleased)},
		{"another EC key than signed", "EC-HSM", public(ecReleased), pkcs8(ecOther), nil},
	} {
		env, err := parseReleasePayload(releasePayloadWrapping(t, wk, tc.kty, tc.public, tc.plain))
		if err != nil {
			t.Fatalf("%s: payload: %v", tc.name, err)
		}
		out, err := env.unwrap(wk)
		if tc.want == nil {
			if err == nil || !strings.Contains(err.Error(), "does not match the public key Key Vault signed") {
				t.Errorf("%s: err = %v; want a refusal because the key is not the one signed", tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: refused: %v", tc.name, err)
			continue
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("%s: released JWK: %v", tc.name, err)
		}
		for member, v := range tc.want {
			if got[member] != v {
				t.Errorf("%s: released JWK has %s %v, want %v", tc.name, member, got[member], v)
			}
		}
	}
}
