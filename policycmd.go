package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// `skr policy check`: a release policy against a token, offline. The
// policy is what Key Vault stores (its JSON, the base64url release_policy
// data, a key as GET /keys answers it) or an importkey config; the claims
// are an MAA token's (its signature is not needed to read them) or those
// the emulated MAA gives the emulator's evidence (-emulate). The verdict
// and its explanation come from the evaluator the sidecar and the emulated
// vault use; the lint says what a policy leaves open.

const (
	maxPolicyInput = 1 << 20
	// policyCheckTimeout bounds -emulate: the emulator's and the emulated
	// services' keys, one attestation.
	policyCheckTimeout = time.Minute
)

const policyUsage = "Usage: skr policy check -p POLICY_FILE (-t TOKEN_FILE | -emulate)"

// policyEnv is what the command takes from its surroundings; tests replace
// it.
type policyEnv struct {
	Getenv func(string) string
	Server serverOptions // for -emulate
}

func runPolicy(args []string, stdout, stderr io.Writer) int {
	return policyMain(args, stdout, stderr, policyEnv{Getenv: os.Getenv})
}

func policyMain(args []string, stdout, stderr io.Writer, env policyEnv) int {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && isHelpFlag(args[0]) {
			fmt.Fprintln(stdout, policyUsage)
			return 0
		}
		fmt.Fprintln(stderr, policyUsage)
		return 2
	}
	fs := newCommandFlags("skr policy check", stderr, policyUsage,
		"Evaluates a release policy against the claims of an MAA token, or those the emulated MAA gives the",
		"emulator's evidence, and lints it. Exit 0: met; 1: not met; 2: bad input.",
		"POLICY_FILE: the policy JSON, its base64url form (release_policy.data), a key as GET /keys answers it, or an importkey config.",
		"TOKEN_FILE: a compact MAA token, {\"token\": ...} as /attest/maa answers (maatoken.out), or the claims as a JSON object.")
	policyFile := fs.String("p", "", "the release policy (see above)")
	tokenFile := fs.String("t", "", "the MAA token or its claims (see above)")
	emulate := fs.Bool("emulate", false, "use the claims the emulated MAA gives the emulator's evidence (HOST_DATA from the security context, as skr -emulate)")
	if err := fs.Parse(args[1:]); err != nil {
		return exitCodeForParse(err)
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "skr policy check: unexpected arguments %q\n%s\n", fs.Args(), policyUsage)
		return 2
	case *policyFile == "":
		fmt.Fprintf(stderr, "skr policy check: -p is required\n%s\n", policyUsage)
		return 2
	case (*tokenFile == "") == !*emulate:
		fmt.Fprintf(stderr, "skr policy check: give -t TOKEN_FILE or -emulate, one of them\n%s\n", policyUsage)
		return 2
	}
	in, err := readPolicyFile(*policyFile)
	if err != nil {
		fmt.Fprintf(stderr, "skr policy check: %v\n", err)
		return 2
	}
	var claims map[string]any
	var from string
	if *emulate {
		claims, err = emulatedClaims(env)
		from = "the emulated MAA's token for the emulator's evidence"
	} else {
		claims, err = readClaimsFile(*tokenFile)
		from = *tokenFile
	}
	if err != nil {
		fmt.Fprintf(stderr, "skr policy check: %v\n", err)
		return 2
	}
	if met := reportPolicyCheck(stdout, in, claims, from, *emulate); !met {
		return 1
	}
	return 0
}

// releasePolicyInput is a policy as read, and what it was read from.
type releasePolicyInput struct {
	policy *releasePolicy
	form   string // e.g. "release policy JSON", "importkey config"
	source string
	// grammarErr says why the policy grammar refuses it; it is still
	// evaluated and linted, to say what is wrong.
	grammarErr error
}

func readPolicyFile(path string) (*releasePolicyInput, error) {
	raw, err := readBounded(path, maxPolicyInput)
	if err != nil {
		return nil, fmt.Errorf("read the policy: %w", err)
	}
	in, err := parsePolicyInput(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	in.source = path
	return in, nil
}

// parsePolicyInput recognises the forms a policy comes in.
func parsePolicyInput(raw []byte) (*releasePolicyInput, error) {
	text := bytes.TrimSpace(raw)
	if len(text) == 0 {
		return nil, errors.New("the policy file is empty")
	}
	if text[0] != '{' {
		decoded, err := decodeBase64(string(text))
		if err != nil || !bytes.HasPrefix(bytes.TrimSpace(decoded), []byte("{")) {
			return nil, errors.New("not a release policy: neither JSON nor the base64url of JSON (release_policy.data)")
		}
		in, err := policyFromJSON(decoded)
		if err == nil {
			in.form = "release policy, base64url (release_policy.data)"
		}
		return in, err
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(text, &members); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	switch {
	case members["release_policy"] != nil:
		data, err := releasePolicyOfKey(text)
		if err != nil {
			return nil, err
		}
		in, err := policyFromJSON(data)
		if err == nil {
			in.form = "the release policy of a key (GET /keys)"
		}
		return in, err
	case members["data"] != nil && members["anyOf"] == nil:
		data, err := releasePolicyOfKey([]byte(`{"release_policy":` + string(text) + `}`))
		if err != nil {
			return nil, err
		}
		in, err := policyFromJSON(data)
		if err == nil {
			in.form = "release_policy (contentType, data)"
		}
		return in, err
	case members["key"] != nil || members["claims"] != nil:
		return policyFromImportConfig(text)
	}
	return policyFromJSON(text)
}

func policyFromJSON(data []byte) (*releasePolicyInput, error) {
	p, err := decodeReleasePolicy(data)
	if err != nil {
		return nil, err
	}
	return &releasePolicyInput{policy: p, form: "release policy JSON", grammarErr: p.validate()}, nil
}

// policyFromImportConfig is the policy importkey would import with this
// config.
func policyFromImportConfig(text []byte) (*releasePolicyInput, error) {
	var cfg importKeyConfig
	if err := json.Unmarshal(text, &cfg); err != nil {
		return nil, fmt.Errorf("not an importkey config: %w", err)
	}
	var plan importPlan
	if err := planPolicy(&plan, &cfg); err != nil {
		return nil, fmt.Errorf("importkey config: %w", err)
	}
	return &releasePolicyInput{policy: &plan.Policy, form: "the policy of an importkey config", grammarErr: plan.Policy.validate()}, nil
}

// readClaimsFile reads an MAA token, /attest/maa's answer or bare claims.
func readClaimsFile(path string) (map[string]any, error) {
	raw, err := readBounded(path, maxPolicyInput)
	if err != nil {
		return nil, fmt.Errorf("read the token: %w", err)
	}
	claims, err := parseClaimsInput(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return claims, nil
}

func parseClaimsInput(raw []byte) (map[string]any, error) {
	text := bytes.TrimSpace(raw)
	if !bytes.HasPrefix(text, []byte("{")) {
		claims, err := jwtClaims(string(text))
		if err != nil {
			return nil, fmt.Errorf("not an MAA token (a compact JWT) nor JSON: %w", err)
		}
		return claims, nil
	}
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if tok, ok := obj["token"].(string); ok && len(obj) == 1 {
		claims, err := jwtClaims(tok)
		if err != nil {
			return nil, fmt.Errorf("its \"token\" is not an MAA token: %w", err)
		}
		return claims, nil
	}
	return obj, nil
}

// emulatedClaims are the claims of the token a release would send with
// -emulate: the emulator's evidence over a wrapping key, attested by the
// emulated MAA, with the security context skr -emulate would read.
func emulatedClaims(env policyEnv) (map[string]any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), policyCheckTimeout)
	defer cancel()
	args, err := parseSkrSideCarArgs(env.Getenv("SkrSideCarArgs"))
	if err != nil {
		return nil, err
	}
	opts := env.Server
	if opts.Getenv == nil {
		opts.Getenv = env.Getenv
	}
	s, err := newServer(serverConfig{Emulate: true, Args: args, WrappingKeyTTL: time.Minute}, slog.New(slog.DiscardHandler), opts)
	if err != nil {
		return nil, err
	}
	defer s.rel.Close()
	cred, _, err := s.rel.credential(ctx, emulatedMAAHost)
	if err != nil {
		return nil, fmt.Errorf("the emulated MAA's token: %w", err)
	}
	defer s.rel.put(cred)
	return jwtClaims(cred.token)
}

// reportPolicyCheck prints what was read, the lint and the verdict, and
// says whether the policy is met.
func reportPolicyCheck(w io.Writer, in *releasePolicyInput, claims map[string]any, from string, emulated bool) bool {
	iss, _ := claims["iss"].(string)
	if iss == "" {
		iss = "no issuer"
	}
	fmt.Fprintf(w, "policy:  %s (%s), %d anyOf %s\n", in.form, in.source, len(in.policy.AnyOf), plural(len(in.policy.AnyOf), "entry", "entries"))
	fmt.Fprintf(w, "claims:  %s, from %s\n", from, iss)
	if in.grammarErr != nil {
		fmt.Fprintf(w, "warning: not a valid release policy: %v\n", in.grammarErr)
	}
	for _, l := range lintReleasePolicy(in.policy) {
		fmt.Fprintf(w, "warning: %s\n", l)
	}
	v := evaluateReleasePolicy(in.policy, claims)
	if v.Met {
		fmt.Fprintf(w, "verdict: met: %s\n", v)
		return true
	}
	fmt.Fprintf(w, "verdict: not met: %s\n", v)
	if b := v.Branches[max(v.Closest, 0):]; emulated && len(b) > 0 && !b[0].AuthorityMatch && sameAuthority(b[0].Authority, b[0].Authority) {
		// The emulated MAA is no authority of a real policy: say what the
		// claims alone would give against an authority that is a URL (one
		// that is not, no token can match; the lint says so).
		asIf := maps.Clone(claims)
		asIf["iss"] = strings.TrimRight(b[0].Authority, "/")
		fmt.Fprintf(w, "note:    the emulated MAA issues its tokens as %s; from %s the same claims would give: %s\n",
			iss, asIf["iss"], verdictWord(evaluateReleasePolicy(in.policy, asIf)))
	}
	return false
}

func verdictWord(v policyVerdict) string {
	if v.Met {
		return "met: " + v.String()
	}
	return "not met: " + v.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// ---- lint ----

// lintReleasePolicy says what a policy leaves open, entry by entry: the
// claims Microsoft recommends that an entry does not pin (VMPL 0, not
// debuggable, the host data, a compliant UVM), an authority without
// https://, and lists with nothing in them.
func lintReleasePolicy(p *releasePolicy) []string {
	var out []string
	if len(p.AnyOf) == 0 {
		return []string{"the policy's anyOf is empty: no token can meet it"}
	}
	for i, a := range p.AnyOf {
		at := fmt.Sprintf("anyOf[%d]", i)
		if !strings.HasPrefix(strings.ToLower(strings.TrimSpace(a.Authority)), "https://") {
			out = append(out, fmt.Sprintf("%s: authority %q lacks https://: it is compared with the token's issuer, which is https://HOST; write https://%s",
				at, truncate(a.Authority, 100), strings.TrimPrefix(strings.TrimSpace(a.Authority), "http://")))
		}
		if len(a.AllOf) == 0 && len(a.AnyOf) == 0 {
			out = append(out, at+": its allOf / anyOf is empty: it has no conditions")
			continue
		}
		out = append(out, lintEmptyGroups(at, a.AllOf, a.AnyOf)...)
		req := requiredEquals(a.AllOf, a.AnyOf)
		vmpl, ok := req["x-ms-sevsnpvm-vmpl"]
		switch {
		case !ok:
			out = append(out, at+": does not require x-ms-sevsnpvm-vmpl = 0: a report from a less privileged VMPL would do")
		case vmpl != "0":
			out = append(out, fmt.Sprintf("%s: requires x-ms-sevsnpvm-vmpl = %s, not 0: the guest's most privileged level is 0", at, vmpl))
		}
		switch dbg, ok := req["x-ms-sevsnpvm-is-debuggable"]; {
		case !ok:
			out = append(out, at+": does not require x-ms-sevsnpvm-is-debuggable = false: a debuggable guest, whose memory the host can read, would do")
		case dbg != "false":
			out = append(out, fmt.Sprintf("%s: allows a debuggable guest (x-ms-sevsnpvm-is-debuggable = %s), whose memory the host can read", at, dbg))
		}
		switch hd, ok := req[hostDataClaim]; {
		case !ok:
			out = append(out, at+": does not pin "+hostDataClaim+": any container group whose token meets the rest would get the key")
		case hd == strings.Repeat("0", 64):
			out = append(out, at+": "+hostDataClaim+zeroHostDataLint)
		}
		if _, ok := req["x-ms-compliance-status"]; !ok {
			out = append(out, at+": has no x-ms-compliance-status claim: a UVM that Azure did not sign (azure-compliant-uvm) would do")
		}
	}
	return out
}

// zeroHostDataLint ends the lint of an all-zero host data, which the
// emulator without a security policy really reports.
const zeroHostDataLint = " is all zeros, the examples' placeholder (and the emulator's without a security policy): put the skr digest of your security policy"

// lintEmptyGroups names nested allOf / anyOf groups with nothing in them.
func lintEmptyGroups(at string, allOf, anyOf []releaseClaim) []string {
	var out []string
	for j, c := range slices.Concat(allOf, anyOf) {
		if c.Claim != "" {
			continue
		}
		where := fmt.Sprintf("%s, condition %d", at, j)
		if len(c.AllOf) == 0 && len(c.AnyOf) == 0 {
			out = append(out, where+": a group whose allOf / anyOf is empty")
			continue
		}
		out = append(out, lintEmptyGroups(where, c.AllOf, c.AnyOf)...)
	}
	return out
}

// requiredEquals are the equals conditions every token meeting the entry
// must satisfy, by claim, in the string form policies compare: those of
// an allOf, of allOf groups within it, and of an anyOf with one member.
func requiredEquals(allOf, anyOf []releaseClaim) map[string]string {
	req := map[string]string{}
	var walk func(conds []releaseClaim, all bool)
	walk = func(conds []releaseClaim, all bool) {
		if !all && len(conds) != 1 {
			return
		}
		for _, c := range conds {
			if c.Claim == "" {
				if len(c.AllOf) > 0 {
					walk(c.AllOf, true)
				} else {
					walk(c.AnyOf, false)
				}
				continue
			}
			if v, err := policyValueString(c.Equals); len(c.Equals) > 0 && err == nil {
				req[c.Claim] = v
			}
		}
	}
	if len(allOf) > 0 {
		walk(allOf, true)
	} else {
		walk(anyOf, false)
	}
	return req
}
