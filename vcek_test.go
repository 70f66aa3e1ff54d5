package main

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"strings"
	"testing"
)

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

// FuzzParseVCEKExtensions feeds untrusted extension values (as a KDS, THIM
// or AzCache answer could carry them) to the VCEK extension parser: it must
// not panic, and what it accepts must be self-consistent.
func FuzzParseVCEKExtensions(f *testing.F) {
	name, _ := asn1.MarshalWithParams("Milan-B0", "ia5")
	turin, _ := asn1.MarshalWithParams("Turin-B0", "ia5")
	spl, _ := asn1.Marshal(0xDB)
	f.Add(name, spl, bytes.Repeat([]byte{0xC3}, 64), false)
	f.Add(turin, spl, bytes.Repeat([]byte{0xC3}, 8), true)
	f.Add(name, []byte{0x02, 0x02, 0x01, 0x00}, []byte{0x04, 0x01, 0x00}, true)
	f.Fuzz(func(t *testing.T, product, splValue, hwID []byte, withFMC bool) {
		ids := []asn1.ObjectIdentifier{oidBlSPL, oidTeeSPL, oidSnpSPL, oidUcodeSPL, oidSpl4}
		if withFMC {
			ids = append(ids, oidFmcSPL)
		}
		exts := []pkix.Extension{{Id: oidProductName, Value: product}, {Id: oidHWID, Value: hwID}}
		for _, id := range ids {
			exts = append(exts, pkix.Extension{Id: id, Value: splValue})
		}
		info, err := parseVCEKExtensions(&x509.Certificate{Extensions: exts})
		if err != nil {
			return
		}
		if info.TCB != composeTCB(info.Product, info.Parts) {
			t.Errorf("TCB %016x is not the parts %+v in the %s layout", info.TCB, info.Parts, info.Product)
		}
		if n := len(info.HWID); n != hwidSizeMilan && n != hwidSizeTurin {
			t.Errorf("accepted a hwID of %d bytes", n)
		}
		if info.ProductName == "" || info.Product == "" {
			t.Errorf("accepted without a product: %+v", info)
		}
	})
}
