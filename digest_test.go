package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCmd runs argv through dispatch, as main does.
func runCmd(t *testing.T, argv ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = dispatch(argv, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestDigestVectors(t *testing.T) {
	t.Parallel()
	// sha256("") and sha256("abc") are the FIPS 180-2 vectors.
	abc := base64.StdEncoding.EncodeToString([]byte("abc"))
	dir := t.TempDir()
	withNewline := filepath.Join(dir, "policy.base64")
	if err := os.WriteFile(withNewline, []byte(abc+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	const abcDigest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	for _, tc := range []struct {
		name string
		argv []string
	}{
		{"subcommand -p", []string{"skr", "digest", "-p", abc}},
		{"link -p", []string{"/bin/securitypolicydigest", "-p", abc}},
		{"file with trailing newline", []string{"skr", "digest", "-f", withNewline}},
		{"link -f", []string{"securitypolicydigest", "-f", withNewline}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, tc.argv...)
			if code != 0 || out != abcDigest+"\n" {
				t.Fatalf("exit %d, stdout %q, stderr %q; want %s", code, out, errOut, abcDigest)
			}
		})
	}
}

func TestDigestVerbosePrintsPolicyToStderrOnly(t *testing.T) {
	t.Parallel()
	b64 := base64.StdEncoding.EncodeToString([]byte("package policy\n"))
	code, out, errOut := runCmd(t, "skr", "digest", "-v", "-p", b64)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Count(out, "\n") != 1 || len(strings.TrimSpace(out)) != 64 {
		t.Fatalf("stdout must be the one digest line, got %q", out)
	}
	if !strings.Contains(errOut, "package policy") || !strings.Contains(errOut, "15 bytes") {
		t.Fatalf("stderr lacks the decoded policy and its size: %q", errOut)
	}
}

// The digest of the real ACI policy is the HOST_DATA of the real report
// taken in that container group.
func TestDigestMatchesRealReportHostData(t *testing.T) {
	t.Parallel()
	readSharedTestdata(t, "uvm_security_policy.base64")
	report := readSharedTestdata(t, "snp_report.bin")
	if len(report) != 1184 {
		t.Fatalf("report is %d bytes", len(report))
	}
	hostData := hex.EncodeToString(report[0xC0:0xE0])
	code, out, errOut := runCmd(t, "securitypolicydigest", "-f", filepath.Join(sharedTestdata, "uvm_security_policy.base64"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if got := strings.TrimSpace(out); got != hostData {
		t.Fatalf("digest %s, HOST_DATA %s", got, hostData)
	}
}

func TestDigestRejectsBadInput(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	// "\xfb\xff" is "-_8" in URL-safe base64 and "+/8" in standard.
	urlSafe := base64.URLEncoding.EncodeToString([]byte("\xfb\xff\xfe"))
	for _, tc := range []struct {
		name string
		argv []string
		code int
		want string
	}{
		{"URL-safe", []string{"skr", "digest", "-p", urlSafe}, 1, "URL-safe"},
		{"unpadded", []string{"skr", "digest", "-p", "YWJj" + "ZA"}, 1, "not padded"},
		{"garbage", []string{"skr", "digest", "-p", "not base64!"}, 1, "not standard base64"},
		{"empty file", []string{"skr", "digest", "-f", empty}, 1, "empty"},
		{"missing file", []string{"skr", "digest", "-f", filepath.Join(dir, "nope")}, 2, "read policy file"},
		{"neither", []string{"skr", "digest"}, 2, "give -p"},
		{"both", []string{"skr", "digest", "-p", "YWJj", "-f", empty}, 2, "not both"},
		{"extra argument", []string{"skr", "digest", "-p", "YWJj", "extra"}, 2, "unexpected arguments"},
		{"unknown flag", []string{"securitypolicydigest", "-x"}, 2, "flag provided but not defined"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, tc.argv...)
			if code != tc.code || out != "" || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d (want %d), stdout %q, stderr %q (want %q)", code, tc.code, out, errOut, tc.want)
			}
		})
	}
}

func TestDigestHelp(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCmd(t, "skr", "digest", "-h")
	if code != 0 || !strings.Contains(errOut, "x-ms-sevsnpvm-hostdata") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func FuzzDecodePolicyBase64(f *testing.F) {
	f.Add("YWJj")
	f.Add("YWJj\n")
	f.Add("-_8=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		raw, err := decodePolicyBase64(s)
		if err != nil {
			return
		}
		// Whatever decodes must give the digest of exactly those bytes.
		sum, err := policyDigest(s)
		if err != nil {
			t.Fatalf("decodePolicyBase64 accepted %q but policyDigest refused it: %v", s, err)
		}
		if sum != sha256.Sum256(raw) {
			t.Fatalf("%q: policyDigest differs from sha256 of the decoded bytes", s)
		}
	})
}
