package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseTCBM reads the 16 hex digits of a THIM tcbm, in either case.
func parseTCBM(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if len(s) != 16 {
		return 0, fmt.Errorf("tcbm %q is not 16 hex digits", truncate(s, 40))
	}
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("tcbm %q is not 16 hex digits", s)
	}
	return v, nil
}

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
