package main

// Bearer tokens for Key Vault / Managed HSM: AKS workload identity, then
// the IMDS managed identity; cached until shortly before they expire.
//
// STUB: owned by the "jose" helper; signatures are the contract.

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"
)

type tokenConfig struct {
	IdentityClientID string              // identity.client_id of SkrSideCarArgs
	Getenv           func(string) string // AZURE_* and AZURE_POD_IDENTITY_AUTHORITY_HOST
	Client           *http.Client
	Log              *slog.Logger
	Now              func() time.Time // nil = time.Now
}

type tokenProvider struct{}

func newTokenProvider(cfg tokenConfig) *tokenProvider { return &tokenProvider{} }

// Token returns a bearer token for the vault host and the name of the
// identity source that produced it ("workload identity (client id ...)",
// "managed identity (IMDS, client id ...)").
func (p *tokenProvider) Token(ctx context.Context, vaultHost string) (token, source string, err error) {
	return "", "", errors.New("stub")
}

// vaultResource is the token audience for a vault host: Managed HSM or Key
// Vault, with sovereign-cloud suffixes.
func vaultResource(host string) string { return "https://vault.azure.net" }
