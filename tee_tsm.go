package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

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

func (t *configfsTSM) Name() string { return "configfs-tsm" }

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
