package main

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serverOptions lets tests replace what the server would otherwise discover.
type serverOptions struct {
	TEE                 teeDevice           // used instead of discovering a guest interface
	GuestInterfaces     *guestInterfaces    // where to discover one; nil = the real paths
	Roots               *x509.CertPool      // trust roots for upstream TLS; nil = system roots
	Getenv              func(string) string // nil = os.Getenv
	SecurityContextRoot string              // where security-context-* is looked for; "" = "/"
	RequestTimeout      time.Duration       // overall deadline of one request; 0 = 30 s
	IdentityTokenHosts  []string            // vault hosts besides *.vault.azure.net & co. that may get the identity's token

	// Retry is the policy of MAA, Key Vault and certificate calls (nil = defaultRetry).
	// The releaser's wrapping keys: how they are made (nil =
	// newWrappingKey), and the clock of their reuse (nil = the system's).
	Retry        *retryPolicy
	WrappingKeys func() (*wrappingKey, error)
	Clock        clock
	AzureKeys    *emulatedAzureKeys // keys of the emulated Azure services (-emulate); nil = made at start
	// TokenRetry adjusts the retry policies of the identity calls (IMDS,
	// Entra ID), which keep their own retry decisions; nil = as they are.
	TokenRetry func(retryPolicy) retryPolicy

	// Signals are SIGTERM and SIGINT: the first starts the drain (as the
	// end of serve's ctx does), a second one during it stops at once.
	// The clock above times the drain.
	Signals <-chan os.Signal
	Keygen  *keygen // where keys are made ahead of need; nil = newKeygen()
}

// server holds everything the handlers share.
type server struct {
	cfg     serverConfig
	log     *slog.Logger
	getenv  func(string) string
	timeout time.Duration
	retry   retryPolicy // of MAA, Key Vault and certificate calls
	started time.Time

	tee    teeDevice // nil when there is no guest interface
	teeErr error     // why there is none

	inputs  *uvmInputs
	certs   *certProvider
	client  *http.Client // for every upstream service
	tokens  *tokenProvider
	rel     *releaser
	keygen  *keygen        // runs the key generation done ahead of need
	azure   *emulatedAzure // the emulated MAA and vaults; nil without -emulate
	metrics *metrics
	clock   clock

	// stopping ends when the shutdown grace is over: requests still
	// running then are answered 503 "shutting down".
	stopping     context.Context
	stopRequests context.CancelFunc

	deviceMu sync.Mutex // serializes guest device commands
}

func newServer(cfg serverConfig, log *slog.Logger, opts serverOptions) (*server, error) {
	s := newServerDefaults(cfg, log, opts)
	root := cmp.Or(opts.SecurityContextRoot, "/")
	var err error
	if s.inputs, err = loadUVMInputs(s.getenv, root); err != nil {
		return nil, err
	}
	s.client = newUpstreamClient(opts.Roots)
	s.openTEE(opts)
	s.startEmulatedAzure(opts.AzureKeys, opts.Roots)
	s.certs = newCertProvider(s.cfg.Args.CertCache, s.localPlatformCerts(), s.client, log)
	s.certs.retry = s.retry
	s.certs.neverMatchLocal = cfg.AllowTestingMismatchedTCB
	s.certs.onFetch = s.metrics.certFetch
	s.tokens = s.newTokenProvider(opts)
	s.rel = newReleaser(releaserConfig{
		TTL:     cfg.WrappingKeyTTL,
		Timeout: s.timeout,
		Attest:  s.attestForRelease,
		NewKey:  opts.WrappingKeys,
		Keygen:  s.keygen,
		Log:     log,
		Clock:   opts.Clock,
	})
	s.metrics.wrappingKeysReady = s.rel.pool.spareCount
	return s, nil
}

// newServerDefaults is the server with what the options leave out filled
// in, before anything is opened or started.
func newServerDefaults(cfg serverConfig, log *slog.Logger, opts serverOptions) *server {
	s := &server{cfg: cfg, log: log, getenv: opts.Getenv, timeout: opts.RequestTimeout, retry: defaultRetry, started: time.Now(),
		keygen: opts.Keygen, clock: opts.Clock, metrics: newMetrics()}
	if s.keygen == nil {
		s.keygen = newKeygen()
	}
	if opts.Retry != nil {
		s.retry = *opts.Retry
	}
	s.retry.OnRetry = s.metrics.retry
	if s.getenv == nil {
		s.getenv = os.Getenv
	}
	if s.timeout <= 0 {
		s.timeout = 30 * time.Second
	}
	if s.cfg.Args == nil {
		s.cfg.Args = &SkrSideCarArgs{}
	}
	if s.clock == nil {
		s.clock = systemClock{}
	}
	s.stopping, s.stopRequests = context.WithCancel(context.Background())
	return s
}

// openTEE takes the guest interface the options give, else finds one (or
// the emulator).
func (s *server) openTEE(opts serverOptions) {
	s.tee = opts.TEE
	if s.tee != nil {
		return
	}
	gi := defaultGuestInterfaces
	if opts.GuestInterfaces != nil {
		gi = *opts.GuestInterfaces
	}
	s.tee, s.teeErr = openTEEFrom(teeOptions{Emulate: s.cfg.Emulate, SecurityPolicy: s.inputs.SecurityPolicy, Log: s.log, Keygen: s.keygen}, gi)
}

// newTokenProvider is where the bearer tokens for the vaults come from.
func (s *server) newTokenProvider(opts serverOptions) *tokenProvider {
	tokens := newTokenProvider(tokenConfig{
		IdentityClientID: s.cfg.Args.Identity.ClientID,
		Getenv:           s.getenv,
		Client:           s.client,
		Log:              s.log,
		ExtraVaultHosts:  opts.IdentityTokenHosts,
		Emulated:         s.emulatedIdentitySource,
	})
	if opts.TokenRetry != nil {
		tokens.imdsRetry = opts.TokenRetry(tokens.imdsRetry)
		tokens.entraRetry = opts.TokenRetry(tokens.entraRetry)
	}
	tokens.imdsRetry.OnRetry, tokens.entraRetry.OnRetry = s.metrics.retry, s.metrics.retry
	return tokens
}

// localPlatformCerts returns how to get the certificates handed to the
// container: the emulator's own chain when emulating (made lazily, off the
// start-up path), else the security context's THIM JSON. Nil when neither.
func (s *server) localPlatformCerts() func(context.Context) (*platformCerts, error) {
	if src, ok := s.tee.(platformCertSource); ok {
		return src.PlatformCerts
	}
	if len(s.inputs.HostAMDCert) == 0 {
		return nil
	}
	pc, err := parseTHIM(s.inputs.HostAMDCert)
	if err != nil {
		s.inputs.Warnings = append(s.inputs.Warnings, corruptPlatformCerts(s.inputs.Source, err))
		return nil
	}
	return func(context.Context) (*platformCerts, error) { return pc, nil }
}

// listenLoopback listens on 127.0.0.1 and, where the host has it, ::1.
func listenLoopback(port int) ([]net.Listener, error) {
	l4, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("listen on 127.0.0.1:%d: %w", port, err)
	}
	ls := []net.Listener{l4}
	p := l4.Addr().(*net.TCPAddr).Port
	if l6, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(p))); err == nil {
		ls = append(ls, l6)
	}
	return ls, nil
}

// listen opens the listeners cfg asks for: loopback TCP unless it is
// turned off, and the Unix socket when there is one.
func listen(cfg serverConfig) ([]net.Listener, error) {
	var ls []net.Listener
	if !cfg.NoTCP {
		tcp, err := listenLoopback(cfg.Port)
		if err != nil {
			return nil, err
		}
		ls = tcp
	}
	if cfg.Socket != "" {
		l, err := listenUnix(cfg.Socket)
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func newHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// answerBound is how long requests cut at the end of the grace have to
// send their 503 before their connections are closed.
const answerBound = 2 * time.Second

func runServe(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseServeFlags(args, os.Getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "skr: %v\n", err)
		return 2
	}
	logOut := stderr
	if cfg.LogFile != "" {
		f, err := os.OpenFile(cfg.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			fmt.Fprintf(stderr, "skr: open log file: %v\n", err)
			return 1
		}
		defer f.Close()
		logOut = f
	}
	log := newLogger(logOut, cfg.LogLevel)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if err := serve(context.Background(), *cfg, log, serverOptions{Signals: sigs}, nil); err != nil {
		log.Error("sidecar stopped", "err", err)
		fmt.Fprintf(stderr, "skr: %v\n", err)
		return 1
	}
	return 0
}

// serve runs the sidecar until ctx ends or a signal comes, then drains
// requests in flight. ready, when not nil, receives the listening address.
func serve(ctx context.Context, cfg serverConfig, log *slog.Logger, opts serverOptions, ready chan<- string) error {
	s, err := newServer(cfg, log, opts)
	if err != nil {
		return err
	}
	ls, err := listen(cfg)
	if err != nil {
		return err
	}
	s.logStart(ls)
	srv := s.frontEnd()
	srv.ConnContext = withPeer
	srv.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateIdle || state == http.StateClosed { // a request was answered, or a connection ended
			s.keygen.requestAnswered()
		}
	}
	errc := make(chan error, len(ls))
	for _, l := range ls {
		go func() { errc <- srv.Serve(l) }()
	}
	if ready != nil {
		ready <- ls[0].Addr().String()
	}
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	case sig := <-opts.Signals:
		log.Info("signal received", "signal", sig.String())
	}
	s.drain(srv, opts.Signals)
	s.rel.Close()
	return nil
}

// drain stops taking connections and gives the requests in flight the
// shutdown grace. Those still running at its end are answered 503
// "shutting down", then their connections closed. A second signal ends
// the drain at once.
func (s *server) drain(srv *http.Server, signals <-chan os.Signal) {
	grace := s.cfg.ShutdownGrace
	s.log.Info("shutting down: draining requests in flight", "grace", grace)
	graceOver := make(chan struct{})
	stopTimer := s.clock.AfterFunc(grace, func() { close(graceOver) })
	defer stopTimer()
	idle := make(chan struct{})
	go func() {
		srv.Shutdown(context.Background()) // returns once every connection is idle or closed
		close(idle)
	}()
	select {
	case <-idle:
		return
	case sig := <-signals:
		s.log.Warn("second signal: stopping at once; requests in flight are cut", "signal", sig.String())
		srv.Close()
		return
	case <-graceOver:
	}
	s.log.Warn("shutdown grace over: requests still in flight are answered 503", "grace", grace)
	s.stopRequests()
	t := time.NewTimer(answerBound)
	defer t.Stop()
	select {
	case <-idle:
		return
	case <-signals:
	case <-t.C:
	}
	srv.Close()
}

func (s *server) logStart(ls []net.Listener) {
	var addrs []string
	for _, l := range ls {
		addrs = append(addrs, l.Addr().String())
	}
	attrs := []any{"version", version, "listen", strings.Join(addrs, ","), "server_type", s.cfg.ServerType, "loglevel", levelName(s.cfg.LogLevel)}
	if s.cfg.AllowTestingMismatchedTCB {
		s.log.Warn(mismatchedTCBWarning)
	}
	switch {
	case s.tee == nil:
		s.log.Warn("no SEV-SNP guest interface: attestation requests will get 503", append(attrs, "reason", s.teeErr)...)
	case s.tee.Emulated():
		// Loud on purpose, at a level the default log level shows.
		s.log.Warn("EMULATED EVIDENCE: the SNP emulator signs reports with a software VCEK that no real verifier trusts; never use this in production", append(attrs, "tee", s.tee.Name())...)
	default:
		s.log.Warn("skr sidecar started", append(attrs, "tee", s.tee.Name())...)
	}
	s.logEmulatedAzure()
	if d, ok := s.inputs.PolicyDigest(); ok {
		s.log.Info("security policy found", "source", s.inputs.Source, "host_data", fmt.Sprintf("%x", d))
	}
	for _, w := range append(slices.Clip(s.cfg.Args.warnings), s.inputs.Warnings...) {
		s.log.Warn("configuration: " + w)
	}
}
