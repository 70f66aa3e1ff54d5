package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The legacy /dev/sev driver's SEV_SNP_GUEST_MSG_REPORT command, which
// Azure's 5.x guest kernels carry: the ioctl number, message types and
// buffer layout it takes.
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

func (d *legacySevDevice) Name() string { return "/dev/sev" }

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
