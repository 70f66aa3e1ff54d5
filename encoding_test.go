package main

import (
	"encoding/base64"
	"testing"
)

func TestDecodeBase64AcceptsEveryVariant(t *testing.T) {
	t.Parallel()
	data := []byte{0xfb, 0xff, 0xfe, 0x01, 0x02} // has + / and - _ in its encodings
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		s := enc.EncodeToString(data)
		got, err := decodeBase64(s)
		if err != nil || string(got) != string(data) {
			t.Errorf("decodeBase64(%q) = %x, %v", s, got, err)
		}
	}
}

func TestDecodeBase64Rejects(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"a", "!!!!", "ab+_", "YW=Jj", "Y W J j"} {
		if got, err := decodeBase64(s); err == nil {
			t.Errorf("decodeBase64(%q) = %x, want an error", s, got)
		}
	}
}
