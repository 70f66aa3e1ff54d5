package main

import (
	"context"
	"crypto/elliptic"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"time"
)

const (
	ktyOct = "oct-HSM"
	ktyRSA = "RSA-HSM"
	ktyEC  = "EC-HSM"

	defaultVaultAPIVersion = "7.4"
	defaultRSABits         = 3072
	defaultDerivationLabel = "Symmetric Encryption Key" // the seed's default
	maxImportConfig        = 1 << 20
	maxKeyFile             = 64 << 10
)

var (
	keyNamePattern    = regexp.MustCompile(`^[0-9a-zA-Z-]{1,127}$`)
	apiVersionPattern = regexp.MustCompile(`^[0-9]+\.[0-9]+(-preview(\.[0-9]+)?)?$`)
	lowerHex64        = regexp.MustCompile(`^[0-9a-f]{64}$`)
	validKeyOps       = map[string]bool{"encrypt": true, "decrypt": true, "sign": true, "verify": true, "wrapKey": true, "unwrapKey": true, "import": true, "export": true}
	validOctSizes     = map[int]bool{16: true, 24: true, 32: true}
	validRSABits      = map[int]bool{2048: true, 3072: true, 4096: true}
	curvesByName      = map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}
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
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	if env.Client == nil {
		env.Client = newUpstreamClient(nil)
	}
	retry := defaultRetry
	if env.Retry != nil {
		retry = *env.Retry
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "skr importkey: %s\n", oneLine(err.Error()))
		return 1
	}

	plan, err := loadImportPlan(fl)
	if err != nil {
		return fail(err)
	}
	if err := prepareEmulatedImport(fl, plan, &env); err != nil {
		return fail(err)
	}
	for _, w := range plan.Warnings {
		fmt.Fprintf(stderr, "skr importkey: warning: %s\n", w)
	}
	mat, err := loadKeyMaterial(fl, plan)
	if err != nil {
		return fail(err)
	}
	if err := plannedFilesAbsent(mat); err != nil {
		return fail(err)
	}
	if !fl.DryRun && !fl.Azure && plan.BearerToken == "" {
		return fail(errors.New("no bearer token: set key.akv.bearer_token (e.g. from az account get-access-token --resource " + vaultResource(plan.Vault) + ") or use -a inside Azure"))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	token, tokenSource := plan.BearerToken, "key.akv.bearer_token"
	if fl.Azure {
		tokenSource = "managed identity (-a)"
		if !fl.DryRun {
			tp := newTokenProvider(tokenConfig{IdentityClientID: plan.ClientID, Getenv: env.Getenv, Client: env.Client, Log: slog.New(slog.DiscardHandler), ExtraVaultHosts: env.IdentityTokenHosts})
			if token, tokenSource, err = tp.Token(ctx, plan.Vault); err != nil {
				return fail(fmt.Errorf("get a bearer token for %s: %w", plan.Vault, err))
			}
		}
	}

	if err := completeKeyMaterial(fl, plan, mat); err != nil {
		return fail(err)
	}
	defer mat.wipe()
	req, body, err := buildImportRequest(plan, mat.Key)
	if err != nil {
		return fail(err)
	}
	defer clear(body)
	policyJSON := prettyJSON(plan.Policy)
	putURL := importURL(plan)

	if fl.DryRun {
		printDryRun(stdout, plan, mat, putURL, tokenSource, req, policyJSON)
		return 0
	}

	written, err := writePendingFiles(mat.Files)
	if err != nil {
		return fail(err)
	}
	kid, err := putKey(ctx, env.Client, retry, putURL, token, body)
	if err != nil {
		err = explainVaultError(err, plan)
		if len(written) > 0 && vaultSurelyRefused(err) {
			for _, f := range written {
				os.Remove(f.Path)
			}
			err = fmt.Errorf("%w (removed the key files written by this run: the key was not imported)", err)
		} else if len(written) > 0 {
			err = fmt.Errorf("%w (kept the key files written by this run in case the import went through)", err)
		}
		return fail(err)
	}
	for _, f := range written {
		fmt.Fprintf(stderr, "wrote %s to %s (mode 0600)\n", f.What, f.Path)
	}
	fmt.Fprintln(stdout, kid)
	fmt.Fprintln(stdout, string(policyJSON))
	return 0
}

func parseImportFlags(args []string, stderr io.Writer) (*importFlags, int) {
	fl := &importFlags{}
	fs := flag.NewFlagSet("skr importkey", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&fl.Config, "c", "", "importkeyconfig.json (required)")
	fs.StringVar(&fl.KeyHex, "kh", "", "oct-HSM key: hex, or a file holding it as hex or as raw bytes (16, 24 or 32 bytes); default: generated")
	fs.StringVar(&fl.KeyPEM, "kp", "", "RSA-HSM / EC-HSM key: PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC); default: generated")
	fs.BoolVar(&fl.Azure, "a", false, "get the bearer token from the managed identity (IMDS; identity.client_id) instead of key.akv.bearer_token")
	fs.BoolVar(&fl.Out, "out", false, "write the symmetric key as hex (mode 0600): the oct-HSM key, or for RSA-HSM a key derived with HKDF-SHA256 from the private exponent (key_derivation salt/label)")
	fs.BoolVar(&fl.DryRun, "dry-run", false, "print the release policy and the request (private key material and token redacted); send and write nothing")
	fs.StringVar(&fl.KeyDir, "keydir", ".", "folder for the key files written (KID.pem, KID.hex, KID.derived.hex)")
	fs.IntVar(&fl.Port, "port", 0, "for "+emulatedVaultHost+" and "+emulatedHSMHost+": the port of the skr -emulate sidecar on 127.0.0.1 that serves them (default: env Port, else 8080)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: skr importkey -c CONFIG [-kh HEX|FILE] [-kp PEM] [-a] [-out] [-dry-run] [-keydir DIR] [-port N]   (link: importkey)")
		fmt.Fprintln(stderr, "Imports a key with a secure-key-release policy into Azure Key Vault Premium or Managed HSM.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
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
