package main

// The cache-fill attack, measured: a sidecar process is asked to release
// keys with many distinct MAA names that all reach one MAA, and its
// resident memory is read before and after. Heavy (one attestation per
// name), so it runs only when asked:
//
//	SKR_RSS_ATTACK=200,1100 go test -run TestCacheFillRSS -v -timeout 30m .
//
// SKR_RSS_BINARY names the sidecar binary to measure (another version, for
// comparison); by default this package is built. SKR_RSS_CONCURRENCY sets
// how many requests are in flight at once (default 300).

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestCacheFillRSS(t *testing.T) {
	spec := os.Getenv("SKR_RSS_ATTACK")
	if spec == "" {
		t.Skip("set SKR_RSS_ATTACK=200,1100 to measure memory under the cache-fill attack")
	}
	concurrency := 300
	if c := os.Getenv("SKR_RSS_CONCURRENCY"); c != "" {
		concurrency, _ = strconv.Atoi(c)
	}
	bin := os.Getenv("SKR_RSS_BINARY")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "skr")
		if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	}
	for _, field := range strings.Split(spec, ",") {
		names, err := strconv.Atoi(strings.TrimSpace(field))
		if err != nil || names < 1 || names > 60000 {
			t.Fatalf("SKR_RSS_ATTACK: %q is not a number of names", field)
		}
		t.Run(strconv.Itoa(names), func(t *testing.T) { measureCacheFill(t, bin, names, concurrency) })
	}
}

func measureCacheFill(t *testing.T, bin string, names, concurrency int) {
	sidecar := startSidecarProcess(t, bin)
	maa := newMultiAddressMAA(t, sidecar.ark(t), names+1)

	base := sidecar.rss(t)
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	start := time.Now()
	var legit time.Duration
	for i := range names {
		if i == min(concurrency, names)-1 {
			// A release that needs its own attestation while the attack is
			// in full flow: how long does it wait?
			wg.Go(func() {
				s := time.Now()
				sidecar.release(t, maa.addr(names))
				legit = time.Since(s)
			})
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			status := sidecar.release(t, maa.addr(i))
			mu.Lock()
			statuses[status]++
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	after := sidecar.rss(t)
	hwm := sidecar.status(t, "VmHWM")
	t.Logf("%d MAA names, %d at a time, in %v: RSS %d → %d KiB (peak %d KiB); MAA attestations %d; answers %v; one more release during the attack took %v",
		names, concurrency, elapsed.Round(time.Second), base, after, hwm, maa.calls(), statuses, legit.Round(time.Millisecond))
}

// sidecarProcess is the sidecar binary, emulating, trusting the stand-ins.
type sidecarProcess struct {
	cmd  *exec.Cmd
	base string
	http *http.Client
}

func startSidecarProcess(t *testing.T, bin string) *sidecarProcess {
	t.Helper()
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: getStandInPKI().root.cert.Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, "-emulate", "-port", strconv.Itoa(port), "-loglevel", "panic")
	cmd.Env = []string{"SSL_CERT_FILE=" + caFile, "HOME=" + dir}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	s := &sidecarProcess{cmd: cmd, base: fmt.Sprintf("http://127.0.0.1:%d", port),
		http: &http.Client{Timeout: 120 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1000}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := s.http.Get(s.base + "/status"); err == nil {
			resp.Body.Close()
			return s
		}
		if time.Now().After(deadline) {
			t.Fatal("the sidecar did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ark is the emulator's ARK, from the chain /attest/combined hands out.
func (s *sidecarProcess) ark(t *testing.T) *platformCerts {
	t.Helper()
	resp, err := s.http.Post(s.base+"/attest/combined", "application/json", strings.NewReader(`{"runtime_data":"aGVsbG8="}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("/attest/combined: %v: %s", err, raw)
	}
	certs, err := parsePEMCertificates(decodeB64(t, body["endorsements"]))
	if err != nil || len(certs) != 3 {
		t.Fatalf("endorsements: %v", err)
	}
	return &platformCerts{VCEK: certs[0], ASK: certs[1], ARK: certs[2]}
}

// release asks for a key with the MAA at maaAddr, from a vault name that
// does not resolve: the credential is made (and cached) before the vault is
// called. It returns the status.
func (s *sidecarProcess) release(t *testing.T, maaAddr string) int {
	body := fmt.Sprintf(`{"maa_endpoint":%q,"akv_endpoint":"nonexistent-vault.vault.azure.net","kid":"k","access_token":"attacker-token"}`, maaAddr)
	resp, err := s.http.Post(s.base+"/key/release", "application/json", strings.NewReader(body))
	if err != nil {
		return -1
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// status reads a field of /proc/PID/status, in KiB.
func (s *sidecarProcess) status(t *testing.T, field string) int {
	t.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	t.Fatalf("no %s in /proc/PID/status", field)
	return 0
}

func (s *sidecarProcess) rss(t *testing.T) int { return s.status(t, "VmRSS") }

// multiAddressMAA is one MAA stand-in listening on many loopback addresses
// (127.1.x.y, one port), each a distinct maa_endpoint with a certificate
// for its address.
type multiAddressMAA struct {
	maa   *maaStandIn
	ips   []string
	port  int
	srv   *http.Server
	mu    sync.Mutex
	certs map[string]*tls.Certificate
}

func newMultiAddressMAA(t *testing.T, certs *platformCerts, n int) *multiAddressMAA {
	t.Helper()
	m := &multiAddressMAA{maa: newMAAStandIn(t, certs.ARK), certs: map[string]*tls.Certificate{}}
	key := standInECKey()
	pki := getStandInPKI()
	m.srv = &http.Server{Handler: m.maa.srv.Config.Handler, TLSConfig: &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			ip, _, _ := net.SplitHostPort(hello.Conn.LocalAddr().String())
			m.mu.Lock()
			defer m.mu.Unlock()
			if c := m.certs[ip]; c != nil {
				return c, nil
			}
			leaf := pki.inter.issue(key.Public(), ip)
			c := &tls.Certificate{Certificate: [][]byte{leaf.Raw, pki.inter.cert.Raw}, PrivateKey: key, Leaf: leaf}
			m.certs[ip] = c
			return c, nil
		},
	}}
	for i := range n {
		ip := fmt.Sprintf("127.1.%d.%d", i/250, i%250+1)
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(m.port)))
		if err != nil {
			t.Fatalf("listen on %s: %v", ip, err)
		}
		if m.port == 0 {
			m.port = l.Addr().(*net.TCPAddr).Port
		}
		m.ips = append(m.ips, ip)
		go m.srv.ServeTLS(l, "", "")
	}
	t.Cleanup(func() { m.srv.Shutdown(context.Background()) })
	return m
}

func (m *multiAddressMAA) addr(i int) string { return net.JoinHostPort(m.ips[i], strconv.Itoa(m.port)) }

func (m *multiAddressMAA) calls() int { return len(m.maa.issuedTokens()) }
