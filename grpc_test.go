package main

// The gRPC transport seen from the wire: a plain HTTP/2 client (net/http,
// cleartext) sends hand-made frames and reads the trailers.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// grpcFrame is one length-prefixed message with the given flags.
func grpcFrame(flags byte, msg []byte) []byte {
	f := []byte{flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(f[1:], uint32(len(msg)))
	return append(f, msg...)
}

// rawGRPCAnswer is what came back: messages and the status trailers.
type rawGRPCAnswer struct {
	httpStatus  int
	contentType string
	messages    [][]byte
	status      string
	message     string
}

// rawGRPC posts body to base+path over cleartext HTTP/2.
func rawGRPC(t testing.TB, base, path string, header http.Header, body []byte) rawGRPCAnswer {
	t.Helper()
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 2 {
		t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
	}
	a := rawGRPCAnswer{httpStatus: resp.StatusCode, contentType: resp.Header.Get("Content-Type")}
	for {
		msg, err := readGRPCMessage(resp.Body, 1<<24)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("answer framing: %v", err)
		}
		a.messages = append(a.messages, msg)
	}
	a.status = resp.Trailer.Get("Grpc-Status")
	a.message, _ = url.PathUnescape(resp.Trailer.Get("Grpc-Message"))
	return a
}

func helloMessage(name string) []byte { return appendProtoString(nil, 1, name) }

func TestGRPCWire(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{ServerType: serverTypeGRPC}, serverOptions{})
	const hello = "/key_provider.KeyProviderService/SayHello"

	t.Run("answer", func(t *testing.T) {
		a := rawGRPC(t, url, hello, nil, grpcFrame(0, helloMessage("wire")))
		if a.httpStatus != 200 || a.contentType != "application/grpc" || a.status != "0" || len(a.messages) != 1 {
			t.Fatalf("answer = %+v", a)
		}
		f, err := protoFields(a.messages[0], 1)
		if err != nil || string(f[1]) != "Hello wire" {
			t.Fatalf("HelloReply = %q, %v", a.messages[0], err)
		}
	})
	tests := []struct {
		name   string
		path   string
		header http.Header
		body   []byte
		status string
		msg    string
	}{
		{"compressed message", hello, http.Header{"Grpc-Encoding": {"gzip"}}, grpcFrame(1, helloMessage("x")), "12", "compressed"},
		{"unknown flags", hello, nil, grpcFrame(0x80, helloMessage("x")), "13", "flags"},
		{"message cut short", hello, nil, grpcFrame(0, helloMessage("wire"))[:8], "13", "cut short"},
		{"prefix cut short", hello, nil, []byte{0, 0}, "13", "prefix"},
		{"no message", hello, nil, nil, "13", "without a request"},
		{"two messages", hello, nil, append(grpcFrame(0, helloMessage("a")), grpcFrame(0, helloMessage("b"))...), "13", "more than one"},
		{"oversized", hello, nil, []byte{0, 0x7f, 0xff, 0xff, 0xff}, "8", "larger than the 1048576 bytes"},
		{"not protobuf", hello, nil, grpcFrame(0, []byte{0x0a, 0x05, 'x'}), "3", "not valid protobuf"},
		{"string not UTF-8", hello, nil, grpcFrame(0, []byte{0x0a, 0x01, 0xff}), "3", "UTF-8"},
		{"wrong wire type", hello, nil, grpcFrame(0, []byte{0x08, 0x01}), "3", "wire type"},
		{"bad grpc-timeout", hello, http.Header{"Grpc-Timeout": {"10x"}}, grpcFrame(0, helloMessage("x")), "3", "grpc-timeout"},
		{"unknown method", "/key_provider.KeyProviderService/GetKey", nil, grpcFrame(0, nil), "12", "unknown method /key_provider.KeyProviderService/GetKey"},
		{"unknown service", "/x/y", nil, grpcFrame(0, nil), "12", "key_provider.KeyProviderService and keyprovider.KeyProviderService"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := rawGRPC(t, url, tc.path, tc.header, tc.body)
			if a.httpStatus != 200 || a.status != tc.status || !strings.Contains(a.message, tc.msg) || len(a.messages) != 0 {
				t.Fatalf("answer = %+v, want grpc-status %s mentioning %q", a, tc.status, tc.msg)
			}
		})
	}
	t.Run("unknown fields are skipped", func(t *testing.T) {
		msg := protowire.AppendTag(helloMessage("x"), 9, protowire.Fixed64Type)
		msg = protowire.AppendFixed64(msg, 7)
		a := rawGRPC(t, url, hello, nil, grpcFrame(0, msg))
		if a.status != "0" {
			t.Fatalf("answer = %+v", a)
		}
	})
}

func TestGRPCTimeoutHeader(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	g.maa.setHang(true)
	req := appendProtoBytes(nil, 1, []byte(unwrapRequest(g.annotationFor(keyRSA, []byte("x")))))
	start := time.Now()
	a := rawGRPC(t, g.url, "/key_provider.KeyProviderService/UnWrapKey", http.Header{"Grpc-Timeout": {"300m"}}, grpcFrame(0, req))
	if a.status != "4" || !strings.Contains(a.message, "deadline of 300ms exceeded") {
		t.Fatalf("answer = %+v, want DeadlineExceeded", a)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("answered after %v", d)
	}
}

func TestParseGRPCTimeout(t *testing.T) {
	t.Parallel()
	good := map[string]time.Duration{"1H": time.Hour, "2M": 2 * time.Minute, "3S": 3 * time.Second, "400m": 400 * time.Millisecond,
		"5u": 5 * time.Microsecond, "6n": 6, "99999999S": 99999999 * time.Second, "0m": 0}
	for v, want := range good {
		if d, err := parseGRPCTimeout(v); err != nil || d != want {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v", v, d, err, want)
		}
	}
	for _, v := range []string{"", "S", "1", "1s", "1h", "+1S", "-1S", "123456789S", "1.5S", " 1S"} {
		if d, err := parseGRPCTimeout(v); err == nil {
			t.Errorf("parseGRPCTimeout(%q) = %v, want an error", v, d)
		}
	}
}

func TestPercentEncodeGRPCMessage(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"plain text: ok":   "plain text: ok",
		"100% sure":        "100%25 sure",
		"line\nbreak":      "line%0Abreak",
		"caf\u00e9":        "caf%C3%A9",
		"tab\there\x7f~ok": "tab%09here%7F~ok",
	} {
		got := percentEncodeGRPCMessage(in)
		if got != want {
			t.Errorf("percentEncodeGRPCMessage(%q) = %q, want %q", in, got, want)
		}
		if back, err := url.PathUnescape(got); err != nil || back != in {
			t.Errorf("%q does not decode back: %q %v", got, back, err)
		}
	}
}

func TestGRPCStatusFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want grpcCode
	}{
		{nil, codeOK},
		{newError(kindInvalid, nil, "x"), codeInvalidArgument},
		{newError(kindDenied, nil, "x"), codePermissionDenied},
		{newError(kindUpstream, nil, "x"), codeUnavailable},
		{newError(kindUnavailable, nil, "x"), codeUnavailable},
		{newError(kindTimeout, nil, "x"), codeDeadlineExceeded},
		{newError(kindNoRoute, nil, "x"), codeUnimplemented},
		{newError(kindInternal, nil, "x"), codeInternal},
		{errors.New("a bug"), codeInternal},
		{&upstreamError{Service: "Key Vault", StatusCode: 403}, codePermissionDenied},
		{newError(kindPrecondition, newError(kindInvalid, nil, "x"), "y"), codeFailedPrecondition},
		{newError(kindTooLarge, nil, "x"), codeResourceExhausted},
		{newError(kindUnsupported, nil, "x"), codeUnimplemented},
		{newError(kindProtocol, nil, "x"), codeInternal},
		{fmt.Errorf("context: %w", newError(kindTooLarge, nil, "x")), codeResourceExhausted},
	}
	for _, tc := range tests {
		if got := grpcStatusFor(tc.err); got != tc.want {
			t.Errorf("grpcStatusFor(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestServerTypeFlag(t *testing.T) {
	t.Parallel()
	tests := []struct {
		argv []string
		env  map[string]string
		typ  string
		err  string
	}{
		{typ: serverTypeHTTP},
		{argv: []string{"-server_type", "grpc"}, typ: serverTypeGRPC},
		{env: map[string]string{"ServerType": "grpc"}, typ: serverTypeGRPC},
		{env: map[string]string{"ServerType": " GRPC "}, typ: serverTypeGRPC},
		{argv: []string{"-server_type", "http"}, env: map[string]string{"ServerType": "grpc"}, typ: serverTypeHTTP},
		// skr.sh: SkrSideCarArgs and Port as arguments, ServerType set.
		{argv: []string{"", "50000"}, env: map[string]string{"ServerType": "grpc"}, typ: serverTypeGRPC},
		{argv: []string{"-server_type", "rest"}, err: `server type "rest" is neither "http" nor "grpc"`},
		{env: map[string]string{"ServerType": "gRPC-web"}, err: `neither "http" nor "grpc"`},
	}
	for _, tc := range tests {
		c, err := parseServeFlags(tc.argv, envOf(tc.env), io.Discard)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q %v: err = %v, want %q", tc.argv, tc.env, err, tc.err)
			}
			continue
		}
		if err != nil || c.ServerType != tc.typ {
			t.Errorf("%q %v: %+v, %v; want server type %q", tc.argv, tc.env, c, err, tc.typ)
		}
	}
}

func FuzzReadGRPCMessage(f *testing.F) {
	f.Add(grpcFrame(0, []byte("hello")))
	f.Add(grpcFrame(1, []byte("x")))
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xff})
	f.Add(append(grpcFrame(0, nil), grpcFrame(0, []byte{1})...))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		read := 0
		for {
			msg, err := readGRPCMessage(r, 64)
			if err != nil {
				var ke *kindError
				if !errors.Is(err, io.EOF) && !errors.As(err, &ke) {
					t.Fatalf("untyped error %v", err)
				}
				return
			}
			if len(msg) > 64 {
				t.Fatalf("message of %d bytes over the limit", len(msg))
			}
			read += 5 + len(msg)
			if !bytes.Equal(b[read-len(msg):read], msg) {
				t.Fatal("message is not the framed bytes")
			}
		}
	})
}

func FuzzProtoFields(f *testing.F) {
	f.Add(helloMessage("name"))
	f.Add([]byte{0x08, 0x01})
	f.Add([]byte{0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add(protowire.AppendTag(nil, 5, protowire.StartGroupType))
	f.Fuzz(func(t *testing.T, b []byte) {
		fields, err := protoFields(b, 1, 2)
		if err != nil {
			return
		}
		// What was read re-encodes to a message that reads the same.
		var again []byte
		for _, num := range []protowire.Number{1, 2} {
			if v, ok := fields[num]; ok {
				again = appendProtoMessage(again, num, v)
			}
		}
		back, err := protoFields(again, 1, 2)
		if err != nil || len(back) != len(fields) {
			t.Fatalf("re-encoded fields read back as %v, %v", back, err)
		}
		for num, v := range fields {
			if !bytes.Equal(back[num], v) {
				t.Fatalf("field %d changed", num)
			}
		}
		if _, err := decodeSingleField(b, "name", true); err != nil && errorKind(err) != kindInvalid {
			t.Fatal(err)
		}
	})
}
