package main

import (
	"bytes"
	"context"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestTCBLayouts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		product snpProduct
		tcb     uint64
		want    tcbParts
	}{
		{productMilan, 0x7308000000000003, tcbParts{BL: 3, SNP: 8, Ucode: 0x73}},
		{productGenoa, 0xdb18000000000004, tcbParts{BL: 4, SNP: 0x18, Ucode: 0xdb}},
		{productMilan, 0x0102030405060708, tcbParts{BL: 8, TEE: 7, Reserved: [4]uint8{6, 5, 4, 3}, SNP: 2, Ucode: 1}},
		// Turin: fmc, bl, tee, snp in bytes 0-3, microcode in byte 7.
		{productTurin, 0x4800000016000501, tcbParts{FMC: 1, BL: 5, TEE: 0, SNP: 0x16, Ucode: 0x48}},
		{productTurin, 0x0102030405060708, tcbParts{FMC: 8, BL: 7, TEE: 6, SNP: 5, Reserved: [4]uint8{4, 3, 2, 0}, Ucode: 1}},
	}
	for _, tc := range tests {
		got := decomposeTCB(tc.product, tc.tcb)
		if got != tc.want {
			t.Errorf("decomposeTCB(%s, %016x) = %+v, want %+v", tc.product, tc.tcb, got, tc.want)
		}
		if back := composeTCB(tc.product, tc.want); back != tc.tcb {
			t.Errorf("composeTCB(%s, %+v) = %016x, want %016x", tc.product, tc.want, back, tc.tcb)
		}
	}
	if got, want := formatTCB(productMilan, 0x7308000000000003), "7308000000000003 (Milan layout: bl=3 tee=0 snp=8 ucode=115)"; got != want {
		t.Errorf("formatTCB = %q, want %q", got, want)
	}
	if got, want := formatTCB(productTurin, 0x4800000016000501), "4800000016000501 (Turin layout: fmc=1 bl=5 tee=0 snp=22 ucode=72)"; got != want {
		t.Errorf("formatTCB = %q, want %q", got, want)
	}
}

func TestDERUint8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		hex     string
		want    uint8
		wantErr bool
	}{
		{"020100", 0, false},
		{"020173", 0x73, false},
		{"02017f", 0x7f, false},
		{"02020080", 0x80, false}, // ≥ 0x80 needs a leading zero byte
		{"020200db", 0xdb, false},
		{"020200ff", 0xff, false},
		{"0201db", 0, true},     // that is -37
		{"02020100", 0, true},   // 256
		{"02020005", 0, true},   // not minimal DER
		{"02010500", 0, true},   // trailing byte
		{"040105", 0, true},     // OCTET STRING, not INTEGER
		{"", 0, true},           // nothing
		{"0203000100", 0, true}, // not minimal and too large
	}
	for _, tc := range tests {
		b, _ := hex.DecodeString(tc.hex)
		got, err := derUint8(b)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("derUint8(%s) = %d, %v; want %d, error %v", tc.hex, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestVCEKExtensionsHighSPLsAreDERIntegers(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specNew)
	// The test must really carry 02 02 00 db, or it proves nothing about
	// reading byte index 2.
	var ucodeRaw []byte
	for _, e := range v.cert.Extensions {
		if e.Id.Equal(oidUcodeSPL) {
			ucodeRaw = e.Value
		}
	}
	if !bytes.Equal(ucodeRaw, []byte{0x02, 0x02, 0x00, 0xdb}) {
		t.Fatalf("ucodeSPL extension is %x, want 020200db", ucodeRaw)
	}
	info, err := parseVCEKExtensions(v.cert)
	if err != nil {
		t.Fatal(err)
	}
	if info.TCB != tcbNew || info.Parts.Ucode != 0xdb || info.ProductName != "Milan-B0" || info.Product != productMilan {
		t.Fatalf("info = %+v, want TCB %016x", info, uint64(tcbNew))
	}
	if !bytes.Equal(info.HWID, testChipID[:]) {
		t.Fatalf("hwid = %x", info.HWID)
	}
}

func TestVCEKExtensionsTurin(t *testing.T) {
	t.Parallel()
	s := vcekSpec{product: productTurin, fmc: 1, bl: 5, tee: 0, snp: 0x16, ucode: 0x48}
	v := newTestVCEK(t, s)
	info, err := parseVCEKExtensions(v.cert)
	if err != nil {
		t.Fatal(err)
	}
	if info.TCB != 0x4800000016000501 || info.Product != productTurin || !bytes.Equal(info.HWID, testChipID[:8]) {
		t.Fatalf("info = %+v (TCB %016x)", info, info.TCB)
	}
	if !hwidMatchesChip(info.HWID, testChipID) {
		t.Fatal("Turin hwid does not match its chip")
	}
	s.dropExt = oidFmcSPL
	if _, err := parseVCEKExtensions(newTestVCEK(t, s).cert); err == nil || !strings.Contains(err.Error(), "fmcSPL") {
		t.Fatalf("Turin VCEK without fmcSPL: err = %v", err)
	}
}

func TestVCEKExtensionsErrors(t *testing.T) {
	t.Parallel()
	octetHWID, _ := asn1.Marshal(testChipID[:])
	tests := []struct {
		name    string
		spec    vcekSpec
		wantErr string
	}{
		{"no productName", vcekSpec{dropExt: oidProductName}, "productName"},
		{"no snpSPL", vcekSpec{dropExt: oidSnpSPL}, "snpSPL"},
		{"no ucodeSPL", vcekSpec{dropExt: oidUcodeSPL}, "ucodeSPL"},
		{"unknown product", vcekSpec{productName: "Naples-B0"}, "not a known product"},
		{"duplicate extension", vcekSpec{extraExts: []pkix.Extension{{Id: oidBlSPL, Value: []byte{2, 1, 1}}}}, ""},
		{"short hwid", vcekSpec{hwid: testChipID[:8]}, "hardware id"},
		{"no hwid nor cspId", vcekSpec{dropExt: oidHWID}, "neither"},
		{"UTF8String product name", vcekSpec{dropExt: oidProductName, extraExts: []pkix.Extension{{Id: oidProductName, Value: []byte{0x0c, 8, 'M', 'i', 'l', 'a', 'n', '-', 'B', '0'}}}}, "IA5String"},
		{"SPL out of range", vcekSpec{dropExt: oidTeeSPL, extraExts: []pkix.Extension{{Id: oidTeeSPL, Value: []byte{2, 2, 1, 0}}}}, "teeSPL"},
		{"OCTET STRING hwid accepted", vcekSpec{hwid: octetHWID}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "duplicate extension" {
				// x509.CreateCertificate refuses duplicate extensions itself;
				// check the decoder on a hand-edited certificate instead.
				c := *newTestVCEK(t, vcekSpec{}).cert
				c.Extensions = append(append([]pkix.Extension(nil), c.Extensions...), pkix.Extension{Id: oidBlSPL, Value: []byte{2, 1, 1}})
				if _, err := parseVCEKExtensions(&c); err == nil || !strings.Contains(err.Error(), "twice") {
					t.Fatalf("err = %v", err)
				}
				return
			}
			_, err := parseVCEKExtensions(newTestVCEK(t, tc.spec).cert)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func TestKDSAndAzCacheURLs(t *testing.T) {
	t.Parallel()
	var chip [64]byte
	for i := range chip {
		chip[i] = byte(i)
	}
	chipHex := hex.EncodeToString(chip[:])
	tests := []struct{ got, want string }{
		{kdsVCEKURL("https://kdsintf.amd.com", productMilan, chip, 0x7308000000000003),
			"https://kdsintf.amd.com/vcek/v1/Milan/" + chipHex + "?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115"},
		{kdsVCEKURL("https://kdsintf.amd.com", productGenoa, chip, 0xdb18000000000004),
			"https://kdsintf.amd.com/vcek/v1/Genoa/" + chipHex + "?blSPL=4&teeSPL=0&snpSPL=24&ucodeSPL=219"},
		{kdsVCEKURL("https://kdsintf.amd.com", productTurin, chip, 0x4800000016000501),
			"https://kdsintf.amd.com/vcek/v1/Turin/0001020304050607?fmcSPL=1&blSPL=5&teeSPL=0&snpSPL=22&ucodeSPL=72"},
		{kdsChainURL("https://kds.example/proxy", productTurin), "https://kds.example/proxy/vcek/v1/Turin/cert_chain"},
		{azCacheURL("https://global.acccache.azure.net", "SevSnpVM", chip, 0x7308000000000003, "2020-10-15-preview", "ConfidentialACI"),
			"https://global.acccache.azure.net/SevSnpVM/certificates/" + chipHex + "/7308000000000003?api-version=2020-10-15-preview&clientId=ConfidentialACI"},
		{azCacheURL("https://c.example", "SevSnpVM", chip, 0x0008000000000003, "2020-10-15-preview", ""),
			"https://c.example/SevSnpVM/certificates/" + chipHex + "/8000000000003?api-version=2020-10-15-preview"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got  %s\nwant %s", tc.got, tc.want)
		}
	}
}

func TestCertSourceConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     certCacheConfig
		want    certSource
		wantErr string
	}{
		{"no certcache is local THIM over link-local http", certCacheConfig{},
			certSource{Kind: "LocalTHIM", Base: "http://169.254.169.254/metadata/THIM/amd/certification"}, ""},
		{"THIM host alone gets the THIM path", certCacheConfig{EndpointType: "LocalTHIM", Endpoint: "169.254.169.254"},
			certSource{Kind: "LocalTHIM", Base: "http://169.254.169.254/metadata/THIM/amd/certification"}, ""},
		{"THIM elsewhere is https", certCacheConfig{EndpointType: "LocalTHIM", Endpoint: "thim.example:8443/x/"},
			certSource{Kind: "LocalTHIM", Base: "https://thim.example:8443/x"}, ""},
		{"THIM over plain http elsewhere is refused", certCacheConfig{EndpointType: "LocalTHIM", Endpoint: "http://thim.example"}, certSource{}, "scheme"},
		{"AMD default", certCacheConfig{EndpointType: "AMD", TEEType: "Genoa"},
			certSource{Kind: "AMD", Base: "https://kdsintf.amd.com", Product: productGenoa}, ""},
		{"AMD with path and scheme", certCacheConfig{EndpointType: "AMD", Endpoint: "https://KDS.example/amd/"},
			certSource{Kind: "AMD", Base: "https://kds.example/amd"}, ""},
		{"AMD over http is refused", certCacheConfig{EndpointType: "AMD", Endpoint: "http://kds.example"}, certSource{}, "scheme"},
		{"AzCache defaults", certCacheConfig{EndpointType: "AzCache"},
			certSource{Kind: "AzCache", Base: "https://global.acccache.azure.net", TEE: "SevSnpVM", APIVersion: "2020-10-15-preview", ClientID: "ConfidentialACI"}, ""},
		{"AzCache upstream-style values", certCacheConfig{EndpointType: "AzCache", Endpoint: "americas.test.acccache.azure.net", TEEType: "SevSnpVM", APIVersion: "api-version=2020-10-15-preview", ClientID: "clientId=Mine"},
			certSource{Kind: "AzCache", Base: "https://americas.test.acccache.azure.net", TEE: "SevSnpVM", APIVersion: "2020-10-15-preview", ClientID: "Mine"}, ""},
		{"AzCache bad api_version", certCacheConfig{EndpointType: "AzCache", APIVersion: "version=1"}, certSource{}, "api_version"},
		{"AzCache bad tee", certCacheConfig{EndpointType: "AzCache", TEEType: "../x"}, certSource{}, "tee_type"},
		{"query in endpoint", certCacheConfig{EndpointType: "AMD", Endpoint: "kds.example?x=1"}, certSource{}, "query"},
		{"unknown type", certCacheConfig{EndpointType: "Other"}, certSource{}, "endpoint_type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := newCertSource(tc.cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if *got != tc.want {
				t.Fatalf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestReportProduct(t *testing.T) {
	t.Parallel()
	amd := &certProvider{src: &certSource{Kind: sourceAMD, Product: productGenoa}}
	none := &certProvider{src: &certSource{Kind: sourceLocalTHIM}}
	turinVCEK := &vcekInfo{Product: productTurin}
	tests := []struct {
		name  string
		p     *certProvider
		rep   snpReport
		local *vcekInfo
		want  snpProduct
	}{
		{"v3 Milan", none, snpReport{Version: 3, CPUIDFamily: 0x19, CPUIDModel: 0x01}, turinVCEK, productMilan},
		{"v3 Genoa", none, snpReport{Version: 3, CPUIDFamily: 0x19, CPUIDModel: 0x11}, nil, productGenoa},
		{"v5 Turin", none, snpReport{Version: 5, CPUIDFamily: 0x1A, CPUIDModel: 0x02}, nil, productTurin},
		{"v3 unknown model falls back to the VCEK", none, snpReport{Version: 3, CPUIDFamily: 0x19, CPUIDModel: 0x99}, turinVCEK, productTurin},
		{"v2 uses the local VCEK", amd, snpReport{Version: 2}, turinVCEK, productTurin},
		{"v2 without local uses tee_type", amd, snpReport{Version: 2}, nil, productGenoa},
		{"v2 with nothing is Milan", none, snpReport{Version: 2}, nil, productMilan},
	}
	for _, tc := range tests {
		if got := tc.p.reportProduct(&tc.rep, tc.local); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}
}

func TestParseTHIM(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specOld)
	ask, ark := v.root.ask, v.root.ark
	good := thimJSON(t, v.cert, ask, ark, "7308000000000003")
	other := testRoot(t, productMilan, "Root One", "Intermediate One")
	vOther := newTestVCEK(t, vcekSpec{product: productMilan, bl: 3, snp: 8, ucode: 0x73, root: other})
	doc := func(edit func(d map[string]any)) []byte {
		var d map[string]any
		if err := json.Unmarshal(good, &d); err != nil {
			t.Fatal(err)
		}
		edit(d)
		b, _ := json.Marshal(d)
		return b
	}
	tests := []struct {
		name    string
		in      []byte
		wantErr string
	}{
		{"good", good, ""},
		{"lower-case tcbm", thimJSON(t, newTestVCEK(t, specNew).cert, ask, ark, "db18000000000004"), ""},
		{"upper-case tcbm", thimJSON(t, newTestVCEK(t, specNew).cert, ask, ark, "DB18000000000004"), ""},
		{"ARK before ASK", thimJSON(t, v.cert, ark, ask, "7308000000000003"), ""},
		{"chain told apart by signatures", thimJSON(t, vOther.cert, other.ark, other.ask, "7308000000000003"), ""},
		{"extra fields ignored", doc(func(d map[string]any) { d["future"] = 1 }), ""},
		{"missing vcekCert", doc(func(d map[string]any) { delete(d, "vcekCert") }), `missing field "vcekCert"`},
		{"missing certificateChain", doc(func(d map[string]any) { d["certificateChain"] = "" }), `missing field "certificateChain"`},
		{"missing tcbm", doc(func(d map[string]any) { delete(d, "tcbm") }), `missing field "tcbm"`},
		{"short tcbm", doc(func(d map[string]any) { d["tcbm"] = "7308" }), "16 hex digits"},
		{"non-hex tcbm", doc(func(d map[string]any) { d["tcbm"] = "73080000000000zz" }), "16 hex digits"},
		{"tcbm disagrees with the VCEK", doc(func(d map[string]any) { d["tcbm"] = "7308000000000004" }), "disagrees"},
		{"garbage PEM", doc(func(d map[string]any) {
			d["vcekCert"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
		}), "vcekCert"},
		{"text instead of PEM", doc(func(d map[string]any) { d["vcekCert"] = "hello" }), "unexpected text"},
		{"private key block", doc(func(d map[string]any) {
			d["certificateChain"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		}), "PRIVATE KEY"},
		{"two VCEKs", doc(func(d map[string]any) { d["vcekCert"] = pemCert(v.cert) + pemCert(v.cert) }), "exactly one VCEK"},
		{"ASK alone", doc(func(d map[string]any) { d["certificateChain"] = pemCert(ask) }), "want ASK then ARK"},
		{"two ASKs", doc(func(d map[string]any) { d["certificateChain"] = pemCert(ask) + pemCert(ask) }), "cannot tell ASK from ARK"},
		{"ASK in place of the VCEK", doc(func(d map[string]any) { d["vcekCert"] = pemCert(ask) }), "productName"},
		{"not JSON", []byte("<html>"), "not the expected object"},
		{"trailing data", append(append([]byte(nil), good...), []byte(`{}`)...), "after the object"},
		{"oversized", append(append([]byte(nil), good...), bytes.Repeat([]byte(" "), maxTHIMSize)...), "more than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := parseTHIM(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pc.ASK == nil || pc.ARK == nil || pc.ASK.Subject.CommonName == pc.ARK.Subject.CommonName {
				t.Fatalf("ASK/ARK not told apart: %+v", pc)
			}
			if !bytes.Equal(pc.ARK.RawSubject, pc.ARK.RawIssuer) {
				t.Fatalf("ARK %q is not the self-signed one", pc.ARK.Subject.CommonName)
			}
			chain, err := parsePEMCertificates(pc.ChainPEM)
			if err != nil || len(chain) != 3 || !chain[0].Equal(pc.VCEK) || !chain[1].Equal(pc.ASK) || !chain[2].Equal(pc.ARK) {
				t.Fatalf("ChainPEM is not VCEK, ASK, ARK: %v", err)
			}
			if err := verifyChain(pc); err != nil {
				t.Fatal(err)
			}
		})
	}
	pc, err := parseTHIM(good)
	if err != nil || pc.TCB != tcbOld {
		t.Fatalf("TCB = %016x, %v", pc.TCB, err)
	}
}

func FuzzParseTHIM(f *testing.F) {
	v := newTestVCEK(f, specOld)
	good := thimJSON(f, v.cert, v.root.ask, v.root.ark, "7308000000000003")
	f.Add(good)
	if real, err := os.ReadFile(filepath.Join(sharedTestdata, "uvm_host_amd_certificate.json")); err == nil {
		f.Add(real)
	}
	f.Add([]byte(`{"vcekCert":"","certificateChain":"","tcbm":"7308000000000003"}`))
	f.Add([]byte(`{"vcekCert":"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----","certificateChain":"x","tcbm":"0"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pc, err := parseTHIM(b)
		if err != nil {
			return
		}
		if pc.VCEK == nil || pc.ASK == nil || pc.ARK == nil || len(pc.ChainPEM) == 0 {
			t.Fatalf("parseTHIM accepted incomplete certificates: %+v", pc)
		}
		info, err := parseVCEKExtensions(pc.VCEK)
		if err != nil || info.TCB != pc.TCB {
			t.Fatalf("accepted a VCEK whose TCB does not match tcbm: %v", err)
		}
	})
}

func TestVerifyEvidence(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specNew)
	good := func() (*snpReport, *platformCerts) {
		return testReport(t, v, reportSpec{tcb: tcbNew, chipID: testChipID}), v.certs(tcbNew)
	}
	rep, pc := good()
	if err := verifyEvidence(rep, pc); err != nil {
		t.Fatalf("good evidence: %v", err)
	}
	// A report with a masked CHIP_ID verifies too.
	if err := verifyEvidence(testReport(t, v, reportSpec{tcb: tcbNew}), pc); err != nil {
		t.Fatalf("masked CHIP_ID: %v", err)
	}

	otherVCEK := newTestVCEK(t, specNew)
	otherRoot := testOtherRoot(t, productMilan)
	tests := []struct {
		name    string
		mutate  func(rep *snpReport, pc *platformCerts)
		wantErr string
	}{
		{"tampered byte", func(rep *snpReport, pc *platformCerts) { rep.Raw[0x90] ^= 1 }, "does not verify"},
		{"other VCEK", func(rep *snpReport, pc *platformCerts) { pc.VCEK = otherVCEK.cert }, "does not verify"},
		{"ASK from another ARK", func(rep *snpReport, pc *platformCerts) { pc.ASK = otherRoot.ask }, "not signed by the ARK"},
		{"VCEK not signed by the ASK", func(rep *snpReport, pc *platformCerts) { pc.ASK, pc.ARK = otherRoot.ask, otherRoot.ark }, "VCEK is not signed by the ASK"},
		{"ARK not self-signed", func(rep *snpReport, pc *platformCerts) { pc.ARK = pc.ASK }, "self-signed"},
		{"TCB handed out differs", func(rep *snpReport, pc *platformCerts) { pc.TCB = tcbOld }, "REPORTED_TCB"},
		{"VLEK-signed report", func(rep *snpReport, pc *platformCerts) { rep.SignerInfo = 1 << 2 }, "VLEK"},
		{"other algorithm", func(rep *snpReport, pc *platformCerts) { rep.SignatureAlgo = 2 }, "SIGNATURE_ALGO"},
		{"missing ASK", func(rep *snpReport, pc *platformCerts) { pc.ASK = nil }, "incomplete"},
		{"truncated raw", func(rep *snpReport, pc *platformCerts) { rep.Raw = rep.Raw[:100] }, "raw bytes"},
		{"another chip", func(rep *snpReport, pc *platformCerts) {
			rep.ChipID[0] ^= 1
			copy(rep.Raw[0x1A0:], rep.ChipID[:])
			signTestReport(t, v.key, rep.Raw)
			*rep = *decodeTestReport(rep.Raw)
		}, "CHIP_ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, pc := good()
			tc.mutate(rep, pc)
			err := verifyEvidence(rep, pc)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}

	// A report whose TCB is not the VCEK's: signed by the right key, but
	// the VCEK does not certify that TCB.
	rep = testReport(t, v, reportSpec{tcb: tcbOld, chipID: testChipID})
	if err := verifyEvidence(rep, v.certs(tcbOld)); err == nil || !strings.Contains(err.Error(), "db18000000000004") || !strings.Contains(err.Error(), "7308000000000003") {
		t.Fatalf("TCB not certified: err = %v", err)
	}
}

// kdsFixture: local THIM certificates for tcbOld, a report at tcbNew, and a
// KDS stand-in that has the VCEK for tcbNew.
type kdsFixture struct {
	kds      *kdsStandIn
	old, new *testVCEK
	rep      *snpReport
	p        *certProvider
	localN   int
	localMu  sync.Mutex
}

func newKDSFixture(t *testing.T) *kdsFixture {
	f := &kdsFixture{kds: newKDSStandIn(t), old: newTestVCEK(t, specOld), new: newTestVCEK(t, specNew)}
	f.kds.addVCEK(f.new, specNew)
	f.kds.addVCEK(f.old, specOld)
	f.rep = testReport(t, f.new, reportSpec{tcb: tcbNew, chipID: testChipID})
	local := f.old.certs(tcbOld)
	f.p = newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: f.kds.host()}, func(context.Context) (*platformCerts, error) {
		f.localMu.Lock()
		f.localN++
		f.localMu.Unlock()
		return local, nil
	}, f.kds.srv)
	return f
}

func TestCertProviderUsesMatchingLocalCertificates(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	rep := testReport(t, f.old, reportSpec{tcb: tcbOld, chipID: testChipID})
	for range 3 {
		pc, err := f.p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if !pc.VCEK.Equal(f.old.cert) {
			t.Fatal("not the local VCEK")
		}
	}
	if n := f.kds.total.Load(); n != 0 {
		t.Fatalf("%d calls to KDS, want none", n)
	}
	if f.localN != 1 {
		t.Fatalf("local source called %d times, want once", f.localN)
	}
}

func TestCertProviderRefetchesFromKDSOnTCBMismatch(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	pc, err := f.p.forReport(context.Background(), f.rep)
	if err != nil {
		t.Fatal(err)
	}
	if pc.TCB != tcbNew || !pc.VCEK.Equal(f.new.cert) {
		t.Fatalf("got TCB %016x", pc.TCB)
	}
	if err := verifyEvidence(f.rep, pc); err != nil {
		t.Fatal(err)
	}
	if f.kds.callsOf("vcek") != 1 || f.kds.callsOf("chain") != 1 {
		t.Fatalf("calls = %v", f.kds.calls)
	}
	// Cache hit: no second call.
	if _, err := f.p.forReport(context.Background(), f.rep); err != nil {
		t.Fatal(err)
	}
	if n := f.kds.total.Load(); n != 2 {
		t.Fatalf("%d calls after a cache hit, want still 2", n)
	}
}

func TestCertProviderRefetchesWhenLocalVCEKIsForAnotherChip(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	// Same TCB as the local certificates, but its VCEK names another chip.
	otherChip := testChipID
	otherChip[5] ^= 0xff
	local := newTestVCEK(t, vcekSpec{product: productMilan, bl: 4, snp: 0x18, ucode: 0xdb, hwid: otherChip[:]})
	p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: f.kds.host()}, staticLocal(local.certs(tcbNew)), f.kds.srv)
	pc, err := p.forReport(context.Background(), f.rep)
	if err != nil {
		t.Fatal(err)
	}
	if !pc.VCEK.Equal(f.new.cert) || f.kds.callsOf("vcek") != 1 {
		t.Fatalf("did not refetch: calls %v", f.kds.calls)
	}
}

func TestCertProviderTurinKDS(t *testing.T) {
	t.Parallel()
	spec := vcekSpec{product: productTurin, fmc: 1, bl: 5, snp: 0x16, ucode: 0x48}
	v := newTestVCEK(t, spec)
	kds := newKDSStandIn(t)
	kds.addVCEK(v, spec)
	rep := testReport(t, v, reportSpec{version: 3, family: 0x1A, model: 0x02, tcb: 0x4800000016000501, chipID: testChipID})
	p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}, nil, kds.srv)
	pc, err := p.forReport(context.Background(), rep)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyEvidence(rep, pc); err != nil {
		t.Fatal(err)
	}
}

func TestCertProviderRetries(t *testing.T) {
	t.Parallel()
	t.Run("503 then success", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 503, body: "busy"}}
		if _, err := f.p.forReport(context.Background(), f.rep); err != nil {
			t.Fatal(err)
		}
		if n := f.kds.callsOf("vcek"); n != 2 {
			t.Fatalf("vcek calls = %d, want 2", n)
		}
	})
	t.Run("429 with Retry-After", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 429, retryAfter: "1", body: "slow down"}}
		retry, waits := recordedRetry(f.p.retry)
		f.p.retry = *retry
		if _, err := f.p.forReport(context.Background(), f.rep); err != nil {
			t.Fatal(err)
		}
		if n := f.kds.callsOf("vcek"); n != 2 {
			t.Fatalf("vcek calls = %d, want 2", n)
		}
		// The test policy's own backoff is a millisecond: only the
		// server's Retry-After explains a pause of a second.
		if got := waits.Delays(); len(got) != 1 || got[0] != time.Second {
			t.Fatalf("paused %v between tries: Retry-After: 1 was not honoured", got)
		}
	})
	t.Run("final 404", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 404, body: "no such VCEK"}}
		_, err := f.p.forReport(context.Background(), f.rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "404") {
			t.Fatalf("err = %v (status %d)", err, statusFor(err))
		}
		if n := f.kds.callsOf("vcek"); n != 1 {
			t.Fatalf("vcek calls = %d, want 1 (404 is final)", n)
		}
	})
	t.Run("503 every time", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		for range 10 {
			f.kds.script = append(f.kds.script, scriptedAnswer{status: 503})
		}
		_, err := f.p.forReport(context.Background(), f.rep)
		if err == nil || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
		if n := f.kds.callsOf("vcek"); n != fastRetry.Attempts {
			t.Fatalf("vcek calls = %d, want %d", n, fastRetry.Attempts)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.script = []scriptedAnswer{{status: 200, body: "<html>not a certificate</html>"}}
		_, err := f.p.forReport(context.Background(), f.rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "unusable") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown TCB is a 404 from KDS", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		rep := testReport(t, f.new, reportSpec{tcb: 0xdb18000000000005, chipID: testChipID})
		_, err := f.p.forReport(context.Background(), rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "404") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("timeout is 504", func(t *testing.T) {
		t.Parallel()
		f := newKDSFixture(t)
		f.kds.hang = true
		f.p.fetches.timeout = 300 * time.Millisecond // the shared fetch gives up soon after the caller
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := f.p.forReport(ctx, f.rep)
		if err == nil || statusFor(err) != http.StatusGatewayTimeout {
			t.Fatalf("err = %v (status %d)", err, statusFor(err))
		}
	})
}

func TestCertProviderConcurrentRequestsShareOneFetch(t *testing.T) {
	t.Parallel()
	f := newKDSFixture(t)
	f.kds.gate = make(chan struct{})
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc, err := f.p.forReport(context.Background(), f.rep)
			if err == nil && pc.TCB != tcbNew {
				err = errors.New("wrong TCB")
			}
			errs <- err
		}()
	}
	// Wait until every caller waits on the one fetch, then let the
	// stand-in answer.
	waitForTakers(t, &f.p.fetches, certKey{chipID: f.rep.ChipID, tcb: f.rep.ReportedTCB}, n)
	close(f.kds.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if f.kds.callsOf("vcek") != 1 || f.kds.callsOf("chain") != 1 {
		t.Fatalf("calls = %v, want one VCEK and one chain fetch", f.kds.calls)
	}
}

func TestCertProviderTHIM(t *testing.T) {
	t.Parallel()
	old, nw := newTestVCEK(t, specOld), newTestVCEK(t, specNew)
	rep := testReport(t, nw, reportSpec{tcb: tcbNew, chipID: testChipID})
	t.Run("fresh THIM matches", func(t *testing.T) {
		thim := newTHIMStandIn(t, thimJSON(t, nw.cert, nw.root.ask, nw.root.ark, "DB18000000000004"))
		p := newTestProvider(t, certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}, staticLocal(old.certs(tcbOld)), thim.srv)
		pc, err := p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyEvidence(rep, pc); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("THIM still has the old TCB", func(t *testing.T) {
		thim := newTHIMStandIn(t, thimJSON(t, old.cert, old.root.ask, old.root.ark, "7308000000000003"))
		p := newTestProvider(t, certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}, staticLocal(old.certs(tcbOld)), thim.srv)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
		for _, want := range []string{"7308000000000003", "db18000000000004", "ucode=115", "ucode=219", "snp=8", "snp=24"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not show %q: %v", want, err)
			}
		}
		// Failures are not cached: the next request asks again.
		p.forReport(context.Background(), rep)
		if n := thim.callsOf("thim"); n != 2 {
			t.Fatalf("THIM calls = %d, want 2", n)
		}
	})
	t.Run("stand-in refuses a request without Metadata: true", func(t *testing.T) {
		thim := newTHIMStandIn(t, nil)
		resp, err := thim.srv.Client().Get(thim.srv.URL + thimPath)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status = %d", resp.StatusCode)
		}
	})
	t.Run("garbage JSON", func(t *testing.T) {
		thim := newTHIMStandIn(t, []byte(`{"vcekCert":"nope"}`))
		p := newTestProvider(t, certCacheConfig{EndpointType: "LocalTHIM", Endpoint: thim.host()}, nil, thim.srv)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || statusFor(err) != http.StatusBadGateway || !strings.Contains(err.Error(), "local THIM") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCertProviderAzCache(t *testing.T) {
	t.Parallel()
	nw := newTestVCEK(t, specNew)
	rep := testReport(t, nw, reportSpec{tcb: tcbNew, chipID: testChipID})
	t.Run("VCEK, ASK and ARK", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		cache.add("SevSnpVM", "db18000000000004", pemCert(nw.cert)+pemCert(nw.root.ask)+pemCert(nw.root.ark))
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv)
		pc, err := p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyEvidence(rep, pc); err != nil {
			t.Fatal(err)
		}
		want := "/SevSnpVM/certificates/" + hex.EncodeToString(testChipID[:]) + "/db18000000000004?api-version=2020-10-15-preview&clientId=ConfidentialACI"
		if got := cache.lastURL.Load(); got != want {
			t.Fatalf("URL = %v, want %s", got, want)
		}
	})
	t.Run("VCEK alone: ASK and ARK from KDS", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		cache.add("SevSnpVM", "db18000000000004", pemCert(nw.cert))
		kds := newKDSStandIn(t)
		kds.addVCEK(nw, specNew)
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv, kds.srv)
		p.kdsBase = kds.srv.URL
		pc, err := p.forReport(context.Background(), rep)
		if err != nil {
			t.Fatal(err)
		}
		if err := verifyEvidence(rep, pc); err != nil {
			t.Fatal(err)
		}
		if kds.callsOf("chain") != 1 || kds.callsOf("vcek") != 0 {
			t.Fatalf("KDS calls = %v", kds.calls)
		}
	})
	t.Run("VCEK alone and KDS fails", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		cache.add("SevSnpVM", "db18000000000004", pemCert(nw.cert))
		kds := newKDSStandIn(t) // knows no chain: 404
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv, kds.srv)
		p.kdsBase = kds.srv.URL
		_, err := p.forReport(context.Background(), rep)
		if err == nil || !strings.Contains(err.Error(), "no ASK and ARK") || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unknown TCB", func(t *testing.T) {
		cache := newAzCacheStandIn(t)
		p := newTestProvider(t, certCacheConfig{EndpointType: "AzCache", Endpoint: cache.host()}, nil, cache.srv)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || !strings.Contains(err.Error(), "certificate not found") || statusFor(err) != http.StatusBadGateway {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCertProviderLocalSource(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specOld)
	rep := testReport(t, v, reportSpec{tcb: tcbOld, chipID: testChipID})
	t.Run("a context error is not remembered", func(t *testing.T) {
		var calls atomic.Int32 // the local source runs on a goroutine of its own
		local := func(ctx context.Context) (*platformCerts, error) {
			if calls.Add(1) == 1 {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return v.certs(tcbOld), nil
		}
		p := newTestProvider(t, certCacheConfig{}, local)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := p.forReport(ctx, rep); !errors.Is(err, context.DeadlineExceeded) || statusFor(err) != http.StatusGatewayTimeout {
			t.Fatalf("err = %v", err)
		}
		pc, err := p.forReport(context.Background(), rep)
		if err != nil || !pc.VCEK.Equal(v.cert) {
			t.Fatalf("second call: %v", err)
		}
		if calls.Load() != 2 {
			t.Fatalf("local called %d times", calls.Load())
		}
	})
	t.Run("another error is remembered and fresh certificates are fetched", func(t *testing.T) {
		kds := newKDSStandIn(t)
		kds.addVCEK(v, specOld)
		calls := 0
		local := func(context.Context) (*platformCerts, error) {
			calls++
			return nil, errors.New("broken")
		}
		p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}, local, kds.srv)
		for range 2 {
			if _, err := p.forReport(context.Background(), rep); err != nil {
				t.Fatal(err)
			}
		}
		if calls != 1 || kds.callsOf("vcek") != 1 {
			t.Fatalf("local calls %d, KDS calls %v", calls, kds.calls)
		}
	})
	t.Run("misconfigured certcache", func(t *testing.T) {
		p := newCertProvider(certCacheConfig{EndpointType: "AMD", Endpoint: "http://kds.example"}, nil, nil, nil)
		_, err := p.forReport(context.Background(), rep)
		if err == nil || !strings.Contains(err.Error(), "misconfigured") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("masked CHIP_ID cannot be asked of KDS", func(t *testing.T) {
		p := newTestProvider(t, certCacheConfig{EndpointType: "AMD", Endpoint: "kds.invalid"}, nil)
		_, err := p.forReport(context.Background(), testReport(t, v, reportSpec{tcb: tcbOld}))
		if err == nil || !strings.Contains(err.Error(), "masked") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestCertCacheIsBounded(t *testing.T) {
	t.Parallel()
	p := &certProvider{cache: map[certKey]*platformCerts{}}
	for i := range certCacheEntries + 5 {
		p.remember(certKey{tcb: uint64(i)}, &platformCerts{})
	}
	if len(p.cache) != certCacheEntries || len(p.order) != certCacheEntries {
		t.Fatalf("cache holds %d (%d in order)", len(p.cache), len(p.order))
	}
	if _, ok := p.cache[certKey{tcb: 0}]; ok {
		t.Fatal("oldest entry not evicted")
	}
}

// The example in the README's configuration section must be what it says.
func TestREADMEConfigExample(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Skipf("no README: %v", err)
	}
	s := string(readme)
	start := strings.Index(s, "\n## Configuration\n")
	end := start + 1 + strings.Index(s[start+1:], "\n## ")
	if start < 0 || end <= start {
		t.Fatal("README has no configuration section")
	}
	var examples int
	for _, line := range strings.Split(s[start:end], "\n") {
		b64, ok := strings.CutPrefix(line, "skr -base64 ")
		if !ok || strings.HasPrefix(b64, `"`) {
			continue
		}
		examples++
		args, err := parseSkrSideCarArgs(b64)
		if err != nil {
			t.Fatalf("README example: %v", err)
		}
		src, err := newCertSource(args.CertCache)
		if err != nil {
			t.Fatalf("README example certcache: %v", err)
		}
		if src.Kind != sourceAMD || src.Base != "https://kdsintf.amd.com" || src.Product != productMilan || args.Identity.ClientID == "" {
			t.Fatalf("README example decodes to %+v, %+v", args, src)
		}
	}
	if examples != 1 {
		t.Fatalf("found %d base64 examples", examples)
	}
}

// A chain remembered as verified must not vouch for any other chain.
func TestVerifiedChainMemoIsPerChain(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specNew)
	other := testOtherRoot(t, productMilan)
	rep := testReport(t, v, reportSpec{tcb: tcbNew, chipID: testChipID})
	good := v.certs(tcbNew)
	for range 2 { // the second time from the memo
		if err := verifyEvidence(rep, good); err != nil {
			t.Fatal(err)
		}
	}
	for name, pc := range map[string]*platformCerts{
		"foreign ASK":         assemblePlatformCerts(v.cert, other.ask, v.root.ark, tcbNew),
		"foreign ARK":         assemblePlatformCerts(v.cert, v.root.ask, other.ark, tcbNew),
		"ASK and ARK swapped": assemblePlatformCerts(v.cert, v.root.ark, v.root.ask, tcbNew),
	} {
		if err := verifyEvidence(rep, pc); err == nil {
			t.Errorf("%s: verified after the good chain was remembered", name)
		}
	}
}
