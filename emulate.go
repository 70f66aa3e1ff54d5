package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"time"
)

// What the emulator claims to be: a Milan B0 at a current TCB. The
// microcode SPL 0xDB is >= 0x80 on purpose, so that every run exercises the
// DER INTEGER encoding of SPLs that a naive parser gets wrong.
const (
	emulatedProductLine = string(productMilan)
	emulatedProductName = "Milan-B0"
	emulatedCPUIDFamily = 0x19
	emulatedCPUIDModel  = 0x01
	emulatedCPUIDStep   = 0x01
	emulatedReportVer   = 3
	emulatedPolicy      = 0x3001F // ABI 0.31, SMT allowed, reserved bit 17, debug off
	emulatedPlatform    = 0x3     // SMT enabled, TSME enabled
	// emulatedRSABits: AMD's ASK and ARK are RSA-4096, whose generation
	// takes 2-10 s here (measured); 3072 takes well under a second and
	// secures nothing less that matters, since no one trusts this chain.
	emulatedRSABits = 3072
)

// emulatedTCB is the Milan TCB_VERSION the VCEK certifies and every report
// carries: boot loader 4, TEE 0, SNP 0x18, microcode 0xDB.
var emulatedTCB = tcbParts{BL: 4, TEE: 0, SNP: 0x18, Ucode: 0xDB}

// emulatorIdentity is one emulated machine: its keys, chain and per-run
// identifiers. Made once per run, in the background.
type emulatorIdentity struct {
	*backgroundWork // the fields below are set once it is done

	vcek        *ecdsa.PrivateKey
	certs       *platformCerts
	chipID      [64]byte
	measurement [48]byte
	reportID    [32]byte
}

// newEmulatorIdentity queues making an identity as background work for
// kg and returns at once: generating RSA keys must not delay start-up or
// /status. The first report hurries it.
func newEmulatorIdentity(rsaBits int, kg *keygen, log *slog.Logger) *emulatorIdentity {
	id := &emulatorIdentity{}
	id.backgroundWork = startBackgroundOn(kg, "the SNP emulator's keys", func() error {
		start := time.Now()
		if err := id.generate(rsaBits); err != nil {
			log.Error("SNP emulator: making its keys failed", "err", err)
			return err
		}
		// Public facts only: never a key.
		log.Info("SNP emulator ready: emulated VCEK, ASK and ARK made", "duration", time.Since(start).Round(time.Millisecond), "tcb", fmt.Sprintf("%016x", id.certs.TCB))
		return nil
	})
	return id
}

func (id *emulatorIdentity) generate(rsaBits int) error {
	for _, b := range [][]byte{id.chipID[:], id.measurement[:], id.reportID[:]} {
		if _, err := rand.Read(b); err != nil {
			return err
		}
	}
	arkKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return fmt.Errorf("ARK key: %w", err)
	}
	askKey, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return fmt.Errorf("ASK key: %w", err)
	}
	id.vcek, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return fmt.Errorf("VCEK key: %w", err)
	}
	id.certs, err = emulatedChain(arkKey, askKey, id.vcek, emulatedTCB, id.chipID[:])
	return err
}

// amdName is a subject or issuer as AMD writes them.
func amdName(cn string) pkix.Name {
	return pkix.Name{
		CommonName:         cn,
		Organization:       []string{"Advanced Micro Devices"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		Country:            []string{"US"},
	}
}

// emulatedChain certifies vcek for tcb and hwID under a self-signed ARK and
// an ASK, with AMD's names, algorithms (RSASSA-PSS SHA-384) and VCEK
// extensions.
func emulatedChain(arkKey, askKey *rsa.PrivateKey, vcek *ecdsa.PrivateKey, tcb tcbParts, hwID []byte) (*platformCerts, error) {
	now := time.Now().Add(-time.Hour) // tolerate a verifier's clock a little behind
	crl := "https://kdsintf.amd.com/vcek/v1/" + emulatedProductLine + "/crl"
	ark, err := createCert(amdCATemplate("ARK-"+emulatedProductLine, crl, now), nil, &arkKey.PublicKey, arkKey)
	if err != nil {
		return nil, fmt.Errorf("emulated ARK: %w", err)
	}
	ask, err := createCert(amdCATemplate("SEV-"+emulatedProductLine, crl, now), ark, &askKey.PublicKey, arkKey)
	if err != nil {
		return nil, fmt.Errorf("emulated ASK: %w", err)
	}
	exts, err := vcekExtensions(tcb, hwID, emulatedProductName)
	if err != nil {
		return nil, err
	}
	vcekTmpl := &x509.Certificate{
		SerialNumber:       big.NewInt(0), // as AMD's VCEKs
		Subject:            amdName("SEV-VCEK"),
		NotBefore:          now,
		NotAfter:           now.AddDate(7, 0, 0),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		ExtraExtensions:    exts,
	}
	vcekCert, err := createCert(vcekTmpl, ask, &vcek.PublicKey, askKey)
	if err != nil {
		return nil, fmt.Errorf("emulated VCEK: %w", err)
	}
	var chain bytes.Buffer
	for _, c := range []*x509.Certificate{vcekCert, ask, ark} {
		if err := pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}); err != nil {
			return nil, err
		}
	}
	return &platformCerts{VCEK: vcekCert, ASK: ask, ARK: ark, ChainPEM: chain.Bytes(), TCB: composeTCB(productMilan, tcb)}, nil
}

// amdCATemplate is an ARK or ASK as AMD issues them: a CA signing with
// RSASSA-PSS SHA-384, with AMD's name and CRL location.
func amdCATemplate(commonName, crl string, notBefore time.Time) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               amdName(commonName),
		NotBefore:             notBefore,
		NotAfter:              notBefore.AddDate(25, 0, 0),
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		CRLDistributionPoints: []string{crl},
	}
}

// createCert signs tmpl with signer; a nil parent makes it self-signed.
func createCert(tmpl, parent *x509.Certificate, pub any, signer any) (*x509.Certificate, error) {
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return big.NewInt(1)
	}
	return n.Add(n, big.NewInt(1))
}

// vcekExtensions builds the extensions AMD's KDS puts in a Milan/Genoa
// VCEK certifying tcb: SPLs as DER INTEGERs, the product name as an
// IA5String and the hwID as its raw 64 bytes, without a DER tag, exactly as
// KDS does.
func vcekExtensions(tcb tcbParts, hwID []byte, productName string) ([]pkix.Extension, error) {
	if len(hwID) != hwidSizeMilan {
		return nil, fmt.Errorf("hwID is %d bytes, want %d", len(hwID), hwidSizeMilan)
	}
	derInt := func(v uint8) []byte {
		b, _ := asn1.Marshal(int(v)) // cannot fail for an int
		return b
	}
	name, err := asn1.MarshalWithParams(productName, "ia5")
	if err != nil {
		return nil, fmt.Errorf("product name %q: %w", productName, err)
	}
	exts := []pkix.Extension{
		{Id: oidStructVersion, Value: derInt(1)},
		{Id: oidProductName, Value: name},
	}
	for _, spl := range []struct {
		oid asn1.ObjectIdentifier
		v   uint8
	}{
		{oidBlSPL, tcb.BL}, {oidTeeSPL, tcb.TEE}, {oidSnpSPL, tcb.SNP},
		{oidSpl4, tcb.Reserved[0]}, {oidSpl5, tcb.Reserved[1]}, {oidSpl6, tcb.Reserved[2]}, {oidSpl7, tcb.Reserved[3]},
		{oidUcodeSPL, tcb.Ucode},
	} {
		exts = append(exts, pkix.Extension{Id: spl.oid, Value: derInt(spl.v)})
	}
	exts = append(exts, pkix.Extension{Id: oidHWID, Value: bytes.Clone(hwID)})
	return exts, nil
}

// emulator is the teeDevice behind -emulate; it is also the
// platformCertSource that hands out its own chain.
type emulator struct {
	id       *emulatorIdentity
	hostData [32]byte
}

func newEmulator(opts teeOptions) *emulator {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kg := opts.Keygen
	if kg == nil {
		kg = newKeygen()
	}
	return newEmulatorWith(newEmulatorIdentity(emulatedRSABits, kg, log), opts.SecurityPolicy)
}

// newEmulatorWith binds an identity to one security policy: HOST_DATA is
// its sha256 as the platform sets it, zero when there is none.
func newEmulatorWith(id *emulatorIdentity, policy []byte) *emulator {
	e := &emulator{id: id}
	if len(policy) > 0 {
		e.hostData = sha256.Sum256(policy)
	}
	return e
}

func (e *emulator) Name() string { return "emulator" }

func (e *emulator) Emulated() bool { return true }

// concurrentReports: the emulator's identity is read-only once made, and
// each report is a buffer of its own.
func (e *emulator) concurrentReports() {}

func (e *emulator) PlatformCerts(ctx context.Context) (*platformCerts, error) {
	if err := e.id.wait(ctx); err != nil {
		return nil, err
	}
	return e.id.certs, nil
}

func (e *emulator) GetReport(ctx context.Context, reportData [64]byte) ([]byte, error) {
	if err := e.id.wait(ctx); err != nil {
		return nil, err
	}
	r := e.unsignedReport(reportData)
	if err := signReport(r, e.id.vcek); err != nil {
		return nil, fmt.Errorf("SNP emulator: %w", err)
	}
	return r, nil
}

// unsignedReport lays out a version 3 report as a Milan's firmware would.
func (e *emulator) unsignedReport(reportData [64]byte) []byte {
	b := make([]byte, reportSize)
	le := binary.LittleEndian
	tcb := e.id.certs.TCB
	le.PutUint32(b[0x000:], emulatedReportVer)
	le.PutUint64(b[0x008:], emulatedPolicy)
	le.PutUint32(b[0x030:], 0) // VMPL
	le.PutUint32(b[0x034:], sigAlgoECDSAP384SHA384)
	le.PutUint64(b[0x038:], tcb) // CURRENT_TCB
	le.PutUint64(b[0x040:], emulatedPlatform)
	le.PutUint32(b[0x048:], 0) // SIGNER_INFO: VCEK, chip ID not masked
	copy(b[0x050:], reportData[:])
	copy(b[0x090:], e.id.measurement[:])
	copy(b[0x0C0:], e.hostData[:])
	copy(b[0x140:], e.id.reportID[:])
	copy(b[0x160:0x180], bytes.Repeat([]byte{0xFF}, 32)) // REPORT_ID_MA: no migration agent
	le.PutUint64(b[0x180:], tcb)                         // REPORTED_TCB
	b[0x188], b[0x189], b[0x18A] = emulatedCPUIDFamily, emulatedCPUIDModel, emulatedCPUIDStep
	copy(b[0x1A0:], e.id.chipID[:])
	le.PutUint64(b[0x1E0:], tcb)                    // COMMITTED_TCB
	b[0x1E8], b[0x1E9], b[0x1EA] = 0x15, 0x37, 0x01 // CURRENT build 21, firmware 1.55
	b[0x1EC], b[0x1ED], b[0x1EE] = 0x15, 0x37, 0x01 // COMMITTED
	le.PutUint64(b[0x1F0:], tcb)                    // LAUNCH_TCB
	return b
}

// signReport signs [0, 0x2A0) with ECDSA P-384 SHA-384 and stores R and S
// as 72-byte little-endian integers, as the AMD secure processor does.
func signReport(report []byte, key *ecdsa.PrivateKey) error {
	if len(report) != reportSize {
		return errors.New("report has the wrong size")
	}
	digest := sha512.Sum384(report[:signedPartSize])
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return fmt.Errorf("sign report: %w", err)
	}
	sig := report[signedPartSize:]
	clear(sig)
	putLittleEndian(sig[0:72], r)
	putLittleEndian(sig[72:144], s)
	return nil
}

// putLittleEndian writes n into dst least significant byte first.
func putLittleEndian(dst []byte, n *big.Int) {
	be := n.FillBytes(make([]byte, len(dst)))
	for i := range be {
		dst[i] = be[len(be)-1-i]
	}
}
