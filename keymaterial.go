package main

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
)

// privateKeyDecoder reads one DER encoding of a private key.
type privateKeyDecoder func(der []byte) (any, error)

var (
	pkcs8PrivateKey privateKeyDecoder = x509.ParsePKCS8PrivateKey
	pkcs1PrivateKey privateKeyDecoder = func(der []byte) (any, error) { return x509.ParsePKCS1PrivateKey(der) }
	sec1PrivateKey  privateKeyDecoder = func(der []byte) (any, error) { return x509.ParseECPrivateKey(der) }
)

// pemPrivateKeyDecoders: the PEM types of unencrypted private keys.
var pemPrivateKeyDecoders = map[string]privateKeyDecoder{
	"PRIVATE KEY":     pkcs8PrivateKey,
	"RSA PRIVATE KEY": pkcs1PrivateKey,
	"EC PRIVATE KEY":  sec1PrivateKey,
}

// parsePrivateKeyDER reads der with the first decoder that takes it; when
// none does, the error is the first decoder's.
func parsePrivateKeyDER(der []byte, decoders ...privateKeyDecoder) (any, error) {
	var first error
	for _, dec := range decoders {
		key, err := dec(der)
		if err == nil {
			return key, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, first
}

// parsePrivateKeyPEM takes the first PEM block: PKCS#8 "PRIVATE KEY",
// PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY". Encrypted keys are
// refused: decrypt them with openssl first.
func parsePrivateKeyPEM(raw []byte) (any, error) {
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	defer clear(block.Bytes)
	if _, encrypted := block.Headers["Proc-Type"]; encrypted || block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, errors.New("the private key is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)")
	}
	dec, ok := pemPrivateKeyDecoders[block.Type]
	if !ok {
		return nil, fmt.Errorf("PEM block %q is not a private key (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", block.Type)
	}
	key, err := parsePrivateKeyDER(block.Bytes, dec)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	return key, nil
}

// withoutHiddenCopy returns priv rebuilt from its private numbers alone,
// without the copy of them that crypto/rsa precomputes and keeps out of
// reach inside the key. What remains can be overwritten by zeroPrivateKey.
// Each private-key operation then derives that copy afresh and drops it
// when done (about 0.15 ms per RSA-2048 decryption), so no unreachable copy
// lives as long as the key; the one made when priv was generated or parsed
// is garbage from here on.
func withoutHiddenCopy(priv *rsa.PrivateKey) *rsa.PrivateKey {
	return &rsa.PrivateKey{
		PublicKey: priv.PublicKey,
		D:         priv.D,
		Primes:    priv.Primes,
		Precomputed: rsa.PrecomputedValues{
			Dp: priv.Precomputed.Dp, Dq: priv.Precomputed.Dq, Qinv: priv.Precomputed.Qinv,
		},
	}
}

// b64urlWiped is b64url(b), and overwrites b: for private key bytes that
// exist only to be encoded.
func b64urlWiped(b []byte) string {
	s := b64url(b)
	clear(b)
	return s
}

// hexLine is b in hex with a newline, as bytes that can be overwritten
// once written (a string could not be).
func hexLine(b []byte) []byte {
	out := make([]byte, hex.EncodedLen(len(b))+1)
	hex.Encode(out, b)
	out[len(out)-1] = '\n'
	return out
}

// zeroPrivateKey overwrites what Go lets us reach of a private key we are
// done with: the bytes of a symmetric key, the private numbers of an RSA
// or EC key. Copies the standard library derives and keeps inside the key
// are out of reach.
func zeroPrivateKey(key any) {
	switch k := key.(type) {
	case []byte:
		clear(k)
	case *rsa.PrivateKey:
		if k != nil {
			zeroBigInts(k.D, k.Precomputed.Dp, k.Precomputed.Dq, k.Precomputed.Qinv)
			zeroBigInts(k.Primes...)
		}
	case *ecdsa.PrivateKey:
		if k != nil {
			zeroBigInts(k.D)
		}
	}
}

func zeroBigInts(xs ...*big.Int) {
	for _, x := range xs {
		if x != nil {
			clear(x.Bits())
			x.SetInt64(0)
		}
	}
}
