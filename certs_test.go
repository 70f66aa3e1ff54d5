package main

import (
	"testing"
)

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
