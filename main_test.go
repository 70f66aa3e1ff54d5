package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sharedTestdata is the real data captured on Azure, beside the repository.
const sharedTestdata = "../shared/testdata/azure-aci-snp"

// readSharedTestdata reads a file of the shared test data, skipping the test
// when that folder is absent.
func readSharedTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(sharedTestdata, name))
	if os.IsNotExist(err) {
		t.Skipf("shared test data %s is absent", name)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// syncBuffer is a log sink that tests read while the server writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestMain runs more parallel tests than the default, and removes what the
// tests share across the run once all are done.
func TestMain(m *testing.M) {
	flag.Parse()
	raiseDefaultParallelism()
	code := m.Run()
	if imageBinaryBuild.dir != "" {
		os.RemoveAll(imageBinaryBuild.dir)
	}
	os.Exit(code)
}

// raiseDefaultParallelism lets twice GOMAXPROCS parallel tests run at once
// unless -parallel is given: many tests spend much of their time waiting
// (on a deadline, a stand-in's delay, a child process), and with only
// GOMAXPROCS of them running the CPUs sit idle meanwhile. Fuzzing keeps
// the default, one worker per CPU.
func raiseDefaultParallelism() {
	given := false
	flag.Visit(func(f *flag.Flag) {
		given = given || f.Name == "test.parallel" || f.Name == "test.fuzz"
	})
	if !given {
		flag.Set("test.parallel", strconv.Itoa(2*runtime.GOMAXPROCS(0)))
	}
}

// startTestServer runs the real server (real listener, real routes) until
// the test ends and returns its base URL and its log.
func startTestServer(t testing.TB, cfg serverConfig, opts serverOptions) (string, *syncBuffer) {
	t.Helper()
	cfg.Port = 0
	if cfg.LogLevel == 0 {
		cfg.LogLevel = levelTrace
	}
	if opts.Getenv == nil {
		opts.Getenv = func(string) string { return "" }
	}
	if opts.SecurityContextRoot == "" {
		opts.SecurityContextRoot = t.TempDir()
	}
	if cfg.Emulate && opts.AzureKeys == nil {
		opts.AzureKeys = sharedAzureKeys() // made once per test binary
	}
	if _, bench := t.(*testing.B); opts.WrappingKeys == nil && !bench {
		// Benchmarks measure the real generator; tests need keys, not
		// their making, which would otherwise be most of the suite's CPU.
		opts.WrappingKeys = testWrappingKeys(t)
	}
	if opts.GuestInterfaces == nil {
		// Never the machine's own device, so that the tests behave the same
		// on an SNP VM (TestRealHardware is the one that uses it).
		gi := absentGuestInterfaces(t)
		opts.GuestInterfaces = &gi
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, newLogger(logs, cfg.LogLevel), opts, ready) }()
	select {
	case addr := <-ready:
		t.Cleanup(func() {
			// A connection the client dialled but never used (a race lost
			// to a connection that came free) holds the server's shutdown
			// for 5 s: net/http waits that long for its first request.
			http.DefaultClient.CloseIdleConnections()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
		})
		return "http://" + addr, logs
	case err := <-done:
		cancel()
		t.Fatalf("server did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("server did not start in 30 s")
	}
	return "", nil
}

// call sends method+body to url and decodes a JSON object answer.
func call(t testing.TB, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object: %v: %q", method, url, err, raw)
	}
	return resp.StatusCode, out
}

func TestDispatchUnknownSubcommand(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	if code := dispatch([]string{"skr", "frobnicate"}, &out, &errOut); code != 2 {
		t.Fatalf("exit code = %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), `unknown subcommand "frobnicate"`) {
		t.Fatalf("stderr = %q", errOut.String())
	}
}

func TestHelpListsEverySubcommand(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if code := dispatch([]string{"skr", "-h"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit code = %d", code)
	}
	for _, c := range commands {
		if !strings.Contains(out.String(), c.name) {
			t.Errorf("help does not list %q:\n%s", c.name, out.String())
		}
		for _, l := range c.links {
			if !strings.Contains(out.String(), l) {
				t.Errorf("help does not list link %q", l)
			}
		}
	}
}

func TestServeEntryPoints(t *testing.T) {
	t.Parallel()
	tests := []struct {
		argv []string
		code int
		want string
	}{
		{[]string{"/skr.sh", "-h"}, 0, "Usage: skr [serve]"},
		{[]string{"skr", "serve", "-h"}, 0, "-wrapping-key-ttl"},
		{[]string{"skr", "-emulate", "-h"}, 0, "-emulate"},
		{[]string{"/skr.sh", "-bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"skr", "serve", "-loglevel", "loud"}, 2, "unknown log level"},
		{[]string{"skr", "serve", "-port", "1", "a", "b", "c"}, 2, "too many arguments"},
	}
	for _, tc := range tests {
		var out, errOut bytes.Buffer
		code := dispatch(tc.argv, &out, &errOut)
		if code != tc.code || !strings.Contains(out.String()+errOut.String(), tc.want) {
			t.Errorf("%q: exit %d, output %q; want exit %d and %q", tc.argv, code, out.String()+errOut.String(), tc.code, tc.want)
		}
	}
}

// readSharedFile reads shared test data without a testing.TB (fuzz seeds).
func readSharedFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(sharedTestdata, name))
}
