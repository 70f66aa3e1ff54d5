package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type tokenConfig struct {
	IdentityClientID string              // identity.client_id of SkrSideCarArgs
	Getenv           func(string) string // AZURE_* and AZURE_POD_IDENTITY_AUTHORITY_HOST; nil = os.Getenv
	Client           *http.Client        // nil = newUpstreamClient(nil)
	Log              *slog.Logger        // nil = discard
	Now              func() time.Time    // nil = time.Now
	// ExtraVaultHosts may also receive the identity's token, besides the
	// Key Vault and Managed HSM names of vaultResources (tests' stand-ins).
	ExtraVaultHosts []string
	// Emulated is the identity of the emulated vaults (-emulate): it
	// answers for the hosts it claims, instead of the environment's.
	Emulated func(vaultHost string) (identitySource, bool)
}

const (
	// tokenRefreshMargin: a cached token is replaced this long before it
	// expires, so a token handed out is good for a whole release.
	tokenRefreshMargin = 5 * time.Minute
	// tokenFetchBudget bounds one fetch, retries included. It is longer
	// than a request's deadline because IMDS may answer 410 for up to 70 s
	// while it updates; each caller still waits only as long as its own
	// context allows, and a fetch that outlives its callers fills the cache.
	tokenFetchBudget = 100 * time.Second
	// maxTokenFileSize bounds the projected service account token we read.
	maxTokenFileSize = 64 << 10

	defaultAuthorityHost = "https://login.microsoftonline.com"
	defaultIMDSBase      = "http://169.254.169.254"
	imdsAPIVersion       = "2018-02-01"
	clientAssertionType  = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
)

// imdsRetry follows the IMDS guidance: retry 404, 410 (IMDS is updating and
// answers within 70 s), 429, 5xx and network errors with exponential
// backoff; other 4xx are final. Up to about a minute and a half of
// backoff, cut short by the caller's deadline.
var imdsRetry = retryPolicy{
	Attempts:  9,
	BaseDelay: time.Second,
	MaxDelay:  20 * time.Second,
	Retryable: func(status int) bool {
		return status == http.StatusNotFound || status == http.StatusGone || defaultRetryable(status)
	},
}

// entraRetry: 408, 429 and 5xx are retried, other 4xx (bad assertion,
// bad scope, unknown client) are final.
var entraRetry = retryPolicy{Attempts: 4, BaseDelay: 500 * time.Millisecond, MaxDelay: 10 * time.Second}

// tokenProvider hands out bearer tokens, one fetch at a time per identity
// and resource, from a cache.
type tokenProvider struct {
	cfg        tokenConfig
	imdsRetry  retryPolicy
	entraRetry retryPolicy

	fetches flight[tokenKey, string]

	mu    sync.Mutex
	cache map[tokenKey]cachedToken
}

type tokenKey struct{ source, resource string }

type cachedToken struct {
	token   string
	expires time.Time
}

func newTokenProvider(cfg tokenConfig) *tokenProvider {
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.Client == nil {
		cfg.Client = newUpstreamClient(nil)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &tokenProvider{
		cfg:        cfg,
		imdsRetry:  imdsRetry,
		entraRetry: entraRetry,
		// Up to tokenFetchBudget, a fetch outlives the callers that gave up
		// on it: one caller giving up must not fail the others.
		fetches: flight[tokenKey, string]{timeout: tokenFetchBudget},
		cache:   map[tokenKey]cachedToken{},
	}
}

// Token returns a bearer token for the vault host and the name of the
// identity source that produced it ("workload identity (client id X,
// tenant Y)", "managed identity via IMDS (client id X)" or "managed
// identity via IMDS (system-assigned)"), for error messages.
func (p *tokenProvider) Token(ctx context.Context, vaultHost string) (token, source string, err error) {
	src, err := p.identityFor(vaultHost)
	if err != nil {
		return "", "", err
	}
	resource := vaultResource(vaultHost)
	key := tokenKey{src.name, resource}
	cached := func() (string, bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		t, ok := p.cache[key]
		return t.token, ok && p.cfg.Now().Before(t.expires.Add(-tokenRefreshMargin))
	}
	fetch := func(ctx context.Context) (string, error) { return p.fetch(ctx, key, src) }
	token, err = p.fetches.do(ctx, key, cached, fetch)
	if err != nil && ctx.Err() != nil {
		return "", src.name, fmt.Errorf("get a token for %s from %s: %w", resource, src.name, err)
	}
	return token, src.name, err
}

// Forget drops the cached token for vaultHost after the vault refused it
// (revoked, or its role assignment changed), so the next call fetches anew
// instead of failing until the token expires hours later.
func (p *tokenProvider) Forget(vaultHost string) {
	src, err := p.identityFor(vaultHost)
	if err != nil {
		return
	}
	p.mu.Lock()
	delete(p.cache, tokenKey{src.name, vaultResource(vaultHost)})
	p.mu.Unlock()
}

// fetch gets a token for key.resource from src and caches it.
func (p *tokenProvider) fetch(ctx context.Context, key tokenKey, src identitySource) (string, error) {
	tok, expires, err := src.fetch(ctx, key.resource)
	if err != nil {
		err = fmt.Errorf("get a token for %s from %s: %w", key.resource, src.name, err)
		p.cfg.Log.Warn("no bearer token", "source", src.name, "resource", key.resource, "err", err)
		return "", err
	}
	p.mu.Lock()
	p.cache[key] = cachedToken{token: tok, expires: expires}
	p.mu.Unlock()
	p.cfg.Log.Debug("bearer token obtained", "source", src.name, "resource", key.resource, "expires", expires.UTC().Format(time.RFC3339))
	return tok, nil
}

// identitySource is where tokens come from; fetch returns a token and
// when it expires.
type identitySource struct {
	name  string
	fetch func(ctx context.Context, resource string) (string, time.Time, error)
}

// identityFor is the emulated identity for the emulated vaults, else the
// environment's identity, whose token goes to Key Vault and Managed HSM
// hosts only.
func (p *tokenProvider) identityFor(vaultHost string) (identitySource, error) {
	if p.cfg.Emulated != nil {
		if src, ok := p.cfg.Emulated(vaultHost); ok {
			return src, nil
		}
	}
	if err := p.mayReceiveToken(vaultHost); err != nil {
		return identitySource{}, err
	}
	return p.identity()
}

// identity picks AKS workload identity when its three variables are set,
// else the IMDS managed identity, as Microsoft's sidecar does.
func (p *tokenProvider) identity() (identitySource, error) {
	env := func(k string) string { return strings.TrimSpace(p.cfg.Getenv(k)) }
	clientID, tenant, tokenFile := env("AZURE_CLIENT_ID"), env("AZURE_TENANT_ID"), env("AZURE_FEDERATED_TOKEN_FILE")
	if clientID != "" && tenant != "" && tokenFile != "" {
		return p.workloadIdentity(clientID, tenant, tokenFile, env("AZURE_AUTHORITY_HOST"))
	}
	return p.imdsIdentity(env("AZURE_POD_IDENTITY_AUTHORITY_HOST"))
}

// workloadIdentity exchanges the projected service account token for an
// Entra token (client-credentials grant with a federated assertion).
func (p *tokenProvider) workloadIdentity(clientID, tenant, tokenFile, authority string) (identitySource, error) {
	name := fmt.Sprintf("workload identity (client id %s, tenant %s)", clientID, tenant)
	if !isTenantID(tenant) {
		return identitySource{}, fmt.Errorf("%s: AZURE_TENANT_ID %q is not a tenant id or domain", name, tenant)
	}
	if authority == "" {
		authority = defaultAuthorityHost
	}
	u, err := url.Parse(strings.TrimRight(authority, "/"))
	if err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		// The request carries a credential: never send it in the clear.
		return identitySource{}, fmt.Errorf("%s: AZURE_AUTHORITY_HOST %q must be an https URL", name, authority)
	}
	tokenURL := u.String() + "/" + tenant + "/oauth2/v2.0/token"
	fetch := func(ctx context.Context, resource string) (string, time.Time, error) {
		assertion, err := readTokenFile(tokenFile)
		if err != nil {
			return "", time.Time{}, err
		}
		form := url.Values{
			"grant_type":            {"client_credentials"},
			"client_id":             {clientID},
			"client_assertion_type": {clientAssertionType},
			"client_assertion":      {assertion},
			"scope":                 {resource + "/.default"},
		}.Encode()
		body, _, err := doWithRetry(withSecrets(ctx, assertion), p.cfg.Client, "Microsoft Entra ID", p.entraRetry, p.cfg.Log, func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form))
			if err != nil {
				return nil, err
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Accept", "application/json")
			return req, nil
		})
		if err != nil {
			return "", time.Time{}, err
		}
		return p.parseTokenAnswer("Microsoft Entra ID", body)
	}
	return identitySource{name: name, fetch: fetch}, nil
}

// isTenantID accepts a GUID or a domain name: what may go into the path.
func isTenantID(s string) bool {
	if len(s) > 253 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return s != "" && s != "." && s != ".."
}

// readTokenFile reads the federated token anew on each exchange: kubelet
// rotates it.
func readTokenFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read the workload identity token file (AZURE_FEDERATED_TOKEN_FILE): %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxTokenFileSize+1))
	if err != nil {
		return "", fmt.Errorf("read the workload identity token file %s: %w", path, err)
	}
	if len(b) > maxTokenFileSize {
		return "", fmt.Errorf("workload identity token file %s is larger than %d bytes", path, maxTokenFileSize)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("workload identity token file %s is empty", path)
	}
	return s, nil
}

// imdsIdentity asks the instance metadata service, over plain http as IMDS
// is, for the managed identity's token.
func (p *tokenProvider) imdsIdentity(baseOverride string) (identitySource, error) {
	clientID := strings.TrimSpace(p.cfg.IdentityClientID)
	name := "managed identity via IMDS (system-assigned)"
	if clientID != "" {
		name = fmt.Sprintf("managed identity via IMDS (client id %s)", clientID)
	}
	base := defaultIMDSBase
	if baseOverride != "" {
		u, err := url.Parse(baseOverride)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return identitySource{}, fmt.Errorf("%s: AZURE_POD_IDENTITY_AUTHORITY_HOST %q must be a base URL such as http://127.0.0.1:8081", name, baseOverride)
		}
		base = strings.TrimRight(u.String(), "/")
	}
	fetch := func(ctx context.Context, resource string) (string, time.Time, error) {
		q := url.Values{"api-version": {imdsAPIVersion}, "resource": {resource}}
		if clientID != "" {
			q.Set("client_id", clientID)
		}
		tokenURL := base + "/metadata/identity/oauth2/token?" + q.Encode()
		body, _, err := doWithRetry(ctx, p.cfg.Client, "IMDS", p.imdsRetry, p.cfg.Log, func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, tokenURL, nil)
			if err != nil {
				return nil, err
			}
			req.Header.Set("Metadata", "true")
			return req, nil
		})
		if err != nil {
			return "", time.Time{}, err
		}
		return p.parseTokenAnswer("IMDS", body)
	}
	return identitySource{name: name, fetch: fetch}, nil
}

// tokenAnswer is the common part of Entra's and IMDS's answers. IMDS sends
// every number as a JSON string, Entra v2 sends expires_in as a number;
// both are accepted from either.
type tokenAnswer struct {
	AccessToken string          `json:"access_token"`
	TokenType   string          `json:"token_type"`
	ExpiresIn   json.RawMessage `json:"expires_in"`
	ExpiresOn   json.RawMessage `json:"expires_on"`
}

// parseTokenAnswer returns the token and its expiry: now + expires_in
// (relative, so immune to clock skew between us and the service), else
// expires_on. A garbled answer is the service's fault: 502.
func (p *tokenProvider) parseTokenAnswer(service string, body []byte) (string, time.Time, error) {
	var a tokenAnswer
	if err := decodeJSONObject(body, &a); err != nil {
		return "", time.Time{}, newError(kindUpstream, err, "%s token answer is not the expected JSON", service)
	}
	if a.AccessToken == "" {
		return "", time.Time{}, newError(kindUpstream, nil, "%s token answer has no access_token", service)
	}
	if a.TokenType != "" && !strings.EqualFold(a.TokenType, "Bearer") {
		return "", time.Time{}, newError(kindUpstream, nil, "%s token answer has token_type %q, want Bearer", service, truncate(a.TokenType, 40))
	}
	now := p.cfg.Now()
	if len(a.ExpiresIn) > 0 && string(a.ExpiresIn) != "null" {
		secs, err := flexibleInt(a.ExpiresIn)
		if err != nil || secs < 0 {
			return "", time.Time{}, newError(kindUpstream, err, "%s token answer has a bad expires_in %s", service, truncate(string(a.ExpiresIn), 40))
		}
		return a.AccessToken, now.Add(time.Duration(min(secs, 1<<31)) * time.Second), nil
	}
	if len(a.ExpiresOn) > 0 && string(a.ExpiresOn) != "null" {
		epoch, err := flexibleInt(a.ExpiresOn)
		if err != nil || epoch <= 0 {
			return "", time.Time{}, newError(kindUpstream, err, "%s token answer has a bad expires_on %s", service, truncate(string(a.ExpiresOn), 40))
		}
		return a.AccessToken, time.Unix(min(epoch, 1<<40), 0), nil
	}
	return "", time.Time{}, newError(kindUpstream, nil, "%s token answer says neither expires_in nor expires_on", service)
}

// flexibleInt reads a whole number given as a JSON number or a JSON string.
func flexibleInt(raw json.RawMessage) (int64, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		s = string(raw)
	}
	return strconv.ParseInt(strings.TrimSpace(s), 10, 64)
}

// vaultResources maps vault host suffixes, sovereign clouds included, to
// the token audience.
var vaultResources = []struct{ suffix, resource string }{
	{".vault.azure.net", "https://vault.azure.net"},
	{".vault.azure.cn", "https://vault.azure.cn"},
	{".vault.usgovcloudapi.net", "https://vault.usgovcloudapi.net"},
	{".vault.microsoftazure.de", "https://vault.microsoftazure.de"},
	{".managedhsm.azure.net", "https://managedhsm.azure.net"},
	{".managedhsm.azure.cn", "https://managedhsm.azure.cn"},
	{".managedhsm.usgovcloudapi.net", "https://managedhsm.usgovcloudapi.net"},
}

// mayReceiveToken refuses to hand the identity's token to a host that is
// not a Key Vault or Managed HSM: the token opens every vault the identity
// may use, so a mistyped or hostile akv_endpoint must not receive it.
func (p *tokenProvider) mayReceiveToken(vaultHost string) error {
	if p.isVaultHost(vaultHost) {
		return nil
	}
	host := hostName(vaultHost)
	suffixes := make([]string, len(vaultResources))
	for i, v := range vaultResources {
		suffixes[i] = "*" + v.suffix
	}
	return newError(kindInvalid, nil,
		"%s is not a Key Vault or Managed HSM host (%s): the identity's token is sent only to those; for another host pass your own access_token",
		host, strings.Join(suffixes, ", "))
}

// isVaultHost reports whether vaultHost is a Key Vault or Managed HSM host
// (or one of the hosts the configuration adds): the hosts that may receive
// the identity's token, and the releases that may share a credential.
func (p *tokenProvider) isVaultHost(vaultHost string) bool {
	host := hostName(vaultHost)
	for _, v := range vaultResources {
		if strings.HasSuffix(host, v.suffix) {
			return true
		}
	}
	for _, h := range p.cfg.ExtraVaultHosts {
		// Exact host and port: a stand-in shares its host with others.
		if strings.EqualFold(strings.TrimSpace(h), strings.TrimSpace(vaultHost)) {
			return true
		}
	}
	return false
}

// vaultResource is the token audience for a vault host: Managed HSM or Key
// Vault, with sovereign-cloud suffixes. Any other host (a private DNS name,
// a test stand-in on 127.0.0.1) follows Microsoft's sidecar: Managed HSM
// when the name contains "managedhsm", else public-cloud Key Vault.
func vaultResource(host string) string {
	host = hostName(host)
	for _, v := range vaultResources {
		if strings.HasSuffix(host, v.suffix) {
			return v.resource
		}
	}
	if strings.Contains(host, "managedhsm") || host == emulatedHSMHost {
		return "https://managedhsm.azure.net"
	}
	return "https://vault.azure.net"
}
