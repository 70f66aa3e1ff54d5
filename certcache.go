package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Bounds of the certificate provider.
const (
	certCacheEntries  = 16
	certFetchTimeout  = 30 * time.Second
	maxCertSourceBody = 256 << 10
)

// localCerts are the certificates handed to the container; nil when there
// are none or they are unusable.
type localCerts struct {
	pc   *platformCerts
	info *vcekInfo
}

// mismatchedTCBWarning is logged at start and shown in /status.
const mismatchedTCBWarning = "TESTING ONLY (-allowTestingMismatchedTCB): the container's platform certificates are treated as matching no report, " +
	"so fresh ones are fetched for every report; never use this in production"

// certKey names one set of fetched certificates.
type certKey struct {
	chipID [64]byte
	tcb    uint64
}

// certProvider hands out the certificates matching a report's TCB.
type certProvider struct {
	src     *certSource
	srcErr  error
	kdsBase string // where ASK and ARK come from when the Azure cache leaves them out
	client  *http.Client
	log     *slog.Logger
	retry   retryPolicy

	local     func(context.Context) (*platformCerts, error)
	localCall flight[struct{}, localCerts] // lives while a request waits for it
	localMu   sync.Mutex
	localDone bool
	localKept localCerts
	// neverMatchLocal is -allowTestingMismatchedTCB: the local certificates
	// are taken as not matching any report, so the fetch path runs.
	neverMatchLocal bool
	// onFetch, when set, counts each fetch from the source and its outcome.
	onFetch func(source string, err error)

	fetches flight[certKey, *platformCerts]

	mu     sync.Mutex
	cache  map[certKey]*platformCerts
	order  []certKey                           // insertion order, for eviction
	chains map[snpProduct][2]*x509.Certificate // KDS cert_chain: ASK, ARK
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
		kdsBase:   "https://" + defaultKDSHost,
		client:    client,
		log:       log,
		retry:     defaultRetry,
		fetches:   flight[certKey, *platformCerts]{timeout: certFetchTimeout},
		local:     local,
		localCall: flight[struct{}, localCerts]{endAbandoned: true},
		cache:     map[certKey]*platformCerts{},
		chains:    map[snpProduct][2]*x509.Certificate{},
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
		if why == "" && p.neverMatchLocal {
			why = "-allowTestingMismatchedTCB makes them never match"
		}
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

// localCertificates calls the local source once and remembers the answer.
// The call ends when every request waiting for it gives up, and a context
// error is not remembered: a later request tries again.
func (p *certProvider) localCertificates(ctx context.Context) (*platformCerts, *vcekInfo, error) {
	if p.local == nil {
		return nil, nil, nil
	}
	known := func() (localCerts, bool) {
		p.localMu.Lock()
		defer p.localMu.Unlock()
		return p.localKept, p.localDone
	}
	lc, err := p.localCall.do(ctx, struct{}{}, known, p.loadLocal)
	if err != nil && ctx.Err() != nil {
		return nil, nil, err
	}
	return lc.pc, lc.info, nil
}

// loadLocal calls the local source and remembers its answer, unless that
// is a context error.
func (p *certProvider) loadLocal(ctx context.Context) (localCerts, error) {
	pc, info, err := loadLocalCerts(ctx, p.local)
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		if ctx.Err() == nil {
			p.log.Warn("platform certificates of the container timed out; fetching fresh ones this time", "err", err)
		}
		return localCerts{}, err
	case err != nil:
		p.log.Warn("platform certificates of the container are unusable; fresh ones will be fetched for each report", "err", err)
	}
	lc := localCerts{pc, info}
	p.localMu.Lock()
	p.localDone, p.localKept = true, lc
	p.localMu.Unlock()
	return lc, nil
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
// one fetch for it, which fills the cache.
func (p *certProvider) fetchShared(ctx context.Context, key certKey, product snpProduct) (*platformCerts, error) {
	if p.srcErr != nil {
		return nil, newError(kindInternal, p.srcErr, "fresh AMD certificates are needed for TCB %s but certcache is misconfigured", formatTCB(product, key.tcb))
	}
	cached := func() (*platformCerts, bool) {
		p.mu.Lock()
		defer p.mu.Unlock()
		pc, ok := p.cache[key]
		if ok {
			p.log.Debug("platform certificates from the cache", "tcb", fmt.Sprintf("%016x", key.tcb))
		}
		return pc, ok
	}
	fetch := func(ctx context.Context) (*platformCerts, error) {
		pc, err := p.fetch(ctx, key, product)
		if err == nil {
			p.mu.Lock()
			p.remember(key, pc)
			p.mu.Unlock()
		}
		return pc, err
	}
	pc, err := p.fetches.do(ctx, key, cached, fetch)
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("wait for AMD certificates from %s: %w", p.src.Service(), err)
	}
	return pc, err
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
func (p *certProvider) fetch(ctx context.Context, key certKey, product snpProduct) (pc *platformCerts, err error) {
	if p.onFetch != nil {
		defer func() { p.onFetch(p.src.Service(), err) }()
	}
	start := time.Now()
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
		return nil, newError(kindUpstream, nil,
			"the certificates from %s certify TCB %s but the report's REPORTED_TCB is %s: the certificate source does not (yet) have the VCEK for this TCB",
			p.src.Service(), formatTCB(info.Product, pc.TCB), formatTCB(info.Product, key.tcb))
	}
	if info.HWID != nil && !chipIDMasked(key.chipID) && !hwidMatchesChip(info.HWID, key.chipID) {
		return nil, newError(kindUpstream, nil, "the VCEK from %s is for hardware id %x, not for the report's CHIP_ID", p.src.Service(), info.HWID)
	}
	if err := verifyChain(pc); err != nil {
		return nil, p.garbage(err, "its chain")
	}
	p.log.Info("fetched platform certificates", "source", p.src.Service(), "tcb", formatTCB(info.Product, pc.TCB), "duration", time.Since(start).Round(time.Millisecond))
	return pc, nil
}
