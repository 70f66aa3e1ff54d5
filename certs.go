package main

// AMD platform certificates: the THIM JSON, TCB matching, fetching fresh
// certificates from AMD KDS / Azure cert cache / local THIM, and checking
// a report against the chain that will be handed out.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha512"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// platformCerts is a VCEK with its ASK and ARK.
type platformCerts struct {
	VCEK     *x509.Certificate
	ASK      *x509.Certificate
	ARK      *x509.Certificate
	ChainPEM []byte // PEM of VCEK, ASK, ARK in that order: what /attest/combined and MAA get
	TCB      uint64 // the TCB the VCEK certifies (from tcbm or its extensions)
}

const (
	// maxTHIMSize bounds a THIM JSON document; real ones are about 7 KiB.
	maxTHIMSize = 64 << 10
	// maxPEMCerts bounds how many certificates one PEM text may carry.
	maxPEMCerts = 4
)

// thimDocument is the THIM JSON (azure-protocols.md §5.2).
type thimDocument struct {
	VCEKCert         string `json:"vcekCert"`
	CertificateChain string `json:"certificateChain"`
	TCBM             string `json:"tcbm"`
	CacheControl     string `json:"cacheControl"`
}

// parseTHIM parses the THIM JSON {vcekCert, certificateChain, tcbm, ...}.
func parseTHIM(b []byte) (*platformCerts, error) {
	if len(b) > maxTHIMSize {
		return nil, fmt.Errorf("THIM JSON: %d bytes is more than the %d allowed", len(b), maxTHIMSize)
	}
	var doc thimDocument
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("THIM JSON: not the expected object: %w", err)
	}
	if dec.More() {
		return nil, errors.New("THIM JSON: data after the object")
	}
	for _, f := range []struct{ name, value string }{
		{"vcekCert", doc.VCEKCert}, {"certificateChain", doc.CertificateChain}, {"tcbm", doc.TCBM},
	} {
		if strings.TrimSpace(f.value) == "" {
			return nil, fmt.Errorf("THIM JSON: missing field %q", f.name)
		}
	}
	tcbm, err := parseTCBM(doc.TCBM)
	if err != nil {
		return nil, fmt.Errorf("THIM JSON: %w", err)
	}
	vceks, err := parsePEMCertificates([]byte(doc.VCEKCert))
	if err != nil {
		return nil, fmt.Errorf("THIM JSON vcekCert: %w", err)
	}
	if len(vceks) != 1 {
		return nil, fmt.Errorf("THIM JSON vcekCert: holds %d certificates, want exactly one VCEK", len(vceks))
	}
	chain, err := parsePEMCertificates([]byte(doc.CertificateChain))
	if err != nil {
		return nil, fmt.Errorf("THIM JSON certificateChain: %w", err)
	}
	if len(chain) != 2 {
		return nil, fmt.Errorf("THIM JSON certificateChain: holds %d certificates, want ASK then ARK", len(chain))
	}
	ask, ark, err := identifyASKARK(chain)
	if err != nil {
		return nil, fmt.Errorf("THIM JSON certificateChain: %w", err)
	}
	info, err := parseVCEKExtensions(vceks[0])
	if err != nil {
		return nil, fmt.Errorf("THIM JSON vcekCert: %w", err)
	}
	if info.TCB != tcbm {
		return nil, fmt.Errorf("THIM JSON: tcbm %s disagrees with the TCB its VCEK certifies, %s",
			formatTCB(info.Product, tcbm), formatTCB(info.Product, info.TCB))
	}
	return assemblePlatformCerts(vceks[0], ask, ark, tcbm), nil
}

// parseTCBM reads the 16 hex digits of a THIM tcbm, in either case.
func parseTCBM(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if len(s) != 16 {
		return 0, fmt.Errorf("tcbm %q is not 16 hex digits", truncate(s, 40))
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("tcbm %q is not 16 hex digits", s)
	}
	return v, nil
}

// parsePEMCertificates reads CERTIFICATE blocks separated only by white
// space: other block types or stray text are refused, not skipped.
func parsePEMCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(b)
	for len(rest) > 0 {
		if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
			return nil, fmt.Errorf("unexpected text %q where a PEM certificate should start", truncate(string(rest), 20))
		}
		block, next := pem.Decode(rest)
		if block == nil {
			return nil, errors.New("malformed PEM block")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block of type %q, want CERTIFICATE", block.Type)
		}
		if len(certs) == maxPEMCerts {
			return nil, fmt.Errorf("more than %d certificates", maxPEMCerts)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
		rest = bytes.TrimSpace(next)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// identifyASKARK picks the ASK and the ARK out of two certificates: by
// their common names (SEV-{Product}, ARK-{Product}), else by who signs
// whom (the ARK signs itself and the ASK).
func identifyASKARK(certs []*x509.Certificate) (ask, ark *x509.Certificate, err error) {
	if len(certs) != 2 {
		return nil, nil, fmt.Errorf("%d certificates, want ASK and ARK", len(certs))
	}
	a, b := certs[0], certs[1]
	switch {
	case isASKName(a) && isARKName(b):
		return a, b, nil
	case isARKName(a) && isASKName(b):
		return b, a, nil
	case isSelfSigned(b) && a.CheckSignatureFrom(b) == nil:
		return a, b, nil
	case isSelfSigned(a) && b.CheckSignatureFrom(a) == nil:
		return b, a, nil
	}
	return nil, nil, fmt.Errorf("cannot tell ASK from ARK in %q and %q: neither named SEV-/ARK-{Product} nor one self-signed root signing the other",
		a.Subject.CommonName, b.Subject.CommonName)
}

func isARKName(c *x509.Certificate) bool {
	_, ok := parseProductLine(strings.TrimPrefix(c.Subject.CommonName, "ARK-"))
	return ok && strings.HasPrefix(c.Subject.CommonName, "ARK-")
}

func isASKName(c *x509.Certificate) bool {
	cn := c.Subject.CommonName
	_, ok := parseProductLine(strings.TrimPrefix(cn, "SEV-"))
	return ok && strings.HasPrefix(cn, "SEV-") && !strings.HasPrefix(cn, "SEV-VLEK")
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// assemblePlatformCerts re-encodes the three certificates as PEM, so the
// chain handed out holds exactly what was checked and nothing else.
func assemblePlatformCerts(vcek, ask, ark *x509.Certificate, tcb uint64) *platformCerts {
	var chain bytes.Buffer
	for _, c := range []*x509.Certificate{vcek, ask, ark} {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return &platformCerts{VCEK: vcek, ASK: ask, ARK: ark, ChainPEM: chain.Bytes(), TCB: tcb}
}

// verifyEvidence checks the report's signature with certs.VCEK and that the
// VCEK chains to certs.ASK and certs.ARK.
func verifyEvidence(rep *snpReport, certs *platformCerts) error {
	if rep == nil {
		return errors.New("no report")
	}
	if len(rep.Raw) != reportSize {
		return fmt.Errorf("report has %d raw bytes, want %d", len(rep.Raw), reportSize)
	}
	if err := verifyChainOnce(certs); err != nil {
		return err
	}
	info, err := parseVCEKExtensions(certs.VCEK)
	if err != nil {
		return fmt.Errorf("VCEK: %w", err)
	}
	if k := rep.SigningKey(); k != 0 {
		return fmt.Errorf("the report is signed by %s, not by a VCEK", signingKeyName(k))
	}
	if rep.SignatureAlgo != 1 {
		return fmt.Errorf("report SIGNATURE_ALGO is %d, want 1 (ECDSA P-384 with SHA-384)", rep.SignatureAlgo)
	}
	pub, ok := certs.VCEK.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P384() {
		return fmt.Errorf("VCEK key is %T, want an ECDSA P-384 key", certs.VCEK.PublicKey)
	}
	digest := sha512.Sum384(rep.Raw[:signedPartSize])
	r, s := littleEndianInt(rep.SignatureR[:]), littleEndianInt(rep.SignatureS[:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return fmt.Errorf("the report's signature does not verify with the VCEK (%s, TCB %s)",
			info.ProductName, formatTCB(info.Product, info.TCB))
	}
	if info.TCB != rep.ReportedTCB || certs.TCB != rep.ReportedTCB {
		return fmt.Errorf("the VCEK certifies TCB %s (handed out as %016x) but the report's REPORTED_TCB is %s",
			formatTCB(info.Product, info.TCB), certs.TCB, formatTCB(info.Product, rep.ReportedTCB))
	}
	if info.HWID != nil && !chipIDMasked(rep.ChipID) && !hwidMatchesChip(info.HWID, rep.ChipID) {
		return fmt.Errorf("the VCEK is for hardware id %x, not for the report's CHIP_ID %x", info.HWID, rep.ChipID)
	}
	return nil
}

// verifiedChains remembers the chains whose signatures verified. The check
// depends only on the certificates' bytes, and it is most of the cost of
// checking evidence on every /attest/combined and release, where the same
// chain comes back each time.
var verifiedChains = struct {
	sync.Mutex
	m map[[sha512.Size384]byte]bool
}{m: map[[sha512.Size384]byte]bool{}}

// maxVerifiedChains bounds the memory: a host has one chain per TCB.
const maxVerifiedChains = 64

// verifyChainOnce is verifyChain, done once per distinct chain.
func verifyChainOnce(pc *platformCerts) error {
	if pc == nil || pc.VCEK == nil || pc.ASK == nil || pc.ARK == nil {
		return verifyChain(pc)
	}
	h := sha512.New384()
	for _, c := range []*x509.Certificate{pc.VCEK, pc.ASK, pc.ARK} {
		// Length-prefixed, so that no two chains share a key.
		h.Write([]byte(strconv.Itoa(len(c.Raw)) + ":"))
		h.Write(c.Raw)
	}
	var key [sha512.Size384]byte
	h.Sum(key[:0])
	verifiedChains.Lock()
	ok := verifiedChains.m[key]
	verifiedChains.Unlock()
	if ok {
		return nil
	}
	if err := verifyChain(pc); err != nil {
		return err
	}
	verifiedChains.Lock()
	if len(verifiedChains.m) >= maxVerifiedChains {
		clear(verifiedChains.m)
	}
	verifiedChains.m[key] = true
	verifiedChains.Unlock()
	return nil
}

// verifyChain checks VCEK ← ASK ← ARK (self-signed), all RSASSA-PSS with
// SHA-384 as AMD signs them. Validity periods are left to the verifier
// the evidence goes to (MAA), which judges them at its own time.
func verifyChain(pc *platformCerts) error {
	if pc == nil || pc.VCEK == nil || pc.ASK == nil || pc.ARK == nil {
		return errors.New("the platform certificates are incomplete: want VCEK, ASK and ARK")
	}
	for _, link := range []struct {
		child, parent *x509.Certificate
		what          string
	}{
		{pc.ARK, pc.ARK, "ARK is not self-signed"},
		{pc.ASK, pc.ARK, "ASK is not signed by the ARK"},
		{pc.VCEK, pc.ASK, "VCEK is not signed by the ASK"},
	} {
		if link.child.SignatureAlgorithm != x509.SHA384WithRSAPSS {
			return fmt.Errorf("%s (%q) is signed with %v, want RSASSA-PSS with SHA-384",
				roleOf(link.child, pc), link.child.Subject.CommonName, link.child.SignatureAlgorithm)
		}
		if err := link.child.CheckSignatureFrom(link.parent); err != nil {
			return fmt.Errorf("%s (%q ← %q): %w", link.what, link.child.Subject.CommonName, link.parent.Subject.CommonName, err)
		}
	}
	return nil
}

func roleOf(c *x509.Certificate, pc *platformCerts) string {
	switch c {
	case pc.ARK:
		return "ARK"
	case pc.ASK:
		return "ASK"
	}
	return "VCEK"
}

func signingKeyName(k uint32) string {
	switch k {
	case 0:
		return "the VCEK"
	case 1:
		return "a VLEK (SIGNING_KEY=1; not supported)"
	case 7:
		return "no key (SIGNING_KEY=7)"
	}
	return fmt.Sprintf("an unknown key (SIGNING_KEY=%d)", k)
}

func littleEndianInt(le []byte) *big.Int {
	be := make([]byte, len(le))
	for i, b := range le {
		be[len(le)-1-i] = b
	}
	return new(big.Int).SetBytes(be)
}

// Bounds of the certificate provider.
const (
	certCacheEntries  = 16
	certFetchTimeout  = 30 * time.Second
	maxCertSourceBody = 256 << 10
)

// certKey names one set of fetched certificates.
type certKey struct {
	chipID [64]byte
	tcb    uint64
}

// certFetch is one fetch in flight, shared by every request that needs it.
type certFetch struct {
	done  chan struct{}
	certs *platformCerts
	err   error
}

// certProvider hands out the certificates matching a report's TCB.
type certProvider struct {
	src     *certSource
	srcErr  error
	kdsBase string // where ASK and ARK come from when the Azure cache leaves them out
	client  *http.Client
	log     *slog.Logger
	retry   retryPolicy
	timeout time.Duration // bound of one shared fetch

	local        func(context.Context) (*platformCerts, error)
	localMu      sync.Mutex
	localRunning chan struct{} // closed when the call in progress returns
	localDone    bool
	localCerts   *platformCerts // nil when there are none or they are unusable
	localInfo    *vcekInfo

	mu       sync.Mutex
	cache    map[certKey]*platformCerts
	order    []certKey // insertion order, for eviction
	inflight map[certKey]*certFetch
	chains   map[snpProduct][2]*x509.Certificate // KDS cert_chain: ASK, ARK
}

// newCertProvider: local, when not nil, returns the certificates handed to
// the container (THIM JSON of the security context, or the emulator's).
func newCertProvider(cfg certCacheConfig, local func(context.Context) (*platformCerts, error), client *http.Client, log *slog.Logger) *certProvider {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if client == nil {
		client = newUpstreamClient(nil)
	}
	p := &certProvider{
		kdsBase:  "https://" + defaultKDSHost,
		client:   client,
		log:      log,
		retry:    defaultRetry,
		timeout:  certFetchTimeout,
		local:    local,
		cache:    map[certKey]*platformCerts{},
		inflight: map[certKey]*certFetch{},
		chains:   map[snpProduct][2]*x509.Certificate{},
	}
	p.src, p.srcErr = newCertSource(cfg)
	if p.srcErr != nil {
		log.Warn("certcache configuration is unusable: certificates that do not match a report cannot be fetched", "err", p.srcErr)
	} else if p.src.Kind == sourceAMD {
		p.kdsBase = p.src.Base
	}
	return p
}

// forReport returns certificates whose TCB equals rep.ReportedTCB, fetching
// (with retries, cached) when the local ones do not match.
func (p *certProvider) forReport(ctx context.Context, rep *snpReport) (*platformCerts, error) {
	if rep == nil {
		return nil, errors.New("no report")
	}
	local, info, err := p.localCertificates(ctx)
	if err != nil {
		return nil, fmt.Errorf("platform certificates of the container: %w", err)
	}
	product := p.reportProduct(rep, info)
	if local != nil {
		why := mismatch(local, info, rep)
		if why == "" {
			return local, nil
		}
		p.log.Info("platform certificates of the container do not match the report; fetching fresh ones", "reason", why)
	}
	return p.fetchShared(ctx, certKey{chipID: rep.ChipID, tcb: rep.ReportedTCB}, product)
}

// mismatch says why local certificates do not fit the report, or "".
func mismatch(pc *platformCerts, info *vcekInfo, rep *snpReport) string {
	if pc.TCB != rep.ReportedTCB {
		return fmt.Sprintf("they certify TCB %s, the report's REPORTED_TCB is %s",
			formatTCB(info.Product, pc.TCB), formatTCB(info.Product, rep.ReportedTCB))
	}
	if info.HWID != nil && !chipIDMasked(rep.ChipID) && !hwidMatchesChip(info.HWID, rep.ChipID) {
		return "their VCEK is for another chip than the report's CHIP_ID"
	}
	return ""
}

// reportProduct is the product line of the chip that signed rep: from the
// CPUID fields of a v3+ report, else the local VCEK's productName, else
// certcache.tee_type, else Milan.
func (p *certProvider) reportProduct(rep *snpReport, local *vcekInfo) snpProduct {
	if rep.Version >= 3 {
		if prod, ok := productFromCPUID(rep.CPUIDFamily, rep.CPUIDModel); ok {
			return prod
		}
	}
	if local != nil {
		return local.Product
	}
	if p.src != nil && p.src.Product != "" {
		return p.src.Product
	}
	return productMilan
}

// localCertificates calls the local source once and remembers the answer;
// a context error is not remembered, so a later request tries again.
func (p *certProvider) localCertificates(ctx context.Context) (*platformCerts, *vcekInfo, error) {
	for {
		p.localMu.Lock()
		if p.local == nil || p.localDone {
			pc, info := p.localCerts, p.localInfo
			p.localMu.Unlock()
			return pc, info, nil
		}
		if wait := p.localRunning; wait != nil {
			p.localMu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, nil, ctx.Err()
			}
		}
		running := make(chan struct{})
		p.localRunning = running
		p.localMu.Unlock()

		pc, info, err := loadLocalCerts(ctx, p.local)

		p.localMu.Lock()
		p.localRunning = nil
		close(running)
		ctxErr := errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
		if !ctxErr {
			p.localDone, p.localCerts, p.localInfo = true, pc, info
		}
		p.localMu.Unlock()
		switch {
		case ctxErr && ctx.Err() != nil:
			return nil, nil, err
		case ctxErr:
			p.log.Warn("platform certificates of the container timed out; fetching fresh ones this time", "err", err)
		case err != nil:
			p.log.Warn("platform certificates of the container are unusable; fresh ones will be fetched for each report", "err", err)
		}
		return pc, info, nil
	}
}

func loadLocalCerts(ctx context.Context, local func(context.Context) (*platformCerts, error)) (*platformCerts, *vcekInfo, error) {
	pc, err := local(ctx)
	if err != nil {
		return nil, nil, err
	}
	if pc == nil || pc.VCEK == nil {
		return nil, nil, errors.New("no VCEK")
	}
	info, err := parseVCEKExtensions(pc.VCEK)
	if err != nil {
		return nil, nil, fmt.Errorf("VCEK: %w", err)
	}
	return pc, info, nil
}

// fetchShared returns cached certificates for key, or joins (or starts) the
// one fetch for it. The fetch runs on its own bounded context so that one
// impatient caller does not fail the others waiting on it.
func (p *certProvider) fetchShared(ctx context.Context, key certKey, product snpProduct) (*platformCerts, error) {
	if p.srcErr != nil {
		return nil, newAPIError(http.StatusInternalServerError, p.srcErr, "fresh AMD certificates are needed for TCB %s but certcache is misconfigured", formatTCB(product, key.tcb))
	}
	p.mu.Lock()
	if pc, ok := p.cache[key]; ok {
		p.mu.Unlock()
		p.log.Debug("platform certificates from the cache", "tcb", fmt.Sprintf("%016x", key.tcb))
		return pc, nil
	}
	f, ok := p.inflight[key]
	if !ok {
		f = &certFetch{done: make(chan struct{})}
		p.inflight[key] = f
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.timeout)
		go func() {
			defer cancel()
			certs, err := p.fetch(fctx, key, product)
			p.mu.Lock()
			delete(p.inflight, key)
			if err == nil {
				p.remember(key, certs)
			}
			f.certs, f.err = certs, err
			p.mu.Unlock()
			close(f.done)
		}()
	}
	p.mu.Unlock()
	select {
	case <-f.done:
		return f.certs, f.err
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for AMD certificates from %s: %w", p.src.Service(), ctx.Err())
	}
}

// remember caches pc, evicting the oldest entry when full. p.mu is held.
func (p *certProvider) remember(key certKey, pc *platformCerts) {
	if _, ok := p.cache[key]; !ok {
		if len(p.order) >= certCacheEntries {
			delete(p.cache, p.order[0])
			p.order = p.order[1:]
		}
		p.order = append(p.order, key)
	}
	p.cache[key] = pc
}

// fetch gets certificates for key from the configured source and checks
// that they are the ones the report needs.
func (p *certProvider) fetch(ctx context.Context, key certKey, product snpProduct) (*platformCerts, error) {
	start := time.Now()
	var pc *platformCerts
	var err error
	switch p.src.Kind {
	case sourceAMD:
		pc, err = p.fetchKDS(ctx, key, product)
	case sourceAzCache:
		pc, err = p.fetchAzCache(ctx, key, product)
	default:
		pc, err = p.fetchTHIM(ctx)
	}
	if err != nil {
		return nil, err
	}
	info, err := parseVCEKExtensions(pc.VCEK)
	if err != nil {
		return nil, p.garbage(err, "its VCEK")
	}
	if pc.TCB != key.tcb {
		return nil, newAPIError(http.StatusBadGateway, nil,
			"the certificates from %s certify TCB %s but the report's REPORTED_TCB is %s: the certificate source does not (yet) have the VCEK for this TCB",
			p.src.Service(), formatTCB(info.Product, pc.TCB), formatTCB(info.Product, key.tcb))
	}
	if info.HWID != nil && !chipIDMasked(key.chipID) && !hwidMatchesChip(info.HWID, key.chipID) {
		return nil, newAPIError(http.StatusBadGateway, nil, "the VCEK from %s is for hardware id %x, not for the report's CHIP_ID", p.src.Service(), info.HWID)
	}
	if err := verifyChain(pc); err != nil {
		return nil, p.garbage(err, "its chain")
	}
	p.log.Info("fetched platform certificates", "source", p.src.Service(), "tcb", formatTCB(info.Product, pc.TCB), "duration", time.Since(start).Round(time.Millisecond))
	return pc, nil
}

// fetchKDS gets the VCEK (DER) for the chip and TCB, and the product's
// cert_chain (PEM ASK, ARK).
func (p *certProvider) fetchKDS(ctx context.Context, key certKey, product snpProduct) (*platformCerts, error) {
	if chipIDMasked(key.chipID) {
		return nil, newAPIError(http.StatusBadGateway, nil, "the report's CHIP_ID is masked, so AMD KDS cannot be asked for its VCEK: use certcache endpoint_type LocalTHIM or AzCache")
	}
	body, err := p.get(ctx, "AMD KDS", kdsVCEKURL(p.kdsBase, product, key.chipID, key.tcb), nil)
	if err != nil {
		return nil, err
	}
	vcek, err := x509.ParseCertificate(body)
	if err != nil {
		return nil, p.garbage(err, "the VCEK (want one DER certificate)")
	}
	info, err := parseVCEKExtensions(vcek)
	if err != nil {
		return nil, p.garbage(err, "the VCEK")
	}
	if info.Product != product {
		return nil, p.garbage(fmt.Errorf("VCEK is for %s, asked for %s", info.ProductName, product), "the VCEK")
	}
	ask, ark, err := p.kdsChain(ctx, product)
	if err != nil {
		return nil, err
	}
	return assemblePlatformCerts(vcek, ask, ark, info.TCB), nil
}

// kdsChain gets (once per product) the ASK and ARK from KDS cert_chain.
func (p *certProvider) kdsChain(ctx context.Context, product snpProduct) (ask, ark *x509.Certificate, err error) {
	p.mu.Lock()
	c, ok := p.chains[product]
	p.mu.Unlock()
	if ok {
		return c[0], c[1], nil
	}
	body, err := p.get(ctx, "AMD KDS", kdsChainURL(p.kdsBase, product), nil)
	if err != nil {
		return nil, nil, err
	}
	certs, err := parsePEMCertificates(body)
	if err == nil {
		ask, ark, err = identifyASKARK(certs)
	}
	if err != nil {
		return nil, nil, newAPIError(http.StatusBadGateway, err, "AMD KDS answered cert_chain for %s with something that is not the PEM ASK and ARK", product)
	}
	p.mu.Lock()
	p.chains[product] = [2]*x509.Certificate{ask, ark}
	p.mu.Unlock()
	return ask, ark, nil
}

// fetchAzCache gets the PEM VCEK (usually with ASK and ARK) from the Azure
// certificate cache; ASK and ARK come from KDS when it leaves them out.
func (p *certProvider) fetchAzCache(ctx context.Context, key certKey, product snpProduct) (*platformCerts, error) {
	if chipIDMasked(key.chipID) {
		return nil, newAPIError(http.StatusBadGateway, nil, "the report's CHIP_ID is masked, so the Azure certificate cache cannot be asked for its VCEK: use certcache endpoint_type LocalTHIM")
	}
	u := azCacheURL(p.src.Base, p.src.TEE, key.chipID, key.tcb, p.src.APIVersion, p.src.ClientID)
	body, err := p.get(ctx, p.src.Service(), u, nil)
	if err != nil {
		return nil, err
	}
	certs, err := parsePEMCertificates(body)
	if err != nil {
		return nil, p.garbage(err, "its PEM")
	}
	var vcek *x509.Certificate
	var rest []*x509.Certificate
	for _, c := range certs {
		if _, isEC := c.PublicKey.(*ecdsa.PublicKey); isEC {
			if vcek != nil {
				return nil, p.garbage(errors.New("more than one VCEK"), "its PEM")
			}
			vcek = c
			continue
		}
		rest = append(rest, c)
	}
	if vcek == nil {
		return nil, p.garbage(errors.New("no VCEK (an ECDSA P-384 certificate)"), "its PEM")
	}
	info, err := parseVCEKExtensions(vcek)
	if err != nil {
		return nil, p.garbage(err, "the VCEK")
	}
	var ask, ark *x509.Certificate
	switch len(rest) {
	case 2:
		if ask, ark, err = identifyASKARK(rest); err != nil {
			return nil, p.garbage(err, "its ASK and ARK")
		}
	case 0:
		p.log.Info("the Azure certificate cache sent the VCEK alone; getting ASK and ARK from AMD KDS", "product", info.Product)
		if ask, ark, err = p.kdsChain(ctx, info.Product); err != nil {
			return nil, fmt.Errorf("the Azure certificate cache sent no ASK and ARK, and AMD KDS cert_chain failed: %w", err)
		}
	default:
		return nil, p.garbage(fmt.Errorf("%d certificates beside the VCEK", len(rest)), "its PEM (want VCEK, ASK, ARK)")
	}
	return assemblePlatformCerts(vcek, ask, ark, info.TCB), nil
}

// fetchTHIM gets the host's current certificates from the THIM endpoint.
func (p *certProvider) fetchTHIM(ctx context.Context) (*platformCerts, error) {
	body, err := p.get(ctx, p.src.Service(), p.src.Base, http.Header{"Metadata": {"true"}})
	if err != nil {
		return nil, err
	}
	pc, err := parseTHIM(body)
	if err != nil {
		return nil, p.garbage(err, "its THIM JSON")
	}
	return pc, nil
}

// get does one GET through the retry loop. Failures are 502 (the source
// answered with an error), timeouts stay timeouts (504).
func (p *certProvider) get(ctx context.Context, service, url string, header http.Header) ([]byte, error) {
	p.log.Debug("fetching AMD certificates", "service", service, "url", url)
	body, _, err := doWithRetry(ctx, p.client, service, p.retry, p.log, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		for k, v := range header {
			req.Header[k] = v
		}
		return req, nil
	})
	if err != nil {
		if isTimeout(err) {
			return nil, fmt.Errorf("get AMD certificates from %s: %w", url, err)
		}
		return nil, newAPIError(http.StatusBadGateway, err, "get AMD certificates from %s", url)
	}
	if len(body) > maxCertSourceBody {
		return nil, newAPIError(http.StatusBadGateway, nil, "%s answered %d bytes, more than the %d a certificate answer may have", service, len(body), maxCertSourceBody)
	}
	return body, nil
}

// garbage reports an answer that is not what the source should send.
func (p *certProvider) garbage(err error, what string) error {
	return newAPIError(http.StatusBadGateway, err, "%s answered with unusable certificates: %s", p.src.Service(), what)
}
