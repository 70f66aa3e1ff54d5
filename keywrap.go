package main

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
)

// maxKeyWrapInput bounds what we wrap or unwrap. The largest key material
// a vault releases (an RSA-4096 PKCS#8 key) is about 2.4 KiB.
const maxKeyWrapInput = 1 << 20

// kwpAIVPrefix is the first half of RFC 5649's Alternative Initial Value;
// the second half is the message length indicator (MLI).
var kwpAIVPrefix = [4]byte{0xA6, 0x59, 0x59, 0xA6}

// errKeyUnwrap is deliberately the same for every integrity failure, so
// the error says nothing about which check failed.
var errKeyUnwrap = errors.New("AES key unwrap: integrity check failed (wrong key-encryption key, or the wrapped key is corrupt)")

func newKEK(kek []byte) (cipher.Block, error) {
	switch len(kek) {
	case 16, 24, 32:
	default:
		return nil, fmt.Errorf("AES key wrap: key-encryption key is %d bytes, want 16, 24 or 32", len(kek))
	}
	return aes.NewCipher(kek)
}

// aesKeyWrapPad wraps plaintext under kek (16, 24 or 32 bytes).
func aesKeyWrapPad(kek, plaintext []byte) ([]byte, error) {
	block, err := newKEK(kek)
	if err != nil {
		return nil, err
	}
	if len(plaintext) == 0 || len(plaintext) > maxKeyWrapInput {
		return nil, fmt.Errorf("AES key wrap: plaintext is %d bytes, want 1 to %d", len(plaintext), maxKeyWrapInput)
	}
	padded := (len(plaintext) + 7) / 8 * 8
	out := make([]byte, 8+padded)
	copy(out[:4], kwpAIVPrefix[:])
	binary.BigEndian.PutUint32(out[4:8], uint32(len(plaintext)))
	copy(out[8:], plaintext) // zero padding: out is zeroed
	if padded == 8 {
		// One block of padded plaintext is wrapped with a single AES
		// encryption of A and that block, not with the six rounds.
		block.Encrypt(out, out)
		return out, nil
	}
	wrapBlocks(block, out)
	return out, nil
}

// wrapBlocks is the RFC 3394 wrapping process (six rounds over the blocks),
// in place: buf holds the initial value A followed by the n plaintext blocks
// R[1..n].
func wrapBlocks(block cipher.Block, buf []byte) {
	n := len(buf)/8 - 1
	var b [16]byte
	copy(b[:8], buf[:8])
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(b[8:], buf[8*i:8*i+8])
			block.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(b[:8])^t)
			copy(buf[8*i:8*i+8], b[8:])
		}
	}
	copy(buf[:8], b[:8])
}

// unwrapBlocks reverses wrapBlocks in place.
func unwrapBlocks(block cipher.Block, buf []byte) {
	n := len(buf)/8 - 1
	var b [16]byte
	copy(b[:8], buf[:8])
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(b[:8], binary.BigEndian.Uint64(b[:8])^t)
			copy(b[8:], buf[8*i:8*i+8])
			block.Decrypt(b[:], b[:])
			copy(buf[8*i:8*i+8], b[8:])
		}
	}
	copy(buf[:8], b[:8])
}

// aesKeyUnwrapPad unwraps and checks AIV, MLI and padding.
func aesKeyUnwrapPad(kek, ciphertext []byte) ([]byte, error) {
	block, err := newKEK(kek)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < 16 || len(ciphertext)%8 != 0 || len(ciphertext) > maxKeyWrapInput+8 {
		return nil, fmt.Errorf("AES key unwrap: wrapped key is %d bytes, want a multiple of 8 from 16 to %d", len(ciphertext), maxKeyWrapInput+8)
	}
	buf := make([]byte, len(ciphertext))
	copy(buf, ciphertext)
	if len(buf) == 16 {
		block.Decrypt(buf, buf)
	} else {
		unwrapBlocks(block, buf)
	}
	if !kwpIntegrityOK(buf) {
		clear(buf)
		return nil, errKeyUnwrap
	}
	mli := binary.BigEndian.Uint32(buf[4:8])
	plaintext := make([]byte, mli)
	copy(plaintext, buf[8:])
	clear(buf)
	return plaintext, nil
}

// kwpIntegrityOK checks RFC 5649's three integrity conditions on the unwrapped
// buffer (A followed by the padded plaintext): the AIV constant (compared
// in constant time), an MLI that falls in the last 64-bit block, and zero
// padding. All three are evaluated before answering, and the caller gives
// one error for any failure, so neither timing nor message tells them apart.
func kwpIntegrityOK(buf []byte) bool {
	padded := uint64(len(buf) - 8)
	aivOK := subtle.ConstantTimeCompare(buf[:4], kwpAIVPrefix[:]) == 1
	mli := uint64(binary.BigEndian.Uint32(buf[4:8]))
	padLen := padded - mli // wraps around to a huge value when mli > padded
	mliOK := padLen < 8    // so padded-8 < mli <= padded
	var nonzero byte
	for i, c := range buf[len(buf)-8:] {
		if uint64(8-i) <= padLen { // byte i of the last block is padding
			nonzero |= c
		}
	}
	return aivOK && mliOK && nonzero == 0
}
