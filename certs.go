package main

// AMD platform certificates: the THIM JSON, TCB matching, fetching fresh
// certificates from AMD KDS / Azure cert cache / local THIM, and checking
// a report against the chain that will be handed out.
//
// STUB: owned by the "certs" helper; signatures are the contract.

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
)

// platformCerts is a VCEK with its ASK and ARK.
type platformCerts struct {
	VCEK     *x509.Certificate
	ASK      *x509.Certificate
	ARK      *x509.Certificate
	ChainPEM []byte // PEM of VCEK, ASK, ARK in that order: what /attest/combined and MAA get
	TCB      uint64 // the TCB the VCEK certifies (from tcbm or its extensions)
}

// parseTHIM parses the THIM JSON {vcekCert, certificateChain, tcbm, ...}.
func parseTHIM(b []byte) (*platformCerts, error) {
	return nil, errors.New("parseTHIM: stub")
}

// certProvider hands out the certificates matching a report's TCB.
type certProvider struct{}

// newCertProvider: local, when not nil, returns the certificates handed to
// the container (THIM JSON of the security context, or the emulator's).
func newCertProvider(cfg certCacheConfig, local func(context.Context) (*platformCerts, error), client *http.Client, log *slog.Logger) *certProvider {
	return &certProvider{}
}

// forReport returns certificates whose TCB equals rep.ReportedTCB, fetching
// (with retries, cached) when the local ones do not match.
func (p *certProvider) forReport(ctx context.Context, rep *snpReport) (*platformCerts, error) {
	return nil, errors.New("certProvider.forReport: stub")
}

// verifyEvidence checks the report's signature with certs.VCEK and that the
// VCEK chains to certs.ASK and certs.ARK.
func verifyEvidence(rep *snpReport, certs *platformCerts) error {
	return errors.New("verifyEvidence: stub")
}
