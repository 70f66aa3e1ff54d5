package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
