package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maaAPIVersion is the attest API version sent to MAA. 2022-08-01 is the
// first stable version whose published specification lists SevSnpVm, and
// the one most public SNP clients use; Microsoft's sidecar still sends
// 2020-10-01, which works but does not document the route.
const maaAPIVersion = "2022-08-01"

// maaAttestPath is the route as the specification spells it; MAA matches
// it without regard to case (the upstream sidecar sends SevSnpVM).
const maaAttestPath = "/attest/SevSnpVm"

// maxMAATokenSize bounds the token we accept; real SEV-SNP tokens are a few
// KiB (the x-ms-runtime claim carries our JWK Set).
const maxMAATokenSize = 64 << 10

// Runtime data types MAA knows. JSON runtime data comes back parsed in the
// x-ms-runtime claim, which is what release policies and Key Vault read.
const (
	maaDataJSON   = "JSON"
	maaDataBinary = "Binary"
)

// maaRequest is AttestSevSnpVmRequest; the field names are case-sensitive.
type maaRequest struct {
	Report      string         `json:"report"`
	RuntimeData maaRuntimeData `json:"runtimeData"`
	Nonce       string         `json:"nonce"`
}

type maaRuntimeData struct {
	Data     string `json:"data"`
	DataType string `json:"dataType"`
}

// maaReportBundle is the JSON inside "report"; MAA wants PascalCase here.
type maaReportBundle struct {
	SnpReport     string `json:"SnpReport"`
	VcekCertChain string `json:"VcekCertChain"`
	Endorsements  string `json:"Endorsements,omitempty"`
}

type maaEndorsements struct {
	Uvm []string `json:"Uvm"`
}

// maaB64 is padded base64url: what Microsoft's sidecar sends in every field
// and MAA accepts in production. The specification's own example mixes
// padded and unpadded, so padded everywhere is the proven choice.
func maaB64(b []byte) string { return base64.URLEncoding.EncodeToString(b) }

// runtimeDataType says how MAA should read the runtime data: JSON when the
// bytes are a JSON object or array (so policies and Key Vault can read the
// x-ms-runtime claim), Binary for anything else. A bare JSON scalar is sent
// as Binary: x-ms-runtime is an object claim.
func runtimeDataType(runtimeData []byte) string {
	trimmed := bytes.TrimSpace(runtimeData)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') && json.Valid(trimmed) {
		return maaDataJSON
	}
	return maaDataBinary
}

// buildMAARequest encodes evidence and the exact runtime bytes whose sha256
// is in the report's REPORT_DATA.
func buildMAARequest(ev *evidence, runtimeData []byte, nonce string) ([]byte, error) {
	if ev == nil || len(ev.Report) == 0 || ev.Certs == nil || len(ev.Certs.ChainPEM) == 0 {
		return nil, errors.New("evidence lacks the report or its certificate chain")
	}
	bundle := maaReportBundle{
		SnpReport:     maaB64(ev.Report),
		VcekCertChain: maaB64(ev.Certs.ChainPEM),
	}
	if len(ev.UVMReferenceInfo) > 0 {
		endorsements, err := json.Marshal(maaEndorsements{Uvm: []string{maaB64(ev.UVMReferenceInfo)}})
		if err != nil {
			return nil, err
		}
		bundle.Endorsements = maaB64(endorsements)
	}
	inner, err := json.Marshal(bundle)
	if err != nil {
		return nil, err
	}
	return json.Marshal(maaRequest{
		Report:      maaB64(inner),
		RuntimeData: maaRuntimeData{Data: maaB64(runtimeData), DataType: runtimeDataType(runtimeData)},
		Nonce:       nonce,
	})
}

// newMAANonce is a fresh random string; MAA echoes it in the nonce claim.
func newMAANonce() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// maaUserAgent is maaconfig.user_agent, else one naming skr and its version.
func (s *server) maaUserAgent() string {
	if ua := strings.TrimSpace(s.cfg.Args.MAAConfig.UserAgent); ua != "" {
		return ua
	}
	return "skr/" + version + " (confidential containers secure key release sidecar)"
}

// maaToken is a token MAA issued and the expiry it claims. The sidecar does
// not verify MAA tokens (Key Vault does); exp only bounds how long we reuse
// one.
type maaToken struct {
	Token     string
	Expires   time.Time // zero when the token carries no exp
	RequestID string    // MAA's x-ms-request-id, for a support case
}

// attestMAA sends evidence over runtimeData to MAA at host and returns the
// token it issues. Every failure names the MAA step.
func (s *server) attestMAA(ctx context.Context, host string, ev *evidence, runtimeData []byte) (*maaToken, error) {
	nonce, err := newMAANonce()
	if err != nil {
		return nil, fmt.Errorf("MAA nonce: %w", err)
	}
	body, err := buildMAARequest(ev, runtimeData, nonce)
	if err != nil {
		return nil, fmt.Errorf("build MAA request: %w", err)
	}
	u := url.URL{Scheme: "https", Host: host, Path: maaAttestPath, RawQuery: "api-version=" + maaAPIVersion}
	target := u.String()
	start := time.Now()
	resp, header, err := doWithRetry(ctx, s.client, "MAA", s.retry, s.log, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
		req.Header.Set("User-Agent", s.maaUserAgent())
		return req, nil
	})
	s.metrics.since(stageMAA, start)
	if err != nil {
		err = maaFailure(host, err)
		s.metrics.attestation(host, err)
		return nil, err
	}
	tok, err := parseMAAResponse(resp)
	if err != nil {
		err = newError(kindUpstream, err, "MAA at %s answered 200 without a usable token", host)
		s.metrics.attestation(host, err)
		return nil, err
	}
	s.metrics.attestation(host, nil)
	tok.RequestID = upstreamRequestID(header)
	s.log.Debug("MAA token issued", "step", "MAA", "maa_endpoint", host, "duration", time.Since(start).Round(time.Microsecond))
	return tok, nil
}

// maaFailure gives an MAA error the hint a user can act on.
func maaFailure(host string, err error) error {
	var ue *upstreamError
	if errors.As(err, &ue) {
		switch {
		case ue.StatusCode == http.StatusUnauthorized || ue.StatusCode == http.StatusForbidden:
			return newError(kindDenied, err, "MAA at %s refused the attestation", host)
		case ue.StatusCode == http.StatusBadRequest:
			return newError(kindUpstream, err, "MAA at %s rejected the evidence (a TCB below its baseline, an unendorsed UVM, or a REPORT_DATA mismatch)", host)
		}
	}
	return fmt.Errorf("MAA attestation at %s: %w", host, err)
}

// parseMAAResponse reads {"token": JWT} and the token's exp.
func parseMAAResponse(body []byte) (*maaToken, error) {
	var out struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("response is not JSON: %w", err)
	}
	tok := strings.TrimSpace(out.Token)
	if tok == "" {
		return nil, errors.New(`response has no "token"`)
	}
	if len(tok) > maxMAATokenSize {
		return nil, fmt.Errorf("token is larger than %d bytes", maxMAATokenSize)
	}
	jws, err := parseJWS(tok)
	if err != nil {
		return nil, fmt.Errorf("token is not a compact JWS: %w", err)
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	dec := json.NewDecoder(bytes.NewReader(jws.Payload))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return nil, fmt.Errorf("token claims are not a JSON object: %w", err)
	}
	t := &maaToken{Token: tok}
	if claims.Exp != nil {
		secs, err := claims.Exp.Float64()
		if err != nil {
			return nil, fmt.Errorf("token exp %q is not a number", claims.Exp.String())
		}
		t.Expires = time.Unix(int64(secs), 0)
	}
	return t, nil
}
