package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
)

// `skr doctor -addr HOST:PORT`: the checks against a running sidecar. What
// the sidecar owns (the device, its certificates, its MAA tokens, the
// release) is asked of it through its API; what the container group
// provides (the identity, DNS, TLS, the key's policy) the doctor checks
// itself, from the same container group, with the same settings.

// sidecarDoctor is what the checks against a running sidecar find out.
type sidecarDoctor struct {
	doctorCommon
	base string

	status   sidecarStatus
	up       bool
	rep      *snpReport
	verified bool
	client   *server // the doctor's own upstream client, for the policy read
	tokens   *tokenProvider
}

// sidecarStatus is what /status says that the checks use.
type sidecarStatus struct {
	Version       string         `json:"version"`
	TEE           string         `json:"tee"`
	TEEError      string         `json:"tee_error"`
	Emulated      bool           `json:"emulated"`
	HostData      string         `json:"host_data"`
	EmulatedAzure map[string]any `json:"emulated_azure"`
}

// doctorEmulatedBearer is the bearer token the doctor sends an emulated
// vault it reaches through the sidecar: the emulated vault takes any token
// that is not its identity's as the caller's own.
const doctorEmulatedBearer = "skr-doctor-emulated"

func runDoctorAgainstSidecar(ctx context.Context, fl *doctorFlags, env doctorEnv, r *doctorReport) {
	d := &sidecarDoctor{doctorCommon: doctorCommon{fl: fl, env: env, report: r}, base: fl.addr}
	fmt.Fprintf(r.w, "skr doctor %s: the sidecar at %s\n", version, d.base)
	d.check(ctx, "sidecar", d.checkSidecar)
	d.check(ctx, "evidence", d.checkEvidence)
	d.check(ctx, "security context", d.checkSecurityContext)
	if err := d.setUp(); err != nil {
		r.line("identity token", fail("", "%v", err))
		return
	}
	d.check(ctx, "identity token", d.checkIdentity)
	d.check(ctx, "MAA endpoint", func(ctx context.Context) checkResult { return d.checkEndpoint(ctx, "-maa", fl.maa) })
	d.check(ctx, "vault endpoint", func(ctx context.Context) checkResult { return d.checkEndpoint(ctx, "-akv", fl.akv) })
	d.check(ctx, "MAA token", d.checkMAAToken)
	d.check(ctx, "release policy", func(ctx context.Context) checkResult { return d.checkPolicy(ctx, d.client) })
	d.check(ctx, "key release", d.checkRelease)
	d.check(ctx, "clock", d.checkClock)
}

// setUp makes the doctor's own identity and upstream client from the
// settings the sidecar reads (SkrSideCarArgs, the environment): emulated
// names go to the sidecar, which serves them.
func (d *sidecarDoctor) setUp() error {
	args, err := parseSkrSideCarArgs(d.fl.base64)
	if err != nil {
		return err
	}
	upstream := newUpstreamClient(d.env.Server.Roots)
	client := *upstream
	u, _ := url.Parse(d.base)
	client.Transport = &emulatedViaSidecar{sidecar: &sidecarTransport{addr: u.Host}, next: upstream.Transport}
	d.client = &server{client: &client, retry: defaultRetry, log: slog.New(slog.DiscardHandler)}
	if d.env.Server.Retry != nil {
		d.client.retry = *d.env.Server.Retry
	}
	d.tokens = newTokenProvider(tokenConfig{IdentityClientID: args.Identity.ClientID, Getenv: d.env.Getenv, Client: upstream,
		ExtraVaultHosts: d.env.Server.IdentityTokenHosts})
	return nil
}

// emulatedViaSidecar sends requests for the emulated names to the sidecar
// that serves them, and the rest to next.
type emulatedViaSidecar struct {
	sidecar *sidecarTransport
	next    http.RoundTripper
}

func (t *emulatedViaSidecar) RoundTrip(req *http.Request) (*http.Response, error) {
	if isEmulatedName(req.URL.Hostname()) {
		return t.sidecar.RoundTrip(req)
	}
	return t.next.RoundTrip(req)
}

// call sends a request to the sidecar's API and decodes its JSON answer
// into out; a non-200 answer is an error with the sidecar's message.
func (d *sidecarDoctor) call(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, d.base+path, rd)
	if err != nil {
		return err
	}
	resp, err := loopbackClient.Do(req)
	if err != nil {
		return fmt.Errorf("no answer from %s: %w", d.base+path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxProbeAnswer))
	defer clear(raw) // a release's answer holds the key
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		json.Unmarshal(raw, &e)
		if e.Error == "" {
			e.Error = truncate(string(raw), 300)
		}
		return fmt.Errorf("%s %s: HTTP %d: %s (X-Request-Id %s)", method, path, resp.StatusCode, e.Error, resp.Header.Get(requestIDHeader))
	}
	return json.Unmarshal(raw, out)
}

func (d *sidecarDoctor) checkSidecar(ctx context.Context) checkResult {
	if err := d.call(ctx, http.MethodGet, "/status", nil, &d.status); err != nil {
		return fail("start the sidecar, or point -addr (or Port) at it: it listens on loopback in the same container group", "%v", err)
	}
	d.up = true
	var ready struct {
		Certificates string `json:"certificates"`
	}
	if err := d.call(ctx, http.MethodGet, "/readyz", nil, &ready); err != nil {
		return fail("see the reason; /status says tee "+d.status.TEE, "skr %s answers, but is not ready: %v", d.status.Version, err)
	}
	return ok("skr %s answers and is ready: tee %s, certificates %s", d.status.Version, d.status.TEE, ready.Certificates)
}

func (d *sidecarDoctor) checkEvidence(ctx context.Context) checkResult {
	if !d.up {
		return skip("needs the sidecar")
	}
	var comb combinedResponse
	if err := d.call(ctx, http.MethodPost, "/attest/combined", map[string]string{"runtime_data": base64.StdEncoding.EncodeToString(doctorRuntimeData)}, &comb); err != nil {
		return fail("see the sidecar's message", "%v", err)
	}
	rep, certs, err := parseCombined(comb)
	if err != nil {
		return fail("", "the sidecar's /attest/combined answer: %v", err)
	}
	d.rep = rep
	if err := verifyEvidence(rep, certs); err != nil {
		return fail("the certificates the sidecar hands out do not verify its report: check certcache", "the report does not verify with the certificates handed out: %v", err)
	}
	d.verified = true
	note := ""
	if d.status.Emulated {
		note = " (emulated: no real verifier trusts it)"
	}
	return ok("%s: report version %d, VMPL %d, REPORTED_TCB %016x; the certificates handed out certify it and it verifies%s", d.status.TEE, rep.Version, rep.VMPL, rep.ReportedTCB, note)
}

// parseCombined reads the report and the certificates of /attest/combined.
func parseCombined(c combinedResponse) (*snpReport, *platformCerts, error) {
	raw, err := base64.StdEncoding.DecodeString(c.Evidence)
	if err != nil {
		return nil, nil, fmt.Errorf("evidence is not base64: %w", err)
	}
	rep, err := parseReport(raw)
	if err != nil {
		return nil, nil, err
	}
	chain, err := base64.StdEncoding.DecodeString(c.Endorsements)
	if err != nil {
		return nil, nil, fmt.Errorf("endorsements are not base64: %w", err)
	}
	certs, err := parsePEMCertificates(chain)
	if err != nil {
		return nil, nil, err
	}
	if len(certs) != 3 {
		return nil, nil, fmt.Errorf("endorsements hold %d certificates, want VCEK, ASK, ARK", len(certs))
	}
	ask, ark, err := identifyASKARK(certs[1:])
	if err != nil {
		return nil, nil, err
	}
	info, err := parseVCEKExtensions(certs[0])
	if err != nil {
		return nil, nil, fmt.Errorf("VCEK: %w", err)
	}
	return rep, assemblePlatformCerts(certs[0], ask, ark, info.TCB), nil
}

func (d *sidecarDoctor) checkSecurityContext(context.Context) checkResult {
	if d.rep == nil {
		return skip("needs a report")
	}
	got := hex.EncodeToString(d.rep.HostData[:])
	switch {
	case d.status.HostData == "" && d.status.Emulated:
		return ok("no security policy given: the emulator's HOST_DATA is %s", got)
	case d.status.HostData == "":
		return warn("on Confidential ACI the platform provides it (UVM_SECURITY_CONTEXT_DIR)", "the sidecar found no security policy: the report's HOST_DATA is %s", got)
	case d.status.HostData != got:
		return fail("the sidecar's security context is not this container group's", "the report's HOST_DATA %s is not the security policy's digest %s", got, d.status.HostData)
	}
	return ok("HOST_DATA %s, the digest of the sidecar's security policy: the key's release policy must name it as %s", got, hostDataClaim)
}

func (d *sidecarDoctor) checkIdentity(ctx context.Context) checkResult {
	switch {
	case d.fl.akv == "":
		return skip("give -akv VAULT to check the identity's token for it")
	case isEmulatedName(d.fl.akv):
		if !isEmulatedVaultName(d.fl.akv) || d.status.EmulatedAzure == nil {
			return fail("", "%v", errNotEmulating(d.fl.akv))
		}
		d.bearer = doctorEmulatedBearer
		return ok("%s is emulated by the sidecar, whose own identity is emulated too: the doctor reads it as a caller", d.fl.akv)
	}
	tok, source, err := d.tokens.Token(ctx, d.fl.akv)
	if err != nil {
		return fail(identityFix(err), "%v", err)
	}
	d.bearer = tok
	return ok("from %s%s", source, describeBearer(tok, vaultResource(d.fl.akv), d.env.Now()))
}

func (d *sidecarDoctor) checkEndpoint(ctx context.Context, flag, host string) checkResult {
	switch {
	case host == "":
		return skip("give %s to check it", flag)
	case isEmulatedName(host) && d.status.EmulatedAzure != nil && !strings.Contains(hostName(host), ":"):
		return ok("%s: served by the sidecar (-emulate)", host)
	case isEmulatedName(host):
		return fail("", "%v", errNotEmulating(host))
	}
	return dialEndpoint(ctx, host, d.env.Server.Roots)
}

func (d *sidecarDoctor) checkMAAToken(ctx context.Context) checkResult {
	switch {
	case d.fl.maa == "":
		return skip("give -maa to get an MAA token")
	case !d.verified:
		return skip("needs evidence that verifies (above)")
	}
	var out struct {
		Token string `json:"token"`
	}
	req := map[string]string{"maa_endpoint": d.fl.maa, "runtime_data": base64.StdEncoding.EncodeToString(doctorRuntimeData)}
	if err := d.call(ctx, http.MethodPost, "/attest/maa", req, &out); err != nil {
		return fail("see the sidecar's message; check -maa", "%v", err)
	}
	return d.tokenFacts(out.Token)
}

func (d *sidecarDoctor) checkRelease(ctx context.Context) checkResult {
	if res, skipped := d.releaseSkipped(); skipped {
		return res
	}
	var out struct {
		Key string `json:"key"`
	}
	req := map[string]string{"maa_endpoint": d.fl.maa, "akv_endpoint": d.fl.akv, "kid": d.fl.key.String()}
	if err := d.call(ctx, http.MethodPost, "/key/release", req, &out); err != nil {
		return fail("see the sidecar's message; the release policy line above says whether the policy is met", "%v", err)
	}
	if out.Key == "" {
		return fail("", "%v", errors.New("the sidecar answered 200 without a key"))
	}
	return releasedResult(out.Key)
}
