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

// parseVCEKExtensions decodes the AMD extensions of a VCEK (or VLEK): the
// product, the security patch levels it certifies and the chip (hwID) or
// cloud provider (cspId) it was issued to.
func parseVCEKExtensions(cert *x509.Certificate) (*vcekInfo, error) {
	if cert == nil {
		return nil, errors.New("no certificate")
	}
	exts, err := amdExtensions(cert)
	if err != nil {
		return nil, err
	}
	info := &vcekInfo{}
	if info.ProductName, info.Product, err = vcekProduct(exts); err != nil {
		return nil, err
	}
	if info.Parts, err = vcekSPLs(exts, info.Product); err != nil {
		return nil, err
	}
	info.TCB = composeTCB(info.Product, info.Parts)
	if info.HWID, info.CSPID, err = vcekHolder(exts, info.Product); err != nil {
		return nil, err
	}
	return info, nil
}

// amdExtensions are the values of cert's extensions under AMD's KDS arc,
// by OID. An extension given twice is refused: which one counts would be
// up to the reader.
func amdExtensions(cert *x509.Certificate) (map[string][]byte, error) {
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
	return exts, nil
}

// vcekProduct reads the productName extension, e.g. "Milan-B0", and the
// product line it names, whose layout the TCB follows.
func vcekProduct(exts map[string][]byte) (string, snpProduct, error) {
	raw, ok := exts[oidProductName.String()]
	if !ok {
		return "", "", fmt.Errorf("no productName extension (%s): not an AMD VCEK", oidProductName)
	}
	name, err := derIA5String(raw)
	if err != nil {
		return "", "", fmt.Errorf("productName extension: %w", err)
	}
	product, ok := parseProductLine(name)
	if !ok {
		return "", "", fmt.Errorf("productName %q is not a known product (Milan, Genoa, Turin)", name)
	}
	return name, product, nil
}

// splExtension is one security patch level extension of a VCEK and the
// part of the TCB it certifies.
type splExtension struct {
	oid      asn1.ObjectIdentifier
	name     string
	required bool
	dst      *uint8
}

// splExtensionsOf lists, in the order they are checked, the SPL extensions
// a VCEK of product p is read for, each pointing into t. spl_4..spl_7 are
// reserved bytes of the Milan/Genoa layout and may be absent; Turin packs
// its named SPLs (fmcSPL among them) where those bytes are, so they do not
// apply to it.
func splExtensionsOf(p snpProduct, t *tcbParts) []splExtension {
	turin := p == productTurin
	spls := []splExtension{
		{oidBlSPL, "blSPL", true, &t.BL},
		{oidTeeSPL, "teeSPL", true, &t.TEE},
		{oidSnpSPL, "snpSPL", true, &t.SNP},
		{oidUcodeSPL, "ucodeSPL", true, &t.Ucode},
		{oidFmcSPL, "fmcSPL", turin, &t.FMC},
	}
	if turin {
		return spls
	}
	for i, oid := range []asn1.ObjectIdentifier{oidSpl4, oidSpl5, oidSpl6, oidSpl7} {
		spls = append(spls, splExtension{oid, fmt.Sprintf("spl_%d", i+4), false, &t.Reserved[i]})
	}
	return spls
}

// vcekSPLs reads the security patch levels. They are DER INTEGERs: a value
// of 0x80 or more is encoded 02 02 00 xx, so reading a fixed byte offset
// would be wrong.
func vcekSPLs(exts map[string][]byte, p snpProduct) (tcbParts, error) {
	var t tcbParts
	for _, s := range splExtensionsOf(p, &t) {
		raw, ok := exts[s.oid.String()]
		if !ok {
			if s.required {
				return tcbParts{}, fmt.Errorf("no %s extension (%s)", s.name, s.oid)
			}
			continue
		}
		v, err := derUint8(raw)
		if err != nil {
			return tcbParts{}, fmt.Errorf("%s extension: %w", s.name, err)
		}
		*s.dst = v
	}
	return t, nil
}

// vcekHolder reads whom the certificate was issued to: a chip's hwID (a
// VCEK) or a cloud provider's cspId (a VLEK), exactly one of them.
func vcekHolder(exts map[string][]byte, p snpProduct) (hwID []byte, cspID string, err error) {
	hwRaw, hasHWID := exts[oidHWID.String()]
	cspRaw, hasCSP := exts[oidCSPID.String()]
	switch {
	case hasHWID && hasCSP:
		return nil, "", errors.New("certificate has both hwID and cspId extensions")
	case hasHWID:
		if hwID, err = decodeHWID(p, hwRaw); err != nil {
			return nil, "", fmt.Errorf("hwID extension: %w", err)
		}
		return hwID, "", nil
	case hasCSP:
		if cspID, err = derIA5String(cspRaw); err != nil {
			return nil, "", fmt.Errorf("cspId extension: %w", err)
		}
		return nil, cspID, nil
	}
	return nil, "", errors.New("certificate has neither a hwID (VCEK) nor a cspId (VLEK) extension")
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
