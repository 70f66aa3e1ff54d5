package main

import (
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// The key provider's protobuf interface, as Microsoft's key_provider.proto
// defines it, and the FileDescriptorProto that server reflection hands to
// clients such as grpcurl, built by hand from these tables.

// protoField is a singular proto3 string or bytes field.
type protoField struct {
	name   string
	number protowire.Number
	bytes  bool // bytes, else string
	// jsonName overrides protoc's lowerCamelCase JSON name.
	jsonName string
}

type protoMessage struct {
	name   string
	fields []protoField
}

type protoMethod struct {
	name, input, output string
}

type protoService struct {
	name    string
	methods []protoMethod
}

// protoFile is one .proto file: a package, its messages and one service.
type protoFile struct {
	name     string // file name, e.g. key_provider.proto
	pkg      string
	messages []protoMessage
	service  protoService
}

// keyProviderMessages are the messages of key_provider.proto. The wrap
// protocol fields take the JSON names "KeyProviderKeyWrapProtocolInput" and
// "KeyProviderKeyWrapProtocolOutput" instead of protoc's lowerCamelCase:
// grpcurl matches JSON members by JSON name or field name only, and the
// JSON that Microsoft's unwrap.sh sends and reads (and ocicrypt's own
// keyprovider.proto uses) spells them that way.
var keyProviderMessages = []protoMessage{
	{"KeyProviderKeyWrapProtocolInput", []protoField{{"key_provider_key_wrap_protocol_input", 1, true, "KeyProviderKeyWrapProtocolInput"}}},
	{"KeyProviderKeyWrapProtocolOutput", []protoField{{"key_provider_key_wrap_protocol_output", 1, true, "KeyProviderKeyWrapProtocolOutput"}}},
	{"KeyProviderGetReportInput", []protoField{{"report_data_hex_string", 1, false, ""}}},
	{"KeyProviderGetReportOutput", []protoField{{"report_hex_string", 1, false, ""}}},
	{"KeyProviderGetAttestationDataInput", []protoField{{"b64_runtime_data_string", 1, false, ""}}},
	{"KeyProviderGetAttestationDataOutput", []protoField{
		{"endorsed_tcb", 1, false, ""},
		{"certs", 2, false, ""},
		{"attestation_report", 3, false, ""},
		{"uvm_reference_info", 4, false, ""},
	}},
	{"HelloRequest", []protoField{{"name", 1, false, ""}}},
	{"HelloReply", []protoField{{"message", 1, false, ""}}},
}

var keyProviderService = protoService{"KeyProviderService", []protoMethod{
	{"WrapKey", "KeyProviderKeyWrapProtocolInput", "KeyProviderKeyWrapProtocolOutput"},
	{"UnWrapKey", "KeyProviderKeyWrapProtocolInput", "KeyProviderKeyWrapProtocolOutput"},
	{"GetReport", "KeyProviderGetReportInput", "KeyProviderGetReportOutput"},
	{"GetAttestationData", "KeyProviderGetAttestationDataInput", "KeyProviderGetAttestationDataOutput"},
	{"SayHello", "HelloRequest", "HelloReply"},
}}

// keyProviderFiles are the two packages the key provider is served under:
// Microsoft's key_provider and ocicrypt's keyprovider (whose clients, such
// as containerd's imgcrypt, call /keyprovider.KeyProviderService/UnWrapKey
// with the same wire format).
var keyProviderFiles = []protoFile{
	{name: "key_provider.proto", pkg: "key_provider", messages: keyProviderMessages, service: keyProviderService},
	{name: "keyprovider.proto", pkg: "keyprovider", messages: keyProviderMessages, service: keyProviderService},
}

// fullName is the service's fully qualified name, as in a gRPC path.
func (f protoFile) fullName() string { return f.pkg + "." + f.service.name }

// symbols are the fully qualified names a reflection client may ask about:
// the service, its methods, the messages and their fields.
func (f protoFile) symbols() []string {
	s := []string{f.fullName()}
	for _, m := range f.service.methods {
		s = append(s, f.fullName()+"."+m.name)
	}
	for _, m := range f.messages {
		s = append(s, f.pkg+"."+m.name)
		for _, fd := range m.fields {
			s = append(s, f.pkg+"."+m.name+"."+fd.name)
		}
	}
	return s
}

// Field numbers and values of google/protobuf/descriptor.proto.
const (
	fileName, filePackage, fileMessageType, fileService, fileSyntax = 1, 2, 4, 6, 12
	messageName, messageField                                       = 1, 2
	fieldName, fieldNumber, fieldLabel, fieldType, fieldJSONName    = 1, 3, 4, 5, 10
	serviceName, serviceMethod                                      = 1, 2
	methodName, methodInput, methodOutput                           = 1, 2, 3

	labelOptional         = 1
	typeString, typeBytes = 9, 12
)

// descriptor encodes f as a serialized FileDescriptorProto.
func (f protoFile) descriptor() []byte {
	var b []byte
	b = appendProtoString(b, fileName, f.name)
	b = appendProtoString(b, filePackage, f.pkg)
	for _, m := range f.messages {
		b = appendProtoMessage(b, fileMessageType, m.descriptor())
	}
	b = appendProtoMessage(b, fileService, f.serviceDescriptor())
	return appendProtoString(b, fileSyntax, "proto3")
}

func (m protoMessage) descriptor() []byte {
	b := appendProtoString(nil, messageName, m.name)
	for _, fd := range m.fields {
		typ := uint64(typeString)
		if fd.bytes {
			typ = typeBytes
		}
		json := fd.jsonName
		if json == "" {
			json = lowerCamelCase(fd.name)
		}
		var f []byte
		f = appendProtoString(f, fieldName, fd.name)
		f = appendProtoVarint(f, fieldNumber, uint64(fd.number))
		f = appendProtoVarint(f, fieldLabel, labelOptional)
		f = appendProtoVarint(f, fieldType, typ)
		f = appendProtoString(f, fieldJSONName, json)
		b = appendProtoMessage(b, messageField, f)
	}
	return b
}

func (f protoFile) serviceDescriptor() []byte {
	b := appendProtoString(nil, serviceName, f.service.name)
	for _, m := range f.service.methods {
		var md []byte
		md = appendProtoString(md, methodName, m.name)
		md = appendProtoString(md, methodInput, "."+f.pkg+"."+m.input)
		md = appendProtoString(md, methodOutput, "."+f.pkg+"."+m.output)
		b = appendProtoMessage(b, serviceMethod, md)
	}
	return b
}

// lowerCamelCase is protoc's default JSON name: underscores dropped, the
// letter after each one upper-cased.
func lowerCamelCase(s string) string {
	var b strings.Builder
	upper := false
	for _, r := range s {
		switch {
		case r == '_':
			upper = true
		case upper && 'a' <= r && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
			upper = false
		default:
			b.WriteRune(r)
			upper = false
		}
	}
	return b.String()
}
