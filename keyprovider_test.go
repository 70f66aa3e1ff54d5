package main

// End to end through the real gRPC server (HTTP/2 on loopback) with a real
// gRPC client (grpc-go, a test-only dependency), against the MAA, Key
// Vault and IMDS stand-ins.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Field names of the wrap protocol messages.
const (
	wrapIn  = "key_provider_key_wrap_protocol_input"
	wrapOut = "key_provider_key_wrap_protocol_output"
)

var keyProviderPackages = []string{"key_provider", "keyprovider"}

// grpcEnv is the release environment served as gRPC, with a client. The
// key provider's calls carry no access token: the identity (the IMDS
// stand-in) gets the vault's.
type grpcEnv struct {
	*releaseEnv
	conn *grpc.ClientConn
	imds *imdsStandIn
}

func newGRPCEnv(t testing.TB, o releaseEnvOpts) *grpcEnv {
	t.Helper()
	imds := newReleaseIMDS(t, releaseBearer)
	env := map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL}
	for k, v := range o.env {
		env[k] = v
	}
	o.env, o.grpc = env, true
	e := newReleaseEnv(t, o)
	return &grpcEnv{releaseEnv: e, conn: dialGRPC(t, e.url), imds: imds}
}

// dialGRPC connects a grpc-go client to the server at base (http://ADDR),
// in cleartext as grpcurl -plaintext does.
func dialGRPC(t testing.TB, base string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("passthrough:///"+strings.TrimPrefix(base, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// keyProviderFileDescriptor is the server's descriptor of pkg, as a client
// that used reflection would have it.
func keyProviderFileDescriptor(t testing.TB, pkg string) protoreflect.FileDescriptor {
	t.Helper()
	for _, f := range keyProviderFiles {
		if f.pkg != pkg {
			continue
		}
		var fdp descriptorpb.FileDescriptorProto
		if err := proto.Unmarshal(f.descriptor(), &fdp); err != nil {
			t.Fatal(err)
		}
		fd, err := protodesc.NewFile(&fdp, nil)
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	t.Fatalf("no package %s", pkg)
	return nil
}

func keyProviderMethod(t testing.TB, pkg, method string) protoreflect.MethodDescriptor {
	t.Helper()
	m := keyProviderFileDescriptor(t, pkg).Services().ByName("KeyProviderService").Methods().ByName(protoreflect.Name(method))
	if m == nil {
		t.Fatalf("no method %s", method)
	}
	return m
}

// invokeKeyProvider calls pkg.KeyProviderService/method with the named
// fields set and returns the answer's fields as strings.
func invokeKeyProvider(ctx context.Context, t testing.TB, conn *grpc.ClientConn, pkg, method string, in map[string]string) (map[string]string, error) {
	t.Helper()
	m := keyProviderMethod(t, pkg, method)
	req := dynamicpb.NewMessage(m.Input())
	for name, v := range in {
		f := m.Input().Fields().ByName(protoreflect.Name(name))
		if f == nil {
			t.Fatalf("%s has no field %s", m.Input().FullName(), name)
		}
		if f.Kind() == protoreflect.BytesKind {
			req.Set(f, protoreflect.ValueOfBytes([]byte(v)))
		} else {
			req.Set(f, protoreflect.ValueOfString(v))
		}
	}
	resp := dynamicpb.NewMessage(m.Output())
	err := conn.Invoke(ctx, "/"+pkg+".KeyProviderService/"+method, req, resp)
	out := map[string]string{}
	fields := m.Output().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Kind() == protoreflect.BytesKind {
			out[string(f.Name())] = string(resp.Get(f).Bytes())
		} else {
			out[string(f.Name())] = resp.Get(f).String()
		}
	}
	return out, err
}

func (g *grpcEnv) call(t testing.TB, pkg, method string, in map[string]string) (map[string]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return invokeKeyProvider(ctx, t, g.conn, pkg, method, in)
}

func mustCall(t testing.TB, g *grpcEnv, pkg, method string, in map[string]string) map[string]string {
	t.Helper()
	out, err := g.call(t, pkg, method, in)
	if err != nil {
		t.Fatalf("%s.%s: %v\nserver log:\n%s", pkg, method, err, g.logs)
	}
	return out
}

func wantStatus(t testing.TB, err error, code codes.Code, inMessage string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || !strings.Contains(st.Message(), inMessage) {
		t.Fatalf("status = %v, want %v mentioning %q", err, code, inMessage)
	}
}

// ---- ocicrypt key provider protocol documents ----

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// unwrapRequest is the UnWrapKey input as Microsoft's unwrap.sh writes it.
func unwrapRequest(annotation string) string {
	return `{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":["` + b64([]byte("skr")) + `"]}},"annotation":"` + annotation + `"}}`
}

func wrapRequest(keyPath string, secret []byte) string {
	return `{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["` + b64([]byte("skr:"+keyPath)) + `"]}},"optsdata":"` + b64(secret) + `"}}`
}

// annotationFor is a packet for kid in the stand-in vault, wrapping
// whatever is given.
func (g *grpcEnv) annotationFor(kid string, wrapped []byte) string {
	p, _ := json.Marshal(annotationPacket{Kid: kid, WrappedData: wrapped, WrapType: "rsa_3072", KMSEndpoint: g.kv.host, AttesterEndpoint: g.maa.host})
	return b64(p)
}

func decodeWrapResults(t testing.TB, out map[string]string) (annotation []byte) {
	t.Helper()
	var r struct {
		KeyWrapResults struct {
			Annotation []byte `json:"annotation"`
		} `json:"keywrapresults"`
	}
	if err := json.Unmarshal([]byte(out[wrapOut]), &r); err != nil || len(r.KeyWrapResults.Annotation) == 0 {
		t.Fatalf("WrapKey output %q: %v", out[wrapOut], err)
	}
	return r.KeyWrapResults.Annotation
}

func decodeUnwrapResults(t testing.TB, out []byte) []byte {
	t.Helper()
	var r struct {
		KeyUnwrapResults struct {
			OptsData []byte `json:"optsdata"`
		} `json:"keyunwrapresults"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("UnWrapKey output %q: %v", out, err)
	}
	return r.KeyUnwrapResults.OptsData
}

// ---- the methods ----

func TestGRPCSayHello(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{ServerType: serverTypeGRPC}, serverOptions{})
	conn := dialGRPC(t, url)
	for _, pkg := range keyProviderPackages {
		out, err := invokeKeyProvider(context.Background(), t, conn, pkg, "SayHello", map[string]string{"name": "This is a GRPC test!"})
		if err != nil || out["message"] != "Hello This is a GRPC test!" {
			t.Fatalf("%s SayHello = %q, %v", pkg, out["message"], err)
		}
	}
}

func TestGRPCGetReport(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	for _, tc := range []struct{ hex, want string }{
		{"", strings.Repeat("00", 64)},
		{"0123456789abcdef", "0123456789abcdef" + strings.Repeat("00", 56)},
		{strings.Repeat("5a", 64), strings.Repeat("5a", 64)},
	} {
		out := mustCall(t, g, "key_provider", "GetReport", map[string]string{"report_data_hex_string": tc.hex})
		raw, err := hex.DecodeString(out["report_hex_string"])
		if err != nil || len(raw) != reportSize {
			t.Fatalf("report_hex_string is not %d bytes of hex: %v", reportSize, err)
		}
		// REPORT_DATA is the decoded hex, not a hash of the text.
		if got := hex.EncodeToString(raw[0x50:0x90]); got != tc.want {
			t.Errorf("GetReport(%q): REPORT_DATA = %s, want %s", tc.hex, got, tc.want)
		}
	}
}

func TestGRPCGetAttestationDataIsTheCombinedBundle(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	runtimeData := []byte(`{"keys":[]}`)
	out := mustCall(t, g, "key_provider", "GetAttestationData", map[string]string{"b64_runtime_data_string": b64(runtimeData)})
	// The gRPC port answers the REST API too: compare with /attest/combined.
	code, combined := call(t, "POST", g.url+"/attest/combined", `{"runtime_data":"`+b64(runtimeData)+`"}`)
	if code != http.StatusOK {
		t.Fatalf("/attest/combined: %d %v", code, combined)
	}
	for field, member := range map[string]string{"endorsed_tcb": "endorsed_tcb", "certs": "endorsements", "uvm_reference_info": "uvm_endorsements"} {
		if out[field] == "" || out[field] != combined[member] {
			t.Errorf("%s = %q, /attest/combined %s = %q", field, out[field], member, combined[member])
		}
	}
	if got := decodeB64(t, out["uvm_reference_info"]); string(got) != releaseUVMRefInfo {
		t.Errorf("uvm_reference_info = %q", got)
	}
	rep, err := parseReport(decodeB64(t, out["attestation_report"]))
	if err != nil {
		t.Fatal(err)
	}
	if rep.ReportData != reportDataFor(runtimeData) {
		t.Error("REPORT_DATA is not sha256(runtime data)")
	}
	// Same report apart from the signature.
	other := decodeB64(t, combined["evidence"])
	if !bytes.Equal(rep.Raw[:0x2a0], other[:0x2a0]) {
		t.Error("the two reports differ in their signed contents")
	}
	chain, err := parsePEMCertificates(decodeB64(t, out["certs"]))
	if err != nil || len(chain) != 3 {
		t.Fatalf("certs: %d certificates, %v", len(chain), err)
	}
	if err := verifyEvidence(rep, assemblePlatformCerts(chain[0], chain[1], chain[2], rep.ReportedTCB)); err != nil {
		t.Fatalf("the report does not verify with the certificates handed out: %v", err)
	}
}

func TestGRPCWrapThenUnwrap(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	keyPath := writeWrapKeyFiles(t, t.TempDir(), keyRSA, &g.rsa.PublicKey, "https://"+g.kv.host, g.maa.host)
	secret := []byte("Oceans are full of water\nHorses have 4 legs\n")
	for _, pkg := range keyProviderPackages {
		t.Run(pkg, func(t *testing.T) {
			annotation := decodeWrapResults(t, mustCall(t, g, pkg, "WrapKey", map[string]string{wrapIn: wrapRequest(keyPath, secret)}))
			var packet annotationPacket
			if err := json.Unmarshal(annotation, &packet); err != nil {
				t.Fatalf("annotation %q: %v", annotation, err)
			}
			if packet.Kid != keyRSA || packet.KMSEndpoint != g.kv.host || packet.AttesterEndpoint != g.maa.host || packet.WrapType != "rsa_2048" || len(packet.IV) != 0 {
				t.Errorf("packet = %+v", packet)
			}
			// Independently of the server: the vault's private key opens it.
			if plain, err := rsa.DecryptOAEP(sha256.New(), nil, g.rsa, packet.WrappedData, nil); err != nil || !bytes.Equal(plain, secret) {
				t.Fatalf("wrapped_data is not RSA-OAEP-SHA256 of the secret: %v", err)
			}
			out := mustCall(t, g, pkg, "UnWrapKey", map[string]string{wrapIn: unwrapRequest(b64(annotation))})
			if got := decodeUnwrapResults(t, []byte(out[wrapOut])); !bytes.Equal(got, secret) {
				t.Fatalf("unwrapped %q, want %q", got, secret)
			}
		})
	}
	if g.imds.calls.Load() == 0 {
		t.Error("the release did not use the identity's token")
	}
	if strings.Contains(g.logs.String(), string(secret[:10])) {
		t.Error("the secret is in the log")
	}
}

func TestGRPCErrorsAreStatuses(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	dir := t.TempDir()
	keyPath := writeWrapKeyFiles(t, dir, keyRSA, &g.rsa.PublicKey, g.kv.host, g.maa.host)
	other, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &standInRSAKey(t, rsaOther).PublicKey, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method string
		in           map[string]string
		code         codes.Code
		msg          string
	}{
		{"bad hex", "GetReport", map[string]string{"report_data_hex_string": "zz"}, codes.InvalidArgument, "not hex"},
		{"report data too long", "GetReport", map[string]string{"report_data_hex_string": strings.Repeat("00", 65)}, codes.InvalidArgument, "at most 64"},
		{"no runtime data", "GetAttestationData", nil, codes.InvalidArgument, "b64_runtime_data_string"},
		{"input not JSON", "UnWrapKey", map[string]string{wrapIn: "{"}, codes.InvalidArgument, "key provider input"},
		{"wrong op", "UnWrapKey", map[string]string{wrapIn: wrapRequest(keyPath, []byte("x"))}, codes.InvalidArgument, `want "keyunwrap"`},
		{"other agent", "UnWrapKey", map[string]string{wrapIn: strings.Replace(unwrapRequest("eA=="), b64([]byte("skr")), b64([]byte("aa")), 1)}, codes.InvalidArgument, "attestation-agent"},
		{"annotation not base64", "UnWrapKey", map[string]string{wrapIn: unwrapRequest("%%%")}, codes.InvalidArgument, "annotation"},
		{"annotation without endpoint", "UnWrapKey", map[string]string{wrapIn: unwrapRequest(b64([]byte(`{"kid":"k","wrapped_data":"eA=="}`)))}, codes.InvalidArgument, "kms_endpoint"},
		{"refused release", "UnWrapKey", map[string]string{wrapIn: unwrapRequest(g.annotationFor(keyLocked, other))}, codes.PermissionDenied, "release policy"},
		{"not an RSA key", "UnWrapKey", map[string]string{wrapIn: unwrapRequest(g.annotationFor(keyOct, other))}, codes.FailedPrecondition, "needs an RSA key"},
		{"wrapped to another key", "UnWrapKey", map[string]string{wrapIn: unwrapRequest(g.annotationFor(keyRSA, other))}, codes.InvalidArgument, "does not decrypt"},
		{"no key files", "WrapKey", map[string]string{wrapIn: wrapRequest(filepath.Join(dir, "nokey"), []byte("x"))}, codes.InvalidArgument, "nokey-info.json"},
		{"secret too long for RSA-OAEP", "WrapKey", map[string]string{wrapIn: wrapRequest(keyPath, make([]byte, 200))}, codes.InvalidArgument, "wraps at most 190"},
		{"oversized message", "SayHello", map[string]string{"name": strings.Repeat("x", maxGRPCMessage)}, codes.ResourceExhausted, "larger than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.call(t, "key_provider", tc.method, tc.in)
			wantStatus(t, err, tc.code, tc.msg)
		})
	}
	t.Run("unknown method", func(t *testing.T) {
		for _, path := range []string{"/key_provider.KeyProviderService/Nope", "/other.Service/SayHello"} {
			err := g.conn.Invoke(context.Background(), path, &descriptorpb.FileDescriptorProto{}, &descriptorpb.FileDescriptorProto{})
			wantStatus(t, err, codes.Unimplemented, "unknown method")
		}
	})
}

func TestGRPCWithoutDeviceIsUnavailable(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{ServerType: serverTypeGRPC}, serverOptions{})
	conn := dialGRPC(t, url)
	_, err := invokeKeyProvider(context.Background(), t, conn, "key_provider", "GetReport", nil)
	wantStatus(t, err, codes.Unavailable, "no SEV-SNP guest interface")
	_, err = invokeKeyProvider(context.Background(), t, conn, "keyprovider", "GetAttestationData", map[string]string{"b64_runtime_data_string": "eA=="})
	wantStatus(t, err, codes.Unavailable, "no SEV-SNP guest interface")
}

// waitForLog waits until the server has logged a line with all of want.
func waitForLog(t testing.TB, logs *syncBuffer, within time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(logs.String(), "\n") {
			found := true
			for _, w := range want {
				found = found && strings.Contains(line, w)
			}
			if found {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no log line with %q within %v:\n%s", want, within, logs)
}

func TestGRPCDeadlineIsHonoured(t *testing.T) {
	t.Parallel()
	// The server's own bound here; the client's grpc-timeout is in
	// TestGRPCTimeoutHeader.
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute, timeout: 500 * time.Millisecond})
	g.maa.setHang(true)
	start := time.Now()
	_, err := g.call(t, "key_provider", "UnWrapKey", map[string]string{wrapIn: unwrapRequest(g.annotationFor(keyRSA, []byte("x")))})
	wantStatus(t, err, codes.DeadlineExceeded, "deadline of 500ms exceeded")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the call ended after %v", d)
	}
}

func TestGRPCClientCancelsMidCall(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	g.maa.setHang(true)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := invokeKeyProvider(ctx, t, g.conn, "key_provider", "UnWrapKey", map[string]string{wrapIn: unwrapRequest(g.annotationFor(keyRSA, []byte("x")))})
		errc <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); g.maa.count() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the call never reached MAA")
		}
	}
	cancel()
	wantStatus(t, <-errc, codes.Canceled, "")
	// The server's handler saw the cancellation and returned.
	waitForLog(t, g.logs, 5*time.Second, "method=/key_provider.KeyProviderService/UnWrapKey", "code=Canceled")
}

// ---- Microsoft's unwrap.sh, as grpcurl and jq run it ----

// grpcurlJSON sends a request given as JSON and returns the answer as
// JSON, as grpcurl does with the descriptor it got through reflection.
func grpcurlJSON(t testing.TB, conn *grpc.ClientConn, pkg, method, reqJSON string) map[string]any {
	t.Helper()
	m := keyProviderMethod(t, pkg, method)
	req := dynamicpb.NewMessage(m.Input())
	if err := protojson.Unmarshal([]byte(reqJSON), req); err != nil {
		t.Fatalf("grpcurl would refuse %s: %v", reqJSON, err)
	}
	resp := dynamicpb.NewMessage(m.Output())
	if err := conn.Invoke(context.Background(), "/"+pkg+".KeyProviderService/"+method, req, resp); err != nil {
		t.Fatal(err)
	}
	raw, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWrapModeOutputUnwrapsWithUnwrapSh(t *testing.T) {
	t.Parallel()
	g := newGRPCEnv(t, releaseEnvOpts{ttl: time.Minute})
	dir := t.TempDir()
	keyPath := writeWrapKeyFiles(t, dir, keyRSA, &g.rsa.PublicKey, g.kv.host, g.maa.host)
	secret := []byte("Oceans are full of water\r\nHorses have 4 legs\r\n")
	plaintext := filepath.Join(dir, "plaintext")
	if err := os.WriteFile(plaintext, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	wrapped := filepath.Join(dir, "wrapped")
	for _, argv := range [][]string{
		{"skr", "-infile", plaintext, "-keypath", keyPath, "-outfile", wrapped},
		{"skr", "--infile", plaintext, "--keypath", keyPath, "--outfile", wrapped},
		{"skr", "wrap", "-infile", plaintext, "-keypath", keyPath, "-outfile", wrapped},
	} {
		t.Run(strings.Join(argv[1:3], " "), func(t *testing.T) {
			os.Remove(wrapped)
			var out, errOut bytes.Buffer
			if code := dispatch(argv, &out, &errOut); code != 0 {
				t.Fatalf("%q: exit %d: %s", argv, code, errOut.String())
			}
			anno, err := os.ReadFile(wrapped)
			if err != nil {
				t.Fatal(err)
			}
			// unwrap.sh: REQ=`echo "{...}" | base64 -w0`, then grpcurl -d
			// "{\"KeyProviderKeyWrapProtocolInput\":\"${REQ}\"}" and
			// jq -r '.KeyProviderKeyWrapProtocolOutput' | base64 -d.
			req := b64([]byte(unwrapRequest(string(anno)) + "\n"))
			ans := grpcurlJSON(t, g.conn, "key_provider", "UnWrapKey", `{"KeyProviderKeyWrapProtocolInput":"`+req+`"}`)
			output, _ := ans["KeyProviderKeyWrapProtocolOutput"].(string)
			if got := decodeUnwrapResults(t, decodeB64(t, output)); !bytes.Equal(got, secret) {
				t.Fatalf("unwrapped %q, want the plaintext file", got)
			}
		})
	}
}

func TestGRPCServesTheRESTAPIToPlainHTTP(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{ServerType: serverTypeGRPC}, serverOptions{})
	code, st := call(t, "GET", url+"/status", "")
	if code != http.StatusOK || st["message"] != "Status OK" {
		t.Fatalf("/status on the gRPC port = %d %v", code, st)
	}
}

// ---- parsers ----

func FuzzKeyProviderInput(f *testing.F) {
	f.Add([]byte(unwrapRequest(b64([]byte(`{"kid":"k","wrapped_data":"eA==","kms_endpoint":"v.vault.azure.net","attester_endpoint":"m.attest.azure.net"}`)))))
	f.Add([]byte(wrapRequest("/keys/k", []byte("secret"))))
	f.Add([]byte(`{"op":"keyunwrap"}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		req := appendProtoBytes(nil, 1, js)
		for _, op := range []string{"keyunwrap", "keywrap"} {
			in, err := decodeKeyProviderInput(req, op)
			if err != nil {
				if errorKind(err) != kindInvalid {
					t.Fatalf("error of kind %v: %v", errorKind(err), err)
				}
				continue
			}
			if in.Op != op {
				t.Fatalf("accepted op %q for %q", in.Op, op)
			}
			if _, err := agentParameter(in.KeyUnwrapParams.DC.Parameters, "dc"); err != nil && errorKind(err) != kindInvalid {
				t.Fatal(err)
			}
			packet, p, err := parseAnnotation(in.KeyUnwrapParams.Annotation)
			if err != nil {
				if errorKind(err) != kindInvalid {
					t.Fatalf("error of kind %v: %v", errorKind(err), err)
				}
				continue
			}
			if len(packet.WrappedData) == 0 || p.VaultHost == "" || p.MAAHost == "" || p.Key.Name == "" {
				t.Fatalf("accepted an incomplete annotation: %+v %+v", packet, p)
			}
		}
	})
}
