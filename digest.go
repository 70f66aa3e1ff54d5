package main

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// maxPolicyFile bounds a policy file; real CCE policies are tens of KiB.
const maxPolicyFile = 4 << 20

func runDigest(args []string, stdout, stderr io.Writer) int {
	fs := newCommandFlags("skr digest", stderr,
		"Usage: skr digest -p BASE64 | -f FILE [-v]   (link: securitypolicydigest)",
		"Prints the sha-256 (hex) of the decoded security policy: the value of x-ms-sevsnpvm-hostdata.")
	policy := fs.String("p", "", "the security policy as standard base64 (the ccePolicy of an ARM template)")
	file := fs.String("f", "", "a file holding the security policy as standard base64")
	verbose := fs.Bool("v", false, "also print the decoded policy and its size to stderr (stdout keeps the one digest line)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "skr digest: unexpected arguments %q\n", fs.Args())
		fs.Usage()
		return 2
	}
	b64, err := digestInput(*policy, *file)
	if err != nil {
		fmt.Fprintf(stderr, "skr digest: %v\n", err)
		return 2
	}
	decoded, err := decodePolicyBase64(b64)
	if err != nil {
		fmt.Fprintf(stderr, "skr digest: %v\n", err)
		return 1
	}
	sum, err := policyDigest(b64)
	if err != nil {
		fmt.Fprintf(stderr, "skr digest: %v\n", err)
		return 1
	}
	if *verbose {
		fmt.Fprintf(stderr, "decoded security policy (%d bytes):\n%s\n", len(decoded), decoded)
	}
	fmt.Fprintf(stdout, "%x\n", sum)
	return 0
}

// digestInput picks the base64 text from -p or -f; exactly one is needed.
func digestInput(policy, file string) (string, error) {
	switch {
	case policy != "" && file != "":
		return "", errors.New("give either -p or -f, not both")
	case policy != "":
		return policy, nil
	case file != "":
		raw, err := readBounded(file, maxPolicyFile)
		if err != nil {
			return "", fmt.Errorf("read policy file: %w", err)
		}
		return string(raw), nil
	}
	return "", errors.New("no policy: give -p BASE64 or -f FILE")
}

// decodePolicyBase64 decodes the policy as the platform does (standard,
// padded base64; surrounding white space such as a file's trailing newline
// ignored) and explains the usual mistakes, because a policy decoded any
// other way would give a digest that matches nothing.
func decodePolicyBase64(b64 string) ([]byte, error) {
	s := strings.TrimSpace(b64)
	if s == "" {
		return nil, errors.New("the policy is empty")
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err == nil {
		return raw, nil
	}
	switch {
	case strings.ContainsAny(s, "-_"):
		return nil, errors.New("the policy is URL-safe base64 ('-' or '_'): standard base64 with padding is required, as in the ccePolicy of the ARM template")
	case len(s)%4 != 0 && !strings.ContainsAny(s, " \t\r\n"):
		return nil, fmt.Errorf("the policy is not padded standard base64 (length %d is not a multiple of 4): standard base64 with padding is required", len(s))
	}
	return nil, fmt.Errorf("the policy is not standard base64 with padding: %w", err)
}

// policyDigest is the sha-256 of a base64 (standard) security policy: the
// value of x-ms-sevsnpvm-hostdata.
func policyDigest(b64 string) ([32]byte, error) {
	raw, err := decodeStdBase64File([]byte(b64))
	if err != nil {
		return [32]byte{}, fmt.Errorf("security policy: %w", err)
	}
	return sha256.Sum256(raw), nil
}
