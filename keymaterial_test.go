package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"reflect"
	"strings"
	"testing"
)

// cloneRSAKey is a deep copy of k, so that zeroing it leaves k alone.
func cloneRSAKey(t testing.TB, k *rsa.PrivateKey) *rsa.PrivateKey {
	t.Helper()
	c, err := copyRSAKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// copyRSAKey is cloneRSAKey for goroutines that are not the test's.
func copyRSAKey(k *rsa.PrivateKey) (*rsa.PrivateKey, error) {
	return x509.ParsePKCS1PrivateKey(x509.MarshalPKCS1PrivateKey(k))
}

// rsaSecretWords are the words of every private number of k, aliasing the
// key's own memory, so a test can see them overwritten.
func rsaSecretWords(k *rsa.PrivateKey) map[string][]big.Word {
	w := map[string][]big.Word{
		"D": k.D.Bits(), "Dp": k.Precomputed.Dp.Bits(), "Dq": k.Precomputed.Dq.Bits(), "Qinv": k.Precomputed.Qinv.Bits(),
	}
	for i, p := range k.Primes {
		w["prime "+string(rune('0'+i))] = p.Bits()
	}
	return w
}

func wantZeroWords(t *testing.T, words map[string][]big.Word) {
	t.Helper()
	for name, ws := range words {
		if len(ws) == 0 {
			t.Fatalf("%s had no words to begin with", name)
		}
		for _, w := range ws {
			if w != 0 {
				t.Errorf("%s was not overwritten", name)
				break
			}
		}
	}
}

func TestZeroPrivateKey(t *testing.T) {
	t.Parallel()
	t.Run("RSA", func(t *testing.T) {
		k := cloneRSAKey(t, standInRSAKey(t, rsaOther))
		words := rsaSecretWords(k)
		zeroPrivateKey(k)
		wantZeroWords(t, words)
		if k.D.Sign() != 0 || k.Primes[0].Sign() != 0 {
			t.Error("the numbers still read non-zero")
		}
	})
	t.Run("EC", func(t *testing.T) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		words := map[string][]big.Word{"D": k.D.Bits()}
		zeroPrivateKey(k)
		wantZeroWords(t, words)
	})
	t.Run("symmetric", func(t *testing.T) {
		k := []byte("0123456789abcdef")
		zeroPrivateKey(k)
		if strings.Trim(string(k), "\x00") != "" {
			t.Errorf("key bytes left: %q", k)
		}
	})
}

func TestParsePrivateKeyPEM(t *testing.T) {
	t.Parallel()
	rsaKey := standInRSAKey(t, rsaOther)
	ecKey := standInECKey()
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, typ string
		der       []byte
		want      interface{ Equal(crypto.PrivateKey) bool } // nil = refused
		wantErr   string                                     // part of the refusal
	}{
		{"PKCS#8 RSA", "PRIVATE KEY", pkcs8(rsaKey), rsaKey, ""},
		{"PKCS#8 EC", "PRIVATE KEY", pkcs8(ecKey), ecKey, ""},
		{"PKCS#1", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey), rsaKey, ""},
		{"SEC 1", "EC PRIVATE KEY", sec1, ecKey, ""},
		{"PKCS#1 under the PKCS#8 type", "PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey), nil, "parse PRIVATE KEY"},
		{"SEC 1 under the PKCS#1 type", "RSA PRIVATE KEY", sec1, nil, "parse RSA PRIVATE KEY"},
		{"encrypted", "ENCRYPTED PRIVATE KEY", pkcs8(rsaKey), nil, "encrypted"},
		{"a certificate", "CERTIFICATE", []byte{0x30}, nil, "not a private key"},
	} {
		got, err := parsePrivateKeyPEM(pem.EncodeToMemory(&pem.Block{Type: tc.typ, Bytes: tc.der}))
		switch {
		case tc.want == nil && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: err = %v, want one saying %q", tc.name, err, tc.wantErr)
		case tc.want != nil && (err != nil || !tc.want.Equal(got)):
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if _, err := parsePrivateKeyPEM([]byte("no PEM here")); err == nil {
		t.Error("text without a PEM block was taken")
	}
}

func TestParsePrivateKeyDERTriesEachDecoder(t *testing.T) {
	t.Parallel()
	rsaKey := standInRSAKey(t, rsaOther)
	der := x509.MarshalPKCS1PrivateKey(rsaKey)
	if k, err := parsePrivateKeyDER(der, pkcs8PrivateKey, pkcs1PrivateKey); err != nil || !rsaKey.Equal(k) {
		t.Fatalf("PKCS#1 after PKCS#8: %v", err)
	}
	_, err := parsePrivateKeyDER(der, pkcs8PrivateKey, sec1PrivateKey)
	if _, want := x509.ParsePKCS8PrivateKey(der); err == nil || err.Error() != want.Error() {
		t.Fatalf("err = %v, want the first decoder's", err)
	}
}

// hasHiddenCopy reports whether crypto/rsa keeps its own copy of the key's
// private numbers inside it, where zeroPrivateKey cannot reach.
func hasHiddenCopy(k *rsa.PrivateKey) bool {
	return !reflect.ValueOf(k).Elem().FieldByName("Precomputed").FieldByName("fips").IsNil()
}

// A wrapping key lives minutes: it keeps no copy of its private numbers
// that destroy cannot overwrite, before or after it is used.
func TestWrappingKeyKeepsNoHiddenCopy(t *testing.T) {
	t.Parallel()
	parsed := cloneRSAKey(t, standInRSAKey(t, rsaOther))
	if !hasHiddenCopy(parsed) {
		t.Fatal("a parsed key has no hidden copy: this test can no longer tell")
	}
	wk, err := wrappingKeyFrom(parsed)
	if err != nil {
		t.Fatal(err)
	}
	if hasHiddenCopy(wk.priv) {
		t.Fatal("the wrapping key keeps crypto/rsa's copy of its private numbers")
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &wk.priv.PublicKey, []byte("transfer key"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := rsa.DecryptOAEP(sha256.New(), nil, wk.priv, ct, nil); err != nil || string(pt) != "transfer key" {
		t.Fatalf("decrypt with the rebuilt key: %q, %v", pt, err)
	}
	if hasHiddenCopy(wk.priv) {
		t.Fatal("decrypting left a hidden copy in the wrapping key")
	}
	words := rsaSecretWords(wk.priv)
	wk.destroy()
	wantZeroWords(t, words)
}

func TestWipingEncoders(t *testing.T) {
	t.Parallel()
	b := []byte{0xfb, 0xff, 0x01}
	if got := b64urlWiped(b); got != "-_8B" || !bytes.Equal(b, make([]byte, 3)) {
		t.Errorf("b64urlWiped = %q, input left %x", got, b)
	}
	if got := string(hexLine([]byte{0x00, 0xab})); got != "00ab\n" {
		t.Errorf("hexLine = %q", got)
	}
	// The EC scalar is read at the field size, leading zeros kept.
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := k.Bytes()
	if got, err := ecScalarBytes(k, 32); err != nil || !bytes.Equal(got, want) {
		t.Errorf("ecScalarBytes = %x, %v; want %x", got, err, want)
	}
	small := &ecdsa.PrivateKey{PublicKey: k.PublicKey, D: big.NewInt(1)}
	if got, _ := ecScalarBytes(small, 32); len(got) != 32 || got[31] != 1 {
		t.Errorf("ecScalarBytes of 1 = %x", got)
	}
}
