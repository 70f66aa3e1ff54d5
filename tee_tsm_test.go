package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fakeConfigfs makes a plain directory behave like configfs-tsm: mkdir
// populates the entry's attributes, writing inblob bumps generation and
// makes outblob (report ‖ a certificate table, as the kernel may hand
// out more than the report), rmdir removes the entry.
type fakeConfigfs struct {
	provider  string
	dev       teeDevice                 // signs the reports
	interfere func(entry string, n int) // called after the n-th inblob write
	mu        sync.Mutex
	writes    int
	mkdirs    int
	rmdirs    int
}

func (f *fakeConfigfs) Mkdir(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil {
		return err
	}
	f.mu.Lock()
	f.mkdirs++
	f.mu.Unlock()
	for name, v := range map[string]string{"generation": "0\n", "provider": f.provider + "\n", "privlevel_floor": "0\n"} {
		if err := os.WriteFile(filepath.Join(path, name), []byte(v), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func (f *fakeConfigfs) Rmdir(path string) error {
	f.mu.Lock()
	f.rmdirs++
	f.mu.Unlock()
	return os.RemoveAll(path)
}

func (f *fakeConfigfs) ReadFile(path string, limit int64) ([]byte, error) {
	return readBounded(path, limit)
}

func (f *fakeConfigfs) WriteFile(path string, b []byte) error {
	entry, name := filepath.Split(path)
	entry = filepath.Clean(entry)
	if name != "inblob" {
		return os.WriteFile(path, b, 0o600)
	}
	if len(b) != 64 {
		return fmt.Errorf("inblob: %d bytes, want 64", len(b))
	}
	if err := f.bumpGeneration(entry); err != nil {
		return err
	}
	report, err := f.dev.GetReport(context.Background(), [64]byte(b))
	if err != nil {
		return err
	}
	out := append(report, []byte("cert table follows")...)
	if err := os.WriteFile(filepath.Join(entry, "outblob"), out, 0o600); err != nil {
		return err
	}
	f.mu.Lock()
	f.writes++
	n := f.writes
	f.mu.Unlock()
	if f.interfere != nil {
		f.interfere(entry, n)
	}
	return nil
}

func (f *fakeConfigfs) bumpGeneration(entry string) error {
	p := filepath.Join(entry, "generation")
	g, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(g)))
	if err != nil {
		return err
	}
	return os.WriteFile(p, []byte(strconv.Itoa(n+1)+"\n"), 0o600)
}

func (f *fakeConfigfs) counts() (mkdirs, rmdirs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mkdirs, f.rmdirs
}

func newConfigfsGuest(t *testing.T, provider string) (guestInterfaces, *fakeConfigfs, *platformCerts) {
	gi := absentGuestInterfaces(t)
	if err := os.MkdirAll(gi.ConfigfsTSM, 0o700); err != nil {
		t.Fatal(err)
	}
	dev, pc := newFakeSevGuest(t)
	fake := &fakeConfigfs{provider: provider, dev: dev}
	gi.FS = fake
	return gi, fake, pc
}

func TestConfigfsTSMReport(t *testing.T) {
	t.Parallel()
	gi, fake, pc := newConfigfsGuest(t, "sev_guest")
	dev, err := openTEEFrom(teeOptions{}, gi)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Name() != "configfs-tsm" || dev.Emulated() {
		t.Fatalf("name %q emulated %v", dev.Name(), dev.Emulated())
	}
	rd := reportDataFor([]byte("configfs"))
	raw, err := dev.GetReport(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != reportSize {
		t.Fatalf("%d bytes: want exactly the report, without the table after it", len(raw))
	}
	if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
		t.Fatal(err)
	}
	if r, _ := parseReport(raw); r.ReportData != rd {
		t.Fatal("REPORT_DATA is not the one written to inblob")
	}
	mk, rm := fake.counts()
	if mk != 2 || rm != 2 { // the probe at open, then the report
		t.Fatalf("mkdir %d rmdir %d: every entry must be removed", mk, rm)
	}
	if left, _ := os.ReadDir(gi.ConfigfsTSM); len(left) != 0 {
		t.Fatalf("entries left behind: %v", left)
	}
}

func TestConfigfsTSMOtherProviderFallsThrough(t *testing.T) {
	t.Parallel()
	gi, _, _ := newConfigfsGuest(t, "tdx_guest")
	_, err := openTEEFrom(teeOptions{}, gi)
	if err == nil || !strings.Contains(err.Error(), `provider is "tdx_guest", not sev_guest`) {
		t.Fatalf("err = %v", err)
	}
	if left, _ := os.ReadDir(gi.ConfigfsTSM); len(left) != 0 {
		t.Fatalf("the probe left entries behind: %v", left)
	}
}

func TestConfigfsTSMConcurrentWriter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		interfere int // inblob writes after which another writer strikes
		wantErr   string
	}{
		{"once: retried", 1, ""},
		{"twice: error", 2, "another writer"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			gi, fake, pc := newConfigfsGuest(t, "sev_guest")
			dev, err := openConfigfsTSM(gi.FS, gi.ConfigfsTSM)
			if err != nil {
				t.Fatal(err)
			}
			fake.interfere = func(entry string, n int) {
				if n <= tc.interfere {
					if err := fake.bumpGeneration(entry); err != nil {
						t.Error(err)
					}
				}
			}
			raw, err := dev.GetReport(context.Background(), reportDataFor([]byte("c")))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if err := verifyWithGoSevGuest(t, raw, pc); err != nil {
					t.Fatal(err)
				}
			}
			if mk, rm := fake.counts(); mk != rm {
				t.Fatalf("mkdir %d rmdir %d", mk, rm)
			}
		})
	}
}

func TestConfigfsTSMShortOutblob(t *testing.T) {
	t.Parallel()
	gi, fake, _ := newConfigfsGuest(t, "sev_guest")
	dev, err := openConfigfsTSM(gi.FS, gi.ConfigfsTSM)
	if err != nil {
		t.Fatal(err)
	}
	fake.interfere = func(entry string, _ int) {
		os.WriteFile(filepath.Join(entry, "outblob"), make([]byte, 100), 0o600)
	}
	if _, err := dev.GetReport(context.Background(), [64]byte{}); err == nil || !strings.Contains(err.Error(), "outblob is 100 bytes") {
		t.Fatalf("err = %v", err)
	}
}
