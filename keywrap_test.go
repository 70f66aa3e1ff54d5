package main

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"testing"
)

func kwpHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 5649 §6.
const rfc5649KEK = "5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8"

var rfc5649Vectors = []struct{ name, key, wrapped string }{
	{"20-octet key", "c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
	{"7-octet key", "466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
}

func TestAESKeyWrapPadRFC5649Vectors(t *testing.T) {
	t.Parallel()
	kek := kwpHex(t, rfc5649KEK)
	for _, v := range rfc5649Vectors {
		t.Run(v.name, func(t *testing.T) {
			key, want := kwpHex(t, v.key), kwpHex(t, v.wrapped)
			got, err := aesKeyWrapPad(kek, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("wrap = %x, want %x", got, want)
			}
			back, err := aesKeyUnwrapPad(kek, want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, key) {
				t.Fatalf("unwrap = %x, want %x", back, key)
			}
		})
	}
}

// The multi-block core is RFC 3394's; check it alone against RFC 3394 §4.1
// (128-bit KEK, 128-bit key data, default IV A6A6A6A6A6A6A6A6).
func TestWrapBlocksRFC3394Vector(t *testing.T) {
	t.Parallel()
	block, err := aes.NewCipher(kwpHex(t, "000102030405060708090a0b0c0d0e0f"))
	if err != nil {
		t.Fatal(err)
	}
	buf := kwpHex(t, "a6a6a6a6a6a6a6a600112233445566778899aabbccddeeff")
	wrapBlocks(block, buf)
	if want := "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5"; hex.EncodeToString(buf) != want {
		t.Fatalf("RFC 3394 wrap = %x, want %s", buf, want)
	}
	unwrapBlocks(block, buf)
	if want := "a6a6a6a6a6a6a6a600112233445566778899aabbccddeeff"; hex.EncodeToString(buf) != want {
		t.Fatalf("RFC 3394 unwrap = %x", buf)
	}
}

func TestAESKeyWrapPadRoundTrips(t *testing.T) {
	t.Parallel()
	for _, kekLen := range []int{16, 24, 32} {
		kek := make([]byte, kekLen)
		rand.Read(kek)
		for n := 1; n <= 80; n++ {
			pt := make([]byte, n)
			rand.Read(pt)
			ct, err := aesKeyWrapPad(kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			if want := 8 + (n+7)/8*8; len(ct) != want {
				t.Fatalf("%d-byte plaintext wrapped to %d bytes, want %d", n, len(ct), want)
			}
			back, err := aesKeyUnwrapPad(kek, ct)
			if err != nil {
				t.Fatalf("KEK %d, %d bytes: %v", kekLen, n, err)
			}
			if !bytes.Equal(back, pt) {
				t.Fatalf("KEK %d, %d bytes: round trip changed the key", kekLen, n)
			}
		}
		// Sizes of real released keys: AES-256, RSA-2048/4096 PKCS#8.
		for _, n := range []int{32, 1218, 1232, 2375, 4096} {
			pt := make([]byte, n)
			rand.Read(pt)
			ct, err := aesKeyWrapPad(kek, pt)
			if err != nil {
				t.Fatal(err)
			}
			if back, err := aesKeyUnwrapPad(kek, ct); err != nil || !bytes.Equal(back, pt) {
				t.Fatalf("%d bytes: %v", n, err)
			}
		}
	}
}

func TestAESKeyUnwrapPadRejectsEveryBitFlip(t *testing.T) {
	t.Parallel()
	kek := kwpHex(t, rfc5649KEK)
	long := make([]byte, 61)
	rand.Read(long)
	longCT, err := aesKeyWrapPad(kek, long)
	if err != nil {
		t.Fatal(err)
	}
	cts := [][]byte{kwpHex(t, rfc5649Vectors[0].wrapped), kwpHex(t, rfc5649Vectors[1].wrapped), longCT}
	for _, ct := range cts {
		for bit := range 8 * len(ct) {
			c := bytes.Clone(ct)
			c[bit/8] ^= 1 << (bit % 8)
			if pt, err := aesKeyUnwrapPad(kek, c); err == nil {
				t.Fatalf("%d-byte ciphertext with bit %d flipped unwrapped to %x", len(ct), bit, pt)
			}
		}
	}
}

func TestAESKeyUnwrapPadWrongKEK(t *testing.T) {
	t.Parallel()
	kek := kwpHex(t, rfc5649KEK)
	for _, v := range rfc5649Vectors {
		for i := range kek {
			wrong := bytes.Clone(kek)
			wrong[i] ^= 0x80
			if _, err := aesKeyUnwrapPad(wrong, kwpHex(t, v.wrapped)); err != errKeyUnwrap {
				t.Fatalf("%s under a wrong KEK: err = %v", v.name, err)
			}
		}
	}
	// Same bytes, other AES size.
	if _, err := aesKeyUnwrapPad(kek[:16], kwpHex(t, rfc5649Vectors[0].wrapped)); err == nil {
		t.Fatal("unwrapped under a truncated KEK")
	}
}

func TestAESKeyWrapPadBadLengths(t *testing.T) {
	t.Parallel()
	good := make([]byte, 32)
	for _, n := range []int{0, 1, 8, 15, 17, 20, 31, 33, 64} {
		if _, err := aesKeyWrapPad(make([]byte, n), []byte("k")); err == nil {
			t.Errorf("wrap with a %d-byte KEK: no error", n)
		}
		if _, err := aesKeyUnwrapPad(make([]byte, n), make([]byte, 16)); err == nil {
			t.Errorf("unwrap with a %d-byte KEK: no error", n)
		}
	}
	for _, n := range []int{0, 1, 7, 8, 15, 17, 23, 25, 31, maxKeyWrapInput + 16} {
		if _, err := aesKeyUnwrapPad(good, make([]byte, n)); err == nil {
			t.Errorf("unwrap of %d bytes: no error", n)
		}
	}
	for _, n := range []int{0, maxKeyWrapInput + 1} {
		if _, err := aesKeyWrapPad(good, make([]byte, n)); err == nil {
			t.Errorf("wrap of %d bytes: no error", n)
		}
	}
}

// craftKWP wraps an arbitrary A and padded block sequence, so each of
// unwrap's three checks can be made to fail on its own.
func craftKWP(t *testing.T, kek []byte, aiv [4]byte, mli uint32, padded []byte) []byte {
	t.Helper()
	block, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8+len(padded))
	copy(buf, aiv[:])
	binary.BigEndian.PutUint32(buf[4:8], mli)
	copy(buf[8:], padded)
	if len(buf) == 16 {
		block.Encrypt(buf, buf)
	} else {
		wrapBlocks(block, buf)
	}
	return buf
}

func TestAESKeyUnwrapPadIntegrityChecks(t *testing.T) {
	t.Parallel()
	kek := make([]byte, 32)
	rand.Read(kek)
	data16 := []byte("0123456789abcdef")
	for _, tc := range []struct {
		name   string
		aiv    [4]byte
		mli    uint32
		padded []byte
		ok     bool
	}{
		{"valid single block", kwpAIVPrefix, 5, []byte("hello\x00\x00\x00"), true},
		{"valid two blocks", kwpAIVPrefix, 9, []byte("abcdefghi\x00\x00\x00\x00\x00\x00\x00"), true},
		{"valid full blocks", kwpAIVPrefix, 16, data16, true},
		{"RFC 3394 IV", [4]byte{0xA6, 0xA6, 0xA6, 0xA6}, 16, data16, false},
		{"AIV one bit off", [4]byte{0xA6, 0x59, 0x59, 0xA7}, 16, data16, false},
		{"MLI zero", kwpAIVPrefix, 0, []byte("\x00\x00\x00\x00\x00\x00\x00\x00"), false},
		{"MLI beyond data", kwpAIVPrefix, 17, data16, false},
		{"MLI a block short", kwpAIVPrefix, 8, data16, false},
		{"MLI huge", kwpAIVPrefix, 0xFFFFFFFF, data16, false},
		{"MLI 9 in one block", kwpAIVPrefix, 9, []byte("abcdefgh"), false},
		{"non-zero padding", kwpAIVPrefix, 5, []byte("hello\x00\x00\x01"), false},
		{"non-zero first pad byte", kwpAIVPrefix, 9, []byte("abcdefghi\x80\x00\x00\x00\x00\x00\x00"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ct := craftKWP(t, kek, tc.aiv, tc.mli, tc.padded)
			pt, err := aesKeyUnwrapPad(kek, ct)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && !bytes.Equal(pt, tc.padded[:tc.mli]) {
				t.Fatalf("plaintext %q", pt)
			}
			if !tc.ok && err != errKeyUnwrap {
				t.Fatalf("err = %v, want the one integrity error", err)
			}
		})
	}
}

func FuzzAESKeyUnwrapPad(f *testing.F) {
	kek := kwpHex(f, rfc5649KEK)
	for _, v := range rfc5649Vectors {
		f.Add(kwpHex(f, v.wrapped))
	}
	f.Add(make([]byte, 24))
	f.Fuzz(func(t *testing.T, ct []byte) {
		pt, err := aesKeyUnwrapPad(kek, ct)
		if err != nil {
			return
		}
		// Wrapping is deterministic, so anything that unwraps must be
		// exactly the wrap of what it unwrapped to.
		again, err := aesKeyWrapPad(kek, pt)
		if err != nil || !bytes.Equal(again, ct) {
			t.Fatalf("%x unwrapped to %x, which wraps to %x (%v)", ct, pt, again, err)
		}
	})
}

func BenchmarkAESKeyUnwrapPad(b *testing.B) {
	for _, n := range []int{32, 1232} {
		kek := make([]byte, 32)
		rand.Read(kek)
		pt := make([]byte, n)
		rand.Read(pt)
		ct, err := aesKeyWrapPad(kek, pt)
		if err != nil {
			b.Fatal(err)
		}
		name := map[int]string{32: "AES-256-key", 1232: "RSA-2048-PKCS8"}[n]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(ct)))
			for b.Loop() {
				if _, err := aesKeyUnwrapPad(kek, ct); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
