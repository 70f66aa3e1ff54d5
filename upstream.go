package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxUpstreamBody bounds what we read from any upstream service; the largest
// legitimate answers (KDS chains, release JWS with x5c) are a few tens of KiB.
const maxUpstreamBody = 4 << 20

// maxIdleUpstreamConns bounds the connections to upstream services kept
// open for reuse, all hosts together.
const maxIdleUpstreamConns = 32

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
	RequestID  string // the service's x-ms-request-id, for a support case
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
	if e.RequestID != "" {
		msg += fmt.Sprintf(" [x-ms-request-id %s]", e.RequestID)
	}
	return msg
}

// isTimeout reports whether err comes from a deadline rather than a refusal.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retryPolicy bounds the retries of one upstream call.
type retryPolicy struct {
	Attempts  int           // total tries, at least 1
	BaseDelay time.Duration // first backoff; doubles each try, with full jitter
	MaxDelay  time.Duration // cap on one backoff, including a Retry-After
	// Retryable says whether a status is worth another try. Nil means
	// 408, 429 and 5xx.
	Retryable func(status int) bool
	// Wait pauses between tries and returns early with ctx's error. Nil
	// means a real timer; tests record the delays instead of sleeping.
	Wait func(ctx context.Context, d time.Duration) error
	// OnRetry, when set, counts each retry of a call to service.
	OnRetry func(service string)
}

// defaultRetry suits a request path: a handful of quick tries.
var defaultRetry = retryPolicy{Attempts: 4, BaseDelay: 200 * time.Millisecond, MaxDelay: 5 * time.Second}

func defaultRetryable(status int) bool {
	return status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
}

// doWithRetry sends the request built by newReq until it gets a 2xx, a final
// error status, or runs out of tries or time. It returns the bounded body of
// a 2xx answer; a final non-2xx answer comes back as *upstreamError, a
// service that could not be reached or whose answer broke off as
// kindUpstream (kindTimeout when a deadline ran out), naming the host.
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
		tagUpstreamRequest(ctx, req)
		var retryAfter time.Duration
		resp, err := client.Do(req)
		if err != nil {
			err = unreachable(service, req.URL.Host, 0, err)
		} else {
			noteUpstreamResponse(ctx, service, resp.Header)
			body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody+1))
			resp.Body.Close()
			switch {
			case rerr != nil:
				err = unreachable(service, req.URL.Host, resp.StatusCode, rerr)
			case len(body) > maxUpstreamBody:
				return nil, nil, newError(kindUpstream, nil, "%s at %s answered more than %d bytes", service, req.URL.Host, maxUpstreamBody)
			case resp.StatusCode/100 == 2:
				return body, resp.Header, nil
			default:
				ue := parseUpstreamError(service, resp.StatusCode, body, requestSecrets(ctx, req))
				ue.RequestID = upstreamRequestID(resp.Header)
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
		if p.OnRetry != nil {
			p.OnRetry(service)
		}
		if log != nil {
			log.Debug("retrying upstream call", "service", service, "attempt", attempt, "delay", delay, "err", err)
		}
		if err := p.wait(ctx, delay); err != nil {
			return nil, nil, fmt.Errorf("%s: %w (last error: %v)", service, err, lastErr)
		}
	}
}

// unreachable is a call that got no usable answer: a name that does not
// resolve, a connection refused or reset, an answer (status, 0 = none) cut
// short. That is the service's or the network's failure, not the sidecar's:
// kindUpstream, or kindTimeout when a deadline ran out. The transport's own
// error names the URL; what is kept of it is its cause, after the service
// and host.
func unreachable(service, host string, status int, err error) error {
	kind, what := kindUpstream, "could not be reached"
	if isTimeout(err) {
		kind, what = kindTimeout, "did not answer in time"
	}
	if status != 0 {
		what = fmt.Sprintf("sent an answer (HTTP %d) that broke off", status)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return newError(kind, err, "%s at %s %s", service, host, what)
}

// wait pauses d, or until ctx ends.
func (p retryPolicy) wait(ctx context.Context, d time.Duration) error {
	if p.Wait != nil {
		return p.Wait(ctx, d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
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

// upstreamRoots is the pool the upstream client trusts (nil = the system
// roots, which honour SSL_CERT_FILE): the JWS signer chains to the same.
func (s *server) upstreamRoots() *x509.CertPool {
	if tr, ok := s.client.Transport.(*http.Transport); ok && tr.TLSClientConfig != nil {
		return tr.TLSClientConfig.RootCAs
	}
	return nil
}

// newUpstreamClient is the one HTTP client for MAA, Key Vault, identity and
// certificate services: bounded timeouts, no proxy for the link-local
// metadata endpoints, TLS 1.2+ against the given roots.
func newUpstreamClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	tr.Proxy = func(r *http.Request) (*url.URL, error) {
		if isMetadataHost(r.URL.Hostname()) {
			return nil, nil
		}
		return http.ProxyFromEnvironment(r)
	}
	tr.ResponseHeaderTimeout = 20 * time.Second
	tr.TLSHandshakeTimeout = 10 * time.Second
	// Callers choose the MAA and vault hosts, so the connections kept open
	// for reuse must be bounded across all hosts, not per host: HTTP/1.1
	// idle connections obey MaxIdleConns (oldest closed first), while
	// HTTP/2 connections would stay, one per host ever called, until they
	// time out.
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetHTTP1(true)
	tr.MaxIdleConns = maxIdleUpstreamConns
	tr.MaxIdleConnsPerHost = 16
	return &http.Client{
		Transport: tr,
		Timeout:   25 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			// Never follow a redirect to another host or down to http:
			// the request may carry evidence or a bearer token.
			if len(via) >= 3 || req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

func isMetadataHost(host string) bool {
	return host == "169.254.169.254"
}
