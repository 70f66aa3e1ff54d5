package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Probes that tell the truth: /status answers "Status OK" whatever the
// state (it stays so, for compatibility); /livez says the process serves,
// /readyz whether evidence can be produced now. The image has no shell and
// no curl, and the listener is loopback only, so `skr probe` is what a
// Kubernetes exec probe runs.

// readyzTimeout bounds the readiness check: a probe must answer promptly.
const readyzTimeout = 2 * time.Second

func (s *server) handleLivez(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "live"})
}

func (s *server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyzTimeout)
	defer cancel()
	certs, err := s.readiness(ctx)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "tee": s.tee.Name(), "certificates": certs})
}

// keysInBackground is a guest interface whose keys are made after start
// (the emulator): until they are, it produces no evidence.
type keysInBackground interface {
	backgroundKeys() *backgroundWork
}

// backgroundKeys is the emulator's side of keysInBackground.
func (e *emulator) backgroundKeys() *backgroundWork { return e.id.backgroundWork }

// readiness is nil when evidence can be produced now: a guest interface
// (or the emulator) with its keys made, the emulated Azure services' keys
// made when emulating, and platform certificates loaded or a source to
// fetch them from. It says where the certificates come from, or why the
// sidecar is not ready. It asks the device for no report: a probe must not
// use up the device's rate.
func (s *server) readiness(ctx context.Context) (certs string, err error) {
	if err := s.requireTEE(); err != nil {
		return "", err
	}
	if k, ok := s.tee.(keysInBackground); ok {
		if err := backgroundReady(k.backgroundKeys()); err != nil {
			return "", err
		}
	}
	if s.azure != nil {
		if err := backgroundReady(s.azure.keys.backgroundWork); err != nil {
			return "", err
		}
	}
	return s.certs.readiness(ctx)
}

// backgroundReady is nil once the work is done and did not fail.
func backgroundReady(b *backgroundWork) error {
	done, err := b.state()
	switch {
	case !done:
		return newError(kindUnavailable, nil, "%s are still being made", b.what)
	case err != nil:
		return newError(kindUnavailable, err, "making %s failed", b.what)
	}
	return nil
}

// readiness says where certificates for reports come from: the platform's
// own (loaded), or the certcache source for each TCB; an error when
// neither is possible.
func (p *certProvider) readiness(ctx context.Context) (string, error) {
	local, info, err := p.localCertificates(ctx)
	if err != nil {
		return "", newError(kindUnavailable, err, "the platform certificates are not loaded yet")
	}
	if local != nil {
		return fmt.Sprintf("the platform's, for TCB %s", formatTCB(info.Product, local.TCB)), nil
	}
	if p.srcErr != nil {
		return "", newError(kindUnavailable, p.srcErr, "no usable platform certificates, and certcache is misconfigured so none can be fetched")
	}
	return "fetched from " + p.src.Service() + " for each TCB (the platform provides none)", nil
}

// ---- skr probe ----

const probeUsage = "Usage: skr probe [-addr HOST:PORT] [-timeout D] [/readyz | /livez]"

func runProbe(args []string, stdout, stderr io.Writer) int {
	return probeMain(args, stdout, stderr, os.Getenv)
}

func probeMain(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := newCommandFlags("skr probe", stderr, probeUsage,
		"Asks a running sidecar on loopback and exits 0 when it answers 200, 1 otherwise: for Kubernetes exec probes.",
		"/readyz (the default): can it produce evidence now? /livez: does it serve?")
	addr := fs.String("addr", "", "the sidecar: HOST:PORT or http://HOST:PORT (default 127.0.0.1 and the Port variable, else 8080)")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return exitCodeForParse(err)
	}
	path := "/readyz"
	switch fs.NArg() {
	case 0:
	case 1:
		path = fs.Arg(0)
	default:
		fmt.Fprintln(stderr, probeUsage)
		return 2
	}
	if path != "/readyz" && path != "/livez" {
		fmt.Fprintf(stderr, "skr probe: %q is not /readyz or /livez\n", path)
		return 2
	}
	base, err := sidecarBase(*addr, getenv)
	if err != nil {
		fmt.Fprintf(stderr, "skr probe: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	status, body, err := getSidecar(ctx, base+path)
	if err != nil {
		fmt.Fprintf(stderr, "skr probe: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: HTTP %d %s\n", path, status, oneLine(string(body)))
	if status != http.StatusOK {
		return 1
	}
	return 0
}

// sidecarBase is the base URL of a sidecar given as HOST:PORT or
// http://HOST:PORT; empty means 127.0.0.1 and the Port variable (else
// 8080), where a sidecar in the same container group listens.
func sidecarBase(addr string, getenv func(string) string) (string, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		port, err := sidecarPort(0, getenv)
		if err != nil {
			return "", err
		}
		return "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), nil
	}
	raw := addr
	if !strings.Contains(addr, "://") {
		raw = "http://" + addr
	}
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", fmt.Errorf("-addr %q is not HOST:PORT or http://HOST:PORT (the sidecar serves plain http on loopback)", addr)
	}
	return "http://" + u.Host, nil
}

// maxProbeAnswer bounds what a probe or the doctor reads of an answer.
const maxProbeAnswer = 1 << 20

// getSidecar GETs a sidecar URL and returns the status and bounded body.
func getSidecar(ctx context.Context, target string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := loopbackClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("no answer from %s: %w", target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxProbeAnswer))
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, nil, fmt.Errorf("read the answer of %s: %w", target, err)
	}
	return resp.StatusCode, body, nil
}

// loopbackClient talks to a sidecar: no proxy (a proxy cannot reach our
// loopback), no redirects.
var loopbackClient = &http.Client{
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
	CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	},
}
