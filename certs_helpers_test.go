package main

// Test-only AMD: ARKs and ASKs made with go-sev-guest's fixed test keys (no
// slow RSA key generation), VCEKs made to order with the extensions AMD
// writes, reports signed by them, and stand-ins for AMD KDS, the Azure
// certificate cache and THIM that answer only what the real services would.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sevdata "github.com/google/go-sev-guest/testing/data"
)

// testRootCA is an ARK and the ASK it signs for one product.
type testRootCA struct {
	ark, ask       *x509.Certificate
	arkKey, askKey *rsa.PrivateKey
}

var (
	testRootsMu sync.Mutex
	testRoots   = map[string]*testRootCA{}
)

func testAMDName(cn string) pkix.Name {
	return pkix.Name{
		Organization:       []string{"Advanced Micro Devices"},
		Country:            []string{"US"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		CommonName:         cn,
	}
}

// testRoot returns the test ARK and ASK of a product; arkCN and askCN
// default to ARK-{product} and SEV-{product}.
func testRoot(t testing.TB, product snpProduct, arkCN, askCN string) *testRootCA {
	return makeTestRoot(t, product, arkCN, askCN, false)
}

// testOtherRoot is an ARK and ASK with other keys than testRoot's.
func testOtherRoot(t testing.TB, product snpProduct) *testRootCA {
	return makeTestRoot(t, product, "", "", true)
}

func makeTestRoot(t testing.TB, product snpProduct, arkCN, askCN string, otherKeys bool) *testRootCA {
	t.Helper()
	if arkCN == "" {
		arkCN = "ARK-" + string(product)
	}
	if askCN == "" {
		askCN = "SEV-" + string(product)
	}
	key := fmt.Sprintf("%s|%s|%v", arkCN, askCN, otherKeys)
	testRootsMu.Lock()
	defer testRootsMu.Unlock()
	if r, ok := testRoots[key]; ok {
		return r
	}
	r := &testRootCA{arkKey: sevdata.ARKPrivateKey, askKey: sevdata.ASKPrivateKey}
	if otherKeys {
		r.arkKey, r.askKey = sevdata.ASVKPrivateKey, sevdata.ARKPrivateKey
	}
	now := time.Now()
	arkTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               testAMDName(arkCN),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(25 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
	}
	r.ark = mustCert(t, arkTmpl, arkTmpl, &r.arkKey.PublicKey, r.arkKey)
	askTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               testAMDName(askCN),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(25 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SignatureAlgorithm:    x509.SHA384WithRSAPSS,
	}
	r.ask = mustCert(t, askTmpl, r.ark, &r.askKey.PublicKey, r.arkKey)
	testRoots[key] = r
	return r
}

func mustCert(t testing.TB, tmpl, parent *x509.Certificate, pub, priv any) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// derInt is what AMD writes for an SPL: a DER INTEGER.
func testDERInt(t testing.TB, v int) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func testDERIA5(t testing.TB, s string) []byte {
	t.Helper()
	b, err := asn1.MarshalWithParams(s, "ia5")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// vcekSpec says what a test VCEK certifies. The SPLs are given one by
// one, independently of the code that packs them into a TCB.
type vcekSpec struct {
	product     snpProduct
	productName string // default {product}-B0
	fmc, bl     int
	tee, snp    int
	ucode       int
	hwid        []byte // raw; default: testChipID's first 64 (8 for Turin) bytes
	extraExts   []pkix.Extension
	dropExt     asn1.ObjectIdentifier
	root        *testRootCA
}

// testVCEK is a VCEK with its private key and its chain.
type testVCEK struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	root *testRootCA
}

func (v *testVCEK) certs(tcb uint64) *platformCerts {
	return assemblePlatformCerts(v.cert, v.root.ask, v.root.ark, tcb)
}

// testChipID is the CHIP_ID of the test platform.
var testChipID = func() (c [64]byte) {
	for i := range c {
		c[i] = byte(0xA0 + i)
	}
	return c
}()

func testVCEKExtensions(t testing.TB, s vcekSpec) []pkix.Extension {
	name := s.productName
	if name == "" {
		name = string(s.product) + "-B0"
	}
	hwid := s.hwid
	if hwid == nil {
		if s.product == productTurin {
			hwid = testChipID[:8]
		} else {
			hwid = testChipID[:]
		}
	}
	exts := []pkix.Extension{
		{Id: oidStructVersion, Value: testDERInt(t, 1)},
		{Id: oidProductName, Value: testDERIA5(t, name)},
		{Id: oidBlSPL, Value: testDERInt(t, s.bl)},
		{Id: oidTeeSPL, Value: testDERInt(t, s.tee)},
		{Id: oidSnpSPL, Value: testDERInt(t, s.snp)},
		{Id: oidUcodeSPL, Value: testDERInt(t, s.ucode)},
		{Id: oidHWID, Value: hwid},
	}
	if s.product == productTurin {
		exts = append(exts, pkix.Extension{Id: oidFmcSPL, Value: testDERInt(t, s.fmc)})
	} else {
		for _, oid := range []asn1.ObjectIdentifier{oidSpl4, oidSpl5, oidSpl6, oidSpl7} {
			exts = append(exts, pkix.Extension{Id: oid, Value: testDERInt(t, 0)})
		}
	}
	var out []pkix.Extension
	for _, e := range exts {
		if s.dropExt == nil || !e.Id.Equal(s.dropExt) {
			out = append(out, e)
		}
	}
	return append(out, s.extraExts...)
}

// newTestVCEK makes a VCEK (fresh P-384 key, as each real TCB has its own)
// signed by the product's test ASK.
func newTestVCEK(t testing.TB, s vcekSpec) *testVCEK {
	t.Helper()
	if s.product == "" {
		s.product = productMilan
	}
	root := s.root
	if root == nil {
		root = testRoot(t, s.product, "", "")
	}
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:       big.NewInt(0),
		Subject:            testAMDName("SEV-VCEK"),
		NotBefore:          time.Now().Add(-time.Hour),
		NotAfter:           time.Now().Add(7 * 365 * 24 * time.Hour),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		ExtraExtensions:    testVCEKExtensions(t, s),
	}
	return &testVCEK{cert: mustCert(t, tmpl, root.ask, &key.PublicKey, root.askKey), key: key, root: root}
}

// Two Milan TCBs and their SPLs, written out by hand.
const (
	tcbOld = 0x7308000000000003 // ucode 0x73, snp 8, bl 3: the real ACI sample
	tcbNew = 0xdb18000000000004 // ucode 0xdb (≥ 0x80: DER 02 02 00 db), snp 0x18, bl 4
)

var (
	specOld = vcekSpec{product: productMilan, bl: 3, snp: 8, ucode: 0x73}
	specNew = vcekSpec{product: productMilan, bl: 4, snp: 0x18, ucode: 0xdb}
)

// testReport lays out a report as the firmware would (the layout in
// report.go), signs it with key, and fills the parsed fields tests use.
type reportSpec struct {
	version    uint32
	tcb        uint64
	chipID     [64]byte
	family     uint8
	model      uint8
	signerInfo uint32
	reportData [64]byte
	hostData   [32]byte
}

func buildTestReport(t testing.TB, key *ecdsa.PrivateKey, s reportSpec) []byte {
	t.Helper()
	raw, err := makeTestReport(key, s)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// makeTestReport is buildTestReport for goroutines that have no t.
func makeTestReport(key *ecdsa.PrivateKey, s reportSpec) ([]byte, error) {
	if s.version == 0 {
		s.version = 2
	}
	raw := make([]byte, reportSize)
	le := binary.LittleEndian
	le.PutUint32(raw[0x000:], s.version)
	le.PutUint64(raw[0x008:], 0x3001F)
	le.PutUint32(raw[0x034:], 1)
	le.PutUint64(raw[0x038:], s.tcb)
	le.PutUint32(raw[0x048:], s.signerInfo)
	copy(raw[0x050:], s.reportData[:])
	copy(raw[0x0C0:], s.hostData[:])
	le.PutUint64(raw[0x180:], s.tcb)
	if s.version >= 3 {
		raw[0x188], raw[0x189], raw[0x18A] = s.family, s.model, 1
	}
	copy(raw[0x1A0:], s.chipID[:])
	le.PutUint64(raw[0x1E0:], s.tcb)
	le.PutUint64(raw[0x1F0:], s.tcb)
	return raw, signReportBytes(key, raw)
}

// signTestReport writes R and S, little-endian, over bytes [0, 0x2A0).
func signTestReport(t testing.TB, key *ecdsa.PrivateKey, raw []byte) {
	t.Helper()
	if err := signReportBytes(key, raw); err != nil {
		t.Fatal(err)
	}
}

func signReportBytes(key *ecdsa.PrivateKey, raw []byte) error {
	digest := sha512.Sum384(raw[:signedPartSize])
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return err
	}
	for i, n := range []*big.Int{r, s} {
		be := n.FillBytes(make([]byte, 72))
		for j := range be {
			raw[signedPartSize+i*72+j] = be[71-j]
		}
	}
	return nil
}

// signingDevice is a teeDevice test double: the firmware of a platform
// whose VCEK is v, at TCB tcb.
type signingDevice struct {
	v        *testVCEK
	tcb      uint64
	hostData [32]byte
	calls    atomic.Int64
}

func (d *signingDevice) Name() string   { return "test signing device" }
func (d *signingDevice) Emulated() bool { return false }
func (d *signingDevice) GetReport(ctx context.Context, reportData [64]byte) ([]byte, error) {
	d.calls.Add(1)
	return makeTestReport(d.v.key, reportSpec{tcb: d.tcb, chipID: testChipID, reportData: reportData, hostData: d.hostData})
}

// decodeTestReport fills the snpReport fields the certificate code reads,
// by offset, independently of parseReport.
func decodeTestReport(raw []byte) *snpReport {
	le := binary.LittleEndian
	r := &snpReport{
		Version:       le.Uint32(raw[0x000:]),
		Policy:        le.Uint64(raw[0x008:]),
		SignatureAlgo: le.Uint32(raw[0x034:]),
		CurrentTCB:    le.Uint64(raw[0x038:]),
		SignerInfo:    le.Uint32(raw[0x048:]),
		ReportedTCB:   le.Uint64(raw[0x180:]),
		CPUIDFamily:   raw[0x188],
		CPUIDModel:    raw[0x189],
		CPUIDStepping: raw[0x18A],
		CommittedTCB:  le.Uint64(raw[0x1E0:]),
		LaunchTCB:     le.Uint64(raw[0x1F0:]),
		Raw:           raw,
	}
	copy(r.ReportData[:], raw[0x050:])
	copy(r.HostData[:], raw[0x0C0:])
	copy(r.ChipID[:], raw[0x1A0:])
	copy(r.SignatureR[:], raw[0x2A0:])
	copy(r.SignatureS[:], raw[0x2E8:])
	return r
}

func testReport(t testing.TB, v *testVCEK, s reportSpec) *snpReport {
	return decodeTestReport(buildTestReport(t, v.key, s))
}

// thimJSON renders certificates as the THIM endpoint does.
func thimJSON(t testing.TB, vcek, ask, ark *x509.Certificate, tcbm string) []byte {
	t.Helper()
	b, err := json.Marshal(thimDocument{
		VCEKCert:         pemCert(vcek),
		CertificateChain: pemCert(ask) + pemCert(ark),
		TCBM:             tcbm,
		CacheControl:     "86400",
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pemCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// scriptedAnswer is an answer a stand-in gives before behaving normally.
type scriptedAnswer struct {
	status     int
	retryAfter string
	body       string
}

// standIn is the common part of the certificate-service stand-ins: calls
// counted per kind, a script of failures served first, and optionally a
// gate that holds answers until the test opens it.
type standIn struct {
	srv    *httptest.Server
	mu     sync.Mutex
	script []scriptedAnswer
	calls  map[string]int
	total  atomic.Int64
	gate   chan struct{}
	hang   bool
}

func (s *standIn) count(kind string) {
	s.mu.Lock()
	s.calls[kind]++
	s.mu.Unlock()
	s.total.Add(1)
}

func (s *standIn) callsOf(kind string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[kind]
}

func (s *standIn) scripted(w http.ResponseWriter, r *http.Request) bool {
	if s.gate != nil {
		select {
		case <-s.gate:
		case <-r.Context().Done():
			return true
		}
	}
	if s.hang {
		<-r.Context().Done()
		return true
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.script) == 0 {
		return false
	}
	a := s.script[0]
	s.script = s.script[1:]
	if a.retryAfter != "" {
		w.Header().Set("Retry-After", a.retryAfter)
	}
	w.WriteHeader(a.status)
	fmt.Fprint(w, a.body)
	return true
}

// host is host:port of the stand-in, as certcache.endpoint takes it.
func (s *standIn) host() string {
	return strings.TrimPrefix(s.srv.URL, "https://")
}

// kdsStandIn answers like AMD KDS: a DER VCEK only for the exact product,
// hwid and SPL query it was registered with; PEM ASK+ARK for cert_chain;
// 404 for anything else.
type kdsStandIn struct {
	standIn
	vceks  map[string][]byte
	chains map[string][]byte
}

func kdsQueryKey(product snpProduct, hwid string, fmc, bl, tee, snp, ucode int) string {
	k := fmt.Sprintf("%s/%s?blSPL=%d&teeSPL=%d&snpSPL=%d&ucodeSPL=%d", product, hwid, bl, tee, snp, ucode)
	if product == productTurin {
		k += fmt.Sprintf("&fmcSPL=%d", fmc)
	}
	return k
}

func newKDSStandIn(t testing.TB) *kdsStandIn {
	k := &kdsStandIn{standIn: standIn{calls: map[string]int{}}, vceks: map[string][]byte{}, chains: map[string][]byte{}}
	k.srv = httptest.NewTLSServer(http.HandlerFunc(k.serve))
	t.Cleanup(k.srv.Close)
	return k
}

// addVCEK registers a VCEK under the URL KDS would serve it at.
func (k *kdsStandIn) addVCEK(v *testVCEK, s vcekSpec) {
	k.addCerts(s, v.cert, v.root.ask, v.root.ark)
}

// addCerts registers any VCEK for testChipID and the SPLs of s, and the
// product's ASK and ARK.
func (k *kdsStandIn) addCerts(s vcekSpec, vcek, ask, ark *x509.Certificate) {
	hwid := hex.EncodeToString(testChipID[:])
	if s.product == productTurin {
		hwid = hex.EncodeToString(testChipID[:8])
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.vceks[kdsQueryKey(s.product, hwid, s.fmc, s.bl, s.tee, s.snp, s.ucode)] = vcek.Raw
	k.chains[string(s.product)] = []byte(pemCert(ask) + pemCert(ark))
}

func (k *kdsStandIn) serve(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/vcek/v1/")
	if r.Method != http.MethodGet || !ok {
		k.count("other")
		http.NotFound(w, r)
		return
	}
	product, tail, _ := strings.Cut(rest, "/")
	if tail == "cert_chain" {
		k.count("chain")
		if k.scripted(w, r) {
			return
		}
		k.mu.Lock()
		chain, ok := k.chains[product]
		k.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(chain)
		return
	}
	k.count("vcek")
	if k.scripted(w, r) {
		return
	}
	q := r.URL.Query()
	spl := func(name string) int {
		var v int
		if len(q[name]) != 1 {
			return -1
		}
		if _, err := fmt.Sscanf(q.Get(name), "%d", &v); err != nil {
			return -1
		}
		return v
	}
	wantParams := 4
	if product == string(productTurin) {
		wantParams = 5
	}
	key := kdsQueryKey(snpProduct(product), tail, spl("fmcSPL"), spl("blSPL"), spl("teeSPL"), spl("snpSPL"), spl("ucodeSPL"))
	k.mu.Lock()
	der, ok := k.vceks[key]
	k.mu.Unlock()
	if !ok || len(q) != wantParams {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-cert")
	w.Write(der)
}

// thimStandIn answers like the local THIM endpoint, which refuses requests
// without "Metadata: true" as IMDS does.
type thimStandIn struct {
	standIn
	doc []byte
}

func newTHIMStandIn(t testing.TB, doc []byte) *thimStandIn {
	s := &thimStandIn{standIn: standIn{calls: map[string]int{}}, doc: doc}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *thimStandIn) serve(w http.ResponseWriter, r *http.Request) {
	s.count("thim")
	if r.Method != http.MethodGet || r.URL.Path != thimPath {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("Metadata") != "true" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"Bad request. Required metadata header not specified"}`)
		return
	}
	if s.scripted(w, r) {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(s.doc)
}

// azCacheStandIn answers like the Azure certificate cache: PEM for the
// exact tee, chip id and TCB path with an api-version, 404 otherwise.
type azCacheStandIn struct {
	standIn
	entries map[string]string // "{tee}/certificates/{chip}/{tcb}" → PEM
	lastURL atomic.Value
}

func newAzCacheStandIn(t testing.TB) *azCacheStandIn {
	s := &azCacheStandIn{standIn: standIn{calls: map[string]int{}}, entries: map[string]string{}}
	s.srv = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *azCacheStandIn) add(tee string, tcbHex string, pemText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entries[tee+"/certificates/"+hex.EncodeToString(testChipID[:])+"/"+tcbHex] = pemText
}

func (s *azCacheStandIn) serve(w http.ResponseWriter, r *http.Request) {
	s.count("cache")
	s.lastURL.Store(r.URL.String())
	if s.scripted(w, r) {
		return
	}
	s.mu.Lock()
	body, ok := s.entries[strings.TrimPrefix(r.URL.Path, "/")]
	s.mu.Unlock()
	if r.Method != http.MethodGet || !ok || r.URL.Query().Get("api-version") == "" {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, `{"error":{"code":"NotFound","message":"certificate not found"}}`)
		return
	}
	fmt.Fprint(w, body)
}

// trustPool trusts the stand-ins' TLS certificates.
func trustPool(servers ...*httptest.Server) *x509.CertPool {
	pool := x509.NewCertPool()
	for _, s := range servers {
		pool.AddCert(s.Certificate())
	}
	return pool
}

// fastRetry keeps tests quick while still exercising the retry loop.
var fastRetry = retryPolicy{Attempts: 4, BaseDelay: time.Millisecond, MaxDelay: 3 * time.Second}

// newTestProvider builds a provider against stand-ins.
func newTestProvider(t testing.TB, cfg certCacheConfig, local func(context.Context) (*platformCerts, error), servers ...*httptest.Server) *certProvider {
	t.Helper()
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("provider log:\n%s", logs)
		}
	})
	p := newCertProvider(cfg, local, newUpstreamClient(trustPool(servers...)), newLogger(logs, levelTrace))
	if p.srcErr != nil {
		t.Fatalf("certcache %+v: %v", cfg, p.srcErr)
	}
	p.retry = fastRetry
	return p
}

func staticLocal(pc *platformCerts) func(context.Context) (*platformCerts, error) {
	return func(context.Context) (*platformCerts, error) { return pc, nil }
}

// hostOfURL is host:port of a URL.
func hostOfURL(t testing.TB, raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
