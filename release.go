package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// keyReleaseRequest is the /key/release body.
type keyReleaseRequest struct {
	MAAEndpoint string `json:"maa_endpoint"`
	AKVEndpoint string `json:"akv_endpoint"`
	Kid         string `json:"kid"`
	AccessToken string `json:"access_token"`
}

// keyRef names a key in a vault: a name, optionally pinned to a version.
type keyRef struct {
	Name    string
	Version string // "" = the latest version
}

func (k keyRef) String() string {
	if k.Version == "" {
		return k.Name
	}
	return k.Name + "/" + k.Version
}

// keyReleaseParams is a validated /key/release request.
type keyReleaseParams struct {
	MAAHost     string
	VaultHost   string
	Key         keyRef
	AccessToken string

	SignedBy string // set by releaseKey: whose certificate signed the answer, for the log
}

// maxAccessToken bounds a caller's bearer token (Entra tokens are 1–4 KiB).
const maxAccessToken = 16 << 10

// decodeKeyReleaseRequest parses and validates the body of /key/release.
func decodeKeyReleaseRequest(body []byte) (*keyReleaseParams, error) {
	var req keyReleaseRequest
	if err := decodeRequestJSON(body, &req); err != nil {
		return nil, err
	}
	maaHost, err := normalizeEndpoint("maa_endpoint", req.MAAEndpoint)
	if err != nil {
		return nil, err
	}
	vaultHost, err := normalizeEndpoint("akv_endpoint", req.AKVEndpoint)
	if err != nil {
		return nil, err
	}
	key, err := parseKeyRef(req.Kid)
	if err != nil {
		return nil, err
	}
	tok := strings.TrimSpace(req.AccessToken)
	if len(tok) > maxAccessToken {
		return nil, newError(kindInvalid, nil, "field \"access_token\" is longer than %d bytes", maxAccessToken)
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] >= 0x7f {
			return nil, newError(kindInvalid, nil, "field \"access_token\" must be a bare bearer token (printable ASCII, no spaces, no \"Bearer \" prefix)")
		}
	}
	return &keyReleaseParams{MAAHost: maaHost, VaultHost: vaultHost, Key: key, AccessToken: tok}, nil
}

// parseKeyRef accepts a key name as Microsoft's sidecar does, and also
// NAME/VERSION to pin a version (Key Vault versions are 32 hex digits).
func parseKeyRef(kid string) (keyRef, error) {
	kid = strings.TrimSpace(kid)
	if kid == "" {
		return keyRef{}, newError(kindInvalid, nil, "missing field %q", "kid")
	}
	name, ver, hasVer := strings.Cut(kid, "/")
	if !isKeyName(name) {
		return keyRef{}, newError(kindInvalid, nil, "field \"kid\": %q is not a key name (1-127 letters, digits and dashes), optionally followed by /VERSION", bounded(kid))
	}
	if hasVer && !isKeyVersion(ver) {
		return keyRef{}, newError(kindInvalid, nil, "field \"kid\": version %q is not 32 hex digits", bounded(ver))
	}
	return keyRef{Name: name, Version: ver}, nil
}

func (s *server) handleKeyRelease(w http.ResponseWriter, r *http.Request) {
	serveJSON(s, w, r, jsonEndpoint[*keyReleaseParams]{
		decode: func(r *http.Request) (*keyReleaseParams, error) {
			body, err := readRequestBody(r)
			if err != nil {
				return nil, err
			}
			p, err := decodeKeyReleaseRequest(body)
			clear(body) // our copy of the raw request; the decoded token lives on in p
			return p, err
		},
		call: func(ctx context.Context, p *keyReleaseParams) (any, string, error) {
			key, step, err := s.releaseKey(ctx, p)
			if err != nil {
				return nil, step, err
			}
			return map[string]string{"key": key}, "", nil
		},
		logOutcome: func(log *slog.Logger, p *keyReleaseParams, step string, elapsed time.Duration, err error) {
			attrs := []any{"kid", p.Key.String(), "akv_endpoint", p.VaultHost, "maa_endpoint", p.MAAHost}
			if err != nil {
				log.Warn("key release failed", append(attrs, "step", step, "duration", elapsed, "err", err)...)
				return
			}
			log.Info("key released", append(attrs, "signed_by", p.SignedBy, "duration", elapsed)...)
		},
	})
}

// releaseKey does one release and returns the key as a JWK JSON string, or
// the step that failed.
func (s *server) releaseKey(ctx context.Context, p *keyReleaseParams) (key, step string, err error) {
	defer func() { s.metrics.release(p.VaultHost, err) }()
	if err := s.refuseUnservedNames(p.MAAHost, p.VaultHost); err != nil {
		return "", "request", err
	}
	if err := s.cfg.Args.Allow.permitRelease(p); err != nil {
		return "", "allow", err
	}
	// Before any token is fetched: without evidence there is no release.
	if err := s.requireTEE(); err != nil {
		return "", "evidence", err
	}
	bearer, source, err := s.bearerToken(ctx, p)
	if err != nil {
		return "", "token", err
	}
	cred, reused, err := s.releaseCredential(ctx, p)
	if err != nil {
		return "", "MAA", err
	}
	defer s.rel.put(cred)
	s.metrics.credential(reused)
	correlationFrom(ctx).note("MAA", cred.maaRequestID)
	s.log.Log(ctx, levelTrace, "release credential", "maa_endpoint", p.MAAHost, "reused", reused, "wrapping_kid", cred.key.kid)

	start := time.Now()
	jws, err := s.requestKeyRelease(ctx, p.VaultHost, p.Key, bearer, cred.token)
	s.metrics.since(stageKeyVault, start)
	if err != nil {
		var ue *upstreamError
		if p.AccessToken == "" && errors.As(err, &ue) && ue.StatusCode == http.StatusUnauthorized {
			s.tokens.Forget(p.VaultHost)
		}
		return "", "Key Vault", s.keyVaultFailure(ctx, err, p, bearer, source, cred)
	}
	s.log.Log(ctx, levelTrace, "Key Vault answered", "kid", p.Key.String(), "akv_endpoint", p.VaultHost, "duration", time.Since(start).Round(time.Microsecond))

	start = time.Now()
	env, err := s.verifiedRelease(jws, p, cred.key)
	s.metrics.since(stageVerify, start)
	if err != nil {
		return "", "verify", err
	}
	start = time.Now()
	out, err := env.unwrap(cred.key)
	s.metrics.since(stageUnwrap, start)
	if err != nil {
		return "", "unwrap", newError(kindUpstream, err, "unwrap: key %q released by %s could not be unwrapped", p.Key.String(), p.VaultHost)
	}
	return out, "", nil
}

// verifiedRelease checks the vault's signed answer and that it is for this
// request and wrapped to wk, and returns its payload.
func (s *server) verifiedRelease(jws string, p *keyReleaseParams, wk *wrappingKey) (*releaseEnvelope, error) {
	payload, signer, err := verifyReleaseJWS(jws, p.VaultHost, s.releaseRoots(p.VaultHost), time.Now())
	if err != nil {
		return nil, newError(kindDenied, err, "verify: the Key Vault response for key %q from %s failed verification; no key was released", p.Key.String(), p.VaultHost)
	}
	p.SignedBy = certName(signer)
	env, err := parseReleasePayload(payload)
	if err != nil {
		return nil, newError(kindUpstream, err, "verify: the signed Key Vault response for key %q from %s is malformed", p.Key.String(), p.VaultHost)
	}
	if err := env.checkBinding(p.Key, p.VaultHost, wk); err != nil {
		return nil, newError(kindDenied, err, "verify: the Key Vault response for key %q from %s is not for this request", p.Key.String(), p.VaultHost)
	}
	return env, nil
}

// releaseCredential is the wrapping key and MAA token to release with. One
// is shared by the releases from Key Vault and Managed HSM hosts; any other
// host gets a fresh one that serves this release only, so that a rogue
// "vault" never holds a token that a real vault would honour for another
// release.
func (s *server) releaseCredential(ctx context.Context, p *keyReleaseParams) (cred *releaseCredential, reused bool, err error) {
	if !s.tokens.isVaultHost(p.VaultHost) && !s.servesEmulatedVault(p.VaultHost) {
		cred, err = s.rel.fresh(ctx, p.MAAHost)
		return cred, false, err
	}
	return s.rel.credential(ctx, p.MAAHost)
}

// attestForRelease is the releaser's attestFunc: evidence over a wrapping
// key's JWK Set, and the MAA token for it.
func (s *server) attestForRelease(ctx context.Context, maaHost string, runtimeData []byte) (attestation, error) {
	ev, err := s.evidence(ctx, runtimeData)
	if err != nil {
		return attestation{}, fmt.Errorf("evidence for MAA: %w", err)
	}
	tok, err := s.attestMAA(ctx, maaHost, ev, runtimeData)
	if err != nil {
		return attestation{}, err
	}
	return attestation{token: tok.Token, expires: tok.Expires, hostData: hex.EncodeToString(ev.Parsed.HostData[:]), maaRequestID: tok.RequestID}, nil
}

// bearerToken is the request's access_token, else one from the identity
// sources (workload identity, then IMDS). source names where it came from,
// for error messages; it never holds the token.
func (s *server) bearerToken(ctx context.Context, p *keyReleaseParams) (token, source string, err error) {
	if p.AccessToken != "" {
		return p.AccessToken, "access_token from the request", nil
	}
	start := time.Now()
	tok, source, err := s.tokens.Token(ctx, p.VaultHost)
	s.metrics.since(stageIdentityToken, start)
	if err != nil {
		if source == "" {
			source = "workload identity or IMDS managed identity"
		}
		return "", source, fmt.Errorf("token: get a bearer token for %s (%s): %w", p.VaultHost, source, err)
	}
	if tok == "" {
		return "", source, newError(kindUpstream, nil, "token: %s returned an empty bearer token for %s", source, p.VaultHost)
	}
	s.log.Log(ctx, levelTrace, "bearer token ready", "step", "token", "source", source, "duration", time.Since(start).Round(time.Microsecond))
	return tok, source, nil
}

// keyVaultFailure turns a Key Vault refusal into the status and hint a user
// can act on; a 403 is explained against the key's release policy.
func (s *server) keyVaultFailure(ctx context.Context, err error, p *keyReleaseParams, bearer, source string, cred *releaseCredential) error {
	var ue *upstreamError
	if !errors.As(err, &ue) {
		return fmt.Errorf("Key Vault: release of key %q at %s: %w", p.Key.String(), p.VaultHost, err)
	}
	switch ue.StatusCode {
	case http.StatusUnauthorized:
		return newError(kindDenied, err,
			"Key Vault: %s did not accept the bearer token (%s) for key %q: check that the token is current and its audience is %s",
			p.VaultHost, source, p.Key.String(), vaultResource(p.VaultHost))
	case http.StatusForbidden:
		return s.explainRefusal(ctx, ue, p, bearer, source, cred)
	case http.StatusNotFound:
		return newError(kindUpstream, err,
			"Key Vault: %s has no key %q: check the key name (and version) and the vault endpoint", p.VaultHost, p.Key.String())
	}
	return fmt.Errorf("Key Vault: release of key %q at %s: %w", p.Key.String(), p.VaultHost, err)
}
