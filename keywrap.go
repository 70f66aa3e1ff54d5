package main

// AES Key Wrap with Padding (RFC 5649) on top of crypto/aes.
//
// STUB: owned by the "jose" helper; signatures are the contract.

import "errors"

// aesKeyWrapPad wraps plaintext under kek (16, 24 or 32 bytes).
func aesKeyWrapPad(kek, plaintext []byte) ([]byte, error) { return nil, errors.New("stub") }

// aesKeyUnwrapPad unwraps and checks AIV, MLI and padding.
func aesKeyUnwrapPad(kek, ciphertext []byte) ([]byte, error) { return nil, errors.New("stub") }
