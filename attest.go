package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
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
	return s.reportWithData(ctx, reportDataFor(runtimeData))
}

// reportWithData asks the guest interface for a report whose REPORT_DATA
// is rd, as given.
func (s *server) reportWithData(ctx context.Context, rd [64]byte) ([]byte, *snpReport, error) {
	if err := s.requireTEE(); err != nil {
		return nil, nil, err
	}
	start := time.Now()
	raw, err := s.deviceReport(ctx, rd)
	s.metrics.since(stageReport, start)
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

// deviceReport asks the device for one report, one command at a time: the
// SNP guest channel has one message sequence number, and the ioctl paths
// must not interleave. A device that is safe to use concurrently (the
// emulator, which only signs in software) is asked without the lock, so
// that reports are signed on every core.
func (s *server) deviceReport(ctx context.Context, rd [64]byte) ([]byte, error) {
	if _, ok := s.tee.(concurrentDevice); !ok {
		s.deviceMu.Lock()
		defer s.deviceMu.Unlock()
	}
	return s.tee.GetReport(ctx, rd)
}

// evidence gets a report over runtimeData with the certificates that match
// it, and checks the bundle before anyone else sees it.
func (s *server) evidence(ctx context.Context, runtimeData []byte) (*evidence, error) {
	raw, rep, err := s.rawReport(ctx, runtimeData)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	certs, err := s.certs.forReport(ctx, rep)
	s.metrics.since(stageCertificates, start)
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
	serveJSON(s, w, r, jsonEndpoint[[]byte]{
		decode: decodeAttestRequest,
		call: func(ctx context.Context, runtimeData []byte) (any, string, error) {
			raw, _, err := s.rawReport(ctx, runtimeData)
			if err != nil {
				return nil, "", err
			}
			return map[string]string{"report": hex.EncodeToString(raw)}, "", nil
		},
		logOutcome: logFailures[[]byte]("attest/raw failed"),
	})
}

type combinedResponse struct {
	EndorsedTCB     string `json:"endorsed_tcb"`
	Endorsements    string `json:"endorsements"`
	Evidence        string `json:"evidence"`
	UVMEndorsements string `json:"uvm_endorsements"`
}

// newCombinedResponse is the /attest/combined bundle of ev.
func newCombinedResponse(ev *evidence) combinedResponse {
	return combinedResponse{
		EndorsedTCB:     fmt.Sprintf("%016x", ev.Certs.TCB),
		Endorsements:    base64.StdEncoding.EncodeToString(ev.Certs.ChainPEM),
		Evidence:        base64.StdEncoding.EncodeToString(ev.Report),
		UVMEndorsements: base64.StdEncoding.EncodeToString(ev.UVMReferenceInfo),
	}
}

func (s *server) handleAttestCombined(w http.ResponseWriter, r *http.Request) {
	serveJSON(s, w, r, jsonEndpoint[[]byte]{
		decode: decodeAttestRequest,
		call: func(ctx context.Context, runtimeData []byte) (any, string, error) {
			ev, err := s.evidence(ctx, runtimeData)
			if err != nil {
				return nil, "", err
			}
			return newCombinedResponse(ev), "", nil
		},
		logOutcome: logFailures[[]byte]("attest/combined failed"),
	})
}

type maaAttestRequest struct {
	MAAEndpoint string `json:"maa_endpoint"`
	RuntimeData string `json:"runtime_data"`
}

// maaAttestParams is a validated /attest/maa request.
type maaAttestParams struct {
	Host        string
	RuntimeData []byte
}

// decodeMAAAttestRequest parses and validates the body of /attest/maa.
func (s *server) decodeMAAAttestRequest(r *http.Request) (maaAttestParams, error) {
	var req maaAttestRequest
	if err := decodeBody(r, &req); err != nil {
		return maaAttestParams{}, err
	}
	host, err := normalizeEndpoint("maa_endpoint", req.MAAEndpoint)
	if err == nil {
		err = s.refuseUnservedNames(host)
	}
	if err != nil {
		return maaAttestParams{}, err
	}
	runtimeData, err := requiredBase64("runtime_data", req.RuntimeData)
	if err != nil {
		return maaAttestParams{}, err
	}
	return maaAttestParams{Host: host, RuntimeData: runtimeData}, nil
}

func (s *server) handleAttestMAA(w http.ResponseWriter, r *http.Request) {
	serveJSON(s, w, r, jsonEndpoint[maaAttestParams]{
		decode: s.decodeMAAAttestRequest,
		call: func(ctx context.Context, p maaAttestParams) (any, string, error) {
			if err := s.cfg.Args.Allow.permitMAA(p.Host); err != nil {
				return nil, "allow", err
			}
			done, err := s.rel.attestSlot(ctx, p.Host)
			if err != nil {
				return nil, "MAA", err
			}
			defer done()
			ev, err := s.evidence(ctx, p.RuntimeData)
			if err != nil {
				return nil, "evidence", err
			}
			tok, err := s.attestMAA(ctx, p.Host, ev, p.RuntimeData)
			if err != nil {
				return nil, "MAA", err
			}
			return map[string]string{"token": tok.Token}, "", nil
		},
		logOutcome: func(log *slog.Logger, p maaAttestParams, step string, elapsed time.Duration, err error) {
			if err != nil {
				log.Warn("attest/maa failed", "step", step, "maa_endpoint", p.Host, "err", err)
				return
			}
			log.Info("MAA token issued", "maa_endpoint", p.Host, "duration", elapsed)
		},
	})
}
