package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"
)

// maxRequestBody bounds what a client may send us.
const maxRequestBody = 1 << 20

// statusFor maps any error to the status the sidecar answers with: the
// one place where a failure becomes an HTTP status.
func statusFor(err error) int {
	switch errorKind(err) {
	case kindInvalid:
		return http.StatusBadRequest
	case kindDenied:
		return http.StatusForbidden
	case kindNoRoute:
		return http.StatusNotFound
	case kindBadMethod:
		return http.StatusMethodNotAllowed
	case kindUpstream:
		return http.StatusBadGateway
	case kindUnavailable:
		return http.StatusServiceUnavailable
	case kindTimeout:
		return http.StatusGatewayTimeout
	case kindUnsupported:
		return http.StatusNotImplemented
	case kindTooLarge:
		return http.StatusRequestEntityTooLarge
	case kindPrecondition:
		return http.StatusConflict
	case kindProtocol:
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// errShuttingDown answers the requests still running when the shutdown
// grace is over.
var errShuttingDown = newError(kindUnavailable, nil, "shutting down")

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

// jsonEndpoint is what sets one JSON endpoint apart from the others; the
// rest (deadline, answer, error status) is serveJSON's.
type jsonEndpoint[Req any] struct {
	// decode reads and checks the request. Its failures are the caller's
	// mistakes: answered, not logged.
	decode func(*http.Request) (Req, error)
	// call does the work under the request deadline and returns the JSON
	// answer, or the step that failed (for the log) and why.
	call func(ctx context.Context, req Req) (resp any, step string, err error)
	// logOutcome logs how call ended to log, which carries the request's
	// id and the upstream request ids; err is nil on success.
	logOutcome func(log *slog.Logger, req Req, step string, elapsed time.Duration, err error)
}

// serveJSON answers one request to endpoint e.
func serveJSON[Req any](s *server, w http.ResponseWriter, r *http.Request, e jsonEndpoint[Req]) {
	req, err := e.decode(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	start := time.Now()
	resp, step, err := e.call(ctx, req)
	e.logOutcome(s.log.With(correlationFrom(ctx).logAttrs()...), req, step, time.Since(start).Round(time.Microsecond), err)
	if err != nil && s.stopping.Err() != nil {
		err = errShuttingDown
	}
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// logFailures is a logOutcome for endpoints that log only their failures,
// as msg with the error.
func logFailures[Req any](msg string) func(*slog.Logger, Req, string, time.Duration, error) {
	return func(log *slog.Logger, _ Req, _ string, _ time.Duration, err error) {
		if err != nil {
			log.Warn(msg, "err", err)
		}
	}
}

// decodeBody reads a bounded JSON request body into v. Unknown fields are
// ignored, as the contract says; trailing data after the object is not.
func decodeBody(r *http.Request, v any) error {
	body, err := readRequestBody(r)
	if err != nil {
		return err
	}
	return decodeRequestJSON(body, v)
}

// decodeRequestJSON is decodeBody's parser, separate so it can be fuzzed.
func decodeRequestJSON(body []byte, v any) error {
	if len(body) > maxRequestBody {
		return newError(kindInvalid, nil, "request body is larger than %d bytes", maxRequestBody)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return newError(kindInvalid, nil, "request body is empty: send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return newError(kindInvalid, err, "request body is not the expected JSON object")
	}
	if dec.More() {
		return newError(kindInvalid, nil, "request body has data after the JSON object")
	}
	return nil
}

// requiredBase64 decodes a required base64 request field.
func requiredBase64(field, value string) ([]byte, error) {
	if value == "" {
		return nil, newError(kindInvalid, nil, "missing field %q", field)
	}
	b, err := decodeBase64(value)
	if err != nil {
		return nil, newError(kindInvalid, err, "field %q is not valid base64 (standard or URL-safe, padded or not)", field)
	}
	return b, nil
}

// readRequestBody reads a bounded body; decodeRequestJSON refuses one over
// the limit.
func readRequestBody(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody+1))
	if err != nil {
		return nil, newError(kindInvalid, err, "read request body")
	}
	return body, nil
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+path, func(w http.ResponseWriter, r *http.Request) {
			if c := correlationFrom(r.Context()); c != nil {
				c.route = path
			}
			h(w, r)
		})
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", method)
			writeError(w, newError(kindBadMethod, nil, "method %s is not allowed on %s: use %s", bounded(r.Method), path, method))
		})
	}
	handle("GET", "/status", s.handleStatus)
	handle("GET", "/livez", s.handleLivez)
	handle("GET", "/readyz", s.handleReadyz)
	handle("GET", "/metrics", s.handleMetrics)
	handle("POST", "/attest/raw", s.handleAttestRaw)
	handle("POST", "/attest/combined", s.handleAttestCombined)
	handle("POST", "/attest/maa", s.handleAttestMAA)
	handle("POST", "/key/release", s.handleKeyRelease)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, newError(kindNoRoute, nil, "no endpoint %s: see /status, /livez, /readyz, /metrics, /attest/raw, /attest/combined, /attest/maa, /key/release", bounded(r.URL.Path)))
	})
	return s.logRequests(refuseBrowsers(permitPeers(s.cfg.SocketUIDs, mux)))
}

// refuseBrowsers keeps web pages away from the API. A page the workload's
// user opens can send requests to localhost, and a DNS name rebound to
// 127.0.0.1 makes them same-origin; but a browser always names the page's
// origin in Origin and the name it resolved in Host, while the clients of
// the sidecar (curl, the test clients, Microsoft's) send no Origin and call
// it by a loopback name or address. A Unix socket is out of a browser's
// reach, so only its Origin is checked.
func refuseBrowsers(next http.Handler) http.Handler {
	return refuseOrigin(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !overUnixSocket(r) && !isLoopbackHost(r.Host) {
			writeError(w, newError(kindDenied, nil, "Host %q is refused: call the sidecar as localhost, 127.0.0.1 or [::1]", bounded(r.Host)))
			return
		}
		next.ServeHTTP(w, r)
	}))
}

// refuseOrigin refuses every request that names a web page's origin.
func refuseOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Header["Origin"]; ok {
			writeError(w, newError(kindDenied, nil, "requests with an Origin header are refused: the sidecar serves local programs, not web pages"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// isLoopbackHost reports whether a Host header names this machine:
// localhost or a loopback address, with or without a port.
func isLoopbackHost(hostport string) bool {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// overUnixSocket reports whether r came in on a Unix socket.
func overUnixSocket(r *http.Request) bool {
	addr, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	return addr != nil && addr.Network() == "unix"
}

// logRequests logs each request's id, method, path, status and duration,
// and counts it; never bodies or headers, which may carry tokens.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		level := slog.LevelInfo
		if rec.status >= 500 {
			level = slog.LevelError
		} else if rec.status >= 400 {
			level = slog.LevelWarn
		}
		c := correlationFrom(r.Context())
		if c != nil {
			s.metrics.request(c.route, rec.status)
		}
		attrs := append(c.logAttrs(), "method", bounded(r.Method), "path", bounded(r.URL.Path), "status", rec.status, "duration", time.Since(start).Round(time.Microsecond))
		s.log.Log(r.Context(), level, "request", attrs...)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := map[string]any{
		"message":  "Status OK",
		"version":  version,
		"emulated": s.tee != nil && s.tee.Emulated(),
		"uptime":   time.Since(s.started).Round(time.Second).String(),
	}
	if s.tee != nil {
		st["tee"] = s.tee.Name()
	} else {
		st["tee"] = "none"
		st["tee_error"] = s.teeErr.Error()
	}
	if s.tee != nil && s.tee.Emulated() {
		st["warning"] = "EMULATED EVIDENCE: reports are signed by a software VCEK that no real verifier trusts"
	}
	if s.cfg.AllowTestingMismatchedTCB {
		st["testing_warning"] = mismatchedTCBWarning
	}
	if d, ok := s.inputs.PolicyDigest(); ok {
		st["host_data"] = fmt.Sprintf("%x", d)
	}
	if s.inputs.Source != "" {
		st["security_context"] = s.inputs.Source
	}
	if a := s.emulatedAzureStatus(); a != nil {
		st["emulated_azure"] = a
	}
	writeJSON(w, http.StatusOK, st)
}
