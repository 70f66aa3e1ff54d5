package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDeviceGatePause(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	g := newDeviceGate(2 * time.Second)
	g.now = func() time.Time { return now }
	if d := g.pause(); d != 0 {
		t.Fatalf("first command waits %v", d)
	}
	if _, err := g.run(context.Background(), func() ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	now = now.Add(500 * time.Millisecond)
	if d := g.pause(); d != 1500*time.Millisecond {
		t.Fatalf("pause after 0.5 s = %v, want 1.5 s", d)
	}
	now = now.Add(2 * time.Second)
	if d := g.pause(); d > 0 {
		t.Fatalf("pause after 2.5 s = %v", d)
	}
	if d := newDeviceGate(0).pause(); d != 0 {
		t.Fatalf("unpaced gate pauses %v", d)
	}
}

func TestDeviceGateHonoursContextWhilePacing(t *testing.T) {
	t.Parallel()
	g := newDeviceGate(time.Hour)
	if _, err := g.run(context.Background(), func() ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	_, err := g.run(ctx, func() ([]byte, error) { ran = true; return nil, nil })
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("err = %v, ran = %v", err, ran)
	}
	// The gate is free again (not leaked by the cancelled wait).
	g.interval = 0
	if _, err := g.run(context.Background(), func() ([]byte, error) { return nil, nil }); err != nil {
		t.Fatal(err)
	}
}

func TestDeviceGateAbandonedCommandHoldsDevice(t *testing.T) {
	t.Parallel()
	g := newDeviceGate(0)
	release := make(chan struct{})
	started := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := g.run(ctx, func() ([]byte, error) { close(started); <-release; return nil, nil })
		errc <- err
	}()
	<-started
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "abandoned") {
		t.Fatalf("err = %v", err)
	}
	// While the abandoned command runs, another caller waits for the device
	// and gives up with its own deadline.
	ctx2, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, err := g.run(ctx2, func() ([]byte, error) { t.Error("ran while the device was busy"); return nil, nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	close(release)
	got, err := g.run(context.Background(), func() ([]byte, error) { return []byte("ok"), nil })
	if err != nil || string(got) != "ok" {
		t.Fatalf("after the command ended: %q, %v", got, err)
	}
}

// absentGuestInterfaces points every interface at a path that does not exist.
func absentGuestInterfaces(t testing.TB) guestInterfaces {
	dir := t.TempDir()
	return guestInterfaces{
		ConfigfsTSM:   filepath.Join(dir, "tsm", "report"),
		SevGuest:      filepath.Join(dir, "sev-guest"),
		LegacySev:     filepath.Join(dir, "sev"),
		KernelRelease: func() string { return "6.8.0" },
	}
}

func TestOpenTEENoInterfaceNamesEveryPathAndEmulate(t *testing.T) {
	t.Parallel()
	gi := absentGuestInterfaces(t)
	// A regular file where a device should be is refused, not opened.
	if err := os.WriteFile(gi.SevGuest, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := openTEEFrom(teeOptions{}, gi)
	if err == nil || dev != nil {
		t.Fatalf("got %v, %v; want no device and an error", dev, err)
	}
	for _, want := range []string{gi.ConfigfsTSM, gi.SevGuest, gi.LegacySev, "-emulate", "SKR_EMULATE=1", "absent", "not a character device"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestOpenTEEDefaultPathsHere(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/dev/sev-guest"); err == nil {
		t.Skip("this machine has an SEV-SNP guest device")
	}
	if _, err := os.Stat("/dev/sev"); err == nil {
		t.Skip("this machine has an SEV-SNP guest device")
	}
	if _, err := os.Stat(defaultGuestInterfaces.ConfigfsTSM); err == nil {
		t.Skip("this machine has configfs-tsm")
	}
	_, err := openTEE(teeOptions{})
	if err == nil || !strings.Contains(err.Error(), "/sys/kernel/config/tsm/report") || !strings.Contains(err.Error(), "/dev/sev-guest") || !strings.Contains(err.Error(), "/dev/sev (") {
		t.Fatalf("err = %v", err)
	}
}

func TestOpenTEEEmulate(t *testing.T) {
	t.Parallel()
	// The emulator's keys are not needed here: on one scheduler, with no
	// request answered, they are never made.
	dev, err := openTEEFrom(teeOptions{Emulate: true, Keygen: testKeygen(1)}, absentGuestInterfaces(t))
	if err != nil {
		t.Fatal(err)
	}
	if dev.Name() != "emulator" || !dev.Emulated() {
		t.Fatalf("name %q emulated %v", dev.Name(), dev.Emulated())
	}
	if _, ok := dev.(platformCertSource); !ok {
		t.Fatal("the emulator does not bring its platform certificates")
	}
}

// openTEE finds the guest interface where Linux puts it.
func openTEE(opts teeOptions) (teeDevice, error) {
	return openTEEFrom(opts, defaultGuestInterfaces)
}
