package main

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	_ "crypto/sha512"
	"errors"
	"fmt"
	"math/big"
)

// maxJWKSize bounds a JWK we parse; an RSA-4096 private JWK is about 3.3 KiB.
const maxJWKSize = 64 << 10

// minRSABits is the smallest RSA modulus we accept a signature from.
const minRSABits = 2048

func curveByteSize(c elliptic.Curve) int { return (c.Params().BitSize + 7) / 8 }

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
func rsaPublicJWK(pub *rsa.PublicKey) jwk {
	k := jwk{Kty: "RSA", N: b64url(pub.N.Bytes()), E: b64url(big.NewInt(int64(pub.E)).Bytes())}
	k.Kid, _ = jwkThumbprint(k) // cannot fail: kty, n and e are set
	return k
}

// jwkThumbprint is the RFC 7638 SHA-256 thumbprint, base64url: the hash of
// the key type's required members only, in lexicographic order, no spaces.
func jwkThumbprint(k jwk) (string, error) {
	var members [][2]string
	switch k.Kty {
	case "RSA":
		members = [][2]string{{"e", k.E}, {"kty", k.Kty}, {"n", k.N}}
	case "EC":
		members = [][2]string{{"crv", k.Crv}, {"kty", k.Kty}, {"x", k.X}, {"y", k.Y}}
	case "oct":
		members = [][2]string{{"k", k.K}, {"kty", k.Kty}}
	default:
		return "", fmt.Errorf("JWK thumbprint: unsupported kty %q", k.Kty)
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range members {
		if m[1] == "" {
			return "", fmt.Errorf("JWK thumbprint: %s key has no %q", k.Kty, m[0])
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(jsonString(m[0]))
		buf.WriteByte(':')
		buf.Write(jsonString(m[1]))
	}
	buf.WriteByte('}')
	sum := sha256.Sum256(buf.Bytes())
	return b64url(sum[:]), nil
}

// jsonString is s as a JSON string without HTML escaping, as RFC 7638 wants.
func jsonString(s string) []byte {
	b, _ := marshalJSON(s) // a string always encodes
	return b
}

// jwkCurves maps JWK crv names to curves: the three NIST curves JOSE
// defines, the only ones this program signs, verifies, releases or imports
// with.
var jwkCurves = map[string]elliptic.Curve{
	"P-256": elliptic.P256(),
	"P-384": elliptic.P384(),
	"P-521": elliptic.P521(),
}

// jwkCurve returns the curve a JWK crv names.
func jwkCurve(crv string) (elliptic.Curve, bool) {
	c, ok := jwkCurves[crv]
	return c, ok
}

// jwkCurveName returns the JWK crv name of c.
func jwkCurveName(c elliptic.Curve) (string, bool) {
	for name, curve := range jwkCurves {
		if curve == c {
			return name, true
		}
	}
	return "", false
}

// jwkFromPrivateKey encodes *rsa.PrivateKey, *ecdsa.PrivateKey (P-256/384/521)
// or []byte (oct) as a private JWK.
func jwkFromPrivateKey(key any) (jwk, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return rsaPrivateJWK(k)
	case *ecdsa.PrivateKey:
		return ecPrivateJWK(k)
	case []byte:
		if len(k) == 0 {
			return jwk{}, errors.New("JWK: empty symmetric key")
		}
		return jwk{Kty: "oct", K: b64url(k)}, nil
	}
	return jwk{}, fmt.Errorf("JWK: unsupported key type %T", key)
}

func rsaPrivateJWK(k *rsa.PrivateKey) (jwk, error) {
	if k == nil || k.N == nil || k.D == nil {
		return jwk{}, errors.New("JWK: incomplete RSA private key")
	}
	if len(k.Primes) != 2 {
		return jwk{}, fmt.Errorf("JWK: RSA keys with %d primes are not supported, want 2", len(k.Primes))
	}
	pre := k.Precomputed
	if pre.Dp == nil || pre.Dq == nil || pre.Qinv == nil {
		// Precompute on a copy: the caller's key may be in use elsewhere.
		c := &rsa.PrivateKey{PublicKey: k.PublicKey, D: k.D, Primes: k.Primes}
		c.Precompute()
		pre = c.Precomputed
		if pre.Dp == nil {
			return jwk{}, errors.New("JWK: RSA key has no CRT values")
		}
		defer zeroBigInts(pre.Dp, pre.Dq, pre.Qinv)
	}
	return jwk{
		Kty: "RSA",
		N:   b64url(k.N.Bytes()),
		E:   b64url(big.NewInt(int64(k.E)).Bytes()),
		D:   b64urlWiped(k.D.Bytes()),
		P:   b64urlWiped(k.Primes[0].Bytes()),
		Q:   b64urlWiped(k.Primes[1].Bytes()),
		DP:  b64urlWiped(pre.Dp.Bytes()),
		DQ:  b64urlWiped(pre.Dq.Bytes()),
		QI:  b64urlWiped(pre.Qinv.Bytes()),
	}, nil
}

// ecPrivateJWK encodes x, y and d at the full field size, as JWA (RFC 7518)
// requires: a coordinate with leading zero bytes keeps them, so every
// reader knows the curve's size from the member's length.
func ecPrivateJWK(k *ecdsa.PrivateKey) (jwk, error) {
	if k == nil || k.Curve == nil {
		return jwk{}, errors.New("JWK: incomplete EC private key")
	}
	crv, ok := jwkCurveName(k.Curve)
	if !ok {
		return jwk{}, fmt.Errorf("JWK: unsupported curve %s", k.Curve.Params().Name)
	}
	point, err := k.PublicKey.Bytes()
	if err != nil {
		return jwk{}, fmt.Errorf("JWK: EC public key: %w", err)
	}
	size := curveByteSize(k.Curve)
	d, err := ecScalarBytes(k, size)
	if err != nil {
		return jwk{}, fmt.Errorf("JWK: EC private key: %w", err)
	}
	return jwk{Kty: "EC", Crv: crv, X: b64url(point[1 : 1+size]), Y: b64url(point[1+size:]), D: b64urlWiped(d)}, nil
}

// ecScalarBytes is the private scalar at the field size, read from D where
// it is set: ecdsa's Bytes would make and cache another copy of the key,
// out of zeroPrivateKey's reach.
func ecScalarBytes(k *ecdsa.PrivateKey, size int) ([]byte, error) {
	if k.D == nil {
		return k.Bytes()
	}
	if k.D.Sign() <= 0 || (k.D.BitLen()+7)/8 > size {
		return nil, errors.New("private scalar out of range")
	}
	return k.D.FillBytes(make([]byte, size)), nil
}

// parseJWK decodes an untrusted JWK's JSON: one bounded JSON object with a
// kty. Members we do not know are ignored, as the JWK standard (RFC 7517)
// asks, so that keys carrying newer members still parse.
func parseJWK(b []byte) (jwk, error) {
	var k jwk
	if len(b) > maxJWKSize {
		return k, fmt.Errorf("JWK is larger than %d bytes", maxJWKSize)
	}
	if err := decodeJSONObject(b, &k); err != nil {
		return jwk{}, fmt.Errorf("JWK: %w", err)
	}
	if k.Kty == "" {
		return jwk{}, errors.New(`JWK has no "kty"`)
	}
	return k, nil
}

// PublicKey returns the *rsa.PublicKey or *ecdsa.PublicKey of an RSA/EC JWK.
func (k jwk) PublicKey() (crypto.PublicKey, error) {
	switch k.Kty {
	case "RSA":
		return k.rsaPublicKey()
	case "EC":
		return k.ecPublicKey()
	case "oct":
		return nil, errors.New("JWK: a symmetric (oct) key has no public key")
	}
	return nil, fmt.Errorf("JWK: unsupported kty %q", k.Kty)
}

func (k jwk) rsaPublicKey() (*rsa.PublicKey, error) {
	n, err := jwkUint(k.N, "n")
	if err != nil {
		return nil, err
	}
	e, err := jwkUint(k.E, "e")
	if err != nil {
		return nil, err
	}
	if n.Bit(0) == 0 || n.BitLen() < 1024 {
		return nil, fmt.Errorf("JWK: RSA modulus of %d bits is not a usable modulus", n.BitLen())
	}
	// crypto/rsa only handles exponents that fit an int; real ones are 65537.
	if e.BitLen() > 31 || e.Int64() < 3 || e.Bit(0) == 0 {
		return nil, errors.New("JWK: RSA public exponent is out of range")
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

func (k jwk) ecPublicKey() (*ecdsa.PublicKey, error) {
	curve, ok := jwkCurve(k.Crv)
	if !ok {
		return nil, fmt.Errorf("JWK: unsupported crv %q (want P-256, P-384 or P-521)", k.Crv)
	}
	size := curveByteSize(curve)
	x, err := jwkFixed(k.X, "x", size)
	if err != nil {
		return nil, err
	}
	y, err := jwkFixed(k.Y, "y", size)
	if err != nil {
		return nil, err
	}
	// The uncompressed point parser checks the point is on the curve.
	point := append(append([]byte{4}, x...), y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(curve, point)
	if err != nil {
		return nil, fmt.Errorf("JWK: EC point is not on %s: %w", k.Crv, err)
	}
	return pub, nil
}

// PrivateKey returns *rsa.PrivateKey, *ecdsa.PrivateKey or []byte (oct).
func (k jwk) PrivateKey() (any, error) {
	switch k.Kty {
	case "RSA":
		return k.rsaPrivateKey()
	case "EC":
		return k.ecPrivateKey()
	case "oct":
		key, err := b64urlDecode(k.K)
		if err != nil {
			return nil, fmt.Errorf("JWK member \"k\": %w", err)
		}
		if len(key) == 0 {
			return nil, errors.New(`JWK: oct key has an empty "k"`)
		}
		return key, nil
	}
	return nil, fmt.Errorf("JWK: unsupported kty %q", k.Kty)
}

// rsaPrivateKey needs the two primes (no multi-prime "oth"); the CRT values,
// when given, must be the ones the primes imply.
func (k jwk) rsaPrivateKey() (*rsa.PrivateKey, error) {
	pub, err := k.rsaPublicKey()
	if err != nil {
		return nil, err
	}
	d, err := jwkUint(k.D, "d")
	if err != nil {
		return nil, err
	}
	p, err := jwkUint(k.P, "p")
	if err != nil {
		return nil, err
	}
	q, err := jwkUint(k.Q, "q")
	if err != nil {
		return nil, err
	}
	key := &rsa.PrivateKey{PublicKey: *pub, D: d, Primes: []*big.Int{p, q}}
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("JWK: invalid RSA private key: %w", err)
	}
	key.Precompute()
	for _, m := range []struct {
		name, value string
		want        *big.Int
	}{{"dp", k.DP, key.Precomputed.Dp}, {"dq", k.DQ, key.Precomputed.Dq}, {"qi", k.QI, key.Precomputed.Qinv}} {
		if m.value == "" {
			continue
		}
		got, err := jwkUint(m.value, m.name)
		if err != nil {
			return nil, err
		}
		if got.Cmp(m.want) != 0 {
			return nil, fmt.Errorf("JWK: RSA member %q does not match the key's primes", m.name)
		}
	}
	return key, nil
}

// ecPrivateKey checks d is a valid scalar and that x, y are its public point.
func (k jwk) ecPrivateKey() (*ecdsa.PrivateKey, error) {
	pub, err := k.ecPublicKey()
	if err != nil {
		return nil, err
	}
	d, err := jwkFixed(k.D, "d", curveByteSize(pub.Curve))
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.ParseRawPrivateKey(pub.Curve, d)
	if err != nil {
		return nil, fmt.Errorf("JWK: invalid EC private key: %w", err)
	}
	if !key.PublicKey.Equal(pub) {
		return nil, errors.New("JWK: EC private key does not match its x and y")
	}
	return key, nil
}

// jwkUint decodes a Base64urlUInt member (a big-endian unsigned integer in
// base64url, as JWA defines it): non-empty, and non-zero.
func jwkUint(v, name string) (*big.Int, error) {
	if v == "" {
		return nil, fmt.Errorf("JWK member %q is missing", name)
	}
	b, err := b64urlDecode(v)
	if err != nil {
		return nil, fmt.Errorf("JWK member %q: %w", name, err)
	}
	n := new(big.Int).SetBytes(b)
	if n.Sign() == 0 {
		return nil, fmt.Errorf("JWK member %q is zero", name)
	}
	return n, nil
}

// jwkFixed decodes an EC coordinate or scalar, which must be exactly the
// field size.
func jwkFixed(v, name string, size int) ([]byte, error) {
	if v == "" {
		return nil, fmt.Errorf("JWK member %q is missing", name)
	}
	b, err := b64urlDecode(v)
	if err != nil {
		return nil, fmt.Errorf("JWK member %q: %w", name, err)
	}
	if len(b) != size {
		return nil, fmt.Errorf("JWK member %q is %d bytes, want %d", name, len(b), size)
	}
	return b, nil
}
