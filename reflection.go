package main

import (
	"context"
	"errors"
	"io"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// gRPC server reflection (grpc.reflection.v1 and its identical
// predecessor v1alpha), as grpcurl uses it: list the services, and hand
// out the FileDescriptorProto that defines a file or a symbol.

var reflectionServices = []string{"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}

// Field numbers of ServerReflectionRequest and ServerReflectionResponse.
const (
	reqHost, reqFileByFilename, reqFileContainingSymbol = 1, 3, 4
	reqFileContainingExtension, reqAllExtensionNumbers  = 5, 6
	reqListServices                                     = 7

	respValidHost, respOriginalRequest, respFileDescriptor = 1, 2, 4
	respAllExtensionNumbers, respListServices, respError   = 5, 6, 7
)

// serveReflection answers each request of the stream until the client
// closes it.
func serveReflection(ctx context.Context, st *grpcStream) error {
	for {
		req, err := st.recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		resp, err := reflectionAnswer(req)
		if err != nil {
			return err
		}
		if err := st.send(resp); err != nil {
			return err
		}
	}
}

// reflectionAnswer is the ServerReflectionResponse to one request. What
// the server does not have is answered in the stream (error_response with
// NOT_FOUND), as reflection clients expect; only a malformed request ends
// the stream.
func reflectionAnswer(req []byte) ([]byte, error) {
	f, err := protoFields(req, reqHost, reqFileByFilename, reqFileContainingSymbol, reqFileContainingExtension, reqAllExtensionNumbers, reqListServices)
	if err != nil {
		return nil, newError(kindInvalid, err, "reflection request is not valid protobuf")
	}
	host, err := reflectionString(f, reqHost, "host")
	if err != nil {
		return nil, err
	}
	resp := appendProtoString(nil, respValidHost, host)
	resp = appendProtoMessage(resp, respOriginalRequest, req)
	if _, ok := f[reqListServices]; ok {
		return appendServiceList(resp), nil
	}
	for _, q := range reflectionQueries {
		if _, ok := f[q.field]; !ok {
			continue
		}
		arg, err := reflectionString(f, q.field, q.name)
		if err != nil {
			return nil, err
		}
		return q.answer(resp, arg), nil
	}
	if _, ok := f[reqFileContainingExtension]; ok {
		return appendReflectionError(resp, "no message of this server has extensions"), nil
	}
	return nil, newError(kindInvalid, nil, "reflection request asks for nothing: set one of list_services, file_by_filename, file_containing_symbol")
}

// reflectionString is a string field of a reflection request.
func reflectionString(f map[protowire.Number][]byte, num protowire.Number, name string) (string, error) {
	s, err := protoString(f, num, name)
	if err != nil {
		return "", newError(kindInvalid, err, "reflection request")
	}
	return s, nil
}

// reflectionQueries are the requests that name one file, symbol or type.
var reflectionQueries = []struct {
	field  protowire.Number
	name   string
	answer func(resp []byte, arg string) []byte
}{
	{reqFileByFilename, "file_by_filename", answerFileByName},
	{reqFileContainingSymbol, "file_containing_symbol", answerFileContainingSymbol},
	{reqAllExtensionNumbers, "all_extension_numbers_of_type", answerExtensionNumbers},
}

func appendServiceList(resp []byte) []byte {
	var list []byte
	for _, file := range keyProviderFiles {
		list = appendProtoMessage(list, 1, appendProtoString(nil, 1, file.fullName()))
	}
	return appendProtoMessage(resp, respListServices, list)
}

func answerFileByName(resp []byte, name string) []byte {
	for _, file := range keyProviderFiles {
		if file.name == name {
			return appendFileDescriptor(resp, file)
		}
	}
	return appendReflectionError(resp, "file "+name+" not found")
}

func answerFileContainingSymbol(resp []byte, sym string) []byte {
	for _, file := range keyProviderFiles {
		if slices.Contains(file.symbols(), sym) {
			return appendFileDescriptor(resp, file)
		}
	}
	return appendReflectionError(resp, "symbol "+sym+" not found")
}

func answerExtensionNumbers(resp []byte, typ string) []byte {
	for _, file := range keyProviderFiles {
		for _, m := range file.messages {
			if file.pkg+"."+m.name == typ {
				// Known, and like every message here without extensions.
				return appendProtoMessage(resp, respAllExtensionNumbers, appendProtoString(nil, 1, typ))
			}
		}
	}
	return appendReflectionError(resp, "type "+typ+" not found")
}

func appendFileDescriptor(resp []byte, f protoFile) []byte {
	return appendProtoMessage(resp, respFileDescriptor, appendProtoBytes(nil, 1, f.descriptor()))
}

func appendReflectionError(resp []byte, msg string) []byte {
	e := appendProtoVarint(nil, 1, uint64(codeNotFound))
	e = appendProtoString(e, 2, msg)
	return appendProtoMessage(resp, respError, e)
}
