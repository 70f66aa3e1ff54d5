package main

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
)

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
