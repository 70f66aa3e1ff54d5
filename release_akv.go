package main

// The Key Vault / Managed HSM release call and its response: the JWS is
// verified (signature, x5c chain to the trust roots, the vault's host name)
// before the payload is read; the payload is bound to this request and our
// wrapping key before the key material is unwrapped.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"math/big"
	"net"
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

// upstreamRoots is the pool the upstream client trusts (nil = the system
// roots, which honour SSL_CERT_FILE): the JWS signer chains to the same.
func (s *server) upstreamRoots() *x509.CertPool {
	if tr, ok := s.client.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		return tr.TLSClientConfig.RootCAs
	}
	return nil
}

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
	resp, _, err := doWithRetry(withSecrets(ctx, maaToken), s.client, "Key Vault", defaultRetry, s.log, func(ctx context.Context) (*http.Request, error) {
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
		return "", newAPIError(http.StatusBadGateway, err, "Key Vault: %s answered 200 without a release JWS in \"value\"", vault)
	}
	return strings.TrimSpace(out.Value), nil
}

// verifyReleaseJWS checks the response's signature with x5c[0] and the
// header alg, x5c[0]'s chain to roots (nil = system roots) through x5c[1:],
// and that x5c[0] is valid for the vault's host name. Only then is the
// payload returned.
func verifyReleaseJWS(compact, vault string, roots *x509.CertPool, now time.Time) ([]byte, error) {
	jws, err := parseJWS(compact)
	if err != nil {
		return nil, fmt.Errorf("parse JWS: %w", err)
	}
	chain, err := parseX5C(jws.Header.X5C)
	if err != nil {
		return nil, err
	}
	leaf := chain[0]
	if jws.Header.X5tS256 != "" {
		sum := sha256.Sum256(leaf.Raw)
		if subtle.ConstantTimeCompare([]byte(jws.Header.X5tS256), []byte(b64url(sum[:]))) != 1 {
			return nil, errors.New("header x5t#S256 is not the thumbprint of x5c[0]")
		}
	}
	if _, ok := leaf.PublicKey.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("x5c[0] has a %T key; Key Vault signs with RSA", leaf.PublicKey)
	}
	if err := jws.verify(leaf.PublicKey, releaseJWSAlgs...); err != nil {
		return nil, fmt.Errorf("JWS signature with x5c[0] (%s): %w", leaf.Subject, err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	host := hostOnly(vault)
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		DNSName:       host,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return nil, fmt.Errorf("JWS signer certificate %q for %s: %w", leaf.Subject.CommonName, host, err)
	}
	return jws.Payload, nil
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

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return strings.Trim(h, "[]")
	}
	return strings.Trim(hostport, "[]")
}

// releasePayload is the signed payload of a release response.
type releasePayload struct {
	Request struct {
		APIVersion string `json:"api-version"`
		Enc        string `json:"enc"`
		Kid        string `json:"kid"`
	} `json:"request"`
	Response struct {
		Key struct {
			Key releasedKeyJSON `json:"key"`
		} `json:"key"`
	} `json:"response"`
}

type releasedKeyJSON struct {
	Kid    string   `json:"kid"`
	Kty    string   `json:"kty"`
	KeyOps []string `json:"key_ops"`
	N      string   `json:"n"`
	E      string   `json:"e"`
	Crv    string   `json:"crv"`
	X      string   `json:"x"`
	Y      string   `json:"y"`
	KeyHSM string   `json:"key_hsm"`
}

// keyHSMBlob is key_hsm decoded: the BYOK transfer envelope.
type keyHSMBlob struct {
	SchemaVersion string `json:"schema_version"`
	Header        struct {
		Alg string `json:"alg"`
		Enc string `json:"enc"`
		Kid string `json:"kid"`
	} `json:"header"`
	Ciphertext string `json:"ciphertext"`
}

// releaseEnvelope is what a verified payload says about the released key.
type releaseEnvelope struct {
	Kid         string   // the released key's identifier (response.key.key.kid)
	Kty         string   // RSA, EC or oct, without the -HSM suffix
	KeyOps      []string // as Key Vault holds them
	Enc         string   // the wrapping algorithm used, from the signed payload
	WrappingKid string   // key_hsm header.kid: whom it is wrapped to
	Ciphertext  []byte
	pub         releasedKeyJSON // public parts, for the cross-check
}

// parseReleasePayload reads a verified payload; it still treats it as
// untrusted input (bounded, every field checked).
func parseReleasePayload(payload []byte) (*releaseEnvelope, error) {
	var p releasePayload
	if err := json.Unmarshal(payload, &p); err != nil {
		return nil, fmt.Errorf("payload is not the expected JSON: %w", err)
	}
	k := p.Response.Key.Key
	if k.Kid == "" {
		return nil, errors.New("payload has no response.key.key.kid")
	}
	kty, err := baseKty(k.Kty)
	if err != nil {
		return nil, err
	}
	switch kty {
	case "RSA":
		if k.N == "" || k.E == "" {
			return nil, errors.New("RSA key without its public n and e")
		}
	case "EC":
		if k.Crv == "" || k.X == "" || k.Y == "" {
			return nil, errors.New("EC key without its public crv, x and y")
		}
	}
	if k.KeyHSM == "" {
		return nil, errors.New("payload has no response.key.key.key_hsm")
	}
	raw, err := b64urlDecode(k.KeyHSM)
	if err != nil {
		return nil, fmt.Errorf("key_hsm is not base64url: %w", err)
	}
	var blob keyHSMBlob
	if err := json.Unmarshal(raw, &blob); err != nil {
		return nil, fmt.Errorf("key_hsm is not the expected JSON: %w", err)
	}
	if blob.Header.Alg != "dir" {
		return nil, fmt.Errorf("key_hsm header alg %q is not \"dir\"", blob.Header.Alg)
	}
	if blob.Header.Kid == "" {
		return nil, errors.New("key_hsm header has no kid")
	}
	enc, err := releaseEnc(p.Request.Enc, blob.Header.Enc)
	if err != nil {
		return nil, err
	}
	ct, err := b64urlDecode(blob.Ciphertext)
	if err != nil || len(ct) == 0 {
		return nil, fmt.Errorf("key_hsm ciphertext is missing or not base64url: %v", err)
	}
	return &releaseEnvelope{
		Kid:         k.Kid,
		Kty:         kty,
		KeyOps:      k.KeyOps,
		Enc:         enc,
		WrappingKid: blob.Header.Kid,
		Ciphertext:  ct,
		pub:         k,
	}, nil
}

// baseKty accepts Key Vault's key types and drops the -HSM suffix: the JWK
// we hand out is a plain key, as Microsoft's sidecar returns it.
func baseKty(kty string) (string, error) {
	switch kty {
	case "RSA", "RSA-HSM":
		return "RSA", nil
	case "EC", "EC-HSM":
		return "EC", nil
	case "oct", "oct-HSM":
		return "oct", nil
	}
	return "", fmt.Errorf("released key type %q is not one of RSA, RSA-HSM, EC, EC-HSM, oct, oct-HSM", truncate(kty, 40))
}

// releaseEnc takes the algorithm from the signed request.enc (what Key
// Vault says it used), falling back to key_hsm's header.enc, also signed;
// the two must agree when both are there.
func releaseEnc(requestEnc, headerEnc string) (string, error) {
	enc := requestEnc
	switch {
	case enc == "":
		enc = headerEnc
	case headerEnc != "" && headerEnc != requestEnc:
		return "", fmt.Errorf("payload request.enc %q and key_hsm header.enc %q disagree", requestEnc, headerEnc)
	}
	if _, err := oaepHash(enc); err != nil {
		return "", err
	}
	return enc, nil
}

func oaepHash(enc string) (func() hash.Hash, error) {
	switch enc {
	case encRSAAESKeyWrapSHA1:
		return sha1.New, nil
	case encRSAAESKeyWrap256:
		return sha256.New, nil
	case encRSAAESKeyWrap384:
		return sha512.New384, nil
	case "":
		return nil, errors.New("the signed payload names no wrapping algorithm (request.enc)")
	}
	return nil, fmt.Errorf("wrapping algorithm %q is not one of %s, %s, %s", truncate(enc, 40), encRSAAESKeyWrapSHA1, encRSAAESKeyWrap256, encRSAAESKeyWrap384)
}

// checkBinding makes sure the response is for the key we asked for, in the
// vault we asked, and is wrapped to our wrapping key.
func (e *releaseEnvelope) checkBinding(want keyRef, vault string, wk *wrappingKey) error {
	if e.WrappingKid != wk.kid {
		return fmt.Errorf("key material is wrapped to key %q, not to this sidecar's wrapping key %q", truncate(e.WrappingKid, 100), wk.kid)
	}
	name, ver, err := keyIDParts(e.Kid)
	if err != nil {
		return err
	}
	if u, _ := url.Parse(e.Kid); !strings.EqualFold(hostOnly(u.Host), hostOnly(vault)) {
		return fmt.Errorf("released key %q is not in vault %s", truncate(e.Kid, 200), vault)
	}
	if !strings.EqualFold(name, want.Name) {
		return fmt.Errorf("released key %q is not key %q", truncate(e.Kid, 200), want.Name)
	}
	if want.Version != "" && !strings.EqualFold(ver, want.Version) {
		return fmt.Errorf("released key %q is not version %s", truncate(e.Kid, 200), want.Version)
	}
	return nil
}

// keyIDParts splits https://{vault}/keys/{name}[/{version}].
func keyIDParts(kid string) (name, ver string, err error) {
	u, err := url.Parse(kid)
	if err != nil || u.Scheme != "https" {
		return "", "", fmt.Errorf("released key id %q is not an https key identifier", truncate(kid, 200))
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] != "keys" || parts[1] == "" {
		return "", "", fmt.Errorf("released key id %q is not https://VAULT/keys/NAME[/VERSION]", truncate(kid, 200))
	}
	if len(parts) == 3 {
		ver = parts[2]
	}
	return parts[1], ver, nil
}

// unwrap decrypts the key material with the wrapping key, checks it
// against the public parts Key Vault signed, and returns the key as a JWK
// JSON string.
func (e *releaseEnvelope) unwrap(wk *wrappingKey) (string, error) {
	plain, err := unwrapKeyMaterial(wk.priv, e.Enc, e.Ciphertext)
	if err != nil {
		return "", err
	}
	defer clear(plain)
	priv, err := e.decodePlaintext(plain)
	if err != nil {
		return "", err
	}
	k, err := jwkFromPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("encode released %s key as JWK: %w", e.Kty, err)
	}
	// Drop our copies of the key material; the JWK strings are what the
	// caller gets and cannot be overwritten.
	switch pk := priv.(type) {
	case []byte:
		clear(pk)
	case *rsa.PrivateKey:
		zeroBigInts(pk.D, pk.Precomputed.Dp, pk.Precomputed.Dq, pk.Precomputed.Qinv)
		zeroBigInts(pk.Primes...)
	}
	k.Kid = e.Kid
	k.KeyOps = e.KeyOps
	out, err := json.Marshal(k)
	if err != nil {
		return "", fmt.Errorf("encode released key: %w", err)
	}
	return string(out), nil
}

// unwrapKeyMaterial is the PKCS#11 CKM_RSA_AES_KEY_WRAP construction: an
// RSA-OAEP-wrapped AES key (modulus-sized), then RFC 5649 key wrap.
func unwrapKeyMaterial(priv *rsa.PrivateKey, enc string, ct []byte) ([]byte, error) {
	if priv == nil {
		return nil, errors.New("the wrapping key is gone")
	}
	newHash, err := oaepHash(enc)
	if err != nil {
		return nil, err
	}
	n := priv.Size()
	if len(ct) <= n {
		return nil, fmt.Errorf("ciphertext of %d bytes is too short for an RSA-%d wrapped key and a wrapped payload", len(ct), n*8)
	}
	kek, err := rsa.DecryptOAEP(newHash(), nil, priv, ct[:n], nil)
	if err != nil {
		return nil, fmt.Errorf("RSA-OAEP (%s) decryption of the transfer key: %w", enc, err)
	}
	defer clear(kek)
	switch len(kek) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("transfer key is %d bytes, not an AES key", len(kek))
	}
	plain, err := aesKeyUnwrapPad(kek, ct[n:])
	if err != nil {
		return nil, fmt.Errorf("AES key unwrap (RFC 5649): %w", err)
	}
	if len(plain) == 0 || len(plain) > maxPlainKey {
		clear(plain)
		return nil, fmt.Errorf("unwrapped key material of %d bytes is implausible", len(plain))
	}
	return plain, nil
}

// decodePlaintext reads the key material per key type and checks it
// against the signed public parts. RSA and EC are PKCS#8 as the BYOK
// specification says; a bare PKCS#1 / SEC 1 key is accepted too, since the
// public-part check makes either encoding unambiguous.
func (e *releaseEnvelope) decodePlaintext(plain []byte) (any, error) {
	switch e.Kty {
	case "oct":
		if len(plain) > maxOctKeySize {
			return nil, fmt.Errorf("oct key of %d bytes is implausible", len(plain))
		}
		return bytes.Clone(plain), nil
	case "RSA":
		key, err := parsePrivateKeyDER(plain, func(b []byte) (any, error) { return x509.ParsePKCS1PrivateKey(b) })
		if err != nil {
			return nil, fmt.Errorf("released RSA key: %w", err)
		}
		rk, ok := key.(*rsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("released key is a %T, but Key Vault says RSA", key)
		}
		if err := rk.Validate(); err != nil {
			return nil, fmt.Errorf("released RSA key is inconsistent: %w", err)
		}
		if err := matchRSAPublic(&rk.PublicKey, e.pub.N, e.pub.E); err != nil {
			return nil, err
		}
		return rk, nil
	case "EC":
		key, err := parsePrivateKeyDER(plain, func(b []byte) (any, error) { return x509.ParseECPrivateKey(b) })
		if err != nil {
			return nil, fmt.Errorf("released EC key: %w", err)
		}
		ek, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("released key is a %T, but Key Vault says EC", key)
		}
		if err := matchECPublic(&ek.PublicKey, e.pub.Crv, e.pub.X, e.pub.Y); err != nil {
			return nil, err
		}
		return ek, nil
	}
	return nil, fmt.Errorf("released key type %q is not supported", e.Kty)
}

func parsePrivateKeyDER(der []byte, bare func([]byte) (any, error)) (any, error) {
	key, err := x509.ParsePKCS8PrivateKey(der)
	if err == nil {
		return key, nil
	}
	if k, err2 := bare(der); err2 == nil {
		return k, nil
	}
	return nil, fmt.Errorf("not PKCS#8: %w", err)
}

func matchRSAPublic(pub *rsa.PublicKey, n, e string) error {
	nb, err := b64urlDecode(n)
	if err != nil {
		return fmt.Errorf("signed public n is not base64url: %w", err)
	}
	eb, err := b64urlDecode(e)
	if err != nil {
		return fmt.Errorf("signed public e is not base64url: %w", err)
	}
	if pub.N.Cmp(new(big.Int).SetBytes(nb)) != 0 || big.NewInt(int64(pub.E)).Cmp(new(big.Int).SetBytes(eb)) != 0 {
		return errors.New("the unwrapped RSA key does not match the public key Key Vault signed")
	}
	return nil
}

func matchECPublic(pub *ecdsa.PublicKey, crv, x, y string) error {
	want, err := curveByName(crv)
	if err != nil {
		return err
	}
	if pub.Curve != want {
		return fmt.Errorf("the unwrapped EC key is on %s, Key Vault signed %s", pub.Curve.Params().Name, crv)
	}
	xb, err := b64urlDecode(x)
	if err != nil {
		return fmt.Errorf("signed public x is not base64url: %w", err)
	}
	yb, err := b64urlDecode(y)
	if err != nil {
		return fmt.Errorf("signed public y is not base64url: %w", err)
	}
	size := (want.Params().BitSize + 7) / 8
	if len(xb) != size || len(yb) != size {
		return fmt.Errorf("signed public x and y are not %d bytes each", size)
	}
	signed, err := ecdsa.ParseUncompressedPublicKey(want, append(append([]byte{4}, xb...), yb...))
	if err != nil {
		return fmt.Errorf("signed public key is not a point on %s: %w", crv, err)
	}
	if !pub.Equal(signed) {
		return errors.New("the unwrapped EC key does not match the public key Key Vault signed")
	}
	return nil
}

func curveByName(crv string) (elliptic.Curve, error) {
	switch crv {
	case "P-256":
		return elliptic.P256(), nil
	case "P-384":
		return elliptic.P384(), nil
	case "P-521":
		return elliptic.P521(), nil
	}
	return nil, fmt.Errorf("EC curve %q is not supported (P-256, P-384, P-521)", truncate(crv, 20))
}
