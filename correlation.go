package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"sync"
)

// Correlation: a support case should need no redeploy with debug logging.
// Every response carries an X-Request-Id that the request's log lines
// share; the sidecar sends it upstream as x-ms-client-request-id, which
// Azure services record on their side; and the x-ms-request-id that MAA
// and Key Vault answer with goes into the log line of each release or
// attestation and into the text of their errors.

const (
	requestIDHeader         = "X-Request-Id"
	clientRequestIDHeader   = "x-ms-client-request-id"
	upstreamRequestIDHeader = "x-ms-request-id"
	maxUpstreamRequestID    = 128
)

// correlatedServices are the upstream services whose request ids a log
// line names, and the attribute each goes under.
var correlatedServices = []struct{ service, attr string }{
	{"MAA", "maa_request_id"},
	{"Key Vault", "akv_request_id"},
}

// correlation is what one API request's log lines share: its id and the
// request ids of the services it called.
type correlation struct {
	id    string
	route string // the API endpoint that answered, for metrics; "" = none

	mu       sync.Mutex
	upstream map[string]string // service → its first x-ms-request-id
}

type correlationKey struct{}

func withCorrelation(ctx context.Context, c *correlation) context.Context {
	return context.WithValue(ctx, correlationKey{}, c)
}

// correlationFrom is the request's correlation; nil outside a request, e.g.
// in an attestation shared by several releases.
func correlationFrom(ctx context.Context) *correlation {
	c, _ := ctx.Value(correlationKey{}).(*correlation)
	return c
}

// newRequestID is a random UUID (version 4): the form Azure services expect
// in x-ms-client-request-id.
func newRequestID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// note records service's request id, the first one per service: for a
// release that is the release call's, not that of the policy read after a
// refusal.
func (c *correlation) note(service, requestID string) {
	if c == nil || requestID == "" {
		return
	}
	for _, cs := range correlatedServices {
		if cs.service != service {
			continue
		}
		c.mu.Lock()
		if c.upstream == nil {
			c.upstream = map[string]string{}
		}
		if _, seen := c.upstream[service]; !seen {
			c.upstream[service] = requestID
		}
		c.mu.Unlock()
	}
}

// logAttrs are the attributes of the request's log lines: its id and the
// upstream request ids seen so far.
func (c *correlation) logAttrs() []any {
	if c == nil {
		return nil
	}
	attrs := []any{"request_id", c.id}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cs := range correlatedServices {
		if id := c.upstream[cs.service]; id != "" {
			attrs = append(attrs, cs.attr, id)
		}
	}
	return attrs
}

// upstreamRequestID is a service's x-ms-request-id, when it is a plausible
// id: it reaches logs and error messages, so anything else is dropped.
func upstreamRequestID(h http.Header) string {
	id := h.Get(upstreamRequestIDHeader)
	if id == "" || len(id) > maxUpstreamRequestID {
		return ""
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':') {
			return ""
		}
	}
	return id
}

// tagUpstreamRequest sends the API request's id along with an upstream call
// made on its behalf.
func tagUpstreamRequest(ctx context.Context, req *http.Request) {
	if c := correlationFrom(ctx); c != nil && req.Header.Get(clientRequestIDHeader) == "" {
		req.Header.Set(clientRequestIDHeader, c.id)
	}
}

// noteUpstreamResponse records a service's request id for the API request
// the call was made for.
func noteUpstreamResponse(ctx context.Context, service string, h http.Header) {
	correlationFrom(ctx).note(service, upstreamRequestID(h))
}

// withRequestID gives every request an id: in the X-Request-Id response
// header, in the request's context for its log lines and upstream calls.
// The id is always made here: a caller-chosen one would put
// caller-supplied text into the log.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &correlation{id: newRequestID()}
		w.Header().Set(requestIDHeader, c.id)
		next.ServeHTTP(w, r.WithContext(withCorrelation(r.Context(), c)))
	})
}
