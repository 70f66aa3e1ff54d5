package main

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// The regular expressions the hand-written checks replace: the checks must
// agree with them on every string.
var (
	keyNameRE    = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
	keyVersionRE = regexp.MustCompile(`^[0-9a-fA-F]{32}$`)
	lowerHex64RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
	apiVersionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+(-preview(\.[0-9]+)?)?$`)
	jwtShapedRE  = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*`)
)

// identifierChecks pairs each check with its regular expression, and with
// the bytes and lengths that reach its edges when drawn at random.
var identifierChecks = []struct {
	name     string
	check    func(string) bool
	oracle   *regexp.Regexp
	alphabet string
	lengths  []int
}{
	{"key name", isKeyName, keyNameRE, "aZ09-_./ \n\x00é", []int{0, 1, 2, 126, 127, 128, 129}},
	{"key version", isKeyVersion, keyVersionRE, "09afAFgG-\n", []int{0, 1, 31, 32, 33}},
	{"lower hex 64", isLowerHex64, lowerHex64RE, "09afAFg\n", []int{0, 63, 64, 65}},
	{"vault API version", isVaultAPIVersion, apiVersionRE, "0123456789..--preview", []int{0, 1, 2, 3, 4, 5, 8, 12, 16, 20}},
}

func identifierEdgeCases() []string {
	return []string{
		"", "a", "-", "--", "0", strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("Z9-", 42) + "z",
		"my-key", "my_key", "my key", "my.key", "key\n", "\nkey", "kéy", "key\x00",
		"0123456789abcdef0123456789ABCDEF", "0123456789abcdef0123456789abcdeg", "0123456789abcdef0123456789abcde", "0123456789abcdef0123456789abcdef0",
		strings.Repeat("0f", 32), strings.Repeat("0F", 32), strings.Repeat("0f", 32) + "\n", strings.Repeat("0f", 31) + "0",
		"7.4", "7.4-preview", "7.4-preview.1", "7.4-preview.", "7.4-preview.1.2", "7.4-Preview", "7.4-", "7.", ".4", "7", "7.4.1",
		"07.40", "7.4-preview1", "7.4preview", "7.4-preview.a", " 7.4", "7.4 ", "7.4\n", "-preview", "1.1-preview-preview",
	}
}

func TestIdentifierChecksAgreeWithRegexps(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range identifierChecks {
		inputs := identifierEdgeCases()
		for range 20000 {
			inputs = append(inputs, randomString(rng, c.alphabet, c.lengths[rng.IntN(len(c.lengths))]))
		}
		for _, s := range inputs {
			if got, want := c.check(s), c.oracle.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, the regular expression says %v", c.name, s, got, want)
			}
		}
	}
}

func TestRedactJWTShapedAgreesWithRegexp(t *testing.T) {
	t.Parallel()
	edge := []string{
		"", "eyJ", "eyJa", "eyJab.cd.", "eyJab.cd.ef", "eyJa.bc.de", "eyJab.c.de", "eyJab.cd", "eyJab..cd.",
		"xeyJab.cd.ef", "-eyJab.cd.ef-", "eyJeyJab.cd.ef", "eyJa.eyJbb.cc.d", "eyJab.eyJcd.ef", "eyJab.eyJcd.ef.gh",
		"a.eyJab.cd.ef.gh.eyJij.kl.mn", "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln, again eyJhbGciOiJSUzI1NiJ9.eyJ4IjoxfQ.",
		"eyJab.cd.ef\neyJgh.ij.", "eyJab.cd.é", "éeyJab.cd.e", "eyJab.cd.ef.eyJgh.ij.kl", "eyJab.cd.ef eyJgh.ij",
	}
	rng := rand.New(rand.NewPCG(3, 4))
	inputs := edge
	for range 50000 {
		inputs = append(inputs, randomJWTish(rng))
	}
	for _, s := range inputs {
		if got, want := redactJWTShaped(s), jwtShapedRE.ReplaceAllString(s, "[redacted token]"); got != want {
			t.Errorf("redactJWTShaped(%q)\n = %q\nregexp %q", s, got, want)
		}
	}
}

// randomJWTish strings are pieces of tokens ("eyJ", dots, short and long
// runs of base64) glued together, so that almost-tokens are common.
func randomJWTish(rng *rand.Rand) string {
	pieces := []string{"eyJ", "eyJ", ".", ".", "a", "bc", "-_", "xyz09", "e", "y", "J", " ", "\n", "/", "é", "=", "eyJhbGciOiJub25lIn0"}
	var b strings.Builder
	for range rng.IntN(12) {
		b.WriteString(pieces[rng.IntN(len(pieces))])
	}
	return b.String()
}

func randomString(rng *rand.Rand, alphabet string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}

func FuzzIdentifierChecks(f *testing.F) {
	for _, s := range identifierEdgeCases() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, c := range identifierChecks {
			if got, want := c.check(s), c.oracle.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, the regular expression says %v", c.name, s, got, want)
			}
		}
	})
}

func FuzzRedactJWTShaped(f *testing.F) {
	f.Add("upstream said: eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln and more")
	f.Add("eyJa.eyJbb.cc.d")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := redactJWTShaped(s), jwtShapedRE.ReplaceAllString(s, "[redacted token]"); got != want {
			t.Errorf("redactJWTShaped(%q)\n = %q\nregexp %q", s, got, want)
		}
	})
}
