package main

// AMD products, the TCB_VERSION layouts, the VCEK's X.509 extensions, and
// the URLs of the certificate sources (AMD KDS, Azure cert cache, THIM).

import (
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// snpProduct is an AMD product line as KDS spells it in its URLs.
type snpProduct string

const (
	productMilan snpProduct = "Milan"
	productGenoa snpProduct = "Genoa"
	productTurin snpProduct = "Turin"
)

// parseProductLine reads "Milan", "genoa", or a VCEK productName such as
// "Turin-B0" (the stepping is ignored).
func parseProductLine(s string) (snpProduct, bool) {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "-")
	for _, p := range []snpProduct{productMilan, productGenoa, productTurin} {
		if strings.EqualFold(line, string(p)) {
			return p, true
		}
	}
	return "", false
}

// productFromCPUID maps the combined CPUID family and model of a v3+
// report to the product line; ok is false for models nobody has mapped.
func productFromCPUID(family, model uint8) (snpProduct, bool) {
	switch {
	case family == 0x19 && model == 0x01:
		return productMilan, true
	case family == 0x19 && model == 0x11:
		return productGenoa, true
	case family == 0x1A && model == 0x02:
		return productTurin, true
	}
	return "", false
}

// tcbParts are the security patch levels packed in a TCB_VERSION. Reserved
// holds the bytes a layout does not name: spl_4..spl_7 (bytes 2-5) for
// Milan and Genoa, bytes 4-6 for Turin (Reserved[3] is then unused).
type tcbParts struct {
	FMC, BL, TEE, SNP, Ucode uint8
	Reserved                 [4]uint8
}

// decomposeTCB splits a TCB_VERSION with the product's byte layout.
func decomposeTCB(p snpProduct, tcb uint64) tcbParts {
	b := func(i int) uint8 { return uint8(tcb >> (8 * i)) }
	if p == productTurin {
		return tcbParts{FMC: b(0), BL: b(1), TEE: b(2), SNP: b(3), Ucode: b(7), Reserved: [4]uint8{b(4), b(5), b(6), 0}}
	}
	return tcbParts{BL: b(0), TEE: b(1), SNP: b(6), Ucode: b(7), Reserved: [4]uint8{b(2), b(3), b(4), b(5)}}
}

// composeTCB packs parts with the product's byte layout.
func composeTCB(p snpProduct, t tcbParts) uint64 {
	var b [8]uint8
	if p == productTurin {
		b = [8]uint8{t.FMC, t.BL, t.TEE, t.SNP, t.Reserved[0], t.Reserved[1], t.Reserved[2], t.Ucode}
	} else {
		b = [8]uint8{t.BL, t.TEE, t.Reserved[0], t.Reserved[1], t.Reserved[2], t.Reserved[3], t.SNP, t.Ucode}
	}
	var tcb uint64
	for i, v := range b {
		tcb |= uint64(v) << (8 * i)
	}
	return tcb
}

// formatTCB renders a TCB for people: the tcbm-style hex and the SPLs.
func formatTCB(p snpProduct, tcb uint64) string {
	if p == "" {
		p = productMilan
	}
	t := decomposeTCB(p, tcb)
	s := fmt.Sprintf("%016x (%s layout: ", tcb, p)
	if p == productTurin {
		s += fmt.Sprintf("fmc=%d ", t.FMC)
	}
	s += fmt.Sprintf("bl=%d tee=%d snp=%d ucode=%d", t.BL, t.TEE, t.SNP, t.Ucode)
	if t.Reserved != [4]uint8{} {
		s += fmt.Sprintf(" reserved=%x", t.Reserved[:])
	}
	return s + ")"
}

// OIDs of the VCEK/VLEK extensions, under 1.3.6.1.4.1.3704.1.
var (
	oidAMDKDS         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1}
	oidStructVersion  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 1}
	oidProductName    = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 2}
	oidBlSPL          = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 1}
	oidTeeSPL         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 2}
	oidSnpSPL         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 3}
	oidSpl4           = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 4}
	oidSpl5           = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 5}
	oidSpl6           = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 6}
	oidSpl7           = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 7}
	oidUcodeSPL       = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 8}
	oidFmcSPL         = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 3, 9}
	oidHWID           = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 4}
	oidCSPID          = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 3704, 1, 5}
	hwidSizeMilan     = 64
	hwidSizeTurin     = 8
	maxProductNameLen = 64
)

// vcekInfo is what a VCEK's extensions certify.
type vcekInfo struct {
	ProductName string // as written, e.g. "Milan-B0"
	Product     snpProduct
	HWID        []byte // 64 bytes (8 for Turin); nil for a VLEK
	CSPID       string // VLEK only
	Parts       tcbParts
	TCB         uint64 // Parts packed with Product's layout
}

// parseVCEKExtensions decodes the AMD extensions of a VCEK (or VLEK).
// SPLs are DER INTEGERs: a value of 0x80 or more is encoded 02 02 00 xx,
// so reading a fixed byte offset would be wrong.
func parseVCEKExtensions(cert *x509.Certificate) (*vcekInfo, error) {
	if cert == nil {
		return nil, errors.New("no certificate")
	}
	exts := map[string][]byte{}
	for _, e := range cert.Extensions {
		if !hasOIDPrefix(e.Id, oidAMDKDS) {
			continue
		}
		k := e.Id.String()
		if _, dup := exts[k]; dup {
			return nil, fmt.Errorf("extension %s appears twice", k)
		}
		exts[k] = e.Value
	}
	info := &vcekInfo{}
	raw, ok := exts[oidProductName.String()]
	if !ok {
		return nil, fmt.Errorf("no productName extension (%s): not an AMD VCEK", oidProductName)
	}
	name, err := derIA5String(raw)
	if err != nil {
		return nil, fmt.Errorf("productName extension: %w", err)
	}
	info.ProductName = name
	if info.Product, ok = parseProductLine(name); !ok {
		return nil, fmt.Errorf("productName %q is not a known product (Milan, Genoa, Turin)", name)
	}

	spl := func(oid asn1.ObjectIdentifier, field string, required bool, dst *uint8) error {
		raw, ok := exts[oid.String()]
		if !ok {
			if required {
				return fmt.Errorf("no %s extension (%s)", field, oid)
			}
			return nil
		}
		v, err := derUint8(raw)
		if err != nil {
			return fmt.Errorf("%s extension: %w", field, err)
		}
		*dst = v
		return nil
	}
	turin := info.Product == productTurin
	p := &info.Parts
	for _, s := range []struct {
		oid      asn1.ObjectIdentifier
		field    string
		required bool
		dst      *uint8
	}{
		{oidBlSPL, "blSPL", true, &p.BL},
		{oidTeeSPL, "teeSPL", true, &p.TEE},
		{oidSnpSPL, "snpSPL", true, &p.SNP},
		{oidUcodeSPL, "ucodeSPL", true, &p.Ucode},
		{oidFmcSPL, "fmcSPL", turin, &p.FMC},
	} {
		if err := spl(s.oid, s.field, s.required, s.dst); err != nil {
			return nil, err
		}
	}
	// spl_4..spl_7 are reserved bytes of the Milan/Genoa layout; Turin
	// packs its named SPLs there instead, so they do not apply.
	if !turin {
		for i, oid := range []asn1.ObjectIdentifier{oidSpl4, oidSpl5, oidSpl6, oidSpl7} {
			if err := spl(oid, fmt.Sprintf("spl_%d", i+4), false, &p.Reserved[i]); err != nil {
				return nil, err
			}
		}
	} else if _, ok := exts[oidFmcSPL.String()]; !ok {
		return nil, fmt.Errorf("no fmcSPL extension (%s) in a Turin VCEK", oidFmcSPL)
	}
	info.TCB = composeTCB(info.Product, info.Parts)

	hwRaw, hasHWID := exts[oidHWID.String()]
	cspRaw, hasCSP := exts[oidCSPID.String()]
	switch {
	case hasHWID && hasCSP:
		return nil, errors.New("certificate has both hwID and cspId extensions")
	case hasHWID:
		if info.HWID, err = decodeHWID(info.Product, hwRaw); err != nil {
			return nil, fmt.Errorf("hwID extension: %w", err)
		}
	case hasCSP:
		if info.CSPID, err = derIA5String(cspRaw); err != nil {
			return nil, fmt.Errorf("cspId extension: %w", err)
		}
	default:
		return nil, errors.New("certificate has neither a hwID (VCEK) nor a cspId (VLEK) extension")
	}
	return info, nil
}

func hasOIDPrefix(id, prefix asn1.ObjectIdentifier) bool {
	return len(id) > len(prefix) && id[:len(prefix)].Equal(prefix)
}

// derUint8 decodes a DER INTEGER that must fit a byte.
func derUint8(b []byte) (uint8, error) {
	var v int64
	rest, err := asn1.Unmarshal(b, &v)
	if err != nil {
		return 0, fmt.Errorf("not a DER INTEGER: %w", err)
	}
	if len(rest) != 0 {
		return 0, errors.New("trailing bytes after the INTEGER")
	}
	if v < 0 || v > 255 {
		return 0, fmt.Errorf("value %d is not a security patch level (0-255)", v)
	}
	return uint8(v), nil
}

// derIA5String decodes a DER IA5String; other string types are refused.
func derIA5String(b []byte) (string, error) {
	if len(b) == 0 || b[0] != asn1.TagIA5String {
		return "", errors.New("not a DER IA5String")
	}
	var s string
	rest, err := asn1.UnmarshalWithParams(b, &s, "ia5")
	if err != nil {
		return "", fmt.Errorf("not a DER IA5String: %w", err)
	}
	if len(rest) != 0 {
		return "", errors.New("trailing bytes after the IA5String")
	}
	if len(s) == 0 || len(s) > maxProductNameLen {
		return "", fmt.Errorf("string of %d characters is out of bounds", len(s))
	}
	return s, nil
}

// decodeHWID reads the hwID: AMD writes the raw bytes without a DER tag;
// a DER OCTET STRING (as some test chains write it) is accepted too.
func decodeHWID(p snpProduct, b []byte) ([]byte, error) {
	sizes := []int{hwidSizeMilan}
	if p == productTurin {
		sizes = []int{hwidSizeTurin, hwidSizeMilan}
	}
	for _, n := range sizes {
		if len(b) == n {
			return append([]byte(nil), b...), nil
		}
	}
	var octets []byte
	rest, err := asn1.Unmarshal(b, &octets)
	if err == nil && len(rest) == 0 {
		for _, n := range sizes {
			if len(octets) == n {
				return octets, nil
			}
		}
	}
	return nil, fmt.Errorf("%d bytes is not a %s hardware id (%v bytes)", len(b), p, sizes)
}

// hwidMatchesChip says whether a VCEK's hwID names this CHIP_ID. A Turin
// hwID is the first 8 bytes of CHIP_ID.
func hwidMatchesChip(hwid []byte, chip [64]byte) bool {
	if len(hwid) == 0 || len(hwid) > len(chip) {
		return false
	}
	return string(hwid) == string(chip[:len(hwid)])
}

// chipIDMasked is true when the report carries no CHIP_ID (MASK_CHIP_ID).
func chipIDMasked(chip [64]byte) bool {
	return chip == [64]byte{}
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

// Certificate source defaults (sidecar.md §3, azure-protocols.md §5).
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
		if thim && isMetadataHost(hostOf(raw)) {
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
	case u.Scheme == "http" && thim && isMetadataHost(u.Hostname()):
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

func hostOf(hostPath string) string {
	host, _, _ := strings.Cut(hostPath, "/")
	if h, _, ok := strings.Cut(host, ":"); ok && !strings.Contains(host, "]") {
		return h
	}
	return host
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
