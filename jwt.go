package main

// JOSE by hand on crypto/*: base64url, compact JWS, JWT time checks, JWK.
//
// STUB: owned by the "jose" helper; signatures are the contract.

import (
	"crypto"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"time"
)

// b64url encodes without padding, as JOSE wants.
func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// b64urlDecode decodes base64url with or without padding.
func b64urlDecode(s string) ([]byte, error) { return nil, errors.New("stub") }

// jwsHeader is the protected header fields skr reads.
type jwsHeader struct {
	Alg     string   `json:"alg"`
	Kid     string   `json:"kid,omitempty"`
	Typ     string   `json:"typ,omitempty"`
	Jku     string   `json:"jku,omitempty"`
	X5C     []string `json:"x5c,omitempty"` // standard base64 DER
	X5tS256 string   `json:"x5t#S256,omitempty"`
}

// parsedJWS is a compact JWS split and decoded, not yet verified.
type parsedJWS struct {
	Header       jwsHeader
	RawHeader    []byte
	Payload      []byte
	SigningInput string // b64url(header) "." b64url(payload)
	Signature    []byte
}

// parseJWS splits and decodes a compact JWS (untrusted input).
func parseJWS(compact string) (*parsedJWS, error) { return nil, errors.New("stub") }

// verify checks the signature with pub; alg must be one of allowed
// (RS256, PS256, ES256, ES384, ...); "none" is always refused.
func (j *parsedJWS) verify(pub crypto.PublicKey, allowed ...string) error {
	return errors.New("stub")
}

// signJWS makes a compact JWS (used by the test stand-ins, and wherever the
// sidecar must sign).
func signJWS(header map[string]any, payload []byte, key crypto.Signer, alg string) (string, error) {
	return "", errors.New("stub")
}

// checkJWTTimes checks exp and nbf with the given clock skew.
func checkJWTTimes(claims map[string]any, now time.Time, skew time.Duration) error {
	return errors.New("stub")
}

// jwk is a JSON Web Key of kty RSA, EC or oct, public or private.
type jwk struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid,omitempty"`
	Use    string   `json:"use,omitempty"`
	KeyOps []string `json:"key_ops,omitempty"`
	Alg    string   `json:"alg,omitempty"`
	N      string   `json:"n,omitempty"`
	E      string   `json:"e,omitempty"`
	D      string   `json:"d,omitempty"`
	P      string   `json:"p,omitempty"`
	Q      string   `json:"q,omitempty"`
	DP     string   `json:"dp,omitempty"`
	DQ     string   `json:"dq,omitempty"`
	QI     string   `json:"qi,omitempty"`
	Crv    string   `json:"crv,omitempty"`
	X      string   `json:"x,omitempty"`
	Y      string   `json:"y,omitempty"`
	K      string   `json:"k,omitempty"`
	X5C    []string `json:"x5c,omitempty"`
}

// rsaPublicJWK is the public JWK of pub with kid = its RFC 7638 thumbprint.
func rsaPublicJWK(pub *rsa.PublicKey) jwk { return jwk{} }

// jwkThumbprint is the RFC 7638 SHA-256 thumbprint, base64url.
func jwkThumbprint(k jwk) (string, error) { return "", errors.New("stub") }

// jwkFromPrivateKey encodes *rsa.PrivateKey, *ecdsa.PrivateKey (P-256/384/521)
// or []byte (oct) as a private JWK.
func jwkFromPrivateKey(key any) (jwk, error) { return jwk{}, errors.New("stub") }

// parseJWK decodes an untrusted JWK's JSON.
func parseJWK(b []byte) (jwk, error) { return jwk{}, errors.New("stub") }

// PublicKey returns the *rsa.PublicKey or *ecdsa.PublicKey of an RSA/EC JWK.
func (k jwk) PublicKey() (crypto.PublicKey, error) { return nil, errors.New("stub") }

// PrivateKey returns *rsa.PrivateKey, *ecdsa.PrivateKey or []byte (oct).
func (k jwk) PrivateKey() (any, error) { return nil, errors.New("stub") }
