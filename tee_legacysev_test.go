package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestLegacyRequestLayout(t *testing.T) {
	t.Parallel()
	var r legacySnpGuestRequest
	if unsafe.Sizeof(r) != 40 {
		t.Fatalf("size %d, want 40 (the ioctl number encodes it: 0xC0285301)", unsafe.Sizeof(r))
	}
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"req_msg_type", unsafe.Offsetof(r.ReqMsgType), 0},
		{"rsp_msg_type", unsafe.Offsetof(r.RspMsgType), 1},
		{"msg_version", unsafe.Offsetof(r.MsgVersion), 2},
		{"request_len", unsafe.Offsetof(r.RequestLen), 4},
		{"request_uaddr", unsafe.Offsetof(r.Request), 8},
		{"response_len", unsafe.Offsetof(r.ResponseLen), 16},
		{"response_uaddr", unsafe.Offsetof(r.Response), 24},
		{"error", unsafe.Offsetof(r.FirmwareErr), 32},
	} {
		if f.got != f.want {
			t.Errorf("%s at %d, want %d", f.name, f.got, f.want)
		}
	}
	if got := uintptr(0xC0000000 | 40<<16 | 'S'<<8 | 1); got != legacyIocSnpReport {
		t.Errorf("_IOWR('S', 1, 40 bytes) = %#x, constant is %#x", got, legacyIocSnpReport)
	}
}

// fakeLegacyIoctl behaves like the legacy driver: it checks the request
// and writes MSG_REPORT_RSP with a report from dev.
func fakeLegacyIoctl(t *testing.T, dev teeDevice, status, size, fwErr uint32, errno error) func(int, *legacySnpGuestRequest) error {
	return func(_ int, req *legacySnpGuestRequest) error {
		if req.ReqMsgType != 5 || req.RspMsgType != 6 || req.MsgVersion != 1 || req.RequestLen != 96 || req.ResponseLen != 1280 {
			t.Errorf("request header %+v", *req)
		}
		in := (*[96]byte)(req.Request)
		if !bytes.Equal(in[64:], make([]byte, 32)) {
			t.Errorf("VMPL and reserved bytes are not zero: %x", in[64:])
		}
		report, err := dev.GetReport(context.Background(), [64]byte(in[:64]))
		if err != nil {
			return err
		}
		out := (*[1280]byte)(req.Response)
		binary.LittleEndian.PutUint32(out[0:], status)
		binary.LittleEndian.PutUint32(out[4:], size)
		copy(out[0x20:], report)
		req.FirmwareErr = fwErr
		return errno
	}
}

func TestLegacySevReport(t *testing.T) {
	t.Parallel()
	fake, pc := newFakeSevGuest(t)
	tests := []struct {
		name    string
		status  uint32
		size    uint32
		fwErr   uint32
		errno   error
		wantErr string
	}{
		{"ok", 0, reportSize, 0, nil, ""},
		{"invalid parameters", 0x16, reportSize, 0, nil, "invalid parameters (status 0x16)"},
		{"other status", 0x27, reportSize, 0, nil, "firmware status 0x27"},
		{"wrong size", 0, 1000, 0, nil, "REPORT_SIZE is 1000"},
		{"ioctl error with firmware error", 0, reportSize, 0x16, unix.EIO, "firmware error 0x16"},
		{"ioctl error", 0, reportSize, 0, unix.ENOTTY, "inappropriate ioctl"},
		{"firmware error without errno", 0, reportSize, 0x5, nil, "firmware error 0x5"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dev := &legacySevDevice{fd: -1, gate: newDeviceGate(0), ioctl: fakeLegacyIoctl(t, fake, tc.status, tc.size, tc.fwErr, tc.errno)}
			rd := reportDataFor([]byte(tc.name))
			raw, err := dev.GetReport(context.Background(), rd)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseReport(raw)
			if err != nil || r.ReportData != rd {
				t.Fatalf("parse: %v", err)
			}
			if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
				t.Fatal(err)
			}
		})
	}
}
