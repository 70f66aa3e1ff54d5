package main

// skr importkey (link: importkey): import a key with a secure-key-release
// policy into Azure Key Vault Premium or Managed HSM, from the seed's
// importkeyconfig.json.
//
// Everything the user can get wrong (config, flags, key material, existing
// output files, missing token) is checked before a key is generated or a
// file written, so a failed run leaves nothing behind.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// importKeyConfig is the seed's importkeyconfig.json. Claims may sit at the
// top level (the seed's place) or under "key"; both a list of allOf lists
// and a single flat allOf list are accepted.
type importKeyConfig struct {
	Key           importKeySpec      `json:"key"`
	Claims        claimSets          `json:"claims"`
	KeyDerivation *keyDerivationSpec `json:"key_derivation"`
	Identity      struct {
		ClientID string `json:"client_id"`
	} `json:"identity"`
}

type importKeySpec struct {
	KID       string   `json:"kid"`
	KTY       string   `json:"kty"`
	KeyOps    []string `json:"key_ops"`
	Authority struct {
		Endpoint string `json:"endpoint"`
	} `json:"authority"`
	AKV    *vaultSpec `json:"akv"`
	MHSM   *vaultSpec `json:"mhsm"` // the older name of akv
	Claims claimSets  `json:"claims"`
	// Extensions of skr: the size of a generated RSA key (2048, 3072, 4096;
	// default 3072) and the curve of a generated EC key (default P-256).
	KeySize int    `json:"key_size"`
	Crv     string `json:"crv"`
}

type vaultSpec struct {
	Endpoint    string `json:"endpoint"`
	APIVersion  string `json:"api_version"` // "7.4" or the seed's "api-version=7.4"
	BearerToken string `json:"bearer_token"`
}

type keyDerivationSpec struct {
	Salt  string `json:"salt"`  // hex
	Label string `json:"label"` // HKDF info
}

// releaseClaim is one condition of a release policy. Equals keeps the
// value's JSON as written (production policies write "false" and "0" as
// strings, and the service compares string forms).
type releaseClaim struct {
	Claim  string          `json:"claim"`
	Equals json.RawMessage `json:"equals"`
}

type claimSets [][]releaseClaim

// UnmarshalJSON takes [[{claim,equals},...],...] or the older flat
// [{claim,equals},...], which is one allOf list.
func (c *claimSets) UnmarshalJSON(b []byte) error {
	var nested [][]releaseClaim
	if err := json.Unmarshal(b, &nested); err == nil {
		*c = nested
		return nil
	}
	var flat []releaseClaim
	if err := json.Unmarshal(b, &flat); err != nil {
		return errors.New(`"claims" must be a list of lists of {"claim", "equals"} (or one flat list)`)
	}
	if len(flat) > 0 {
		*c = claimSets{flat}
	}
	return nil
}

// releasePolicy is the policy grammar's subset importkey writes.
type releasePolicy struct {
	Version string            `json:"version"`
	AnyOf   []policyAuthority `json:"anyOf"`
}

type policyAuthority struct {
	Authority string         `json:"authority"`
	AllOf     []releaseClaim `json:"allOf"`
}

// wireReleasePolicy is how a policy travels to Key Vault.
type wireReleasePolicy struct {
	ContentType string `json:"contentType"`
	Data        string `json:"data"` // b64url-raw of the policy JSON
	Immutable   bool   `json:"immutable"`
}

// importJWK is the key as Key Vault's import wants it: a private JWK whose
// kty carries the -HSM suffix, plus key_size (bits) for oct keys.
type importJWK struct {
	jwk
	KeySize int `json:"key_size,omitempty"`
}

type importKeyRequest struct {
	Key        importJWK `json:"key"`
	HSM        bool      `json:"hsm"`
	Attributes struct {
		Exportable bool `json:"exportable"`
		Enabled    bool `json:"enabled"`
	} `json:"attributes"`
	ReleasePolicy wireReleasePolicy `json:"release_policy"`
}

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

// importPlan is a validated config plus flags: everything needed to act.
type importPlan struct {
	KID         string
	KTY         string
	KeyOps      []string
	Vault       string // host[:port]
	APIVersion  string
	BearerToken string // from the config; never printed
	Policy      releasePolicy
	RSABits     int
	Curve       elliptic.Curve // the config's key.crv; nil = P-256 when generated, else the PEM's
	ClientID    string
	Salt        []byte // for -out with RSA-HSM; nil = random
	Label       string
	Warnings    []string // worth saying, not worth refusing
}

// importMaterial is the private key to import and the files to write.
type importMaterial struct {
	Key       any // *rsa.PrivateKey, *ecdsa.PrivateKey or []byte
	Generated bool
	Files     []pendingFile
	Derived   []byte // the symmetric key derived from RSA d, for -out
}

// wipe clears the symmetric key material held in memory.
func (m *importMaterial) wipe() {
	if k, ok := m.Key.([]byte); ok {
		clear(k)
	}
	clear(m.Derived)
	for _, f := range m.Files {
		clear(f.Content)
	}
}

// pendingFile is a file to be created with mode 0600, never overwritten.
type pendingFile struct {
	Path    string
	What    string
	Content []byte
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
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: skr importkey -c CONFIG [-kh HEX|FILE] [-kp PEM] [-a] [-out] [-dry-run] [-keydir DIR]   (link: importkey)")
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

// loadImportPlan reads and checks the config against the flags.
func loadImportPlan(fl *importFlags) (*importPlan, error) {
	raw, err := readBounded(fl.Config, maxImportConfig)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var cfg importKeyConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("config %s is not valid JSON: %w", fl.Config, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("config %s has data after the JSON object", fl.Config)
	}
	plan, err := planFromConfig(&cfg)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", fl.Config, err)
	}
	if err := checkFlagsAgainstPlan(fl, plan, cfg.KeyDerivation); err != nil {
		return nil, err
	}
	return plan, nil
}

// planFromConfig validates a decoded config.
func planFromConfig(cfg *importKeyConfig) (*importPlan, error) {
	k := cfg.Key
	p := &importPlan{KID: strings.TrimSpace(k.KID), KTY: k.KTY, KeyOps: k.KeyOps, ClientID: cfg.Identity.ClientID}
	if p.KID == "" {
		return nil, errors.New("key.kid is missing: set the key's name in the vault")
	}
	if !keyNamePattern.MatchString(p.KID) {
		return nil, fmt.Errorf("key.kid %q is not a Key Vault key name (1-127 letters, digits and '-')", p.KID)
	}
	switch p.KTY {
	case ktyOct, ktyRSA, ktyEC:
	case "":
		return nil, errors.New(`key.kty is missing: set "oct-HSM", "RSA-HSM" or "EC-HSM"`)
	default:
		return nil, fmt.Errorf(`key.kty %q is not supported: use "oct-HSM", "RSA-HSM" or "EC-HSM"`, p.KTY)
	}
	for _, op := range p.KeyOps {
		if !validKeyOps[op] {
			return nil, fmt.Errorf("key.key_ops: %q is not a Key Vault key operation (encrypt, decrypt, sign, verify, wrapKey, unwrapKey, import, export)", op)
		}
	}
	if err := planKeyShape(p, k); err != nil {
		return nil, err
	}

	vault := k.AKV
	switch {
	case k.AKV != nil && k.MHSM != nil:
		return nil, errors.New(`both key.akv and key.mhsm are set: keep one ("mhsm" is the older name of "akv")`)
	case vault == nil:
		vault = k.MHSM
	}
	if vault == nil || strings.TrimSpace(vault.Endpoint) == "" {
		return nil, errors.New("key.akv.endpoint is missing: set the vault host, e.g. myvault.vault.azure.net or myhsm.managedhsm.azure.net")
	}
	var err error
	if p.Vault, err = normalizeEndpoint("key.akv.endpoint", vault.Endpoint); err != nil {
		return nil, err
	}
	p.APIVersion = strings.TrimPrefix(strings.TrimSpace(vault.APIVersion), "api-version=")
	if p.APIVersion == "" {
		p.APIVersion = defaultVaultAPIVersion
	}
	if !apiVersionPattern.MatchString(p.APIVersion) {
		return nil, fmt.Errorf("key.akv.api_version %q is not an API version such as 7.4", vault.APIVersion)
	}
	p.BearerToken = strings.TrimSpace(vault.BearerToken)

	if strings.TrimSpace(k.Authority.Endpoint) == "" {
		return nil, errors.New("key.authority.endpoint is missing: set the MAA endpoint whose tokens may release the key, e.g. sharedeus.eus.attest.azure.net")
	}
	maa, err := normalizeEndpoint("key.authority.endpoint", k.Authority.Endpoint)
	if err != nil {
		return nil, err
	}
	if p.Policy, err = buildReleasePolicy("https://"+maa, cfg.Claims, k.Claims, &p.Warnings); err != nil {
		return nil, err
	}
	if d := cfg.KeyDerivation; d != nil {
		if d.Salt != "" {
			if p.Salt, err = hex.DecodeString(strings.TrimSpace(d.Salt)); err != nil || len(p.Salt) == 0 {
				return nil, fmt.Errorf("key_derivation.salt is not hex: %q", d.Salt)
			}
		}
		p.Label = d.Label
	}
	if p.Label == "" {
		p.Label = defaultDerivationLabel
	}
	return p, nil
}

// planKeyShape reads the size of a generated RSA key and the curve of a
// generated EC key.
func planKeyShape(p *importPlan, k importKeySpec) error {
	switch p.KTY {
	case ktyRSA:
		p.RSABits = defaultRSABits
		if k.KeySize != 0 {
			if !validRSABits[k.KeySize] {
				return fmt.Errorf("key.key_size %d: RSA-HSM keys are 2048, 3072 or 4096 bits", k.KeySize)
			}
			p.RSABits = k.KeySize
		}
	case ktyEC:
		if k.Crv != "" {
			c, ok := curvesByName[k.Crv]
			if !ok {
				return fmt.Errorf("key.crv %q: EC-HSM keys are P-256, P-384 or P-521", k.Crv)
			}
			p.Curve = c
		}
	}
	if p.KTY != ktyRSA && k.KeySize != 0 {
		return fmt.Errorf("key.key_size is for RSA-HSM keys, not %s", p.KTY)
	}
	if p.KTY != ktyEC && k.Crv != "" {
		return fmt.Errorf("key.crv is for EC-HSM keys, not %s", p.KTY)
	}
	return nil
}

// buildReleasePolicy makes one anyOf entry per claims list, all with the
// same authority.
func buildReleasePolicy(authority string, top, underKey claimSets, warnings *[]string) (releasePolicy, error) {
	sets := top
	switch {
	case len(top) > 0 && len(underKey) > 0:
		return releasePolicy{}, errors.New(`claims are given both at the top level and under "key": keep one`)
	case len(underKey) > 0:
		sets = underKey
	}
	if len(sets) == 0 {
		return releasePolicy{}, errors.New(`no claims: a release policy needs at least one list of {"claim", "equals"}, e.g. x-ms-sevsnpvm-hostdata from skr digest`)
	}
	pol := releasePolicy{Version: "1.0.0"}
	for i, set := range sets {
		if len(set) == 0 {
			return releasePolicy{}, fmt.Errorf("claims list %d is empty: it would allow any token from %s", i+1, authority)
		}
		for j, c := range set {
			if err := checkClaim(c); err != nil {
				return releasePolicy{}, fmt.Errorf("claims list %d, condition %d: %w", i+1, j+1, err)
			}
		}
		if !hasClaim(set, hostDataClaim) {
			*warnings = append(*warnings, fmt.Sprintf("claims list %d does not pin %s: any container group whose token satisfies the rest may get the key", i+1, hostDataClaim))
		}
		if hasClaimValue(set, hostDataClaim, `"`+strings.Repeat("0", 64)+`"`) {
			*warnings = append(*warnings, fmt.Sprintf("claims list %d: %s is all zeros, the example's placeholder: put the digest of your policy (skr digest)", i+1, hostDataClaim))
		}
		pol.AnyOf = append(pol.AnyOf, policyAuthority{Authority: authority, AllOf: set})
	}
	return pol, nil
}

const hostDataClaim = "x-ms-sevsnpvm-hostdata"

func hasClaim(set []releaseClaim, name string) bool {
	for _, c := range set {
		if c.Claim == name {
			return true
		}
	}
	return false
}

func hasClaimValue(set []releaseClaim, name, valueJSON string) bool {
	for _, c := range set {
		if c.Claim == name && string(bytes.TrimSpace(c.Equals)) == valueJSON {
			return true
		}
	}
	return false
}

func checkClaim(c releaseClaim) error {
	if strings.TrimSpace(c.Claim) == "" {
		return errors.New(`"claim" is missing`)
	}
	if len(c.Equals) == 0 {
		return fmt.Errorf(`claim %q has no "equals" value`, c.Claim)
	}
	var v any
	if err := json.Unmarshal(c.Equals, &v); err != nil {
		return fmt.Errorf("claim %q: %w", c.Claim, err)
	}
	switch v := v.(type) {
	case string:
		if c.Claim == hostDataClaim && !lowerHex64.MatchString(v) {
			return fmt.Errorf("%s %q is not 64 lower-case hex digits: compute it with skr digest -f POLICY.base64", hostDataClaim, v)
		}
	case bool, float64:
	default:
		return fmt.Errorf(`claim %q: "equals" must be a string, number or boolean`, c.Claim)
	}
	return nil
}

// checkFlagsAgainstPlan refuses flag combinations that do not fit the kty.
func checkFlagsAgainstPlan(fl *importFlags, p *importPlan, kd *keyDerivationSpec) error {
	switch {
	case fl.KeyHex != "" && fl.KeyPEM != "":
		return errors.New("give -kh (oct-HSM) or -kp (RSA-HSM, EC-HSM), not both")
	case fl.KeyHex != "" && p.KTY != ktyOct:
		return fmt.Errorf("-kh gives an oct-HSM key but key.kty is %s: use -kp PEM", p.KTY)
	case fl.KeyPEM != "" && p.KTY == ktyOct:
		return errors.New("-kp gives an RSA or EC key but key.kty is oct-HSM: use -kh HEX")
	case fl.Out && p.KTY == ktyEC:
		return errors.New("-out writes an oct-HSM key or a key derived from an RSA-HSM key; EC-HSM has neither")
	case kd != nil && p.KTY != ktyRSA:
		return fmt.Errorf("key_derivation is only for RSA-HSM keys (with -out), not %s", p.KTY)
	}
	if fl.DryRun {
		return nil
	}
	info, err := os.Stat(fl.KeyDir)
	if err != nil || !info.IsDir() {
		return fmt.Errorf("-keydir %s is not a folder", fl.KeyDir)
	}
	return nil
}

// loadKeyMaterial reads a given key (it does not generate one yet) and
// lists the files the run will write.
func loadKeyMaterial(fl *importFlags, p *importPlan) (*importMaterial, error) {
	m := &importMaterial{}
	var err error
	switch {
	case fl.KeyHex != "":
		if m.Key, err = readOctKey(fl.KeyHex); err != nil {
			return nil, err
		}
	case fl.KeyPEM != "":
		if m.Key, err = readPrivateKeyPEM(fl.KeyPEM, p); err != nil {
			return nil, err
		}
	default:
		m.Generated = true
	}
	base := filepath.Join(fl.KeyDir, p.KID)
	switch {
	case m.Generated && p.KTY == ktyOct, fl.Out && p.KTY == ktyOct:
		m.Files = append(m.Files, pendingFile{Path: base + ".hex", What: "the oct-HSM key (hex)"})
	case m.Generated:
		m.Files = append(m.Files, pendingFile{Path: base + ".pem", What: "the generated private key (PKCS#8 PEM)"})
	}
	if fl.Out && p.KTY == ktyRSA {
		m.Files = append(m.Files, pendingFile{Path: base + ".derived.hex", What: "the key derived from the RSA private exponent (hex)"})
	}
	return m, nil
}

// plannedFilesAbsent refuses to run when a file it would write exists: a
// key file is never overwritten.
func plannedFilesAbsent(m *importMaterial) error {
	for _, f := range m.Files {
		if _, err := os.Lstat(f.Path); err == nil {
			return fmt.Errorf("%s already exists: move it away or choose another -keydir (key files are never overwritten)", f.Path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", f.Path, err)
		}
	}
	return nil
}

// readOctKey reads -kh: hex on the command line, or a file holding the key
// as hex (white space ignored) or as raw bytes. A file is read when the
// argument names one; its content is taken as hex when it is nothing but
// an even number of hex digits, else as raw bytes.
func readOctKey(arg string) ([]byte, error) {
	var key []byte
	raw, err := readBounded(arg, maxKeyFile)
	switch {
	case err == nil:
		key = raw
		if s := strings.TrimSpace(string(raw)); isHexString(s) {
			key, _ = hex.DecodeString(s)
			clear(raw)
		}
	case errors.Is(err, fs.ErrNotExist):
		if !isHexString(arg) {
			return nil, errors.New("-kh is neither an existing file nor a hex string")
		}
		key, _ = hex.DecodeString(arg)
	default:
		return nil, fmt.Errorf("-kh: %w", err)
	}
	if !validOctSizes[len(key)] {
		n := len(key)
		clear(key)
		return nil, fmt.Errorf("-kh: the oct-HSM key is %d bytes; Managed HSM imports AES keys of 16, 24 or 32 bytes", n)
	}
	return key, nil
}

func isHexString(s string) bool {
	if s == "" || len(s)%2 != 0 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// readPrivateKeyPEM reads -kp and checks it fits the config's kty.
func readPrivateKeyPEM(path string, p *importPlan) (any, error) {
	raw, err := readBounded(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("-kp: %w", err)
	}
	defer clear(raw)
	key, err := parsePrivateKeyPEM(raw)
	if err != nil {
		return nil, fmt.Errorf("-kp %s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if p.KTY != ktyRSA {
			return nil, fmt.Errorf("-kp %s holds an RSA key but key.kty is %s", path, p.KTY)
		}
		if bits := k.N.BitLen(); !validRSABits[bits] {
			return nil, fmt.Errorf("-kp %s: RSA key of %d bits; RSA-HSM keys are 2048, 3072 or 4096 bits", path, bits)
		}
	case *ecdsa.PrivateKey:
		if p.KTY != ktyEC {
			return nil, fmt.Errorf("-kp %s holds an EC key but key.kty is %s", path, p.KTY)
		}
		name := k.Curve.Params().Name
		if _, ok := curvesByName[name]; !ok {
			return nil, fmt.Errorf("-kp %s: curve %s; EC-HSM keys are P-256, P-384 or P-521", path, name)
		}
		if p.Curve != nil && p.Curve != k.Curve {
			return nil, fmt.Errorf("-kp %s holds a %s key but key.crv is %s", path, name, p.Curve.Params().Name)
		}
		p.Curve = k.Curve
	default:
		return nil, fmt.Errorf("-kp %s holds a %T key: only RSA and EC keys can be imported", path, key)
	}
	return key, nil
}

// parsePrivateKeyPEM takes the first PEM block: PKCS#8 "PRIVATE KEY",
// PKCS#1 "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY". Encrypted keys are
// refused: decrypt them with openssl first.
func parsePrivateKeyPEM(raw []byte) (any, error) {
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	defer clear(block.Bytes)
	if _, encrypted := block.Headers["Proc-Type"]; encrypted || block.Type == "ENCRYPTED PRIVATE KEY" {
		return nil, errors.New("the private key is encrypted: decrypt it first (openssl pkey -in KEY -out PLAIN)")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	return key, nil
}

// completeKeyMaterial generates the key when none was given and fills the
// contents of the files to write.
func completeKeyMaterial(fl *importFlags, p *importPlan, m *importMaterial) error {
	if m.Generated {
		var err error
		switch p.KTY {
		case ktyOct:
			k := make([]byte, 32)
			rand.Read(k)
			m.Key = k
		case ktyRSA:
			m.Key, err = rsa.GenerateKey(rand.Reader, p.RSABits)
		case ktyEC:
			if p.Curve == nil {
				p.Curve = elliptic.P256()
			}
			m.Key, err = ecdsa.GenerateKey(p.Curve, rand.Reader)
		}
		if err != nil {
			return fmt.Errorf("generate a %s key: %w", p.KTY, err)
		}
	}
	if fl.Out && p.KTY == ktyRSA {
		if p.Salt == nil {
			p.Salt = make([]byte, sha256.Size)
			rand.Read(p.Salt)
		}
		d := m.Key.(*rsa.PrivateKey).D.Bytes()
		derived, err := hkdf.Key(sha256.New, d, p.Salt, p.Label, 32)
		clear(d)
		if err != nil {
			return fmt.Errorf("derive a key from the RSA private exponent: %w", err)
		}
		m.Derived = derived
	}
	for i := range m.Files {
		f := &m.Files[i]
		switch {
		case strings.HasSuffix(f.Path, ".derived.hex"):
			f.Content = []byte(hex.EncodeToString(m.Derived) + "\n")
			// Salt and label are public; whoever gets the RSA key released
			// needs them to derive the same key.
			f.What = fmt.Sprintf("the key derived from the RSA private exponent (hex; HKDF-SHA256, salt %x, label %q)", p.Salt, p.Label)
		case strings.HasSuffix(f.Path, ".hex"):
			f.Content = []byte(hex.EncodeToString(m.Key.([]byte)) + "\n")
		default:
			der, err := x509.MarshalPKCS8PrivateKey(m.Key)
			if err != nil {
				return fmt.Errorf("encode the generated key: %w", err)
			}
			f.Content = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
			clear(der)
		}
	}
	return nil
}

// buildImportRequest is the PUT's body, and its JSON.
func buildImportRequest(p *importPlan, key any) (*importKeyRequest, []byte, error) {
	k, err := jwkFromPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode the key as a JWK: %w", err)
	}
	// The vault names the key from the URL; a kid, use or alg of the
	// local encoding must not travel.
	k.Kid, k.Use, k.Alg, k.X5C = "", "", "", nil
	k.Kty = p.KTY
	k.KeyOps = p.KeyOps
	req := importKeyRequest{Key: importJWK{jwk: k}, HSM: true}
	if oct, ok := key.([]byte); ok {
		req.Key.KeySize = len(oct) * 8
	}
	req.Attributes.Exportable = true
	req.Attributes.Enabled = true
	policy, err := marshalJSON(p.Policy)
	if err != nil {
		return nil, nil, err
	}
	req.ReleasePolicy = wireReleasePolicy{ContentType: "application/json; charset=utf-8", Data: b64url(policy)}
	body, err := marshalJSON(req)
	if err != nil {
		return nil, nil, err
	}
	return &req, body, nil
}

// marshalJSON is json.Marshal without HTML escaping, so the policy bytes
// are exactly what a reader of the printed policy expects.
func marshalJSON(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func importURL(p *importPlan) string {
	return "https://" + p.Vault + "/keys/" + url.PathEscape(p.KID) + "?api-version=" + url.QueryEscape(p.APIVersion)
}

func printDryRun(w io.Writer, p *importPlan, m *importMaterial, putURL, tokenSource string, req *importKeyRequest, policyJSON []byte) {
	fmt.Fprintln(w, "release policy:")
	fmt.Fprintln(w, string(policyJSON))
	fmt.Fprintln(w, "\nrequest (-dry-run: not sent; private key material redacted):")
	fmt.Fprintf(w, "PUT %s\n", putURL)
	fmt.Fprintf(w, "Authorization: Bearer <%s, not shown>\n", tokenSource)
	fmt.Fprintln(w, "Content-Type: application/json")
	fmt.Fprintln(w)
	fmt.Fprintln(w, string(redactedRequest(req)))
	if m.Generated {
		fmt.Fprintf(w, "\nthe %s key would be generated at import\n", p.KTY)
	}
	for _, f := range m.Files {
		fmt.Fprintf(w, "would write %s to %s (mode 0600)\n", f.What, f.Path)
	}
}

// redactedRequest is the body as sent, with the private JWK members
// replaced by their length.
func redactedRequest(req *importKeyRequest) []byte {
	r := *req
	for _, f := range []*string{&r.Key.D, &r.Key.P, &r.Key.Q, &r.Key.DP, &r.Key.DQ, &r.Key.QI, &r.Key.K} {
		if *f != "" {
			*f = fmt.Sprintf("<redacted: %d base64url characters>", len(*f))
		}
	}
	return prettyJSON(r)
}

// prettyJSON indents v for people, without HTML escaping.
func prettyJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	enc.Encode(v)
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// writePendingFiles creates each file exclusively with mode 0600. On an
// error it removes what it created.
func writePendingFiles(files []pendingFile) ([]pendingFile, error) {
	var done []pendingFile
	for _, f := range files {
		if err := writeExclusive(f.Path, f.Content); err != nil {
			for _, d := range done {
				os.Remove(d.Path)
			}
			return nil, fmt.Errorf("write %s: %w", f.What, err)
		}
		clear(f.Content)
		done = append(done, f)
	}
	return done, nil
}

// privateJWKMembers are the private members of the key in an import body:
// an error answer must never repeat them.
func privateJWKMembers(body []byte) []string {
	var b struct {
		Key jwk `json:"key"`
	}
	if json.Unmarshal(body, &b) != nil {
		return nil
	}
	var out []string
	for _, v := range []string{b.Key.D, b.Key.P, b.Key.Q, b.Key.DP, b.Key.DQ, b.Key.QI, b.Key.K} {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

func writeExclusive(path string, content []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}

// putKey sends the import and returns the new key's id.
func putKey(ctx context.Context, client *http.Client, retry retryPolicy, putURL, token string, body []byte) (string, error) {
	ctx = withSecrets(ctx, privateJWKMembers(body)...)
	resp, _, err := doWithRetry(ctx, client, "Key Vault", retry, nil, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, putURL, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		return req, nil
	})
	if err != nil {
		return "", err
	}
	var bundle struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	if err := json.Unmarshal(resp, &bundle); err != nil || bundle.Key.Kid == "" {
		return "", fmt.Errorf("Key Vault accepted the import but its answer has no key.kid: %q", truncate(string(resp), 200))
	}
	return bundle.Key.Kid, nil
}

// explainVaultError turns a failed import into one line with its likely
// cause.
func explainVaultError(err error, p *importPlan) error {
	var ue *upstreamError
	if errors.As(err, &ue) {
		switch ue.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("import key %q: %w: the bearer token is missing, expired or for another audience; get one for %s (az account get-access-token --resource %s) or use -a", p.KID, err, vaultResource(p.Vault), vaultResource(p.Vault))
		case http.StatusForbidden:
			return fmt.Errorf("import key %q: %w: the identity lacks a role that may import keys (Key Vault Crypto Officer on a Key Vault, Managed HSM Crypto User on a Managed HSM)", p.KID, err)
		case http.StatusBadRequest:
			return fmt.Errorf("import key %q: %w: check that key.kty %s matches the key material and key_ops, and that the vault supports it (oct-HSM needs a Managed HSM; Key Vault Premium for RSA-HSM and EC-HSM)", p.KID, err, p.KTY)
		case http.StatusNotFound:
			return fmt.Errorf("import key %q: %w: check key.akv.endpoint %s and api_version %s", p.KID, err, p.Vault, p.APIVersion)
		}
		return fmt.Errorf("import key %q: %w", p.KID, err)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("import key %q: cannot resolve the vault host %s (%v): check key.akv.endpoint and DNS", p.KID, p.Vault, dnsErr)
	}
	return fmt.Errorf("import key %q into %s: %w", p.KID, p.Vault, err)
}

// vaultSurelyRefused is true when the vault answered with a final 4xx: the
// key was not imported, so key files written for it are useless.
func vaultSurelyRefused(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue) && ue.StatusCode >= 400 && ue.StatusCode < 500
}

// oneLine keeps an error on a single log line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
