package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	_ "crypto/sha512"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"slices"
	"strings"
	"time"
)

// maxJWSSize bounds a compact JWS we parse; the largest legitimate ones
// (Key Vault release answers with an x5c chain and a wrapped RSA-4096 key)
// are tens of KiB.
const maxJWSSize = 1 << 20

// b64url encodes without padding, as JOSE wants.
func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// b64urlDecode decodes base64url with or without padding. Unlike the
// encoding/base64 decoders it refuses line breaks, and it refuses the
// standard alphabet's '+' and '/' and non-canonical trailing bits, so one
// value has exactly one accepted spelling (besides padding).
func b64urlDecode(s string) ([]byte, error) {
	unpadded := strings.TrimRight(s, "=")
	for i := 0; i < len(unpadded); i++ {
		if !isB64URLChar(unpadded[i]) {
			return nil, fmt.Errorf("base64url: invalid character %q at offset %d", unpadded[i], i)
		}
	}
	if len(unpadded) != len(s) {
		// Padding, when present, must be exactly what the length calls for.
		if len(s)%4 != 0 || len(s)-len(unpadded) > 2 {
			return nil, errors.New("base64url: bad padding")
		}
		b, err := base64.URLEncoding.Strict().DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("base64url: %w", err)
		}
		return b, nil
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("base64url: %w", err)
	}
	return b, nil
}

func isB64URLChar(c byte) bool {
	return 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_'
}

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

// parseJWS splits and decodes a compact JWS (untrusted input). Nothing in
// the result is trustworthy until verify succeeds.
func parseJWS(compact string) (*parsedJWS, error) {
	if len(compact) > maxJWSSize {
		return nil, fmt.Errorf("JWS is larger than %d bytes", maxJWSSize)
	}
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("JWS has %d parts, want 3 (header.payload.signature)", len(parts))
	}
	rawHeader, err := b64urlDecode(parts[0])
	if err != nil {
		return nil, fmt.Errorf("JWS header: %w", err)
	}
	header, err := parseJWSHeader(rawHeader)
	if err != nil {
		return nil, err
	}
	payload, err := b64urlDecode(parts[1])
	if err != nil {
		return nil, fmt.Errorf("JWS payload: %w", err)
	}
	sig, err := b64urlDecode(parts[2])
	if err != nil {
		return nil, fmt.Errorf("JWS signature: %w", err)
	}
	return &parsedJWS{
		Header:       header,
		RawHeader:    rawHeader,
		Payload:      payload,
		SigningInput: parts[0] + "." + parts[1],
		Signature:    sig,
	}, nil
}

// parseJWSHeader decodes the protected header and refuses what we cannot
// honour: no alg, or any critical ("crit") extension: we implement none,
// and a recipient that does not understand a critical extension must reject
// the JWS (RFC 7515), since its meaning may change how it is read.
func parseJWSHeader(raw []byte) (jwsHeader, error) {
	var h jwsHeader
	if err := decodeJSONObject(raw, &h); err != nil {
		return h, fmt.Errorf("JWS header: %w", err)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(raw, &members); err != nil {
		return h, fmt.Errorf("JWS header: %w", err)
	}
	if h.Alg == "" {
		return h, errors.New(`JWS header has no "alg"`)
	}
	if crit, ok := members["crit"]; ok {
		return h, fmt.Errorf("JWS header has critical extensions %s, which skr does not implement", truncate(string(crit), 100))
	}
	return h, nil
}

// decodeJSONObject decodes exactly one JSON object, nothing before or after.
func decodeJSONObject(b []byte, v any) error {
	trimmed := bytes.TrimSpace(b)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return errors.New("not a JSON object")
	}
	return json.Unmarshal(trimmed, v)
}

// jwtClaims reads a compact JWT's claims without checking its signature:
// for explaining what a token says, never for trusting it. Numbers keep
// the form they were written in, as release policies compare them.
func jwtClaims(token string) (map[string]any, error) {
	jws, err := parseJWS(strings.TrimSpace(token))
	if err != nil {
		return nil, err
	}
	return jws.claims()
}

// claims decodes a JWS payload as JWT claims, numbers as written.
func (jws *parsedJWS) claims() (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(jws.Payload))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return nil, errors.New("the token's claims are not a JSON object")
	}
	return claims, nil
}

// jwsAlg describes one JWS signature algorithm (RFC 7518).
type jwsAlg struct {
	hash  crypto.Hash
	kind  string         // "RS" (PKCS#1 v1.5), "PS" (PSS) or "ES" (ECDSA)
	curve elliptic.Curve // ES only
}

var jwsAlgs = map[string]jwsAlg{
	"RS256": {crypto.SHA256, "RS", nil},
	"RS384": {crypto.SHA384, "RS", nil},
	"RS512": {crypto.SHA512, "RS", nil},
	"PS256": {crypto.SHA256, "PS", nil},
	"PS384": {crypto.SHA384, "PS", nil},
	"PS512": {crypto.SHA512, "PS", nil},
	"ES256": {crypto.SHA256, "ES", elliptic.P256()},
	"ES384": {crypto.SHA384, "ES", elliptic.P384()},
	"ES512": {crypto.SHA512, "ES", elliptic.P521()},
}

// lookupJWSAlg refuses "none", HMAC and anything else not in jwsAlgs.
func lookupJWSAlg(alg string) (jwsAlg, error) {
	a, ok := jwsAlgs[alg]
	if !ok {
		return a, fmt.Errorf("JWS algorithm %q is not supported (want RS256/384/512, PS256/384/512 or ES256/384/512)", alg)
	}
	return a, nil
}

func (a jwsAlg) digest(signingInput string) []byte {
	h := a.hash.New()
	h.Write([]byte(signingInput))
	return h.Sum(nil)
}

// verify checks the signature with pub; alg must be one of allowed
// (RS256, PS256, ES256, ES384, ...); "none" is always refused.
// The header's alg picks the algorithm only after it passes allowed, so a
// token cannot talk us into a weaker or different scheme than the caller
// expects for that key.
func (j *parsedJWS) verify(pub crypto.PublicKey, allowed ...string) error {
	alg := j.Header.Alg
	if alg == "none" || alg == "" {
		return errors.New("JWS is unsigned (alg none): refused")
	}
	if !slices.Contains(allowed, alg) {
		return fmt.Errorf("JWS algorithm %q is not allowed here (allowed: %s)", alg, strings.Join(allowed, ", "))
	}
	a, err := lookupJWSAlg(alg)
	if err != nil {
		return err
	}
	if err := checkKeyFitsAlg(pub, alg, a); err != nil {
		return err
	}
	digest := a.digest(j.SigningInput)
	switch a.kind {
	case "RS":
		err = rsa.VerifyPKCS1v15(pub.(*rsa.PublicKey), a.hash, digest, j.Signature)
	case "PS":
		// JWA says the salt is as long as the hash; auto-detect accepts
		// that and other salt lengths signers have used.
		err = rsa.VerifyPSS(pub.(*rsa.PublicKey), a.hash, digest, j.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: a.hash})
	case "ES":
		err = verifyECDSARaw(pub.(*ecdsa.PublicKey), digest, j.Signature)
	}
	if err != nil {
		return fmt.Errorf("JWS %s signature does not verify: %w", alg, err)
	}
	return nil
}

// checkKeyFitsAlg refuses a key of the wrong type, curve or size for alg.
func checkKeyFitsAlg(pub crypto.PublicKey, alg string, a jwsAlg) error {
	switch a.kind {
	case "RS", "PS":
		k, ok := pub.(*rsa.PublicKey)
		if !ok || k == nil || k.N == nil {
			return fmt.Errorf("JWS algorithm %s needs an RSA public key, got %T", alg, pub)
		}
		if k.N.BitLen() < minRSABits {
			return fmt.Errorf("JWS signer's RSA key has %d bits, fewer than the %d required", k.N.BitLen(), minRSABits)
		}
	case "ES":
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok || k == nil || k.Curve == nil {
			return fmt.Errorf("JWS algorithm %s needs an EC public key, got %T", alg, pub)
		}
		if k.Curve != a.curve {
			return fmt.Errorf("JWS algorithm %s needs a %s key, got %s", alg, a.curve.Params().Name, k.Curve.Params().Name)
		}
	}
	return nil
}

// verifyECDSARaw checks a JOSE ECDSA signature: R and S as fixed-size
// big-endian integers, concatenated, as JWA defines it, not DER as in X.509.
func verifyECDSARaw(pub *ecdsa.PublicKey, digest, sig []byte) error {
	size := curveByteSize(pub.Curve)
	if len(sig) != 2*size {
		return fmt.Errorf("ECDSA signature is %d bytes, want %d", len(sig), 2*size)
	}
	r := new(big.Int).SetBytes(sig[:size])
	s := new(big.Int).SetBytes(sig[size:])
	if !ecdsa.Verify(pub, digest, r, s) {
		return errors.New("ECDSA verification error")
	}
	return nil
}

// signJWS makes a compact JWS (used by the test stand-ins, and wherever the
// sidecar must sign). header is copied and gets "alg" set; key must suit alg.
func signJWS(header map[string]any, payload []byte, key crypto.Signer, alg string) (string, error) {
	a, err := lookupJWSAlg(alg)
	if err != nil {
		return "", err
	}
	if err := checkSignerFitsAlg(key, alg, a); err != nil {
		return "", err
	}
	h := make(map[string]any, len(header)+1)
	for k, v := range header {
		h[k] = v
	}
	h["alg"] = alg
	rawHeader, err := json.Marshal(h)
	if err != nil {
		return "", fmt.Errorf("encode JWS header: %w", err)
	}
	signingInput := b64url(rawHeader) + "." + b64url(payload)
	digest := a.digest(signingInput)
	var sig []byte
	switch a.kind {
	case "RS":
		sig, err = key.Sign(rand.Reader, digest, a.hash)
	case "PS":
		sig, err = key.Sign(rand.Reader, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: a.hash})
	case "ES":
		var der []byte
		der, err = key.Sign(rand.Reader, digest, a.hash)
		if err == nil {
			sig, err = ecdsaDERToRaw(der, curveByteSize(a.curve))
		}
	}
	if err != nil {
		return "", fmt.Errorf("sign JWS with %s: %w", alg, err)
	}
	return signingInput + "." + b64url(sig), nil
}

// checkSignerFitsAlg is checkKeyFitsAlg for the signing side, minus the
// RSA size floor so tests can make tokens that verify must refuse.
func checkSignerFitsAlg(key crypto.Signer, alg string, a jwsAlg) error {
	if key == nil {
		return errors.New("sign JWS: no key")
	}
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		if a.kind == "RS" || a.kind == "PS" {
			return nil
		}
	case *ecdsa.PublicKey:
		if a.kind == "ES" && pub.Curve == a.curve {
			return nil
		}
	}
	return fmt.Errorf("sign JWS: a %T key cannot sign %s", key.Public(), alg)
}

// ecdsaDERToRaw turns an ASN.1 ECDSA-Sig-Value into JOSE's R||S.
func ecdsaDERToRaw(der []byte, size int) ([]byte, error) {
	var v struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &v)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("signer returned a malformed ECDSA signature")
	}
	if v.R.Sign() <= 0 || v.S.Sign() <= 0 || v.R.BitLen() > 8*size || v.S.BitLen() > 8*size {
		return nil, errors.New("signer returned an out-of-range ECDSA signature")
	}
	raw := make([]byte, 2*size)
	v.R.FillBytes(raw[:size])
	v.S.FillBytes(raw[size:])
	return raw, nil
}

// checkJWTTimes checks exp and nbf with the given clock skew, and that iat
// is not in the future; each only when present. Use checkJWTTimesRequiringExp
// for tokens that must expire.
func checkJWTTimes(claims map[string]any, now time.Time, skew time.Duration) error {
	if skew < 0 {
		skew = 0
	}
	exp, hasExp, err := numericDate(claims, "exp")
	if err != nil {
		return err
	}
	if hasExp && !now.Before(exp.Add(skew)) {
		return fmt.Errorf("token expired at %s (now %s)", exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	nbf, hasNbf, err := numericDate(claims, "nbf")
	if err != nil {
		return err
	}
	if hasNbf && now.Add(skew).Before(nbf) {
		return fmt.Errorf("token is not valid before %s (now %s)", nbf.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	iat, hasIat, err := numericDate(claims, "iat")
	if err != nil {
		return err
	}
	if hasIat && now.Add(skew).Before(iat) {
		return fmt.Errorf("token was issued in the future, at %s (now %s)", iat.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return nil
}

// checkJWTTimesRequiringExp is checkJWTTimes for tokens that must carry an
// expiry, such as MAA's: a token without exp would be valid forever.
func checkJWTTimesRequiringExp(claims map[string]any, now time.Time, skew time.Duration) error {
	if _, ok := claims["exp"]; !ok {
		return errors.New(`token has no "exp" claim`)
	}
	return checkJWTTimes(claims, now, skew)
}

// maxNumericDate caps a NumericDate so the conversion to time.Time cannot
// overflow (about year 33658: effectively "never").
const maxNumericDate = 1e12

// numericDate reads an RFC 7519 NumericDate claim: seconds since the epoch,
// as a JSON number (float64 or json.Number) or an integer a caller put there.
func numericDate(claims map[string]any, name string) (time.Time, bool, error) {
	v, ok := claims[name]
	if !ok {
		return time.Time{}, false, nil
	}
	var f float64
	switch n := v.(type) {
	case float64:
		f = n
	case json.Number:
		var err error
		if f, err = n.Float64(); err != nil {
			return time.Time{}, true, fmt.Errorf("claim %q is not a number: %q", name, n.String())
		}
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	default:
		return time.Time{}, true, fmt.Errorf("claim %q is a %T, want a number of seconds", name, v)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return time.Time{}, true, fmt.Errorf("claim %q is not a finite number", name)
	}
	f = max(min(f, maxNumericDate), -maxNumericDate)
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), true, nil
}
