package main

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// keyVaultAPIVersion is the release API version; 7.4 is what Microsoft's
// sidecar uses, and it is GA on Key Vault and Managed HSM.
const keyVaultAPIVersion = "7.4"

// Wrapping algorithms of a release (KeyEncryptionAlgorithm).
const (
	encRSAAESKeyWrapSHA1 = "CKM_RSA_AES_KEY_WRAP" // OAEP with SHA-1
	encRSAAESKeyWrap256  = "RSA_AES_KEY_WRAP_256"
	encRSAAESKeyWrap384  = "RSA_AES_KEY_WRAP_384"
)

// preferredEnc is what we ask for; the signed payload says what was used.
const preferredEnc = encRSAAESKeyWrap256

// releaseJWSAlgs are the signature algorithms accepted on a release
// response: Key Vault and Managed HSM sign with their RSA TLS key.
var releaseJWSAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}

// Bounds on the untrusted response.
const (
	maxX5C        = 8
	maxCertDER    = 16 << 10
	maxPlainKey   = 16 << 10
	maxOctKeySize = 512
)

// requestKeyRelease POSTs the MAA token to the vault and returns the JWS.
func (s *server) requestKeyRelease(ctx context.Context, vault string, key keyRef, bearer, maaToken string) (string, error) {
	path := "/keys/" + key.Name
	if key.Version != "" {
		path += "/" + key.Version
	}
	u := url.URL{Scheme: "https", Host: vault, Path: path + "/release", RawQuery: "api-version=" + keyVaultAPIVersion}
	target := u.String()
	body, err := json.Marshal(map[string]string{"target": maaToken, "enc": preferredEnc})
	if err != nil {
		return "", err
	}
	defer clear(body)
	resp, _, err := doWithRetry(withSecrets(ctx, maaToken), s.client, "Key Vault", s.retry, s.log, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "skr/"+version)
		return req, nil
	})
	if err != nil {
		return "", err
	}
	var out struct {
		Value string `json:"value"`
	}
	if err := json.Unmarshal(resp, &out); err != nil || strings.TrimSpace(out.Value) == "" {
		return "", newError(kindUpstream, err, "Key Vault: %s answered 200 without a release JWS in \"value\"", vault)
	}
	return strings.TrimSpace(out.Value), nil
}

// verifyReleaseJWS checks the response's signature with x5c[0] and the
// header alg, x5c[0]'s chain to roots (nil = system roots) through x5c[1:],
// and that x5c[0] is valid for the vault's host name. Only then are the
// payload and its signer's certificate returned.
func verifyReleaseJWS(compact, vault string, roots *x509.CertPool, now time.Time) ([]byte, *x509.Certificate, error) {
	jws, err := parseJWS(compact)
	if err != nil {
		return nil, nil, fmt.Errorf("parse JWS: %w", err)
	}
	chain, err := parseX5C(jws.Header.X5C)
	if err != nil {
		return nil, nil, err
	}
	leaf := chain[0]
	if jws.Header.X5tS256 != "" {
		sum := sha256.Sum256(leaf.Raw)
		if subtle.ConstantTimeCompare([]byte(jws.Header.X5tS256), []byte(b64url(sum[:]))) != 1 {
			return nil, nil, errors.New("header x5t#S256 is not the thumbprint of x5c[0]")
		}
	}
	if _, ok := leaf.PublicKey.(*rsa.PublicKey); !ok {
		return nil, nil, fmt.Errorf("x5c[0] has a %T key; Key Vault signs with RSA", leaf.PublicKey)
	}
	if err := jws.verify(leaf.PublicKey, releaseJWSAlgs...); err != nil {
		return nil, nil, fmt.Errorf("JWS signature with x5c[0] (%s): %w", leaf.Subject, err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	host := hostName(vault)
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       host,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, nil, fmt.Errorf("JWS signer certificate %q for %s: %w", leaf.Subject.CommonName, host, err)
	}
	return jws.Payload, leaf, nil
}

// certName names a certificate for a log line: its common name (else its
// first DNS name) and its issuer's.
func certName(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	name := c.Subject.CommonName
	if name == "" && len(c.DNSNames) > 0 {
		name = c.DNSNames[0]
	}
	return bounded(name) + " (issued by " + bounded(c.Issuer.CommonName) + ")"
}

// parseX5C decodes the header's certificates (standard base64 DER).
func parseX5C(x5c []string) ([]*x509.Certificate, error) {
	if len(x5c) == 0 {
		return nil, errors.New("JWS header has no x5c certificate chain")
	}
	if len(x5c) > maxX5C {
		return nil, fmt.Errorf("JWS header x5c has %d certificates, more than %d", len(x5c), maxX5C)
	}
	certs := make([]*x509.Certificate, 0, len(x5c))
	for i, s := range x5c {
		if len(s) > maxCertDER*2 {
			return nil, fmt.Errorf("x5c[%d] is too large", i)
		}
		der, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("x5c[%d] is not standard base64: %w", i, err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("x5c[%d]: %w", i, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}
