package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// emulatedIdentityIssuer is the iss of the emulated identity's tokens. It
// names no host: nothing fetches it.
const emulatedIdentityIssuer = "urn:skr:emulated-identity"

// emulatedIdentityName is how the sidecar names the token source in
// messages.
const emulatedIdentityName = "emulated managed identity (skr -emulate)"

// emulatedTokenLifetime is how long an emulated identity token is good
// for, as long as IMDS tokens typically are.
const emulatedTokenLifetime = 24 * time.Hour

// emulatedIdentity issues bearer tokens for the emulated vaults, in place
// of IMDS or workload identity: ES256 JWTs with the vault's resource as
// audience, which the emulated vaults check.
type emulatedIdentity struct {
	azure *emulatedAzure
}

// source is the identity as the sidecar's token provider uses it: the same
// cache, sharing and refusal handling as a real identity.
func (id *emulatedIdentity) source() identitySource {
	return identitySource{name: emulatedIdentityName, fetch: id.issue}
}

// issue makes a token for resource.
func (id *emulatedIdentity) issue(ctx context.Context, resource string) (string, time.Time, error) {
	if err := id.azure.keys.wait(ctx); err != nil {
		return "", time.Time{}, err
	}
	now := id.azure.now()
	exp := now.Add(emulatedTokenLifetime)
	claims, err := json.Marshal(map[string]any{
		"iss": emulatedIdentityIssuer, "aud": resource, "sub": "skr-emulated-identity",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": exp.Unix(),
	})
	if err != nil {
		return "", time.Time{}, err
	}
	tok, err := signJWS(map[string]any{"typ": "JWT", "kid": id.azure.keys.identityKid}, claims, id.azure.keys.identityKey, "ES256")
	if err != nil {
		return "", time.Time{}, fmt.Errorf("emulated identity: %w", err)
	}
	return tok, exp, nil
}

// errForeignToken says a bearer token is not the emulated identity's: a
// caller's own token, which the emulated vault cannot check.
var errForeignToken = errors.New("not a token of the emulated identity")

// check verifies a token of the emulated identity for resource. It returns
// errForeignToken for any other token, and another error for a token that
// claims to be the identity's but does not verify, is expired, or is for
// another audience. The caller has waited for the run's keys.
func (id *emulatedIdentity) check(token, resource string) error {
	jws, err := parseJWS(token)
	if err != nil {
		return errForeignToken
	}
	var claims map[string]any
	dec := json.NewDecoder(bytes.NewReader(jws.Payload))
	dec.UseNumber()
	if dec.Decode(&claims) != nil {
		return errForeignToken
	}
	iss, _ := claims["iss"].(string)
	ours := subtle.ConstantTimeCompare([]byte(jws.Header.Kid), []byte(id.azure.keys.identityKid)) == 1
	if iss != emulatedIdentityIssuer && !ours {
		return errForeignToken
	}
	if err := jws.verify(&id.azure.keys.identityKey.PublicKey, "ES256"); err != nil {
		return fmt.Errorf("the emulated identity's token does not verify: %w", err)
	}
	if err := checkJWTTimesRequiringExp(claims, id.azure.now(), time.Minute); err != nil {
		return fmt.Errorf("the emulated identity's token: %w", err)
	}
	if aud, _ := claims["aud"].(string); aud != resource {
		return fmt.Errorf("the emulated identity's token is for %q, not for %s", truncate(aud, 100), resource)
	}
	return nil
}
