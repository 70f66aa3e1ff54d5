package main

// SEV-SNP guest interfaces (configfs-tsm, /dev/sev-guest, legacy /dev/sev)
// and the attestation report layout.
//
// STUB: owned by the "sev" helper; signatures are the contract.

import (
	"context"
	"errors"
	"log/slog"
)

// teeDevice produces raw SNP reports.
type teeDevice interface {
	// Name says which interface is in use, for /status and logs:
	// "configfs-tsm", "/dev/sev-guest", "/dev/sev", "emulator", ...
	Name() string
	// Emulated is true only for the software emulator.
	Emulated() bool
	// GetReport returns the exact 1184-byte report with this REPORT_DATA.
	// Callers serialize calls; implementations need not.
	GetReport(ctx context.Context, reportData [64]byte) ([]byte, error)
}

// platformCertSource is implemented by a device that brings its own
// platform certificates (the emulator): they stand in for the THIM JSON.
type platformCertSource interface {
	PlatformCerts(ctx context.Context) (*platformCerts, error)
}

type teeOptions struct {
	Emulate        bool
	SecurityPolicy []byte // decoded policy; the emulator's HOST_DATA is its sha256
	Log            *slog.Logger
}

// openTEE finds the guest interface: configfs-tsm, /dev/sev-guest, /dev/sev
// in that order, or the emulator when asked. With none it returns an error
// naming the paths probed and -emulate.
func openTEE(opts teeOptions) (teeDevice, error) {
	return nil, errors.New("no SEV-SNP guest interface (stub)")
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

// Debuggable is POLICY.DEBUG.
func (r *snpReport) Debuggable() bool { return r.Policy&(1<<19) != 0 }

// SigningKey is 0 for VCEK, 1 for VLEK, 7 for none.
func (r *snpReport) SigningKey() uint32 { return (r.SignerInfo >> 2) & 7 }

// parseReport parses untrusted report bytes.
func parseReport(b []byte) (*snpReport, error) {
	return nil, errors.New("parseReport: stub")
}
