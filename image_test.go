package main

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// imageLinks are the entry points the image must have: the layout the
// README describes, and what Microsoft's ARM templates start.
var imageLinks = []string{
	"/skr.sh",
	"/tests/attest_client.sh",
	"/tests/skr_client.sh",
	"/tests/skr/attest_client.sh",
	"/tests/skr/skr_client.sh",
	"/bin/securitypolicydigest",
	"/bin/importkey",
}

var dockerLinkRE = regexp.MustCompile(`ln -s /bin/skr /rootfs(/\S+)`)

// dockerfileLinks reads the links the Dockerfile makes.
func dockerfileLinks(t *testing.T) (string, []string) {
	t.Helper()
	raw, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var links []string
	for _, m := range dockerLinkRE.FindAllStringSubmatch(string(raw), -1) {
		links = append(links, m[1])
	}
	return string(raw), links
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	text, links := dockerfileLinks(t)
	stages := regexp.MustCompile(`(?m)^FROM (\S+)`).FindAllStringSubmatch(text, -1)
	if len(stages) != 2 || !strings.HasPrefix(stages[0][1], "golang:1.26") || stages[1][1] != "scratch" {
		t.Errorf("stages %v: want a golang:1.26 build stage and a scratch image", stages)
	}
	for _, want := range []string{
		"CGO_ENABLED=0 go build -trimpath",
		`-ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}"`,
		"-o /rootfs/bin/skr",
		"/etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt",
		"COPY --from=build /rootfs/ /",
		`ENTRYPOINT ["/skr.sh"]`,
		"root only because the SEV-SNP guest device",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	slices.Sort(links)
	want := slices.Clone(imageLinks)
	slices.Sort(want)
	if !slices.Equal(links, want) {
		t.Errorf("Dockerfile links %v, want %v", links, want)
	}
	// Every link must reach an entry point, and every entry point's link
	// must be in the image.
	byLink := map[string]string{}
	for _, c := range commands {
		for _, l := range c.links {
			byLink[l] = c.name
		}
	}
	for _, l := range links {
		if _, ok := byLink[filepath.Base(l)]; !ok {
			t.Errorf("link %s starts no entry point", l)
		}
	}
	for l, name := range byLink {
		if !slices.ContainsFunc(links, func(s string) bool { return filepath.Base(s) == l }) {
			t.Errorf("entry point %s (link %s) is not in the image", name, l)
		}
	}
	ignore, err := os.ReadFile(".dockerignore")
	if err != nil || !strings.Contains(string(ignore), "!*.go") || !strings.HasPrefix(strings.TrimSpace(stripComments(string(ignore))), "*") {
		t.Errorf(".dockerignore must exclude everything but the Go sources: %q %v", ignore, err)
	}
}

func stripComments(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// imageBinaryBuild is skr built as the Dockerfile builds it, once per test
// binary: linking it is most of what the tests that run it cost. TestMain
// removes dir.
var imageBinaryBuild struct {
	once      sync.Once
	dir, path string
	err       error
}

// imageBinary is the path of that build; tests read it and never change it.
func imageBinary(t *testing.T) string {
	t.Helper()
	b := &imageBinaryBuild
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "skr-image-test-"); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "skr")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=imagetest", "-o", b.path, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build: %w\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func TestImageBinary(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary; skipped under -short")
	}
	bin := imageBinary(t)

	t.Run("static", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("program header %v: the binary is not static", p.Type)
			}
		}
		if s := f.Section(".dynamic"); s != nil {
			t.Error("the binary has a .dynamic section")
		}
		if s := f.Section(".interp"); s != nil {
			t.Error("the binary has an .interp section")
		}
		info, _ := os.Stat(bin)
		t.Logf("static binary, -s -w: %d bytes", info.Size())
	})

	t.Run("chroot", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("chroot needs root")
		}
		runImageChroot(t, bin)
	})
}

// runImageChroot lays out the image as the Dockerfile does in an empty
// folder and runs its entry points there: nothing but the binary, the CA
// bundle and the links.
func runImageChroot(t *testing.T, bin string) {
	_, links := dockerfileLinks(t)
	root := t.TempDir()
	mustMkdir(t, filepath.Join(root, "bin"))
	copyFile(t, bin, filepath.Join(root, "bin", "skr"), 0o755)
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		mustMkdir(t, filepath.Join(root, "etc", "ssl", "certs"))
		copyFile(t, "/etc/ssl/certs/ca-certificates.crt", filepath.Join(root, "etc", "ssl", "certs", "ca-certificates.crt"), 0o644)
	}
	for _, l := range links {
		mustMkdir(t, filepath.Dir(filepath.Join(root, l)))
		if err := os.Symlink("/bin/skr", filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}

	chrootCmd := func(argv ...string) *exec.Cmd {
		cmd := &exec.Cmd{Path: argv[0], Args: argv, Dir: "/", Env: []string{}}
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		return cmd
	}

	// A tool through its link.
	out, err := chrootCmd("/bin/securitypolicydigest", "-p", "YWJj").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" {
		t.Fatalf("securitypolicydigest in the image: %v: %s", err, out)
	}

	// The sidecar through /skr.sh, with the emulator.
	var logs syncBuffer
	server := chrootCmd("/skr.sh", "-port", fmt.Sprint(freeLoopbackPort(t)), "-emulate", "-loglevel", "info")
	server.Stdout, server.Stderr = &logs, &logs
	if err := server.Start(); err != nil {
		t.Fatalf("start /skr.sh in the chroot: %v", err)
	}
	t.Cleanup(func() {
		server.Process.Kill()
		server.Wait()
	})
	base := "http://" + waitForListenAddr(t, &logs)
	waitForStatus(t, base+"/status", &logs)
	code, st := call(t, "GET", base+"/status", "")
	if code != 200 || st["message"] != "Status OK" || st["emulated"] != true {
		t.Fatalf("/status = %d %v", code, st)
	}

	runtimeData := []byte(`{"keys":[]}`)
	code, ans := call(t, "POST", base+"/attest/raw", `{"runtime_data":"`+base64.StdEncoding.EncodeToString(runtimeData)+`"}`)
	if code != 200 {
		t.Fatalf("/attest/raw = %d %v\nserver log:\n%s", code, ans, logs.String())
	}
	report, err := hex.DecodeString(fmt.Sprint(ans["report"]))
	if err != nil || len(report) != 1184 {
		t.Fatalf("report is not 1184 bytes of hex: %v (%d bytes)", err, len(report))
	}
	want := sha256.Sum256(runtimeData)
	if !bytes.Equal(report[0x50:0x70], want[:]) || !bytes.Equal(report[0x70:0x90], make([]byte, 32)) {
		t.Errorf("REPORT_DATA = %x, want sha256(runtime data) and zeros", report[0x50:0x90])
	}

	// The attestation client through its link, against that server.
	out, err = chrootCmd("/tests/skr/attest_client.sh", "-once", "-addr", base, "-out", "/", base64.StdEncoding.EncodeToString(runtimeData)).CombinedOutput()
	if err != nil {
		t.Fatalf("attest_client.sh in the image: %v: %s", err, out)
	}
	var raw map[string]string
	if b, err := os.ReadFile(filepath.Join(root, "raw.out")); err != nil || json.Unmarshal(b, &raw) != nil || len(raw["report"]) != 2*1184 {
		t.Errorf("raw.out in the image root: %v %q", err, b)
	}
}

func waitForStatus(t *testing.T, url string, logs *syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the server in the chroot did not answer /status in 30 s; its log:\n%s", logs.String())
}

// freeLoopbackPort is a TCP port free on 127.0.0.1 a moment ago (-port 0
// turns TCP off, so the kernel cannot pick one for the sidecar).
func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitForListenAddr reads the IPv4 address the sidecar listens on from its
// start-up log line.
func waitForListenAddr(t *testing.T, logs *syncBuffer) string {
	t.Helper()
	listen := regexp.MustCompile(`listen="?(127\.0\.0\.1:[0-9]+)`)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := listen.FindStringSubmatch(logs.String()); m != nil {
			return m[1]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the server in the chroot logged no listening address in 30 s; its log:\n%s", logs.String())
	return ""
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}
