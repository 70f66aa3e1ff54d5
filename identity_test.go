package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fastRetryPolicy keeps the production retry decisions but not their delays.
func fastRetryPolicy(p retryPolicy) retryPolicy {
	p.BaseDelay, p.MaxDelay = time.Millisecond, 5*time.Millisecond
	return p
}

func randomTestSecret(prefix string) string {
	b := make([]byte, 16)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// scriptedFailures holds the error statuses a stand-in answers before it succeeds.
type scriptedFailures struct {
	mu       sync.Mutex
	failures []int
}

func (s *scriptedFailures) failWith(statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failures = append(s.failures, statuses...)
}

func (s *scriptedFailures) next() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failures) == 0 {
		return 0
	}
	st := s.failures[0]
	s.failures = s.failures[1:]
	return st
}

// imdsStandIn behaves like the Azure Instance Metadata Service token
// endpoint: plain http, Metadata: true required, api-version, resource and
// client_id checked, every number a JSON string.
type imdsStandIn struct {
	*httptest.Server
	scriptedFailures
	clientID string        // the identity attached; "" = system-assigned only
	token    string        // the token to issue; "" = a fresh random one each time
	gate     chan struct{} // answers once it is closed; nil = at once
	now      func() time.Time
	calls    atomic.Int32

	mu        sync.Mutex
	issued    []string
	resources []string // as asked for
}

func (s *imdsStandIn) lastResource() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.resources) == 0 {
		return ""
	}
	return s.resources[len(s.resources)-1]
}

var standInResources = map[string]bool{
	"https://vault.azure.net": true, "https://managedhsm.azure.net": true,
	"https://vault.azure.cn": true, "https://vault.usgovcloudapi.net": true,
}

func newIMDSStandIn(t testing.TB, clientID string) *imdsStandIn {
	s := &imdsStandIn{clientID: clientID, now: time.Now}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func imdsError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

func (s *imdsStandIn) serve(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-r.Context().Done():
			return
		}
	}
	if r.Method != http.MethodGet || r.URL.Path != "/metadata/identity/oauth2/token" {
		imdsError(w, http.StatusNotFound, "not_found", "no such endpoint")
		return
	}
	if r.Header.Get("Metadata") != "true" {
		imdsError(w, http.StatusBadRequest, "bad_request_102", "Required metadata header not specified")
		return
	}
	if r.Header.Get("X-Forwarded-For") != "" {
		imdsError(w, http.StatusForbidden, "forbidden", "requests through a proxy are refused")
		return
	}
	q := r.URL.Query()
	if q.Get("api-version") != imdsAPIVersion {
		imdsError(w, http.StatusBadRequest, "invalid_request", "Invalid or missing api-version")
		return
	}
	resource := q.Get("resource")
	s.mu.Lock()
	s.resources = append(s.resources, resource)
	s.mu.Unlock()
	if !standInResources[resource] {
		imdsError(w, http.StatusBadRequest, "invalid_resource", "AADSTS500011: The resource principal named "+resource+" was not found")
		return
	}
	if q.Get("client_id") != s.clientID {
		imdsError(w, http.StatusBadRequest, "invalid_request", "Identity not found")
		return
	}
	if st := s.next(); st != 0 {
		if st == http.StatusTooManyRequests {
			w.Header().Set("Retry-After", "1")
		}
		imdsError(w, st, "unknown", fmt.Sprintf("scriptedFailures failure %d", st))
		return
	}
	tok := s.token
	if tok == "" {
		tok = randomTestSecret("imds.")
	}
	s.mu.Lock()
	s.issued = append(s.issued, tok)
	s.mu.Unlock()
	now := s.now()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(map[string]string{
		"access_token":   tok,
		"refresh_token":  "",
		"expires_in":     "3599",
		"expires_on":     strconv.FormatInt(now.Add(3599*time.Second).Unix(), 10),
		"ext_expires_in": "3599",
		"not_before":     strconv.FormatInt(now.Add(-5*time.Minute).Unix(), 10),
		"resource":       resource + "/",
		"token_type":     "Bearer",
	})
}

func (s *imdsStandIn) askedResources() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.resources...)
}

func (s *imdsStandIn) tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// entraStandIn behaves like the Microsoft Entra v2 token endpoint for the
// client-credentials grant with a federated client assertion: TLS, form
// fields checked, the assertion must be the token file's current content,
// expires_in a JSON number.
type entraStandIn struct {
	*httptest.Server
	scriptedFailures
	tenant, clientID, tokenFile string
	calls                       atomic.Int32

	mu         sync.Mutex
	issued     []string
	assertions []string // as received
}

func newEntraStandIn(t *testing.T, tenant, clientID, tokenFile string) *entraStandIn {
	s := &entraStandIn{tenant: tenant, clientID: clientID, tokenFile: tokenFile}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func entraError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"error": code, "error_description": desc, "error_codes": []int{700016},
		"timestamp": time.Now().UTC().Format(time.DateTime), "trace_id": "00000000-0000-0000-0000-000000000001",
		"correlation_id": "00000000-0000-0000-0000-000000000002",
	})
}

func (s *entraStandIn) serve(w http.ResponseWriter, r *http.Request) {
	s.calls.Add(1)
	if r.Method != http.MethodPost || r.URL.Path != "/"+s.tenant+"/oauth2/v2.0/token" {
		entraError(w, http.StatusNotFound, "invalid_request", "AADSTS90002: Tenant not found or wrong path "+r.URL.Path)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS900144: wrong content type "+ct)
		return
	}
	if err := r.ParseForm(); err != nil {
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS900144: bad form")
		return
	}
	f := r.PostForm
	if r.URL.RawQuery != "" {
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS900144: credentials in the query")
		return
	}
	if f.Get("grant_type") != "client_credentials" {
		entraError(w, http.StatusBadRequest, "unsupported_grant_type", "AADSTS70003: grant_type")
		return
	}
	if f.Get("client_id") != s.clientID {
		entraError(w, http.StatusBadRequest, "unauthorized_client", "AADSTS700016: Application with identifier '"+f.Get("client_id")+"' was not found in the directory")
		return
	}
	if f.Get("client_assertion_type") != clientAssertionType {
		entraError(w, http.StatusBadRequest, "invalid_request", "AADSTS50027: client_assertion_type")
		return
	}
	current, err := os.ReadFile(s.tokenFile)
	if err != nil || f.Get("client_assertion") != strings.TrimSpace(string(current)) {
		entraError(w, http.StatusUnauthorized, "invalid_client", "AADSTS700024: Client assertion is not within its valid time range.")
		return
	}
	scope := f.Get("scope")
	if !strings.HasSuffix(scope, "/.default") || !standInResources[strings.TrimSuffix(scope, "/.default")] {
		entraError(w, http.StatusBadRequest, "invalid_scope", "AADSTS1002012: The provided value for scope "+scope+" is not valid.")
		return
	}
	if st := s.next(); st != 0 {
		entraError(w, st, "temporarily_unavailable", fmt.Sprintf("AADSTS90033: scriptedFailures failure %d", st))
		return
	}
	tok := randomTestSecret("entra.")
	s.mu.Lock()
	s.issued = append(s.issued, tok)
	s.assertions = append(s.assertions, f.Get("client_assertion"))
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	json.NewEncoder(w).Encode(map[string]any{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": tok})
}

func (s *entraStandIn) tokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

func tokenEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// imdsProvider is a provider that talks to the IMDS stand-in only.
func imdsProvider(t *testing.T, imds *imdsStandIn, clientID string, logs *syncBuffer, now func() time.Time) *tokenProvider {
	t.Helper()
	if logs == nil {
		logs = &syncBuffer{}
	}
	p := newTokenProvider(tokenConfig{
		IdentityClientID: clientID,
		Getenv:           tokenEnv(map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL + "/"}),
		Client:           imds.Client(),
		Log:              newLogger(logs, levelTrace),
		Now:              now,
	})
	p.imdsRetry = fastRetryPolicy(p.imdsRetry)
	p.entraRetry = fastRetryPolicy(p.entraRetry)
	return p
}

// workload sets up a token file, an Entra stand-in and a provider using
// workload identity (and, if imds is given, IMDS as well, which must then
// go unused).
type tokenWorkload struct {
	file  string
	entra *entraStandIn
	p     *tokenProvider
	logs  *syncBuffer
}

func newWorkload(t *testing.T, imds *imdsStandIn, now func() time.Time) *tokenWorkload {
	t.Helper()
	w := &tokenWorkload{file: filepath.Join(t.TempDir(), "azure-identity-token"), logs: &syncBuffer{}}
	w.rotate(t)
	tenant, clientID := "72f988bf-86f1-41af-91ab-2d7cd011db47", "11111111-2222-3333-4444-555555555555"
	w.entra = newEntraStandIn(t, tenant, clientID, w.file)
	env := map[string]string{
		"AZURE_CLIENT_ID":            clientID,
		"AZURE_TENANT_ID":            tenant,
		"AZURE_FEDERATED_TOKEN_FILE": w.file,
		"AZURE_AUTHORITY_HOST":       w.entra.URL + "/",
	}
	if imds != nil {
		env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = imds.URL
	}
	w.p = newTokenProvider(tokenConfig{
		IdentityClientID: "imds-client-id-unused",
		Getenv:           tokenEnv(env),
		Client:           w.entra.Client(),
		Log:              newLogger(w.logs, levelTrace),
		Now:              now,
	})
	w.p.imdsRetry = fastRetryPolicy(w.p.imdsRetry)
	w.p.entraRetry = fastRetryPolicy(w.p.entraRetry)
	return w
}

// rotate writes a new projected token, as kubelet does, and returns it.
func (w *tokenWorkload) rotate(t *testing.T) string {
	t.Helper()
	a := randomTestSecret("eyJhbGciOiJSUzI1NiJ9.assertion.")
	if err := os.WriteFile(w.file, []byte(a+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestVaultResource(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ host, want string }{
		{"myvault.vault.azure.net", "https://vault.azure.net"},
		{"MyVault.Vault.Azure.Net", "https://vault.azure.net"},
		{"myvault.vault.azure.net:443", "https://vault.azure.net"},
		{"myvault.vault.azure.net.", "https://vault.azure.net"},
		{"myvault.vault.azure.cn", "https://vault.azure.cn"},
		{"myvault.vault.usgovcloudapi.net", "https://vault.usgovcloudapi.net"},
		{"myvault.vault.microsoftazure.de", "https://vault.microsoftazure.de"},
		{"myhsm.managedhsm.azure.net", "https://managedhsm.azure.net"},
		{"myhsm.managedhsm.azure.net:8443", "https://managedhsm.azure.net"},
		{"myhsm.managedhsm.azure.cn", "https://managedhsm.azure.cn"},
		{"myhsm.managedhsm.usgovcloudapi.net", "https://managedhsm.usgovcloudapi.net"},
		// Not a vault suffix: the bare service names and look-alikes.
		{"vault.azure.net.evil.example", "https://vault.azure.net"},
		{"managedhsm.azure.net.evil.example", "https://managedhsm.azure.net"},
		// Unknown hosts: Microsoft's sidecar rule.
		{"127.0.0.1:8443", "https://vault.azure.net"},
		{"[::1]:8443", "https://vault.azure.net"},
		{"localhost", "https://vault.azure.net"},
		{"test-managedhsm.local:9000", "https://managedhsm.azure.net"},
	} {
		if got := vaultResource(tc.host); got != tc.want {
			t.Errorf("vaultResource(%q) = %q, want %q", tc.host, got, tc.want)
		}
	}
}

// The IMDS stand-in refuses what real IMDS refuses, or the tests below
// would prove nothing.
func TestIMDSStandInIsStrict(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "cid")
	get := func(query string, metadata bool) (int, string) {
		req, _ := http.NewRequest("GET", imds.URL+"/metadata/identity/oauth2/token?"+query, nil)
		if metadata {
			req.Header.Set("Metadata", "true")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e map[string]string
		json.NewDecoder(resp.Body).Decode(&e)
		return resp.StatusCode, e["error"]
	}
	good := "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&client_id=cid"
	if st, code := get(good, false); st != 400 || code != "bad_request_102" {
		t.Fatalf("no Metadata header: %d %s", st, code)
	}
	if st, _ := get(strings.Replace(good, "2018-02-01", "2017-09-01", 1), true); st != 400 {
		t.Fatalf("wrong api-version: %d", st)
	}
	if st, code := get(strings.Replace(good, "vault.azure.net", "vault.azure.com", 1), true); st != 400 || code != "invalid_resource" {
		t.Fatalf("wrong resource: %d %s", st, code)
	}
	if st, _ := get(strings.Replace(good, "cid", "other", 1), true); st != 400 {
		t.Fatalf("wrong client id: %d", st)
	}
	if st, _ := get(good, true); st != 200 {
		t.Fatalf("good request: %d", st)
	}
}

func TestTokenIMDSCachesPerResource(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "c0ffee00-0000-0000-0000-000000000001")
	p := imdsProvider(t, imds, "c0ffee00-0000-0000-0000-000000000001", nil, nil)
	ctx := context.Background()

	tok, src, err := p.Token(ctx, "myvault.vault.azure.net")
	if err != nil {
		t.Fatal(err)
	}
	if src != "managed identity via IMDS (client id c0ffee00-0000-0000-0000-000000000001)" {
		t.Fatalf("source = %q", src)
	}
	if tok != imds.tokens()[0] {
		t.Fatalf("token = %q, want the one IMDS issued", tok)
	}
	again, _, err := p.Token(ctx, "othervault.vault.azure.net:443")
	if err != nil || again != tok {
		t.Fatalf("second call: %q, %v", again, err)
	}
	if n := imds.calls.Load(); n != 1 {
		t.Fatalf("IMDS calls = %d, want 1 (second call from the cache)", n)
	}
	// Another audience is another token.
	hsm, _, err := p.Token(ctx, "myhsm.managedhsm.azure.net")
	if err != nil || hsm == tok {
		t.Fatalf("Managed HSM token %q, %v", hsm, err)
	}
	if n := imds.calls.Load(); n != 2 {
		t.Fatalf("IMDS calls = %d, want 2", n)
	}
}

func TestTokenIMDSSystemAssigned(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "") // refuses any client_id
	p := imdsProvider(t, imds, "", nil, nil)
	_, src, err := p.Token(context.Background(), "v.vault.azure.net")
	if err != nil {
		t.Fatal(err)
	}
	if src != "managed identity via IMDS (system-assigned)" {
		t.Fatalf("source = %q", src)
	}
}

func TestTokenIMDSAudiencePerVaultHost(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "cid")
	p := imdsProvider(t, imds, "cid", nil, nil)
	for _, tc := range []struct{ host, resource string }{
		{"a.vault.azure.net", "https://vault.azure.net"},
		{"b.managedhsm.azure.net", "https://managedhsm.azure.net"},
		{"c.vault.azure.cn", "https://vault.azure.cn"},
		{"d.vault.usgovcloudapi.net", "https://vault.usgovcloudapi.net"},
	} {
		if _, _, err := p.Token(context.Background(), tc.host); err != nil {
			t.Fatalf("%s: %v", tc.host, err)
		}
		if got := imds.lastResource(); got != tc.resource {
			t.Fatalf("%s: IMDS was asked for %q, want %q", tc.host, got, tc.resource)
		}
	}
}

func TestTokenRefreshedNearExpiry(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now()}
	imds := newIMDSStandIn(t, "cid")
	imds.now = clock.Now
	p := imdsProvider(t, imds, "cid", nil, clock.Now)
	ctx := context.Background()
	first, _, err := p.Token(ctx, "v.vault.azure.net")
	if err != nil {
		t.Fatal(err)
	}
	// 3599 s lifetime: still served from the cache 5 min + 1 s before expiry.
	clock.Advance(3599*time.Second - tokenRefreshMargin - time.Second)
	if tok, _, _ := p.Token(ctx, "v.vault.azure.net"); tok != first || imds.calls.Load() != 1 {
		t.Fatalf("refreshed too early (calls %d)", imds.calls.Load())
	}
	clock.Advance(2 * time.Second)
	second, _, err := p.Token(ctx, "v.vault.azure.net")
	if err != nil {
		t.Fatal(err)
	}
	if second == first || imds.calls.Load() != 2 {
		t.Fatalf("not refreshed within the margin (calls %d)", imds.calls.Load())
	}
}

func TestTokenIMDSRetries(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		failures  []int
		wantCalls int32
		wantErr   string // "" = success
		status    int    // statusFor of the error
	}{
		{"500 then 200", []int{500}, 2, "", 0},
		{"503 twice then 200", []int{503, 503}, 3, "", 0},
		{"429 then 200", []int{429}, 2, "", 0},
		{"410 while IMDS updates", []int{410, 410, 410}, 4, "", 0},
		{"404 then 200", []int{404}, 2, "", 0},
		{"400 is final", []int{400}, 1, "IMDS answered HTTP 400 (unknown: scriptedFailures failure 400)", 502},
		{"403 is final", []int{403}, 1, "IMDS answered HTTP 403", 403},
		{"500 until out of tries", []int{500, 500, 500, 500, 500, 500, 500, 500, 500, 500}, 9, "IMDS answered HTTP 500", 502},
	} {
		t.Run(tc.name, func(t *testing.T) {
			imds := newIMDSStandIn(t, "cid")
			imds.failWith(tc.failures...)
			p := imdsProvider(t, imds, "cid", nil, nil)
			tok, src, err := p.Token(context.Background(), "v.vault.azure.net")
			if n := imds.calls.Load(); n != tc.wantCalls {
				t.Errorf("IMDS calls = %d, want %d", n, tc.wantCalls)
			}
			if tc.wantErr == "" {
				if err != nil || tok == "" {
					t.Fatalf("token %q, err %v", tok, err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, want := range []string{tc.wantErr, src, "https://vault.azure.net"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if got := statusFor(err); got != tc.status {
				t.Errorf("statusFor = %d, want %d", got, tc.status)
			}
			// A failure is not cached: the next call asks again.
			before := imds.calls.Load()
			p.Token(context.Background(), "v.vault.azure.net")
			if imds.calls.Load() == before {
				t.Error("failure was cached")
			}
		})
	}
}

func TestTokenIMDSErrorDescriptionInMessage(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "the-right-one")
	p := imdsProvider(t, imds, "not-attached", nil, nil)
	_, _, err := p.Token(context.Background(), "v.vault.azure.net")
	if err == nil || !strings.Contains(err.Error(), "invalid_request: Identity not found") || !strings.Contains(err.Error(), "client id not-attached") {
		t.Fatalf("err = %v", err)
	}
	if imds.calls.Load() != 1 {
		t.Fatalf("400 retried: %d calls", imds.calls.Load())
	}
}

func TestTokenUnusableAnswersAre502(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"not JSON":         "<html>gateway</html>",
		"no token":         `{"expires_in":"3599","token_type":"Bearer"}`,
		"bad expires_in":   `{"access_token":"t","expires_in":"soon","token_type":"Bearer"}`,
		"no expiry":        `{"access_token":"t","token_type":"Bearer"}`,
		"not bearer":       `{"access_token":"t","expires_in":"3599","token_type":"pop"}`,
		"negative expires": `{"access_token":"t","expires_in":-5}`,
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Write([]byte(body))
			}))
			defer srv.Close()
			p := newTokenProvider(tokenConfig{Getenv: tokenEnv(map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": srv.URL}), Client: srv.Client()})
			_, _, err := p.Token(context.Background(), "v.vault.azure.net")
			if err == nil || statusFor(err) != 502 {
				t.Fatalf("err = %v (status %d)", err, statusFor(err))
			}
		})
	}
}

func TestTokenIMDSExpiresOnOnly(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"access_token":"%s","expires_on":"%d","token_type":"Bearer"}`, randomTestSecret("t"), clock.Now().Unix()+3600)
	}))
	defer srv.Close()
	p := newTokenProvider(tokenConfig{Getenv: tokenEnv(map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": srv.URL}), Client: srv.Client(), Now: clock.Now})
	a, _, err := p.Token(context.Background(), "v.vault.azure.net")
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(50 * time.Minute)
	if b, _, _ := p.Token(context.Background(), "v.vault.azure.net"); b != a {
		t.Fatal("token with expires_on not cached")
	}
	clock.Advance(6 * time.Minute)
	if b, _, _ := p.Token(context.Background(), "v.vault.azure.net"); b == a {
		t.Fatal("token with expires_on not refreshed")
	}
}

// tokenFlightKey is the key under which p fetches a token for vaultHost.
func tokenFlightKey(t *testing.T, p *tokenProvider, vaultHost string) tokenKey {
	t.Helper()
	src, err := p.identity()
	if err != nil {
		t.Fatal(err)
	}
	return tokenKey{src.name, vaultResource(vaultHost)}
}

func TestTokenConcurrentCallersShareOneFetch(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "cid")
	imds.gate = make(chan struct{})
	p := imdsProvider(t, imds, "cid", nil, nil)
	const callers = 32
	var wg sync.WaitGroup
	toks := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Go(func() { toks[i], _, errs[i] = p.Token(context.Background(), "v.vault.azure.net") })
	}
	waitForTakers(t, &p.fetches, tokenFlightKey(t, p, "v.vault.azure.net"), callers)
	close(imds.gate)
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || toks[i] != toks[0] {
			t.Fatalf("caller %d: %q, %v", i, toks[i], errs[i])
		}
	}
	if n := imds.calls.Load(); n != 1 {
		t.Fatalf("IMDS calls = %d, want 1", n)
	}
}

// A caller that gives up gets a timeout (504) while the shared fetch goes
// on for the others, and fills the cache.
func TestTokenCallerDeadlineDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "cid")
	imds.gate = make(chan struct{})
	p := imdsProvider(t, imds, "cid", nil, nil)
	key := tokenFlightKey(t, p, "v.vault.azure.net")
	// The impatient caller starts the fetch.
	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	impatient := make(chan error, 1)
	go func() {
		_, _, err := p.Token(short, "v.vault.azure.net")
		impatient <- err
	}()
	waitForTakers(t, &p.fetches, key, 1)
	var wg sync.WaitGroup
	var patientTok string
	var patientErr error
	wg.Go(func() { patientTok, _, patientErr = p.Token(context.Background(), "v.vault.azure.net") })
	err := <-impatient
	if !errors.Is(err, context.DeadlineExceeded) || statusFor(err) != http.StatusGatewayTimeout {
		t.Fatalf("impatient caller: %v (status %d)", err, statusFor(err))
	}
	close(imds.gate)
	wg.Wait()
	if patientErr != nil || patientTok == "" {
		t.Fatalf("patient caller: %q, %v", patientTok, patientErr)
	}
	if tok, _, err := p.Token(context.Background(), "v.vault.azure.net"); err != nil || tok != patientTok {
		t.Fatalf("the shared fetch did not fill the cache: %q, %v", tok, err)
	}
	if imds.calls.Load() != 1 {
		t.Fatalf("IMDS calls = %d, want 1", imds.calls.Load())
	}
}

func TestTokenWorkloadIdentity(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "imds-client-id-unused")
	w := newWorkload(t, imds, nil)
	ctx := context.Background()
	tok, src, err := w.p.Token(ctx, "myvault.vault.azure.net")
	if err != nil {
		t.Fatal(err)
	}
	if src != "workload identity (client id 11111111-2222-3333-4444-555555555555, tenant 72f988bf-86f1-41af-91ab-2d7cd011db47)" {
		t.Fatalf("source = %q", src)
	}
	if tok != w.entra.tokens()[0] {
		t.Fatal("not the token Entra issued")
	}
	if again, _, _ := w.p.Token(ctx, "myvault.vault.azure.net"); again != tok || w.entra.calls.Load() != 1 {
		t.Fatalf("not cached: %d calls", w.entra.calls.Load())
	}
	if imds.calls.Load() != 0 {
		t.Fatal("IMDS was asked although workload identity is configured")
	}
}

func TestTokenWorkloadIdentityRereadsRotatedFile(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Now()}
	w := newWorkload(t, nil, clock.Now)
	ctx := context.Background()
	if _, _, err := w.p.Token(ctx, "v.vault.azure.net"); err != nil {
		t.Fatal(err)
	}
	rotated := w.rotate(t)
	// Another audience: a new exchange, which must carry the new assertion
	// (the stand-in refuses any other).
	if _, _, err := w.p.Token(ctx, "h.managedhsm.azure.net"); err != nil {
		t.Fatal(err)
	}
	// The same audience once its token is about to expire.
	rotated2 := w.rotate(t)
	clock.Advance(time.Hour)
	if _, _, err := w.p.Token(ctx, "v.vault.azure.net"); err != nil {
		t.Fatal(err)
	}
	w.entra.mu.Lock()
	defer w.entra.mu.Unlock()
	if len(w.entra.assertions) != 3 || w.entra.assertions[1] != rotated || w.entra.assertions[2] != rotated2 {
		t.Fatalf("assertions sent: %q", w.entra.assertions)
	}
}

func TestTokenWorkloadIdentityErrors(t *testing.T) {
	t.Parallel()
	t.Run("5xx and 429 retried", func(t *testing.T) {
		w := newWorkload(t, nil, nil)
		w.entra.failWith(503, 429)
		if _, _, err := w.p.Token(context.Background(), "v.vault.azure.net"); err != nil {
			t.Fatal(err)
		}
		if n := w.entra.calls.Load(); n != 3 {
			t.Fatalf("Entra calls = %d, want 3", n)
		}
	})
	t.Run("stale assertion is final and 403", func(t *testing.T) {
		w := newWorkload(t, nil, nil)
		// The stand-in compares against the file; make it expect another.
		w.entra.tokenFile = filepath.Join(t.TempDir(), "other")
		os.WriteFile(w.entra.tokenFile, []byte("other assertion"), 0o600)
		_, src, err := w.p.Token(context.Background(), "v.vault.azure.net")
		if err == nil || !strings.Contains(err.Error(), "AADSTS700024") || !strings.Contains(err.Error(), src) {
			t.Fatalf("err = %v", err)
		}
		if statusFor(err) != 403 || w.entra.calls.Load() != 1 {
			t.Fatalf("status %d, calls %d", statusFor(err), w.entra.calls.Load())
		}
	})
	t.Run("400 is final with the description", func(t *testing.T) {
		w := newWorkload(t, nil, nil)
		w.entra.clientID = "someone-else"
		_, _, err := w.p.Token(context.Background(), "v.vault.azure.net")
		if err == nil || !strings.Contains(err.Error(), "unauthorized_client: AADSTS700016") {
			t.Fatalf("err = %v", err)
		}
		if statusFor(err) != 502 || w.entra.calls.Load() != 1 {
			t.Fatalf("status %d, calls %d", statusFor(err), w.entra.calls.Load())
		}
	})
	t.Run("token file missing", func(t *testing.T) {
		w := newWorkload(t, nil, nil)
		os.Remove(w.file)
		_, _, err := w.p.Token(context.Background(), "v.vault.azure.net")
		if err == nil || !strings.Contains(err.Error(), "AZURE_FEDERATED_TOKEN_FILE") || w.entra.calls.Load() != 0 {
			t.Fatalf("err = %v, calls %d", err, w.entra.calls.Load())
		}
	})
	t.Run("token file empty", func(t *testing.T) {
		w := newWorkload(t, nil, nil)
		os.WriteFile(w.file, []byte(" \n"), 0o600)
		if _, _, err := w.p.Token(context.Background(), "v.vault.azure.net"); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestTokenConfigurationRefused(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(file, []byte("assertion"), 0o600)
	wi := func(extra map[string]string) map[string]string {
		m := map[string]string{"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_FEDERATED_TOKEN_FILE": file}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for name, env := range map[string]map[string]string{
		"authority over http":      wi(map[string]string{"AZURE_AUTHORITY_HOST": "http://login.microsoftonline.com/"}),
		"authority with query":     wi(map[string]string{"AZURE_AUTHORITY_HOST": "https://login.example/?x=1"}),
		"tenant with a slash":      wi(map[string]string{"AZURE_TENANT_ID": "t/../evil"}),
		"tenant with a query":      wi(map[string]string{"AZURE_TENANT_ID": "t?x=1"}),
		"IMDS override no scheme":  {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "127.0.0.1:8081"},
		"IMDS override ftp":        {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "ftp://127.0.0.1"},
		"IMDS override with query": {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://127.0.0.1:8081/?a=b"},
	} {
		t.Run(name, func(t *testing.T) {
			var calls atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { calls.Add(1) }))
			defer srv.Close()
			p := newTokenProvider(tokenConfig{Getenv: tokenEnv(env), Client: srv.Client()})
			if _, _, err := p.Token(context.Background(), "v.vault.azure.net"); err == nil {
				t.Fatal("no error")
			}
			if calls.Load() != 0 {
				t.Fatal("a request was sent")
			}
		})
	}
}

// Partial workload identity settings fall through to IMDS, as in
// Microsoft's sidecar (pods often carry AZURE_CLIENT_ID alone).
func TestTokenPartialWorkloadIdentityUsesIMDS(t *testing.T) {
	t.Parallel()
	imds := newIMDSStandIn(t, "cid")
	p := newTokenProvider(tokenConfig{
		IdentityClientID: "cid",
		Getenv: tokenEnv(map[string]string{
			"AZURE_CLIENT_ID": "x", "AZURE_TENANT_ID": "t",
			"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL,
		}),
		Client: imds.Client(),
	})
	if _, src, err := p.Token(context.Background(), "v.vault.azure.net"); err != nil || !strings.HasPrefix(src, "managed identity via IMDS") {
		t.Fatalf("source %q, err %v", src, err)
	}
}

func TestVaultTokenForTools(t *testing.T) {
	imds := newIMDSStandIn(t, "tool-cid")
	t.Setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.URL)
	t.Setenv("AZURE_CLIENT_ID", "")
	t.Setenv("AZURE_TENANT_ID", "")
	t.Setenv("AZURE_FEDERATED_TOKEN_FILE", "")
	tok, src, err := vaultToken(context.Background(), imds.Client(), nil, "h.managedhsm.azure.net", "tool-cid")
	if err != nil || tok != imds.tokens()[0] || !strings.Contains(src, "tool-cid") {
		t.Fatalf("token %q source %q err %v", tok, src, err)
	}
}

// Tokens and assertions never reach the log, at any level, on success,
// retry or failure paths; the log does name the source and expiry.
func TestTokenNeverLogged(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	imds := newIMDSStandIn(t, "cid")
	imds.failWith(500, 429)
	p := imdsProvider(t, imds, "cid", logs, nil)
	if _, _, err := p.Token(context.Background(), "v.vault.azure.net"); err != nil {
		t.Fatal(err)
	}
	imds.failWith(400)
	p.Token(context.Background(), "h.managedhsm.azure.net")

	w := newWorkload(t, nil, nil)
	w.entra.failWith(503)
	first := w.rotate(t)
	if _, _, err := w.p.Token(context.Background(), "v.vault.azure.net"); err != nil {
		t.Fatal(err)
	}
	second := w.rotate(t)
	w.entra.tokenFile = filepath.Join(t.TempDir(), "mismatch") // make the exchange fail
	w.p.Token(context.Background(), "h.managedhsm.azure.net")

	all := logs.String() + w.logs.String()
	secrets := append(append(imds.tokens(), w.entra.tokens()...), first, second)
	if len(secrets) < 4 {
		t.Fatalf("too few tokens issued to test: %d", len(secrets))
	}
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Fatalf("log holds a secret %q:\n%s", s, all)
		}
		// Nor a recognisable part of one.
		if strings.Contains(all, s[len(s)-16:]) {
			t.Fatalf("log holds part of a secret:\n%s", all)
		}
	}
	for _, want := range []string{"bearer token obtained", "managed identity via IMDS (client id cid)", "workload identity (client id", "expires=", "retrying upstream call", "no bearer token"} {
		if !strings.Contains(all, want) {
			t.Errorf("log does not mention %q:\n%s", want, all)
		}
	}
}

func TestIdentityTokenOnlyForVaultHosts(t *testing.T) {
	t.Parallel()
	p := newTokenProvider(tokenConfig{ExtraVaultHosts: []string{"127.0.0.1:8443"}})
	for host, ok := range map[string]bool{
		"myvault.vault.azure.net":              true,
		"MyVault.Vault.Azure.Net.":             true,
		"myhsm.managedhsm.azure.net":           true,
		"myvault.vault.azure.cn":               true,
		"myvault.vault.usgovcloudapi.net":      true,
		"myhsm.managedhsm.usgovcloudapi.net":   true,
		"127.0.0.1:8443":                       true,
		"127.0.0.1:9443":                       false,
		"evil.example":                         false,
		"vault.azure.net":                      false,
		"myvault.vault.azure.net.evil.example": false,
		"myvaultvault.azure.net":               false,
		"managedhsm.evil.example":              false,
	} {
		err := p.mayReceiveToken(host)
		if (err == nil) != ok {
			t.Errorf("mayReceiveToken(%q) = %v, want ok=%v", host, err, ok)
		}
		if err != nil && statusFor(err) != http.StatusBadRequest {
			t.Errorf("mayReceiveToken(%q): status %d", host, statusFor(err))
		}
	}
}

// vaultToken is a token for vaultHost from a fresh provider, as a one-shot
// tool gets it: from the same sources as the server, in the same order
// (workload identity from the environment, else IMDS with clientID, or the
// system-assigned identity when clientID is empty).
func vaultToken(ctx context.Context, client *http.Client, log *slog.Logger, vaultHost, clientID string) (token, source string, err error) {
	return newTokenProvider(tokenConfig{IdentityClientID: clientID, Client: client, Log: log}).Token(ctx, vaultHost)
}
