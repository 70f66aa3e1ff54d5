package main

import (
	"context"
	"errors"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	refv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	refv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// parseFileDescriptor builds a file from descriptor bytes, as a
// reflection client does.
func parseFileDescriptor(t testing.TB, raw []byte) protoreflect.FileDescriptor {
	t.Helper()
	var fdp descriptorpb.FileDescriptorProto
	if err := proto.Unmarshal(raw, &fdp); err != nil {
		t.Fatalf("not a FileDescriptorProto: %v", err)
	}
	fd, err := protodesc.NewFile(&fdp, nil)
	if err != nil {
		t.Fatalf("not a valid file: %v", err)
	}
	return fd
}

func TestGRPCReflectionV1(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{ServerType: serverTypeGRPC}, serverOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := refv1.NewServerReflectionClient(dialGRPC(t, url)).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ask := func(req *refv1.ServerReflectionRequest) *refv1.ServerReflectionResponse {
		t.Helper()
		req.Host = "localhost:50000"
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if resp.ValidHost != req.Host || !proto.Equal(resp.OriginalRequest, req) {
			t.Errorf("answer does not echo the request: %v", resp)
		}
		return resp
	}

	// grpcurl -plaintext localhost:50000 list
	list := ask(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_ListServices{ListServices: "*"}})
	var names []string
	for _, s := range list.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	if !slices.Equal(names, []string{"key_provider.KeyProviderService", "keyprovider.KeyProviderService"}) {
		t.Fatalf("services = %q", names)
	}

	// grpcurl describe, and resolving a method before calling it.
	for _, sym := range []string{"key_provider.KeyProviderService", "keyprovider.KeyProviderService.UnWrapKey", "key_provider.HelloRequest", "key_provider.HelloRequest.name"} {
		resp := ask(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: sym}})
		fds := resp.GetFileDescriptorResponse().GetFileDescriptorProto()
		if len(fds) != 1 {
			t.Fatalf("%s: %v", sym, resp)
		}
		fd := parseFileDescriptor(t, fds[0])
		var files protoregistry.Files
		if err := files.RegisterFile(fd); err != nil {
			t.Fatal(err)
		}
		if _, err := files.FindDescriptorByName(protoreflect.FullName(sym)); err != nil {
			t.Errorf("the file given for %s does not define it", sym)
		}
		unwrap := fd.Services().ByName("KeyProviderService").Methods().ByName("UnWrapKey")
		if unwrap == nil || unwrap.IsStreamingClient() || unwrap.IsStreamingServer() || unwrap.Input().Name() != "KeyProviderKeyWrapProtocolInput" {
			t.Errorf("%s: UnWrapKey is not the unary wrap protocol method", sym)
		}
	}
	byName := ask(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_FileByFilename{FileByFilename: "keyprovider.proto"}})
	if fds := byName.GetFileDescriptorResponse().GetFileDescriptorProto(); len(fds) != 1 || parseFileDescriptor(t, fds[0]).Package() != "keyprovider" {
		t.Errorf("file_by_filename keyprovider.proto = %v", byName)
	}
	ext := ask(&refv1.ServerReflectionRequest{MessageRequest: &refv1.ServerReflectionRequest_AllExtensionNumbersOfType{AllExtensionNumbersOfType: "key_provider.HelloReply"}})
	if r := ext.GetAllExtensionNumbersResponse(); r == nil || r.BaseTypeName != "key_provider.HelloReply" || len(r.ExtensionNumber) != 0 {
		t.Errorf("all_extension_numbers_of_type = %v", ext)
	}

	// What the server does not have is an answer, not the end of the stream.
	for _, req := range []*refv1.ServerReflectionRequest{
		{MessageRequest: &refv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "key_provider.Nope"}},
		{MessageRequest: &refv1.ServerReflectionRequest_FileByFilename{FileByFilename: "google/protobuf/empty.proto"}},
		{MessageRequest: &refv1.ServerReflectionRequest_FileContainingExtension{FileContainingExtension: &refv1.ExtensionRequest{ContainingType: "key_provider.HelloRequest", ExtensionNumber: 100}}},
	} {
		if e := ask(req).GetErrorResponse(); e == nil || codes.Code(e.ErrorCode) != codes.NotFound {
			t.Errorf("%v: error_response = %v, want NOT_FOUND", req, e)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the client closed: %v, want the end of the stream", err)
	}
}

func TestGRPCReflectionV1Alpha(t *testing.T) {
	t.Parallel()
	url, _ := startTestServer(t, serverConfig{ServerType: serverTypeGRPC}, serverOptions{})
	stream, err := refv1alpha.NewServerReflectionClient(dialGRPC(t, url)).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer stream.CloseSend()
	if err := stream.Send(&refv1alpha.ServerReflectionRequest{MessageRequest: &refv1alpha.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if s := resp.GetListServicesResponse().GetService(); len(s) != 2 || s[0].Name != "key_provider.KeyProviderService" || s[1].Name != "keyprovider.KeyProviderService" {
		t.Fatalf("services = %v", s)
	}
	if err := stream.Send(&refv1alpha.ServerReflectionRequest{MessageRequest: &refv1alpha.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "keyprovider.KeyProviderService"}}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	fds := resp.GetFileDescriptorResponse().GetFileDescriptorProto()
	if len(fds) != 1 || parseFileDescriptor(t, fds[0]).Services().ByName("KeyProviderService").Methods().Len() != 5 {
		t.Fatalf("file_containing_symbol = %v", resp)
	}
}

// specProto is the reference copy of Microsoft's key_provider.proto.
const specProto = "../shared/spec/key_provider.proto"

var (
	protoMessageRE = regexp.MustCompile(`(?s)message\s+(\w+)\s*\{(.*?)\}`)
	protoFieldRE   = regexp.MustCompile(`(string|bytes)\s+(\w+)\s*=\s*(\d+)\s*;`)
	protoRPCRE     = regexp.MustCompile(`rpc\s+(\w+)\s*\(\s*(\w+)\s*\)\s*returns\s*\(\s*(\w+)\s*\)`)
)

// TestKeyProviderDescriptorMatchesTheProto reads Microsoft's proto file
// (skipping when the shared copy is absent) and checks the hand-built
// descriptors against it: every message, field name, number and type, and
// every method's types.
func TestKeyProviderDescriptorMatchesTheProto(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(specProto)
	if os.IsNotExist(err) {
		t.Skipf("%s is absent", specProto)
	}
	if err != nil {
		t.Fatal(err)
	}
	src := regexp.MustCompile(`//[^\n]*`).ReplaceAllString(string(raw), "")
	if !strings.Contains(src, "package key_provider;") || !strings.Contains(src, `syntax = "proto3";`) {
		t.Fatal("the reference proto is not proto3 package key_provider")
	}
	for _, pkg := range keyProviderPackages {
		fd := keyProviderFileDescriptor(t, pkg)
		if fd.Syntax() != protoreflect.Proto3 {
			t.Errorf("%s is not proto3", pkg)
		}
		msgs := protoMessageRE.FindAllStringSubmatch(src, -1)
		if fd.Messages().Len() != len(msgs) || len(msgs) != 8 {
			t.Fatalf("%s: %d messages, the proto has %d", pkg, fd.Messages().Len(), len(msgs))
		}
		for _, m := range msgs {
			md := fd.Messages().ByName(protoreflect.Name(m[1]))
			if md == nil {
				t.Fatalf("%s: no message %s", pkg, m[1])
			}
			fields := protoFieldRE.FindAllStringSubmatch(m[2], -1)
			if md.Fields().Len() != len(fields) || len(fields) == 0 {
				t.Fatalf("%s.%s: %d fields, the proto has %d", pkg, m[1], md.Fields().Len(), len(fields))
			}
			for _, f := range fields {
				fdd := md.Fields().ByName(protoreflect.Name(f[2]))
				if fdd == nil || fdd.Kind().String() != f[1] || f[3] != strconv.Itoa(int(fdd.Number())) || fdd.Cardinality() != protoreflect.Optional || fdd.HasPresence() {
					t.Errorf("%s.%s: field %s is not %s = %s", pkg, m[1], f[2], f[1], f[3])
				}
			}
		}
		rpcs := protoRPCRE.FindAllStringSubmatch(src, -1)
		svc := fd.Services().ByName("KeyProviderService")
		if svc == nil || svc.Methods().Len() != len(rpcs) || len(rpcs) != 5 {
			t.Fatalf("%s: the service does not have the proto's %d methods", pkg, len(rpcs))
		}
		for _, r := range rpcs {
			m := svc.Methods().ByName(protoreflect.Name(r[1]))
			if m == nil || string(m.Input().Name()) != r[2] || string(m.Output().Name()) != r[3] {
				t.Errorf("%s: rpc %s(%s) returns (%s) is not served as such", pkg, r[1], r[2], r[3])
			}
		}
		if len(keyProviderMethodsFor(t)) != len(rpcs) {
			t.Errorf("the server implements %d methods, the proto has %d", len(keyProviderMethodsFor(t)), len(rpcs))
		}
	}
}

// keyProviderMethodsFor lists the implemented methods' names.
func keyProviderMethodsFor(t testing.TB) []string {
	var names []string
	for name := range (&server{}).keyProviderMethods() {
		names = append(names, name)
	}
	for _, m := range keyProviderService.methods {
		if !slices.Contains(names, m.name) {
			t.Errorf("method %s is described but not implemented", m.name)
		}
	}
	return names
}

// The JSON names grpcurl uses: Microsoft's unwrap.sh sends and reads the
// wrap protocol fields as KeyProviderKeyWrapProtocolInput / Output.
func TestKeyProviderJSONNames(t *testing.T) {
	t.Parallel()
	fd := keyProviderFileDescriptor(t, "key_provider")
	for msg, want := range map[string]string{
		"KeyProviderKeyWrapProtocolInput":    "KeyProviderKeyWrapProtocolInput",
		"KeyProviderKeyWrapProtocolOutput":   "KeyProviderKeyWrapProtocolOutput",
		"KeyProviderGetReportInput":          "reportDataHexString",
		"KeyProviderGetAttestationDataInput": "b64RuntimeDataString",
	} {
		if got := fd.Messages().ByName(protoreflect.Name(msg)).Fields().ByNumber(1).JSONName(); got != want {
			t.Errorf("%s field 1 JSON name = %q, want %q", msg, got, want)
		}
	}
	for in, want := range map[string]string{"report_data_hex_string": "reportDataHexString", "b64_runtime_data_string": "b64RuntimeDataString", "name": "name", "a__b_": "aB"} {
		if got := lowerCamelCase(in); got != want {
			t.Errorf("lowerCamelCase(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzReflectionAnswer(f *testing.F) {
	f.Add(appendProtoString(nil, reqListServices, ""))
	f.Add(appendProtoString(appendProtoString(nil, reqHost, "h"), reqFileContainingSymbol, "key_provider.KeyProviderService"))
	f.Add(appendProtoString(nil, reqFileByFilename, "key_provider.proto"))
	f.Add(appendProtoMessage(nil, reqFileContainingExtension, nil))
	f.Fuzz(func(t *testing.T, req []byte) {
		resp, err := reflectionAnswer(req)
		if err != nil {
			if errorKind(err) != kindInvalid {
				t.Fatalf("error of kind %v: %v", errorKind(err), err)
			}
			return
		}
		f, err := protoFields(resp, respValidHost, respOriginalRequest, respFileDescriptor, respAllExtensionNumbers, respListServices, respError)
		if err != nil {
			t.Fatalf("the answer is not protobuf: %v", err)
		}
		answers := 0
		for _, num := range []protowire.Number{respFileDescriptor, respAllExtensionNumbers, respListServices, respError} {
			if _, ok := f[num]; ok {
				answers++
			}
		}
		if answers != 1 || string(f[respOriginalRequest]) != string(req) {
			t.Fatalf("answer has %d oneof members, echo %v", answers, string(f[respOriginalRequest]) == string(req))
		}
	})
}
