package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Bounds on a release policy, an untrusted document: Key Vault's own
// limits are not published, these are far above any real policy.
const (
	maxPolicySize       = 64 << 10
	maxPolicyAuthority  = 64
	maxPolicyConditions = 256
	maxPolicyDepth      = 8
)

// policyVersions are the grammar versions a policy may declare: 1.0.0 is
// the current one, 0.2 what older sidecar documentation writes.
var policyVersions = []string{"1.0.0", "0.2"}

// parseReleasePolicy reads a release policy's JSON and checks it against
// the grammar: anyOf authority entries, each an https authority with exactly
// one of allOf / anyOf; conditions a claim with one operator (equals with a
// string, number or boolean; exists with a boolean) or a nested group.
func parseReleasePolicy(data []byte) (*releasePolicy, error) {
	p, err := decodeReleasePolicy(data)
	if err != nil {
		return nil, err
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// decodeReleasePolicy reads a release policy's JSON within the bounds but
// without the grammar's other checks: `skr policy check` lints and
// evaluates a policy the grammar refuses (an authority without https://,
// an empty list), to say what is wrong with it.
func decodeReleasePolicy(data []byte) (*releasePolicy, error) {
	if len(data) > maxPolicySize {
		return nil, fmt.Errorf("release policy is larger than %d bytes", maxPolicySize)
	}
	var p releasePolicy
	if err := decodeJSONObject(data, &p); err != nil {
		return nil, fmt.Errorf("release policy is not a JSON object: %w", err)
	}
	if len(p.AnyOf) > maxPolicyAuthority {
		return nil, fmt.Errorf("release policy has %d authorities, more than %d", len(p.AnyOf), maxPolicyAuthority)
	}
	count := 0
	for _, a := range p.AnyOf {
		if err := boundConditions(append(slices.Clip(a.AllOf), a.AnyOf...), 1, &count); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// boundConditions checks only the nesting depth and the number of
// conditions, which bound the evaluator's work.
func boundConditions(conds []releaseClaim, depth int, count *int) error {
	if depth > maxPolicyDepth {
		return fmt.Errorf("release policy conditions are nested deeper than %d levels", maxPolicyDepth)
	}
	for _, c := range conds {
		if *count++; *count > maxPolicyConditions {
			return fmt.Errorf("release policy has more than %d conditions", maxPolicyConditions)
		}
		if err := boundConditions(append(slices.Clip(c.AllOf), c.AnyOf...), depth+1, count); err != nil {
			return err
		}
	}
	return nil
}

func (p *releasePolicy) validate() error {
	known := false
	for _, v := range policyVersions {
		known = known || p.Version == v
	}
	if !known {
		return fmt.Errorf("release policy version %q is not one of %s", truncate(p.Version, 20), strings.Join(policyVersions, ", "))
	}
	if len(p.AnyOf) == 0 {
		return errors.New(`release policy has no "anyOf" authorities`)
	}
	if len(p.AnyOf) > maxPolicyAuthority {
		return fmt.Errorf("release policy has %d authorities, more than %d", len(p.AnyOf), maxPolicyAuthority)
	}
	count := 0
	for i, a := range p.AnyOf {
		u, err := url.Parse(a.Authority)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("anyOf[%d]: authority %q is not an https URL such as https://sharedeus.eus.attest.azure.net", i, truncate(a.Authority, 100))
		}
		conds, _, err := conditionGroup(a.AllOf, a.AnyOf)
		if err != nil {
			return fmt.Errorf("anyOf[%d]: %w", i, err)
		}
		if err := validateConditions(conds, 1, &count); err != nil {
			return fmt.Errorf("anyOf[%d]: %w", i, err)
		}
	}
	return nil
}

// conditionGroup returns the one non-empty list of an allOf / anyOf pair
// and whether it is allOf.
func conditionGroup(allOf, anyOf []releaseClaim) ([]releaseClaim, bool, error) {
	switch {
	case allOf != nil && anyOf != nil:
		return nil, false, errors.New(`has both "allOf" and "anyOf": keep one`)
	case len(allOf) > 0:
		return allOf, true, nil
	case len(anyOf) > 0:
		return anyOf, false, nil
	}
	return nil, false, errors.New(`has no conditions: it needs a non-empty "allOf" or "anyOf"`)
}

func validateConditions(conds []releaseClaim, depth int, count *int) error {
	if depth > maxPolicyDepth {
		return fmt.Errorf("conditions are nested deeper than %d levels", maxPolicyDepth)
	}
	for _, c := range conds {
		if *count++; *count > maxPolicyConditions {
			return fmt.Errorf("more than %d conditions", maxPolicyConditions)
		}
		if c.Claim == "" {
			if len(c.Equals) > 0 || len(c.Exists) > 0 {
				return errors.New(`a condition has an operator but no "claim"`)
			}
			sub, _, err := conditionGroup(c.AllOf, c.AnyOf)
			if err != nil {
				return fmt.Errorf("a condition without a claim %w", err)
			}
			if err := validateConditions(sub, depth+1, count); err != nil {
				return err
			}
			continue
		}
		if c.AllOf != nil || c.AnyOf != nil {
			return fmt.Errorf("claim %q: a condition is a claim or a group, not both", truncate(c.Claim, 100))
		}
		switch {
		case len(c.Equals) > 0 && len(c.Exists) > 0:
			return fmt.Errorf(`claim %q has both "equals" and "exists": one operator per condition`, truncate(c.Claim, 100))
		case len(c.Equals) > 0:
			if _, err := policyValueString(c.Equals); err != nil {
				return fmt.Errorf("claim %q: %w", truncate(c.Claim, 100), err)
			}
		case len(c.Exists) > 0:
			var b bool
			if err := json.Unmarshal(c.Exists, &b); err != nil {
				return fmt.Errorf(`claim %q: "exists" must be true or false`, truncate(c.Claim, 100))
			}
		default:
			return fmt.Errorf(`claim %q has no supported operator: use "equals" or "exists"`, truncate(c.Claim, 100))
		}
	}
	return nil
}

// policyValueString is the string form of an equals value, the form Key
// Vault compares: "false" equals false and "0" equals 0.
func policyValueString(raw json.RawMessage) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", fmt.Errorf(`"equals" is not JSON: %w`, err)
	}
	switch v.(type) {
	case string, bool, json.Number:
		return claimValueString(v), nil
	}
	return "", errors.New(`"equals" must be a string, number or boolean`)
}

// claimValueString renders a claim's value the way policies compare it.
func claimValueString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case json.Number:
		return x.String()
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case int:
		return strconv.Itoa(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case uint64:
		return strconv.FormatUint(x, 10)
	}
	return ""
}

// policyVerdict is the outcome of evaluating a release policy against a
// token's claims, with what it takes to explain a refusal.
type policyVerdict struct {
	Met      bool
	Issuer   string          // the token's iss
	Branches []branchVerdict // one per anyOf entry, in order
	Closest  int             // the branch that was met, else the one that came closest
}

// branchVerdict is one anyOf entry's outcome.
type branchVerdict struct {
	Authority      string
	AuthorityMatch bool // the token's issuer is this authority
	Failures       []conditionFailure
}

func (b branchVerdict) met() bool { return b.AuthorityMatch && len(b.Failures) == 0 }

// conditionFailure is one condition the token does not meet. A nested
// group that failed carries its members' failures: all of them for anyOf
// (none held), the failing ones for allOf.
type conditionFailure struct {
	Claim   string // dotted claim path; "" for a group
	Want    string // what the policy asks, e.g. `"azure-compliant-uvm"`, "present", "absent"
	Got     string // what the token carries, rendered; "" when Absent
	Absent  bool   // the token has no such claim
	AnyOf   bool   // a group: none of Members held
	Members []conditionFailure
}

// evaluateReleasePolicy says whether a token's claims meet the policy the
// way Key Vault decides: some anyOf entry whose authority is the token's
// issuer and whose conditions hold. It evaluates every entry, so that a
// refusal can say which came closest and why.
func evaluateReleasePolicy(p *releasePolicy, claims map[string]any) policyVerdict {
	v := policyVerdict{Closest: -1}
	v.Issuer, _ = claims["iss"].(string)
	for _, a := range p.AnyOf {
		b := branchVerdict{Authority: a.Authority, AuthorityMatch: sameAuthority(a.Authority, v.Issuer)}
		if conds, isAll, err := conditionGroup(a.AllOf, a.AnyOf); err != nil {
			b.Failures = []conditionFailure{{Want: "a valid condition list", Got: err.Error()}}
		} else if f, ok := evalGroup(conds, isAll, claims); !ok {
			b.Failures = f
		}
		v.Branches = append(v.Branches, b)
	}
	for i, b := range v.Branches {
		if b.met() {
			v.Met, v.Closest = true, i
			return v
		}
		if v.Closest < 0 || closer(b, v.Branches[v.Closest]) {
			v.Closest = i
		}
	}
	return v
}

// closer prefers a branch whose authority matches, then fewer failures.
func closer(a, b branchVerdict) bool {
	if a.AuthorityMatch != b.AuthorityMatch {
		return a.AuthorityMatch
	}
	return len(a.Failures) < len(b.Failures)
}

// sameAuthority compares a policy authority with a token's iss: scheme and
// host without regard to case, a trailing slash ignored (Microsoft's own
// policies write one, MAA's iss has none).
func sameAuthority(authority, iss string) bool {
	a, errA := url.Parse(strings.TrimRight(strings.TrimSpace(authority), "/"))
	b, errB := url.Parse(strings.TrimRight(strings.TrimSpace(iss), "/"))
	if errA != nil || errB != nil || a.Host == "" || b.Host == "" {
		return false
	}
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(a.Host, b.Host) && a.Path == b.Path
}

// evalGroup evaluates allOf (isAll) or anyOf conditions; on failure it
// returns what failed.
func evalGroup(conds []releaseClaim, isAll bool, claims map[string]any) ([]conditionFailure, bool) {
	var failures []conditionFailure
	for _, c := range conds {
		f, ok := evalCondition(c, claims)
		if ok && !isAll {
			return nil, true
		}
		if !ok {
			failures = append(failures, f)
		}
	}
	if len(failures) == 0 {
		return nil, true
	}
	if isAll {
		return failures, false
	}
	return []conditionFailure{{AnyOf: true, Members: failures}}, false
}

func evalCondition(c releaseClaim, claims map[string]any) (conditionFailure, bool) {
	if c.Claim == "" {
		conds, isAll, err := conditionGroup(c.AllOf, c.AnyOf)
		if err != nil {
			return conditionFailure{Want: "a valid condition", Got: err.Error()}, false
		}
		f, ok := evalGroup(conds, isAll, claims)
		if ok {
			return conditionFailure{}, true
		}
		if len(f) == 1 {
			return f[0], false
		}
		return conditionFailure{Members: f}, false
	}
	value, present := claimAt(claims, c.Claim)
	fail := conditionFailure{Claim: c.Claim, Absent: !present}
	if present {
		fail.Got = renderClaimValue(value)
	}
	switch {
	case len(c.Exists) > 0:
		var want bool
		if json.Unmarshal(c.Exists, &want) != nil {
			fail.Want = `a valid "exists"`
			return fail, false
		}
		if want == present {
			return conditionFailure{}, true
		}
		fail.Want = map[bool]string{true: "present", false: "absent"}[want]
		return fail, false
	case len(c.Equals) > 0:
		want, err := policyValueString(c.Equals)
		if err != nil {
			fail.Want = `a valid "equals"`
			return fail, false
		}
		if present && isScalar(value) && claimValueString(value) == want {
			return conditionFailure{}, true
		}
		fail.Want = strconv.Quote(want)
		return fail, false
	}
	fail.Want = "a supported operator (equals, exists)"
	return fail, false
}

// claimAt finds a claim by name, or by a dotted path into nested objects
// such as x-ms-runtime.keys (arrays are not addressable).
func claimAt(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	var cur any = claims
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func isScalar(v any) bool {
	switch v.(type) {
	case string, bool, json.Number, float64, int, int64, uint64:
		return true
	}
	return false
}

// renderClaimValue shows a token's value in an explanation: strings quoted,
// numbers and booleans bare, anything else by its kind.
func renderClaimValue(v any) string {
	switch x := v.(type) {
	case string:
		return strconv.Quote(truncate(x, 200))
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case nil:
		return "null"
	}
	return claimValueString(v)
}

// String explains the verdict in one line, to follow "the release policy
// is met" or "is not met": which entry was met, or which came closest and
// each condition it failed with the value the policy wants and the value
// the token carries.
func (v policyVerdict) String() string {
	if v.Closest < 0 || v.Closest >= len(v.Branches) {
		return "the release policy has no authorities"
	}
	b := v.Branches[v.Closest]
	where := fmt.Sprintf("anyOf[%d] (authority %s)", v.Closest, b.Authority)
	if v.Met {
		return "met by " + where
	}
	var parts []string
	if !b.AuthorityMatch {
		iss := v.Issuer
		if iss == "" {
			iss = "(none)"
		}
		parts = append(parts, fmt.Sprintf("the token's issuer %s is not the authority %s", iss, b.Authority))
	}
	for _, f := range b.Failures {
		parts = append(parts, f.String())
	}
	entry := "the closest entry"
	if len(v.Branches) == 1 {
		entry = "its only entry"
	}
	return fmt.Sprintf("%s, %s, fails: %s", entry, where, strings.Join(parts, "; "))
}

func (f conditionFailure) String() string {
	if f.Claim == "" {
		var members []string
		for _, m := range f.Members {
			members = append(members, m.String())
		}
		if f.AnyOf {
			return "none of (" + strings.Join(members, " | ") + ")"
		}
		if len(members) == 0 {
			return fmt.Sprintf("%s: %s", f.Want, f.Got)
		}
		return "(" + strings.Join(members, "; ") + ")"
	}
	got := "the token carries " + f.Got
	if f.Absent {
		got = "the token has no such claim"
	}
	switch f.Want {
	case "present":
		return fmt.Sprintf("claim %s: the policy wants it present, %s", f.Claim, got)
	case "absent":
		return fmt.Sprintf("claim %s: the policy wants it absent, %s", f.Claim, got)
	}
	return fmt.Sprintf("claim %s: the policy wants %s, %s", f.Claim, f.Want, got)
}
