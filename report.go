package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
)

// reportDataFor binds runtime data to a report: sha256 followed by zeros.
func reportDataFor(runtimeData []byte) [64]byte {
	var rd [64]byte
	h := sha256.Sum256(runtimeData)
	copy(rd[:], h[:])
	return rd
}

// verifyEvidence checks the report's signature with certs.VCEK and that the
// VCEK chains to certs.ASK and certs.ARK.
func verifyEvidence(rep *snpReport, certs *platformCerts) error {
	if rep == nil {
		return errors.New("no report")
	}
	if len(rep.Raw) != reportSize {
		return fmt.Errorf("report has %d raw bytes, want %d", len(rep.Raw), reportSize)
	}
	if err := verifyChainOnce(certs); err != nil {
		return err
	}
	info, err := parseVCEKExtensions(certs.VCEK)
	if err != nil {
		return fmt.Errorf("VCEK: %w", err)
	}
	if k := rep.SigningKey(); k != 0 {
		return fmt.Errorf("the report is signed by %s, not by a VCEK", signingKeyName(k))
	}
	if rep.SignatureAlgo != 1 {
		return fmt.Errorf("report SIGNATURE_ALGO is %d, want 1 (ECDSA P-384 with SHA-384)", rep.SignatureAlgo)
	}
	pub, ok := certs.VCEK.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return fmt.Errorf("VCEK key is %T, want an ECDSA P-384 key", certs.VCEK.PublicKey)
	}
	digest := sha512.Sum384(rep.Raw[:signedPartSize])
	r, s := littleEndianInt(rep.SignatureR[:]), littleEndianInt(rep.SignatureS[:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return fmt.Errorf("the report's signature does not verify with the VCEK (%s, TCB %s)",
			info.ProductName, formatTCB(info.Product, info.TCB))
	}
	if info.TCB != rep.ReportedTCB || certs.TCB != rep.ReportedTCB {
		return fmt.Errorf("the VCEK certifies TCB %s (handed out as %016x) but the report's REPORTED_TCB is %s",
			formatTCB(info.Product, info.TCB), certs.TCB, formatTCB(info.Product, rep.ReportedTCB))
	}
	if info.HWID != nil && !chipIDMasked(rep.ChipID) && !hwidMatchesChip(info.HWID, rep.ChipID) {
		return fmt.Errorf("the VCEK is for hardware id %x, not for the report's CHIP_ID %x", info.HWID, rep.ChipID)
	}
	return nil
}

func signingKeyName(k uint32) string {
	switch k {
	case 0:
		return "the VCEK"
	case 1:
		return "a VLEK (SIGNING_KEY=1; not supported)"
	case 7:
		return "no key (SIGNING_KEY=7)"
	}
	return fmt.Sprintf("an unknown key (SIGNING_KEY=%d)", k)
}

func littleEndianInt(le []byte) *big.Int {
	be := make([]byte, len(le))
	for i, b := range le {
		be[len(le)-1-i] = b
	}
	return new(big.Int).SetBytes(be)
}

// Report layout constants.
const (
	reportSize     = 0x4A0 // 1184
	signedPartSize = 0x2A0 // the signature covers bytes [0, 0x2A0)
)

// snpReport is a parsed ATTESTATION_REPORT (versions 2 and up).
type snpReport struct {
	Version         uint32
	GuestSVN        uint32
	Policy          uint64
	FamilyID        [16]byte
	ImageID         [16]byte
	VMPL            uint32
	SignatureAlgo   uint32
	CurrentTCB      uint64
	PlatformInfo    uint64
	SignerInfo      uint32 // bit 0 AUTHOR_KEY_EN, bit 1 MASK_CHIP_KEY, bits 2-4 SIGNING_KEY
	ReportData      [64]byte
	Measurement     [48]byte
	HostData        [32]byte
	IDKeyDigest     [48]byte
	AuthorKeyDigest [48]byte
	ReportID        [32]byte
	ReportIDMA      [32]byte
	ReportedTCB     uint64
	CPUIDFamily     uint8 // v3+
	CPUIDModel      uint8 // v3+
	CPUIDStepping   uint8 // v3+
	ChipID          [64]byte
	CommittedTCB    uint64
	LaunchTCB       uint64
	SignatureR      [72]byte // little-endian
	SignatureS      [72]byte // little-endian
	Raw             []byte   // the 1184 bytes it was parsed from
}

// SigningKey is 0 for VCEK, 1 for VLEK, 7 for none.
func (r *snpReport) SigningKey() uint32 { return (r.SignerInfo >> 2) & 7 }

// Report versions parseReport accepts. Version 2 is the oldest layout that
// carries every field of snpReport; AMD adds fields only in reserved space
// and keeps every offset, so versions newer than the ones known today
// (2 to 5) are parsed by offset. A version beyond maxReportVersion is not a
// plausible firmware but garbage or a misaligned buffer.
const (
	minReportVersion = 2
	maxReportVersion = 15
	// sigAlgoECDSAP384SHA384 is the only SIGNATURE_ALGO AMD defines.
	sigAlgoECDSAP384SHA384 = 1
)

// parseReport parses untrusted report bytes. It checks the framing
// (length, version, signature algorithm), not the signature: that needs
// the VCEK (verifyEvidence). Reserved bytes are not required to be zero, so
// that a newer firmware's fields in them do not break parsing.
func parseReport(b []byte) (*snpReport, error) {
	if len(b) != reportSize {
		return nil, fmt.Errorf("SNP report is %d bytes, want %d", len(b), reportSize)
	}
	le := binary.LittleEndian
	r := &snpReport{Version: le.Uint32(b[0x000:])}
	if r.Version < minReportVersion || r.Version > maxReportVersion {
		return nil, fmt.Errorf("SNP report version %d is not supported (want %d to %d)", r.Version, minReportVersion, maxReportVersion)
	}
	r.SignatureAlgo = le.Uint32(b[0x034:])
	if r.SignatureAlgo != sigAlgoECDSAP384SHA384 {
		return nil, fmt.Errorf("SNP report signature algorithm %d is not ECDSA P-384 SHA-384 (1)", r.SignatureAlgo)
	}
	r.GuestSVN = le.Uint32(b[0x004:])
	r.Policy = le.Uint64(b[0x008:])
	copy(r.FamilyID[:], b[0x010:])
	copy(r.ImageID[:], b[0x020:])
	r.VMPL = le.Uint32(b[0x030:])
	r.CurrentTCB = le.Uint64(b[0x038:])
	r.PlatformInfo = le.Uint64(b[0x040:])
	r.SignerInfo = le.Uint32(b[0x048:])
	copy(r.ReportData[:], b[0x050:])
	copy(r.Measurement[:], b[0x090:])
	copy(r.HostData[:], b[0x0C0:])
	copy(r.IDKeyDigest[:], b[0x0E0:])
	copy(r.AuthorKeyDigest[:], b[0x110:])
	copy(r.ReportID[:], b[0x140:])
	copy(r.ReportIDMA[:], b[0x160:])
	r.ReportedTCB = le.Uint64(b[0x180:])
	if r.Version >= 3 {
		// Reserved in version 2; ignore whatever a version 2 firmware left.
		r.CPUIDFamily, r.CPUIDModel, r.CPUIDStepping = b[0x188], b[0x189], b[0x18A]
	}
	copy(r.ChipID[:], b[0x1A0:])
	r.CommittedTCB = le.Uint64(b[0x1E0:])
	r.LaunchTCB = le.Uint64(b[0x1F0:])
	copy(r.SignatureR[:], b[signedPartSize:])
	copy(r.SignatureS[:], b[signedPartSize+72:])
	r.Raw = bytes.Clone(b)
	return r, nil
}
