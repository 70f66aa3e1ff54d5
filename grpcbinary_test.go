package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The binary as shipped: grpc-go (a test-only dependency) is not linked
// into it, and skr.sh with ServerType=grpc serves the key provider.
func TestBinaryServesGRPCWithoutGRPCGo(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary; skipped under -short")
	}
	dir := t.TempDir()
	bin := imageBinary(t)

	t.Run("no grpc-go", func(t *testing.T) {
		out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
		if err != nil {
			t.Fatalf("go version -m: %v\n%s", err, out)
		}
		var deps []string
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "dep" {
				deps = append(deps, f[1])
			}
		}
		if len(deps) == 0 {
			t.Fatalf("no dependencies listed:\n%s", out)
		}
		for _, d := range deps {
			if d == "google.golang.org/grpc" || strings.HasPrefix(d, "google.golang.org/grpc/") || d == "golang.org/x/net" {
				t.Errorf("the binary links %s", d)
			}
		}
	})

	t.Run("skr.sh ServerType=grpc", func(t *testing.T) {
		link := filepath.Join(dir, "skr.sh")
		if err := os.Symlink(bin, link); err != nil {
			t.Fatal(err)
		}
		var logs syncBuffer
		cmd := exec.Command(link)
		cmd.Env = []string{"ServerType=grpc", fmt.Sprintf("Port=%d", freeLoopbackPort(t)), "SKR_EMULATE=1", "LogLevel=info"}
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var waitErr error
		exited := make(chan struct{})
		go func() { waitErr = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			cmd.Process.Kill()
			<-exited
		})
		conn := dialGRPC(t, waitForListenAddr(t, &logs))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// Wait for the server as a client would: retry until it answers.
		var out map[string]string
		var err error
		for {
			out, err = invokeKeyProvider(ctx, t, conn, "keyprovider", "SayHello", map[string]string{"name": "skr.sh"})
			if err == nil || ctx.Err() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil || out["message"] != "Hello skr.sh" {
			t.Fatalf("SayHello: %q %v\nlog:\n%s", out["message"], err, logs.String())
		}
		out, err = invokeKeyProvider(ctx, t, conn, "key_provider", "GetReport", map[string]string{"report_data_hex_string": "00ff"})
		if err != nil {
			t.Fatalf("GetReport: %v\nlog:\n%s", err, logs.String())
		}
		raw, err := hex.DecodeString(out["report_hex_string"])
		if err != nil || len(raw) != reportSize || !bytes.Equal(raw[0x50:0x52], []byte{0, 0xff}) {
			t.Fatalf("report: %v, REPORT_DATA %x", err, raw[0x50:0x90])
		}
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-exited:
			if waitErr != nil {
				t.Fatalf("exit after SIGTERM: %v\nlog:\n%s", waitErr, logs.String())
			}
		case <-time.After(15 * time.Second):
			t.Fatal("no exit 15 s after SIGTERM")
		}
		if !strings.Contains(logs.String(), "server_type=grpc") {
			t.Errorf("the start-up line does not say gRPC:\n%s", logs.String())
		}
	})

	t.Run("skr.sh ServerType=bogus", func(t *testing.T) {
		cmd := exec.Command(bin, "serve")
		cmd.Env = []string{"ServerType=bogus"}
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), `"bogus" is neither "http" nor "grpc"`) {
			t.Fatalf("exit %v, output %q", err, out)
		}
	})
}
