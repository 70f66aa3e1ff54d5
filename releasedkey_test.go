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
