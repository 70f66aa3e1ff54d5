package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The reserved names of the emulated Azure services. .localhost names
// never reach real DNS (RFC 6761), so no real service can answer to them.
const (
	emulatedDomain    = "skr.localhost"
	emulatedMAAHost   = "maa." + emulatedDomain
	emulatedVaultHost = "vault." + emulatedDomain
	emulatedHSMHost   = "hsm." + emulatedDomain
)

// emulatedNames lists the reserved names for messages, /status and the log.
var emulatedNames = []string{emulatedMAAHost, emulatedVaultHost, emulatedHSMHost}

// isEmulatedName says whether host (a host name, with or without :port)
// is under the reserved domain.
func isEmulatedName(host string) bool {
	h := hostName(host)
	return h == emulatedDomain || strings.HasSuffix(h, "."+emulatedDomain)
}

// isEmulatedVaultName is true for the emulated Key Vault and Managed HSM.
func isEmulatedVaultName(host string) bool {
	h := hostName(host)
	return h == emulatedVaultHost || h == emulatedHSMHost
}

// errNotEmulating is the refusal of a reserved name by a sidecar started
// without -emulate: the name can only mean the emulated services.
func errNotEmulating(host string) error {
	return newError(kindInvalid, nil,
		"%s is a service emulated by skr -emulate, and this sidecar was not started with -emulate: start it with -emulate (or SKR_EMULATE=1) to use %s",
		hostName(host), strings.Join(emulatedNames, ", "))
}

// emulatedAzureKeys are one run's keys and certificates of the emulated
// services: the run's CA, the MAA and vault signing keys, the identity's
// key and the demo keys. Made once, in the background, kept in memory only.
type emulatedAzureKeys struct {
	*backgroundWork // the fields below are set once it is done

	caCert *x509.Certificate
	caPool *x509.CertPool

	maaSigner *rsa.PrivateKey
	maaCert   *x509.Certificate // issued by the CA, served in the JWKS
	maaKid    string

	vaultSigner *rsa.PrivateKey
	vaultCerts  map[string]*x509.Certificate // TLS-style leaf per vault host

	identityKey *ecdsa.PrivateKey
	identityKid string

	demo demoKeyMaterial
}

// demoKeyMaterial is what the demo keys hold in both emulated vaults.
type demoKeyMaterial struct {
	oct []byte
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
}

// emulatedRSABitsAzure is the size of the services' RSA keys: what MAA and
// Key Vault sign with, and the smallest size the sidecar accepts.
const emulatedRSABitsAzure = 2048

// newEmulatedAzureKeys starts making the keys and returns at once: RSA key
// generation must not delay start-up or the first /status.
func newEmulatedAzureKeys(kg *keygen, log *slog.Logger) *emulatedAzureKeys {
	k := &emulatedAzureKeys{}
	k.backgroundWork = startBackgroundOn(kg, "the emulated Azure services' keys", func() error {
		start := time.Now()
		if err := k.generate(); err != nil {
			log.Error("emulated Azure: making its keys failed", "err", err)
			return err
		}
		log.Info("emulated Azure ready: run CA, MAA and vault signing keys, demo keys made", "duration", time.Since(start).Round(time.Millisecond))
		return nil
	})
	return k
}

func (k *emulatedAzureKeys) generate() error {
	caKey, err := k.generateKeys()
	if err != nil {
		return err
	}
	return k.certify(caKey)
}

// generateKeys makes every key of the run; it returns the CA's, which only
// certify needs.
func (k *emulatedAzureKeys) generateKeys() (*ecdsa.PrivateKey, error) {
	// The three RSA keys are the slow part: make them side by side.
	rsaKeys := make([]*rsa.PrivateKey, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range rsaKeys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rsaKeys[i], errs[i] = rsa.GenerateKey(rand.Reader, emulatedRSABitsAzure)
		}()
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if k.identityKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, fmt.Errorf("identity key: %w", err)
	}
	if k.demo.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, fmt.Errorf("demo EC key: %w", err)
	}
	k.demo.oct = make([]byte, 32)
	if _, err := rand.Read(k.demo.oct); err != nil {
		return nil, fmt.Errorf("demo oct key: %w", err)
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("RSA keys: %w", err)
	}
	k.maaSigner, k.vaultSigner, k.demo.rsa = rsaKeys[0], rsaKeys[1], rsaKeys[2]
	return caKey, nil
}

// certify makes the run's CA and the signing certificates it issues to the
// emulated MAA and vaults.
func (k *emulatedAzureKeys) certify(caKey *ecdsa.PrivateKey) error {
	var err error

	now := time.Now().Add(-time.Hour) // tolerate a verifier's clock a little behind
	caTmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "skr emulated Azure CA (this run only; trusted by nothing else)", Organization: []string{"skr -emulate"}},
		NotBefore:             now,
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	if k.caCert, err = createCert(caTmpl, nil, &caKey.PublicKey, caKey); err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	k.caPool = x509.NewCertPool()
	k.caPool.AddCert(k.caCert)

	if k.maaCert, err = createCert(leafTemplate("https://"+emulatedMAAHost, now), k.caCert, &k.maaSigner.PublicKey, caKey); err != nil {
		return fmt.Errorf("MAA signing certificate: %w", err)
	}
	sum := sha256.Sum256(k.maaCert.Raw)
	k.maaKid = base64.StdEncoding.EncodeToString(sum[:]) // opaque, with + / =, as MAA's are
	k.vaultCerts = map[string]*x509.Certificate{}
	for _, host := range []string{emulatedVaultHost, emulatedHSMHost} {
		if k.vaultCerts[host], err = createCert(leafTemplate(host, now), k.caCert, &k.vaultSigner.PublicKey, caKey); err != nil {
			return fmt.Errorf("%s certificate: %w", host, err)
		}
	}
	idSum := sha256.Sum256(elliptic.MarshalCompressed(elliptic.P256(), k.identityKey.X, k.identityKey.Y))
	k.identityKid = b64url(idSum[:12])
	return nil
}

// leafTemplate is a server certificate for name (a host, or MAA's issuer URL
// as its common name).
func leafTemplate(name string, notBefore time.Time) *x509.Certificate {
	t := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"skr -emulate"}},
		NotBefore:    notBefore,
		NotAfter:     notBefore.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if !strings.Contains(name, "://") {
		t.DNSNames = []string{name}
	}
	return t
}

// emulatedAzure is the emulated MAA, Key Vault, Managed HSM and identity of
// one sidecar started with -emulate.
type emulatedAzure struct {
	keys     *emulatedAzureKeys
	maa      *emulatedMAA
	vault    *emulatedVault
	hsm      *emulatedVault
	identity *emulatedIdentity
	client   *http.Client   // the emulated names in-process, other hosts as the sidecar reaches them
	roots    *x509.CertPool // the sidecar's roots for other hosts (nil = system roots)
	hostData [32]byte       // the emulator's HOST_DATA, which the demo policies ask for
	now      func() time.Time
	log      *slog.Logger
}

// emulatedAzureConfig is what the emulated services take from the sidecar.
type emulatedAzureConfig struct {
	Keys     *emulatedAzureKeys                            // nil = made now, in the background
	Trust    func(context.Context) (*platformCerts, error) // the AMD chain the emulated MAA trusts; nil = none
	HostData [32]byte
	Upstream *http.Client // how other hosts are reached
	Roots    *x509.CertPool
	Log      *slog.Logger
	Keygen   *keygen // makes the keys without getting in the way of answers; nil = at once
}

func newEmulatedAzure(cfg emulatedAzureConfig) *emulatedAzure {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Keys == nil {
		cfg.Keys = newEmulatedAzureKeys(cfg.Keygen, cfg.Log)
	}
	if cfg.Upstream == nil {
		cfg.Upstream = newUpstreamClient(cfg.Roots)
	}
	a := &emulatedAzure{keys: cfg.Keys, roots: cfg.Roots, hostData: cfg.HostData, now: time.Now, log: cfg.Log}
	c := *cfg.Upstream
	c.Transport = &emulatedAzureTransport{azure: a, next: cfg.Upstream.Transport}
	a.client = &c
	a.identity = &emulatedIdentity{azure: a}
	a.maa = newEmulatedMAA(a, cfg.Trust)
	a.vault = newEmulatedVault(a, emulatedVaultHost, false)
	a.hsm = newEmulatedVault(a, emulatedHSMHost, true)
	return a
}

// handlerFor is the emulated service answering for host.
func (a *emulatedAzure) handlerFor(host string) (http.Handler, error) {
	switch hostName(host) {
	case emulatedMAAHost:
		return a.maa, nil
	case emulatedVaultHost:
		return a.vault, nil
	case emulatedHSMHost:
		return a.hsm, nil
	}
	return nil, newError(kindInvalid, nil, "%s is not one of the emulated services (%s)", hostName(host), strings.Join(emulatedNames, ", "))
}

// rootsFor is the pool a release JWS from host must chain to: the run's CA
// for the emulated vaults, and only for them; the sidecar's roots for any
// other host. A CA not yet made verifies nothing.
func (a *emulatedAzure) rootsFor(host string) *x509.CertPool {
	if !isEmulatedName(host) {
		return a.roots
	}
	if !a.keys.succeeded() {
		return x509.NewCertPool()
	}
	return a.keys.caPool
}

// emulatedAzureTransport hands requests for the emulated names to their
// handlers in memory, with no socket, and everything else to next.
type emulatedAzureTransport struct {
	azure *emulatedAzure
	next  http.RoundTripper
}

func (t *emulatedAzureTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !isEmulatedName(req.URL.Hostname()) {
		next := t.next
		if next == nil {
			next = http.DefaultTransport
		}
		return next.RoundTrip(req)
	}
	if req.Body != nil {
		defer req.Body.Close()
	}
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("%s: the emulated services are reached with https URLs only", req.URL.Redacted())
	}
	if req.URL.Port() != "" {
		return nil, fmt.Errorf("%s: the emulated services have no port", req.URL.Redacted())
	}
	h, err := t.azure.handlerFor(req.URL.Hostname())
	if err != nil {
		return nil, err
	}
	return serveInMemory(h, req)
}

// maxInMemoryResponse bounds what an emulated service may answer in memory.
const maxInMemoryResponse = maxUpstreamBody

// serveInMemory runs h on req and returns its answer as a client sees it.
func serveInMemory(h http.Handler, req *http.Request) (*http.Response, error) {
	in := req.Clone(req.Context())
	in.Host = req.URL.Host
	in.RequestURI = req.URL.RequestURI()
	in.RemoteAddr = "in-process"
	in.TLS = nil
	if in.Body == nil {
		in.Body = http.NoBody
	}
	w := &memoryResponseWriter{header: http.Header{}}
	h.ServeHTTP(w, in)
	if w.overflow {
		return nil, fmt.Errorf("%s: the emulated service answered more than %d bytes", req.URL.Redacted(), maxInMemoryResponse)
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return &http.Response{
		Status:        strconv.Itoa(w.status) + " " + http.StatusText(w.status),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		Body:          io.NopCloser(bytes.NewReader(w.body.Bytes())),
		ContentLength: int64(w.body.Len()),
		Request:       req,
	}, nil
}

// memoryResponseWriter collects an in-memory handler's answer.
type memoryResponseWriter struct {
	header   http.Header
	status   int
	body     bytes.Buffer
	overflow bool
}

func (w *memoryResponseWriter) Header() http.Header { return w.header }

func (w *memoryResponseWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *memoryResponseWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.body.Len()+len(b) > maxInMemoryResponse {
		w.overflow = true
		return 0, errors.New("response too large")
	}
	return w.body.Write(b)
}

// ---- the sidecar's side ----

// startEmulatedAzure sets up the emulated services when the sidecar runs
// with -emulate, and makes the upstream client reach them in memory.
func (s *server) startEmulatedAzure(keys *emulatedAzureKeys, roots *x509.CertPool) {
	if !s.cfg.Emulate {
		return
	}
	var trust func(context.Context) (*platformCerts, error)
	if src, ok := s.tee.(platformCertSource); ok {
		trust = src.PlatformCerts
	}
	s.azure = newEmulatedAzure(emulatedAzureConfig{Keys: keys, Trust: trust, HostData: s.emulatedHostData(), Upstream: s.client, Roots: roots, Log: s.log, Keygen: s.keygen})
	s.client = s.azure.client
}

// emulatedHostData is the HOST_DATA the emulated evidence carries: the
// emulator's, else the security policy's digest, else zero.
func (s *server) emulatedHostData() [32]byte {
	if e, ok := s.tee.(*emulator); ok {
		return e.hostData
	}
	if d, ok := s.inputs.PolicyDigest(); ok {
		return d
	}
	return [32]byte{}
}

// refuseUnservedNames refuses an endpoint under the reserved domain that
// this sidecar does not serve: any of them without -emulate, unknown ones,
// and reserved names with a port.
func (s *server) refuseUnservedNames(hosts ...string) error {
	for _, h := range hosts {
		if !isEmulatedName(h) {
			continue
		}
		if s.azure == nil {
			return errNotEmulating(h)
		}
		if _, port, err := net.SplitHostPort(h); err == nil && port != "" {
			return newError(kindInvalid, nil, "%s: the emulated services have no port: write %s", h, hostName(h))
		}
		if _, err := s.azure.handlerFor(h); err != nil {
			return err
		}
	}
	return nil
}

// releaseRoots is what a release JWS from vaultHost must chain to.
func (s *server) releaseRoots(vaultHost string) *x509.CertPool {
	if s.azure != nil {
		return s.azure.rootsFor(vaultHost)
	}
	return s.upstreamRoots()
}

// routeEmulatedAzure serves requests whose Host is a reserved name (as
// skr importkey sends them) from the emulated services, and refuses them
// when not emulating; every other request goes to next.
func (s *server) routeEmulatedAzure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isEmulatedName(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		if s.azure == nil {
			s.logRequests(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { writeError(w, errNotEmulating(r.Host)) })).ServeHTTP(w, r)
			return
		}
		h, err := s.azure.handlerFor(r.Host)
		if err != nil {
			writeError(w, err)
			return
		}
		if c := correlationFrom(r.Context()); c != nil {
			c.route = hostName(r.Host) // one of the three reserved names
		}
		// The reserved names are loopback names; a browser's request to
		// them still carries an Origin.
		s.logRequests(refuseOrigin(h)).ServeHTTP(w, r)
	})
}

// servesEmulatedVault reports whether host is an emulated vault this
// sidecar serves (only with -emulate).
func (s *server) servesEmulatedVault(host string) bool {
	return s.azure != nil && isEmulatedVaultName(host)
}

// emulatedIdentitySource is the identity the sidecar gets its bearer
// tokens from for the emulated vaults.
func (s *server) emulatedIdentitySource(vaultHost string) (identitySource, bool) {
	if !s.servesEmulatedVault(vaultHost) {
		return identitySource{}, false
	}
	return s.azure.identity.source(), true
}

// emulatedAzureStatus is the /status section naming the emulated services.
func (s *server) emulatedAzureStatus() map[string]any {
	if s.azure == nil {
		return nil
	}
	return map[string]any{
		"maa":         emulatedMAAHost,
		"key_vault":   emulatedVaultHost,
		"managed_hsm": emulatedHSMHost,
		"demo_keys":   demoKeyNames,
		"host_data":   fmt.Sprintf("%x", s.azure.hostData),
		"warning":     "EMULATED AZURE: these services run inside this sidecar with keys made for this run; nothing real trusts them",
	}
}

// logEmulatedAzure says at start which names are served in-process.
func (s *server) logEmulatedAzure() {
	if s.azure == nil {
		return
	}
	s.log.Warn("EMULATED AZURE: MAA, Key Vault and Managed HSM are served inside this sidecar; nothing real trusts them",
		"maa", emulatedMAAHost, "key_vault", emulatedVaultHost, "managed_hsm", emulatedHSMHost,
		"demo_keys", strings.Join(demoKeyNames, ","), "host_data", fmt.Sprintf("%x", s.azure.hostData))
}
