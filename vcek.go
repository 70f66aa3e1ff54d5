package main

import (
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
)

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
