package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// emulatedMAAIssuer is the iss of the emulated MAA's tokens.
const emulatedMAAIssuer = "https://" + emulatedMAAHost

// emulatedMAATokenLifetime is what MAA's SEV-SNP tokens are good for.
const emulatedMAATokenLifetime = 8 * time.Hour

// emulatedMAAPolicy is the attestation policy the emulated MAA runs (MAA's
// default: permit, no extra claims); its hash is the x-ms-policy-hash claim.
const emulatedMAAPolicy = "version= 1.0;authorizationrules{=> permit();};issuancerules{};"

// maxMAARequest bounds an attestation request: a report, a three-certificate
// chain and a UVM endorsement are about 20 KiB.
const maxMAARequest = 1 << 20

// emulatedMAA attests SEV-SNP evidence as MAA does: it verifies the report
// with go-sev-guest against the AMD chain it trusts (the emulator's), checks
// REPORT_DATA against the runtime data, and issues an RS256 token with
// MAA's SEV-SNP claims, whose signing key is in its JWKS at /certs.
type emulatedMAA struct {
	azure *emulatedAzure
	trust func(context.Context) (*platformCerts, error)
	mux   *http.ServeMux
}

func newEmulatedMAA(a *emulatedAzure, trust func(context.Context) (*platformCerts, error)) *emulatedMAA {
	m := &emulatedMAA{azure: a, trust: trust, mux: http.NewServeMux()}
	m.mux.HandleFunc("POST /attest/{type}", m.handleAttest)
	m.mux.HandleFunc("GET /certs", m.handleCerts)
	m.mux.HandleFunc("GET /.well-known/openid-configuration", m.handleMetadata)
	m.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeAzureError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("the emulated MAA has no %s %s: it serves POST /attest/SevSnpVm, GET /certs, GET /.well-known/openid-configuration", r.Method, r.URL.Path))
	})
	return m
}

func (m *emulatedMAA) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(upstreamRequestIDHeader, newRequestID()) // as MAA names each answer
	m.mux.ServeHTTP(w, r)
}

// writeAzureError answers with the error shape MAA and Key Vault share:
// {"error": {"code", "message"}}.
func writeAzureError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func (m *emulatedMAA) handleAttest(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.PathValue("type"), "SevSnpVm") {
		writeAzureError(w, http.StatusBadRequest, "InvalidParameter", fmt.Sprintf("attestation type %q is not served by the emulated MAA: use SevSnpVm", truncate(r.PathValue("type"), 40)))
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		writeAzureError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(ct), "application/json") {
		writeAzureError(w, http.StatusUnsupportedMediaType, "UnsupportedMediaType", fmt.Sprintf("content type %q: send application/json", truncate(ct, 60)))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxMAARequest+1))
	if err != nil || len(body) > maxMAARequest {
		writeAzureError(w, http.StatusBadRequest, "InvalidParameter", fmt.Sprintf("the request body is unreadable or larger than %d bytes", maxMAARequest))
		return
	}
	req, err := parseMAAAttestRequest(body)
	if err != nil {
		writeAzureError(w, http.StatusBadRequest, "InvalidParameter", err.Error())
		return
	}
	claims, err := m.attest(r.Context(), req)
	if err != nil {
		writeAzureError(w, http.StatusBadRequest, "InvalidParameter", err.Error())
		return
	}
	tok, err := m.sign(claims)
	if err != nil {
		writeAzureError(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"token": tok})
}

// maaAttestation is an AttestSevSnpVmRequest, decoded.
type maaAttestation struct {
	Report       []byte   // the raw SNP report
	ChainPEM     []byte   // VCEK, ASK, ARK
	UVM          [][]byte // UVM endorsements (COSE_Sign1), may be empty
	RuntimeData  []byte
	RuntimeJSON  bool
	HasRuntime   bool
	InitTimeData []byte
	InitTimeJSON bool
	HasInitTime  bool
	Nonce        string
	HasNonce     bool
}

// parseMAAAttestRequest reads an AttestSevSnpVmRequest (untrusted bytes)
// the way MAA reads it: member names are case-sensitive, every base64 is
// URL-safe (padded or not), and the report bundle holds SnpReport,
// VcekCertChain and optional Endorsements.
func parseMAAAttestRequest(body []byte) (*maaAttestation, error) {
	outer, err := exactMembers(body, "request", []string{"report"}, "runtimeData", "initTimeData", "nonce", "draftPolicyForAttestation")
	if err != nil {
		return nil, err
	}
	if _, ok := outer["draftPolicyForAttestation"]; ok {
		return nil, errors.New("draftPolicyForAttestation: the emulated MAA runs its default policy only")
	}
	bundleJSON, err := b64urlMember(outer, "report")
	if err != nil {
		return nil, err
	}
	bundle, err := exactMembers(bundleJSON, "report", []string{"SnpReport", "VcekCertChain"}, "Endorsements")
	if err != nil {
		return nil, err
	}
	a := &maaAttestation{}
	if a.Report, err = b64urlMember(bundle, "SnpReport"); err != nil {
		return nil, err
	}
	if len(a.Report) != abi.ReportSize {
		return nil, fmt.Errorf("SnpReport is %d bytes, want %d", len(a.Report), abi.ReportSize)
	}
	if a.ChainPEM, err = b64urlMember(bundle, "VcekCertChain"); err != nil {
		return nil, err
	}
	if _, ok := bundle["Endorsements"]; ok {
		if a.UVM, err = parseMAAEndorsements(bundle); err != nil {
			return nil, err
		}
	}
	if _, ok := outer["runtimeData"]; ok {
		a.HasRuntime = true
		if a.RuntimeData, a.RuntimeJSON, err = parseMAAData(outer, "runtimeData"); err != nil {
			return nil, err
		}
	}
	if _, ok := outer["initTimeData"]; ok {
		a.HasInitTime = true
		if a.InitTimeData, a.InitTimeJSON, err = parseMAAData(outer, "initTimeData"); err != nil {
			return nil, err
		}
	}
	if raw, ok := outer["nonce"]; ok {
		a.HasNonce = true
		if a.Nonce, err = maaNonce(raw); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// exactMembers decodes a JSON object and checks its member names exactly:
// encoding/json would match them without regard to case, MAA does not.
func exactMembers(raw []byte, what string, required []string, optional ...string) (map[string]json.RawMessage, error) {
	var m map[string]json.RawMessage
	if err := decodeJSONObject(raw, &m); err != nil {
		return nil, fmt.Errorf("%s is not a JSON object: %w", what, err)
	}
	allowed := map[string]bool{}
	for _, k := range append(append([]string{}, required...), optional...) {
		allowed[k] = true
	}
	for k := range m {
		if !allowed[k] {
			return nil, fmt.Errorf("%s has an unknown member %q (names are case-sensitive: %s)", what, truncate(k, 40), strings.Join(append(append([]string{}, required...), optional...), ", "))
		}
	}
	for _, k := range required {
		if _, ok := m[k]; !ok {
			return nil, fmt.Errorf("%s has no %q", what, k)
		}
	}
	return m, nil
}

// b64urlMember decodes a string member holding base64url.
func b64urlMember(m map[string]json.RawMessage, name string) ([]byte, error) {
	var s string
	if err := json.Unmarshal(m[name], &s); err != nil {
		return nil, fmt.Errorf("%s is not a string", name)
	}
	b, err := b64urlDecode(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b, nil
}

func parseMAAEndorsements(bundle map[string]json.RawMessage) ([][]byte, error) {
	raw, err := b64urlMember(bundle, "Endorsements")
	if err != nil {
		return nil, err
	}
	e, err := exactMembers(raw, "Endorsements", []string{"Uvm"})
	if err != nil {
		return nil, err
	}
	var list []string
	if err := json.Unmarshal(e["Uvm"], &list); err != nil || len(list) == 0 {
		return nil, errors.New("Endorsements.Uvm is not a non-empty list of strings")
	}
	var out [][]byte
	for i, s := range list {
		b, err := b64urlDecode(s)
		if err != nil || len(b) == 0 {
			return nil, fmt.Errorf("Endorsements.Uvm[%d] is not base64url", i)
		}
		out = append(out, b)
	}
	return out, nil
}

// parseMAAData reads runtimeData / initTimeData: {"data", "dataType"}.
func parseMAAData(outer map[string]json.RawMessage, name string) ([]byte, bool, error) {
	m, err := exactMembers(outer[name], name, []string{"data", "dataType"})
	if err != nil {
		return nil, false, err
	}
	data, err := b64urlMember(m, "data")
	if err != nil {
		return nil, false, fmt.Errorf("%s.%w", name, err)
	}
	var dataType string
	if err := json.Unmarshal(m["dataType"], &dataType); err != nil {
		return nil, false, fmt.Errorf("%s.dataType is not a string", name)
	}
	switch dataType {
	case maaDataJSON:
		if !json.Valid(data) {
			return nil, false, fmt.Errorf("%s has dataType JSON but its data is not JSON", name)
		}
		return data, true, nil
	case maaDataBinary:
		return data, false, nil
	}
	return nil, false, fmt.Errorf("%s.dataType %q is not JSON or Binary", name, truncate(dataType, 40))
}

// maaNonce reads the nonce: a string in the specification, a number from
// Microsoft's sidecar; MAA accepts both and echoes it.
func maaNonce(raw json.RawMessage) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", errors.New("nonce is not JSON")
	}
	switch n := v.(type) {
	case string:
		return truncate(n, 1024), nil
	case json.Number:
		return n.String(), nil
	}
	return "", errors.New("nonce is not a string")
}

// attest verifies the evidence and returns the token's claims.
func (m *emulatedMAA) attest(ctx context.Context, a *maaAttestation) (map[string]any, error) {
	if m.trust == nil {
		return nil, errors.New("the emulated MAA trusts no AMD chain: it attests the evidence of the sidecar's SNP emulator only")
	}
	trusted, err := m.trust(ctx)
	if err != nil {
		return nil, fmt.Errorf("the emulated MAA's trusted AMD chain: %w", err)
	}
	rep, err := verifySNPEvidence(a.Report, a.ChainPEM, trusted)
	if err != nil {
		return nil, err
	}
	if a.HasRuntime {
		want := sha256.Sum256(a.RuntimeData)
		if !bytes.Equal(rep.GetReportData()[:32], want[:]) {
			return nil, fmt.Errorf("REPORT_DATA %x does not start with sha256(runtimeData) %x", rep.GetReportData()[:32], want)
		}
	}
	if a.HasInitTime {
		want := sha256.Sum256(a.InitTimeData)
		if !bytes.Equal(rep.GetHostData(), want[:]) {
			return nil, fmt.Errorf("HOST_DATA %x is not sha256(initTimeData) %x", rep.GetHostData(), want)
		}
	}
	if err := m.azure.keys.wait(ctx); err != nil {
		return nil, err
	}
	return m.claims(a, rep)
}

// verifySNPEvidence checks a report with go-sev-guest, MAA's way: the
// signature with the VCEK of chainPEM, and the VCEK against the ASK and
// ARK the emulated MAA trusts (the chain's own ASK and ARK count for
// nothing); then that the VCEK certifies the report's TCB and chip.
func verifySNPEvidence(report, chainPEM []byte, trusted *platformCerts) (*spb.Report, error) {
	if trusted == nil || trusted.ASK == nil || trusted.ARK == nil {
		return nil, errors.New("the emulated MAA has no trusted ASK and ARK")
	}
	certs, err := parsePEMCertificates(chainPEM)
	if err != nil {
		return nil, fmt.Errorf("VcekCertChain: %w", err)
	}
	if len(certs) != 3 {
		return nil, fmt.Errorf("VcekCertChain has %d certificates, want the VCEK, ASK and ARK", len(certs))
	}
	rep, err := abi.ReportToProto(report)
	if err != nil {
		return nil, fmt.Errorf("SnpReport: %w", err)
	}
	line, ok := parseProductLine(strings.TrimPrefix(trusted.ARK.Subject.CommonName, "ARK-"))
	if !ok {
		return nil, fmt.Errorf("the trusted ARK %q names no AMD product line", trusted.ARK.Subject.CommonName)
	}
	root := trust.AMDRootCertsProduct(string(line))
	root.ProductCerts = &trust.ProductCerts{Ask: trusted.ASK, Ark: trusted.ARK}
	vcek := certs[0]
	err = verify.SnpAttestation(&spb.Attestation{
		Report:           rep,
		CertificateChain: &spb.CertificateChain{VcekCert: vcek.Raw, AskCert: certs[1].Raw, ArkCert: certs[2].Raw},
	}, &verify.Options{
		DisableCertFetching: true,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{string(line): {root}},
	})
	if err != nil {
		return nil, fmt.Errorf("SnpReport does not verify with VcekCertChain against the trusted AMD chain: %w", err)
	}
	exts, err := kds.VcekCertificateExtensions(vcek)
	if err != nil {
		return nil, fmt.Errorf("VCEK: %w", err)
	}
	if uint64(exts.TCBVersion) != rep.GetReportedTcb() {
		return nil, fmt.Errorf("the VCEK certifies TCB %016x, the report's REPORTED_TCB is %016x", uint64(exts.TCBVersion), rep.GetReportedTcb())
	}
	if chip := rep.GetChipId(); !bytes.Equal(chip, make([]byte, len(chip))) && !bytes.Equal(exts.HWID, chip) {
		return nil, errors.New("the VCEK is for another chip than the report's CHIP_ID")
	}
	return rep, nil
}

// claims are MAA's SEV-SNP claims for a verified report.
func (m *emulatedMAA) claims(a *maaAttestation, rep *spb.Report) (map[string]any, error) {
	now := m.azure.now().Unix()
	jti := make([]byte, 32)
	if _, err := rand.Read(jti); err != nil {
		return nil, err
	}
	product := productMilan // version 2 reports name no product; the emulator's is Milan
	if p, ok := parseProductLine(kds.ProductLineFromFms(rep.GetCpuid1EaxFms())); ok && rep.GetCpuid1EaxFms() != 0 {
		product = p
	}
	tcb := decomposeTCB(product, rep.GetReportedTcb())
	policy := rep.GetPolicy()
	policyHash := sha256.Sum256([]byte(base64.URLEncoding.EncodeToString([]byte(emulatedMAAPolicy))))
	c := map[string]any{
		"iss": emulatedMAAIssuer, "iat": now, "nbf": now, "exp": now + int64(emulatedMAATokenLifetime/time.Second),
		"jti":                             hex.EncodeToString(jti),
		"x-ms-ver":                        "1.0",
		"x-ms-attestation-type":           "sevsnpvm",
		"x-ms-policy-hash":                b64url(policyHash[:]),
		"x-ms-sevsnpvm-hostdata":          hex.EncodeToString(rep.GetHostData()),
		"x-ms-sevsnpvm-reportdata":        hex.EncodeToString(rep.GetReportData()),
		"x-ms-sevsnpvm-launchmeasurement": hex.EncodeToString(rep.GetMeasurement()),
		"x-ms-sevsnpvm-idkeydigest":       hex.EncodeToString(rep.GetIdKeyDigest()),
		"x-ms-sevsnpvm-authorkeydigest":   hex.EncodeToString(rep.GetAuthorKeyDigest()),
		"x-ms-sevsnpvm-reportid":          hex.EncodeToString(rep.GetReportId()),
		"x-ms-sevsnpvm-familyId":          hex.EncodeToString(rep.GetFamilyId()),
		"x-ms-sevsnpvm-imageId":           hex.EncodeToString(rep.GetImageId()),
		"x-ms-sevsnpvm-guestsvn":          rep.GetGuestSvn(),
		"x-ms-sevsnpvm-vmpl":              rep.GetVmpl(),
		"x-ms-sevsnpvm-is-debuggable":     policy&(1<<19) != 0,
		"x-ms-sevsnpvm-migration-allowed": policy&(1<<18) != 0,
		"x-ms-sevsnpvm-smt-allowed":       policy&(1<<16) != 0,
		"x-ms-sevsnpvm-bootloader-svn":    tcb.BL,
		"x-ms-sevsnpvm-tee-svn":           tcb.TEE,
		"x-ms-sevsnpvm-snpfw-svn":         tcb.SNP,
		"x-ms-sevsnpvm-microcode-svn":     tcb.Ucode,
		// The emulated MAA cannot check a UVM endorsement (nothing signs
		// one for the emulator), so the evidence it verified against its
		// trusted chain is what it calls compliant.
		"x-ms-compliance-status": "azure-compliant-uvm",
	}
	if a.HasNonce {
		c["nonce"] = a.Nonce
	}
	if a.HasRuntime && a.RuntimeJSON {
		var v any
		if err := json.Unmarshal(a.RuntimeData, &v); err != nil {
			return nil, err
		}
		c["x-ms-runtime"] = v
	}
	if a.HasInitTime && a.InitTimeJSON {
		var v any
		if err := json.Unmarshal(a.InitTimeData, &v); err != nil {
			return nil, err
		}
		c["x-ms-inittime"] = v
	}
	return c, nil
}

// sign issues the token: RS256 with the run's MAA key, whose kid and jku
// point at the JWKS.
func (m *emulatedMAA) sign(claims map[string]any) (string, error) {
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	k := m.azure.keys
	return signJWS(map[string]any{"typ": "JWT", "kid": k.maaKid, "jku": emulatedMAAIssuer + "/certs"}, payload, k.maaSigner, "RS256")
}

// handleCerts serves the JWKS: the signing key with its certificate chain.
func (m *emulatedMAA) handleCerts(w http.ResponseWriter, r *http.Request) {
	if err := m.azure.keys.wait(r.Context()); err != nil {
		writeAzureError(w, http.StatusServiceUnavailable, "ServiceUnavailable", err.Error())
		return
	}
	k := m.azure.keys
	pub := rsaPublicJWK(&k.maaSigner.PublicKey)
	writeJSON(w, http.StatusOK, map[string]any{"keys": []jwk{{
		Kty: "RSA", Kid: k.maaKid, Use: "sig", Alg: "RS256", N: pub.N, E: pub.E,
		X5C: []string{base64.StdEncoding.EncodeToString(k.maaCert.Raw), base64.StdEncoding.EncodeToString(k.caCert.Raw)},
	}}})
}

// handleMetadata serves the OpenID metadata Key Vault finds the JWKS by.
func (m *emulatedMAA) handleMetadata(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                                emulatedMAAIssuer,
		"jwks_uri":                              emulatedMAAIssuer + "/certs",
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"response_types_supported":              []string{"token", "none"},
		"claims_supported":                      []string{"x-ms-ver", "x-ms-attestation-type", "x-ms-compliance-status", "x-ms-sevsnpvm-hostdata", "x-ms-runtime"},
	})
}
