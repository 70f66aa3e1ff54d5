package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The gRPC server: gRPC is HTTP/2 (here cleartext, on loopback) with
// "application/grpc" requests, each message framed by a 5-byte prefix
// (compressed flag, big-endian length) and the call's status carried in
// the grpc-status and grpc-message trailers. net/http speaks the HTTP/2
// part, so the whole protocol is this file.

// Server types of -server_type / ServerType.
const (
	serverTypeHTTP = "http"
	serverTypeGRPC = "grpc"
)

// maxGRPCMessage bounds one message in either direction; key provider
// messages are a few KiB at most.
const maxGRPCMessage = 1 << 20

func parseServerType(v string) (string, error) {
	switch t := strings.ToLower(strings.TrimSpace(v)); t {
	case serverTypeHTTP, serverTypeGRPC:
		return t, nil
	}
	return "", fmt.Errorf("server type %q is neither %q nor %q (flag -server_type, environment ServerType)", v, serverTypeHTTP, serverTypeGRPC)
}

// frontEnd is the HTTP server for the configured server type. The gRPC
// server also answers the REST API to plain HTTP requests, so /status
// stays reachable for probes and debugging.
func (s *server) frontEnd() *http.Server {
	rest := s.routeEmulatedAzure(s.routes())
	if s.cfg.ServerType != serverTypeGRPC {
		return newHTTPServer(withRequestID(rest), s.log)
	}
	srv := newHTTPServer(withRequestID(s.grpcRoutes(rest)), s.log)
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	return srv
}

// grpcCode is a gRPC status code.
type grpcCode uint32

const (
	codeOK                 grpcCode = 0
	codeCanceled           grpcCode = 1
	codeInvalidArgument    grpcCode = 3
	codeDeadlineExceeded   grpcCode = 4
	codeNotFound           grpcCode = 5
	codePermissionDenied   grpcCode = 7
	codeResourceExhausted  grpcCode = 8
	codeFailedPrecondition grpcCode = 9
	codeUnimplemented      grpcCode = 12
	codeInternal           grpcCode = 13
	codeUnavailable        grpcCode = 14
)

var grpcCodeNames = map[grpcCode]string{
	codeOK: "OK", codeCanceled: "Canceled", codeInvalidArgument: "InvalidArgument",
	codeDeadlineExceeded: "DeadlineExceeded", codeNotFound: "NotFound", codePermissionDenied: "PermissionDenied",
	codeResourceExhausted: "ResourceExhausted", codeFailedPrecondition: "FailedPrecondition",
	codeUnimplemented: "Unimplemented", codeInternal: "Internal", codeUnavailable: "Unavailable",
}

func (c grpcCode) String() string {
	if n, ok := grpcCodeNames[c]; ok {
		return n
	}
	return "Code(" + strconv.Itoa(int(c)) + ")"
}

// grpcStatusFor maps any error to the status the call ends with: the one
// place where a failure becomes a gRPC code, as statusFor is for HTTP.
func grpcStatusFor(err error) grpcCode {
	if err == nil {
		return codeOK
	}
	switch errorKind(err) {
	case kindInvalid:
		return codeInvalidArgument
	case kindDenied:
		return codePermissionDenied
	case kindUpstream, kindUnavailable:
		return codeUnavailable
	case kindTimeout:
		return codeDeadlineExceeded
	case kindNoRoute, kindBadMethod, kindUnsupported:
		return codeUnimplemented
	case kindTooLarge:
		return codeResourceExhausted
	case kindPrecondition:
		return codeFailedPrecondition
	}
	return codeInternal
}

// grpcMethod serves one call: it receives the request messages from st and
// sends its answers there; its error becomes the call's status.
type grpcMethod func(ctx context.Context, st *grpcStream) error

// unaryMethod adapts a one-request, one-answer function to a grpcMethod.
func unaryMethod(fn func(ctx context.Context, req []byte) ([]byte, error)) grpcMethod {
	return func(ctx context.Context, st *grpcStream) error {
		req, err := st.recv()
		if errors.Is(err, io.EOF) {
			return newError(kindProtocol, nil, "unary call without a request message")
		}
		if err != nil {
			return err
		}
		if _, err := st.recv(); !errors.Is(err, io.EOF) {
			if err != nil {
				return err
			}
			return newError(kindProtocol, nil, "unary call with more than one request message")
		}
		resp, err := fn(ctx, req)
		if err != nil {
			return err
		}
		return st.send(resp)
	}
}

// grpcRoutes serves the key provider under both of its package names and
// server reflection; requests that are not gRPC go to rest.
func (s *server) grpcRoutes(rest http.Handler) http.Handler {
	methods := map[string]grpcMethod{}
	for _, f := range keyProviderFiles {
		for name, fn := range s.keyProviderMethods() {
			methods["/"+f.fullName()+"/"+name] = unaryMethod(fn)
		}
	}
	for _, svc := range reflectionServices {
		methods["/"+svc+"/ServerReflectionInfo"] = serveReflection
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isGRPCContentType(r.Header.Get("Content-Type")) {
			rest.ServeHTTP(w, r)
			return
		}
		s.serveGRPC(w, r, methods[r.URL.Path])
	})
}

// isGRPCContentType accepts application/grpc and its +proto and
// parameterised forms.
func isGRPCContentType(ct string) bool {
	rest, ok := strings.CutPrefix(strings.ToLower(ct), "application/grpc")
	return ok && (rest == "" || rest[0] == '+' || rest[0] == ';')
}

// serveGRPC runs one call within its deadline and ends it with a status.
func (s *server) serveGRPC(w http.ResponseWriter, r *http.Request, m grpcMethod) {
	start := time.Now()
	st := &grpcStream{w: w, body: r.Body, rc: http.NewResponseController(w)}
	err := s.runGRPC(r, st, m)
	code := grpcStatusFor(err)
	if r.Context().Err() != nil && code != codeOK {
		code = codeCanceled // the client went away; nobody reads the status
	}
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	st.finish(code, msg)

	level := slog.LevelInfo
	switch code {
	case codeOK:
	case codeInternal, codeUnavailable:
		level = slog.LevelError
	default:
		level = slog.LevelWarn
	}
	attrs := append(correlationFrom(r.Context()).logAttrs(), "method", r.URL.Path, "code", code.String(), "duration", time.Since(start).Round(time.Microsecond))
	if err != nil {
		attrs = append(attrs, "err", msg)
	}
	s.log.Log(r.Context(), level, "grpc call", attrs...)
	if m != nil {
		s.metrics.grpcCall(r.URL.Path, code)
	} else {
		s.metrics.grpcCall("", code)
	}
}

func (s *server) runGRPC(r *http.Request, st *grpcStream, m grpcMethod) error {
	if r.Method != http.MethodPost {
		return newError(kindUnsupported, nil, "gRPC calls are POST requests, not %s", r.Method)
	}
	if m == nil {
		return newError(kindUnsupported, nil, "unknown method %s: this server offers %s and %s (use server reflection to list them)",
			r.URL.Path, keyProviderFiles[0].fullName(), keyProviderFiles[1].fullName())
	}
	timeout := s.timeout
	if v := r.Header.Get("Grpc-Timeout"); v != "" {
		d, err := parseGRPCTimeout(v)
		if err != nil {
			return newError(kindInvalid, err, "grpc-timeout header")
		}
		timeout = min(timeout, d)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	defer context.AfterFunc(s.stopping, cancel)()
	err := m(ctx, st)
	if err != nil && s.stopping.Err() != nil {
		return errShuttingDown // the shutdown grace is over
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) && r.Context().Err() == nil {
		return newError(kindTimeout, err, "deadline of %v exceeded", timeout)
	}
	return err
}

// parseGRPCTimeout reads a grpc-timeout header: up to 8 digits and a unit
// (Hours, Minutes, Seconds, milliseconds, microseconds, nanoseconds).
func parseGRPCTimeout(v string) (time.Duration, error) {
	if len(v) < 2 || len(v) > 9 {
		return 0, fmt.Errorf("%q is not 1-8 digits and a unit", v)
	}
	n, err := strconv.ParseUint(v[:len(v)-1], 10, 64)
	if err != nil || v[0] == '+' {
		return 0, fmt.Errorf("%q is not 1-8 digits and a unit", v)
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	unit, ok := units[v[len(v)-1]]
	if !ok {
		return 0, fmt.Errorf("%q has no unit H, M, S, m, u or n", v)
	}
	return time.Duration(n) * unit, nil // 8 digits of hours still fit
}

// grpcStream is one call's request and answer streams.
type grpcStream struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	body    io.Reader
	started bool // headers sent
}

// recv reads the next request message; io.EOF means the client is done.
func (st *grpcStream) recv() ([]byte, error) {
	return readGRPCMessage(st.body, maxGRPCMessage)
}

// readGRPCMessage reads one length-prefixed message of at most limit bytes.
func readGRPCMessage(r io.Reader, limit int) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, newError(kindProtocol, err, "read the request message's prefix")
	}
	switch hdr[0] {
	case 0:
	case 1:
		return nil, newError(kindUnsupported, nil, "compressed messages are not supported: send them uncompressed (grpc-encoding identity)")
	default:
		return nil, newError(kindProtocol, nil, "message prefix has flags %#x: not a gRPC message", hdr[0])
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if uint64(n) > uint64(limit) {
		return nil, newError(kindTooLarge, nil, "request message of %d bytes is larger than the %d bytes this server accepts", n, limit)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r, msg); err != nil {
		return nil, newError(kindProtocol, err, "request message cut short after its prefix said %d bytes", n)
	}
	return msg, nil
}

// send writes one answer message and flushes it to the client.
func (st *grpcStream) send(msg []byte) error {
	if len(msg) > maxGRPCMessage {
		return newError(kindTooLarge, nil, "answer of %d bytes is larger than %d bytes", len(msg), maxGRPCMessage)
	}
	st.start()
	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	if _, err := st.w.Write(append(frame, msg...)); err != nil {
		return fmt.Errorf("send answer: %w", err)
	}
	if err := st.rc.Flush(); err != nil {
		return fmt.Errorf("send answer: %w", err)
	}
	return nil
}

func (st *grpcStream) start() {
	if st.started {
		return
	}
	st.started = true
	h := st.w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Accept-Encoding", "identity")
	st.w.WriteHeader(http.StatusOK)
}

// finish ends the call with its status in the trailers.
func (st *grpcStream) finish(code grpcCode, msg string) {
	st.start()
	h := st.w.Header()
	h.Set(http.TrailerPrefix+"Grpc-Status", strconv.Itoa(int(code)))
	if msg != "" {
		h.Set(http.TrailerPrefix+"Grpc-Message", percentEncodeGRPCMessage(msg))
	}
}

// percentEncodeGRPCMessage escapes what a grpc-message may not carry raw:
// bytes outside printable ASCII, and '%' itself.
func percentEncodeGRPCMessage(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}
