package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"
)

// teeDevice produces raw SNP reports.
type teeDevice interface {
	// Name says which interface is in use, for /status and logs:
	// "configfs-tsm", "/dev/sev-guest", "/dev/sev", "emulator", ...
	Name() string
	// Emulated is true only for the software emulator.
	Emulated() bool
	// GetReport returns the exact 1184-byte report with this REPORT_DATA.
	// Callers serialize calls, unless the device is a concurrentDevice;
	// implementations need not.
	GetReport(ctx context.Context, reportData [64]byte) ([]byte, error)
}

// concurrentDevice is a teeDevice whose GetReport may run concurrently:
// the emulator. A device wrapped in another type loses the mark, and so is
// serialized, as every real device is.
type concurrentDevice interface {
	teeDevice
	concurrentReports()
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
	Keygen         *keygen // where the emulator makes its keys; nil = a keygen of its own
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

// openTEEFrom finds the guest interface in gi: configfs-tsm,
// /dev/sev-guest, /dev/sev in that order, or the emulator when asked. With
// none it returns an error naming the paths probed and -emulate.
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
