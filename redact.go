package main

import (
	"context"
	"net/http"
	"regexp"
	"slices"
	"strings"
)

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// maxEchoed bounds a caller-supplied string that an error message or a log
// line repeats: a request must not turn into megabytes of log or answer.
const maxEchoed = 200

// bounded is s as an error message or a log line may repeat it: at most
// maxEchoed bytes, with an ellipsis when cut.
func bounded(s string) string { return truncate(s, maxEchoed) }

type secretsKey struct{}

// withSecrets names values that no upstream error may repeat, beyond the
// request's own bearer token (which is always redacted).
func withSecrets(ctx context.Context, secrets ...string) context.Context {
	prev, _ := ctx.Value(secretsKey{}).([]string)
	return context.WithValue(ctx, secretsKey{}, append(slices.Clip(prev), secrets...))
}

// requestSecrets are the secrets one upstream request carries.
func requestSecrets(ctx context.Context, req *http.Request) []string {
	secrets, _ := ctx.Value(secretsKey{}).([]string)
	if auth := req.Header.Get("Authorization"); auth != "" {
		_, token, _ := strings.Cut(auth, " ")
		secrets = append(slices.Clip(secrets), auth, token)
	}
	return secrets
}

// jwtShaped matches compact JWS/JWT: Entra and IMDS access tokens, MAA
// tokens and federated assertions all look like this.
var jwtShaped = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*`)

// redactSecrets removes the given secrets (those long enough to be one)
// and anything shaped like a token from s.
func redactSecrets(s string, secrets []string) string {
	for _, secret := range secrets {
		if len(secret) >= 8 {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return jwtShaped.ReplaceAllString(s, "[redacted token]")
}

// oneLine keeps an error on a single log line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
