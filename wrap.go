package main

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// The wrap format of the key provider: a secret encrypted with RSA-OAEP
// (SHA-256) to the public half of an RSA key held in Key Vault or Managed
// HSM, in an annotation packet that says which key, vault and attestation
// service can unwrap it. "skr wrap" (or Microsoft's "skr -infile F
// -keypath P -outfile F") writes one; UnWrapKey releases the key and
// decrypts it.

// annotationPacket is the JSON inside an annotation. []byte fields are
// standard base64 in JSON, as Microsoft's tool writes them.
type annotationPacket struct {
	Kid              string `json:"kid"`
	WrappedData      []byte `json:"wrapped_data"`
	IV               []byte `json:"iv,omitempty"`
	WrapType         string `json:"wrap_type,omitempty"`
	KMSEndpoint      string `json:"kms_endpoint,omitempty"`
	AttesterEndpoint string `json:"attester_endpoint,omitempty"`
}

// keyInfoFile is KEYPATH-info.json, as Microsoft's setup-key script writes
// it beside the public key it downloads.
type keyInfoFile struct {
	PublicKeyPath    string `json:"public_key_path"`
	KMSEndpoint      string `json:"kms_endpoint"`
	AttesterEndpoint string `json:"attester_endpoint"`
}

// maxWrapFile bounds the secret file read; RSA-OAEP wraps a few hundred
// bytes at most anyway.
const maxWrapFile = 64 << 10

// wrapForKey wraps secret with the key keyPath names: its Key Vault name
// is keyPath's base name; KEYPATH-info.json gives the vault, the
// attestation service and the public key's PEM file (relative paths are
// relative to the current directory, as with Microsoft's tool; when
// public_key_path is empty, KEYPATH-pub.pem). It returns the annotation
// packet's JSON.
func wrapForKey(secret []byte, keyPath string) ([]byte, error) {
	if strings.TrimSpace(keyPath) == "" {
		return nil, newError(kindInvalid, nil, "no key path: name the key as PATH/KEYNAME, with PATH/KEYNAME-info.json beside it")
	}
	kid := filepath.Base(keyPath)
	if _, err := parseKeyRef(kid); err != nil {
		return nil, newError(kindInvalid, err, "key path %q: its last element %q must be the Key Vault key name", keyPath, kid)
	}
	infoPath := keyPath + "-info.json"
	raw, err := readBounded(infoPath, maxKeyFile)
	if err != nil {
		return nil, newError(kindInvalid, err, "key info file %s (written by the key setup beside the public key)", infoPath)
	}
	var info keyInfoFile
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, newError(kindInvalid, err, "key info file %s is not the JSON object {\"public_key_path\",\"kms_endpoint\",\"attester_endpoint\"}", infoPath)
	}
	vault, err := normalizeEndpoint("kms_endpoint", info.KMSEndpoint)
	if err != nil {
		return nil, fmt.Errorf("key info file %s: %w", infoPath, err)
	}
	maa, err := normalizeEndpoint("attester_endpoint", info.AttesterEndpoint)
	if err != nil {
		return nil, fmt.Errorf("key info file %s: %w", infoPath, err)
	}
	pubPath := info.PublicKeyPath
	if pubPath == "" {
		pubPath = keyPath + "-pub.pem"
	}
	pub, err := readRSAPublicKey(pubPath)
	if err != nil {
		return nil, newError(kindInvalid, err, "public key of %q (public_key_path in %s; relative to the current directory)", kid, infoPath)
	}
	wrapped, err := wrapSecret(pub, secret)
	if err != nil {
		return nil, err
	}
	return json.Marshal(annotationPacket{
		Kid:              kid,
		WrappedData:      wrapped,
		WrapType:         "rsa_" + strconv.Itoa(pub.N.BitLen()),
		KMSEndpoint:      vault,
		AttesterEndpoint: maa,
	})
}

// wrapSecret is RSA-OAEP with SHA-256 and no label, as UnWrapKey undoes it.
func wrapSecret(pub *rsa.PublicKey, secret []byte) ([]byte, error) {
	if limit := pub.Size() - 2*sha256.Size - 2; len(secret) > limit {
		return nil, newError(kindInvalid, nil, "the secret is %d bytes, RSA-OAEP with a %d-bit key wraps at most %d: wrap a data key instead", len(secret), pub.N.BitLen(), limit)
	}
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, secret, nil)
	if err != nil {
		return nil, newError(kindInternal, err, "RSA-OAEP encryption")
	}
	return ct, nil
}

// readRSAPublicKey reads a PEM "PUBLIC KEY" (what az keyvault key download
// writes) or "RSA PUBLIC KEY" of at least 2048 bits.
func readRSAPublicKey(path string) (*rsa.PublicKey, error) {
	raw, err := readBounded(path, maxKeyFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(raw)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM block", path)
	}
	var key any
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s holds a %q PEM block, want PUBLIC KEY", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pub, ok := key.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, want an RSA public key", path, key)
	}
	if pub.N.BitLen() < 2048 {
		return nil, fmt.Errorf("%s holds an RSA-%d key, want at least 2048 bits", path, pub.N.BitLen())
	}
	return pub, nil
}

// parseAnnotation reads an annotation (base64 of the packet JSON) and
// checks what UnWrapKey needs: the key, the endpoints, the wrapped data.
func parseAnnotation(b64 string) (*annotationPacket, *keyReleaseParams, error) {
	raw, err := requiredBase64("annotation", b64)
	if err != nil {
		return nil, nil, err
	}
	var p annotationPacket
	if err := decodeRequestJSON(raw, &p); err != nil {
		return nil, nil, newError(kindInvalid, err, "annotation packet")
	}
	if len(p.WrappedData) == 0 {
		return nil, nil, newError(kindInvalid, nil, "annotation packet has no wrapped_data")
	}
	if p.WrapType != "" && !strings.HasPrefix(p.WrapType, "rsa_") {
		return nil, nil, newError(kindInvalid, nil, "annotation packet: wrap_type %q is not RSA-OAEP (rsa_3072)", truncate(p.WrapType, 40))
	}
	key, err := parseKeyRef(p.Kid)
	if err != nil {
		return nil, nil, newError(kindInvalid, err, "annotation packet")
	}
	vault, err := normalizeEndpoint("kms_endpoint", p.KMSEndpoint)
	if err != nil {
		return nil, nil, newError(kindInvalid, err, "annotation packet")
	}
	maa, err := normalizeEndpoint("attester_endpoint", p.AttesterEndpoint)
	if err != nil {
		return nil, nil, newError(kindInvalid, err, "annotation packet")
	}
	return &p, &keyReleaseParams{MAAHost: maa, VaultHost: vault, Key: key}, nil
}

// isWrapInvocation tells Microsoft's wrap mode (skr -infile ...) from a
// server start.
func isWrapInvocation(args []string) bool {
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") && name == "infile" {
			return true
		}
	}
	return false
}

// runWrap is "skr wrap -infile F -keypath P -outfile F": it writes the
// base64 annotation packet that UnWrapKey unwraps.
func runWrap(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("skr wrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("infile", "", "the file whose content (the secret) is wrapped (required)")
	keyPath := fs.String("keypath", "", "PATH/KEYNAME of the wrapping key: PATH/KEYNAME-info.json names its vault, attestation service and public key (required)")
	out := fs.String("outfile", "", "where the base64 annotation packet goes (required)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: skr wrap -infile FILE -keypath PATH/KEYNAME -outfile FILE   (also: skr -infile ... as Microsoft's binary)")
		fmt.Fprintln(stderr, "Wraps a secret with an RSA key's public half for the gRPC key provider's UnWrapKey.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 || *in == "" || *keyPath == "" || *out == "" {
		fmt.Fprintln(stderr, "skr wrap: -infile, -keypath and -outfile are required, and nothing else")
		fs.Usage()
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "skr wrap: %s\n", oneLine(err.Error()))
		return 1
	}
	secret, err := readBounded(*in, maxWrapFile)
	if err != nil {
		return fail(fmt.Errorf("read the secret: %w", err))
	}
	defer clear(secret)
	packet, err := wrapForKey(secret, *keyPath)
	if err != nil {
		return fail(err)
	}
	// Not secret (only the key's holder can unwrap it), and read by other
	// tools: 0644, as Microsoft's tool writes it.
	if err := writeFileAtomic(*out, []byte(base64.StdEncoding.EncodeToString(packet)), 0o644); err != nil {
		return fail(err)
	}
	fmt.Fprintf(stdout, "wrapped %s for key %s: %s\n", *in, filepath.Base(*keyPath), *out)
	return 0
}
