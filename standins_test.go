package main

// Stand-ins for Microsoft Azure Attestation, Key Vault and IMDS: TLS
// servers that check what the real services check and sign what they
// sign, with knobs to make them fail the ways the real ones do.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

// ---- keys and certificates made once per test binary ----

var standInRSA struct {
	once sync.Once
	keys [rsaWrapping + testWrappingKeyCount]*rsa.PrivateKey
}

// Indices into standInRSA.keys.
const (
	rsaMAASigner = iota
	rsaKVSigner
	rsaReleased
	rsaOther
	rsaWrapping // the first of the keys testWrappingKeys hands out copies of
)

// testWrappingKeyCount is how many distinct wrapping keys a test server
// gets before they repeat.
const testWrappingKeyCount = 8

// standInRSAKey returns one of a few RSA-2048 keys generated once per test
// binary, all at once on every CPU.
func standInRSAKey(t testing.TB, i int) *rsa.PrivateKey {
	t.Helper()
	standInRSA.once.Do(func() {
		var wg sync.WaitGroup
		for j := range standInRSA.keys {
			wg.Go(func() {
				k, err := rsa.GenerateKey(rand.Reader, 2048)
				if err != nil {
					panic(err)
				}
				standInRSA.keys[j] = k
			})
		}
		wg.Wait()
	})
	return standInRSA.keys[i]
}

// standInCA is a certificate authority of the test PKI.
type standInCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var standInSerial struct {
	mu sync.Mutex
	n  int64
}

func standInNextSerial() *big.Int {
	standInSerial.mu.Lock()
	defer standInSerial.mu.Unlock()
	standInSerial.n++
	return big.NewInt(standInSerial.n)
}

func standInECKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func standInCert(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) *x509.Certificate {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		panic(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return c
}

// newStandInCA makes a root (parent nil) or an intermediate.
func newStandInCA(name string, parent *standInCA) *standInCA {
	key := standInECKey()
	tmpl := &x509.Certificate{
		SerialNumber:          standInNextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"skr tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if parent == nil {
		return &standInCA{cert: standInCert(tmpl, tmpl, key.Public(), key), key: key}
	}
	tmpl.MaxPathLenZero = true
	return &standInCA{cert: standInCert(tmpl, parent.cert, key.Public(), parent.key), key: key}
}

// issue certifies pub for the given host names (IP literals become IP SANs).
func (ca *standInCA) issue(pub crypto.PublicKey, hosts ...string) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: standInNextSerial(),
		Subject:      pkix.Name{CommonName: hosts[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return standInCert(tmpl, ca.cert, pub, ca.key)
}

// standInPKI is the trusted test root with its intermediate (what the server
// trusts, like DigiCert and a Microsoft TLS CA), plus an untrusted one.
type standInPKI struct {
	root, inter             *standInCA
	untrustedRoot, untInter *standInCA
	tls                     tls.Certificate // localhost, for every stand-in
}

var sharedStandInPKI struct {
	once sync.Once
	pki  *standInPKI
}

func getStandInPKI() *standInPKI {
	sharedStandInPKI.once.Do(func() {
		p := &standInPKI{}
		p.root = newStandInCA("skr test root", nil)
		p.inter = newStandInCA("skr test TLS issuing CA", p.root)
		p.untrustedRoot = newStandInCA("untrusted root", nil)
		p.untInter = newStandInCA("untrusted issuing CA", p.untrustedRoot)
		k := standInECKey()
		leaf := p.inter.issue(k.Public(), "localhost", "127.0.0.1")
		p.tls = tls.Certificate{Certificate: [][]byte{leaf.Raw, p.inter.cert.Raw}, PrivateKey: k, Leaf: leaf}
		sharedStandInPKI.pki = p
	})
	return sharedStandInPKI.pki
}

// roots is the pool the sidecar under test trusts.
func (p *standInPKI) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root.cert)
	return pool
}

// client is how stand-ins call each other (Key Vault fetching MAA keys).
func (p *standInPKI) client() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.roots()}}}
}

// startTLSStandIn serves h over TLS as localhost:PORT.
func startTLSStandIn(t testing.TB, h http.Handler) (*httptest.Server, string) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{getStandInPKI().tls}, MinVersion: tls.VersionTLS12}
	srv.StartTLS()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return srv, "localhost:" + port
}

// standInFaults is what a stand-in can be told to do instead of answering.
type standInFaults struct {
	mu         sync.Mutex
	calls      int
	requestIDs []string // the x-ms-request-id of each answer, in order
	clientIDs  []string // the x-ms-client-request-id of each call, in order
	failN      int
	failStatus int
	retryAfter string
	hang       bool
	unhang     chan struct{}
}

func newStandInFaults() *standInFaults { return &standInFaults{unhang: make(chan struct{})} }

// failNext makes the next n calls answer status (with Retry-After when set).
func (f *standInFaults) failNext(n, status int, retryAfter string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failN, f.failStatus, f.retryAfter = n, status, retryAfter
}

func (f *standInFaults) setHang(h bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hang = h
}

func (f *standInFaults) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// intercept counts the call, gives its answer an x-ms-request-id as the
// Azure services do, and plays a fault; true means it answered.
func (f *standInFaults) intercept(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	f.calls++
	var nonce [4]byte
	rand.Read(nonce[:])
	id := fmt.Sprintf("standin-%d-%x", f.calls, nonce)
	w.Header().Set("x-ms-request-id", id)
	f.requestIDs = append(f.requestIDs, id)
	f.clientIDs = append(f.clientIDs, r.Header.Get("x-ms-client-request-id"))
	hang := f.hang
	fail := f.failN > 0
	status, ra := f.failStatus, f.retryAfter
	if fail {
		f.failN--
	}
	f.mu.Unlock()
	if hang {
		select {
		case <-r.Context().Done():
		case <-f.unhang:
		}
		return true
	}
	if fail {
		if ra != "" {
			w.Header().Set("Retry-After", ra)
		}
		standInAzureError(w, status, "InjectedFault", "fault injected by the test")
		return true
	}
	return false
}

// seenIDs are the request ids the stand-in answered with and the client
// request ids it was sent.
func (f *standInFaults) seenIDs() (answered, sent []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requestIDs), slices.Clone(f.clientIDs)
}

func (f *standInFaults) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.unhang:
	default:
		close(f.unhang)
	}
}

// standInAzureError answers with the CloudError / KeyVaultError shape.
func standInAzureError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// standInB64URL decodes base64url with or without padding and refuses the
// standard alphabet, which MAA is not known to accept.
func standInB64URL(s string) ([]byte, error) {
	if strings.ContainsAny(s, "+/") {
		return nil, errors.New("standard base64 alphabet where base64url is expected")
	}
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// standInExactKeys decodes a JSON object and checks its member names exactly
// (encoding/json would match them without regard to case).
func standInExactKeys(raw []byte, required []string, optional ...string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	allowed := map[string]bool{}
	for _, k := range append(append([]string{}, required...), optional...) {
		allowed[k] = true
	}
	for k := range m {
		if !allowed[k] {
			return nil, fmt.Errorf("unexpected member %q", k)
		}
	}
	for _, k := range required {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("missing member %q", k)
		}
	}
	return m, nil
}

func standInString(raw json.RawMessage) (string, error) {
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// ---- MAA ----

// maaStandIn attests SEV-SNP evidence like MAA: it checks the report's
// signature against the VCEK chain sent, that chain against the ARK the
// test trusts, and REPORT_DATA against the runtime data, then issues an
// RS256 token with the SEV-SNP claims.
type maaStandIn struct {
	*standInFaults
	t      testing.TB
	srv    *httptest.Server
	host   string
	signer *rsa.PrivateKey
	cert   *x509.Certificate // self-signed, served in /certs x5c
	kid    string

	mu          sync.Mutex
	ark         *x509.Certificate // trust anchor: the device's ARK
	compliance  string            // override of x-ms-compliance-status; "" = derived
	lastRequest []byte
	lastClaims  map[string]any
	tokens      []string
	userAgents  []string
}

func newMAAStandIn(t testing.TB, ark *x509.Certificate) *maaStandIn {
	t.Helper()
	m := &maaStandIn{standInFaults: newStandInFaults(), t: t, signer: standInRSAKey(t, rsaMAASigner), ark: ark}
	tmpl := &x509.Certificate{
		SerialNumber: standInNextSerial(), Subject: pkix.Name{CommonName: "MAA stand-in signing"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
	}
	m.cert = standInCert(tmpl, tmpl, &m.signer.PublicKey, m.signer)
	sum := sha256.Sum256(m.cert.Raw)
	m.kid = base64.StdEncoding.EncodeToString(sum[:]) // opaque, with + / =, as MAA's are
	mux := http.NewServeMux()
	mux.HandleFunc("POST /attest/{type}", m.handleAttest)
	mux.HandleFunc("GET /certs", m.handleCerts)
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		standInWriteJSON(w, 200, map[string]any{"issuer": "https://" + m.host, "jwks_uri": "https://" + m.host + "/certs",
			"id_token_signing_alg_values_supported": []string{"RS256"}})
	})
	m.srv, m.host = startTLSStandIn(t, mux)
	t.Cleanup(func() { m.stop(); m.srv.Close() })
	return m
}

func (m *maaStandIn) setCompliance(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.compliance = s
}

func (m *maaStandIn) issuedTokens() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]string(nil), m.tokens...)
}

func (m *maaStandIn) claims() map[string]any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastClaims
}

func (m *maaStandIn) handleCerts(w http.ResponseWriter, r *http.Request) {
	n, e, _ := standInRSAPublic(&m.signer.PublicKey)
	standInWriteJSON(w, 200, map[string]any{"keys": []map[string]any{{
		"kty": "RSA", "use": "sig", "alg": "RS256", "kid": m.kid, "n": n, "e": e,
		"x5c": []string{base64.StdEncoding.EncodeToString(m.cert.Raw)},
	}}})
}

func (m *maaStandIn) handleAttest(w http.ResponseWriter, r *http.Request) {
	if m.intercept(w, r) {
		return
	}
	if !strings.EqualFold(r.PathValue("type"), "SevSnpVm") {
		standInAzureError(w, 404, "NotFound", "unknown attestation type "+r.PathValue("type"))
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		standInAzureError(w, 400, "MissingApiVersionParameter", "The api-version query parameter is required.")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		standInAzureError(w, 415, "UnsupportedMediaType", "content type "+ct)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	m.mu.Lock()
	m.lastRequest = body
	m.userAgents = append(m.userAgents, r.Header.Get("User-Agent"))
	m.mu.Unlock()
	claims, err := m.attest(body)
	if err != nil {
		standInAzureError(w, 400, "InvalidParameter", err.Error())
		return
	}
	tok := standInSignJWS(map[string]any{"alg": "RS256", "typ": "JWT", "kid": m.kid, "jku": "https://" + m.host + "/certs"}, standInJSON(claims), m.signer)
	m.mu.Lock()
	m.tokens = append(m.tokens, tok)
	m.lastClaims = claims
	m.mu.Unlock()
	standInWriteJSON(w, 200, map[string]string{"token": tok})
}

func standInJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// attest checks an AttestSevSnpVmRequest and returns the token's claims.
func (m *maaStandIn) attest(body []byte) (map[string]any, error) {
	outer, err := standInExactKeys(body, []string{"report", "runtimeData"}, "initTimeData", "nonce", "draftPolicyForAttestation")
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	reportField, err := standInString(outer["report"])
	if err != nil {
		return nil, fmt.Errorf("report is not a string: %w", err)
	}
	bundleJSON, err := standInB64URL(reportField)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	bundle, err := standInExactKeys(bundleJSON, []string{"SnpReport", "VcekCertChain"}, "Endorsements")
	if err != nil {
		return nil, fmt.Errorf("report bundle: %w", err)
	}
	rt, err := standInExactKeys(outer["runtimeData"], []string{"data", "dataType"})
	if err != nil {
		return nil, fmt.Errorf("runtimeData: %w", err)
	}
	var nonce string
	if raw, ok := outer["nonce"]; ok {
		if nonce, err = standInString(raw); err != nil {
			return nil, fmt.Errorf("nonce is not a string: %w", err)
		}
	}

	reportB64, _ := standInString(bundle["SnpReport"])
	reportRaw, err := standInB64URL(reportB64)
	if err != nil {
		return nil, fmt.Errorf("SnpReport: %w", err)
	}
	// The stand-in reads and verifies reports with go-sev-guest, not with
	// the sidecar's own parser and verifier: a bug the two shared would
	// otherwise pass unseen.
	rep, err := abi.ReportToProto(reportRaw)
	if err != nil {
		return nil, fmt.Errorf("SnpReport: %w", err)
	}
	chainB64, _ := standInString(bundle["VcekCertChain"])
	chainPEM, err := standInB64URL(chainB64)
	if err != nil {
		return nil, fmt.Errorf("VcekCertChain: %w", err)
	}
	certs, err := standInPEMChain(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("VcekCertChain: %w", err)
	}
	m.mu.Lock()
	ark := m.ark
	m.mu.Unlock()
	if ark == nil || !certs.ARK.Equal(ark) {
		return nil, errors.New("VcekCertChain: the ARK is not a trusted AMD root")
	}
	if err := goSevGuestVerify(reportRaw, certs); err != nil {
		return nil, fmt.Errorf("SnpReport does not verify with VcekCertChain: %w", err)
	}

	endorsed := false
	if raw, ok := bundle["Endorsements"]; ok {
		s, _ := standInString(raw)
		ej, err := standInB64URL(s)
		if err != nil {
			return nil, fmt.Errorf("Endorsements: %w", err)
		}
		e, err := standInExactKeys(ej, []string{"Uvm"})
		if err != nil {
			return nil, fmt.Errorf("Endorsements: %w", err)
		}
		var uvm []string
		if err := json.Unmarshal(e["Uvm"], &uvm); err != nil || len(uvm) == 0 {
			return nil, errors.New("Endorsements.Uvm is not a non-empty list")
		}
		for _, u := range uvm {
			if b, err := standInB64URL(u); err != nil || len(b) == 0 {
				return nil, errors.New("Endorsements.Uvm entry is not base64url")
			}
		}
		endorsed = true
	}

	dataB64, err := standInString(rt["data"])
	if err != nil {
		return nil, errors.New("runtimeData.data is not a string")
	}
	data, err := standInB64URL(dataB64)
	if err != nil {
		return nil, fmt.Errorf("runtimeData.data: %w", err)
	}
	dataType, _ := standInString(rt["dataType"])
	want := sha256.Sum256(data)
	if !bytes.Equal(rep.GetReportData()[:32], want[:]) || !bytes.Equal(rep.GetReportData()[32:], make([]byte, 32)) {
		return nil, errors.New("REPORT_DATA is not sha256(runtimeData) followed by zeros")
	}

	now := time.Now().Unix()
	jti := make([]byte, 32)
	rand.Read(jti)
	tcb := rep.GetReportedTcb()
	claims := map[string]any{
		"iss": "https://" + m.host, "iat": now, "nbf": now, "exp": now + 8*3600,
		"jti":                             hex.EncodeToString(jti),
		"x-ms-ver":                        "1.0",
		"x-ms-attestation-type":           "sevsnpvm",
		"x-ms-sevsnpvm-hostdata":          hex.EncodeToString(rep.GetHostData()),
		"x-ms-sevsnpvm-reportdata":        hex.EncodeToString(rep.GetReportData()),
		"x-ms-sevsnpvm-launchmeasurement": hex.EncodeToString(rep.GetMeasurement()),
		"x-ms-sevsnpvm-idkeydigest":       hex.EncodeToString(rep.GetIdKeyDigest()),
		"x-ms-sevsnpvm-authorkeydigest":   hex.EncodeToString(rep.GetAuthorKeyDigest()),
		"x-ms-sevsnpvm-reportid":          hex.EncodeToString(rep.GetReportId()),
		"x-ms-sevsnpvm-familyId":          hex.EncodeToString(rep.GetFamilyId()),
		"x-ms-sevsnpvm-imageId":           hex.EncodeToString(rep.GetImageId()),
		"x-ms-sevsnpvm-guestsvn":          rep.GetGuestSvn(),
		"x-ms-sevsnpvm-vmpl":              rep.GetVmpl(),
		"x-ms-sevsnpvm-is-debuggable":     rep.GetPolicy()&(1<<19) != 0,
		"x-ms-sevsnpvm-migration-allowed": rep.GetPolicy()&(1<<18) != 0,
		"x-ms-sevsnpvm-smt-allowed":       rep.GetPolicy()&(1<<16) != 0,
		"x-ms-sevsnpvm-bootloader-svn":    tcb & 0xff,
		"x-ms-sevsnpvm-tee-svn":           (tcb >> 8) & 0xff,
		"x-ms-sevsnpvm-snpfw-svn":         (tcb >> 48) & 0xff,
		"x-ms-sevsnpvm-microcode-svn":     (tcb >> 56) & 0xff,
	}
	if nonce != "" {
		claims["nonce"] = nonce
	}
	switch dataType {
	case "JSON":
		var runtime map[string]any
		if err := json.Unmarshal(data, &runtime); err != nil {
			return nil, fmt.Errorf("runtimeData of type JSON is not a JSON object: %w", err)
		}
		claims["x-ms-runtime"] = runtime
	case "Binary":
	default:
		return nil, fmt.Errorf("runtimeData.dataType %q is not JSON or Binary", dataType)
	}
	m.mu.Lock()
	compliance := m.compliance
	m.mu.Unlock()
	if compliance == "" && endorsed {
		compliance = "azure-compliant-uvm"
	}
	if compliance != "" {
		claims["x-ms-compliance-status"] = compliance
	}
	return claims, nil
}

// standInPEMChain reads VCEK, ASK, ARK in that order.
func standInPEMChain(b []byte) (*platformCerts, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q is not a certificate", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(b)) != 0 {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(certs) != 3 {
		return nil, fmt.Errorf("%d certificates, want VCEK, ASK and ARK", len(certs))
	}
	// MAA reads the TCB a VCEK certifies from its extensions; go-sev-guest
	// reads them here, not the sidecar's parser.
	exts, err := kds.VcekCertificateExtensions(certs[0])
	if err != nil {
		return nil, fmt.Errorf("VCEK: %w", err)
	}
	return &platformCerts{VCEK: certs[0], ASK: certs[1], ARK: certs[2], TCB: uint64(exts.TCBVersion)}, nil
}

// ---- Key Vault ----

// kvKey is a key held by the Key Vault stand-in.
type kvKey struct {
	name     string
	version  string
	kty      string   // oct-HSM, RSA-HSM, EC-HSM (or without -HSM)
	keyOps   []string // nil = omitted
	material any      // []byte, *rsa.PrivateKey, *ecdsa.PrivateKey
	policy   []byte   // release policy JSON
}

// kvStandIn releases keys like Key Vault / Managed HSM: bearer token, MAA
// token (signature via the authority's /certs, times, issuer = a policy
// authority), release policy, then wraps the key to the runtime key and
// signs the response with a certificate for its host name.
type kvStandIn struct {
	*standInFaults
	t      testing.TB
	srv    *httptest.Server
	host   string
	pki    *standInPKI
	client *http.Client

	mu            sync.Mutex
	bearer        string
	keys          map[string]*kvKey
	signer        *rsa.PrivateKey
	chain         []*x509.Certificate // leaf, intermediate, root
	enc           string              // force this enc regardless of the request; "" = honour it
	wrongSigner   bool
	untrustedCA   bool
	wrongHost     bool
	tamper        bool
	wrapToOther   bool
	readForbidden bool   // GET /keys answers 403: the identity may release but not read
	denyRelease   bool   // a release answers 403 whatever the policy: no release permission
	lastReleaseTo string // kid of the runtime key last wrapped to
}

func newKVStandIn(t testing.TB, bearer string) *kvStandIn {
	t.Helper()
	kv := &kvStandIn{standInFaults: newStandInFaults(), t: t, pki: getStandInPKI(), bearer: bearer, keys: map[string]*kvKey{}, signer: standInRSAKey(t, rsaKVSigner)}
	kv.client = kv.pki.client()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /keys/{name}/release", kv.handleRelease)
	mux.HandleFunc("POST /keys/{name}/{version}/release", kv.handleRelease)
	mux.HandleFunc("GET /keys/{name}", kv.handleGet)
	mux.HandleFunc("GET /keys/{name}/{version}", kv.handleGet)
	kv.srv, kv.host = startTLSStandIn(t, mux)
	t.Cleanup(func() { kv.stop(); kv.srv.Close() })
	return kv
}

func (kv *kvStandIn) addKey(k *kvKey) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	if k.version == "" {
		k.version = fmt.Sprintf("%032x", len(kv.keys)+1)
	}
	kv.keys[strings.ToLower(k.name)] = k
}

func (kv *kvStandIn) set(f func(kv *kvStandIn)) {
	kv.mu.Lock()
	defer kv.mu.Unlock()
	f(kv)
}

// authorizedKey checks what every key request needs, the API version and
// the bearer token, and finds the key; nil means it answered.
func (kv *kvStandIn) authorizedKey(w http.ResponseWriter, r *http.Request) *kvKey {
	if kv.intercept(w, r) {
		return nil
	}
	if r.URL.Query().Get("api-version") == "" {
		standInAzureError(w, 400, "BadParameter", "api-version is required")
		return nil
	}
	kv.mu.Lock()
	expected := kv.bearer
	kv.mu.Unlock()
	auth := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(tok), []byte(expected)) != 1 {
		w.Header().Set("WWW-Authenticate", `Bearer authorization="https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000", resource="https://vault.azure.net"`)
		standInAzureError(w, 401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
		return nil
	}
	kv.mu.Lock()
	key := kv.keys[strings.ToLower(r.PathValue("name"))]
	kv.mu.Unlock()
	if key == nil || (r.PathValue("version") != "" && !strings.EqualFold(r.PathValue("version"), key.version)) {
		standInAzureError(w, 404, "KeyNotFound", fmt.Sprintf("A key with (name/id) %s was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command.", r.PathValue("name")))
		return nil
	}
	return key
}

// standInForbidden is Key Vault's answer to an identity without the
// permission for an operation.
func standInForbidden(w http.ResponseWriter, action string) {
	standInAzureError(w, 403, "Forbidden", "Caller is not authorized to perform action on resource. Action: '"+action+"'")
}

// handleGet answers GET /keys/{name}[/{version}] as Key Vault does: the
// public key, its attributes and its release policy.
func (kv *kvStandIn) handleGet(w http.ResponseWriter, r *http.Request) {
	key := kv.authorizedKey(w, r)
	if key == nil {
		return
	}
	kv.mu.Lock()
	forbidden := kv.readForbidden
	kv.mu.Unlock()
	if forbidden {
		standInForbidden(w, "Microsoft.KeyVault/vaults/keys/read")
		return
	}
	standInWriteJSON(w, 200, map[string]any{
		"key":        map[string]any{"kid": "https://" + kv.host + "/keys/" + key.name + "/" + key.version, "kty": key.kty},
		"attributes": map[string]any{"enabled": true, "exportable": true},
		"release_policy": map[string]any{"contentType": "application/json; charset=utf-8",
			"data": base64.RawURLEncoding.EncodeToString(key.policy), "immutable": false},
	})
}

func (kv *kvStandIn) handleRelease(w http.ResponseWriter, r *http.Request) {
	key := kv.authorizedKey(w, r)
	if key == nil {
		return
	}
	kv.mu.Lock()
	deny := kv.denyRelease
	kv.mu.Unlock()
	if deny {
		standInForbidden(w, "Microsoft.KeyVault/vaults/keys/release/action")
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	req, err := standInExactKeys(body, []string{"target"}, "enc", "nonce")
	if err != nil {
		standInAzureError(w, 400, "BadParameter", "release parameters: "+err.Error())
		return
	}
	target, _ := standInString(req["target"])
	enc := "CKM_RSA_AES_KEY_WRAP" // the presumed default when none is asked for
	if raw, ok := req["enc"]; ok {
		enc, _ = standInString(raw)
	}
	kv.mu.Lock()
	if kv.enc != "" {
		enc = kv.enc
	}
	kv.mu.Unlock()
	claims, err := kv.verifyMAAToken(r.Context(), target, key.policy)
	var notAuthority *standInNotAuthority
	switch {
	case errors.As(err, &notAuthority):
		// A token from an issuer the policy does not name fails the policy.
		standInAzureError(w, 403, "Forbidden", "Target environment attestation statement cannot be verified. The key release policy is not satisfied.")
		return
	case err != nil:
		standInAzureError(w, 400, "BadParameter", "Target environment attestation statement cannot be verified: "+err.Error())
		return
	}
	if met, err := kvEvalPolicy(key.policy, claims); err != nil || !met {
		standInAzureError(w, 403, "Forbidden", "Target environment attestation statement cannot be verified. The key release policy is not satisfied.")
		return
	}
	value, err := kv.releaseResponse(key, enc, claims)
	if err != nil {
		standInAzureError(w, 400, "BadParameter", err.Error())
		return
	}
	standInWriteJSON(w, 200, map[string]string{"value": value})
}

// verifyMAAToken checks the MAA token as Key Vault does: issuer named by
// the policy, key from the issuer's /certs (never from the token's jku),
// RS256 signature, exp and nbf.
func (kv *kvStandIn) verifyMAAToken(ctx context.Context, target string, policy []byte) (map[string]any, error) {
	header, payload, err := standInParseJWS(target)
	if err != nil {
		return nil, err
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, err
	}
	iss, _ := claims["iss"].(string)
	authorities, err := kvPolicyAuthorities(policy)
	if err != nil {
		return nil, err
	}
	trusted := false
	for _, a := range authorities {
		if strings.TrimRight(a, "/") == strings.TrimRight(iss, "/") {
			trusted = true
		}
	}
	if !trusted {
		return nil, &standInNotAuthority{iss}
	}
	kid, _ := header["kid"].(string)
	pub, err := kv.fetchSigningKey(ctx, strings.TrimRight(iss, "/")+"/certs", kid)
	if err != nil {
		return nil, err
	}
	if err := standInVerifyRS256(target, header, pub); err != nil {
		return nil, err
	}
	if err := standInCheckTimes(claims, time.Now(), time.Minute); err != nil {
		return nil, err
	}
	return claims, nil
}

// standInNotAuthority is a token whose issuer the key's policy does not
// name.
type standInNotAuthority struct{ iss string }

func (e *standInNotAuthority) Error() string {
	return fmt.Sprintf("issuer %q is not an authority of the release policy", e.iss)
}

func (kv *kvStandIn) fetchSigningKey(ctx context.Context, certsURL, kid string) (*rsa.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, certsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := kv.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var set struct {
		Keys []struct {
			Kid string   `json:"kid"`
			X5C []string `json:"x5c"`
		} `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, err
	}
	for _, k := range set.Keys {
		if k.Kid == kid && len(k.X5C) > 0 {
			der, err := base64.StdEncoding.DecodeString(k.X5C[0])
			if err != nil {
				return nil, err
			}
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, err
			}
			pub, ok := c.PublicKey.(*rsa.PublicKey)
			if !ok {
				return nil, fmt.Errorf("signing key %q is a %T, want RSA", kid, c.PublicKey)
			}
			return pub, nil
		}
	}
	return nil, fmt.Errorf("no signing key %q at %s", kid, certsURL)
}

// kvRuntimeWrappingKey is the first RSA key of x-ms-runtime.keys meant for
// encryption, as Key Vault picks it.
func kvRuntimeWrappingKey(claims map[string]any) (*rsa.PublicKey, string, error) {
	runtime, _ := claims["x-ms-runtime"].(map[string]any)
	keys, _ := runtime["keys"].([]any)
	for _, raw := range keys {
		k, _ := raw.(map[string]any)
		kty, _ := k["kty"].(string)
		kid, _ := k["kid"].(string)
		if kty != "RSA" || kid == "" {
			continue
		}
		usable := k["use"] == "enc"
		ops, _ := k["key_ops"].([]any)
		for _, op := range ops {
			usable = usable || op == "encrypt"
		}
		if !usable {
			continue
		}
		n, _ := k["n"].(string)
		e, _ := k["e"].(string)
		nb, err1 := base64.RawURLEncoding.DecodeString(n)
		eb, err2 := base64.RawURLEncoding.DecodeString(e)
		if err1 != nil || err2 != nil || len(nb) == 0 || len(eb) == 0 || len(eb) > 4 {
			return nil, "", fmt.Errorf("runtime key %q: n or e is not base64url", kid)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(new(big.Int).SetBytes(eb).Int64())}, kid, nil
	}
	return nil, "", errors.New("x-ms-runtime has no RSA key for encryption")
}

func kvEncHash(enc string) (func() hash.Hash, error) {
	switch enc {
	case "CKM_RSA_AES_KEY_WRAP":
		return sha1.New, nil
	case "RSA_AES_KEY_WRAP_256":
		return sha256.New, nil
	case "RSA_AES_KEY_WRAP_384":
		return sha512.New384, nil
	}
	return nil, fmt.Errorf("enc %q is not supported", enc)
}

// kvKeyPlaintext is what Key Vault wraps: raw oct bytes, PKCS#8 otherwise.
func kvKeyPlaintext(k *kvKey) ([]byte, error) {
	if b, ok := k.material.([]byte); ok {
		return bytes.Clone(b), nil
	}
	return x509.MarshalPKCS8PrivateKey(k.material)
}

// kvPublicMembers are the public parts Key Vault puts beside key_hsm.
func kvPublicMembers(k *kvKey) (map[string]any, error) {
	out := map[string]any{}
	switch m := k.material.(type) {
	case []byte:
	case *rsa.PrivateKey:
		out["n"], out["e"], _ = standInRSAPublic(&m.PublicKey)
	case *ecdsa.PrivateKey:
		point, err := m.PublicKey.Bytes() // 04 ‖ x ‖ y
		if err != nil {
			return nil, err
		}
		size := (len(point) - 1) / 2
		out["crv"] = m.Curve.Params().Name // P-256, P-384, P-521: JWK's names too
		out["x"] = base64.RawURLEncoding.EncodeToString(point[1 : 1+size])
		out["y"] = base64.RawURLEncoding.EncodeToString(point[1+size:])
	default:
		return nil, fmt.Errorf("key material %T", m)
	}
	return out, nil
}

// releaseResponse wraps the key to the runtime key and signs the payload.
func (kv *kvStandIn) releaseResponse(k *kvKey, enc string, claims map[string]any) (string, error) {
	wrapTo, wrapKid, err := kvRuntimeWrappingKey(claims)
	if err != nil {
		return "", err
	}
	kv.mu.Lock()
	tamper, toOther, wrongSigner, untrusted, wrongHost := kv.tamper, kv.wrapToOther, kv.wrongSigner, kv.untrustedCA, kv.wrongHost
	kv.lastReleaseTo = wrapKid
	kv.mu.Unlock()
	if toOther {
		other := standInRSAKey(kv.t, rsaOther)
		wrapTo = &other.PublicKey
		_, _, wrapKid = standInRSAPublic(wrapTo)
	}
	newHash, err := kvEncHash(enc)
	if err != nil {
		return "", err
	}
	plain, err := kvKeyPlaintext(k)
	if err != nil {
		return "", err
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	wrappedKEK, err := rsa.EncryptOAEP(newHash(), rand.Reader, wrapTo, kek, nil)
	if err != nil {
		return "", err
	}
	wrappedKey, err := standInAESKeyWrapPad(kek, plain)
	if err != nil {
		return "", err
	}
	ct := append(wrappedKEK, wrappedKey...)
	if tamper {
		ct[len(ct)-3] ^= 0x40
	}
	keyHSM := standInJSON(map[string]any{
		"schema_version": "1.0",
		"header":         map[string]string{"alg": "dir", "enc": enc, "kid": wrapKid},
		"ciphertext":     base64.RawURLEncoding.EncodeToString(ct),
	})
	kid := fmt.Sprintf("https://%s/keys/%s/%s", kv.host, k.name, k.version)
	pubKey, err := kvPublicMembers(k)
	if err != nil {
		return "", err
	}
	pubKey["kid"], pubKey["kty"], pubKey["key_hsm"] = kid, k.kty, base64.RawURLEncoding.EncodeToString(keyHSM)
	if k.keyOps != nil {
		pubKey["key_ops"] = k.keyOps
	}
	payload := standInJSON(map[string]any{
		"request": map[string]any{"api-version": "7.4", "enc": enc, "kid": kid},
		"response": map[string]any{"key": map[string]any{
			"attributes": map[string]any{"created": time.Now().Unix(), "updated": time.Now().Unix(), "enabled": true,
				"exportable": true, "recoverableDays": 7, "recoveryLevel": "CustomizedRecoverable+Purgeable"},
			"key":            pubKey,
			"release_policy": map[string]any{"contentType": "application/json; charset=utf-8", "data": base64.RawURLEncoding.EncodeToString(k.policy)},
		}},
	})

	signer := kv.signer
	host, _, err := net.SplitHostPort(kv.host)
	if err != nil {
		return "", err
	}
	var chain []*x509.Certificate
	switch {
	case untrusted:
		chain = []*x509.Certificate{kv.pki.untInter.issue(&signer.PublicKey, host), kv.pki.untInter.cert, kv.pki.untrustedRoot.cert}
	case wrongHost:
		chain = []*x509.Certificate{kv.pki.inter.issue(&signer.PublicKey, "other-vault.vault.azure.net"), kv.pki.inter.cert, kv.pki.root.cert}
	default:
		chain = []*x509.Certificate{kv.pki.inter.issue(&signer.PublicKey, "*.vault.azure.net", host), kv.pki.inter.cert, kv.pki.root.cert}
	}
	if wrongSigner {
		signer = standInRSAKey(kv.t, rsaOther)
	}
	x5c := make([]string, len(chain))
	for i, c := range chain {
		x5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	sum := sha256.Sum256(chain[0].Raw)
	thumb := base64.RawURLEncoding.EncodeToString(sum[:])
	return standInSignJWS(map[string]any{"alg": "RS256", "kid": thumb, "x5c": x5c, "x5t#S256": thumb}, payload, signer), nil
}

// ---- JSON, JOSE and key wrap, written apart from the sidecar's own ----
//
// The stand-ins sign, verify and wrap with this code, never the sidecar's:
// a mistake the two shared would otherwise pass unseen.

func standInWriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// standInSignJWS signs payload as a compact RS256 JWS.
func standInSignJWS(header map[string]any, payload []byte, key *rsa.PrivateKey) string {
	input := base64.RawURLEncoding.EncodeToString(standInJSON(header)) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(input))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		panic(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// standInParseJWS splits a compact JWS; standInVerifyRS256 checks it.
func standInParseJWS(compact string) (header map[string]any, payload []byte, err error) {
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return nil, nil, errors.New("not a compact JWS")
	}
	h, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, nil, fmt.Errorf("JWS header: %w", err)
	}
	if err := json.Unmarshal(h, &header); err != nil {
		return nil, nil, fmt.Errorf("JWS header: %w", err)
	}
	if payload, err = base64.RawURLEncoding.DecodeString(parts[1]); err != nil {
		return nil, nil, fmt.Errorf("JWS payload: %w", err)
	}
	return header, payload, nil
}

// standInVerifyRS256 checks the RS256 signature of a compact JWS.
func standInVerifyRS256(compact string, header map[string]any, pub *rsa.PublicKey) error {
	if header["alg"] != "RS256" {
		return fmt.Errorf("JWS alg %v, want RS256", header["alg"])
	}
	dot := strings.LastIndexByte(compact, '.')
	sig, err := base64.RawURLEncoding.DecodeString(compact[dot+1:])
	if err != nil {
		return fmt.Errorf("JWS signature: %w", err)
	}
	sum := sha256.Sum256([]byte(compact[:dot]))
	return rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig)
}

// standInCheckTimes checks exp, nbf and iat, each when present, with skew.
func standInCheckTimes(claims map[string]any, now time.Time, skew time.Duration) error {
	at := func(name string) (time.Time, bool) {
		v, ok := claims[name].(float64)
		return time.Unix(int64(v), 0), ok
	}
	if exp, ok := at("exp"); ok && !now.Add(-skew).Before(exp) {
		return fmt.Errorf("token expired at %s", exp)
	}
	if nbf, ok := at("nbf"); ok && now.Add(skew).Before(nbf) {
		return fmt.Errorf("token is not valid before %s", nbf)
	}
	if iat, ok := at("iat"); ok && now.Add(skew).Before(iat) {
		return fmt.Errorf("token was issued in the future, at %s", iat)
	}
	return nil
}

// standInRSAPublic is an RSA public key's JWK n and e, and its RFC 7638
// thumbprint.
func standInRSAPublic(pub *rsa.PublicKey) (n, e, thumbprint string) {
	n = base64.RawURLEncoding.EncodeToString(pub.N.Bytes())
	e = base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes())
	sum := sha256.Sum256([]byte(`{"e":"` + e + `","kty":"RSA","n":"` + n + `"}`))
	return n, e, base64.RawURLEncoding.EncodeToString(sum[:])
}

// standInAESKeyWrapPad is AES key wrap with padding (RFC 5649), as Key
// Vault wraps released keys.
func standInAESKeyWrapPad(kek, plain []byte) ([]byte, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(plain) == 0 {
		return nil, errors.New("nothing to wrap")
	}
	padded := make([]byte, (len(plain)+7)/8*8)
	copy(padded, plain)
	var a [8]byte // the alternative initial value: A65959A6 ‖ length
	binary.BigEndian.PutUint32(a[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(a[4:], uint32(len(plain)))
	if len(padded) == 8 {
		out := append(a[:], padded...)
		block.Encrypt(out, out)
		return out, nil
	}
	n := len(padded) / 8
	buf := make([]byte, 16)
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(buf, a[:])
			copy(buf[8:], padded[8*i:8*i+8])
			block.Encrypt(buf, buf)
			t := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^t)
			copy(padded[8*i:], buf[8:])
		}
	}
	return append(a[:], padded...), nil
}

// ---- release policy (version 1.0.0) ----

type kvPolicyDoc struct {
	Version string              `json:"version"`
	AnyOf   []kvPolicyAuthority `json:"anyOf"`
}

type kvPolicyAuthority struct {
	Authority string         `json:"authority"`
	AllOf     []kvPolicyCond `json:"allOf"`
	AnyOf     []kvPolicyCond `json:"anyOf"`
}

type kvPolicyCond struct {
	Claim  string         `json:"claim"`
	Equals any            `json:"equals"`
	AllOf  []kvPolicyCond `json:"allOf"`
	AnyOf  []kvPolicyCond `json:"anyOf"`
}

func parseKVPolicy(b []byte) (*kvPolicyDoc, error) {
	var p kvPolicyDoc
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, err
	}
	if p.Version != "1.0.0" {
		return nil, fmt.Errorf("policy version %q", p.Version)
	}
	return &p, nil
}

func kvPolicyAuthorities(b []byte) ([]string, error) {
	p, err := parseKVPolicy(b)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range p.AnyOf {
		out = append(out, a.Authority)
	}
	return out, nil
}

// kvEvalPolicy says whether the claims of a token from iss meet the
// policy: some authority entry whose authority is iss and whose conditions
// all (allOf) or some (anyOf) hold.
func kvEvalPolicy(policy []byte, claims map[string]any) (bool, error) {
	p, err := parseKVPolicy(policy)
	if err != nil {
		return false, err
	}
	iss, _ := claims["iss"].(string)
	for _, a := range p.AnyOf {
		if strings.TrimRight(a.Authority, "/") != strings.TrimRight(iss, "/") {
			continue
		}
		if (a.AllOf == nil) == (a.AnyOf == nil) {
			return false, errors.New("an authority needs exactly one of allOf and anyOf")
		}
		if a.AllOf != nil && kvEvalAll(a.AllOf, claims) || a.AnyOf != nil && kvEvalAny(a.AnyOf, claims) {
			return true, nil
		}
	}
	return false, nil
}

func kvEvalAll(cs []kvPolicyCond, claims map[string]any) bool {
	for _, c := range cs {
		if !kvEvalCond(c, claims) {
			return false
		}
	}
	return true
}

func kvEvalAny(cs []kvPolicyCond, claims map[string]any) bool {
	for _, c := range cs {
		if kvEvalCond(c, claims) {
			return true
		}
	}
	return false
}

func kvEvalCond(c kvPolicyCond, claims map[string]any) bool {
	switch {
	case c.AllOf != nil:
		return kvEvalAll(c.AllOf, claims)
	case c.AnyOf != nil:
		return kvEvalAny(c.AnyOf, claims)
	}
	v, ok := kvClaimAt(claims, c.Claim)
	return ok && c.Equals != nil && kvClaimString(v) == kvClaimString(c.Equals)
}

// kvClaimAt follows a dot path into nested objects.
func kvClaimAt(claims map[string]any, path string) (any, bool) {
	var cur any = claims
	for _, part := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// kvClaimString is the string form policies compare: "false" equals false,
// "0" equals 0.
func kvClaimString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case bool:
		return strconv.FormatBool(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case json.Number:
		return x.String()
	}
	return fmt.Sprint(v)
}

// standInReleasePolicy is the policy Microsoft's importkey writes for a container
// group: its host data, an endorsed UVM, no debug, VMPL 0.
func standInReleasePolicy(authority, hostData string) []byte {
	return standInJSON(map[string]any{"version": "1.0.0", "anyOf": []any{map[string]any{
		"authority": "https://" + authority,
		"allOf": []any{
			map[string]any{"claim": "x-ms-sevsnpvm-hostdata", "equals": hostData},
			map[string]any{"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
			map[string]any{"claim": "x-ms-sevsnpvm-is-debuggable", "equals": "false"},
			map[string]any{"claim": "x-ms-sevsnpvm-vmpl", "equals": "0"},
		},
	}}})
}

// ---- the stand-ins themselves: they must refuse what the real services refuse ----

func postJSON(t *testing.T, client *http.Client, url string, header http.Header, body []byte) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(raw)
}

func TestMAAStandInRefuses(t *testing.T) {
	t.Parallel()
	tee, certs, _ := releaseTestDevice(t, deviceEmulator)
	m := newMAAStandIn(t, certs.ARK)
	client := getStandInPKI().client()
	url := "https://" + m.host + "/attest/SevSnpVm?api-version=" + maaAPIVersion
	runtime := []byte(`{"keys":[{"kty":"oct","kid":"x"}]}`)
	report := func(rd [64]byte) []byte {
		raw, err := tee.GetReport(context.Background(), rd)
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	good := report(reportDataFor(runtime))
	build := func(rep []byte, rt []byte) []byte {
		b, err := buildMAARequest(&evidence{Report: rep, Certs: certs, UVMReferenceInfo: []byte("uvm")}, rt, "n")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if status, _, body := postJSON(t, client, url, nil, build(good, runtime)); status != 200 {
		t.Fatalf("a genuine request was refused: %d %s", status, body)
	}

	tampered := bytes.Clone(good)
	tampered[0x90] ^= 1 // inside MEASUREMENT, under the signature
	halfZero := reportDataFor(runtime)
	halfZero[40] = 1
	stdAlphabet := func() []byte {
		inner := standInJSON(map[string]string{"SnpReport": base64.StdEncoding.EncodeToString(good), "VcekCertChain": base64.StdEncoding.EncodeToString(certs.ChainPEM)})
		return standInJSON(map[string]any{"report": base64.StdEncoding.EncodeToString(inner), "runtimeData": map[string]string{"data": base64.RawURLEncoding.EncodeToString(runtime), "dataType": "JSON"}})
	}
	wrongCase := func(from, to string) []byte {
		b := build(good, runtime)
		return bytes.Replace(b, []byte(`"`+from+`"`), []byte(`"`+to+`"`), 1)
	}
	innerCase := func() []byte {
		inner := standInJSON(map[string]string{"snpReport": base64.RawURLEncoding.EncodeToString(good), "VcekCertChain": base64.RawURLEncoding.EncodeToString(certs.ChainPEM)})
		return standInJSON(map[string]any{"report": base64.RawURLEncoding.EncodeToString(inner), "runtimeData": map[string]string{"data": base64.RawURLEncoding.EncodeToString(runtime), "dataType": "JSON"}})
	}
	for name, body := range map[string][]byte{
		"other runtime data":       build(good, []byte(`{"keys":[]}`)),
		"tampered report":          build(tampered, runtime),
		"REPORT_DATA tail nonzero": build(report(halfZero), runtime),
		"standard base64":          stdAlphabet(),
		"RuntimeData casing":       wrongCase("runtimeData", "RuntimeData"),
		"datatype casing":          wrongCase("dataType", "datatype"),
		"snpReport casing":         innerCase(),
	} {
		if status, _, resp := postJSON(t, client, url, nil, body); status != 400 {
			t.Errorf("%s: status %d, want 400: %s", name, status, resp)
		}
	}
	other := newMAAStandIn(t, newStandInCA("not an AMD root", nil).cert)
	if status, _, _ := postJSON(t, client, "https://"+other.host+"/attest/SevSnpVm?api-version=x", nil, build(good, runtime)); status != 400 {
		t.Errorf("a chain to an untrusted ARK was accepted: %d", status)
	}
}

func TestKVStandInRefuses(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{})
	client := getStandInPKI().client()
	wk, err := wrappingKeyFrom(standInRSAKey(t, rsaOther))
	if err != nil {
		t.Fatal(err)
	}
	var runtime map[string]any
	json.Unmarshal(wk.runtimeData, &runtime)
	now := time.Now().Unix()
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{
			"iss": "https://" + e.maa.host, "iat": now, "nbf": now, "exp": now + 3600,
			"x-ms-sevsnpvm-hostdata": e.hostData, "x-ms-compliance-status": "azure-compliant-uvm",
			"x-ms-sevsnpvm-is-debuggable": false, "x-ms-sevsnpvm-vmpl": 0, "x-ms-runtime": runtime,
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	token := func(c map[string]any, key *rsa.PrivateKey) string {
		return standInSignJWS(map[string]any{"alg": "RS256", "typ": "JWT", "kid": e.maa.kid}, standInJSON(c), key)
	}
	maaKey := standInRSAKey(t, rsaMAASigner)
	url := "https://" + e.kv.host + "/keys/" + keyOct + "/release?api-version=7.4"
	bearer := http.Header{"Authorization": {"Bearer " + releaseBearer}}
	release := func(tok string, h http.Header) (int, http.Header, string) {
		return postJSON(t, client, url, h, standInJSON(map[string]string{"target": tok, "enc": "RSA_AES_KEY_WRAP_256"}))
	}
	if status, _, body := release(token(claims(nil), maaKey), bearer); status != 200 {
		t.Fatalf("a genuine token was refused: %d %s", status, body)
	}
	status, h, _ := release(token(claims(nil), maaKey), http.Header{"Authorization": {"Bearer wrong"}})
	if status != 401 || !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer ") {
		t.Errorf("wrong bearer: %d, WWW-Authenticate %q", status, h.Get("WWW-Authenticate"))
	}
	for name, c := range map[string]struct {
		tok    string
		status int
	}{
		"forged signature": {token(claims(nil), standInRSAKey(t, rsaOther)), 400},
		"expired":          {token(claims(func(c map[string]any) { c["exp"] = now - 600 }), maaKey), 400},
		"not yet valid":    {token(claims(func(c map[string]any) { c["nbf"] = now + 600 }), maaKey), 400},
		"other issuer":     {token(claims(func(c map[string]any) { c["iss"] = "https://evil.example" }), maaKey), 403},
		"other host data":  {token(claims(func(c map[string]any) { c["x-ms-sevsnpvm-hostdata"] = strings.Repeat("0", 64) }), maaKey), 403},
		"debuggable":       {token(claims(func(c map[string]any) { c["x-ms-sevsnpvm-is-debuggable"] = true }), maaKey), 403},
		"no runtime key":   {token(claims(func(c map[string]any) { delete(c, "x-ms-runtime") }), maaKey), 400},
	} {
		if status, _, body := release(c.tok, bearer); status != c.status {
			t.Errorf("%s: status %d, want %d: %s", name, status, c.status, body)
		}
	}
}

// The stand-in's key wrap against the vectors of RFC 5649, section 6.
func TestStandInAESKeyWrapPadVectors(t *testing.T) {
	t.Parallel()
	kek, _ := hex.DecodeString("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for plain, want := range map[string]string{
		"c37b7e6492584340bed12207808941155068f738": "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
		"466f7250617369": "afbeb0f07dfbf5419200f2ccb50bb24f",
	} {
		p, _ := hex.DecodeString(plain)
		got, err := standInAESKeyWrapPad(kek, p)
		if err != nil || hex.EncodeToString(got) != want {
			t.Errorf("wrap(%s) = %x, %v; want %s", plain, got, err, want)
		}
	}
}
