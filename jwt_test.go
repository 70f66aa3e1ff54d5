package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test keys are generated once per package run: RSA generation is slow.
var (
	joseKeysOnce sync.Once
	joseRSA      *rsa.PrivateKey
	joseRSA2     *rsa.PrivateKey
	joseEC       map[string]*ecdsa.PrivateKey // by JWK crv name
)

func joseTestKeys(t testing.TB) {
	t.Helper()
	joseKeysOnce.Do(func() {
		var err error
		if joseRSA, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if joseRSA2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		joseEC = map[string]*ecdsa.PrivateKey{}
		for name, c := range jwkCurves {
			if joseEC[name], err = ecdsa.GenerateKey(c, rand.Reader); err != nil {
				panic(err)
			}
		}
	})
}

// signerFor returns the generated test key that suits alg.
func signerFor(t testing.TB, alg string) crypto.Signer {
	joseTestKeys(t)
	switch alg[:2] {
	case "RS", "PS":
		return joseRSA
	}
	return joseEC[map[string]string{"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]]
}

var allJWSAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}

// RFC 7515 Appendix A: the JWS Payload of A.2 and A.3 (with CR LF inside).
const rfc7515Payload = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"

// RFC 7515 A.2.1: the RSA key (as a private JWK).
const rfc7515A2Key = `{"kty":"RSA",
 "n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
 "e":"AQAB",
 "d":"Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ",
 "p":"4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc",
 "q":"uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc",
 "dp":"BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0",
 "dq":"h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU",
 "qi":"IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U"}`

// RFC 7515 A.2.1: the RS256 JWS.
const rfc7515A2JWS = "eyJhbGciOiJSUzI1NiJ9." + rfc7515Payload + "." +
	"cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7" +
	"AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4" +
	"BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K" +
	"0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv" +
	"hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB" +
	"p0igcN_IoypGlUPQGe77Rw"

// RFC 7515 A.3.1: the P-256 key.
const rfc7515A3Key = `{"kty":"EC","crv":"P-256",
 "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
 "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
 "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"}`

// RFC 7515 A.3.1: the ES256 JWS.
const rfc7515A3JWS = "eyJhbGciOiJFUzI1NiJ9." + rfc7515Payload + "." +
	"DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"

// RFC 7515 A.4.1: the P-521 key; its x, y and d have leading zero bits.
const rfc7515A4Key = `{"kty":"EC","crv":"P-521",
 "x":"AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk",
 "y":"ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2",
 "d":"AY5pb7A0UFiB3RELSD64fTLOSV_jazdF7fLYyuTw8lOfRhWg6Y6rUrPAxerEzgdRhajnu0ferB0d53vM9mE15j2C"}`

// RFC 7515 A.4.1: the ES512 JWS over "Payload".
const rfc7515A4JWS = "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA." +
	"AdwMgeerwtHoh-l192l60hp9wAHZFVJbLfD_UxMi70cwnZOYaRI1bKPWROc-mZZq" +
	"wqT2SI-KGDKB34XO0aw_7XdtAG8GaSwFKdCAPZgoXD2YBJZCPEX3xKpRwcdOO8Kp" +
	"EHwJjyqOgzDO7iKvU8vcnwNrmxYbSW9ERBXukOXolLzeO_Jn"

// RFC 7638 §3.1: the RSA key and its thumbprint.
const (
	rfc7638N          = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
	rfc7638Thumbprint = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
)

func TestB64URLDecode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want string // hex-free: the decoded bytes as a string
		ok   bool
	}{
		{"", "", true},
		{"YQ", "a", true},
		{"YQ==", "a", true},
		{"YWI", "ab", true},
		{"YWI=", "ab", true},
		{"YWJj", "abc", true},
		{"-_8", "\xfb\xff", true},
		{"-_8=", "\xfb\xff", true},
		{"+/8", "", false},          // standard alphabet
		{"YQ=", "", false},          // short padding
		{"YQ===", "", false},        // too much padding
		{"YWJj=", "", false},        // padding where none belongs
		{"Y", "", false},            // impossible length
		{"YR", "", false},           // non-zero trailing bits
		{"YW\nJj", "", false},       // line break the std decoder would skip
		{"YW Jj", "", false},        // space
		{"YQ==YQ", "", false},       // padding in the middle
		{"eyJ\r\nhbGci", "", false}, // CR LF
	} {
		got, err := b64urlDecode(tc.in)
		if tc.ok != (err == nil) {
			t.Errorf("b64urlDecode(%q): err = %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && string(got) != tc.want {
			t.Errorf("b64urlDecode(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for n := range 70 {
		b := make([]byte, n)
		rand.Read(b)
		got, err := b64urlDecode(b64url(b))
		if err != nil || string(got) != string(b) {
			t.Fatalf("round trip of %d bytes: %v", n, err)
		}
	}
}

func TestRFC7515VectorsVerify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, key, jws, alg, payload string
	}{
		{"A.2 RS256", rfc7515A2Key, rfc7515A2JWS, "RS256", "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}"},
		{"A.3 ES256", rfc7515A3Key, rfc7515A3JWS, "ES256", "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}"},
		{"A.4 ES512", rfc7515A4Key, rfc7515A4JWS, "ES512", "Payload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pub := mustPublicKey(t, mustParseJWK(t, tc.key))
			j, err := parseJWS(tc.jws)
			if err != nil {
				t.Fatal(err)
			}
			if j.Header.Alg != tc.alg || string(j.Payload) != tc.payload {
				t.Fatalf("parsed alg %q payload %q", j.Header.Alg, j.Payload)
			}
			if err := j.verify(pub, tc.alg); err != nil {
				t.Fatalf("RFC vector does not verify: %v", err)
			}
			// The vector under another allowed set, or with one bit of the
			// signature changed, must fail.
			if err := j.verify(pub, "PS256"); err == nil {
				t.Fatal("verified although its alg is not allowed")
			}
			j.Signature[len(j.Signature)/2] ^= 1
			if err := j.verify(pub, tc.alg); err == nil {
				t.Fatal("verified with a flipped signature bit")
			}
		})
	}
}

// The RFC 7515 A.2 private JWK must parse with its own CRT values, and sign
// exactly the RFC's signature (RS256 is deterministic).
func TestRFC7515A2PrivateKeyReproducesSignature(t *testing.T) {
	t.Parallel()
	k := mustParseJWK(t, rfc7515A2Key)
	priv, err := k.PrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	j, err := parseJWS(rfc7515A2JWS)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte(j.SigningInput))
	sig, err := rsa.SignPKCS1v15(nil, priv.(*rsa.PrivateKey), crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	if b64url(sig) != strings.Split(rfc7515A2JWS, ".")[2] {
		t.Fatal("signature from the parsed private JWK differs from RFC 7515 A.2")
	}
	// And our encoder gives back the same members.
	back, err := jwkFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if back.N != k.N || back.E != k.E || back.D != k.D || back.P != k.P || back.Q != k.Q || back.DP != k.DP || back.DQ != k.DQ || back.QI != k.QI {
		t.Fatalf("re-encoded A.2 key differs: %+v", back)
	}
}

func TestJWSRoundTripEveryAlg(t *testing.T) {
	t.Parallel()
	for _, alg := range allJWSAlgs {
		t.Run(alg, func(t *testing.T) {
			key := signerFor(t, alg)
			payload := []byte(`{"x-ms-runtime":{"keys":[]},"exp":2000000000}`)
			compact, err := signJWS(map[string]any{"kid": "k1", "typ": "JWT", "alg": "overwritten"}, payload, key, alg)
			if err != nil {
				t.Fatal(err)
			}
			j, err := parseJWS(compact)
			if err != nil {
				t.Fatal(err)
			}
			if j.Header.Alg != alg || j.Header.Kid != "k1" || j.Header.Typ != "JWT" || string(j.Payload) != string(payload) {
				t.Fatalf("parsed header %+v payload %q", j.Header, j.Payload)
			}
			if err := j.verify(key.Public(), alg); err != nil {
				t.Fatal(err)
			}
			if err := j.verify(key.Public(), "RS256", "ES384", alg); err != nil {
				t.Fatalf("alg among several allowed: %v", err)
			}
		})
	}
}

func TestJWSTamperingRejected(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{"RS256", "PS256", "ES256", "ES384"} {
		t.Run(alg, func(t *testing.T) {
			key := signerFor(t, alg)
			compact, err := signJWS(map[string]any{"kid": "k1"}, []byte(`{"a":1}`), key, alg)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(compact, ".")
			otherHeader := b64url([]byte(`{"alg":"` + alg + `","kid":"k2"}`))
			for name, c := range map[string]string{
				"header":    otherHeader + "." + parts[1] + "." + parts[2],
				"payload":   parts[0] + "." + b64url([]byte(`{"a":2}`)) + "." + parts[2],
				"signature": parts[0] + "." + parts[1] + "." + flipB64URL(parts[2]),
				"swapped":   parts[0] + "." + parts[1] + "." + b64url(make([]byte, len(joseB64(t, parts[2])))),
			} {
				j, err := parseJWS(c)
				if err != nil {
					continue // refused at parse time is fine too
				}
				if err := j.verify(key.Public(), alg); err == nil {
					t.Errorf("tampered %s verified", name)
				}
			}
		})
	}
}

func joseB64(t testing.TB, s string) []byte {
	t.Helper()
	b, err := b64urlDecode(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// flipB64URL changes one bit in the middle of a base64url string's bytes.
func flipB64URL(s string) string {
	b, _ := b64urlDecode(s)
	b[len(b)/2] ^= 0x10
	return b64url(b)
}

func TestJWSAlgorithmConfusionRejected(t *testing.T) {
	t.Parallel()
	joseTestKeys(t)
	payload := b64url([]byte(`{"sub":"x"}`))

	// HS256 keyed with the RSA public key's bytes: the classic confusion.
	pubDER := joseRSA.PublicKey.N.Bytes()
	hsInput := b64url([]byte(`{"alg":"HS256"}`)) + "." + payload
	mac := hmac.New(sha256.New, pubDER)
	mac.Write([]byte(hsInput))
	hs256 := hsInput + "." + b64url(mac.Sum(nil))

	none := b64url([]byte(`{"alg":"none"}`)) + "." + payload + "."
	noneSigned := b64url([]byte(`{"alg":"none"}`)) + "." + payload + "." + b64url([]byte("x"))

	rs, _ := signJWS(nil, []byte(`{}`), joseRSA, "RS256")
	ps, _ := signJWS(nil, []byte(`{}`), joseRSA, "PS256")
	es256, _ := signJWS(nil, []byte(`{}`), joseEC["P-256"], "ES256")
	es384, _ := signJWS(nil, []byte(`{}`), joseEC["P-384"], "ES384")

	// An ES256 header over a P-384 signature, and vice versa.
	es256onP384 := b64url([]byte(`{"alg":"ES256"}`)) + "." + strings.SplitN(es384, ".", 2)[1]

	for _, tc := range []struct {
		name    string
		compact string
		pub     crypto.PublicKey
		allowed []string
	}{
		{"HS256 with RSA key bytes", hs256, &joseRSA.PublicKey, []string{"RS256", "HS256"}},
		{"none, empty signature", none, &joseRSA.PublicKey, []string{"RS256", "none"}},
		{"none, with signature", noneSigned, &joseRSA.PublicKey, []string{"none"}},
		{"RS256 not allowed", rs, &joseRSA.PublicKey, []string{"PS256", "ES256"}},
		{"PS256 not allowed", ps, &joseRSA.PublicKey, []string{"RS256"}},
		{"nothing allowed", rs, &joseRSA.PublicKey, nil},
		{"RS256 with the wrong RSA key", rs, &joseRSA2.PublicKey, []string{"RS256"}},
		{"PS256 signature as RS256", b64url([]byte(`{"alg":"RS256"}`)) + "." + strings.SplitN(ps, ".", 2)[1], &joseRSA.PublicKey, []string{"RS256"}},
		{"RS256 with an EC key", rs, &joseEC["P-256"].PublicKey, []string{"RS256"}},
		{"ES256 with an RSA key", es256, &joseRSA.PublicKey, []string{"ES256"}},
		{"ES256 with a P-384 key", es256, &joseEC["P-384"].PublicKey, []string{"ES256", "ES384"}},
		{"ES256 header on a P-384 signature", es256onP384, &joseEC["P-384"].PublicKey, []string{"ES256", "ES384"}},
		{"ES384 with a P-256 key", es384, &joseEC["P-256"].PublicKey, []string{"ES384"}},
		{"nil key", rs, nil, []string{"RS256"}},
		{"typed nil key", rs, (*rsa.PublicKey)(nil), []string{"RS256"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j, err := parseJWS(tc.compact)
			if err != nil {
				return // refused at parse time
			}
			if err := j.verify(tc.pub, tc.allowed...); err == nil {
				t.Fatal("verified")
			}
		})
	}
}

// ECDSA signatures in DER (what crypto.Signer returns) are not JOSE's R||S.
func TestJWSECDSADERSignatureRejected(t *testing.T) {
	t.Parallel()
	joseTestKeys(t)
	key := joseEC["P-256"]
	input := b64url([]byte(`{"alg":"ES256"}`)) + "." + b64url([]byte("p"))
	digest := sha256.Sum256([]byte(input))
	der, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	j, err := parseJWS(input + "." + b64url(der))
	if err != nil {
		t.Fatal(err)
	}
	if err := j.verify(&key.PublicKey, "ES256"); err == nil {
		t.Fatal("DER signature verified")
	}
}

func TestJWSSmallRSAKeyRefused(t *testing.T) {
	t.Setenv("GODEBUG", "rsa1024min=0")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	compact, err := signJWS(nil, []byte("{}"), small, "RS256")
	if err != nil {
		t.Fatal(err)
	}
	j, err := parseJWS(compact)
	if err != nil {
		t.Fatal(err)
	}
	err = j.verify(&small.PublicKey, "RS256")
	if err == nil || !strings.Contains(err.Error(), "1024 bits") {
		t.Fatalf("1024-bit RSA signature: err = %v", err)
	}
}

func TestSignJWSRefusesMismatchedKey(t *testing.T) {
	t.Parallel()
	joseTestKeys(t)
	for _, tc := range []struct {
		key crypto.Signer
		alg string
	}{
		{joseRSA, "ES256"},
		{joseEC["P-256"], "RS256"},
		{joseEC["P-256"], "ES384"},
		{joseEC["P-521"], "ES256"},
		{joseRSA, "HS256"},
		{joseRSA, "none"},
		{nil, "RS256"},
	} {
		if _, err := signJWS(nil, nil, tc.key, tc.alg); err == nil {
			t.Errorf("signJWS(%T, %s): no error", tc.key, tc.alg)
		}
	}
}

func TestParseJWSRejectsMalformed(t *testing.T) {
	t.Parallel()
	hdr := b64url([]byte(`{"alg":"RS256"}`))
	p := b64url([]byte("{}"))
	s := b64url([]byte("sig"))
	for name, c := range map[string]string{
		"empty":            "",
		"two parts":        hdr + "." + p,
		"four parts":       hdr + "." + p + "." + s + "." + s,
		"JWE-like five":    hdr + "...." + s,
		"bad header b64":   "!!." + p + "." + s,
		"bad payload b64":  hdr + ".a b." + s,
		"bad sig b64":      hdr + "." + p + ".+/",
		"header not JSON":  b64url([]byte("alg")) + "." + p + "." + s,
		"header array":     b64url([]byte(`["alg"]`)) + "." + p + "." + s,
		"header trailing":  b64url([]byte(`{"alg":"RS256"}x`)) + "." + p + "." + s,
		"no alg":           b64url([]byte(`{"kid":"a"}`)) + "." + p + "." + s,
		"empty alg":        b64url([]byte(`{"alg":""}`)) + "." + p + "." + s,
		"alg not string":   b64url([]byte(`{"alg":1}`)) + "." + p + "." + s,
		"crit":             b64url([]byte(`{"alg":"RS256","crit":["exp"],"exp":1}`)) + "." + p + "." + s,
		"crit b64":         b64url([]byte(`{"alg":"RS256","b64":false,"crit":["b64"]}`)) + "." + p + "." + s,
		"x5c not strings":  b64url([]byte(`{"alg":"RS256","x5c":[1]}`)) + "." + p + "." + s,
		"too large":        hdr + "." + strings.Repeat("A", maxJWSSize) + "." + s,
		"empty header":     "." + p + "." + s,
		"newline in parts": hdr + "\n." + p + "." + s,
	} {
		if _, err := parseJWS(c); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestParseJWSKeepsRawHeader(t *testing.T) {
	t.Parallel()
	raw := `{"alg":"RS256","kid":"a+b=","x5c":["MIIB"],"x5t#S256":"t","jku":"https://x/certs"}`
	j, err := parseJWS(b64url([]byte(raw)) + "." + b64url([]byte("p")) + "." + b64url([]byte("s")))
	if err != nil {
		t.Fatal(err)
	}
	if string(j.RawHeader) != raw || j.Header.Kid != "a+b=" || j.Header.X5C[0] != "MIIB" || j.Header.X5tS256 != "t" || j.Header.Jku != "https://x/certs" {
		t.Fatalf("parsed %+v raw %q", j.Header, j.RawHeader)
	}
}

func TestCheckJWTTimes(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_700_000_000, 0)
	skew := time.Minute
	n := func(v int64) float64 { return float64(v) }
	for _, tc := range []struct {
		name    string
		claims  map[string]any
		ok      bool
		okNoExp bool // result of the variant requiring exp, when it differs
	}{
		{"valid", map[string]any{"exp": n(1_700_003_600), "nbf": n(1_699_999_000), "iat": n(1_699_999_000)}, true, true},
		{"no times", map[string]any{}, true, false},
		{"expired", map[string]any{"exp": n(1_699_990_000)}, false, false},
		{"expired within skew", map[string]any{"exp": n(1_699_999_970)}, true, true},
		{"expired exactly at skew", map[string]any{"exp": n(1_699_999_940)}, false, false},
		{"not yet valid", map[string]any{"exp": n(1_700_003_600), "nbf": n(1_700_000_600)}, false, false},
		{"nbf within skew", map[string]any{"exp": n(1_700_003_600), "nbf": n(1_700_000_030)}, true, true},
		{"issued in the future", map[string]any{"exp": n(1_700_003_600), "iat": n(1_700_000_600)}, false, false},
		{"json.Number", map[string]any{"exp": json.Number("1700003600"), "nbf": json.Number("1699999000.5")}, true, true},
		{"json.Number expired", map[string]any{"exp": json.Number("1699990000")}, false, false},
		{"bad json.Number", map[string]any{"exp": json.Number("soon")}, false, false},
		{"string exp", map[string]any{"exp": "1700003600"}, false, false},
		{"bool nbf", map[string]any{"exp": n(1_700_003_600), "nbf": true}, false, false},
		{"null exp", map[string]any{"exp": nil}, false, false},
		{"int exp", map[string]any{"exp": 1_700_003_600}, true, true},
		{"huge exp", map[string]any{"exp": 1e300}, true, true},
		{"huge negative nbf", map[string]any{"exp": n(1_700_003_600), "nbf": -1e300}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkJWTTimes(tc.claims, now, skew); (err == nil) != tc.ok {
				t.Errorf("checkJWTTimes: err = %v, want ok=%v", err, tc.ok)
			}
			if err := checkJWTTimesRequiringExp(tc.claims, now, skew); (err == nil) != tc.okNoExp {
				t.Errorf("checkJWTTimesRequiringExp: err = %v, want ok=%v", err, tc.okNoExp)
			}
		})
	}
}

// Claims decoded by encoding/json, with UseNumber or without.
func TestCheckJWTTimesFromDecodedJSON(t *testing.T) {
	t.Parallel()
	body := []byte(`{"exp":1700003600,"nbf":1699999000,"iat":1699999000}`)
	now := time.Unix(1_700_000_000, 0)
	var plain map[string]any
	if err := json.Unmarshal(body, &plain); err != nil {
		t.Fatal(err)
	}
	if err := checkJWTTimesRequiringExp(plain, now, 0); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	var numbers map[string]any
	if err := dec.Decode(&numbers); err != nil {
		t.Fatal(err)
	}
	if err := checkJWTTimesRequiringExp(numbers, now, 0); err != nil {
		t.Fatal(err)
	}
	if err := checkJWTTimes(numbers, time.Unix(1_700_003_600, 0), 0); err == nil {
		t.Fatal("token accepted at its exp instant")
	}
}

func FuzzParseJWS(f *testing.F) {
	f.Add(rfc7515A2JWS)
	f.Add(rfc7515A3JWS)
	f.Add(rfc7515A4JWS)
	f.Add("eyJhbGciOiJub25lIn0." + rfc7515Payload + ".")
	f.Add("a.b.c")
	pub, err := mustParseJWK(f, rfc7515A3Key).PublicKey()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		j, err := parseJWS(s)
		if err != nil {
			return
		}
		if j.Header.Alg == "" || j.SigningInput+"."+b64url(j.Signature) != canonicalCompact(s) {
			t.Fatalf("inconsistent parse of %q", s)
		}
		// Only the vector's own signing input can verify under its key
		// (its signature may legitimately be re-spelled, e.g. S as N-S).
		if err := j.verify(pub, "ES256"); err == nil && j.SigningInput != strings.TrimSuffix(rfc7515A3JWS[:strings.LastIndexByte(rfc7515A3JWS, '.')], ".") {
			t.Fatalf("forged ES256 signature verified: %q", s)
		}
	})
}

// canonicalCompact re-encodes the signature part without padding, which is
// how parseJWS's fields recombine.
func canonicalCompact(s string) string {
	i := strings.LastIndexByte(s, '.')
	sig, _ := b64urlDecode(s[i+1:])
	return s[:i+1] + b64url(sig)
}

func benchmarkJWSVerify(b *testing.B, alg string) {
	key := signerFor(b, alg)
	compact, err := signJWS(map[string]any{"kid": "k"}, []byte(`{"exp":2000000000,"x-ms-runtime":{"keys":[]}}`), key, alg)
	if err != nil {
		b.Fatal(err)
	}
	pub := key.Public()
	b.ResetTimer()
	for b.Loop() {
		j, err := parseJWS(compact)
		if err != nil {
			b.Fatal(err)
		}
		if err := j.verify(pub, alg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkJWSVerifyRS256(b *testing.B) { benchmarkJWSVerify(b, "RS256") }

func BenchmarkJWSVerifyPS256(b *testing.B) { benchmarkJWSVerify(b, "PS256") }

func BenchmarkJWSVerifyES256(b *testing.B) { benchmarkJWSVerify(b, "ES256") }

func BenchmarkJWSVerifyES384(b *testing.B) { benchmarkJWSVerify(b, "ES384") }
