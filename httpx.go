package main

// HTTP plumbing shared by the server and every upstream client: API errors
// with their status codes, bounded JSON decoding, lenient base64, endpoint
// normalisation and the one retry loop all upstream calls go through.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// maxRequestBody bounds what a client may send us.
const maxRequestBody = 1 << 20

// maxUpstreamBody bounds what we read from any upstream service; the largest
// legitimate answers (KDS chains, release JWS with x5c) are a few tens of KiB.
const maxUpstreamBody = 4 << 20

// apiError is an error that knows the HTTP status the sidecar answers with.
// Its message is written for the user: what failed, at which step, and what
// to do about it.
type apiError struct {
	Status int
	Msg    string
	Err    error
}

func (e *apiError) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

func (e *apiError) Unwrap() error { return e.Err }

// newAPIError wraps err with a status and a user-facing message.
func newAPIError(status int, err error, format string, args ...any) *apiError {
	return &apiError{Status: status, Msg: fmt.Sprintf(format, args...), Err: err}
}

// upstreamError is a final non-2xx answer from an upstream service, after
// retries. Body, Code and Message are bounded and redacted: a service (or
// anything posing as one) that echoes the request back must not get a
// bearer token or an MAA token into a log line or an answer.
type upstreamError struct {
	Service    string // "MAA", "Key Vault", "IMDS", "AMD KDS", ...
	StatusCode int
	Code       string // service error code, when the body carried one
	Message    string // service error message, when the body carried one
	Body       []byte
}

func (e *upstreamError) Error() string {
	msg := fmt.Sprintf("%s answered HTTP %d", e.Service, e.StatusCode)
	switch {
	case e.Code != "" && e.Message != "":
		msg += fmt.Sprintf(" (%s: %s)", e.Code, e.Message)
	case e.Message != "":
		msg += fmt.Sprintf(" (%s)", e.Message)
	case e.Code != "":
		msg += fmt.Sprintf(" (%s)", e.Code)
	case len(e.Body) > 0:
		msg += fmt.Sprintf(" (%s)", truncate(string(e.Body), 300))
	}
	return msg
}

// statusFor maps any error to the status the sidecar answers with.
func statusFor(err error) int {
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != 0 {
		return ae.Status
	}
	if isTimeout(err) {
		return http.StatusGatewayTimeout
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		if ue.StatusCode == http.StatusUnauthorized || ue.StatusCode == http.StatusForbidden {
			return http.StatusForbidden
		}
		return http.StatusBadGateway
	}
	return http.StatusInternalServerError
}

// isTimeout reports whether err comes from a deadline rather than a refusal.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// writeJSON writes v with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// writeError answers with {"error": ...} and the status err maps to.
func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, statusFor(err), map[string]string{"error": err.Error()})
}

// decodeBody reads a bounded JSON request body into v. Unknown fields are
// ignored, as the contract says; trailing data after the object is not.
func decodeBody(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		return newAPIError(http.StatusBadRequest, err, "read request body")
	}
	return decodeRequestJSON(body, v)
}

// decodeRequestJSON is decodeBody's parser, separate so it can be fuzzed.
func decodeRequestJSON(body []byte, v any) error {
	if len(body) > maxRequestBody {
		return newAPIError(http.StatusBadRequest, nil, "request body is larger than %d bytes", maxRequestBody)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return newAPIError(http.StatusBadRequest, nil, "request body is empty: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return newAPIError(http.StatusBadRequest, err, "request body is not the expected JSON object")
	}
	if dec.More() {
		return newAPIError(http.StatusBadRequest, nil, "request body has data after the JSON object")
	}
	return nil
}

// decodeBase64 accepts standard and URL-safe base64, padded or not, and
// ignores surrounding white space.
func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		if strings.ContainsAny(s, "+/") {
			return nil, errors.New("mixes the standard and URL-safe base64 alphabets")
		}
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// requiredBase64 decodes a required base64 request field.
func requiredBase64(field, value string) ([]byte, error) {
	if value == "" {
		return nil, newAPIError(http.StatusBadRequest, nil, "missing field %q", field)
	}
	b, err := decodeBase64(value)
	if err != nil {
		return nil, newAPIError(http.StatusBadRequest, err, "field %q is not valid base64 (standard or URL-safe, padded or not)", field)
	}
	return b, nil
}

// normalizeEndpoint turns a user-given HOST, HOST:PORT or https://HOST[:PORT]
// into a bare host[:port]. Plain http and anything with a path, query or user
// info is refused: these endpoints receive attestation evidence and tokens.
func normalizeEndpoint(field, s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", newAPIError(http.StatusBadRequest, nil, "missing field %q", field)
	}
	raw := s
	if !strings.Contains(s, "://") {
		raw = "https://" + s
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", newAPIError(http.StatusBadRequest, err, "field %q is not a host name", field)
	}
	if u.Scheme != "https" {
		return "", newAPIError(http.StatusBadRequest, nil, "field %q: scheme %q is refused, only https is allowed", field, u.Scheme)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Host == "" {
		return "", newAPIError(http.StatusBadRequest, nil, "field %q must be a host name with an optional :port, got %q", field, s)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", newAPIError(http.StatusBadRequest, nil, "field %q has a bad port %q", field, p)
		}
	}
	return strings.ToLower(u.Host), nil
}

// retryPolicy bounds the retries of one upstream call.
type retryPolicy struct {
	Attempts  int           // total tries, at least 1
	BaseDelay time.Duration // first backoff; doubles each try, with full jitter
	MaxDelay  time.Duration // cap on one backoff, including a Retry-After
	// Retryable says whether a status is worth another try. Nil means
	// 408, 429 and 5xx.
	Retryable func(status int) bool
}

// defaultRetry suits a request path: a handful of quick tries.
var defaultRetry = retryPolicy{Attempts: 4, BaseDelay: 200 * time.Millisecond, MaxDelay: 5 * time.Second}

func defaultRetryable(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// doWithRetry sends the request built by newReq until it gets a 2xx, a final
// error status, or runs out of tries or time. It returns the bounded body of
// a 2xx answer; a final non-2xx answer comes back as *upstreamError.
// Network errors are retried; a context cancellation or deadline is not.
func doWithRetry(ctx context.Context, client *http.Client, service string, p retryPolicy, log *slog.Logger, newReq func(context.Context) (*http.Request, error)) ([]byte, http.Header, error) {
	if p.Attempts < 1 {
		p.Attempts = 1
	}
	retryable := p.Retryable
	if retryable == nil {
		retryable = defaultRetryable
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		req, err := newReq(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("build %s request: %w", service, err)
		}
		var retryAfter time.Duration
		resp, err := client.Do(req)
		if err == nil {
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
			resp.Body.Close()
			switch {
			case rerr != nil:
				err = fmt.Errorf("read %s response: %w", service, rerr)
			case len(body) > maxUpstreamBody:
				return nil, nil, fmt.Errorf("%s response is larger than %d bytes", service, maxUpstreamBody)
			case resp.StatusCode/100 == 2:
				return body, resp.Header, nil
			default:
				ue := parseUpstreamError(service, resp.StatusCode, body, requestSecrets(ctx, req))
				if !retryable(resp.StatusCode) {
					return nil, resp.Header, ue
				}
				err = ue
				retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
			}
		}
		lastErr = err
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s: %w (last error: %v)", service, ctx.Err(), lastErr)
		}
		if attempt >= p.Attempts {
			return nil, nil, lastErr
		}
		delay := backoff(p, attempt, retryAfter)
		if log != nil {
			log.Debug("retrying upstream call", "service", service, "attempt", attempt, "delay", delay, "err", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, fmt.Errorf("%s: %w (last error: %v)", service, ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

// backoff is exponential with full jitter, or the server's Retry-After when
// it asked for one, capped either way.
func backoff(p retryPolicy, attempt int, retryAfter time.Duration) time.Duration {
	maxDelay := p.MaxDelay
	if maxDelay <= 0 {
		maxDelay = 10 * time.Second
	}
	if retryAfter > 0 {
		return min(retryAfter, maxDelay)
	}
	d := p.BaseDelay << (attempt - 1)
	if d <= 0 || d > maxDelay {
		d = maxDelay
	}
	return d/2 + rand.N(d/2+1)
}

// parseRetryAfter reads delta-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// parseUpstreamError pulls code and message out of the error shapes Azure
// services use: {"error":{"code","message"}} (MAA, Key Vault) and
// {"error","error_description"} (IMDS, Entra). Every text it keeps is
// redacted of secrets.
func parseUpstreamError(service string, status int, body []byte, secrets []string) *upstreamError {
	text := redactSecrets(string(body), secrets)
	ue := &upstreamError{Service: service, StatusCode: status, Body: []byte(truncate(text, 1024))}
	var nested struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(text), &nested) == nil && (nested.Error.Code != "" || nested.Error.Message != "") {
		ue.Code, ue.Message = truncate(nested.Error.Code, 100), truncate(nested.Error.Message, 500)
		return ue
	}
	var flat struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if json.Unmarshal([]byte(text), &flat) == nil && (flat.Error != "" || flat.Description != "") {
		ue.Code, ue.Message = truncate(flat.Error, 100), truncate(flat.Description, 500)
	}
	return ue
}

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
