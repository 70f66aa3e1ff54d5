package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
)

func mustParseJWK(t testing.TB, s string) jwk {
	t.Helper()
	k, err := parseJWK([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustPublicKey(t testing.TB, k jwk) crypto.PublicKey {
	t.Helper()
	pub, err := k.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestRFC7515A4P521KeyRoundTripKeepsLeadingZeros(t *testing.T) {
	t.Parallel()
	k := mustParseJWK(t, rfc7515A4Key)
	priv, err := k.PrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	back, err := jwkFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if back.X != k.X || back.Y != k.Y || back.D != k.D || back.Crv != "P-521" {
		t.Fatalf("re-encoded P-521 key differs:\n got %+v\nwant %+v", back, k)
	}
}

func TestJWKThumbprintRFC7638(t *testing.T) {
	t.Parallel()
	k := jwk{Kty: "RSA", N: rfc7638N, E: "AQAB", Alg: "RS256", Kid: "2011-04-29"}
	got, err := jwkThumbprint(k)
	if err != nil {
		t.Fatal(err)
	}
	if got != rfc7638Thumbprint {
		t.Fatalf("thumbprint = %s, want %s", got, rfc7638Thumbprint)
	}
	pub := mustPublicKey(t, k)
	if j := rsaPublicJWK(pub.(*rsa.PublicKey)); j.Kid != rfc7638Thumbprint || j.N != rfc7638N || j.E != "AQAB" || j.Kty != "RSA" {
		t.Fatalf("rsaPublicJWK = %+v", j)
	}
}

// The thumbprint input is the canonical JSON of RFC 7638 §3.2 for each kty;
// check it against a hash of the spelled-out canonical form.
func TestJWKThumbprintCanonicalForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		k         jwk
		canonical string
	}{
		{jwk{Kty: "EC", Crv: "P-256", X: "xx", Y: "yy", D: "secret", Kid: "k"}, `{"crv":"P-256","kty":"EC","x":"xx","y":"yy"}`},
		{jwk{Kty: "oct", K: "kk", Alg: "A256KW"}, `{"k":"kk","kty":"oct"}`},
		{jwk{Kty: "RSA", N: "nn", E: "AQAB", D: "secret"}, `{"e":"AQAB","kty":"RSA","n":"nn"}`},
	} {
		sum := sha256.Sum256([]byte(tc.canonical))
		got, err := jwkThumbprint(tc.k)
		if err != nil {
			t.Fatal(err)
		}
		if got != b64url(sum[:]) {
			t.Errorf("thumbprint of %+v does not hash %s", tc.k, tc.canonical)
		}
	}
	for _, bad := range []jwk{{Kty: "RSA", N: "nn"}, {Kty: "EC", Crv: "P-256", X: "x"}, {Kty: "oct"}, {Kty: "OKP", X: "x"}, {}} {
		if _, err := jwkThumbprint(bad); err == nil {
			t.Errorf("thumbprint of %+v: no error", bad)
		}
	}
}

func TestJWKRoundTrips(t *testing.T) {
	t.Parallel()
	joseTestKeys(t)
	keys := map[string]any{
		"RSA":   joseRSA,
		"P-256": joseEC["P-256"],
		"P-384": joseEC["P-384"],
		"P-521": joseEC["P-521"],
		"oct":   []byte("0123456789abcdef0123456789abcdef"),
	}
	for name, key := range keys {
		t.Run(name, func(t *testing.T) {
			k, err := jwkFromPrivateKey(key)
			if err != nil {
				t.Fatal(err)
			}
			k.Kid = "my-key"
			raw, err := json.Marshal(k)
			if err != nil {
				t.Fatal(err)
			}
			parsed, err := parseJWK(raw)
			if err != nil {
				t.Fatal(err)
			}
			priv, err := parsed.PrivateKey()
			if err != nil {
				t.Fatal(err)
			}
			switch want := key.(type) {
			case *rsa.PrivateKey:
				if !want.Equal(priv) {
					t.Fatal("RSA key changed")
				}
				pub, err := parsed.PublicKey()
				if err != nil || !want.PublicKey.Equal(pub) {
					t.Fatalf("RSA public key: %v", err)
				}
			case *ecdsa.PrivateKey:
				if !want.Equal(priv) {
					t.Fatal("EC key changed")
				}
				pub, err := parsed.PublicKey()
				if err != nil || !want.PublicKey.Equal(pub) {
					t.Fatalf("EC public key: %v", err)
				}
				size := curveByteSize(want.Curve)
				if len(joseB64(t, parsed.X)) != size || len(joseB64(t, parsed.D)) != size {
					t.Fatal("EC members are not full field size")
				}
			case []byte:
				if string(priv.([]byte)) != string(want) {
					t.Fatal("oct key changed")
				}
				if _, err := parsed.PublicKey(); err == nil {
					t.Fatal("oct key has a public key")
				}
			}
		})
	}
}

// Scalars and coordinates with leading zero bytes must keep full width.
func TestJWKECLeadingZeroPadding(t *testing.T) {
	t.Parallel()
	for range 2000 {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := key.Bytes()
		if d[0] != 0 {
			continue
		}
		k, err := jwkFromPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		if len(k.D) != 43 {
			t.Fatalf("d with a leading zero byte encoded as %d chars", len(k.D))
		}
		back, err := k.PrivateKey()
		if err != nil || !key.Equal(back) {
			t.Fatalf("round trip: %v", err)
		}
		return
	}
	t.Skip("no key with a leading zero byte in 2000 tries")
}

func TestJWKFromPrivateKeyRejects(t *testing.T) {
	t.Parallel()
	joseTestKeys(t)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, key := range map[string]any{
		"empty oct":   []byte{},
		"P-224":       p224,
		"public key":  &joseRSA.PublicKey,
		"string":      "secret",
		"nil":         nil,
		"rsa no D":    &rsa.PrivateKey{PublicKey: joseRSA.PublicKey},
		"multi-prime": &rsa.PrivateKey{PublicKey: joseRSA.PublicKey, D: joseRSA.D, Primes: []*big.Int{big.NewInt(3), big.NewInt(5), big.NewInt(7)}},
	} {
		if _, err := jwkFromPrivateKey(key); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBadJWKsRejected(t *testing.T) {
	t.Parallel()
	joseTestKeys(t)
	rsaJWK, _ := jwkFromPrivateKey(joseRSA)
	ecJWK, _ := jwkFromPrivateKey(joseEC["P-256"])
	other, _ := jwkFromPrivateKey(joseEC["P-384"])
	otherP256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherP256JWK, _ := jwkFromPrivateKey(otherP256)
	rsa2, _ := jwkFromPrivateKey(joseRSA2)

	mod := func(k jwk, f func(*jwk)) jwk { f(&k); return k }
	// An EC point off the curve: y+1.
	yBytes := joseB64(t, ecJWK.Y)
	yBytes[len(yBytes)-1] ^= 1

	for _, tc := range []struct {
		name        string
		k           jwk
		public, all bool // PublicKey fails / PrivateKey fails
	}{
		{"unknown kty", jwk{Kty: "OKP", X: "abc"}, true, true},
		{"empty kty", jwk{}, true, true},
		{"RSA no n", mod(rsaJWK, func(k *jwk) { k.N = "" }), true, true},
		{"RSA no e", mod(rsaJWK, func(k *jwk) { k.E = "" }), true, true},
		{"RSA even e", mod(rsaJWK, func(k *jwk) { k.E = b64url([]byte{1, 0, 0}) }), true, true},
		{"RSA huge e", mod(rsaJWK, func(k *jwk) { k.E = b64url([]byte{1, 0, 0, 0, 1}) }), true, true},
		{"RSA e=1", mod(rsaJWK, func(k *jwk) { k.E = "AQ" }), true, true},
		{"RSA short n", mod(rsaJWK, func(k *jwk) { k.N = b64url([]byte{0xff, 0xff, 0xff}) }), true, true},
		{"RSA bad b64 n", mod(rsaJWK, func(k *jwk) { k.N = "+" + k.N[1:] }), true, true},
		{"RSA no d", mod(rsaJWK, func(k *jwk) { k.D = "" }), false, true},
		{"RSA no p", mod(rsaJWK, func(k *jwk) { k.P = "" }), false, true},
		{"RSA wrong d", mod(rsaJWK, func(k *jwk) { k.D = rsa2.D }), false, true},
		{"RSA p from another key", mod(rsaJWK, func(k *jwk) { k.P = rsa2.P }), false, true},
		{"RSA wrong dp", mod(rsaJWK, func(k *jwk) { k.DP = rsa2.DP }), false, true},
		{"RSA wrong qi", mod(rsaJWK, func(k *jwk) { k.QI = rsa2.QI }), false, true},
		{"RSA zero d", mod(rsaJWK, func(k *jwk) { k.D = "AA" }), false, true},
		{"EC unknown crv", mod(ecJWK, func(k *jwk) { k.Crv = "P-224" }), true, true},
		{"EC secp256k1", mod(ecJWK, func(k *jwk) { k.Crv = "secp256k1" }), true, true},
		{"EC no x", mod(ecJWK, func(k *jwk) { k.X = "" }), true, true},
		{"EC short x", mod(ecJWK, func(k *jwk) { k.X = b64url(joseB64(t, k.X)[1:]) }), true, true},
		{"EC long y", mod(ecJWK, func(k *jwk) { k.Y = b64url(append([]byte{0}, joseB64(t, k.Y)...)) }), true, true},
		{"EC off curve", mod(ecJWK, func(k *jwk) { k.Y = b64url(yBytes) }), true, true},
		{"EC crv mismatch", mod(ecJWK, func(k *jwk) { k.Crv = "P-384" }), true, true},
		{"EC P-384 coords as P-256", mod(other, func(k *jwk) { k.Crv = "P-256" }), true, true},
		{"EC no d", mod(ecJWK, func(k *jwk) { k.D = "" }), false, true},
		{"EC d of another key", mod(ecJWK, func(k *jwk) { k.D = otherP256JWK.D }), false, true},
		{"EC zero d", mod(ecJWK, func(k *jwk) { k.D = b64url(make([]byte, 32)) }), false, true},
		{"EC d = order", mod(ecJWK, func(k *jwk) { k.D = b64url(elliptic.P256().Params().N.Bytes()) }), false, true},
		{"oct empty", jwk{Kty: "oct", K: ""}, true, true},
		{"oct bad b64", jwk{Kty: "oct", K: "a/b"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.k.PublicKey(); (err != nil) != tc.public {
				t.Errorf("PublicKey: err = %v, want failure=%v", err, tc.public)
			}
			if _, err := tc.k.PrivateKey(); (err != nil) != tc.all {
				t.Errorf("PrivateKey: err = %v, want failure=%v", err, tc.all)
			}
		})
	}
}

func TestParseJWKRejectsMalformed(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"empty":          "",
		"not JSON":       "kty=RSA",
		"array":          `[{"kty":"oct","k":"AA"}]`,
		"trailing":       `{"kty":"oct","k":"AA"} {}`,
		"no kty":         `{"k":"AA"}`,
		"kty number":     `{"kty":1}`,
		"n number":       `{"kty":"RSA","n":5}`,
		"key_ops string": `{"kty":"oct","k":"AA","key_ops":"encrypt"}`,
		"too large":      `{"kty":"oct","k":"` + strings.Repeat("A", maxJWKSize) + `"}`,
	} {
		if _, err := parseJWK([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// Unknown members are ignored (RFC 7517 §4), as Key Vault sends some.
	k, err := parseJWK([]byte(` {"kty":"oct","k":"AQID","key_size":24,"key_hsm":"x","key_ops":["encrypt"]} `))
	if err != nil || k.K != "AQID" || k.KeyOps[0] != "encrypt" {
		t.Fatalf("parseJWK with extra members: %+v, %v", k, err)
	}
}

func FuzzParseJWK(f *testing.F) {
	f.Add([]byte(rfc7515A2Key))
	f.Add([]byte(rfc7515A3Key))
	f.Add([]byte(rfc7515A4Key))
	f.Add([]byte(`{"kty":"oct","k":"AQID"}`))
	f.Add([]byte(`{"kty":"RSA","n":"` + rfc7638N + `","e":"AQAB"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := parseJWK(b)
		if err != nil {
			return
		}
		if k.Kty == "" {
			t.Fatal("parsed a JWK without kty")
		}
		pub, perr := k.PublicKey()
		priv, err := k.PrivateKey()
		_, _ = jwkThumbprint(k)
		if err != nil {
			return
		}
		// A private key that passed validation must re-encode to one
		// that parses to the same key.
		back, err := jwkFromPrivateKey(priv)
		if err != nil {
			t.Fatalf("validated key does not re-encode: %v", err)
		}
		again, err := back.PrivateKey()
		if err != nil {
			t.Fatalf("re-encoded key does not parse: %v", err)
		}
		type equaler interface{ Equal(crypto.PrivateKey) bool }
		if e, ok := priv.(equaler); ok {
			if !e.Equal(again) {
				t.Fatal("key changed in a round trip")
			}
			if perr != nil {
				t.Fatalf("private key valid but public key not: %v", perr)
			}
			_ = pub
		}
	})
}
