package main

import (
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The protobuf messages of the gRPC services are a few string and bytes
// fields each, so they are read and written with protowire directly: no
// generated code, no reflection-based runtime in the binary.

// protoFields reads a message and returns the last value of each field in
// known (proto3 semantics: the last one wins). All known fields are
// length-delimited (string, bytes or message); one with another wire type
// is refused, unknown fields are skipped. Presence is having a key.
func protoFields(b []byte, known ...protowire.Number) (map[protowire.Number][]byte, error) {
	out := map[protowire.Number][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("field tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		isKnown := false
		for _, k := range known {
			isKnown = isKnown || k == num
		}
		if isKnown && typ != protowire.BytesType {
			return nil, fmt.Errorf("field %d has wire type %d, want length-delimited", num, typ)
		}
		if isKnown {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			out[num] = v
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, fmt.Errorf("unknown field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	return out, nil
}

// protoString is a string field of fields, checked to be UTF-8 as proto3
// requires.
func protoString(fields map[protowire.Number][]byte, num protowire.Number, name string) (string, error) {
	v := fields[num]
	if !utf8.Valid(v) {
		return "", fmt.Errorf("string field %s (%d) is not valid UTF-8", name, num)
	}
	return string(v), nil
}

// decodeSingleField reads a request message whose one field is number 1,
// as every key provider input is. A message that is not protobuf is the
// caller's mistake.
func decodeSingleField(msg []byte, name string, isString bool) ([]byte, error) {
	fields, err := protoFields(msg, 1)
	if err != nil {
		return nil, newError(kindInvalid, err, "request message is not valid protobuf")
	}
	if isString {
		if _, err := protoString(fields, 1, name); err != nil {
			return nil, newError(kindInvalid, err, "request message is not valid protobuf")
		}
	}
	return fields[1], nil
}

// appendProtoBytes appends a bytes or string field; proto3 leaves out an
// empty one.
func appendProtoBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendProtoString(b []byte, num protowire.Number, s string) []byte {
	return appendProtoBytes(b, num, []byte(s))
}

// appendProtoMessage appends an embedded message; it is written even when
// empty, since its presence says something (a oneof member).
func appendProtoMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendProtoVarint(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}
