package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-sev-guest/client"
	"golang.org/x/sys/unix"
)

// sevGuestDevice is a teeDevice over a go-sev-guest client.Device: the real
// /dev/sev-guest or go-sev-guest's fake device in tests.
type sevGuestDevice struct {
	name string
	dev  client.Device
	gate *deviceGate
}

func newPacedSevGuestDevice(d client.Device, name string, interval time.Duration) *sevGuestDevice {
	return &sevGuestDevice{name: name, dev: d, gate: newDeviceGate(interval)}
}

func (d *sevGuestDevice) Name() string { return d.name }

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
