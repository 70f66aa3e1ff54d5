package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// importMaterial is the private key to import and the files to write.
type importMaterial struct {
	Key       any // *rsa.PrivateKey, *ecdsa.PrivateKey or []byte
	Generated bool
	Files     []pendingFile
	Derived   []byte // the symmetric key derived from RSA d, for -out
}

// wipe clears the key material held in memory.
func (m *importMaterial) wipe() {
	zeroPrivateKey(m.Key)
	clear(m.Derived)
	for _, f := range m.Files {
		clear(f.Content)
	}
}

// pendingFile is a file to be created with mode 0600, never overwritten.
type pendingFile struct {
	Path    string
	What    string
	Content []byte
}

// loadKeyMaterial reads a given key (it does not generate one yet) and
// lists the files the run will write.
func loadKeyMaterial(fl *importFlags, p *importPlan) (*importMaterial, error) {
	m := &importMaterial{}
	var err error
	switch {
	case fl.KeyHex != "":
		if m.Key, err = readOctKey(fl.KeyHex); err != nil {
			return nil, err
		}
	case fl.KeyPEM != "":
		if m.Key, err = readPrivateKeyPEM(fl.KeyPEM, p); err != nil {
			return nil, err
		}
	default:
		m.Generated = true
	}
	base := filepath.Join(fl.KeyDir, p.KID)
	switch {
	case m.Generated && p.KTY == ktyOct, fl.Out && p.KTY == ktyOct:
		m.Files = append(m.Files, pendingFile{Path: base + ".hex", What: "the oct-HSM key (hex)"})
	case m.Generated:
		m.Files = append(m.Files, pendingFile{Path: base + ".pem", What: "the generated private key (PKCS#8 PEM)"})
	}
	if fl.Out && p.KTY == ktyRSA {
		m.Files = append(m.Files, pendingFile{Path: base + ".derived.hex", What: "the key derived from the RSA private exponent (hex)"})
	}
	return m, nil
}

// plannedFilesAbsent refuses to run when a file it would write exists: a
// key file is never overwritten.
func plannedFilesAbsent(m *importMaterial) error {
	for _, f := range m.Files {
		if _, err := os.Lstat(f.Path); err == nil {
			return fmt.Errorf("%s already exists: move it away or choose another -keydir (key files are never overwritten)", f.Path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("check %s: %w", f.Path, err)
		}
	}
	return nil
}

// readOctKey reads -kh: hex on the command line, or a file holding the key
// as hex (white space ignored) or as raw bytes. A file is read when the
// argument names one; its content is taken as hex when it is nothing but
// an even number of hex digits, else as raw bytes.
func readOctKey(arg string) ([]byte, error) {
	var key []byte
	raw, err := readBounded(arg, maxKeyFile)
	switch {
	case err == nil:
		key = raw
		if h := bytes.TrimSpace(raw); isHexString(h) {
			key = make([]byte, hex.DecodedLen(len(h)))
			hex.Decode(key, h)
			clear(raw)
		}
	case errors.Is(err, fs.ErrNotExist):
		if !isHexString(arg) {
			return nil, errors.New("-kh is neither an existing file nor a hex string")
		}
		key, _ = hex.DecodeString(arg)
	default:
		return nil, fmt.Errorf("-kh: %w", err)
	}
	if !validOctSizes[len(key)] {
		n := len(key)
		clear(key)
		return nil, fmt.Errorf("-kh: the oct-HSM key is %d bytes; Managed HSM imports AES keys of 16, 24 or 32 bytes", n)
	}
	return key, nil
}

func isHexString[T string | []byte](s T) bool {
	if len(s) == 0 || len(s)%2 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// readPrivateKeyPEM reads -kp and checks it fits the config's kty.
func readPrivateKeyPEM(path string, p *importPlan) (any, error) {
	raw, err := readBounded(path, maxKeyFile)
	if err != nil {
		return nil, fmt.Errorf("-kp: %w", err)
	}
	defer clear(raw)
	key, err := parsePrivateKeyPEM(raw)
	if err != nil {
		return nil, fmt.Errorf("-kp %s: %w", path, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if p.KTY != ktyRSA {
			return nil, fmt.Errorf("-kp %s holds an RSA key but key.kty is %s", path, p.KTY)
		}
		if bits := k.N.BitLen(); !validRSABits[bits] {
			return nil, fmt.Errorf("-kp %s: RSA key of %d bits; RSA-HSM keys are 2048, 3072 or 4096 bits", path, bits)
		}
	case *ecdsa.PrivateKey:
		if p.KTY != ktyEC {
			return nil, fmt.Errorf("-kp %s holds an EC key but key.kty is %s", path, p.KTY)
		}
		name := k.Curve.Params().Name
		if _, ok := jwkCurveName(k.Curve); !ok {
			return nil, fmt.Errorf("-kp %s: curve %s; EC-HSM keys are P-256, P-384 or P-521", path, name)
		}
		if p.Curve != nil && p.Curve != k.Curve {
			return nil, fmt.Errorf("-kp %s holds a %s key but key.crv is %s", path, name, p.Curve.Params().Name)
		}
		p.Curve = k.Curve
	default:
		return nil, fmt.Errorf("-kp %s holds a %T key: only RSA and EC keys can be imported", path, key)
	}
	return key, nil
}

// completeKeyMaterial generates the key when none was given and fills the
// contents of the files to write.
func completeKeyMaterial(fl *importFlags, p *importPlan, m *importMaterial) error {
	if m.Generated {
		var err error
		switch p.KTY {
		case ktyOct:
			k := make([]byte, 32)
			rand.Read(k)
			m.Key = k
		case ktyRSA:
			m.Key, err = rsa.GenerateKey(rand.Reader, p.RSABits)
		case ktyEC:
			if p.Curve == nil {
				p.Curve = elliptic.P256()
			}
			m.Key, err = ecdsa.GenerateKey(p.Curve, rand.Reader)
		}
		if err != nil {
			return fmt.Errorf("generate a %s key: %w", p.KTY, err)
		}
	}
	if fl.Out && p.KTY == ktyRSA {
		if p.Salt == nil {
			p.Salt = make([]byte, sha256.Size)
			rand.Read(p.Salt)
		}
		d := m.Key.(*rsa.PrivateKey).D.Bytes()
		derived, err := hkdf.Key(sha256.New, d, p.Salt, p.Label, 32)
		clear(d)
		if err != nil {
			return fmt.Errorf("derive a key from the RSA private exponent: %w", err)
		}
		m.Derived = derived
	}
	for i := range m.Files {
		f := &m.Files[i]
		switch {
		case strings.HasSuffix(f.Path, ".derived.hex"):
			f.Content = hexLine(m.Derived)
			// Salt and label are public; whoever gets the RSA key released
			// needs them to derive the same key.
			f.What = fmt.Sprintf("the key derived from the RSA private exponent (hex; HKDF-SHA256, salt %x, label %q)", p.Salt, p.Label)
		case strings.HasSuffix(f.Path, ".hex"):
			f.Content = hexLine(m.Key.([]byte))
		default:
			der, err := x509.MarshalPKCS8PrivateKey(m.Key)
			if err != nil {
				return fmt.Errorf("encode the generated key: %w", err)
			}
			f.Content = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
			clear(der)
		}
	}
	return nil
}

// writePendingFiles creates each file exclusively with mode 0600. On an
// error it removes what it created.
func writePendingFiles(files []pendingFile) ([]pendingFile, error) {
	var done []pendingFile
	for _, f := range files {
		if err := writeExclusive(f.Path, f.Content); err != nil {
			for _, d := range done {
				os.Remove(d.Path)
			}
			return nil, fmt.Errorf("write %s: %w", f.What, err)
		}
		clear(f.Content)
		done = append(done, f)
	}
	return done, nil
}

// privateJWKMembers are the private members of the key in an import body:
// an error answer must never repeat them.
func privateJWKMembers(body []byte) []string {
	var b struct {
		Key jwk `json:"key"`
	}
	if json.Unmarshal(body, &b) != nil {
		return nil
	}
	var out []string
	for _, v := range []string{b.Key.D, b.Key.P, b.Key.Q, b.Key.DP, b.Key.DQ, b.Key.QI, b.Key.K} {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}
