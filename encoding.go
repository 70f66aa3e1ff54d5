package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
)

// decodeBase64 accepts standard and URL-safe base64, padded or not, and
// ignores surrounding white space.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		if strings.ContainsAny(s, "+/") {
			return nil, errors.New("mixes the standard and URL-safe base64 alphabets")
		}
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// marshalJSON is json.Marshal without HTML escaping: "<", ">" and "&" stay
// as written, so the bytes are exactly what a reader of the printed JSON
// (a release policy, a JWK thumbprint's input) expects.
func marshalJSON(v any) ([]byte, error) { return encodeJSON(v, "") }

// prettyJSON indents v for people, without HTML escaping. It is for this
// program's own values, which always encode.
func prettyJSON(v any) []byte {
	b, _ := encodeJSON(v, "  ")
	return b
}

func encodeJSON(v any, indent string) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", indent)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
