package main

import (
	"bytes"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// platformCerts is a VCEK with its ASK and ARK.
type platformCerts struct {
	VCEK     *x509.Certificate
	ASK      *x509.Certificate
	ARK      *x509.Certificate
	ChainPEM []byte // PEM of VCEK, ASK, ARK in that order: what /attest/combined and MAA get
	TCB      uint64 // the TCB the VCEK certifies (from tcbm or its extensions)
}

const (
	// maxTHIMSize bounds a THIM JSON document; real ones are about 7 KiB.
	maxTHIMSize = 64 << 10
	// maxPEMCerts bounds how many certificates one PEM text may carry.
	maxPEMCerts = 4
)

// parsePEMCertificates reads CERTIFICATE blocks separated only by white
// space: other block types or stray text are refused, not skipped.
func parsePEMCertificates(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(b)
	for len(rest) > 0 {
		if !bytes.HasPrefix(rest, []byte("-----BEGIN ")) {
			return nil, fmt.Errorf("unexpected text %q where a PEM certificate should start", truncate(string(rest), 20))
		}
		block, next := pem.Decode(rest)
		if block == nil {
			return nil, errors.New("malformed PEM block")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block of type %q, want CERTIFICATE", block.Type)
		}
		if len(certs) == maxPEMCerts {
			return nil, fmt.Errorf("more than %d certificates", maxPEMCerts)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		certs = append(certs, c)
		rest = bytes.TrimSpace(next)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// identifyASKARK picks the ASK and the ARK out of two certificates: by
// their common names (SEV-{Product}, ARK-{Product}), else by who signs
// whom (the ARK signs itself and the ASK).
func identifyASKARK(certs []*x509.Certificate) (ask, ark *x509.Certificate, err error) {
	if len(certs) != 2 {
		return nil, nil, fmt.Errorf("%d certificates, want ASK and ARK", len(certs))
	}
	a, b := certs[0], certs[1]
	switch {
	case isASKName(a) && isARKName(b):
		return a, b, nil
	case isARKName(a) && isASKName(b):
		return b, a, nil
	case isSelfSigned(b) && a.CheckSignatureFrom(b) == nil:
		return a, b, nil
	case isSelfSigned(a) && b.CheckSignatureFrom(a) == nil:
		return b, a, nil
	}
	return nil, nil, fmt.Errorf("cannot tell ASK from ARK in %q and %q: neither named SEV-/ARK-{Product} nor one self-signed root signing the other",
		a.Subject.CommonName, b.Subject.CommonName)
}

func isARKName(c *x509.Certificate) bool {
	_, ok := parseProductLine(strings.TrimPrefix(c.Subject.CommonName, "ARK-"))
	return ok && strings.HasPrefix(c.Subject.CommonName, "ARK-")
}

func isASKName(c *x509.Certificate) bool {
	cn := c.Subject.CommonName
	_, ok := parseProductLine(strings.TrimPrefix(cn, "SEV-"))
	return ok && strings.HasPrefix(cn, "SEV-") && !strings.HasPrefix(cn, "SEV-VLEK")
}

func isSelfSigned(c *x509.Certificate) bool {
	return bytes.Equal(c.RawSubject, c.RawIssuer) && c.CheckSignatureFrom(c) == nil
}

// assemblePlatformCerts re-encodes the three certificates as PEM, so the
// chain handed out holds exactly what was checked and nothing else.
func assemblePlatformCerts(vcek, ask, ark *x509.Certificate, tcb uint64) *platformCerts {
	var chain bytes.Buffer
	for _, c := range []*x509.Certificate{vcek, ask, ark} {
		pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return &platformCerts{VCEK: vcek, ASK: ask, ARK: ark, ChainPEM: chain.Bytes(), TCB: tcb}
}

// verifiedChains remembers the chains whose signatures verified. The check
// depends only on the certificates' bytes, and it is most of the cost of
// checking evidence on every /attest/combined and release, where the same
// chain comes back each time.
var verifiedChains = struct {
	sync.Mutex
	m map[[sha512.Size384]byte]bool
}{m: map[[sha512.Size384]byte]bool{}}

// maxVerifiedChains bounds the memory: a host has one chain per TCB.
const maxVerifiedChains = 64

// verifyChainOnce is verifyChain, done once per distinct chain.
func verifyChainOnce(pc *platformCerts) error {
	if pc == nil || pc.VCEK == nil || pc.ASK == nil || pc.ARK == nil {
		return verifyChain(pc)
	}
	h := sha512.New384()
	for _, c := range []*x509.Certificate{pc.VCEK, pc.ASK, pc.ARK} {
		// Length-prefixed, so that no two chains share a key.
		h.Write([]byte(strconv.Itoa(len(c.Raw)) + ":"))
		h.Write(c.Raw)
	}
	var key [sha512.Size384]byte
	h.Sum(key[:0])
	verifiedChains.Lock()
	ok := verifiedChains.m[key]
	verifiedChains.Unlock()
	if ok {
		return nil
	}
	if err := verifyChain(pc); err != nil {
		return err
	}
	verifiedChains.Lock()
	if len(verifiedChains.m) >= maxVerifiedChains {
		clear(verifiedChains.m)
	}
	verifiedChains.m[key] = true
	verifiedChains.Unlock()
	return nil
}

// verifyChain checks VCEK ← ASK ← ARK (self-signed), all RSASSA-PSS with
// SHA-384 as AMD signs them. Validity periods are left to the verifier
// the evidence goes to (MAA), which judges them at its own time.
func verifyChain(pc *platformCerts) error {
	if pc == nil || pc.VCEK == nil || pc.ASK == nil || pc.ARK == nil {
		return errors.New("the platform certificates are incomplete: want VCEK, ASK and ARK")
	}
	for _, link := range []struct {
		child, parent *x509.Certificate
		what          string
	}{
		{pc.ARK, pc.ARK, "ARK is not self-signed"},
		{pc.ASK, pc.ARK, "ASK is not signed by the ARK"},
		{pc.VCEK, pc.ASK, "VCEK is not signed by the ASK"},
	} {
		if link.child.SignatureAlgorithm != x509.SHA384WithRSAPSS {
			return fmt.Errorf("%s (%q) is signed with %v, want RSASSA-PSS with SHA-384",
				roleOf(link.child, pc), link.child.Subject.CommonName, link.child.SignatureAlgorithm)
		}
		if err := link.child.CheckSignatureFrom(link.parent); err != nil {
			return fmt.Errorf("%s (%q ← %q): %w", link.what, link.child.Subject.CommonName, link.parent.Subject.CommonName, err)
		}
	}
	return nil
}

func roleOf(c *x509.Certificate, pc *platformCerts) string {
	switch c {
	case pc.ARK:
		return "ARK"
	case pc.ASK:
		return "ASK"
	}
	return "VCEK"
}
