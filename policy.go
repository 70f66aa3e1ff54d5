package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Release policies: the claims Key Vault checks an MAA token against before
// it releases a key. importkey builds them; policyeval.go evaluates them.

// releaseClaim is one condition of a release policy: a claim with its
// operator (equals or exists), or a nested allOf / anyOf group. Values keep
// their JSON as written (production policies write "false" and "0" as
// strings, and the service compares string forms).
type releaseClaim struct {
	Claim  string          `json:"claim,omitempty"`
	Equals json.RawMessage `json:"equals,omitempty"`
	Exists json.RawMessage `json:"exists,omitempty"`
	AllOf  []releaseClaim  `json:"allOf,omitempty"`
	AnyOf  []releaseClaim  `json:"anyOf,omitempty"`
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

// releasePolicy is a release policy: importkey writes one authority entry
// with an allOf list per claims list; policyeval.go reads the whole grammar.
type releasePolicy struct {
	Version string            `json:"version"`
	AnyOf   []policyAuthority `json:"anyOf"`
}

// policyAuthority is one anyOf entry: the MAA whose tokens it accepts and
// exactly one of allOf / anyOf.
type policyAuthority struct {
	Authority string         `json:"authority"`
	AllOf     []releaseClaim `json:"allOf,omitempty"`
	AnyOf     []releaseClaim `json:"anyOf,omitempty"`
}

// wireReleasePolicy is how a policy travels to Key Vault.
type wireReleasePolicy struct {
	ContentType string `json:"contentType"`
	Data        string `json:"data"` // b64url-raw of the policy JSON
	Immutable   bool   `json:"immutable"`
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
	if len(c.Exists) > 0 || c.AllOf != nil || c.AnyOf != nil {
		return fmt.Errorf(`claim %q: importkey writes {"claim", "equals"} conditions only`, c.Claim)
	}
	var v any
	if err := json.Unmarshal(c.Equals, &v); err != nil {
		return fmt.Errorf("claim %q: %w", c.Claim, err)
	}
	switch v := v.(type) {
	case string:
		if isPlaceholder(v) {
			hint := "put the value the MAA token must carry"
			if c.Claim == hostDataClaim {
				hint = "put the digest of your security policy (skr digest -f POLICY.base64)"
			}
			return placeholderError(fmt.Sprintf("claim %q", c.Claim), v, hint)
		}
		if c.Claim == hostDataClaim && !isLowerHex64(v) {
			return fmt.Errorf("%s %q is not 64 lower-case hex digits: compute it with skr digest -f POLICY.base64", hostDataClaim, v)
		}
	case bool, float64:
	default:
		return fmt.Errorf(`claim %q: "equals" must be a string, number or boolean`, c.Claim)
	}
	return nil
}
