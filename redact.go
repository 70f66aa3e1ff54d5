package main

import (
	"context"
	"net/http"
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

// redactSecrets removes the given secrets (those long enough to be one)
// and anything shaped like a token from s.
func redactSecrets(s string, secrets []string) string {
	for _, secret := range secrets {
		if len(secret) >= 8 {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	return redactJWTShaped(s)
}

// redactJWTShaped replaces everything shaped like a compact JWS or JWT:
// Entra and IMDS access tokens, MAA tokens and federated assertions all
// look like this. The shape is "eyJ" and at least two more URL-safe base64
// bytes, a dot, at least two, a dot, and any number.
func redactJWTShaped(s string) string {
	var out strings.Builder
	done := 0 // s[:done] is in out
	for {
		start, end := nextJWTShaped(s, done)
		if start < 0 {
			break
		}
		out.WriteString(s[done:start])
		out.WriteString("[redacted token]")
		done = end
	}
	if done == 0 {
		return s
	}
	out.WriteString(s[done:])
	return out.String()
}

// nextJWTShaped finds the first JWT-shaped s[start:end] at or after from,
// start = -1 when there is none. It walks the runs of base64 bytes, looking
// at each once, so it takes time linear in len(s).
func nextJWTShaped(s string, from int) (start, end int) {
	for i := from; i < len(s); {
		if !isBase64URLByte(s[i]) {
			i++
			continue
		}
		headerEnd := base64RunEnd(s, i)
		// A token starts at the run's first "eyJ": a later one has fewer
		// bytes after it and the same end.
		h := strings.Index(s[i:headerEnd], "eyJ")
		if h < 0 || headerEnd-(i+h+3) < 2 || !byteAt(s, headerEnd, '.') {
			i = headerEnd
			continue
		}
		payloadEnd := base64RunEnd(s, headerEnd+1)
		if payloadEnd-(headerEnd+1) < 2 || !byteAt(s, payloadEnd, '.') {
			// No token starts within the payload's run either: it would
			// end where the payload does, without a dot or long enough.
			i = payloadEnd
			continue
		}
		return i + h, base64RunEnd(s, payloadEnd+1)
	}
	return -1, 0
}

// base64RunEnd is where the run of URL-safe base64 bytes from i ends.
func base64RunEnd(s string, i int) int {
	for i < len(s) && isBase64URLByte(s[i]) {
		i++
	}
	return i
}

func byteAt(s string, i int, c byte) bool { return i < len(s) && s[i] == c }

// oneLine keeps an error on a single log line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
