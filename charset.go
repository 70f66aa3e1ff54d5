package main

import "strings"

// Identifiers are checked byte by byte rather than with regular
// expressions: compiling those at start-up costs time, allocations and
// binary size, and every form checked here is simple enough to read as code.

// isKeyName: a Key Vault key name, 1-127 ASCII letters, digits and dashes.
func isKeyName(s string) bool {
	return len(s) >= 1 && len(s) <= 127 && onlyBytes(s, isKeyNameByte)
}

// isKeyVersion: a Key Vault key version, 32 hex digits of either case.
func isKeyVersion(s string) bool {
	return len(s) == 32 && onlyBytes(s, isHexDigit)
}

// isLowerHex64: a sha256 as HOST_DATA claims carry it, 64 lower-case hex
// digits.
func isLowerHex64(s string) bool {
	return len(s) == 64 && onlyBytes(s, isLowerHexDigit)
}

// isVaultAPIVersion: MAJOR.MINOR, optionally followed by -preview or
// -preview.N, all numbers in decimal digits.
func isVaultAPIVersion(s string) bool {
	major, rest, ok := strings.Cut(s, ".")
	if !ok || !isDigits(major) {
		return false
	}
	n := 0
	for n < len(rest) && isDigit(rest[n]) {
		n++
	}
	if n == 0 {
		return false
	}
	suffix, ok := strings.CutPrefix(rest[n:], "-preview")
	if !ok {
		return suffix == ""
	}
	if suffix == "" {
		return true
	}
	preview, ok := strings.CutPrefix(suffix, ".")
	return ok && isDigits(preview)
}

// isDigits: at least one decimal digit and nothing else.
func isDigits(s string) bool { return s != "" && onlyBytes(s, isDigit) }

func onlyBytes(s string, ok func(byte) bool) bool {
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isLowerHexDigit(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' }

func isHexDigit(c byte) bool { return isLowerHexDigit(c) || 'A' <= c && c <= 'F' }

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func isKeyNameByte(c byte) bool { return isLetter(c) || isDigit(c) || c == '-' }

// isBase64URLByte: the URL-safe base64 alphabet, without padding.
func isBase64URLByte(c byte) bool { return isLetter(c) || isDigit(c) || c == '-' || c == '_' }
