package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"math/big"
	"net/url"
	"strings"
)

// What Key Vault released: the checks on its signed payload and the
// unwrapping of the key inside.

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
	if u, _ := url.Parse(e.Kid); hostName(u.Host) != hostName(vault) {
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
	// Drop our copies of the key material on every path; the JWK strings
	// are what the caller gets and cannot be overwritten.
	defer zeroPrivateKey(priv)
	k, err := jwkFromPrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("encode released %s key as JWK: %w", e.Kty, err)
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
// public-part check makes either encoding unambiguous. A key that fails a
// check is overwritten before the error is returned.
func (e *releaseEnvelope) decodePlaintext(plain []byte) (any, error) {
	key, err := e.parsePlaintext(plain)
	if err != nil {
		zeroPrivateKey(key)
		return nil, err
	}
	return key, nil
}

func (e *releaseEnvelope) parsePlaintext(plain []byte) (any, error) {
	switch e.Kty {
	case "oct":
		if len(plain) > maxOctKeySize {
			return nil, fmt.Errorf("oct key of %d bytes is implausible", len(plain))
		}
		return bytes.Clone(plain), nil
	case "RSA":
		key, err := parsePrivateKeyDER(plain, pkcs8PrivateKey, pkcs1PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("released RSA key: not PKCS#8: %w", err)
		}
		rk, ok := key.(*rsa.PrivateKey)
		if !ok {
			return key, fmt.Errorf("released key is a %T, but Key Vault says RSA", key)
		}
		if err := rk.Validate(); err != nil {
			return rk, fmt.Errorf("released RSA key is inconsistent: %w", err)
		}
		if err := matchRSAPublic(&rk.PublicKey, e.pub.N, e.pub.E); err != nil {
			return rk, err
		}
		return rk, nil
	case "EC":
		key, err := parsePrivateKeyDER(plain, pkcs8PrivateKey, sec1PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("released EC key: not PKCS#8: %w", err)
		}
		ek, ok := key.(*ecdsa.PrivateKey)
		if !ok {
			return key, fmt.Errorf("released key is a %T, but Key Vault says EC", key)
		}
		if err := matchECPublic(&ek.PublicKey, e.pub.Crv, e.pub.X, e.pub.Y); err != nil {
			return ek, err
		}
		return ek, nil
	}
	return nil, fmt.Errorf("released key type %q is not supported", e.Kty)
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
	want, ok := jwkCurve(crv)
	if !ok {
		return fmt.Errorf("EC curve %q is not supported (P-256, P-384, P-521)", truncate(crv, 20))
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
	size := curveByteSize(want)
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
