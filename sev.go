package main

// SEV-SNP guest interfaces (configfs-tsm, /dev/sev-guest, legacy /dev/sev)
// and the attestation report layout.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/google/go-sev-guest/client"
	"golang.org/x/sys/unix"
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
	return openTEEFrom(opts, defaultGuestInterfaces)
}

// guestInterfaces says where the guest interfaces live; tests point it at
// temporary directories.
type guestInterfaces struct {
	ConfigfsTSM string // the configfs-tsm report directory
	SevGuest    string // the sev-guest character device (Linux >= 5.19)
	LegacySev   string // Azure's legacy SEV-SNP character device (5.x kernels)
	FS          tsmFS  // how configfs is driven; nil = the real file system
	// KernelRelease says which kernel drives /dev/sev-guest (it decides the
	// pacing); nil = uname.
	KernelRelease func() string
}

var defaultGuestInterfaces = guestInterfaces{
	ConfigfsTSM: "/sys/kernel/config/tsm/report",
	SevGuest:    "/dev/sev-guest",
	LegacySev:   "/dev/sev",
}

func openTEEFrom(opts teeOptions, gi guestInterfaces) (teeDevice, error) {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Emulate {
		return newEmulator(opts), nil
	}
	if gi.FS == nil {
		gi.FS = osTSMFS{}
	}
	if gi.KernelRelease == nil {
		gi.KernelRelease = unameRelease
	}
	var probed []string
	tsm, err := openConfigfsTSM(gi.FS, gi.ConfigfsTSM)
	if err == nil {
		log.Info("SEV-SNP guest interface", "tee", tsm.Name(), "path", gi.ConfigfsTSM)
		return tsm, nil
	}
	probed = append(probed, fmt.Sprintf("configfs-tsm at %s (%v)", gi.ConfigfsTSM, err))

	sg, err := openSevGuest(gi.SevGuest, gi.KernelRelease())
	if err == nil {
		log.Info("SEV-SNP guest interface", "tee", sg.Name(), "path", gi.SevGuest, "min_command_interval", sg.gate.interval)
		return sg, nil
	}
	probed = append(probed, fmt.Sprintf("%s (%v)", gi.SevGuest, err))

	legacy, err := openLegacySev(gi.LegacySev)
	if err == nil {
		log.Info("SEV-SNP guest interface", "tee", legacy.Name(), "path", gi.LegacySev)
		return legacy, nil
	}
	probed = append(probed, fmt.Sprintf("%s (%v)", gi.LegacySev, err))

	// The server prefixes "no SEV-SNP guest interface: ".
	return nil, fmt.Errorf("looked for %s: this is not an SEV-SNP confidential VM or container, or its guest interface is not exposed to this container; for development run with -emulate (or SKR_EMULATE=1), whose evidence no real verifier trusts",
		strings.Join(probed, ", "))
}

// checkCharDevice refuses a path that is absent or is not a character
// device, so that a stray regular file is never mistaken for the guest
// device.
func checkCharDevice(path string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return errors.New("absent")
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("not a character device (%v)", fi.Mode().Type())
	}
	return nil
}

// deviceGate lets one command at a time reach a guest device, paces
// commands where the kernel needs it, and lets the caller's context bound
// the wait. The callers already serialize (server.deviceMu); the gate keeps
// a device safe on its own and is what makes an abandoned command hold the
// device until it really ends.
type deviceGate struct {
	sem      chan struct{} // capacity 1: the device is free when it can be filled
	interval time.Duration // minimum time from the end of one command to the start of the next
	last     time.Time     // end of the previous command; guarded by sem
	now      func() time.Time
}

func newDeviceGate(interval time.Duration) *deviceGate {
	return &deviceGate{sem: make(chan struct{}, 1), interval: interval, now: time.Now}
}

// pause is how long the next command must wait for the pacing.
func (g *deviceGate) pause() time.Duration {
	if g.interval <= 0 || g.last.IsZero() {
		return 0
	}
	return g.interval - g.now().Sub(g.last)
}

// run runs cmd with the device to itself. ctx bounds the wait for the
// device, for the pacing and for the answer, but not the command itself: an
// ioctl (or a configfs read that makes the kernel ask the firmware) cannot
// be interrupted, so a command still running when ctx ends finishes in the
// background, keeps the device until then, and its answer is dropped.
func (g *deviceGate) run(ctx context.Context, cmd func() ([]byte, error)) ([]byte, error) {
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the guest device: %w", context.Cause(ctx))
	}
	if d := g.pause(); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			<-g.sem
			return nil, fmt.Errorf("waiting %v between guest device commands: %w", d.Round(time.Millisecond), context.Cause(ctx))
		}
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := cmd()
		g.last = g.now()
		<-g.sem
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		return r.b, r.err
	case <-ctx.Done():
		return nil, fmt.Errorf("guest device command abandoned (it completes in the background): %w", context.Cause(ctx))
	}
}

// --- /dev/sev-guest through go-sev-guest ---

// sevGuestDevice is a teeDevice over a go-sev-guest client.Device: the real
// /dev/sev-guest or go-sev-guest's fake device in tests.
type sevGuestDevice struct {
	name string
	dev  client.Device
	gate *deviceGate
}

// newSevGuestDevice adapts d without pacing (a fake device, or a kernel
// that handles host throttling itself).
func newSevGuestDevice(d client.Device, name string) teeDevice {
	return newPacedSevGuestDevice(d, name, 0)
}

func newPacedSevGuestDevice(d client.Device, name string, interval time.Duration) *sevGuestDevice {
	return &sevGuestDevice{name: name, dev: d, gate: newDeviceGate(interval)}
}

func (d *sevGuestDevice) Name() string   { return d.name }
func (d *sevGuestDevice) Emulated() bool { return false }

func (d *sevGuestDevice) GetReport(ctx context.Context, reportData [64]byte) ([]byte, error) {
	return d.gate.run(ctx, func() ([]byte, error) {
		raw, err := client.GetRawReport(d.dev, reportData)
		if err != nil {
			return nil, fmt.Errorf("%s SNP_GET_REPORT: %w", d.name, err)
		}
		if len(raw) < reportSize {
			return nil, fmt.Errorf("%s SNP_GET_REPORT returned %d bytes, want %d", d.name, len(raw), reportSize)
		}
		return bytes.Clone(raw[:reportSize]), nil
	})
}

// extendedReport returns a report with the certificate table the host
// provides (SNP_GET_EXT_REPORT): two device commands.
func (d *sevGuestDevice) extendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error) {
	var table []byte
	report, err = d.gate.run(ctx, func() ([]byte, error) {
		r, c, err := client.GetRawExtendedReport(d.dev, reportData)
		if err != nil {
			return nil, fmt.Errorf("%s SNP_GET_EXT_REPORT: %w", d.name, err)
		}
		table = c
		return bytes.Clone(r[:reportSize]), nil
	})
	return report, table, err
}

// sevGuestPacing is the minimum time between two /dev/sev-guest commands.
//
// Why: Linux 6.1 and 6.2 (after the IV-reuse fix 47894e0fa6a5) treat a host
// that throttles guest requests as an attack and wipe the VM's message key:
// every later ioctl fails with ENOTTY until the VM restarts, i.e. no
// attestation at all for the life of the container group. Linux 6.3
// (72f7754dcf31, "virt: sevguest: Add throttling awareness", also in later
// stable kernels) retries in the kernel instead. go-sev-guest guards against
// this by sleeping 2 s before every command, process-wide, ignoring any
// deadline. We pace only kernels older than 6.3 (a distribution backport
// cannot be detected, so older kernels are paced even if patched), with
// go-sev-guest's proven 2 s, and in deviceGate so that a waiting request
// still honours its deadline. The sidecar needs few reports (the wrapping
// key TTL spares one per release), so 0.5 report/s on old kernels costs
// little, while the lockout would cost everything.
func sevGuestPacing(kernelRelease string) time.Duration {
	if kernelAtLeast(kernelRelease, 6, 3) {
		return 0
	}
	return 2 * time.Second
}

// kernelAtLeast reports whether a uname release such as "6.1.0-18-amd64" is
// at least major.minor; an unreadable release is taken as older.
func kernelAtLeast(release string, major, minor int) bool {
	parts := strings.SplitN(release, ".", 3)
	if len(parts) < 2 {
		return false
	}
	maj, err := strconv.Atoi(parts[0])
	if err != nil {
		return false
	}
	minStr := parts[1]
	if i := strings.IndexFunc(minStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minStr = minStr[:i]
	}
	mnr, err := strconv.Atoi(minStr)
	if err != nil {
		return false
	}
	return maj > major || maj == major && mnr >= minor
}

func unameRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func openSevGuest(path, kernelRelease string) (*sevGuestDevice, error) {
	if err := checkCharDevice(path); err != nil {
		return nil, err
	}
	if err := disableLibraryThrottle(); err != nil {
		return nil, err
	}
	d := &client.LinuxDevice{}
	if err := d.Open(path); err != nil {
		return nil, err
	}
	return newPacedSevGuestDevice(d, "/dev/sev-guest", sevGuestPacing(kernelRelease)), nil
}

// disableLibraryThrottle turns off go-sev-guest's own pacing (flags on
// flag.CommandLine, default one command per 2 s, a blind sleep in
// LinuxDevice.Ioctl): deviceGate paces instead, per kernel and honouring
// deadlines. The burst must stay >= 1 (the library divides by it).
func disableLibraryThrottle() error {
	for name, value := range map[string]string{"self_throttle_duration": "0s", "self_throttle_burst": "1"} {
		if err := flag.CommandLine.Set(name, value); err != nil {
			return fmt.Errorf("configure go-sev-guest flag %s: %w", name, err)
		}
	}
	return nil
}

// --- configfs-tsm (Linux >= 6.7) ---

// tsmFS is the few file operations configfs-tsm needs; tests replace it
// with a directory that behaves like configfs.
type tsmFS interface {
	Mkdir(path string) error
	Rmdir(path string) error
	ReadFile(path string, limit int64) ([]byte, error)
	WriteFile(path string, b []byte) error
}

type osTSMFS struct{}

func (osTSMFS) Mkdir(path string) error { return os.Mkdir(path, 0o700) }
func (osTSMFS) Rmdir(path string) error { return syscall.Rmdir(path) }
func (osTSMFS) ReadFile(path string, limit int64) ([]byte, error) {
	return readBounded(path, limit)
}

// WriteFile writes b in one write: a configfs attribute takes a value per
// write and is not created or truncated.
func (osTSMFS) WriteFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

type configfsTSM struct {
	fs   tsmFS
	dir  string
	gate *deviceGate
}

// outblobLimit bounds what is read from configfs (a report is 1184 bytes).
const outblobLimit = 64 << 10

// openConfigfsTSM checks that dir is a configfs-tsm report directory whose
// provider is sev_guest (a TDX guest has the same directory).
func openConfigfsTSM(fsys tsmFS, dir string) (*configfsTSM, error) {
	t := &configfsTSM{fs: fsys, dir: dir, gate: newDeviceGate(0)}
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("absent")
	}
	entry, err := t.makeEntry()
	if err != nil {
		return nil, err
	}
	defer t.removeEntry(entry)
	if err := t.checkProvider(entry); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *configfsTSM) Name() string   { return "configfs-tsm" }
func (t *configfsTSM) Emulated() bool { return false }

// GetReport asks once more when another writer changed the entry under us.
// The kernel paces the firmware requests itself.
func (t *configfsTSM) GetReport(ctx context.Context, reportData [64]byte) ([]byte, error) {
	return t.gate.run(ctx, func() ([]byte, error) {
		b, err := t.report(reportData)
		if errors.Is(err, errConcurrentTSMWriter) {
			b, err = t.report(reportData)
		}
		return b, err
	})
}

var errConcurrentTSMWriter = errors.New("another writer changed the configfs-tsm entry during the request")

func (t *configfsTSM) report(reportData [64]byte) ([]byte, error) {
	entry, err := t.makeEntry()
	if err != nil {
		return nil, err
	}
	defer t.removeEntry(entry)
	before, err := t.generation(entry)
	if err != nil {
		return nil, err
	}
	// privlevel is left at the kernel's default (privlevel_floor): a guest
	// under an SVSM may not ask for VMPL 0, and the report states its VMPL.
	if err := t.fs.WriteFile(filepath.Join(entry, "inblob"), reportData[:]); err != nil {
		return nil, fmt.Errorf("configfs-tsm write inblob: %w", err)
	}
	out, err := t.fs.ReadFile(filepath.Join(entry, "outblob"), outblobLimit)
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm read outblob: %w", err)
	}
	if err := t.checkProvider(entry); err != nil {
		return nil, err
	}
	after, err := t.generation(entry)
	if err != nil {
		return nil, err
	}
	if after != before+1 {
		return nil, fmt.Errorf("%w (generation %d, want %d)", errConcurrentTSMWriter, after, before+1)
	}
	if len(out) < reportSize {
		return nil, fmt.Errorf("configfs-tsm outblob is %d bytes, want at least %d", len(out), reportSize)
	}
	return bytes.Clone(out[:reportSize]), nil
}

func (t *configfsTSM) makeEntry() (string, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	entry := filepath.Join(t.dir, fmt.Sprintf("skr-%d-%x", os.Getpid(), rnd))
	if err := t.fs.Mkdir(entry); err != nil {
		return "", fmt.Errorf("configfs-tsm create entry: %w", err)
	}
	return entry, nil
}

// removeEntry always runs: a left-over entry holds kernel memory. Its error
// has nowhere useful to go.
func (t *configfsTSM) removeEntry(entry string) { _ = t.fs.Rmdir(entry) }

func (t *configfsTSM) checkProvider(entry string) error {
	p, err := t.fs.ReadFile(filepath.Join(entry, "provider"), 256)
	if err != nil {
		return fmt.Errorf("configfs-tsm read provider: %w", err)
	}
	if got := strings.TrimSpace(string(p)); got != "sev_guest" {
		return fmt.Errorf("configfs-tsm provider is %q, not sev_guest", got)
	}
	return nil
}

func (t *configfsTSM) generation(entry string) (uint64, error) {
	g, err := t.fs.ReadFile(filepath.Join(entry, "generation"), 64)
	if err != nil {
		return 0, fmt.Errorf("configfs-tsm read generation: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(g)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("configfs-tsm generation %q is not a number", g)
	}
	return n, nil
}

// --- legacy /dev/sev (Azure 5.x kernels) ---

// The legacy driver's SEV_SNP_GUEST_MSG_REPORT, azure-protocols.md §7.1.
const (
	legacyIocSnpReport   = 0xC0285301 // _IOWR('S', 1, struct sev_snp_guest_request), 40 bytes
	legacyMsgReportReq   = 5
	legacyMsgReportRsp   = 6
	legacyRequestSize    = 96
	legacyResponseSize   = 1280
	legacyReportOffset   = 0x20
	legacyStatusInvalid  = 0x16
	legacyGuestReqStruct = 40
)

// legacySnpGuestRequest is struct sev_snp_guest_request with x86-64
// natural alignment. The addresses are unsafe.Pointer so that the buffers
// they point at stay alive for the collector during the ioctl.
type legacySnpGuestRequest struct {
	ReqMsgType  uint8
	RspMsgType  uint8
	MsgVersion  uint8
	_           uint8
	RequestLen  uint16
	_           [2]byte
	Request     unsafe.Pointer
	ResponseLen uint16
	_           [6]byte
	Response    unsafe.Pointer
	FirmwareErr uint32
	_           [4]byte
}

type legacySevDevice struct {
	fd    int
	gate  *deviceGate
	ioctl func(fd int, req *legacySnpGuestRequest) error // tests replace it
}

// openLegacySev opens Azure's legacy device. It is not paced: the
// lockout sevGuestPacing guards against is a property of the upstream
// sev-guest driver of Linux 6.1/6.2, not of this out-of-tree 5.x driver,
// which Microsoft's own sidecar drives unpaced in production.
func openLegacySev(path string) (*legacySevDevice, error) {
	if err := checkCharDevice(path); err != nil {
		return nil, err
	}
	if unsafe.Sizeof(legacySnpGuestRequest{}) != legacyGuestReqStruct {
		return nil, fmt.Errorf("the legacy SEV-SNP ioctl needs a 64-bit build (request struct is %d bytes, want %d)", unsafe.Sizeof(legacySnpGuestRequest{}), legacyGuestReqStruct)
	}
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	return &legacySevDevice{fd: fd, gate: newDeviceGate(0), ioctl: legacyIoctl}, nil
}

func legacyIoctl(fd int, req *legacySnpGuestRequest) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), legacyIocSnpReport, uintptr(unsafe.Pointer(req)))
	runtime.KeepAlive(req)
	if errno != 0 {
		return errno
	}
	return nil
}

func (d *legacySevDevice) Name() string   { return "/dev/sev" }
func (d *legacySevDevice) Emulated() bool { return false }

func (d *legacySevDevice) GetReport(ctx context.Context, reportData [64]byte) ([]byte, error) {
	return d.gate.run(ctx, func() ([]byte, error) { return d.report(reportData) })
}

func (d *legacySevDevice) report(reportData [64]byte) ([]byte, error) {
	request := new([legacyRequestSize]byte) // REPORT_DATA, VMPL 0, reserved zero
	copy(request[:], reportData[:])
	response := new([legacyResponseSize]byte)
	req := &legacySnpGuestRequest{
		ReqMsgType:  legacyMsgReportReq,
		RspMsgType:  legacyMsgReportRsp,
		MsgVersion:  1,
		RequestLen:  legacyRequestSize,
		Request:     unsafe.Pointer(request),
		ResponseLen: legacyResponseSize,
		Response:    unsafe.Pointer(response),
	}
	err := d.ioctl(d.fd, req)
	runtime.KeepAlive(request)
	runtime.KeepAlive(response)
	if err != nil {
		if req.FirmwareErr != 0 {
			return nil, fmt.Errorf("/dev/sev SNP report ioctl: %w (firmware error %#x)", err, req.FirmwareErr)
		}
		return nil, fmt.Errorf("/dev/sev SNP report ioctl: %w", err)
	}
	if req.FirmwareErr != 0 {
		return nil, fmt.Errorf("/dev/sev SNP report: firmware error %#x", req.FirmwareErr)
	}
	return legacyReportFromResponse(response[:])
}

// legacyReportFromResponse reads MSG_REPORT_RSP: STATUS, REPORT_SIZE, the
// report at 0x20.
func legacyReportFromResponse(resp []byte) ([]byte, error) {
	switch status := binary.LittleEndian.Uint32(resp[0:]); status {
	case 0:
	case legacyStatusInvalid:
		return nil, errors.New("/dev/sev SNP report: the firmware says the request has invalid parameters (status 0x16)")
	default:
		return nil, fmt.Errorf("/dev/sev SNP report: firmware status %#x", status)
	}
	if size := binary.LittleEndian.Uint32(resp[4:]); size != reportSize {
		return nil, fmt.Errorf("/dev/sev SNP report: REPORT_SIZE is %d, want %d", size, reportSize)
	}
	return bytes.Clone(resp[legacyReportOffset : legacyReportOffset+reportSize]), nil
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
