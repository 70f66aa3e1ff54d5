package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// `skr doctor`: a pre-flight run from inside the container group. Each
// check is one line, ok / warn / fail / skip, with what to do when it is
// not ok; the exit status is 0 when nothing failed, 1 when something did,
// 2 on bad usage. By default it builds the sidecar in-process from the
// same settings and environment `skr serve` reads (so it may run in the
// sidecar's own container: the binary is in the image); with -addr it
// checks a running sidecar through its API instead. With -emulate it runs
// every check against the emulator and the emulated Azure services.

const doctorUsage = "Usage: skr doctor [-emulate] [-maa HOST] [-akv HOST] [-kid NAME[/VERSION]] [-release] [-addr HOST:PORT]"

const (
	doctorTimeout      = 2 * time.Minute  // the whole run
	doctorCheckTimeout = 30 * time.Second // one check, as one request's deadline
	doctorDialTimeout  = 10 * time.Second
	// Clock skew against MAA's iat: beyond the first a warning, beyond
	// the second a failure (MAA and Key Vault check nbf and exp).
	skewWarn = time.Minute
	skewFail = 5 * time.Minute
)

// doctorRuntimeData is the runtime data of the doctor's own reports.
var doctorRuntimeData = []byte(`{"skr":"doctor"}`)

// doctorEnv is what the command takes from its surroundings; tests replace
// it.
type doctorEnv struct {
	Getenv func(string) string
	Server serverOptions    // how the in-process sidecar is built
	Now    func() time.Time // for the clock check; nil = time.Now
}

type doctorFlags struct {
	maa, akv, kid string
	key           keyRef
	release       bool
	emulate       bool
	addr          string
	base64        string
	verbose       bool
}

func runDoctor(args []string, stdout, stderr io.Writer) int {
	return doctorMain(args, stdout, stderr, doctorEnv{Getenv: os.Getenv})
}

func doctorMain(args []string, stdout, stderr io.Writer, env doctorEnv) int {
	fl, code := parseDoctorFlags(args, stderr, env.Getenv)
	if fl == nil {
		return code
	}
	if env.Now == nil {
		env.Now = time.Now
	}
	ctx, cancel := context.WithTimeout(context.Background(), doctorTimeout)
	defer cancel()
	r := &doctorReport{w: stdout}
	if fl.addr != "" {
		runDoctorAgainstSidecar(ctx, fl, env, r)
	} else if err := runDoctorInProcess(ctx, fl, env, r); err != nil {
		fmt.Fprintf(stderr, "skr doctor: %v\n", err)
		return 2
	}
	return r.finish()
}

func parseDoctorFlags(args []string, stderr io.Writer, getenv func(string) string) (*doctorFlags, int) {
	var fl doctorFlags
	fs := doctorFlagSet(&fl, stderr)
	if err := fs.Parse(args); err != nil {
		return nil, exitCodeForParse(err)
	}
	err := fl.complete(getenv)
	if fs.NArg() > 0 {
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if err != nil {
		fmt.Fprintf(stderr, "skr doctor: %v\n%s\n", err, doctorUsage)
		return nil, 2
	}
	return &fl, 0
}

// doctorFlagSet declares doctor's flags into fl.
func doctorFlagSet(fl *doctorFlags, stderr io.Writer) *flag.FlagSet {
	fs := newCommandFlags("skr doctor", stderr, doctorUsage,
		"Checks everything a key release needs, one line each with what to do, from inside the container group:",
		"the guest interface and a report, the security context and its HOST_DATA, the platform certificates",
		"against the report's TCB, the certificate source, an identity token for the vault, DNS and TLS to MAA and",
		"the vault, an MAA token, the key's release policy against that token, and the clock against MAA's.",
		"Exit 0: nothing failed; 1: a check failed; 2: bad usage.")
	fs.StringVar(&fl.maa, "maa", "", "the MAA endpoint releases use (as maa_endpoint), e.g. sharedeus.eus.attest.azure.net")
	fs.StringVar(&fl.akv, "akv", "", "the Key Vault or Managed HSM host (as akv_endpoint)")
	fs.StringVar(&fl.kid, "kid", "", "a key name (NAME or NAME/VERSION): its release policy is checked against the MAA token (needs -akv and -maa)")
	fs.BoolVar(&fl.release, "release", false, "also release the key once (it is never printed)")
	fs.BoolVar(&fl.emulate, "emulate", false, "check the emulator and the emulated Azure services (env SKR_EMULATE=1)")
	fs.StringVar(&fl.addr, "addr", "", "check the sidecar running at HOST:PORT through its API instead of building one in-process")
	fs.StringVar(&fl.base64, "base64", "", "SkrSideCarArgs, as the sidecar takes it (env SkrSideCarArgs)")
	fs.BoolVar(&fl.verbose, "v", false, "also print the in-process sidecar's log (debug level) to stderr")
	return fs
}

// complete fills what the environment gives and checks the flags together.
func (f *doctorFlags) complete(getenv func(string) string) error {
	if f.base64 == "" {
		f.base64 = getenv("SkrSideCarArgs")
	}
	if !f.emulate {
		if v := getenv("SKR_EMULATE"); v != "" {
			b, err := parseEmulateSetting(v)
			if err != nil {
				return err
			}
			f.emulate = b
		}
	}
	for _, e := range []struct {
		name string
		v    *string
	}{{"maa", &f.maa}, {"akv", &f.akv}} {
		if *e.v == "" {
			continue
		}
		h, err := normalizeEndpoint(e.name, *e.v)
		if err != nil {
			return fmt.Errorf("-%s: %w", e.name, err)
		}
		*e.v = h
	}
	if f.kid != "" {
		k, err := parseKeyRef(f.kid)
		if err != nil {
			return fmt.Errorf("-kid: %w", err)
		}
		f.key = k
		if f.akv == "" || f.maa == "" {
			return errors.New("-kid needs -akv and -maa: the key's vault, and the MAA whose token its policy is checked against")
		}
	}
	if f.release && f.kid == "" {
		return errors.New("-release needs -kid (and -akv, -maa)")
	}
	if f.addr != "" {
		if f.emulate {
			return errors.New("-emulate builds an emulating sidecar in-process; a running one (-addr) was started with its own settings: give one of them")
		}
		base, err := sidecarBase(f.addr, getenv)
		if err != nil {
			return err
		}
		f.addr = base
	}
	return nil
}

// ---- the report ----

type checkStatus int

const (
	checkOK checkStatus = iota
	checkWarn
	checkFail
	checkSkip
)

func (s checkStatus) String() string {
	return [...]string{"ok", "warn", "fail", "skip"}[s]
}

// checkResult is one line of the report, and what to do when it is not ok.
type checkResult struct {
	status checkStatus
	detail string
	fix    string
}

func ok(format string, a ...any) checkResult {
	return checkResult{status: checkOK, detail: fmt.Sprintf(format, a...)}
}

func skip(format string, a ...any) checkResult {
	return checkResult{status: checkSkip, detail: fmt.Sprintf(format, a...)}
}

func warn(fix, format string, a ...any) checkResult {
	return checkResult{status: checkWarn, detail: fmt.Sprintf(format, a...), fix: fix}
}

func fail(fix, format string, a ...any) checkResult {
	return checkResult{status: checkFail, detail: fmt.Sprintf(format, a...), fix: fix}
}

// doctorReport prints each check as it ends, so a slow one shows where it
// is, and counts them.
type doctorReport struct {
	w      io.Writer
	counts [4]int
}

const checkNameWidth = 18

func (r *doctorReport) line(name string, res checkResult) {
	r.counts[res.status]++
	fmt.Fprintf(r.w, "%-4s  %-*s  %s\n", res.status, checkNameWidth, name, oneLine(res.detail))
	if res.fix != "" {
		fmt.Fprintf(r.w, "      %-*s  what to do: %s\n", checkNameWidth, "", oneLine(res.fix))
	}
}

func (r *doctorReport) finish() int {
	fmt.Fprintf(r.w, "%d ok, %d %s, %d failed, %d skipped\n",
		r.counts[checkOK], r.counts[checkWarn], plural(r.counts[checkWarn], "warning", "warnings"), r.counts[checkFail], r.counts[checkSkip])
	if r.counts[checkFail] > 0 {
		return 1
	}
	return 0
}

// ---- in-process ----

// doctorCommon is what both kinds of run share: the flags, the report, and
// what earlier checks found that later ones need.
type doctorCommon struct {
	fl     *doctorFlags
	env    doctorEnv
	report *doctorReport
	bearer string // the identity's token for -akv
	token  string // the MAA token a release sends
	claims map[string]any
}

// check runs one check within its own deadline and prints its line.
func (d *doctorCommon) check(ctx context.Context, name string, fn func(ctx context.Context) checkResult) {
	ctx, cancel := context.WithTimeout(ctx, doctorCheckTimeout)
	defer cancel()
	d.report.line(name, fn(ctx))
}

// doctorRun is what the in-process checks find out.
type doctorRun struct {
	doctorCommon
	s     *server
	rep   *snpReport // a report from the guest interface
	certs *platformCerts
	// localMatch: the platform's own certificates match the report.
	localMatch bool
}

func runDoctorInProcess(ctx context.Context, fl *doctorFlags, env doctorEnv, r *doctorReport) error {
	args, err := parseSkrSideCarArgs(fl.base64)
	if err != nil {
		return err
	}
	log := slog.New(slog.DiscardHandler)
	if fl.verbose {
		log = newLogger(os.Stderr, slog.LevelDebug)
	}
	opts := env.Server
	if opts.Getenv == nil {
		opts.Getenv = env.Getenv
	}
	cfg := serverConfig{Args: args, Emulate: fl.emulate, WrappingKeyTTL: time.Minute, ServerType: serverTypeHTTP}
	s, err := newServer(cfg, log, opts)
	if err != nil {
		return err
	}
	defer s.rel.Close()
	d := &doctorRun{doctorCommon: doctorCommon{fl: fl, env: env, report: r}, s: s}
	fmt.Fprintf(r.w, "skr doctor %s: %s\n", version, d.describe())
	d.check(ctx, "guest interface", d.checkGuest)
	d.check(ctx, "security context", d.checkSecurityContext)
	d.check(ctx, "platform certs", d.checkPlatformCerts)
	d.check(ctx, "certificate source", d.checkCertSource)
	d.check(ctx, "identity token", d.checkIdentity)
	d.check(ctx, "MAA endpoint", func(ctx context.Context) checkResult { return d.checkEndpoint(ctx, "-maa", fl.maa) })
	d.check(ctx, "vault endpoint", func(ctx context.Context) checkResult { return d.checkEndpoint(ctx, "-akv", fl.akv) })
	d.check(ctx, "MAA token", d.checkMAAToken)
	d.check(ctx, "release policy", func(ctx context.Context) checkResult { return d.checkPolicy(ctx, s) })
	d.check(ctx, "key release", d.checkRelease)
	d.check(ctx, "clock", d.checkClock)
	return nil
}

func (d *doctorRun) describe() string {
	switch {
	case d.s.azure != nil:
		return "an in-process sidecar with emulated SNP evidence and emulated Azure services (-emulate): nothing real trusts them"
	case d.s.tee != nil && d.s.tee.Emulated():
		return "an in-process sidecar with emulated SNP evidence"
	}
	return "an in-process sidecar with the settings and environment skr serve reads"
}

func (d *doctorRun) checkGuest(ctx context.Context) checkResult {
	s := d.s
	if s.tee == nil {
		return fail("run it in a confidential container group (ACI sku Confidential, AKS runtimeClassName kata-cc-isolation) whose sidecar may open the device (privileged in the security policy); on a developer machine use -emulate",
			"no SEV-SNP guest interface: %v", s.teeErr)
	}
	_, rep, err := s.rawReport(ctx, doctorRuntimeData)
	if err != nil {
		return fail("check the kernel log of the guest (dmesg: sev-guest); a command that timed out may still be running on the device",
			"%s gave no report: %v", s.tee.Name(), err)
	}
	d.rep = rep
	note := ""
	if s.tee.Emulated() {
		note = " (emulated: no real verifier trusts it)"
	}
	return ok("%s: report version %d, VMPL %d, REPORTED_TCB %016x%s", s.tee.Name(), rep.Version, rep.VMPL, rep.ReportedTCB, note)
}

func (d *doctorRun) checkSecurityContext(context.Context) checkResult {
	if d.rep == nil {
		return skip("needs a report")
	}
	digest, hasPolicy := d.s.inputs.PolicyDigest()
	emulated := d.s.tee.Emulated()
	switch {
	case !hasPolicy && emulated:
		return ok("no security policy given: the emulator's HOST_DATA is %x (with a policy it is its skr digest)", d.rep.HostData)
	case !hasPolicy:
		return warn("on Confidential ACI the platform provides it (UVM_SECURITY_CONTEXT_DIR); without it the HOST_DATA above cannot be tied to a policy",
			"no security policy found (UVM_SECURITY_CONTEXT_DIR, /security-context-*, UVM_SECURITY_POLICY): the report's HOST_DATA is %x", d.rep.HostData)
	case digest != d.rep.HostData:
		return fail("the security context is not this container group's: check UVM_SECURITY_CONTEXT_DIR and the mounted files",
			"the report's HOST_DATA %x is not the digest %x of the security policy from %s", d.rep.HostData, digest, d.s.inputs.Source)
	}
	return ok("security policy from %s; HOST_DATA %x (its skr digest), as the report carries: the key's release policy must name it as %s",
		d.s.inputs.Source, digest, hostDataClaim)
}

func (d *doctorRun) checkPlatformCerts(ctx context.Context) checkResult {
	if d.rep == nil {
		return skip("needs a report")
	}
	p := d.s.certs
	local, info, err := p.localCertificates(ctx)
	if err != nil {
		return fail("", "the platform's certificates: %v", err)
	}
	product := p.reportProduct(d.rep, info)
	tcb := formatTCB(product, d.rep.ReportedTCB)
	const fixFetch = "set certcache in SkrSideCarArgs so that fresh certificates can be fetched: LocalTHIM inside Azure, AzCache with americas.acccache.azure.net, or AMD for KDS"
	stale := ""
	if local != nil {
		stale = mismatch(local, info, d.rep)
		if stale == "" && p.neverMatchLocal {
			stale = "-allowTestingMismatchedTCB makes them never match"
		}
		if stale == "" {
			d.localMatch = true
			return d.verified(local, "the platform's (%s) certify the report's TCB %s", d.localSource(), tcb)
		}
	}
	fresh, err := p.forReport(ctx, d.rep)
	switch {
	case err != nil && local != nil:
		return fail(fixFetch, "the platform's are stale (%s) and fetching fresh ones failed: %v", stale, err)
	case err != nil:
		return fail(fixFetch, "the platform provides none and fetching them failed: %v", err)
	case local != nil:
		res := d.verified(fresh, "the platform's are stale (%s); fresh ones from %s certify the report's TCB %s", stale, p.src.Service(), tcb)
		if res.status == checkOK {
			res.status = checkWarn
			res.fix = "nothing, unless it persists: the sidecar fetches fresh ones for each new TCB; after a host firmware update the platform's copy lags"
		}
		return res
	}
	return d.verified(fresh, "fetched from %s (the platform provides none); they certify the report's TCB %s", p.src.Service(), tcb)
}

// verified checks the report against certs and keeps them.
func (d *doctorRun) verified(certs *platformCerts, format string, a ...any) checkResult {
	if err := verifyEvidence(d.rep, certs); err != nil {
		return fail("the certificates handed out would not verify the report: check certcache and the platform's host-amd-cert",
			"the report does not verify with them: %v", err)
	}
	d.certs = certs
	return ok(format+"; the report verifies with them", a...)
}

func (d *doctorRun) localSource() string {
	if _, ok := d.s.tee.(platformCertSource); ok {
		return d.s.tee.Name()
	}
	return "security context " + d.s.inputs.Source
}

func (d *doctorRun) checkCertSource(ctx context.Context) checkResult {
	p := d.s.certs
	switch {
	case d.localMatch && d.s.tee.Emulated():
		return ok("not needed: the emulator's own certificates match its reports")
	case p.srcErr != nil:
		return fail("fix certcache in SkrSideCarArgs", "certcache is misconfigured: %v", p.srcErr)
	case d.rep == nil:
		return skip("needs a report")
	}
	_, info, _ := p.localCertificates(ctx)
	product := p.reportProduct(d.rep, info)
	_, err := p.fetchShared(ctx, certKey{chipID: d.rep.ChipID, tcb: d.rep.ReportedTCB}, product)
	if err != nil {
		res := fail("set certcache in SkrSideCarArgs to a source this container group reaches (LocalTHIM inside Azure, AzCache, or AMD)",
			"%s (%s) did not give the certificates for TCB %s: %v", p.src.Service(), p.src.Base, formatTCB(product, d.rep.ReportedTCB), err)
		if d.certs != nil {
			res.status = checkWarn
			res.detail += "; the platform's certificates serve for now, but after a host firmware update fresh ones are needed"
		}
		return res
	}
	return ok("%s (%s) has the certificates for TCB %s", p.src.Service(), p.src.Base, formatTCB(product, d.rep.ReportedTCB))
}

func (d *doctorRun) checkIdentity(ctx context.Context) checkResult {
	if d.fl.akv == "" {
		return skip("give -akv VAULT to check the identity's token for it")
	}
	if err := d.s.refuseUnservedNames(d.fl.akv); err != nil {
		return fail("", "%v", err)
	}
	tok, source, err := d.s.tokens.Token(ctx, d.fl.akv)
	if err != nil {
		return fail(identityFix(err), "%v", err)
	}
	d.bearer = tok
	return ok("from %s%s", source, describeBearer(tok, vaultResource(d.fl.akv), d.env.Now()))
}

// identityFix says what to do about an identity that gave no token.
func identityFix(err error) string {
	if errorKind(err) == kindInvalid {
		return "-akv must be a Key Vault or Managed HSM host (*.vault.azure.net, *.managedhsm.azure.net, ...): the identity's token goes only there"
	}
	return "attach a user-assigned managed identity to the container group and put its client id (not object id) in SkrSideCarArgs identity.client_id; " +
		"on AKS use workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE)"
}

// describeBearer says what a bearer token is for and how long it lasts,
// from its claims when it is a JWT; never the token.
func describeBearer(tok, resource string, now time.Time) string {
	claims, err := jwtClaims(tok)
	if err != nil {
		return fmt.Sprintf(", for %s (an opaque token)", resource)
	}
	aud, _ := claims["aud"].(string)
	out := ", audience " + truncate(aud, 100)
	if exp, has, _ := numericDate(claims, "exp"); has {
		out += ", expires in " + exp.Sub(now).Round(time.Minute).String()
	}
	if aud != "" && strings.TrimRight(aud, "/") != resource {
		out += " (want " + resource + ")"
	}
	return out
}

// checkEndpoint resolves host and shakes hands with it over TLS, as the
// sidecar's calls will.
func (d *doctorRun) checkEndpoint(ctx context.Context, flag, host string) checkResult {
	if host == "" {
		return skip("give %s to check it", flag)
	}
	if isEmulatedName(host) {
		if err := d.s.refuseUnservedNames(host); err != nil {
			return fail("", "%v", err)
		}
		return ok("%s: served in this process by -emulate (no DNS, no TLS)", host)
	}
	return dialEndpoint(ctx, host, d.s.upstreamRoots())
}

// dialEndpoint looks host up and makes a TLS connection to it, verifying
// its certificate against roots (nil = the system's).
func dialEndpoint(ctx context.Context, host string, roots *x509.CertPool) checkResult {
	name := hostName(host)
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return fail("check the name (the bare host, e.g. myvault.vault.azure.net); for a private endpoint, deploy the container group into the VNet with its private DNS zone",
			"%s: DNS: %v", host, err)
	}
	target := host
	if _, _, err := net.SplitHostPort(host); err != nil {
		target = net.JoinHostPort(name, "443")
	}
	if proxy := proxyFor(target); proxy != "" {
		return ok("%s: resolves to %s; the sidecar reaches it through the proxy %s (TLS not checked from here)", host, strings.Join(addrs, ", "), proxy)
	}
	dialer := &tls.Dialer{NetDialer: &net.Dialer{Timeout: doctorDialTimeout}, Config: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: name}}
	conn, err := dialer.DialContext(ctx, "tcp", target)
	if err != nil {
		return fail("outbound HTTPS (443) from the container group must be allowed; a TLS-inspecting proxy needs its root in SSL_CERT_FILE",
			"%s: resolves to %s, but TLS: %v", host, strings.Join(addrs, ", "), err)
	}
	defer conn.Close()
	st := conn.(*tls.Conn).ConnectionState()
	leaf := st.PeerCertificates[0]
	return ok("%s: resolves to %s; %s, certificate for %s valid until %s", host, strings.Join(addrs, ", "),
		tls.VersionName(st.Version), name, leaf.NotAfter.UTC().Format("2006-01-02"))
}

// proxyFor is the proxy the environment sets for https://target, "" for
// none.
func proxyFor(target string) string {
	u, err := url.Parse("https://" + target)
	if err != nil {
		return ""
	}
	proxy, err := http.ProxyFromEnvironment(&http.Request{URL: u})
	if err != nil || proxy == nil {
		return ""
	}
	return proxy.Redacted()
}

func (d *doctorRun) checkMAAToken(ctx context.Context) checkResult {
	switch {
	case d.fl.maa == "":
		return skip("give -maa to get an MAA token")
	case d.certs == nil:
		return skip("needs evidence that verifies (above)")
	}
	if err := d.s.refuseUnservedNames(d.fl.maa); err != nil {
		return fail("", "%v", err)
	}
	cred, _, err := d.s.rel.credential(ctx, d.fl.maa)
	if err != nil {
		return fail(maaFix(err), "%v", err)
	}
	defer d.s.rel.put(cred)
	return d.tokenFacts(cred.token)
}

// tokenFacts reads the MAA token's claims for the checks after it and
// says what a release policy is checked against.
func (d *doctorCommon) tokenFacts(token string) checkResult {
	claims, err := jwtClaims(token)
	if err != nil {
		return fail("", "MAA answered with a token whose claims cannot be read: %v", err)
	}
	d.token, d.claims = token, claims
	return ok("%s", describeMAAClaims(claims, d.env.Now()))
}

// describeMAAClaims are the claims a release policy usually names.
func describeMAAClaims(claims map[string]any, now time.Time) string {
	var parts []string
	for _, c := range []string{hostDataClaim, "x-ms-compliance-status", "x-ms-sevsnpvm-is-debuggable", "x-ms-sevsnpvm-vmpl"} {
		if v, ok := claims[c]; ok {
			parts = append(parts, c+" "+renderClaimValue(v))
		} else {
			parts = append(parts, c+" absent")
		}
	}
	iss, _ := claims["iss"].(string)
	out := fmt.Sprintf("issued by %s: %s", truncate(iss, 100), strings.Join(parts, ", "))
	if exp, has, _ := numericDate(claims, "exp"); has {
		out += ", expires in " + exp.Sub(now).Round(time.Minute).String()
	}
	return out
}

// maaFix says what to do about an attestation MAA refused or failed.
func maaFix(err error) string {
	switch errorKind(err) {
	case kindDenied:
		return "check -maa: an MAA instance (sharedeus.eus.attest.azure.net, NAME.REGION.attest.azure.net) whose policy accepts SEV-SNP container groups"
	case kindUpstream:
		return "MAA rejected the evidence: a TCB below its baseline (update the host), a UVM it does not endorse, or certificates for another TCB"
	case kindTimeout:
		return "outbound HTTPS to MAA is slow or blocked; see the MAA endpoint line"
	}
	return "see the message"
}

// checkPolicy reads the key's release policy through s and evaluates it
// against the MAA token.
func (d *doctorCommon) checkPolicy(ctx context.Context, s *server) checkResult {
	switch {
	case d.fl.kid == "":
		return skip("give -kid (with -akv and -maa) to check the key's release policy against the MAA token")
	case d.token == "" || d.bearer == "":
		return skip("needs the MAA token and the identity token (above)")
	}
	return policyResult(checkKeyPolicy(ctx, s, d.fl, d.bearer, d.token))
}

// keyPolicyCheck is a key's release policy evaluated against a token.
type keyPolicyCheck struct {
	fl      *doctorFlags
	verdict policyVerdict
	policy  *releasePolicy
	err     error
}

func checkKeyPolicy(ctx context.Context, s *server, fl *doctorFlags, bearer, token string) keyPolicyCheck {
	v, p, err := s.checkReleasePolicy(ctx, fl.akv, fl.key, bearer, token)
	return keyPolicyCheck{fl: fl, verdict: v, policy: p, err: err}
}

// policyResult is the release policy line: met (with what the lint finds),
// not met (with the explanation and what to do), or why it could not be
// read.
func policyResult(c keyPolicyCheck) checkResult {
	where := fmt.Sprintf("key %q at %s", c.fl.key.String(), c.fl.akv)
	var ue *upstreamError
	switch {
	case errors.As(c.err, &ue) && ue.StatusCode == http.StatusForbidden:
		return warn("to have the policy checked, let the identity read keys (e.g. Key Vault Crypto User) or check it offline with skr policy check; -release tries the release itself",
			"%s: %v", where, c.err)
	case errors.As(c.err, &ue) && ue.StatusCode == http.StatusNotFound:
		return fail("check -kid (NAME or NAME/VERSION) and -akv", "%s: %v", where, c.err)
	case c.err != nil:
		return fail("", "%s: %v", where, c.err)
	case !c.verdict.Met:
		detail := fmt.Sprintf("%s: not met by this container group's MAA token: %s", where, c.verdict)
		if hint := authorityHint(c.policy, c.fl.maa); hint != "" {
			detail += "; " + hint
		}
		return fail("make the policy name what the token above carries: x-ms-sevsnpvm-hostdata is the skr digest of the deployed security policy "+
			"(any change to images, variables or commands changes it), the authority is https:// + the MAA endpoint; re-import the key (skr importkey) "+
			"or add an anyOf entry; skr policy check tests a policy offline", "%s", detail)
	}
	lint := lintReleasePolicy(c.policy)
	if isEmulatedVaultName(c.fl.akv) {
		// The emulator without a security policy reports zero HOST_DATA.
		lint = slices.DeleteFunc(lint, func(l string) bool { return strings.HasSuffix(l, zeroHostDataLint) })
	}
	if len(lint) > 0 {
		return warn("tighten the policy; skr policy check -p POLICY lists what it leaves open",
			"%s: %s; but %s", where, c.verdict, strings.Join(lint, "; "))
	}
	return ok("%s: %s", where, c.verdict)
}

// releaseSkipped is the key release line when the release is not tried.
func (d *doctorCommon) releaseSkipped() (checkResult, bool) {
	switch {
	case d.fl.kid == "":
		return skip("not attempted (-kid and -release)"), true
	case !d.fl.release:
		return skip("not attempted: add -release to release %s once (the key is not printed)", d.fl.key.String()), true
	case d.token == "" || d.bearer == "":
		return skip("needs the MAA token and the identity token (above)"), true
	}
	return checkResult{}, false
}

func (d *doctorRun) checkRelease(ctx context.Context) checkResult {
	if res, skipped := d.releaseSkipped(); skipped {
		return res
	}
	jwkJSON, step, err := d.s.releaseKey(ctx, &keyReleaseParams{MAAHost: d.fl.maa, VaultHost: d.fl.akv, Key: d.fl.key})
	if err != nil {
		return fail("see the message; the release policy line above says whether the policy is met", "%s step: %v", step, err)
	}
	return releasedResult(jwkJSON)
}

// releasedResult says what was released and forgets the key.
func releasedResult(jwkJSON string) checkResult {
	b := []byte(jwkJSON)
	defer clear(b)
	k, err := parseJWK(b)
	if err != nil {
		return fail("", "the released key is not a JWK: %v", err)
	}
	return ok("released a key of kty %s, kid %s (not printed)", k.Kty, k.Kid)
}

func (d *doctorCommon) checkClock(context.Context) checkResult {
	return clockResult(d.claims, d.env.Now())
}

// clockResult compares the local clock with MAA's, as the token's iat
// says it was moments ago.
func clockResult(claims map[string]any, now time.Time) checkResult {
	if claims == nil {
		return skip("needs an MAA token")
	}
	iat, has, err := numericDate(claims, "iat")
	if err != nil || !has {
		return skip("the MAA token has no iat")
	}
	skew := now.Sub(iat)
	abs := max(skew, -skew).Round(time.Second)
	side := "behind"
	if skew > 0 {
		side = "ahead of"
	}
	const fix = "synchronise the clock (NTP, chrony): tokens' nbf and exp are checked against it"
	switch {
	case abs > skewFail:
		return fail(fix, "the local clock is %s %s MAA's (the token's iat)", abs, side)
	case abs > skewWarn:
		return warn(fix, "the local clock is %s %s MAA's (the token's iat)", abs, side)
	}
	return ok("within %s of MAA's (the token's iat)", abs)
}
