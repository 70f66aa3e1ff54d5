package main

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkStartup measures, at the process level, the time from exec to
// the first 200 answer on /status: this package's binary with -emulate and
// without, and a minimal net/http server built here as the baseline, each
// at GOMAXPROCS 1 and 2. One iteration is one round that starts each of
// them once, in an order that turns from round to round, so that all see
// the same machine. It reports p50 and p95 per binary and GOMAXPROCS over
// the rounds; ask for enough of them:
//
//	go test -run XXX -bench Startup -benchtime 30x .
//
// SKR_STARTUP_OTHER=/path/to/skr adds another build of skr (an older
// commit, say) to the rounds, with and without -emulate.
func BenchmarkStartup(b *testing.B) {
	dir := b.TempDir()
	skr := filepath.Join(dir, "skr")
	goBuild(b, ".", skr)
	minimal := buildMinimalServer(b, dir)
	targets := []startupTarget{
		{"skr-emulate", skr, []string{"-emulate"}},
		{"skr", skr, nil},
		{"nethttp", minimal, nil},
	}
	if other := os.Getenv("SKR_STARTUP_OTHER"); other != "" {
		targets = append(targets, startupTarget{"other-emulate", other, []string{"-emulate"}}, startupTarget{"other", other, nil})
	}
	procs := []int{1, 2}
	samples := map[string][]time.Duration{}
	b.ResetTimer()
	for round := range b.N {
		for i := range targets {
			t := targets[(i+round)%len(targets)]
			for _, p := range procs {
				d, err := t.firstStatus(b, p)
				if err != nil {
					b.Fatalf("%s at GOMAXPROCS %d: %v", t.name, p, err)
				}
				key := fmt.Sprintf("%s-P%d", t.name, p)
				samples[key] = append(samples[key], d)
			}
		}
	}
	b.StopTimer()
	if b.N > 1 && b.N < 20 {
		b.Logf("%d rounds: run with -benchtime 30x for a p95 worth reading", b.N)
	}
	for _, t := range targets {
		for _, p := range procs {
			key := fmt.Sprintf("%s-P%d", t.name, p)
			b.ReportMetric(percentileMS(samples[key], 0.50), key+"-p50-ms")
			b.ReportMetric(percentileMS(samples[key], 0.95), key+"-p95-ms")
		}
	}
}

type startupTarget struct {
	name string
	path string
	args []string // besides the port
}

// firstStatus starts the target with GOMAXPROCS=procs and returns the time
// from exec to the first 200 answer on /status.
func (t startupTarget) firstStatus(b *testing.B, procs int) (time.Duration, error) {
	port := freeLoopbackPort(b)
	args := t.args
	if t.name == "nethttp" {
		args = []string{strconv.Itoa(port)}
	} else {
		args = append(slices.Clip(args), "-port", strconv.Itoa(port))
	}
	cmd := exec.Command(t.path, args...)
	cmd.Env = []string{"GOMAXPROCS=" + strconv.Itoa(procs), "PATH=/usr/bin:/bin"}
	cmd.Dir = os.TempDir()
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for time.Since(start) < 10*time.Second {
		code, err := getStatus(addr)
		if err == nil && code == 200 {
			return time.Since(start), nil
		}
		if err == nil {
			return 0, fmt.Errorf("/status answered %d", code)
		}
		time.Sleep(100 * time.Microsecond) // not listening yet
	}
	return 0, fmt.Errorf("no answer on %s within 10 s", addr)
}

// getStatus sends GET /status on a fresh connection and reads the status
// code of the answer; an error means no answer (yet).
func getStatus(addr string) (int, error) {
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET /status HTTP/1.1\r\nHost: " + addr + "\r\nConnection: close\r\n\r\n")); err != nil {
		return 0, err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return 0, err
	}
	fields := strings.Fields(line) // HTTP/1.1 200 OK
	if len(fields) < 2 {
		return 0, fmt.Errorf("status line %q", line)
	}
	return strconv.Atoi(fields[1])
}

// goBuild builds the main package in dir as the release does: static,
// stripped.
func goBuild(b *testing.B, dir, out string) {
	b.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if msg, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build in %s: %v\n%s", dir, err, msg)
	}
}

// minimalServer is the baseline: net/http answering /status, nothing else.
const minimalServer = `package main

import (
	"net/http"
	"os"
)

func main() {
	http.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte("{\"message\":\"Status OK\"}\n"))
	})
	http.ListenAndServe("127.0.0.1:"+os.Args[1], nil)
}
`

func buildMinimalServer(b *testing.B, dir string) string {
	b.Helper()
	src := filepath.Join(dir, "minimal")
	if err := os.MkdirAll(src, 0o755); err != nil {
		b.Fatal(err)
	}
	for name, text := range map[string]string{"go.mod": "module minimal\n\ngo 1.22\n", "main.go": minimalServer} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	out := filepath.Join(dir, "nethttp")
	goBuild(b, src, out)
	return out
}

// percentileMS is the q-quantile of ds (nearest rank), in milliseconds.
func percentileMS(ds []time.Duration, q float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := max(int(math.Ceil(q*float64(len(s))))-1, 0)
	return float64(s[i]) / float64(time.Millisecond)
}
