package main

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

// A release response whose x5t#S256 header names a certificate other than
// x5c[0] is refused, even when that certificate is for the same key and
// vault and everything else verifies. Guards the thumbprint comparison in
// verifyReleaseJWS.
func TestVerifyReleaseJWSChecksX5tS256(t *testing.T) {
	t.Parallel()
	pki := getStandInPKI()
	signer := standInRSAKey(t, rsaKVSigner)
	const vault = "contoso.vault.azure.net"
	leaf := pki.inter.issue(&signer.PublicKey, vault)
	twin := pki.inter.issue(&signer.PublicKey, vault) // same key and name, another certificate
	var x5c []string
	for _, c := range []*x509.Certificate{leaf, pki.inter.cert, pki.root.cert} {
		x5c = append(x5c, base64.StdEncoding.EncodeToString(c.Raw))
	}
	thumbprint := func(c *x509.Certificate) string {
		sum := sha256.Sum256(c.Raw)
		return base64.RawURLEncoding.EncodeToString(sum[:])
	}
	payload := []byte(`{"response":{"key":{}}}`)
	for _, tc := range []struct {
		name string
		x5t  string
		ok   bool
	}{
		{"x5c[0]'s thumbprint", thumbprint(leaf), true},
		{"another certificate for the same key", thumbprint(twin), false},
		{"the issuer's thumbprint", thumbprint(pki.inter.cert), false},
	} {
		jws := standInSignJWS(map[string]any{"alg": "RS256", "x5c": x5c, "x5t#S256": tc.x5t}, payload, signer)
		got, _, err := verifyReleaseJWS(jws, vault, pki.roots(), time.Now())
		switch {
		case tc.ok && (err != nil || string(got) != string(payload)):
			t.Errorf("%s: refused: %v", tc.name, err)
		case !tc.ok && err == nil:
			t.Errorf("%s: accepted a response whose x5t#S256 is not x5c[0]'s", tc.name)
		case !tc.ok && !strings.Contains(err.Error(), "x5t#S256"):
			t.Errorf("%s: refused for another reason: %v", tc.name, err)
		}
	}
}
