package main

// The sidecar HTTP server: flags and environment, logging, routes, the
// loopback listeners and graceful shutdown.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// serverConfig is what the command line and environment say.
type serverConfig struct {
	Args           *SkrSideCarArgs
	Port           int
	LogLevel       slog.Level
	LogFile        string
	Emulate        bool
	WrappingKeyTTL time.Duration
}

// Upstream-compatible level names; trace sits below debug and fatal/panic
// above error, as in logrus.
const (
	levelTrace = slog.Level(-8)
	levelFatal = slog.Level(12)
	levelPanic = slog.Level(16)
)

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "trace":
		return levelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "", "warning", "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	case "fatal":
		return levelFatal, nil
	case "panic":
		return levelPanic, nil
	}
	return 0, fmt.Errorf("unknown log level %q (want trace, debug, info, warning, error, fatal or panic)", s)
}

func levelName(l slog.Level) string {
	switch {
	case l <= levelTrace:
		return "trace"
	case l <= slog.LevelDebug:
		return "debug"
	case l <= slog.LevelInfo:
		return "info"
	case l <= slog.LevelWarn:
		return "warning"
	case l <= slog.LevelError:
		return "error"
	case l <= levelFatal:
		return "fatal"
	}
	return "panic"
}

// parseServeFlags reads the flags, falling back to the environment for each
// flag not given, then to the skr.sh positional arguments (SkrSideCarArgs,
// Port).
func parseServeFlags(args []string, getenv func(string) string, stderr io.Writer) (*serverConfig, error) {
	fs := flag.NewFlagSet("skr serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	b64 := fs.String("base64", "", "SkrSideCarArgs: base64 (standard) JSON (env SkrSideCarArgs)")
	port := fs.Int("port", 8080, "TCP port on loopback (env Port)")
	level := fs.String("loglevel", "warning", "trace, debug, info, warning, error, fatal or panic (env LogLevel)")
	logFile := fs.String("logfile", "", "append logs to this file instead of stderr (env LogFile)")
	emulate := fs.Bool("emulate", false, "use the software SNP emulator; its evidence is trusted by no real verifier (env SKR_EMULATE=1)")
	ttl := fs.Duration("wrapping-key-ttl", 5*time.Minute, "how long a wrapping key and its MAA token serve further releases; 0 = fresh per release (env SKR_WRAPPING_KEY_TTL)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: skr [serve] [FLAGS] [SkrSideCarArgs [Port]]")
		fmt.Fprintln(stderr, "Runs the sidecar on 127.0.0.1 and ::1. Each flag falls back to its environment variable.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	pos := fs.Args()
	if len(pos) > 2 {
		return nil, fmt.Errorf("too many arguments %q: want at most SkrSideCarArgs and Port", pos)
	}

	// fallback fills a flag not given on the command line from its
	// environment variable, then from a positional argument.
	fallback := func(name, env string, posIndex int) (string, bool) {
		if set[name] {
			return "", false
		}
		if v := getenv(env); v != "" {
			return v, true
		}
		if posIndex >= 0 && posIndex < len(pos) && pos[posIndex] != "" {
			return pos[posIndex], true
		}
		return "", false
	}
	if v, ok := fallback("base64", "SkrSideCarArgs", 0); ok {
		*b64 = v
	}
	if v, ok := fallback("port", "Port", 1); ok {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("port %q is not a number", v)
		}
		*port = n
	}
	if v, ok := fallback("loglevel", "LogLevel", -1); ok {
		*level = v
	}
	if v, ok := fallback("logfile", "LogFile", -1); ok {
		*logFile = v
	}
	if v, ok := fallback("emulate", "SKR_EMULATE", -1); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("SKR_EMULATE=%q is not a boolean", v)
		}
		*emulate = b
	}
	if v, ok := fallback("wrapping-key-ttl", "SKR_WRAPPING_KEY_TTL", -1); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, fmt.Errorf("SKR_WRAPPING_KEY_TTL=%q is not a duration such as 5m: %w", v, err)
		}
		*ttl = d
	}
	if *port < 0 || *port > 65535 {
		return nil, fmt.Errorf("port %d is out of range", *port)
	}
	if *ttl < 0 {
		return nil, fmt.Errorf("wrapping-key-ttl %v is negative", *ttl)
	}
	lvl, err := parseLogLevel(*level)
	if err != nil {
		return nil, err
	}
	skrArgs, err := parseSkrSideCarArgs(*b64)
	if err != nil {
		return nil, err
	}
	return &serverConfig{Args: skrArgs, Port: *port, LogLevel: lvl, LogFile: *logFile, Emulate: *emulate, WrappingKeyTTL: *ttl}, nil
}

// newLogger writes text lines with upstream level names.
func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.LevelKey && len(groups) == 0 {
				if l, ok := a.Value.Any().(slog.Level); ok {
					a.Value = slog.StringValue(levelName(l))
				}
			}
			return a
		},
	}))
}

// serverOptions lets tests replace what the server would otherwise discover.
type serverOptions struct {
	TEE                 teeDevice           // used instead of discovering a guest interface
	GuestInterfaces     *guestInterfaces    // where to discover one; nil = the real paths
	Roots               *x509.CertPool      // trust roots for upstream TLS; nil = system roots
	Getenv              func(string) string // nil = os.Getenv
	SecurityContextRoot string              // where security-context-* is looked for; "" = "/"
	RequestTimeout      time.Duration       // overall deadline of one request; 0 = 30 s
	IdentityTokenHosts  []string            // vault hosts besides *.vault.azure.net & co. that may get the identity's token
}

// server holds everything the handlers share.
type server struct {
	cfg     serverConfig
	log     *slog.Logger
	getenv  func(string) string
	timeout time.Duration
	started time.Time

	tee    teeDevice // nil when there is no guest interface
	teeErr error     // why there is none

	inputs *uvmInputs
	certs  *certProvider
	client *http.Client // for every upstream service
	tokens *tokenProvider
	rel    *releaser

	deviceMu sync.Mutex // serializes guest device commands
}

func newServer(cfg serverConfig, log *slog.Logger, opts serverOptions) (*server, error) {
	s := &server{cfg: cfg, log: log, getenv: opts.Getenv, timeout: opts.RequestTimeout, started: time.Now()}
	if s.getenv == nil {
		s.getenv = os.Getenv
	}
	if s.timeout <= 0 {
		s.timeout = 30 * time.Second
	}
	if s.cfg.Args == nil {
		s.cfg.Args = &SkrSideCarArgs{}
	}
	root := opts.SecurityContextRoot
	if root == "" {
		root = "/"
	}
	var err error
	if s.inputs, err = loadUVMInputs(s.getenv, root); err != nil {
		return nil, err
	}
	s.client = newUpstreamClient(opts.Roots)

	s.tee = opts.TEE
	if s.tee == nil {
		gi := defaultGuestInterfaces
		if opts.GuestInterfaces != nil {
			gi = *opts.GuestInterfaces
		}
		s.tee, s.teeErr = openTEEFrom(teeOptions{Emulate: cfg.Emulate, SecurityPolicy: s.inputs.SecurityPolicy, Log: log}, gi)
	}
	s.certs = newCertProvider(s.cfg.Args.CertCache, s.localPlatformCerts(), s.client, log)
	s.tokens = newTokenProvider(tokenConfig{
		IdentityClientID: s.cfg.Args.Identity.ClientID,
		Getenv:           s.getenv,
		Client:           s.client,
		Log:              log,
		ExtraVaultHosts:  opts.IdentityTokenHosts,
	})
	s.rel = newReleaser(s)
	return s, nil
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
		// Not fatal: fresh certificates can still be fetched for each report.
		s.log.Warn("platform certificates in the security context are unusable; will fetch fresh ones", "source", s.inputs.Source, "err", err)
		return nil
	}
	return func(context.Context) (*platformCerts, error) { return pc, nil }
}

// newUpstreamClient is the one HTTP client for MAA, Key Vault, identity and
// certificate services: bounded timeouts, no proxy for the link-local
// metadata endpoints, TLS 1.2+ against the given roots.
func newUpstreamClient(roots *x509.CertPool) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots}
	tr.Proxy = func(r *http.Request) (*url.URL, error) {
		if isMetadataHost(r.URL.Hostname()) {
			return nil, nil
		}
		return http.ProxyFromEnvironment(r)
	}
	tr.ResponseHeaderTimeout = 20 * time.Second
	tr.TLSHandshakeTimeout = 10 * time.Second
	tr.MaxIdleConnsPerHost = 16
	return &http.Client{
		Transport: tr,
		Timeout:   25 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			// Never follow a redirect to another host or down to http:
			// the request may carry evidence or a bearer token.
			if len(via) >= 3 || req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

func isMetadataHost(host string) bool {
	return host == "169.254.169.254"
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	handle := func(method, path string, h http.HandlerFunc) {
		mux.HandleFunc(method+" "+path, h)
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", method)
			writeError(w, newAPIError(http.StatusMethodNotAllowed, nil, "method %s is not allowed on %s: use %s", r.Method, path, method))
		})
	}
	handle("GET", "/status", s.handleStatus)
	handle("POST", "/attest/raw", s.handleAttestRaw)
	handle("POST", "/attest/combined", s.handleAttestCombined)
	handle("POST", "/attest/maa", s.handleAttestMAA)
	handle("POST", "/key/release", s.handleKeyRelease)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, newAPIError(http.StatusNotFound, nil, "no endpoint %s: see /status, /attest/raw, /attest/combined, /attest/maa, /key/release", r.URL.Path))
	})
	return s.logRequests(mux)
}

// logRequests logs each request's method, path, status and duration; never
// bodies or headers, which may carry tokens.
func (s *server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		level := slog.LevelInfo
		if rec.status >= 500 {
			level = slog.LevelError
		} else if rec.status >= 400 {
			level = slog.LevelWarn
		}
		s.log.Log(r.Context(), level, "request", "method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start).Round(time.Microsecond))
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *server) handleStatus(w http.ResponseWriter, r *http.Request) {
	st := map[string]any{
		"message":  "Status OK",
		"version":  version,
		"emulated": s.tee != nil && s.tee.Emulated(),
		"uptime":   time.Since(s.started).Round(time.Second).String(),
	}
	if s.tee != nil {
		st["tee"] = s.tee.Name()
	} else {
		st["tee"] = "none"
		st["tee_error"] = s.teeErr.Error()
	}
	if s.tee != nil && s.tee.Emulated() {
		st["warning"] = "EMULATED EVIDENCE: reports are signed by a software VCEK that no real verifier trusts"
	}
	if d, ok := s.inputs.PolicyDigest(); ok {
		st["host_data"] = fmt.Sprintf("%x", d)
	}
	if s.inputs.Source != "" {
		st["security_context"] = s.inputs.Source
	}
	writeJSON(w, http.StatusOK, st)
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

// shutdownGrace bounds how long requests in flight may take after a signal.
const shutdownGrace = 5 * time.Second

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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serve(ctx, *cfg, log, serverOptions{}, nil); err != nil {
		log.Error("sidecar stopped", "err", err)
		fmt.Fprintf(stderr, "skr: %v\n", err)
		return 1
	}
	return 0
}

// serve runs the sidecar until ctx ends, then drains requests in flight.
// ready, when not nil, receives the listening address.
func serve(ctx context.Context, cfg serverConfig, log *slog.Logger, opts serverOptions, ready chan<- string) error {
	s, err := newServer(cfg, log, opts)
	if err != nil {
		return err
	}
	ls, err := listenLoopback(cfg.Port)
	if err != nil {
		return err
	}
	s.logStart(ls)
	srv := newHTTPServer(s.routes(), log)
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
	}
	log.Info("shutting down: draining requests in flight", "grace", shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still in flight at shutdown were cut", "err", err)
	}
	s.rel.Close()
	return nil
}

func (s *server) logStart(ls []net.Listener) {
	var addrs []string
	for _, l := range ls {
		addrs = append(addrs, l.Addr().String())
	}
	attrs := []any{"version", version, "listen", strings.Join(addrs, ","), "loglevel", levelName(s.cfg.LogLevel)}
	switch {
	case s.tee == nil:
		s.log.Warn("no SEV-SNP guest interface: attestation requests will get 503", append(attrs, "reason", s.teeErr)...)
	case s.tee.Emulated():
		// Loud on purpose, at a level the default log level shows.
		s.log.Warn("EMULATED EVIDENCE: the SNP emulator signs reports with a software VCEK that no real verifier trusts; never use this in production", append(attrs, "tee", s.tee.Name())...)
	default:
		s.log.Warn("skr sidecar started", append(attrs, "tee", s.tee.Name())...)
	}
	if d, ok := s.inputs.PolicyDigest(); ok {
		s.log.Info("security policy found", "source", s.inputs.Source, "host_data", fmt.Sprintf("%x", d))
	}
}
