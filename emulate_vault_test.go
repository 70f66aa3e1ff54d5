package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// callerBearer is a caller's own token: the emulated vault cannot check it
// and takes it.
var callerBearer = http.Header{"Authorization": {"Bearer caller-own-token"}}

// testWrappingKey is the key the tests' releases are wrapped to.
func testWrappingKey(t testing.TB) *wrappingKey {
	t.Helper()
	wk, err := wrappingKeyFrom(standInRSAKey(t, rsaOther))
	if err != nil {
		t.Fatal(err)
	}
	return wk
}

func vaultURL(host, path string) string {
	return "https://" + host + path + "?api-version=" + keyVaultAPIVersion
}

func vaultRelease(t testing.TB, a *emulatedAzure, host, key string, header http.Header, req map[string]string) (int, http.Header, []byte) {
	t.Helper()
	body, _ := json.Marshal(req)
	return emulatedCall(t, a, "POST", vaultURL(host, "/keys/"+key+"/release"), header, body)
}

// emulatedReleaseJWS is the emulated vault's answer to a release of key
// with a genuine token for the test wrapping key.
func emulatedReleaseJWS(t testing.TB, a *emulatedAzure, host, key string) string {
	t.Helper()
	tok := emulatedMAAToken(t, a, nil, testWrappingKey(t).runtimeData)
	status, _, raw := vaultRelease(t, a, host, key, callerBearer, map[string]string{"target": tok, "enc": encRSAAESKeyWrap256})
	var out struct{ Value string }
	if status != 200 || json.Unmarshal(raw, &out) != nil || out.Value == "" {
		t.Fatalf("release %s from %s: %d %s", key, host, status, raw)
	}
	return out.Value
}

// unwrapEmulatedRelease checks an answer as the sidecar does and returns
// the released key.
func unwrapEmulatedRelease(t testing.TB, a *emulatedAzure, host, key string, raw []byte, wk *wrappingKey) (jwk, *releaseEnvelope) {
	t.Helper()
	var out struct{ Value string }
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	payload, _, err := verifyReleaseJWS(out.Value, host, a.rootsFor(host), time.Now())
	if err != nil {
		t.Fatalf("the release answer does not verify: %v", err)
	}
	env, err := parseReleasePayload(payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.checkBinding(keyRef{Name: key}, host, wk); err != nil {
		t.Fatal(err)
	}
	s, err := env.unwrap(wk)
	if err != nil {
		t.Fatal(err)
	}
	k, err := parseJWK([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return k, env
}

func TestEmulatedVaultReleasesEachKeyWithEachEnc(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	keys := readyAzureKeys(t)
	wk := testWrappingKey(t)
	tok := emulatedMAAToken(t, a, nil, wk.runtimeData)
	for _, host := range []string{emulatedVaultHost, emulatedHSMHost} {
		for _, enc := range []string{encRSAAESKeyWrap256, encRSAAESKeyWrap384, encRSAAESKeyWrapSHA1, ""} {
			for _, c := range []struct {
				key  string
				want any
			}{{demoOct, keys.demo.oct}, {demoRSA, keys.demo.rsa}, {demoEC, keys.demo.ec}} {
				req := map[string]string{"target": tok}
				if enc != "" {
					req["enc"] = enc
				}
				status, _, raw := vaultRelease(t, a, host, c.key, callerBearer, req)
				if status != 200 {
					t.Fatalf("%s %s %q: %d %s", host, c.key, enc, status, raw)
				}
				k, env := unwrapEmulatedRelease(t, a, host, c.key, raw, wk)
				wantEnc := enc
				if enc == "" {
					wantEnc = releaseDefaultEnc
				}
				if env.Enc != wantEnc {
					t.Errorf("%s %s: signed enc %q, want %q", host, c.key, env.Enc, wantEnc)
				}
				priv, err := k.PrivateKey()
				if err != nil {
					t.Fatal(err)
				}
				switch w := c.want.(type) {
				case []byte:
					if !bytes.Equal(priv.([]byte), w) {
						t.Errorf("%s %s: another key", host, c.key)
					}
				case *rsa.PrivateKey:
					if !w.Equal(priv) {
						t.Errorf("%s %s: another key", host, c.key)
					}
				case *ecdsa.PrivateKey:
					if !w.Equal(priv) {
						t.Errorf("%s %s: another key", host, c.key)
					}
				}
			}
		}
	}
}

// maaClaims are the claims of a genuine emulated MAA token for wk.
func maaClaims(t testing.TB, a *emulatedAzure, wk *wrappingKey) map[string]any {
	t.Helper()
	_, claims := jwsClaims(t, emulatedMAAToken(t, a, nil, wk.runtimeData))
	return claims
}

// mintToken signs claims as an MAA would, with key under kid.
func mintToken(t testing.TB, claims map[string]any, key *rsa.PrivateKey, kid string) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := signJWS(map[string]any{"typ": "JWT", "kid": kid, "jku": emulatedMAAIssuer + "/certs"}, payload, key, "RS256")
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// The emulated vault refuses what Key Vault refuses: tokens that do not
// verify (400), issuers the policy does not name and unmet policies (403,
// saying why), and requests it cannot serve.
func TestEmulatedVaultRefusesTargets(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	keys := readyAzureKeys(t)
	wk := testWrappingKey(t)
	base := maaClaims(t, a, wk)
	now := time.Now().Unix()
	with := func(mod func(c map[string]any)) map[string]any {
		c := map[string]any{}
		for k, v := range base {
			c[k] = v
		}
		mod(c)
		return c
	}
	good := mintToken(t, base, keys.maaSigner, keys.maaKid)
	unsigned := func() string {
		h := b64url([]byte(`{"alg":"none","typ":"JWT","kid":"` + keys.maaKid + `"}`))
		p, _ := json.Marshal(base)
		return h + "." + b64url(p) + "."
	}()
	var zero [32]byte
	for name, c := range map[string]struct {
		key, target, enc string
		status           int
		want             []string
	}{
		"genuine token":        {demoOct, good, "", 200, nil},
		"expired":              {demoOct, mintToken(t, with(func(c map[string]any) { c["exp"] = now - 600 }), keys.maaSigner, keys.maaKid), "", 400, []string{"expired"}},
		"not yet valid":        {demoOct, mintToken(t, with(func(c map[string]any) { c["nbf"] = now + 600 }), keys.maaSigner, keys.maaKid), "", 400, []string{"not valid before"}},
		"no exp":               {demoOct, mintToken(t, with(func(c map[string]any) { delete(c, "exp") }), keys.maaSigner, keys.maaKid), "", 400, []string{`no "exp"`}},
		"signature by another": {demoOct, mintToken(t, base, standInRSAKey(t, rsaReleased), keys.maaKid), "", 400, []string{"does not verify"}},
		"unknown signing key":  {demoOct, mintToken(t, base, keys.maaSigner, "not-a-kid"), "", 400, []string{"no signing key"}},
		"unsigned":             {demoOct, unsigned, "", 400, []string{"unsigned"}},
		"not a JWS":            {demoOct, "not.a.token!", "", 400, []string{"cannot be verified"}},
		"another issuer":       {demoOct, mintToken(t, with(func(c map[string]any) { c["iss"] = "https://sharedeus.eus.attest.azure.net" }), keys.maaSigner, keys.maaKid), "", 403, []string{"issuer", "not an authority"}},
		"no issuer":            {demoOct, mintToken(t, with(func(c map[string]any) { delete(c, "iss") }), keys.maaSigner, keys.maaKid), "", 403, []string{"not an authority"}},
		"policy not met":       {demoDenied, good, "", 403, []string{hostDataClaim, demoDeniedHostData(zero), strings.Repeat("0", 64)}},
		"debuggable":           {demoOct, mintToken(t, with(func(c map[string]any) { c["x-ms-sevsnpvm-is-debuggable"] = true }), keys.maaSigner, keys.maaKid), "", 403, []string{"x-ms-sevsnpvm-is-debuggable", `wants "false"`, "carries true"}},
		"no compliance status": {demoOct, mintToken(t, with(func(c map[string]any) { delete(c, "x-ms-compliance-status") }), keys.maaSigner, keys.maaKid), "", 403, []string{"x-ms-compliance-status", "no such claim"}},
		"no runtime key":       {demoOct, mintToken(t, with(func(c map[string]any) { delete(c, "x-ms-runtime") }), keys.maaSigner, keys.maaKid), "", 400, []string{"x-ms-runtime"}},
		"runtime key for sig": {demoOct, mintToken(t, with(func(c map[string]any) {
			c["x-ms-runtime"] = map[string]any{"keys": []any{map[string]any{"kty": "RSA", "kid": "x", "use": "sig", "n": rsaPublicJWK(&wk.priv.PublicKey).N, "e": "AQAB"}}}
		}), keys.maaSigner, keys.maaKid), "", 400, []string{"x-ms-runtime"}},
		"unknown enc":  {demoOct, good, "RSA_OAEP", 400, []string{"enc"}},
		"empty target": {demoOct, " ", "", 400, []string{"target"}},
		"no such key":  {"nokey", good, "", 404, []string{"KeyNotFound"}},
	} {
		req := map[string]string{"target": c.target}
		if c.enc != "" {
			req["enc"] = c.enc
		}
		status, _, raw := vaultRelease(t, a, emulatedVaultHost, c.key, callerBearer, req)
		if status != c.status {
			t.Errorf("%s: %d %s, want %d", name, status, raw, c.status)
			continue
		}
		for _, w := range c.want {
			if !bytes.Contains(raw, []byte(w)) && !strings.Contains(jsonUnescape(raw), w) {
				t.Errorf("%s: %s does not mention %q", name, raw, w)
			}
		}
	}
}

// jsonUnescape is an error answer's message with JSON's quoting undone.
func jsonUnescape(raw []byte) string {
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	json.Unmarshal(raw, &e)
	return e.Error.Code + ": " + e.Error.Message
}

// Key Vault wants a bearer token: 401 with a challenge without one, and a
// token of the emulated identity must verify and be for this vault.
func TestEmulatedVaultBearerTokens(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	ctx := context.Background()
	vaultTok, _, err := a.identity.issue(ctx, vaultResource(emulatedVaultHost))
	if err != nil {
		t.Fatal(err)
	}
	hsmTok, _, _ := a.identity.issue(ctx, vaultResource(emulatedHSMHost))
	a.now = func() time.Time { return time.Now().Add(-48 * time.Hour) }
	expiredTok, _, _ := a.identity.issue(ctx, vaultResource(emulatedVaultHost))
	a.now = time.Now
	forged := vaultTok[:len(vaultTok)-4] + "AAAA"
	if vaultResource(emulatedHSMHost) == vaultResource(emulatedVaultHost) {
		t.Fatal("the emulated Managed HSM has Key Vault's audience")
	}
	for name, c := range map[string]struct {
		host, auth string
		status     int
	}{
		"no token":                      {emulatedVaultHost, "", 401},
		"not Bearer":                    {emulatedVaultHost, "Basic dXNlcjpwdw==", 401},
		"empty Bearer":                  {emulatedVaultHost, "Bearer ", 401},
		"identity token":                {emulatedVaultHost, "Bearer " + vaultTok, 200},
		"identity token for the HSM":    {emulatedHSMHost, "Bearer " + hsmTok, 200},
		"identity token, wrong vault":   {emulatedHSMHost, "Bearer " + vaultTok, 401},
		"expired identity token":        {emulatedVaultHost, "Bearer " + expiredTok, 401},
		"forged identity token":         {emulatedVaultHost, "Bearer " + forged, 401},
		"a caller's own (opaque) token": {emulatedVaultHost, "Bearer eyJ0eXAiOiJKV1QifQ.opaque", 200},
	} {
		h := http.Header{}
		if c.auth != "" {
			h.Set("Authorization", c.auth)
		}
		status, hdr, raw := emulatedCall(t, a, "GET", vaultURL(c.host, "/keys/"+demoOct), h, nil)
		if status != c.status {
			t.Errorf("%s: %d %s, want %d", name, status, raw, c.status)
		}
		if status == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer ") {
			t.Errorf("%s: no Bearer challenge", name)
		}
	}
	if status, _, _ := emulatedCall(t, a, "GET", "https://"+emulatedVaultHost+"/keys/"+demoOct, callerBearer, nil); status != 400 {
		t.Errorf("no api-version: %d", status)
	}
}

// ---- import ----

func importBody(t testing.TB, key any, kty string, mod func(m map[string]any)) []byte {
	t.Helper()
	k, err := jwkFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	k.Kty = kty
	policy := demoReleasePolicy(strings.Repeat("0", 64))
	raw, _ := marshalJSON(policy)
	m := map[string]any{
		"key":            k,
		"hsm":            true,
		"attributes":     map[string]any{"exportable": true, "enabled": true},
		"release_policy": map[string]any{"contentType": "application/json; charset=utf-8", "data": b64url(raw), "immutable": false},
	}
	if mod != nil {
		mod(m)
	}
	b, _ := json.Marshal(m)
	return b
}

func putEmulatedKey(t testing.TB, a *emulatedAzure, host, name string, body []byte) (int, []byte) {
	t.Helper()
	status, _, raw := emulatedCall(t, a, "PUT", vaultURL(host, "/keys/"+name), callerBearer, body)
	return status, raw
}

func TestEmulatedVaultImportValidates(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	oct := bytes.Repeat([]byte{7}, 32)
	rsa2048 := standInRSAKey(t, rsaReleased)
	ec256 := standInECKey()
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	set := func(path string, v any) func(m map[string]any) {
		return func(m map[string]any) {
			parts := strings.Split(path, ".")
			cur := m
			for _, p := range parts[:len(parts)-1] {
				next, ok := cur[p].(map[string]any)
				if !ok {
					b, _ := json.Marshal(cur[p])
					json.Unmarshal(b, &next)
					cur[p] = next
				}
				cur = next
			}
			if v == nil {
				delete(cur, parts[len(parts)-1])
			} else {
				cur[parts[len(parts)-1]] = v
			}
		}
	}
	policyData := func(s string) func(m map[string]any) { return set("release_policy.data", b64url([]byte(s))) }
	for name, c := range map[string]struct {
		host   string
		body   []byte
		status int
		want   string
	}{
		"oct on Managed HSM":            {emulatedHSMHost, importBody(t, oct, "oct-HSM", nil), 200, ""},
		"RSA on Key Vault":              {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", nil), 200, ""},
		"EC P-384 on Key Vault":         {emulatedVaultHost, importBody(t, ec384, "EC-HSM", nil), 200, ""},
		"EC on Managed HSM":             {emulatedHSMHost, importBody(t, ec256, "EC-HSM", nil), 200, ""},
		"standard base64 policy":        {emulatedHSMHost, importBody(t, oct, "oct-HSM", set("release_policy.data", base64.StdEncoding.EncodeToString([]byte(`{"version":"1.0.0","anyOf":[{"authority":"https://maa.skr.localhost","allOf":[{"claim":"x-ms-sevsnpvm-vmpl","equals":"0"}]}]}`)))), 200, ""},
		"oct on Key Vault":              {emulatedVaultHost, importBody(t, oct, "oct-HSM", nil), 400, "Managed HSM only"},
		"RSA-1024":                      {emulatedVaultHost, importBody(t, rsa1024, "RSA-HSM", nil), 400, "1024 bits"},
		"oct of 20 bytes":               {emulatedHSMHost, importBody(t, oct[:20], "oct-HSM", nil), 400, "160 bits"},
		"key_size mismatch":             {emulatedHSMHost, importBody(t, oct, "oct-HSM", set("key.key_size", 128)), 400, "key_size"},
		"unknown kty":                   {emulatedHSMHost, importBody(t, oct, "AES", nil), 400, "not supported"},
		"public key only":               {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", set("key.d", nil)), 400, "private key"},
		"EC point off its curve":        {emulatedVaultHost, importBody(t, ec256, "EC-HSM", set("key.x", b64url(make([]byte, 32)))), 400, "key"},
		"bad key_ops":                   {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", set("key.key_ops", []string{"release"})), 400, "key_ops"},
		"exportable without a policy":   {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", set("release_policy", nil)), 400, "Exportable keys must have release policy"},
		"policy without exportable":     {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", set("attributes.exportable", false)), 400, "exportable"},
		"exportable software key":       {emulatedVaultHost, importBody(t, rsa2048, "RSA", set("hsm", nil)), 400, "HSM-protected"},
		"policy not base64":             {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", set("release_policy.data", "!!")), 400, "base64"},
		"policy not JSON":               {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", policyData("{")), 400, "release_policy"},
		"policy with no authority":      {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", policyData(`{"version":"1.0.0","anyOf":[]}`)), 400, "anyOf"},
		"policy with an unknown op":     {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", policyData(`{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","less":1}]}]}`)), 400, "operator"},
		"policy of another contentType": {emulatedVaultHost, importBody(t, rsa2048, "RSA-HSM", set("release_policy.contentType", "text/plain")), 400, "contentType"},
		"no key":                        {emulatedVaultHost, []byte(`{"hsm":true}`), 400, `no "key"`},
		"not JSON":                      {emulatedVaultHost, []byte(`key=1`), 400, "JSON"},
	} {
		status, raw := putEmulatedKey(t, a, c.host, "k-"+strings.ReplaceAll(name, " ", "-"), c.body)
		if status != c.status || !strings.Contains(jsonUnescape(raw), c.want) {
			t.Errorf("%s: %d %s, want %d mentioning %q", name, status, raw, c.status, c.want)
		}
	}
	if status, raw := putEmulatedKey(t, a, emulatedHSMHost, "bad_name", importBody(t, oct, "oct-HSM", nil)); status != 400 {
		t.Errorf("bad name: %d %s", status, raw)
	}
	status, _, raw := emulatedCall(t, a, "PUT", vaultURL(emulatedHSMHost, "/keys/k"), http.Header{"Authorization": {"Bearer x"}, "Content-Type": {"text/plain"}}, importBody(t, oct, "oct-HSM", nil))
	if status != http.StatusUnsupportedMediaType {
		t.Errorf("text/plain import: %d %s", status, raw)
	}
}

// Imports version keys; a read shows the public part and the policy only,
// and a release takes the latest version unless one is pinned.
func TestEmulatedVaultVersionsAndReads(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	wk := testWrappingKey(t)
	tok := emulatedMAAToken(t, a, nil, wk.runtimeData)
	first, second := bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 32)
	var ids []string
	for _, k := range [][]byte{first, second} {
		status, raw := putEmulatedKey(t, a, emulatedHSMHost, "Versioned", importBody(t, k, "oct-HSM", nil))
		var bundle struct {
			Key           jwk                   `json:"key"`
			Attributes    map[string]any        `json:"attributes"`
			ReleasePolicy struct{ Data string } `json:"release_policy"`
		}
		if status != 200 || json.Unmarshal(raw, &bundle) != nil {
			t.Fatalf("import: %d %s", status, raw)
		}
		if bundle.Key.K != "" || bytes.Contains(raw, []byte(b64url(k))) {
			t.Fatalf("the import answer carries the key material: %s", raw)
		}
		if bundle.Attributes["exportable"] != true || bundle.ReleasePolicy.Data == "" {
			t.Errorf("bundle %s", raw)
		}
		ids = append(ids, bundle.Key.Kid)
	}
	if ids[0] == ids[1] || !strings.HasPrefix(ids[1], "https://hsm.skr.localhost/keys/Versioned/") {
		t.Fatalf("versions %q", ids)
	}
	ver := func(id string) string { return id[strings.LastIndex(id, "/")+1:] }

	status, _, raw := emulatedCall(t, a, "GET", vaultURL(emulatedHSMHost, "/keys/versioned"), callerBearer, nil)
	if status != 200 || !bytes.Contains(raw, []byte(ver(ids[1]))) {
		t.Errorf("GET latest (name in another case): %d %s", status, raw)
	}
	status, _, raw = emulatedCall(t, a, "GET", vaultURL(emulatedVaultHost, "/keys/"+demoRSA), callerBearer, nil)
	var rsaBundle struct {
		Key           jwk                   `json:"key"`
		ReleasePolicy struct{ Data string } `json:"release_policy"`
	}
	json.Unmarshal(raw, &rsaBundle)
	pol, _ := b64urlDecode(rsaBundle.ReleasePolicy.Data)
	if status != 200 || rsaBundle.Key.N == "" || rsaBundle.Key.D != "" || rsaBundle.Key.P != "" || !bytes.Contains(pol, []byte(emulatedMAAIssuer)) {
		t.Errorf("GET demo-rsa: %d %s", status, raw)
	}
	for _, c := range []struct {
		path string
		want []byte
	}{
		{"/keys/Versioned/release", second},
		{"/keys/Versioned/" + ver(ids[0]) + "/release", first},
		{"/keys/Versioned/" + strings.ToUpper(ver(ids[1])) + "/release", second},
	} {
		body, _ := json.Marshal(map[string]string{"target": tok, "enc": encRSAAESKeyWrap256})
		status, _, raw := emulatedCall(t, a, "POST", vaultURL(emulatedHSMHost, c.path), callerBearer, body)
		if status != 200 {
			t.Fatalf("%s: %d %s", c.path, status, raw)
		}
		k, _ := unwrapEmulatedRelease(t, a, emulatedHSMHost, "Versioned", raw, wk)
		if got, _ := k.PrivateKey(); !bytes.Equal(got.([]byte), c.want) {
			t.Errorf("%s released %x", c.path, got)
		}
	}
	for _, path := range []string{"/keys/nokey", "/keys/Versioned/" + strings.Repeat("0", 32)} {
		if status, _, raw := emulatedCall(t, a, "GET", vaultURL(emulatedHSMHost, path), callerBearer, nil); status != 404 || !bytes.Contains(raw, []byte("KeyNotFound")) {
			t.Errorf("GET %s: %d %s", path, status, raw)
		}
	}
	// The other flavour holds its own keys.
	if status, _, _ := emulatedCall(t, a, "GET", vaultURL(emulatedVaultHost, "/keys/Versioned"), callerBearer, nil); status != 404 {
		t.Errorf("a key imported into the Managed HSM is in the Key Vault: %d", status)
	}
}

// The vault keeps keys in memory for the process's life: what callers may
// put there is bounded.
func TestEmulatedVaultIsBounded(t *testing.T) {
	t.Parallel()
	a := newTestEmulatedAzure(t, nil)
	body := importBody(t, bytes.Repeat([]byte{3}, 16), "oct-HSM", nil)
	n := 0
	for ; n <= maxEmulatedKeyVersions; n++ {
		status, raw := putEmulatedKey(t, a, emulatedHSMHost, fmt.Sprintf("k%d", n%7), body)
		if status != 200 {
			if status != 403 || !bytes.Contains(raw, []byte("at most")) {
				t.Fatalf("import %d: %d %s", n, status, raw)
			}
			break
		}
	}
	if want := maxEmulatedKeyVersions - len(demoKeyNames); n != want {
		t.Errorf("%d imports before the bound, want %d", n, want)
	}
}

func FuzzEmulatedVaultImport(f *testing.F) {
	f.Add(importBody(f, bytes.Repeat([]byte{1}, 32), "oct-HSM", nil))
	f.Add(importBody(f, standInECKey(), "EC-HSM", nil))
	f.Add([]byte(`{"key":{"kty":"oct-HSM","k":"AAAAAAAAAAAAAAAAAAAAAA"},"attributes":{"exportable":false}}`))
	f.Add([]byte(`{"key":{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQ"},"release_policy":{"data":"e30"}}`))
	a := newTestEmulatedAzure(f, nil)
	v := newEmulatedVault(a, emulatedHSMHost, true)
	f.Fuzz(func(t *testing.T, body []byte) {
		kv, err := v.parseImport(body)
		if err != nil {
			return
		}
		if kv.exportable && kv.parsed == nil {
			t.Fatal("an exportable key without a policy")
		}
		if kv.parsed != nil {
			if err := kv.parsed.validate(); err != nil {
				t.Fatalf("accepted a policy that does not validate: %v", err)
			}
		}
		if _, err := releasePlaintext(kv.material); err != nil {
			t.Fatalf("accepted key material it cannot release: %v", err)
		}
	})
}
