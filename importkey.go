package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"time"
)

const (
	ktyOct = "oct-HSM"
	ktyRSA = "RSA-HSM"
	ktyEC  = "EC-HSM"

	defaultVaultAPIVersion = "7.4"
	defaultRSABits         = 3072
	defaultDerivationLabel = "Symmetric Encryption Key" // Microsoft's importkey default
	maxImportConfig        = 1 << 20
	maxKeyFile             = 64 << 10
)

var (
	validKeyOps   = map[string]bool{"encrypt": true, "decrypt": true, "sign": true, "verify": true, "wrapKey": true, "unwrapKey": true, "import": true, "export": true}
	validOctSizes = map[int]bool{16: true, 24: true, 32: true}
	validRSABits  = map[int]bool{2048: true, 3072: true, 4096: true}
)

// importFlags are the command line.
type importFlags struct {
	Config string
	KeyHex string // -kh: hex, or a file holding hex or raw bytes
	KeyPEM string // -kp: PEM file
	Azure  bool   // -a: bearer token from the managed identity
	Out    bool   // -out: write the symmetric key (oct, or derived from RSA d)
	DryRun bool
	KeyDir string
	Port   int // the emulating sidecar's port, for the emulated vaults
}

// importKeyEnv is what tests replace: the HTTP client (and so the trust
// roots) and the environment.
type importKeyEnv struct {
	Client *http.Client        // nil = system roots (SSL_CERT_FILE honoured)
	Getenv func(string) string // nil = os.Getenv
	Retry  *retryPolicy        // nil = defaultRetry
	// IdentityTokenHosts may get the -a token besides Key Vault and
	// Managed HSM names (tests' stand-ins).
	IdentityTokenHosts []string
}

func runImportKey(args []string, stdout, stderr io.Writer) int {
	return importKeyMain(args, stdout, stderr, importKeyEnv{})
}

func importKeyMain(args []string, stdout, stderr io.Writer, env importKeyEnv) int {
	fl, code := parseImportFlags(args, stderr)
	if fl == nil {
		return code
	}
	if err := importKey(fl, stdout, stderr, env.withDefaults()); err != nil {
		fmt.Fprintf(stderr, "skr importkey: %s\n", oneLine(err.Error()))
		return 1
	}
	return 0
}

// withDefaults fills what a test did not replace.
func (env importKeyEnv) withDefaults() importKeyEnv {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Client == nil {
		env.Client = newUpstreamClient(nil)
	}
	if env.Retry == nil {
		retry := defaultRetry
		env.Retry = &retry
	}
	return env
}

// importKey plans the import, gathers the key material and the bearer
// token, and sends the key, or with -dry-run prints what it would send.
func importKey(fl *importFlags, stdout, stderr io.Writer, env importKeyEnv) error {
	plan, err := loadImportPlan(fl)
	if err != nil {
		return err
	}
	if err := prepareEmulatedImport(fl, plan, &env); err != nil {
		return err
	}
	for _, w := range plan.Warnings {
		fmt.Fprintf(stderr, "skr importkey: warning: %s\n", w)
	}
	mat, err := loadKeyMaterial(fl, plan)
	if err != nil {
		return err
	}
	if err := plannedFilesAbsent(mat); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	token, tokenSource, err := importBearerToken(ctx, fl, plan, env)
	if err != nil {
		return err
	}

	if err := completeKeyMaterial(fl, plan, mat); err != nil {
		return err
	}
	defer mat.wipe()
	req, body, err := buildImportRequest(plan, mat.Key)
	if err != nil {
		return err
	}
	defer clear(body)
	policyJSON := prettyJSON(plan.Policy)
	putURL := importURL(plan)

	if fl.DryRun {
		printDryRun(stdout, plan, mat, putURL, tokenSource, req, policyJSON)
		return nil
	}
	kid, err := sendImport(ctx, env, plan, mat.Files, putURL, token, body, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, kid)
	fmt.Fprintln(stdout, string(policyJSON))
	return nil
}

// importBearerToken is the token for the vault, and where it came from for
// messages: the configuration's, or with -a the managed identity's (not
// fetched for a dry run, which sends nothing).
func importBearerToken(ctx context.Context, fl *importFlags, plan *importPlan, env importKeyEnv) (token, source string, err error) {
	if !fl.Azure {
		if plan.BearerToken == "" && !fl.DryRun {
			return "", "", errors.New("no bearer token: set key.akv.bearer_token (e.g. from az account get-access-token --resource " + vaultResource(plan.Vault) + ") or use -a inside Azure")
		}
		return plan.BearerToken, "key.akv.bearer_token", nil
	}
	if fl.DryRun {
		return plan.BearerToken, "managed identity (-a)", nil
	}
	tp := newTokenProvider(tokenConfig{IdentityClientID: plan.ClientID, Getenv: env.Getenv, Client: env.Client, Log: slog.New(slog.DiscardHandler), ExtraVaultHosts: env.IdentityTokenHosts})
	if token, source, err = tp.Token(ctx, plan.Vault); err != nil {
		return "", "", fmt.Errorf("get a bearer token for %s: %w", plan.Vault, err)
	}
	return token, source, nil
}

func parseImportFlags(args []string, stderr io.Writer) (*importFlags, int) {
	fl := &importFlags{}
	fs := newCommandFlags("skr importkey", stderr,
		"Usage: skr importkey -c CONFIG [-kh HEX|FILE] [-kp PEM] [-a] [-out] [-dry-run] [-keydir DIR] [-port N]   (link: importkey)",
		"Imports a key with a secure-key-release policy into Azure Key Vault Premium or Managed HSM.")
	fs.StringVar(&fl.Config, "c", "", "importkeyconfig.json (required)")
	fs.StringVar(&fl.KeyHex, "kh", "", "oct-HSM key: hex, or a file holding it as hex or as raw bytes (16, 24 or 32 bytes); default: generated")
	fs.StringVar(&fl.KeyPEM, "kp", "", "RSA-HSM / EC-HSM key: PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC); default: generated")
	fs.BoolVar(&fl.Azure, "a", false, "get the bearer token from the managed identity (IMDS; identity.client_id) instead of key.akv.bearer_token")
	fs.BoolVar(&fl.Out, "out", false, "write the symmetric key as hex (mode 0600): the oct-HSM key, or for RSA-HSM a key derived with HKDF-SHA256 from the private exponent (key_derivation salt/label)")
	fs.BoolVar(&fl.DryRun, "dry-run", false, "print the release policy and the request (private key material and token redacted); send and write nothing")
	fs.StringVar(&fl.KeyDir, "keydir", ".", "folder for the key files written (KID.pem, KID.hex, KID.derived.hex)")
	fs.IntVar(&fl.Port, "port", 0, "for "+emulatedVaultHost+" and "+emulatedHSMHost+": the port of the skr -emulate sidecar on 127.0.0.1 that serves them (default: env Port, else 8080)")
	if err := fs.Parse(joinBoolFlagValues(fs, args)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0
		}
		return nil, 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "skr importkey: unexpected arguments %q\n", fs.Args())
		return nil, 2
	}
	if fl.Config == "" {
		fmt.Fprintln(stderr, "skr importkey: -c CONFIG is required")
		fs.Usage()
		return nil, 2
	}
	return fl, 0
}

// joinBoolFlagValues turns "-out true" into "-out=true". Microsoft's README
// runs importkey as "-c importkeyconfig.json -out true", but the flag
// package takes a bool flag's value only after "=", so "true" would end
// the flags and be refused as an argument.
func joinBoolFlagValues(fs *flag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		out = append(out, a)
		name := strings.TrimLeft(a, "-")
		if a == "--" || !strings.HasPrefix(a, "-") || name == "" {
			return append(out, args[i+1:]...) // the flags end here
		}
		if strings.Contains(name, "=") || i+1 == len(args) {
			continue
		}
		f := fs.Lookup(name)
		if f == nil {
			continue
		}
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !b.IsBoolFlag() {
			out = append(out, args[i+1]) // the flag's value, whatever it looks like
			i++
			continue
		}
		if next := args[i+1]; next == "true" || next == "false" {
			out[len(out)-1] = a + "=" + next
			i++
		}
	}
	return out
}
