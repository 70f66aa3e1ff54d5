package main

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"strings"
	"time"
)

// The key provider service's methods. WrapKey and UnWrapKey speak
// ocicrypt's key provider protocol: a JSON document in the one bytes field
// of KeyProviderKeyWrapProtocolInput and Output.

// keyProviderAgent is the attestation-agent parameter that selects this
// key provider.
const keyProviderAgent = "skr"

// keyProviderInput is ocicrypt's KeyProviderKeyWrapProtocolInput JSON.
type keyProviderInput struct {
	Op            string `json:"op"`
	KeyWrapParams struct {
		EC struct {
			Parameters map[string][]string `json:"Parameters"`
		} `json:"ec"`
		OptsData string `json:"optsdata"`
	} `json:"keywrapparams"`
	KeyUnwrapParams struct {
		DC struct {
			Parameters map[string][]string `json:"Parameters"`
		} `json:"dc"`
		Annotation string `json:"annotation"`
	} `json:"keyunwrapparams"`
}

// keyProviderOutput is ocicrypt's KeyProviderKeyWrapProtocolOutput JSON;
// []byte fields are standard base64.
type keyProviderOutput struct {
	KeyWrapResults *struct {
		Annotation []byte `json:"annotation"`
	} `json:"keywrapresults,omitempty"`
	KeyUnwrapResults *struct {
		OptsData []byte `json:"optsdata"`
	} `json:"keyunwrapresults,omitempty"`
}

// keyProviderMethods are the service's methods by name; each takes and
// returns one serialized protobuf message.
func (s *server) keyProviderMethods() map[string]func(context.Context, []byte) ([]byte, error) {
	return map[string]func(context.Context, []byte) ([]byte, error){
		"WrapKey":            s.wrapKeyRPC,
		"UnWrapKey":          s.unwrapKeyRPC,
		"GetReport":          s.getReportRPC,
		"GetAttestationData": s.getAttestationDataRPC,
		"SayHello":           sayHelloRPC,
	}
}

func sayHelloRPC(_ context.Context, req []byte) ([]byte, error) {
	name, err := decodeSingleField(req, "name", true)
	if err != nil {
		return nil, err
	}
	return appendProtoString(nil, 1, "Hello "+string(name)), nil
}

// getReportRPC returns a report whose REPORT_DATA is the hex string
// decoded (at most 64 bytes, zero-padded). Microsoft's server hashes the
// hex text instead, contrary to its own documentation.
func (s *server) getReportRPC(ctx context.Context, req []byte) ([]byte, error) {
	v, err := decodeSingleField(req, "report_data_hex_string", true)
	if err != nil {
		return nil, err
	}
	rd, err := parseReportDataHex(string(v))
	if err != nil {
		return nil, err
	}
	raw, _, err := s.reportWithData(ctx, rd)
	if err != nil {
		return nil, err
	}
	return appendProtoString(nil, 1, hex.EncodeToString(raw)), nil
}

func parseReportDataHex(s string) ([64]byte, error) {
	var rd [64]byte
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return rd, newError(kindInvalid, err, "report_data_hex_string is not hex")
	}
	if len(b) > len(rd) {
		return rd, newError(kindInvalid, nil, "report_data_hex_string is %d bytes, REPORT_DATA holds at most 64", len(b))
	}
	copy(rd[:], b)
	return rd, nil
}

// getAttestationDataRPC is /attest/combined: a report over the runtime
// data with the certificates that match it and the UVM endorsements.
func (s *server) getAttestationDataRPC(ctx context.Context, req []byte) ([]byte, error) {
	v, err := decodeSingleField(req, "b64_runtime_data_string", true)
	if err != nil {
		return nil, err
	}
	rd, err := requiredBase64("b64_runtime_data_string", string(v))
	if err != nil {
		return nil, err
	}
	ev, err := s.evidence(ctx, rd)
	if err != nil {
		return nil, err
	}
	c := newCombinedResponse(ev)
	var b []byte
	b = appendProtoString(b, 1, c.EndorsedTCB)
	b = appendProtoString(b, 2, c.Endorsements)
	b = appendProtoString(b, 3, c.Evidence)
	return appendProtoString(b, 4, c.UVMEndorsements), nil
}

// decodeKeyProviderInput reads the JSON in a wrap protocol input message
// and checks its op.
func decodeKeyProviderInput(req []byte, op string) (*keyProviderInput, error) {
	raw, err := decodeSingleField(req, "key_provider_key_wrap_protocol_input", false)
	if err != nil {
		return nil, err
	}
	var in keyProviderInput
	if err := decodeRequestJSON(raw, &in); err != nil {
		return nil, newError(kindInvalid, err, "key provider input")
	}
	if in.Op != op {
		return nil, newError(kindInvalid, nil, "key provider input: op is %q, want %q for this method", truncate(in.Op, 40), op)
	}
	return &in, nil
}

// agentParameter is the first attestation-agent parameter, base64-decoded.
func agentParameter(params map[string][]string, where string) (string, error) {
	vs := params["attestation-agent"]
	if len(vs) == 0 {
		return "", newError(kindInvalid, nil, "key provider input: %s.Parameters has no attestation-agent (base64 of %q)", where, keyProviderAgent)
	}
	b, err := decodeBase64(vs[0])
	if err != nil {
		return "", newError(kindInvalid, err, "key provider input: %s.Parameters attestation-agent is not base64", where)
	}
	return string(b), nil
}

func encodeKeyProviderOutput(out keyProviderOutput) ([]byte, error) {
	js, err := json.Marshal(out)
	if err != nil {
		return nil, newError(kindInternal, err, "encode the key provider output")
	}
	return appendProtoBytes(nil, 1, js), nil
}

// wrapKeyRPC wraps optsdata with the key named by "skr:KEYPATH" in the
// encryption parameters, from the key files on the sidecar's file system.
func (s *server) wrapKeyRPC(_ context.Context, req []byte) ([]byte, error) {
	in, err := decodeKeyProviderInput(req, "keywrap")
	if err != nil {
		return nil, err
	}
	agent, err := agentParameter(in.KeyWrapParams.EC.Parameters, "keywrapparams.ec")
	if err != nil {
		return nil, err
	}
	name, keyPath, ok := strings.Cut(agent, ":")
	if !ok || !strings.EqualFold(name, keyProviderAgent) || keyPath == "" {
		return nil, newError(kindInvalid, nil, "key provider input: attestation-agent must be base64 of \"skr:KEYPATH\", got %q", truncate(agent, 100))
	}
	secret, err := requiredBase64("optsdata", in.KeyWrapParams.OptsData)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	packet, err := wrapForKey(secret, keyPath)
	if err != nil {
		return nil, err
	}
	var out keyProviderOutput
	out.KeyWrapResults = &struct {
		Annotation []byte `json:"annotation"`
	}{packet}
	return encodeKeyProviderOutput(out)
}

// unwrapKeyRPC releases the RSA key the annotation names, through the same
// path as /key/release (identity included), and decrypts the wrapped data
// with it.
func (s *server) unwrapKeyRPC(ctx context.Context, req []byte) ([]byte, error) {
	in, err := decodeKeyProviderInput(req, "keyunwrap")
	if err != nil {
		return nil, err
	}
	agent, err := agentParameter(in.KeyUnwrapParams.DC.Parameters, "keyunwrapparams.dc")
	if err != nil {
		return nil, err
	}
	if !strings.EqualFold(agent, keyProviderAgent) {
		return nil, newError(kindInvalid, nil, "key provider input: attestation-agent is %q, this key provider is %q", truncate(agent, 100), keyProviderAgent)
	}
	packet, p, err := parseAnnotation(in.KeyUnwrapParams.Annotation)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	jwkJSON, step, err := s.releaseKey(ctx, p)
	if err != nil {
		s.log.With(correlationFrom(ctx).logAttrs()...).Warn("UnWrapKey: key release failed", "kid", p.Key.String(), "akv_endpoint", p.VaultHost, "maa_endpoint", p.MAAHost,
			"step", step, "duration", time.Since(start).Round(time.Microsecond), "err", err)
		return nil, err
	}
	priv, err := releasedRSAKey(jwkJSON, p.Key)
	if err != nil {
		return nil, err
	}
	defer zeroBigInts(append([]*big.Int{priv.D, priv.Precomputed.Dp, priv.Precomputed.Dq, priv.Precomputed.Qinv}, priv.Primes...)...)
	plain, err := rsa.DecryptOAEP(sha256.New(), nil, priv, packet.WrappedData, nil)
	if err != nil {
		return nil, newError(kindInvalid, err, "wrapped_data does not decrypt with key %q (RSA-OAEP, SHA-256): was it wrapped with this key's public half?", p.Key.String())
	}
	defer clear(plain)
	s.log.With(correlationFrom(ctx).logAttrs()...).Info("key unwrapped", "kid", p.Key.String(), "akv_endpoint", p.VaultHost, "maa_endpoint", p.MAAHost,
		"duration", time.Since(start).Round(time.Microsecond))
	var out keyProviderOutput
	out.KeyUnwrapResults = &struct {
		OptsData []byte `json:"optsdata"`
	}{plain}
	return encodeKeyProviderOutput(out)
}

// releasedRSAKey reads the released JWK; UnWrapKey needs an RSA key.
func releasedRSAKey(jwkJSON string, key keyRef) (*rsa.PrivateKey, error) {
	k, err := parseJWK([]byte(jwkJSON))
	if err != nil {
		return nil, newError(kindInternal, err, "read the released key %q", key.String())
	}
	if k.Kty != "RSA" {
		return nil, newError(kindPrecondition, nil, "key %q is a %s key: UnWrapKey needs an RSA key (RSA-HSM, as the key setup creates)", key.String(), k.Kty)
	}
	priv, err := k.rsaPrivateKey()
	if err != nil {
		return nil, newError(kindInternal, err, "read the released RSA key %q", key.String())
	}
	return priv, nil
}
