package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// The demo keys both emulated vaults start with. All but demo-denied have
// a release policy the emulated evidence meets; demo-denied asks for
// another host data.
const (
	demoOct    = "demo-oct"
	demoRSA    = "demo-rsa"
	demoEC     = "demo-ec"
	demoDenied = "demo-denied"
)

var demoKeyNames = []string{demoOct, demoRSA, demoEC, demoDenied}

// Bounds of an emulated vault: it keeps keys in memory for the process's
// life, so what callers may put there is limited.
const (
	maxEmulatedKeyVersions = 1024
	maxIssuerDocument      = 64 << 10
	issuerKeysTTL          = 10 * time.Minute
	maxCachedIssuers       = 8
	// emulatedTokenSkew is the clock skew allowed on an MAA token's exp and nbf.
	emulatedTokenSkew = time.Minute
)

// emulatedVault is an emulated Key Vault (Premium) or Managed HSM: release
// with Key Vault's checks, import with its validation and versions, and
// reading a key's public part and release policy. Keys live in memory only.
type emulatedVault struct {
	azure    *emulatedAzure
	host     string
	hsm      bool   // Managed HSM: oct keys allowed, every key HSM-backed
	resource string // the bearer token audience
	mux      *http.ServeMux

	seedOnce sync.Once
	mu       sync.Mutex
	keys     map[string]*vaultKey // by lower-case name
	versions int

	issuersMu sync.Mutex
	issuers   map[string]issuerKeys // MAA signing keys by issuer
}

// vaultKey is a key name and its versions, oldest first.
type vaultKey struct {
	name     string
	versions []*vaultKeyVersion
}

// vaultKeyVersion is one imported version; it never changes once stored.
type vaultKeyVersion struct {
	version    string
	kty        string   // as imported, e.g. RSA-HSM
	keyOps     []string // nil = all
	material   any      // []byte, *rsa.PrivateKey, *ecdsa.PrivateKey
	policy     []byte   // release policy JSON as imported; nil = none
	parsed     *releasePolicy
	immutable  bool
	exportable bool
	enabled    bool
	created    time.Time
}

// issuerKeys are an issuer's signing keys as its JWKS listed them.
type issuerKeys struct {
	keys    map[string]*rsa.PublicKey
	fetched time.Time
}

func newEmulatedVault(a *emulatedAzure, host string, hsm bool) *emulatedVault {
	v := &emulatedVault{azure: a, host: host, hsm: hsm, resource: vaultResource(host), mux: http.NewServeMux(),
		keys: map[string]*vaultKey{}, issuers: map[string]issuerKeys{}}
	v.mux.HandleFunc("POST /keys/{name}/release", v.handleRelease)
	v.mux.HandleFunc("POST /keys/{name}/{version}/release", v.handleRelease)
	v.mux.HandleFunc("PUT /keys/{name}", v.handleImport)
	v.mux.HandleFunc("GET /keys/{name}", v.handleGet)
	v.mux.HandleFunc("GET /keys/{name}/{version}", v.handleGet)
	v.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeAzureError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("the emulated %s has no %s %s: it serves PUT and GET /keys/{name}, GET /keys/{name}/{version}, POST /keys/{name}[/{version}]/release", v.kind(), r.Method, r.URL.Path))
	})
	return v
}

func (v *emulatedVault) kind() string {
	if v.hsm {
		return "Managed HSM"
	}
	return "Key Vault"
}

// ServeHTTP checks what every Key Vault request needs, bearer token first,
// then routes. Until the run's keys are made the vault is unavailable.
func (v *emulatedVault) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(upstreamRequestIDHeader, newRequestID()) // as Key Vault names each answer
	if err := v.azure.keys.wait(r.Context()); err != nil {
		writeAzureError(w, http.StatusServiceUnavailable, "ServiceUnavailable", err.Error())
		return
	}
	if !v.authorize(w, r) {
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "The 'api-version' query parameter is required, e.g. ?api-version=7.4")
		return
	}
	v.seedOnce.Do(v.seedDemoKeys)
	v.mux.ServeHTTP(w, r)
}

// authorize wants a bearer token, as Key Vault does. A token of the
// emulated identity must verify and be for this vault's resource; any
// other token is a caller's own, which the emulation cannot check and
// accepts.
func (v *emulatedVault) authorize(w http.ResponseWriter, r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tok = strings.TrimSpace(tok)
	if !ok || tok == "" {
		v.challenge(w, "AKV10000: Request is missing a Bearer or PoP token.")
		return false
	}
	if err := v.azure.identity.check(tok, v.resource); err != nil && !errors.Is(err, errForeignToken) {
		v.challenge(w, "AKV10032: Invalid bearer token: "+err.Error())
		return false
	}
	return true
}

func (v *emulatedVault) challenge(w http.ResponseWriter, msg string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization=%q, resource=%q`, emulatedIdentityIssuer, v.resource))
	writeAzureError(w, http.StatusUnauthorized, "Unauthorized", msg)
}

// ---- keys ----

// seedDemoKeys stores the demo keys, with policies made for this run's
// emulated evidence.
func (v *emulatedVault) seedDemoKeys() {
	d := v.azure.keys.demo
	hostData := hex.EncodeToString(v.azure.hostData[:])
	for _, k := range []struct {
		name, kty string
		ops       []string
		material  any
		hostData  string
	}{
		{demoOct, "oct-HSM", []string{"encrypt", "decrypt", "wrapKey", "unwrapKey"}, d.oct, hostData},
		{demoRSA, "RSA-HSM", []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}, d.rsa, hostData},
		{demoEC, "EC-HSM", []string{"sign", "verify"}, d.ec, hostData},
		{demoDenied, "oct-HSM", []string{"encrypt", "decrypt"}, d.oct, demoDeniedHostData(v.azure.hostData)},
	} {
		policy := demoReleasePolicy(k.hostData)
		raw, err := marshalJSON(policy)
		if err != nil {
			v.azure.log.Error("emulated vault: demo policy", "err", err)
			continue
		}
		if err := v.store(k.name, &vaultKeyVersion{kty: k.kty, keyOps: k.ops, material: k.material, policy: raw, parsed: &policy,
			exportable: true, enabled: true}); err != nil {
			v.azure.log.Error("emulated vault: demo key", "key", k.name, "err", err)
		}
	}
}

// demoReleasePolicy is the policy the sidecar's documentation recommends:
// the emulated MAA, the host data, a compliant UVM, no debugging, VMPL 0.
func demoReleasePolicy(hostData string) releasePolicy {
	eq := func(claim, value string) releaseClaim {
		return releaseClaim{Claim: claim, Equals: json.RawMessage(jsonString(value))}
	}
	return releasePolicy{Version: "1.0.0", AnyOf: []policyAuthority{{
		Authority: emulatedMAAIssuer,
		AllOf: []releaseClaim{
			eq(hostDataClaim, hostData),
			eq("x-ms-compliance-status", "azure-compliant-uvm"),
			eq("x-ms-sevsnpvm-is-debuggable", "false"),
			eq("x-ms-sevsnpvm-vmpl", "0"),
		},
	}}}
}

// demoDeniedHostData is a host data the emulated evidence never carries:
// the digest of a security policy this container group does not run.
func demoDeniedHostData(ours [32]byte) string {
	sum := sha256.Sum256([]byte("skr demo-denied: a security policy this container group does not run"))
	if sum == ours {
		sum[0] ^= 0xff
	}
	return hex.EncodeToString(sum[:])
}

// store adds a version under name and returns it, or an error when the
// vault is full.
func (v *emulatedVault) store(name string, kv *vaultKeyVersion) error {
	var ver [16]byte
	if _, err := rand.Read(ver[:]); err != nil {
		return err
	}
	kv.version = hex.EncodeToString(ver[:])
	kv.created = v.azure.now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.versions >= maxEmulatedKeyVersions {
		return fmt.Errorf("the emulated %s holds at most %d key versions; restart the sidecar to start afresh", v.kind(), maxEmulatedKeyVersions)
	}
	k := v.keys[strings.ToLower(name)]
	if k == nil {
		k = &vaultKey{name: name}
		v.keys[strings.ToLower(name)] = k
	}
	k.versions = append(k.versions, kv)
	v.versions++
	return nil
}

// lookup finds a key's version ("" = the latest), names and versions
// compared without regard to case, as Key Vault does.
func (v *emulatedVault) lookup(name, version string) (*vaultKey, *vaultKeyVersion) {
	v.mu.Lock()
	defer v.mu.Unlock()
	k := v.keys[strings.ToLower(name)]
	if k == nil || len(k.versions) == 0 {
		return nil, nil
	}
	if version == "" {
		return k, k.versions[len(k.versions)-1]
	}
	for _, kv := range k.versions {
		if strings.EqualFold(kv.version, version) {
			return k, kv
		}
	}
	return nil, nil
}

func (v *emulatedVault) keyNotFound(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("name")
	if ver := r.PathValue("version"); ver != "" {
		id += "/" + ver
	}
	writeAzureError(w, http.StatusNotFound, "KeyNotFound", fmt.Sprintf("A key with (name/id) %s was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command.", truncate(id, 200)))
}

func (v *emulatedVault) keyID(k *vaultKey, kv *vaultKeyVersion) string {
	return "https://" + v.host + "/keys/" + k.name + "/" + kv.version
}

// publicJWK is the key as Key Vault shows it: public members only.
func (v *emulatedVault) publicJWK(k *vaultKey, kv *vaultKeyVersion) jwk {
	j := jwk{Kid: v.keyID(k, kv), Kty: kv.kty, KeyOps: kv.keyOps}
	switch m := kv.material.(type) {
	case *rsa.PrivateKey:
		pub := rsaPublicJWK(&m.PublicKey)
		j.N, j.E = pub.N, pub.E
	case *ecdsa.PrivateKey:
		if priv, err := ecPrivateJWK(m); err == nil {
			j.Crv, j.X, j.Y = priv.Crv, priv.X, priv.Y
		}
	}
	return j
}

// bundle is Key Vault's KeyBundle for a version.
func (v *emulatedVault) bundle(k *vaultKey, kv *vaultKeyVersion) map[string]any {
	recovery, days := "Recoverable+Purgeable", 90
	if v.hsm {
		recovery, days = "CustomizedRecoverable+Purgeable", 7
	}
	b := map[string]any{
		"key": v.publicJWK(k, kv),
		"attributes": map[string]any{"enabled": kv.enabled, "exportable": kv.exportable, "created": kv.created.Unix(), "updated": kv.created.Unix(),
			"recoveryLevel": recovery, "recoverableDays": days},
	}
	if kv.policy != nil {
		b["release_policy"] = map[string]any{"contentType": "application/json; charset=utf-8", "data": b64url(kv.policy), "immutable": kv.immutable}
	}
	return b
}

func (v *emulatedVault) handleGet(w http.ResponseWriter, r *http.Request) {
	k, kv := v.lookup(r.PathValue("name"), r.PathValue("version"))
	if kv == nil {
		v.keyNotFound(w, r)
		return
	}
	writeJSON(w, http.StatusOK, v.bundle(k, kv))
}

// ---- import ----

// vaultImportRequest is KeyImportParameters.
type vaultImportRequest struct {
	Key        *importJWK `json:"key"`
	HSM        *bool      `json:"hsm"`
	Attributes struct {
		Enabled    *bool `json:"enabled"`
		Exportable *bool `json:"exportable"`
	} `json:"attributes"`
	ReleasePolicy *struct {
		ContentType string `json:"contentType"`
		Data        string `json:"data"`
		Immutable   bool   `json:"immutable"`
	} `json:"release_policy"`
}

func (v *emulatedVault) handleImport(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		writeAzureError(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", fmt.Sprintf("content type %q: send application/json", truncate(ct, 60)))
		return
	}
	name := r.PathValue("name")
	if !isKeyName(name) {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", fmt.Sprintf("key name %q is invalid: 1-127 letters, digits and dashes", truncate(name, 200)))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil || len(body) > maxRequestBody {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "the request body is unreadable or too large")
		return
	}
	kv, err := v.parseImport(body)
	clear(body) // it held the private key
	if err != nil {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", err.Error())
		return
	}
	if err := v.store(name, kv); err != nil {
		writeAzureError(w, http.StatusForbidden, "QuotaExceeded", err.Error())
		return
	}
	k, _ := v.lookup(name, kv.version)
	writeJSON(w, http.StatusOK, v.bundle(k, kv))
}

// parseImport validates an import as Key Vault does: a private key of a
// type and size the flavour holds, known key operations, and for an
// exportable key an HSM key with a valid release policy.
func (v *emulatedVault) parseImport(body []byte) (*vaultKeyVersion, error) {
	var req vaultImportRequest
	if err := decodeJSONObject(body, &req); err != nil {
		return nil, fmt.Errorf("the request is not KeyImportParameters JSON: %v", err)
	}
	if req.Key == nil {
		return nil, errors.New(`the request has no "key"`)
	}
	material, hsmKty, err := v.importMaterial(req.Key)
	if err != nil {
		return nil, err
	}
	for _, op := range req.Key.KeyOps {
		if !validKeyOps[op] {
			return nil, fmt.Errorf("key_ops: %q is not a key operation (encrypt, decrypt, sign, verify, wrapKey, unwrapKey, import, export)", truncate(op, 40))
		}
	}
	kv := &vaultKeyVersion{kty: req.Key.Kty, keyOps: req.Key.KeyOps, material: material,
		exportable: req.Attributes.Exportable != nil && *req.Attributes.Exportable,
		enabled:    req.Attributes.Enabled == nil || *req.Attributes.Enabled}
	hsmBacked := v.hsm || hsmKty || (req.HSM != nil && *req.HSM)
	if rp := req.ReleasePolicy; rp != nil {
		if ct := strings.ToLower(strings.TrimSpace(rp.ContentType)); ct != "" && !strings.HasPrefix(ct, "application/json") {
			return nil, fmt.Errorf("release_policy.contentType %q is not application/json; charset=utf-8", truncate(rp.ContentType, 60))
		}
		raw, err := decodeBase64(rp.Data)
		if err != nil || len(raw) == 0 {
			return nil, errors.New("release_policy.data is not base64url of the policy JSON")
		}
		if kv.parsed, err = parseReleasePolicy(raw); err != nil {
			return nil, fmt.Errorf("release_policy: %v", err)
		}
		kv.policy, kv.immutable = raw, rp.Immutable
	}
	switch {
	case kv.exportable && kv.policy == nil:
		return nil, errors.New("Exportable keys must have release policy")
	case !kv.exportable && kv.policy != nil:
		return nil, errors.New("a release policy is for exportable keys: set attributes.exportable to true")
	case kv.exportable && !hsmBacked:
		return nil, fmt.Errorf("exportable keys must be HSM-protected: use kty %s-HSM or hsm true", req.Key.Kty)
	}
	return kv, nil
}

// importMaterial reads the private key of an import: RSA 2048/3072/4096,
// EC P-256/384/521, and on Managed HSM AES keys of 128, 192 or 256 bits.
func (v *emulatedVault) importMaterial(k *importJWK) (material any, hsmKty bool, err error) {
	base, hsmKty := strings.CutSuffix(k.Kty, "-HSM")
	switch base {
	case "RSA", "EC":
	case "oct":
		if !v.hsm {
			return nil, false, fmt.Errorf("kty %s: oct keys are held by Managed HSM only; Key Vault Premium takes RSA and EC keys (use %s)", k.Kty, emulatedHSMHost)
		}
	default:
		return nil, false, fmt.Errorf("kty %q is not supported: RSA-HSM, EC-HSM or (Managed HSM) oct-HSM", truncate(k.Kty, 40))
	}
	j := k.jwk
	j.Kty = base
	priv, err := j.PrivateKey()
	if err != nil {
		return nil, false, fmt.Errorf("key: %v (an import needs the private key)", err)
	}
	bits := 0
	switch p := priv.(type) {
	case *rsa.PrivateKey:
		bits = p.N.BitLen()
		if !validRSABits[bits] {
			return nil, false, fmt.Errorf("RSA key of %d bits: the supported sizes are 2048, 3072 and 4096", bits)
		}
	case *ecdsa.PrivateKey:
		bits = p.Curve.Params().BitSize
	case []byte:
		bits = 8 * len(p)
		if !validOctSizes[len(p)] {
			return nil, false, fmt.Errorf("oct key of %d bits: Managed HSM imports AES keys of 128, 192 or 256 bits", bits)
		}
	}
	if k.KeySize != 0 && k.KeySize != bits {
		return nil, false, fmt.Errorf("key_size %d does not match the %d-bit key", k.KeySize, bits)
	}
	return priv, hsmKty, nil
}

// ---- release ----

// vaultReleaseRequest is KeyReleaseParameters.
type vaultReleaseRequest struct {
	Target string `json:"target"`
	Enc    string `json:"enc"`
	Nonce  string `json:"nonce"`
}

// releaseDefaultEnc is the algorithm used when a release asks for none.
const releaseDefaultEnc = encRSAAESKeyWrapSHA1

func (v *emulatedVault) handleRelease(w http.ResponseWriter, r *http.Request) {
	k, kv := v.lookup(r.PathValue("name"), r.PathValue("version"))
	if kv == nil {
		v.keyNotFound(w, r)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil || len(body) > maxRequestBody {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "the request body is unreadable or too large")
		return
	}
	var req vaultReleaseRequest
	if err := decodeJSONObject(body, &req); err != nil {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "the request is not KeyReleaseParameters JSON: "+err.Error())
		return
	}
	if strings.TrimSpace(req.Target) == "" {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", `"target" (the attestation token) is required`)
		return
	}
	enc := req.Enc
	if enc == "" {
		enc = releaseDefaultEnc
	}
	if _, err := oaepHash(enc); err != nil {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "enc: "+err.Error())
		return
	}
	switch {
	case !kv.enabled:
		writeAzureError(w, http.StatusForbidden, "Forbidden", "Operation release is not allowed on a disabled key.")
		return
	case !kv.exportable || kv.parsed == nil:
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "The key is not exportable or has no release policy.")
		return
	}
	claims, err := v.verifyTarget(r.Context(), req.Target, kv.parsed)
	if err != nil {
		var d *releaseDenied
		if errors.As(err, &d) {
			writeAzureError(w, http.StatusForbidden, "Forbidden", "The key release policy is not satisfied: "+d.reason)
			return
		}
		writeAzureError(w, http.StatusBadRequest, "BadParameter", "Target environment attestation statement cannot be verified: "+err.Error())
		return
	}
	if verdict := evaluateReleasePolicy(kv.parsed, claims); !verdict.Met {
		writeAzureError(w, http.StatusForbidden, "Forbidden", "The key release policy is not satisfied: "+verdict.String())
		return
	}
	wrapTo, wrapKid, err := runtimeWrappingKey(claims)
	if err != nil {
		writeAzureError(w, http.StatusBadRequest, "BadParameter", err.Error())
		return
	}
	value, err := v.releaseJWS(k, kv, enc, req.Nonce, r.URL.Query().Get("api-version"), wrapTo, wrapKid)
	if err != nil {
		writeAzureError(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"value": value})
}

// releaseDenied is a refusal by policy rather than a token that does not
// verify.
type releaseDenied struct{ reason string }

func (d *releaseDenied) Error() string { return d.reason }

// verifyTarget checks the attestation token as Key Vault does: its issuer
// must be an authority of the policy, its RS256 signature must verify with
// the issuer's key (found through the issuer's OpenID metadata, never the
// token's own jku), and it must be within exp and nbf.
func (v *emulatedVault) verifyTarget(ctx context.Context, target string, policy *releasePolicy) (map[string]any, error) {
	jws, err := parseJWS(strings.TrimSpace(target))
	if err != nil {
		return nil, err
	}
	claims, err := jws.claims()
	if err != nil {
		return nil, err
	}
	iss, _ := claims["iss"].(string)
	var authorities []string
	known := false
	for _, a := range policy.AnyOf {
		authorities = append(authorities, a.Authority)
		known = known || sameAuthority(a.Authority, iss)
	}
	if !known {
		return nil, &releaseDenied{fmt.Sprintf("the token's issuer %q is not an authority of the key's release policy (%s)", truncate(iss, 200), strings.Join(authorities, ", "))}
	}
	pub, err := v.issuerKey(ctx, iss, jws.Header.Kid)
	if err != nil {
		return nil, err
	}
	if err := jws.verify(pub, "RS256"); err != nil {
		return nil, fmt.Errorf("the token's signature does not verify with %s's key %q: %w", iss, jws.Header.Kid, err)
	}
	if err := checkJWTTimesRequiringExp(claims, v.azure.now(), emulatedTokenSkew); err != nil {
		return nil, err
	}
	return claims, nil
}

// issuerKey is the signing key kid of iss, from the JWKS its OpenID
// metadata names, with the certificate in x5c checked against the roots
// for the issuer's host. Keys are cached a while, as Key Vault does.
func (v *emulatedVault) issuerKey(ctx context.Context, iss, kid string) (*rsa.PublicKey, error) {
	base := strings.TrimRight(iss, "/")
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("the token's issuer %q is not an https URL", truncate(iss, 200))
	}
	v.issuersMu.Lock()
	cached, ok := v.issuers[base]
	v.issuersMu.Unlock()
	if ok && v.azure.now().Sub(cached.fetched) < issuerKeysTTL && cached.keys[kid] != nil {
		return cached.keys[kid], nil
	}
	keys, err := v.fetchIssuerKeys(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("the signing keys of %s: %w", base, err)
	}
	v.issuersMu.Lock()
	if len(v.issuers) >= maxCachedIssuers {
		clear(v.issuers)
	}
	v.issuers[base] = issuerKeys{keys: keys, fetched: v.azure.now()}
	v.issuersMu.Unlock()
	if keys[kid] == nil {
		return nil, fmt.Errorf("%s lists no signing key %q", base, truncate(kid, 100))
	}
	return keys[kid], nil
}

func (v *emulatedVault) fetchIssuerKeys(ctx context.Context, iss *url.URL) (map[string]*rsa.PublicKey, error) {
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := v.getJSON(ctx, iss.String()+"/.well-known/openid-configuration", &meta); err != nil {
		return nil, err
	}
	ju, err := url.Parse(meta.JWKSURI)
	if err != nil || ju.Scheme != "https" || !strings.EqualFold(ju.Host, iss.Host) {
		return nil, fmt.Errorf("jwks_uri %q is not an https URL on the issuer's host", truncate(meta.JWKSURI, 200))
	}
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := v.getJSON(ctx, ju.String(), &set); err != nil {
		return nil, err
	}
	roots := v.azure.rootsFor(iss.Host)
	keys := map[string]*rsa.PublicKey{}
	for _, k := range set.Keys {
		if k.Kid == "" || len(k.X5C) == 0 {
			continue
		}
		chain, err := parseX5C(k.X5C)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", truncate(k.Kid, 100), err)
		}
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: v.azure.now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return nil, fmt.Errorf("key %q: its certificate does not chain to a trusted root: %w", truncate(k.Kid, 100), err)
		}
		pub, ok := chain[0].PublicKey.(*rsa.PublicKey)
		if !ok {
			continue
		}
		if k.N != "" && k.N != rsaPublicJWK(pub).N {
			return nil, fmt.Errorf("key %q: n does not match its certificate", truncate(k.Kid, 100))
		}
		keys[k.Kid] = pub
	}
	return keys, nil
}

// getJSON fetches a bounded JSON document from an issuer.
func (v *emulatedVault) getJSON(ctx context.Context, target string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := v.azure.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxIssuerDocument+1))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || len(body) > maxIssuerDocument {
		return fmt.Errorf("GET %s: HTTP %d, %d bytes", target, resp.StatusCode, len(body))
	}
	if err := decodeJSONObject(body, out); err != nil {
		return fmt.Errorf("GET %s: %w", target, err)
	}
	return nil
}

// runtimeWrappingKey is the key Key Vault wraps to: the first RSA key of
// x-ms-runtime.keys with a kid that is for encryption.
func runtimeWrappingKey(claims map[string]any) (*rsa.PublicKey, string, error) {
	runtime, _ := claims["x-ms-runtime"].(map[string]any)
	keys, _ := runtime["keys"].([]any)
	for _, raw := range keys {
		b, err := json.Marshal(raw)
		if err != nil {
			continue
		}
		k, err := parseJWK(b)
		if err != nil || k.Kty != "RSA" || k.Kid == "" || (k.Use != "enc" && !slices.Contains(k.KeyOps, "encrypt")) {
			continue
		}
		pub, err := k.PublicKey()
		if err != nil {
			return nil, "", fmt.Errorf("x-ms-runtime key %q: %v", truncate(k.Kid, 100), err)
		}
		rp := pub.(*rsa.PublicKey)
		if rp.N.BitLen() < minRSABits {
			return nil, "", fmt.Errorf("x-ms-runtime key %q has %d bits, fewer than %d", truncate(k.Kid, 100), rp.N.BitLen(), minRSABits)
		}
		return rp, k.Kid, nil
	}
	return nil, "", errors.New(`the token's x-ms-runtime has no RSA key with a kid and "use": "enc" or "key_ops": ["encrypt"] to wrap the key to`)
}

// releaseJWS wraps the key to the runtime key with enc and signs the
// release payload with the vault's key, x5c chaining to the run's CA.
func (v *emulatedVault) releaseJWS(k *vaultKey, kv *vaultKeyVersion, enc, nonce, apiVersion string, wrapTo *rsa.PublicKey, wrapKid string) (string, error) {
	plain, err := releasePlaintext(kv.material)
	if err != nil {
		return "", err
	}
	defer clear(plain)
	ct, err := wrapForRelease(wrapTo, enc, plain)
	if err != nil {
		return "", err
	}
	keyHSM, err := json.Marshal(map[string]any{
		"schema_version": "1.0",
		"header":         map[string]string{"alg": "dir", "enc": enc, "kid": wrapKid},
		"ciphertext":     b64url(ct),
	})
	if err != nil {
		return "", err
	}
	key := v.publicJWK(k, kv)
	request := map[string]any{"api-version": apiVersion, "enc": enc, "kid": key.Kid}
	if nonce != "" {
		request["nonce"] = nonce
	}
	bundle := v.bundle(k, kv)
	bundle["key"] = struct {
		jwk
		KeyHSM string `json:"key_hsm"`
	}{key, b64url(keyHSM)}
	payload, err := json.Marshal(map[string]any{"request": request, "response": map[string]any{"key": bundle}})
	if err != nil {
		return "", err
	}
	keys := v.azure.keys
	leaf := keys.vaultCerts[v.host]
	sum := sha256.Sum256(leaf.Raw)
	x5c := []string{base64.StdEncoding.EncodeToString(leaf.Raw), base64.StdEncoding.EncodeToString(keys.caCert.Raw)}
	return signJWS(map[string]any{"kid": b64url(sum[:]), "x5c": x5c, "x5t#S256": b64url(sum[:])}, payload, keys.vaultSigner, "RS256")
}

// releasePlaintext is what a release wraps: an oct key's bytes, PKCS#8 for
// RSA and EC keys.
func releasePlaintext(material any) ([]byte, error) {
	if b, ok := material.([]byte); ok {
		return bytes.Clone(b), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(material)
	if err != nil {
		return nil, fmt.Errorf("encode the key as PKCS#8: %w", err)
	}
	return der, nil
}

// wrapForRelease is CKM_RSA_AES_KEY_WRAP: a fresh AES-256 key wrapped with
// RSA-OAEP (the hash enc names), then the plaintext wrapped with it by
// RFC 5649 key wrap.
func wrapForRelease(pub *rsa.PublicKey, enc string, plain []byte) ([]byte, error) {
	newHash, err := oaepHash(enc)
	if err != nil {
		return nil, err
	}
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		return nil, err
	}
	defer clear(kek)
	head, err := rsa.EncryptOAEP(newHash(), rand.Reader, pub, kek, nil)
	if err != nil {
		return nil, fmt.Errorf("RSA-OAEP wrap of the transfer key: %w", err)
	}
	tail, err := aesKeyWrapPad(kek, plain)
	if err != nil {
		return nil, err
	}
	return append(head, tail...), nil
}
