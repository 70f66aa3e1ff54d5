package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ---- a strict parser of the text exposition format ----

type promSample struct {
	name   string
	labels map[string]string
	value  float64
}

type promFamily struct {
	name, typ, help string
	samples         []promSample
}

var (
	promMetricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	promLabelName  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// parseExposition reads the text format as a strict scraper would and
// fails the test on anything out of place: a sample before its TYPE, a
// family split in two, a duplicate series, a bad escape, a counter that is
// not a whole non-negative number, a histogram whose buckets are not
// cumulative or whose +Inf bucket is not its count.
func parseExposition(t *testing.T, text string) map[string]*promFamily {
	t.Helper()
	if !strings.HasSuffix(text, "\n") {
		t.Fatalf("the exposition does not end with a line feed")
	}
	fams := map[string]*promFamily{}
	var cur *promFamily
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		fail := func(format string, args ...any) {
			t.Fatalf("line %d %q: %s", i+1, line, fmt.Sprintf(format, args...))
		}
		switch {
		case line == "":
			fail("empty line")
		case strings.HasPrefix(line, "# HELP "):
			name, help, _ := strings.Cut(strings.TrimPrefix(line, "# HELP "), " ")
			if !promMetricName.MatchString(name) || fams[name] != nil {
				fail("bad or repeated HELP")
			}
			if strings.Contains(strings.NewReplacer(`\\`, "", `\n`, "").Replace(help), `\`) {
				fail("bad escape in HELP")
			}
			cur = &promFamily{name: name, help: help}
			fams[name] = cur
		case strings.HasPrefix(line, "# TYPE "):
			name, typ, _ := strings.Cut(strings.TrimPrefix(line, "# TYPE "), " ")
			if cur == nil || cur.name != name || cur.typ != "" || len(cur.samples) > 0 {
				fail("TYPE not right after its HELP")
			}
			if typ != "counter" && typ != "gauge" && typ != "histogram" {
				fail("unknown type %q", typ)
			}
			cur.typ = typ
		case strings.HasPrefix(line, "#"):
			fail("unexpected comment")
		default:
			s := parseSampleLine(t, line)
			if cur == nil || cur.typ == "" || familyOf(s.name, cur) != cur.name {
				fail("a sample outside its family (current family %v)", cur)
			}
			key := s.name + seriesKey(s.labels, "")
			if seen[key] {
				fail("duplicate series")
			}
			seen[key] = true
			if cur.typ == "counter" && (s.value < 0 || s.value != math.Trunc(s.value)) {
				fail("counter value %v", s.value)
			}
			cur.samples = append(cur.samples, s)
		}
	}
	for _, f := range fams {
		if f.typ == "" {
			t.Fatalf("family %s has no TYPE", f.name)
		}
		if f.typ == "counter" && !strings.HasSuffix(f.name, "_total") {
			t.Errorf("counter %s does not end in _total", f.name)
		}
		if f.typ == "histogram" {
			checkHistogram(t, f)
		}
	}
	return fams
}

// familyOf is the family a sample name belongs to.
func familyOf(name string, cur *promFamily) string {
	if cur.typ == "histogram" {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				return base
			}
		}
	}
	return name
}

func parseSampleLine(t *testing.T, line string) promSample {
	t.Helper()
	s := promSample{labels: map[string]string{}}
	rest := line
	i := strings.IndexAny(rest, "{ ")
	if i < 0 {
		t.Fatalf("%q: no value", line)
	}
	s.name, rest = rest[:i], rest[i:]
	if !promMetricName.MatchString(s.name) {
		t.Fatalf("%q: bad metric name", line)
	}
	if strings.HasPrefix(rest, "{") {
		rest = rest[1:]
		for !strings.HasPrefix(rest, "}") {
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				t.Fatalf("%q: bad label", line)
			}
			name := rest[:eq]
			if !promLabelName.MatchString(name) || strings.HasPrefix(name, "__") {
				t.Fatalf("%q: bad label name %q", line, name)
			}
			if _, dup := s.labels[name]; dup {
				t.Fatalf("%q: label %s twice", line, name)
			}
			value, n, err := unquoteLabel(rest[eq+2:])
			if err != nil {
				t.Fatalf("%q: label %s: %v", line, name, err)
			}
			s.labels[name] = value
			rest = rest[eq+2+n:]
			switch {
			case strings.HasPrefix(rest, ","):
				rest = rest[1:]
			case !strings.HasPrefix(rest, "}"):
				t.Fatalf("%q: labels not separated by commas", line)
			}
		}
		rest = rest[1:]
	}
	v, ok := strings.CutPrefix(rest, " ")
	if !ok || strings.Contains(v, " ") {
		t.Fatalf("%q: not NAME{LABELS} VALUE", line)
	}
	f, err := parsePromFloat(v)
	if err != nil {
		t.Fatalf("%q: value: %v", line, err)
	}
	s.value = f
	return s
}

// unquoteLabel reads a label value up to its closing quote; it returns the
// value and how many bytes it took, the quote included.
func unquoteLabel(s string) (string, int, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '"':
			return b.String(), i + 1, nil
		case '\n':
			return "", 0, errors.New("a raw line feed")
		case '\\':
			if i+1 == len(s) {
				return "", 0, errors.New("a trailing backslash")
			}
			i++
			switch s[i] {
			case '\\':
				b.WriteByte('\\')
			case '"':
				b.WriteByte('"')
			case 'n':
				b.WriteByte('\n')
			default:
				return "", 0, fmt.Errorf("unknown escape \\%c", s[i])
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("no closing quote")
}

func parsePromFloat(s string) (float64, error) {
	switch s {
	case "+Inf":
		return math.Inf(1), nil
	case "-Inf":
		return math.Inf(-1), nil
	case "NaN":
		return math.NaN(), nil
	}
	if strings.ContainsAny(s, "_xXpP") || strings.HasPrefix(s, "+") || strings.EqualFold(s, "inf") {
		return 0, fmt.Errorf("%q is not a Go-style float", s)
	}
	return strconv.ParseFloat(s, 64)
}

// seriesKey names a series by its sorted labels, leaving one out.
func seriesKey(labels map[string]string, skip string) string {
	var parts []string
	for k, v := range labels {
		if k != skip {
			parts = append(parts, k+"="+strconv.Quote(v))
		}
	}
	slices.Sort(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

func checkHistogram(t *testing.T, f *promFamily) {
	t.Helper()
	type series struct {
		les        []float64
		counts     []float64
		sum, count *float64
	}
	all := map[string]*series{}
	get := func(key string) *series {
		if all[key] == nil {
			all[key] = &series{}
		}
		return all[key]
	}
	for _, s := range f.samples {
		v := s.value
		switch s.name {
		case f.name + "_bucket":
			le, err := parsePromFloat(s.labels["le"])
			if err != nil {
				t.Fatalf("%s: bucket le %q: %v", f.name, s.labels["le"], err)
			}
			sr := get(seriesKey(s.labels, "le"))
			if n := len(sr.les); n > 0 && (le <= sr.les[n-1] || v < sr.counts[n-1]) {
				t.Fatalf("%s%s: buckets not ascending and cumulative at le=%v", f.name, seriesKey(s.labels, "le"), le)
			}
			sr.les, sr.counts = append(sr.les, le), append(sr.counts, v)
		case f.name + "_sum":
			get(seriesKey(s.labels, "")).sum = &v
		case f.name + "_count":
			get(seriesKey(s.labels, "")).count = &v
		}
	}
	for key, sr := range all {
		n := len(sr.les)
		if n == 0 || !math.IsInf(sr.les[n-1], 1) || sr.sum == nil || sr.count == nil || sr.counts[n-1] != *sr.count {
			t.Fatalf("%s%s: needs buckets up to +Inf equal to _count, and _sum", f.name, key)
		}
	}
}

// sampleValue is the value of the series of family name with exactly these
// labels (for a histogram, its _count).
func sampleValue(fams map[string]*promFamily, name string, labels map[string]string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	want := name
	if f.typ == "histogram" {
		want = name + "_count"
	}
	for _, s := range f.samples {
		if s.name == want && seriesKey(s.labels, "") == seriesKey(labels, "") {
			return s.value, true
		}
	}
	return 0, false
}

func scrape(t *testing.T, base string) (string, map[string]*promFamily) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != metricsMediaType {
		t.Fatalf("/metrics: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return string(body), parseExposition(t, string(body))
}

// ---- the tests ----

// /metrics after a release, an attestation and a refused release: each is
// counted where it belongs, every stage has its latency, the retry of a
// failing Key Vault call is counted, and nothing secret is in the text.
func TestMetricsAfterReleaseAttestationAndFailure(t *testing.T) {
	t.Parallel()
	const imdsToken = "imds-token-that-must-never-be-in-metrics"
	imds := newReleaseIMDS(t, imdsToken)
	e := newReleaseEnv(t, releaseEnvOpts{ttl: 0, kvToken: imdsToken, env: map[string]string{"AZURE_POD_IDENTITY_AUTHORITY_HOST": imds.URL}})
	e.kv.failNext(1, http.StatusServiceUnavailable, "")
	e.mustReleaseBody(t, e.releaseBody(keyOct, ""))
	if status, out := call(t, "POST", e.url+"/attest/maa", `{"maa_endpoint":"`+e.maa.host+`","runtime_data":"eyJhIjoxfQ"}`); status != 200 {
		t.Fatalf("attest/maa: %d %v", status, out)
	}
	status, out := call(t, "POST", e.url+"/key/release", e.releaseBody(keyLocked, ""))
	wantNoKey(t, status, out, http.StatusForbidden)

	text, fams := scrape(t, e.url)
	host := "localhost" // both stand-ins; the port is not part of the label
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"skr_http_requests_total", map[string]string{"endpoint": "/key/release", "status": "200"}, 1},
		{"skr_http_requests_total", map[string]string{"endpoint": "/key/release", "status": "403"}, 1},
		{"skr_http_requests_total", map[string]string{"endpoint": "/attest/maa", "status": "200"}, 1},
		{"skr_key_releases_total", map[string]string{"akv_endpoint": host, "outcome": "released"}, 1},
		{"skr_key_releases_total", map[string]string{"akv_endpoint": host, "outcome": "denied"}, 1},
		{"skr_maa_attestations_total", map[string]string{"maa_endpoint": host, "outcome": "issued"}, 3},
		{"skr_release_credentials_total", map[string]string{"reused": "false"}, 2},
		{"skr_upstream_retries_total", map[string]string{"service": "Key Vault"}, 1},
	} {
		if got, ok := sampleValue(fams, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for _, stage := range []string{stageReport, stageCertificates, stageMAA, stageIdentityToken, stageKeyVault, stageVerify, stageUnwrap} {
		if n, ok := sampleValue(fams, "skr_stage_duration_seconds", map[string]string{"stage": stage}); !ok || n < 1 {
			t.Errorf("stage %s: %v observations", stage, n)
		}
	}
	for _, name := range []string{"skr_wrapping_keys_ready", "skr_build_info", "skr_start_time_seconds", "skr_certificate_fetches_total", "skr_grpc_requests_total"} {
		if fams[name] == nil {
			t.Errorf("no family %s", name)
		}
	}
	secrets := map[string][]byte{"bearer (IMDS)": []byte(imdsToken), "oct key": e.oct}
	for i, tok := range e.maa.issuedTokens() {
		secrets[fmt.Sprintf("MAA token %d", i)] = []byte(tok)
	}
	for name, s := range secrets {
		if enc, ok := leaked(text, s); ok {
			t.Errorf("/metrics contains (part of) the %s, %s", name, enc)
		}
	}
	for _, kid := range []string{keyOct, keyLocked} {
		if strings.Contains(text, kid) {
			t.Errorf("/metrics names key %q", kid)
		}
	}
}

// Certificates fetched from the certcache source are counted by source.
func TestMetricsCountCertificateFetches(t *testing.T) {
	t.Parallel()
	v := newTestVCEK(t, specNew)
	kds := newKDSStandIn(t)
	kds.addVCEK(v, specNew)
	policy := []byte("package policy\n")
	dir := writeSecurityContext(t, policy, thimJSON(t, v.cert, v.root.ask, v.root.ark, "db18000000000004"))
	url, _ := startTestServer(t, serverConfig{
		Args:                      &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}},
		AllowTestingMismatchedTCB: true,
	}, serverOptions{
		TEE:    &signingDevice{v: v, tcb: tcbNew, hostData: sha256.Sum256(policy)},
		Roots:  trustPool(kds.srv),
		Getenv: func(k string) string { return map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}[k] },
	})
	if status, body := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`); status != 200 {
		t.Fatalf("attest/combined: %d %v", status, body)
	}
	_, fams := scrape(t, url)
	if n, ok := sampleValue(fams, "skr_certificate_fetches_total", map[string]string{"source": "AMD KDS", "outcome": "fetched"}); !ok || n != 1 {
		t.Errorf("certificate fetches from AMD KDS: %v (present %v), want 1", n, ok)
	}
}

// A caller can name any host: only the first maxMetricHosts are told
// apart, and a gRPC method the server does not have is "other".
func TestMetricsLabelsAreBounded(t *testing.T) {
	t.Parallel()
	m := newMetrics()
	for i := range 200 {
		m.release(fmt.Sprintf("vault%d.vault.azure.net:443", i), nil)
		m.attestation(fmt.Sprintf("MAA%d.attest.azure.net", i%3), errors.New("refused"))
	}
	m.grpcCall("", codeUnimplemented)
	m.request("", 404)
	var b strings.Builder
	if err := m.write(&b); err != nil {
		t.Fatal(err)
	}
	fams := parseExposition(t, b.String())
	hosts := map[string]bool{}
	for _, s := range fams["skr_key_releases_total"].samples {
		hosts[s.labels["akv_endpoint"]] = true
	}
	for _, s := range fams["skr_maa_attestations_total"].samples {
		hosts[s.labels["maa_endpoint"]] = true
	}
	if len(hosts) != maxMetricHosts+1 || !hosts[otherLabelValue] || !hosts["maa0.attest.azure.net"] {
		t.Errorf("%d host label values (want %d, with %q): %v", len(hosts), maxMetricHosts+1, otherLabelValue, hosts)
	}
	if n, _ := sampleValue(fams, "skr_key_releases_total", map[string]string{"akv_endpoint": otherLabelValue, "outcome": "released"}); n != 200-(maxMetricHosts-3) {
		t.Errorf("%v releases counted under %q", n, otherLabelValue)
	}
	if n, _ := sampleValue(fams, "skr_grpc_requests_total", map[string]string{"method": otherLabelValue, "code": "Unimplemented"}); n != 1 {
		t.Error("an unknown gRPC method is not counted as other")
	}
	if n, _ := sampleValue(fams, "skr_http_requests_total", map[string]string{"endpoint": otherLabelValue, "status": "404"}); n != 1 {
		t.Error("an unknown path is not counted as other")
	}
}

func TestMetricsLabelEscapes(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{`a`: `"a"`, `a"b`: `"a\"b"`, `a\b`: `"a\\b"`, "a\nb": `"a\nb"`} {
		if got := quoteLabel(in); got != want {
			t.Errorf("quoteLabel(%q) = %s, want %s", in, got, want)
		}
		v, n, err := unquoteLabel(strings.TrimPrefix(quoteLabel(in), `"`))
		if err != nil || v != in || n != len(quoteLabel(in))-1 {
			t.Errorf("round trip of %q: %q %d %v", in, v, n, err)
		}
	}
}

func TestHistogramBuckets(t *testing.T) {
	t.Parallel()
	m := newMetrics()
	for _, d := range []time.Duration{500 * time.Microsecond, time.Millisecond, 3 * time.Millisecond, time.Minute} {
		m.stage(stageReport, d)
	}
	var b strings.Builder
	m.write(&b)
	text := b.String()
	for _, want := range []string{
		`skr_stage_duration_seconds_bucket{stage="report",le="0.001"} 2`,
		`skr_stage_duration_seconds_bucket{stage="report",le="0.0025"} 2`,
		`skr_stage_duration_seconds_bucket{stage="report",le="0.005"} 3`,
		`skr_stage_duration_seconds_bucket{stage="report",le="30"} 3`,
		`skr_stage_duration_seconds_bucket{stage="report",le="+Inf"} 4`,
		`skr_stage_duration_seconds_count{stage="report"} 4`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("no line %s in\n%s", want, text)
		}
	}
	parseExposition(t, text)
}
