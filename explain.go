package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Why was my key denied? Key Vault answers a release that fails its policy,
// and one the identity may not make, with the same bare 403. When the
// identity may read the key, its release policy says which: the sidecar
// reads it (GET /keys/{name}[/{version}], the same bearer token) and
// evaluates it against the claims of the MAA token it just sent, with the
// evaluator the emulated vault and `skr policy check` use. Claim values are
// not secret; the explanation never holds a token or key material.

// explainBudget bounds the policy read that explains a refusal, within the
// request's own deadline.
const explainBudget = 10 * time.Second

// explainRefusal turns Key Vault's 403 for a release into an error that
// says why: the policy entry that came closest and each claim it wants
// that the token does not carry, or, when the policy is met, the missing
// release permission. When the policy cannot be read it says so, and gives
// the host data presented and the role to grant.
func (s *server) explainRefusal(ctx context.Context, ue *upstreamError, p *keyReleaseParams, bearer, source string, cred *releaseCredential) error {
	ctx, cancel := context.WithTimeout(ctx, explainBudget)
	defer cancel()
	verdict, policy, err := s.checkReleasePolicy(ctx, p.VaultHost, p.Key, bearer, cred.token)
	if err != nil {
		return newError(kindDenied, ue,
			"Key Vault: %s refused to release key %q: the key's release policy was not met by this container group's MAA token "+
				"(this container group presents x-ms-sevsnpvm-hostdata %s: compare it with the key's release policy), "+
				"or the identity (%s) lacks the release permission (role %s) "+
				"(the release policy could not be read to tell which: %v)",
			p.VaultHost, p.Key.String(), cred.hostData, source, releaseRole(p.VaultHost), err)
	}
	if verdict.Met {
		return newError(kindDenied, ue,
			"Key Vault: %s refused to release key %q although this container group's MAA token meets its release policy (%s): "+
				"the identity (%s) lacks the release permission: grant it the role %s on the key or the vault",
			p.VaultHost, p.Key.String(), verdict, source, releaseRole(p.VaultHost))
	}
	msg := fmt.Sprintf("Key Vault: %s refused to release key %q: this container group's MAA token does not meet the key's release policy: %s",
		p.VaultHost, p.Key.String(), verdict)
	if hint := authorityHint(policy, p.MAAHost); hint != "" {
		msg += "; " + hint
	}
	return newError(kindDenied, briefer(ue, verdict.String()), "%s", msg)
}

// checkReleasePolicy reads key's release policy with bearer and evaluates
// it against the claims of maaToken.
func (s *server) checkReleasePolicy(ctx context.Context, vault string, key keyRef, bearer, maaToken string) (policyVerdict, *releasePolicy, error) {
	raw, err := s.readReleasePolicy(ctx, vault, key, bearer)
	if err != nil {
		return policyVerdict{}, nil, err
	}
	policy, err := parseReleasePolicy(raw)
	if err != nil {
		return policyVerdict{}, nil, fmt.Errorf("the key's release policy: %w", err)
	}
	claims, err := jwtClaims(maaToken)
	if err != nil {
		return policyVerdict{}, nil, fmt.Errorf("the MAA token: %w", err)
	}
	return evaluateReleasePolicy(policy, claims), policy, nil
}

// readReleasePolicy reads the release policy JSON of a key as the vault
// stores it. A 403 means the identity may release but not read the key.
func (s *server) readReleasePolicy(ctx context.Context, vault string, key keyRef, bearer string) ([]byte, error) {
	path := "/keys/" + key.Name
	if key.Version != "" {
		path += "/" + key.Version
	}
	target := (&url.URL{Scheme: "https", Host: vault, Path: path, RawQuery: "api-version=" + keyVaultAPIVersion}).String()
	body, _, err := doWithRetry(ctx, s.client, "Key Vault", s.retry, s.log, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+bearer)
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", "skr/"+version)
		return req, nil
	})
	var ue *upstreamError
	switch {
	case errors.As(err, &ue) && ue.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("the identity may not read key %q (GET %s: %w)", key.String(), path, err)
	case err != nil:
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return releasePolicyOfKey(body)
}

// releasePolicyOfKey is the release policy JSON in a key bundle, as GET
// /keys/{name} answers it: release_policy.data, base64url.
func releasePolicyOfKey(bundle []byte) ([]byte, error) {
	var b struct {
		ReleasePolicy *struct {
			Data string `json:"data"`
		} `json:"release_policy"`
	}
	if err := decodeJSONObject(bundle, &b); err != nil {
		return nil, fmt.Errorf("the key bundle is not the expected JSON: %w", err)
	}
	if b.ReleasePolicy == nil || strings.TrimSpace(b.ReleasePolicy.Data) == "" {
		return nil, errors.New("the key has no release policy: it is not exportable, so it is never released")
	}
	raw, err := decodeBase64(b.ReleasePolicy.Data)
	if err != nil {
		return nil, fmt.Errorf("release_policy.data is not base64url: %w", err)
	}
	return raw, nil
}

// authorityHint says so when no authority of the policy is the MAA the
// release went to: then no token from it can ever meet the policy.
func authorityHint(policy *releasePolicy, maaHost string) string {
	want := "https://" + maaHost
	var authorities []string
	for _, a := range policy.AnyOf {
		if sameAuthority(a.Authority, want) {
			return ""
		}
		authorities = append(authorities, a.Authority)
	}
	return fmt.Sprintf("no authority of the policy (%s) is %s, the maa_endpoint this release used: use one of them as maa_endpoint, or add %s to the policy",
		strings.Join(authorities, ", "), want, want)
}

// releaseRole is the role that lets an identity release keys of the vault.
func releaseRole(vaultHost string) string {
	if vaultResource(vaultHost) == "https://managedhsm.azure.net" || strings.Contains(hostName(vaultHost), ".managedhsm.") {
		return "Managed HSM Crypto Service Release User"
	}
	return "Key Vault Crypto Service Release User"
}

// briefer drops the vault's message when it only repeats the explanation,
// as the emulated vault's does: it explains refusals with the same
// evaluator.
func briefer(ue *upstreamError, explanation string) *upstreamError {
	if ue.Message == "" || !strings.Contains(ue.Message, explanation) {
		return ue
	}
	c := *ue
	c.Message, c.Body = "", nil
	return &c
}
