package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// noDevice is a server with no guest interface: the state of a machine
// without SEV-SNP that was not told to emulate.
func startNoDeviceServer(t *testing.T) (string, *syncBuffer) {
	t.Helper()
	return startTestServer(t, serverConfig{}, serverOptions{})
}

func TestServerWithoutDevice(t *testing.T) {
	t.Parallel()
	base, logs := startNoDeviceServer(t)
	status, body := call(t, "GET", base+"/status", "")
	if status != 200 || body["message"] != "Status OK" || body["tee"] != "none" || body["emulated"] != false {
		t.Fatalf("/status = %d %v", status, body)
	}
	if msg, _ := body["tee_error"].(string); !strings.Contains(msg, "-emulate") {
		t.Errorf("/status tee_error does not point at -emulate: %q", msg)
	}
	for _, path := range []string{"/attest/raw", "/attest/combined"} {
		status, body := call(t, "POST", base+path, `{"runtime_data":"YWJj"}`)
		msg, _ := body["error"].(string)
		if status != http.StatusServiceUnavailable || !strings.Contains(msg, "-emulate") || !strings.Contains(msg, "sev-guest (absent)") || !strings.HasPrefix(msg, "no SEV-SNP guest interface: looked for") {
			t.Errorf("%s = %d %q, want 503 naming the paths and -emulate", path, status, msg)
		}
	}
	// Release and MAA fail the same way, before any token or service is
	// asked for: IMDS does not answer here, so asking it first would end
	// in a 504 at the deadline instead.
	for path, body := range map[string]string{
		"/attest/maa":  `{"maa_endpoint":"sharedeus.eus.attest.azure.net","runtime_data":"YWJj"}`,
		"/key/release": `{"maa_endpoint":"sharedeus.eus.attest.azure.net","akv_endpoint":"myvault.vault.azure.net","kid":"mykey"}`,
	} {
		status, out := call(t, "POST", base+path, body)
		msg, _ := out["error"].(string)
		if status != http.StatusServiceUnavailable || !strings.Contains(msg, "-emulate") {
			t.Errorf("%s = %d %q, want 503 naming -emulate", path, status, msg)
		}
	}
	if !strings.Contains(logs.String(), "no SEV-SNP guest interface") {
		t.Errorf("start-up log does not say there is no device:\n%s", logs)
	}
}

func TestServerRejectsBadRequests(t *testing.T) {
	t.Parallel()
	base, _ := startNoDeviceServer(t)
	big := `{"runtime_data":"` + strings.Repeat("A", maxRequestBody+10) + `"}`
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"unknown path", "GET", "/nope", "", 404},
		{"unknown nested path", "POST", "/attest/other", "{}", 404},
		{"wrong method on status", "POST", "/status", "{}", 405},
		{"wrong method on raw", "GET", "/attest/raw", "", 405},
		{"wrong method on release", "PUT", "/key/release", "{}", 405},
		{"malformed JSON", "POST", "/attest/raw", `{"runtime_data":`, 400},
		{"not an object", "POST", "/attest/combined", `"YWJj"`, 400},
		{"missing field", "POST", "/attest/raw", `{}`, 400},
		{"bad base64", "POST", "/attest/raw", `{"runtime_data":"@@@@"}`, 400},
		{"empty body", "POST", "/attest/combined", ``, 400},
		{"body over 1 MiB", "POST", "/attest/raw", big, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := call(t, tc.method, base+tc.path, tc.body)
			if status != tc.want {
				t.Errorf("status = %d, want %d (%v)", status, tc.want, body)
			}
			if msg, _ := body["error"].(string); msg == "" {
				t.Errorf("no error message: %v", body)
			}
		})
	}
}

func TestServerListensOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	ls, err := listenLoopback(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		defer l.Close()
		addr := l.Addr().String()
		if !strings.HasPrefix(addr, "127.0.0.1:") && !strings.HasPrefix(addr, "[::1]:") {
			t.Errorf("listening on %s", addr)
		}
	}
}

func TestServeDrainsAndStopsOnCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	gi := absentGuestInterfaces(t)
	opts := serverOptions{Getenv: envOf(nil), SecurityContextRoot: t.TempDir(), GuestInterfaces: &gi, WrappingKeys: testWrappingKeys(t)}
	go func() { done <- serve(ctx, serverConfig{}, newLogger(io.Discard, slog.LevelWarn), opts, ready) }()
	addr := <-ready
	if status, _ := call(t, "GET", "http://"+addr+"/status", ""); status != 200 {
		t.Fatalf("status %d", status)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return after cancel")
	}
	if _, err := http.Get("http://" + addr + "/status"); err == nil {
		t.Error("server still answers after shutdown")
	}
}

// gatedTEE holds every report until gate closes or the request gives up,
// and says when a request has reached it.
type gatedTEE struct {
	teeDevice
	entered chan struct{}
	gate    chan struct{}
}

func (g *gatedTEE) GetReport(ctx context.Context, rd [64]byte) ([]byte, error) {
	g.entered <- struct{}{}
	select {
	case <-g.gate:
		return g.teeDevice.GetReport(ctx, rd)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// shutdownServer is a server whose signals and clock the test drives.
type shutdownServer struct {
	addr    string
	tee     *gatedTEE
	signals chan os.Signal
	clock   *fakeClock
	done    chan error
	logs    *syncBuffer
}

func startShutdownServer(t *testing.T, grace time.Duration) *shutdownServer {
	t.Helper()
	gi := absentGuestInterfaces(t)
	s := &shutdownServer{
		tee:     &gatedTEE{teeDevice: newTestEmulator(t, nil), entered: make(chan struct{}, 16), gate: make(chan struct{})},
		signals: make(chan os.Signal, 2),
		clock:   newFakeClock(),
		done:    make(chan error, 1),
		logs:    &syncBuffer{},
	}
	opts := serverOptions{TEE: s.tee, Getenv: envOf(nil), SecurityContextRoot: t.TempDir(), GuestInterfaces: &gi,
		Signals: s.signals, Clock: s.clock, WrappingKeys: testWrappingKeys(t)}
	ready := make(chan string, 1)
	go func() {
		s.done <- serve(context.Background(), serverConfig{ShutdownGrace: grace}, newLogger(s.logs, levelTrace), opts, ready)
	}()
	s.addr = <-ready
	t.Cleanup(func() {
		// Two signals end serve at once, if the test has not ended it.
		s.signals <- syscall.SIGTERM
		s.signals <- syscall.SIGTERM
	})
	return s
}

// attestInFlight starts an /attest/raw and returns once the request holds
// the device; the answer comes on the channel (status, body, or err).
func (s *shutdownServer) attestInFlight(t *testing.T) chan rawAnswer {
	t.Helper()
	out := make(chan rawAnswer, 1)
	go func() {
		resp, err := http.Post("http://"+s.addr+"/attest/raw", "application/json", strings.NewReader(`{"runtime_data":"aGVsbG8="}`))
		if err != nil {
			out <- rawAnswer{err: err}
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		out <- rawAnswer{status: resp.StatusCode, body: string(body), err: err}
	}()
	<-s.tee.entered
	return out
}

type rawAnswer struct {
	status int
	body   string
	err    error
}

// waitDraining waits until the server takes no new connections.
func (s *shutdownServer) waitDraining(t *testing.T) {
	t.Helper()
	waitFor(t, "the listener to close", func() bool {
		c, err := net.Dial("tcp", s.addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
}

// A request still running when the grace is over gets a 503 "shutting
// down", not a cut connection; then serve returns.
func TestShutdownAnswers503AfterGrace(t *testing.T) {
	t.Parallel()
	const grace = 10 * time.Second
	s := startShutdownServer(t, grace)
	answer := s.attestInFlight(t)
	s.signals <- syscall.SIGTERM
	s.waitDraining(t)
	s.clock.Advance(grace - time.Millisecond)
	select {
	case a := <-answer:
		t.Fatalf("answered within the grace: %+v", a)
	default:
	}
	s.clock.Advance(time.Millisecond)
	a := <-answer
	if a.err != nil || a.status != http.StatusServiceUnavailable || strings.TrimSpace(a.body) != `{"error":"shutting down"}` {
		t.Fatalf("answer at the end of the grace: %+v", a)
	}
	if err := <-s.done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	if !strings.Contains(s.logs.String(), "shutdown grace over") {
		t.Errorf("the log does not say the grace ran out:\n%s", s.logs)
	}
}

// Within the grace a request finishes as usual.
func TestShutdownLetsRequestsFinishWithinGrace(t *testing.T) {
	t.Parallel()
	s := startShutdownServer(t, time.Minute)
	answer := s.attestInFlight(t)
	s.signals <- syscall.SIGINT
	s.waitDraining(t)
	close(s.tee.gate)
	if a := <-answer; a.err != nil || a.status != http.StatusOK || !strings.Contains(a.body, `"report"`) {
		t.Fatalf("answer within the grace: %+v", a)
	}
	if err := <-s.done; err != nil {
		t.Fatalf("serve: %v", err)
	}
}

// A second signal ends serve at once, with the grace far from over.
func TestShutdownSecondSignalStopsAtOnce(t *testing.T) {
	t.Parallel()
	s := startShutdownServer(t, time.Hour)
	answer := s.attestInFlight(t)
	s.signals <- syscall.SIGTERM
	s.waitDraining(t)
	s.signals <- syscall.SIGINT
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve still runs after a second signal")
	}
	if a := <-answer; a.err == nil && a.status == http.StatusOK {
		t.Fatalf("the request was answered normally: %+v", a)
	}
}

// A gRPC call still running when the shutdown grace is over ends as a REST
// request does: UNAVAILABLE "shutting down".
func TestShutdownEndsGRPCCallsAfterGrace(t *testing.T) {
	t.Parallel()
	stopping, stopRequests := context.WithCancel(context.Background())
	s := &server{timeout: time.Minute, stopping: stopping}
	started := make(chan struct{})
	block := func(ctx context.Context, _ *grpcStream) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	req := httptest.NewRequest(http.MethodPost, "/key_provider.KeyProviderService/UnWrapKey", nil)
	done := make(chan error, 1)
	go func() { done <- s.runGRPC(req, &grpcStream{}, block) }()
	<-started
	stopRequests()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the call runs on after the grace")
	}
	if grpcStatusFor(err) != codeUnavailable || err.Error() != "shutting down" {
		t.Fatalf("a call at the end of the grace got %v (%v)", err, grpcStatusFor(err))
	}
}
