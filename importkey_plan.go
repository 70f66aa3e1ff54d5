package main

import (
	"bytes"
	"crypto/elliptic"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
)

// importKeyConfig is importkeyconfig.json, as Microsoft's importkey tool
// reads it. Claims may sit at the top level (where that tool puts them) or
// under "key"; both a list of allOf lists and a single flat allOf list are
// accepted.
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
	APIVersion  string `json:"api_version"` // "7.4" or the upstream form "api-version=7.4"
	BearerToken string `json:"bearer_token"`
}

type keyDerivationSpec struct {
	Salt  string `json:"salt"`  // hex
	Label string `json:"label"` // HKDF info
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
	if err := checkFlagsAgainstPlan(fl, plan); err != nil {
		return nil, err
	}
	if err := planDerivation(plan, cfg.KeyDerivation, fl.Out); err != nil {
		return nil, fmt.Errorf("config %s: %w", fl.Config, err)
	}
	return plan, nil
}

// planFromConfig validates a decoded config.
func planFromConfig(cfg *importKeyConfig) (*importPlan, error) {
	p := &importPlan{ClientID: cfg.Identity.ClientID}
	if err := planKey(p, cfg.Key); err != nil {
		return nil, err
	}
	if err := planVault(p, cfg.Key); err != nil {
		return nil, err
	}
	if err := planPolicy(p, cfg); err != nil {
		return nil, err
	}
	if err := checkKeyTypeFitsVault(p, cfg.Key.KTY == ""); err != nil {
		return nil, err
	}
	return p, nil
}

// planKey reads the key's name, type, operations and shape.
func planKey(p *importPlan, k importKeySpec) error {
	p.KID, p.KTY, p.KeyOps = strings.TrimSpace(k.KID), strings.TrimSpace(k.KTY), k.KeyOps
	switch {
	case p.KID == "":
		return errors.New("key.kid is missing: set the key's name in the vault")
	case isPlaceholder(p.KID):
		return placeholderError("key.kid", p.KID, "put the name of the key to create in the vault (letters, digits and '-')")
	case strings.Contains(p.KID, "/keys/"):
		return fmt.Errorf("key.kid %q is a key identifier: put only the key's name in key.kid and the vault's host in key.akv.endpoint", p.KID)
	case !isKeyName(p.KID):
		return fmt.Errorf("key.kid %q is not a Key Vault key name (1-127 letters, digits and '-')", p.KID)
	}
	switch p.KTY {
	case ktyOct, ktyRSA, ktyEC:
	case "":
		// Microsoft's importkey imports an oct-HSM key when kty is not
		// set, and its README calls the field optional.
		p.KTY = ktyOct
		p.Warnings = append(p.Warnings, `key.kty is not set: importing an oct-HSM key, the default (Managed HSM only); set "oct-HSM", "RSA-HSM" or "EC-HSM" to choose`)
	default:
		if isPlaceholder(p.KTY) {
			return placeholderError("key.kty", p.KTY, `put "oct-HSM" (Managed HSM only), "RSA-HSM" or "EC-HSM", or remove key.kty for oct-HSM`)
		}
		return fmt.Errorf(`key.kty %q is not supported: use "oct-HSM", "RSA-HSM" or "EC-HSM"`, p.KTY)
	}
	for _, op := range p.KeyOps {
		if !validKeyOps[op] {
			return fmt.Errorf("key.key_ops: %q is not a Key Vault key operation (encrypt, decrypt, sign, verify, wrapKey, unwrapKey, import, export)", op)
		}
	}
	return planKeyShape(p, k)
}

// planVault reads where the key goes: key.akv, or key.mhsm, its older name.
func planVault(p *importPlan, k importKeySpec) error {
	vault := k.AKV
	switch {
	case k.AKV != nil && k.MHSM != nil:
		return errors.New(`both key.akv and key.mhsm are set: keep one ("mhsm" is the older name of "akv")`)
	case vault == nil:
		vault = k.MHSM
	}
	if vault == nil || strings.TrimSpace(vault.Endpoint) == "" {
		return errors.New("key.akv.endpoint is missing: set the vault host, e.g. myvault.vault.azure.net or myhsm.managedhsm.azure.net")
	}
	if isPlaceholder(vault.Endpoint) {
		return placeholderError("key.akv.endpoint", vault.Endpoint, "put the vault's host, e.g. myvault.vault.azure.net or myhsm.managedhsm.azure.net")
	}
	if isPlaceholder(vault.APIVersion) {
		return placeholderError("key.akv.api_version", vault.APIVersion, `put "api-version=7.4", or leave it empty for 7.4`)
	}
	var err error
	if p.Vault, err = normalizeEndpoint("key.akv.endpoint", vault.Endpoint); err != nil {
		return err
	}
	p.APIVersion = strings.TrimPrefix(strings.TrimSpace(vault.APIVersion), "api-version=")
	if p.APIVersion == "" {
		p.APIVersion = defaultVaultAPIVersion
	}
	if !isVaultAPIVersion(p.APIVersion) {
		return fmt.Errorf("key.akv.api_version %q is not an API version such as 7.4", vault.APIVersion)
	}
	p.BearerToken = strings.TrimSpace(vault.BearerToken)
	return nil
}

// planPolicy builds the release policy: the MAA authority whose tokens may
// release the key, and the claims they must carry.
func planPolicy(p *importPlan, cfg *importKeyConfig) error {
	k := cfg.Key
	if strings.TrimSpace(k.Authority.Endpoint) == "" {
		return errors.New("key.authority.endpoint is missing: set the MAA endpoint whose tokens may release the key, e.g. sharedeus.eus.attest.azure.net")
	}
	if isPlaceholder(k.Authority.Endpoint) {
		return placeholderError("key.authority.endpoint", k.Authority.Endpoint, "put the MAA endpoint whose tokens may release the key, e.g. sharedeus.eus.attest.azure.net")
	}
	maa, err := normalizeEndpoint("key.authority.endpoint", k.Authority.Endpoint)
	if err != nil {
		return err
	}
	p.Policy, err = buildReleasePolicy("https://"+maa, cfg.Claims, k.Claims, &p.Warnings)
	return err
}

const saltHint = "put a hex salt (e.g. from openssl rand -hex 32), or remove salt for a random one"

// planDerivation reads the salt and label of the key -out derives from an
// RSA-HSM key. Microsoft's example config carries a key_derivation block
// whatever the key type; where it does not apply it is ignored, with a
// warning, and not checked.
func planDerivation(p *importPlan, d *keyDerivationSpec, out bool) error {
	p.Label = defaultDerivationLabel
	if d == nil || (d.Salt == "" && d.Label == "") {
		return nil
	}
	switch {
	case p.KTY != ktyRSA:
		p.Warnings = append(p.Warnings, fmt.Sprintf("key_derivation is ignored: it applies only to RSA-HSM keys imported with -out, and key.kty is %s", p.KTY))
		return nil
	case !out:
		p.Warnings = append(p.Warnings, "key_derivation is ignored: it applies only with -out, which writes the key derived from the RSA-HSM key")
		return nil
	}
	if salt := strings.TrimSpace(d.Salt); salt != "" {
		if isPlaceholder(salt) {
			return placeholderError("key_derivation.salt", salt, saltHint)
		}
		var err error
		if p.Salt, err = hex.DecodeString(salt); err != nil || len(p.Salt) == 0 {
			return fmt.Errorf("key_derivation.salt is not hex: %q: %s", d.Salt, saltHint)
		}
	}
	if isPlaceholder(d.Label) {
		return placeholderError("key_derivation.label", d.Label, fmt.Sprintf("put a label of your own, or remove label for the default %q", defaultDerivationLabel))
	}
	if d.Label != "" {
		p.Label = d.Label
	}
	return nil
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
			c, ok := jwkCurve(k.Crv)
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

// checkFlagsAgainstPlan refuses flag combinations that do not fit the kty,
// and a credential the run would use that is still the example's
// placeholder.
func checkFlagsAgainstPlan(fl *importFlags, p *importPlan) error {
	switch {
	case fl.KeyHex != "" && fl.KeyPEM != "":
		return errors.New("give -kh (oct-HSM) or -kp (RSA-HSM, EC-HSM), not both")
	case fl.KeyHex != "" && p.KTY != ktyOct:
		return fmt.Errorf("-kh gives an oct-HSM key but key.kty is %s: use -kp PEM", p.KTY)
	case fl.KeyPEM != "" && p.KTY == ktyOct:
		return errors.New("-kp gives an RSA or EC key but key.kty is oct-HSM: use -kh HEX")
	case fl.Out && p.KTY == ktyEC:
		return errors.New("-out writes an oct-HSM key or a key derived from an RSA-HSM key; EC-HSM has neither")
	case !fl.Azure && isPlaceholder(p.BearerToken):
		return placeholderError("key.akv.bearer_token", p.BearerToken, fmt.Sprintf("put the accessToken of az account get-access-token --resource %s --query accessToken -o tsv, or use -a inside Azure", vaultResource(p.Vault)))
	case fl.Azure && isPlaceholder(p.ClientID):
		return placeholderError("identity.client_id", p.ClientID, "put the client id of the managed identity, or remove identity for the system-assigned one")
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

// checkKeyTypeFitsVault refuses an oct-HSM key for a Key Vault: only a
// Managed HSM holds oct-HSM keys, and Microsoft's example defaults to one.
func checkKeyTypeFitsVault(p *importPlan, ktyDefaulted bool) error {
	if p.KTY != ktyOct || !isKeyVaultHost(p.Vault) {
		return nil
	}
	why := "key.kty is oct-HSM"
	if ktyDefaulted {
		why = "key.kty is not set, so oct-HSM"
	}
	return fmt.Errorf("%s, which only a Managed HSM holds, but key.akv.endpoint %s is a Key Vault: set key.kty to \"RSA-HSM\" (-out then writes a symmetric key derived from it) or import into a Managed HSM (NAME.managedhsm.azure.net)", why, p.Vault)
}

// isKeyVaultHost is true for a Key Vault (not Managed HSM) host name.
func isKeyVaultHost(host string) bool {
	h := hostName(host)
	for _, v := range vaultResources {
		if strings.HasPrefix(v.suffix, ".vault.") && strings.HasSuffix(h, v.suffix) {
			return true
		}
	}
	return false
}

// isPlaceholder is true for a value left as the example's "<...>".
func isPlaceholder(s string) bool {
	s = strings.TrimSpace(s)
	return len(s) >= 2 && s[0] == '<' && s[len(s)-1] == '>'
}

// placeholderError says which field still holds the example's placeholder
// and what to put there.
func placeholderError(field, value, hint string) error {
	return fmt.Errorf("%s still holds the example's placeholder %q: %s", field, strings.TrimSpace(value), hint)
}
