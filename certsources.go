package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Where platform certificates come from: THIM on the host, the Azure cache
// (AzCache) or AMD's KDS, as certcache.endpoint_type says.

// thimDocument is the JSON that THIM (the host's certificate service at
// the link-local metadata address) and AzCache answer with: the VCEK and
// its chain as PEM, and the TCB the VCEK certifies as 16 hex digits.
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

// fetchKDS gets the VCEK (DER) for the chip and TCB, and the product's
// cert_chain (PEM ASK, ARK).
func (p *certProvider) fetchKDS(ctx context.Context, key certKey, product snpProduct) (*platformCerts, error) {
	if chipIDMasked(key.chipID) {
		return nil, newError(kindUpstream, nil, "the report's CHIP_ID is masked, so AMD KDS cannot be asked for its VCEK: use certcache endpoint_type LocalTHIM or AzCache")
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
		return nil, nil, newError(kindUpstream, err, "AMD KDS answered cert_chain for %s with something that is not the PEM ASK and ARK", product)
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
		return nil, newError(kindUpstream, nil, "the report's CHIP_ID is masked, so the Azure certificate cache cannot be asked for its VCEK: use certcache endpoint_type LocalTHIM")
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
		return nil, newError(kindUpstream, err, "get AMD certificates from %s", url)
	}
	if len(body) > maxCertSourceBody {
		return nil, newError(kindUpstream, nil, "%s answered %d bytes, more than the %d a certificate answer may have", service, len(body), maxCertSourceBody)
	}
	return body, nil
}

// garbage reports an answer that is not what the source should send.
func (p *certProvider) garbage(err error, what string) error {
	return newError(kindUpstream, err, "%s answered with unusable certificates: %s", p.src.Service(), what)
}

// kdsHWID is the hwid path segment of a KDS VCEK URL: 64 bytes of CHIP_ID
// in hex, only the first 8 for Turin.
func kdsHWID(p snpProduct, chip [64]byte) string {
	if p == productTurin {
		return hex.EncodeToString(chip[:hwidSizeTurin])
	}
	return hex.EncodeToString(chip[:])
}

// kdsVCEKURL is GET {base}/vcek/v1/{product}/{hwid}?[fmcSPL=&]blSPL=&teeSPL=&snpSPL=&ucodeSPL=.
func kdsVCEKURL(base string, p snpProduct, chip [64]byte, tcb uint64) string {
	t := decomposeTCB(p, tcb)
	q := ""
	if p == productTurin {
		q = "fmcSPL=" + strconv.Itoa(int(t.FMC)) + "&"
	}
	q += fmt.Sprintf("blSPL=%d&teeSPL=%d&snpSPL=%d&ucodeSPL=%d", t.BL, t.TEE, t.SNP, t.Ucode)
	return fmt.Sprintf("%s/vcek/v1/%s/%s?%s", base, p, kdsHWID(p, chip), q)
}

// kdsChainURL is GET {base}/vcek/v1/{product}/cert_chain (PEM ASK, ARK).
func kdsChainURL(base string, p snpProduct) string {
	return fmt.Sprintf("%s/vcek/v1/%s/cert_chain", base, p)
}

// azCacheURL is GET {base}/{tee}/certificates/{chip_id_hex}/{tcb_hex}?api-version=...[&clientId=...].
func azCacheURL(base, tee string, chip [64]byte, tcb uint64, apiVersion, clientID string) string {
	u := fmt.Sprintf("%s/%s/certificates/%s/%s?api-version=%s", base, url.PathEscape(tee),
		hex.EncodeToString(chip[:]), strconv.FormatUint(tcb, 16), url.QueryEscape(apiVersion))
	if clientID != "" {
		u += "&clientId=" + url.QueryEscape(clientID)
	}
	return u
}

// The certcache endpoint types SkrSideCarArgs may name, and where each
// fetches from when SkrSideCarArgs gives no endpoint (the same defaults as
// Microsoft's sidecar).
const (
	sourceAMD       = "AMD"
	sourceAzCache   = "AzCache"
	sourceLocalTHIM = "LocalTHIM"

	defaultKDSHost       = "kdsintf.amd.com"
	defaultAzCacheHost   = "global.acccache.azure.net"
	defaultAzCacheTEE    = "SevSnpVM"
	defaultAzCacheAPI    = "2020-10-15-preview"
	defaultAzCacheClient = "ConfidentialACI"
	defaultTHIMEndpoint  = "169.254.169.254/metadata/THIM/amd/certification"
	thimPath             = "/metadata/THIM/amd/certification"
)

// certSource is a validated certcache configuration.
type certSource struct {
	Kind       string     // AMD, AzCache or LocalTHIM
	Base       string     // scheme://host[:port][/path], no trailing slash
	TEE        string     // AzCache path segment
	APIVersion string     // AzCache api-version value
	ClientID   string     // AzCache clientId value
	Product    snpProduct // tee_type when it names a product line
}

// Service is the name used in errors and logs.
func (s *certSource) Service() string {
	switch s.Kind {
	case sourceAMD:
		return "AMD KDS"
	case sourceAzCache:
		return "Azure certificate cache"
	}
	return "local THIM"
}

// newCertSource validates the certcache block; empty means LocalTHIM.
func newCertSource(cfg certCacheConfig) (*certSource, error) {
	src := &certSource{Kind: cfg.EndpointType}
	if src.Kind == "" {
		src.Kind = sourceLocalTHIM
	}
	if p, ok := parseProductLine(cfg.TEEType); ok {
		src.Product = p
	}
	endpoint := strings.TrimSpace(cfg.Endpoint)
	var err error
	switch src.Kind {
	case sourceAMD:
		if endpoint == "" {
			endpoint = defaultKDSHost
		}
		src.Base, err = sourceBaseURL(endpoint, false)
	case sourceAzCache:
		if endpoint == "" {
			endpoint = defaultAzCacheHost
		}
		src.TEE = strings.TrimSpace(cfg.TEEType)
		if src.TEE == "" {
			src.TEE = defaultAzCacheTEE
		}
		if !isPathToken(src.TEE) {
			return nil, fmt.Errorf("certcache.tee_type %q is not a plain name such as SevSnpVM", cfg.TEEType)
		}
		if src.APIVersion, err = queryParamValue("api_version", "api-version", cfg.APIVersion, defaultAzCacheAPI); err != nil {
			return nil, err
		}
		if src.ClientID, err = queryParamValue("client_id", "clientId", cfg.ClientID, defaultAzCacheClient); err != nil {
			return nil, err
		}
		src.Base, err = sourceBaseURL(endpoint, false)
	case sourceLocalTHIM:
		if endpoint == "" {
			endpoint = defaultTHIMEndpoint
		}
		src.Base, err = sourceBaseURL(endpoint, true)
		if err == nil && !strings.Contains(strings.SplitN(src.Base, "://", 2)[1], "/") {
			// host alone: the usual THIM path on it
			src.Base += thimPath
		}
	default:
		return nil, fmt.Errorf("certcache.endpoint_type %q is not one of AMD, AzCache, LocalTHIM", cfg.EndpointType)
	}
	if err != nil {
		return nil, fmt.Errorf("certcache.endpoint for %s: %w", src.Kind, err)
	}
	return src, nil
}

// sourceBaseURL turns host[:port][/path] into a URL. https is implied and
// required, except plain http to the link-local metadata address for THIM,
// which is the only way that endpoint is served.
func sourceBaseURL(endpoint string, thim bool) (string, error) {
	raw := endpoint
	if !strings.Contains(raw, "://") {
		scheme := "https://"
		if thim && isMetadataHost(hostName(raw)) {
			scheme = "http://"
		}
		raw = scheme + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("%q is not host[/path]: %w", endpoint, err)
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && thim && isMetadataHost(hostName(u.Host)):
	default:
		return "", fmt.Errorf("scheme %q is refused in %q: only https (or http to 169.254.169.254 for THIM)", u.Scheme, endpoint)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return "", fmt.Errorf("%q must be host[:port][/path] without user, query or fragment", endpoint)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("%q has a bad port", endpoint)
		}
	}
	return u.Scheme + "://" + strings.ToLower(u.Host) + strings.TrimRight(u.EscapedPath(), "/"), nil
}

// queryParamValue accepts "name=value" (the upstream sidecar's format) or
// a bare value.
func queryParamValue(field, name, v, def string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return def, nil
	}
	if k, val, ok := strings.Cut(v, "="); ok {
		if k != name {
			return "", fmt.Errorf("certcache.%s %q: want %s=VALUE or VALUE", field, v, name)
		}
		v = val
	}
	if v == "" || strings.ContainsAny(v, "&=?#/ ") {
		return "", fmt.Errorf("certcache.%s %q is not a plain value", field, v)
	}
	return v, nil
}

func isPathToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return s != "." && s != ".."
}
