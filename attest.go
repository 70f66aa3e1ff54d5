package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"time"
)

// evidence is everything a verifier needs about one report.
type evidence struct {
	Report           []byte         // the 1184 raw bytes
	Parsed           *snpReport     // Report, parsed
	Certs            *platformCerts // VCEK, ASK, ARK matching Parsed.ReportedTCB; verified
	UVMReferenceInfo []byte         // COSE_Sign1, may be empty
}

// requireTEE fails fast, with the reason, when there is no guest interface.
func (s *server) requireTEE() error {
	if s.tee == nil {
		return newError(kindUnavailable, s.teeErr, "no SEV-SNP guest interface")
	}
	return nil
}

// rawReport asks the guest interface for a report over runtimeData.
func (s *server) rawReport(ctx context.Context, runtimeData []byte) ([]byte, *snpReport, error) {
	if err := s.requireTEE(); err != nil {
		return nil, nil, err
	}
	rd := reportDataFor(runtimeData)
	// One command at a time: the SNP guest channel has one message sequence
	// number, and the ioctl paths must not interleave.
	s.deviceMu.Lock()
	raw, err := s.tee.GetReport(ctx, rd)
	s.deviceMu.Unlock()
	if err != nil {
		kind := kindInternal
		if isTimeout(err) { // waiting for the device (pacing, emulator keys)
			kind = kindTimeout
		}
		return nil, nil, newError(kind, err, "get SNP report from %s", s.tee.Name())
	}
	rep, err := parseReport(raw)
	if err != nil {
		return nil, nil, newError(kindInternal, err, "%s returned a malformed report", s.tee.Name())
	}
	if rep.ReportData != rd {
		return nil, nil, newError(kindInternal, nil, "%s returned a report whose REPORT_DATA is not the one asked for", s.tee.Name())
	}
	return raw, rep, nil
}

// evidence gets a report over runtimeData with the certificates that match
// it, and checks the bundle before anyone else sees it.
func (s *server) evidence(ctx context.Context, runtimeData []byte) (*evidence, error) {
	raw, rep, err := s.rawReport(ctx, runtimeData)
	if err != nil {
		return nil, err
	}
	certs, err := s.certs.forReport(ctx, rep)
	if err != nil {
		return nil, fmt.Errorf("platform certificates for the report: %w", err)
	}
	if err := verifyEvidence(rep, certs); err != nil {
		return nil, newError(kindUpstream, err, "the report does not verify with the certificates that would be handed out")
	}
	return &evidence{Report: raw, Parsed: rep, Certs: certs, UVMReferenceInfo: s.inputs.ReferenceInfo}, nil
}

type attestRequest struct {
	RuntimeData string `json:"runtime_data"`
}

// decodeAttestRequest reads {"runtime_data": B64} and returns its bytes.
func decodeAttestRequest(r *http.Request) ([]byte, error) {
	var req attestRequest
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	return requiredBase64("runtime_data", req.RuntimeData)
}

func (s *server) handleAttestRaw(w http.ResponseWriter, r *http.Request) {
	rd, err := decodeAttestRequest(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	raw, _, err := s.rawReport(ctx, rd)
	if err != nil {
		s.log.Warn("attest/raw failed", "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"report": hex.EncodeToString(raw)})
}

type combinedResponse struct {
	EndorsedTCB     string `json:"endorsed_tcb"`
	Endorsements    string `json:"endorsements"`
	Evidence        string `json:"evidence"`
	UVMEndorsements string `json:"uvm_endorsements"`
}

func (s *server) handleAttestCombined(w http.ResponseWriter, r *http.Request) {
	rd, err := decodeAttestRequest(r)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	ev, err := s.evidence(ctx, rd)
	if err != nil {
		s.log.Warn("attest/combined failed", "err", err)
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, combinedResponse{
		EndorsedTCB:     fmt.Sprintf("%016x", ev.Certs.TCB),
		Endorsements:    base64.StdEncoding.EncodeToString(ev.Certs.ChainPEM),
		Evidence:        base64.StdEncoding.EncodeToString(ev.Report),
		UVMEndorsements: base64.StdEncoding.EncodeToString(ev.UVMReferenceInfo),
	})
}

type maaAttestRequest struct {
	MAAEndpoint string `json:"maa_endpoint"`
	RuntimeData string `json:"runtime_data"`
}

func (s *server) handleAttestMAA(w http.ResponseWriter, r *http.Request) {
	var req maaAttestRequest
	if err := decodeBody(r, &req); err != nil {
		writeError(w, err)
		return
	}
	host, err := normalizeEndpoint("maa_endpoint", req.MAAEndpoint)
	if err == nil {
		err = s.refuseUnservedNames(host)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	runtimeData, err := requiredBase64("runtime_data", req.RuntimeData)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	start := time.Now()
	ev, err := s.evidence(ctx, runtimeData)
	if err != nil {
		s.log.Warn("attest/maa failed", "step", "evidence", "maa_endpoint", host, "err", err)
		writeError(w, err)
		return
	}
	tok, err := s.attestMAA(ctx, host, ev, runtimeData)
	if err != nil {
		s.log.Warn("attest/maa failed", "step", "MAA", "maa_endpoint", host, "err", err)
		writeError(w, err)
		return
	}
	s.log.Info("MAA token issued", "maa_endpoint", host, "duration", time.Since(start).Round(time.Microsecond))
	writeJSON(w, http.StatusOK, map[string]string{"token": tok.Token})
}
