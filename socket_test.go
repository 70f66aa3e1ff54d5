package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// socketClient talks HTTP over the Unix socket at path.
func socketClient(path string) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		},
	}}
}

// getStatus is GET /status over c: the status code, or -1 and why.
func statusOverSocket(c *http.Client) (int, string) {
	resp, err := c.Get("http://localhost/status")
	if err != nil {
		return -1, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// socketDir is a folder others may enter, for a socket other users reach.
func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "skr-socket-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startSocketServer runs the server on a socket only (-port 0).
func startSocketServer(t *testing.T, path string, uids []uint32) *syncBuffer {
	t.Helper()
	cfg := serverConfig{NoTCP: true, Socket: path, SocketUIDs: uids, LogLevel: levelTrace}
	gi := absentGuestInterfaces(t)
	opts := serverOptions{TEE: newTestEmulator(t, nil), Getenv: envOf(nil), SecurityContextRoot: t.TempDir(), GuestInterfaces: &gi,
		WrappingKeys: testWrappingKeys(t)}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, newLogger(logs, levelTrace), opts, ready) }()
	select {
	case addr := <-ready:
		if addr != path {
			t.Fatalf("listening on %s, want only %s", addr, path)
		}
	case err := <-done:
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if _, err := os.Lstat(path); err == nil {
			t.Error("the socket file is left behind")
		}
	})
	return logs
}

// With -port 0 the socket is the only way in: mode 0660, and a peer
// outside -socket-uids gets a 403 naming the list.
func TestUnixSocketServesListedUIDs(t *testing.T) {
	t.Parallel()
	me := uint32(os.Getuid())
	for _, tc := range []struct {
		name string
		uids []uint32
		want int
	}{
		{"no list", nil, http.StatusOK},
		{"listed", []uint32{me + 1, me}, http.StatusOK},
		{"not listed", []uint32{me + 1}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(socketDir(t), "skr.sock")
			logs := startSocketServer(t, path, tc.uids)
			info, err := os.Lstat(path)
			if err != nil || info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o660 {
				t.Fatalf("socket file: %v, %v", info.Mode(), err)
			}
			status, body := statusOverSocket(socketClient(path))
			if status != tc.want {
				t.Fatalf("status %d %s, want %d", status, body, tc.want)
			}
			if tc.want == http.StatusForbidden && !strings.Contains(body, fmt.Sprintf("user id %d may not use this socket", me)) {
				t.Errorf("the refusal does not say why: %s", body)
			}
			if strings.Contains(logs.String(), "127.0.0.1") {
				t.Errorf("TCP is on with -port 0:\n%s", logs)
			}
		})
	}
}

func TestUnixSocketReplacesOnlyAStaleSocket(t *testing.T) {
	t.Parallel()
	dir := socketDir(t)
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := listenUnix(stale)
	if err != nil {
		t.Fatalf("a stale socket was not replaced: %v", err)
	}
	l2.Close()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o600)
	if _, err := listenUnix(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listening over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatal("the file was touched")
	}
}

// The peer credentials are the kernel's: a process running as another
// user, listed or not, is told apart. Switching user needs root; the test
// runs its own binary as each user.
func TestUnixSocketPeerCredentialsOfOtherUsers(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("switching user ids needs root")
	}
	const permitted, refused, group = 4242, 4343, 4242
	dir := socketDir(t)
	path := filepath.Join(dir, "skr.sock")
	startSocketServer(t, path, []uint32{permitted})
	// The pod gives the socket to a group: both users are in it, so the
	// file mode lets both connect, and only the uid list tells them apart.
	if err := os.Chown(path, 0, group); err != nil {
		t.Fatal(err)
	}
	exe := copyTestBinary(t, dir)
	for uid, want := range map[uint32]int{permitted: http.StatusOK, refused: http.StatusForbidden} {
		cmd := exec.Command(exe, "-test.run=^TestUnixSocketChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), "SKR_SOCKET_CHILD="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: group}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child as uid %d: %v\n%s", uid, err, out)
		}
		if !strings.Contains(string(out), "status="+strconv.Itoa(want)+" ") {
			t.Errorf("uid %d: want status %d, child said:\n%s", uid, want, out)
		}
	}
}

// copyTestBinary puts this test binary where other users may run it.
func copyTestBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "skr.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// TestUnixSocketChild is the other user's side of the test above; it runs
// only in the child process.
func TestUnixSocketChild(t *testing.T) {
	path := os.Getenv("SKR_SOCKET_CHILD")
	if path == "" {
		t.Skip("only in the child of TestUnixSocketPeerCredentialsOfOtherUsers")
	}
	status, body := statusOverSocket(socketClient(path))
	fmt.Printf("uid=%d status=%d body=%s\n", os.Getuid(), status, body)
}
