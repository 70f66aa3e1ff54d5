package main

import (
	"testing"
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
