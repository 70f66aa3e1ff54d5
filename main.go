package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// version is stamped at build time with -ldflags "-X main.version=...".
var version = "dev"

// command is one entry point of the binary: a subcommand, and the link
// names under which a scratch image starts it without a shell.
type command struct {
	name    string
	links   []string
	summary string
	run     func(args []string, stdout, stderr io.Writer) int
}

// commands lists every entry point; it is filled in init to break the
// cycle with the help command, which prints it.
var commands []command

func init() {
	commands = []command{
		{"serve", []string{"skr.sh"}, "run the sidecar HTTP server (the default)", runServe},
		{"digest", []string{"securitypolicydigest"}, "print the sha-256 of a base64 security policy (x-ms-sevsnpvm-hostdata)", runDigest},
		{"importkey", []string{"importkey"}, "import a key with a release policy into Key Vault / Managed HSM", runImportKey},
		{"wrap", nil, "wrap a secret with an RSA key's public half for the gRPC UnWrapKey (also: skr -infile F -keypath P -outfile F)", runWrap},
		{"doctor", nil, "check, from inside the container group, everything a release needs, and say what to fix", runDoctor},
		{"policy", nil, "check a release policy against an MAA token or the local evidence's claims (skr policy check)", runPolicy},
		{"probe", nil, "ask a running sidecar's /readyz or /livez, for exec probes (exit 0 or 1)", runProbe},
		{"version", nil, "print the version, commit, Go version and module versions", runVersion},
		{"attest-client", []string{"attest_client.sh"}, "the attestation test client (as Microsoft's attest_client.sh)", runAttestClient},
		{"release-client", []string{"skr_client.sh"}, "the key-release test client (as Microsoft's skr_client.sh)", runReleaseClient},
		{"help", nil, "print this help", runHelp},
	}
}

func main() {
	os.Exit(dispatch(os.Args, os.Stdout, os.Stderr))
}

// dispatch picks the entry point from argv[0]'s base name (busybox style)
// or from the first argument, and returns the exit code.
func dispatch(argv []string, stdout, stderr io.Writer) int {
	if len(argv) == 0 {
		argv = []string{"skr"}
	}
	base := filepath.Base(argv[0])
	for _, c := range commands {
		for _, l := range c.links {
			if base == l {
				return c.run(argv[1:], stdout, stderr)
			}
		}
	}
	args := argv[1:]
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && !isHelpFlag(args[0]) && !isVersionFlag(args[0]) {
		// "skr" and "skr -emulate ..." run the server, and "skr -infile
		// ..." wraps, like Microsoft's binary.
		if isWrapInvocation(args) {
			return runWrap(args, stdout, stderr)
		}
		return runServe(args, stdout, stderr)
	}
	if isHelpFlag(args[0]) {
		return runHelp(nil, stdout, stderr)
	}
	if isVersionFlag(args[0]) {
		return runVersion(args[1:], stdout, stderr)
	}
	for _, c := range commands {
		if args[0] == c.name {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "skr: unknown subcommand %q\n", args[0])
	printUsage(stderr)
	return 2
}

func isHelpFlag(s string) bool {
	return s == "-h" || s == "-help" || s == "--help"
}

func runHelp(_ []string, stdout, _ io.Writer) int {
	printUsage(stdout)
	return 0
}

func printUsage(w io.Writer) {
	fmt.Fprintf(w, "skr %s: Secure Key Release sidecar for confidential containers on AMD SEV-SNP\n\n", version)
	fmt.Fprintln(w, "Usage: skr [SUBCOMMAND] [FLAGS]   (no subcommand: serve)")
	fmt.Fprintln(w, "\nSubcommands:")
	for _, c := range commands {
		links := ""
		if len(c.links) > 0 {
			links = " (link: " + strings.Join(c.links, ", ") + ")"
		}
		fmt.Fprintf(w, "  %-15s %s%s\n", c.name, c.summary, links)
	}
	fmt.Fprintln(w, "\nRun 'skr SUBCOMMAND -h' for the flags of one subcommand.")
}

// newCommandFlags is a command's flag set: parse errors and -h go to
// stderr, -h after the usage lines.
func newCommandFlags(name string, stderr io.Writer, usage ...string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		for _, l := range usage {
			fmt.Fprintln(stderr, l)
		}
		fs.PrintDefaults()
	}
	return fs
}

// exitCodeForParse is the exit code of a flag parse error: 0 for -h, 2 for
// bad usage.
func exitCodeForParse(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
