package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The sidecar's metrics, served at /metrics in the Prometheus text
// exposition format (version 0.0.4), written here by hand: a client library
// would be most of the binary's dependencies for a few dozen lines.
//
// No label carries a kid, a token or any other string a caller chose,
// except the MAA and vault host names, of which at most maxMetricHosts are
// told apart (the rest are "other"): a caller can send any host name, and
// every distinct label value is a series kept for the process's life.

const (
	maxMetricHosts   = 16
	otherLabelValue  = "other"
	metricsMediaType = "text/plain; version=0.0.4; charset=utf-8"
)

// stageBuckets are the latency histogram bounds in seconds: from a report
// off an idle device to an upstream call at the request deadline.
var stageBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// The stages of a request whose latency is measured.
const (
	stageReport        = "report"
	stageCertificates  = "certificates"
	stageMAA           = "maa"
	stageIdentityToken = "identity_token"
	stageKeyVault      = "key_vault"
	stageVerify        = "verify"
	stageUnwrap        = "unwrap"
)

// metrics holds one server's counters and histograms. Its methods may be
// called on a nil *metrics, which counts nothing.
type metrics struct {
	started time.Time
	build   buildFacts
	// wrappingKeysReady says how many wrapping keys wait in the pool.
	wrappingKeysReady func() int

	mu           sync.Mutex
	hosts        map[string]bool
	requests     *counterVec
	grpcCalls    *counterVec
	releases     *counterVec
	attestations *counterVec
	credentials  *counterVec
	certFetches  *counterVec
	retries      *counterVec
	stages       *histogramVec
}

func newMetrics() *metrics {
	return &metrics{
		started:      time.Now(),
		build:        readBuildFacts(),
		hosts:        map[string]bool{},
		requests:     newCounterVec("skr_http_requests_total", "HTTP requests answered, by endpoint and status.", "endpoint", "status"),
		grpcCalls:    newCounterVec("skr_grpc_requests_total", "gRPC calls answered, by method and status code.", "method", "code"),
		releases:     newCounterVec("skr_key_releases_total", "Key releases (/key/release and gRPC UnWrapKey), by vault host and outcome.", "akv_endpoint", "outcome"),
		attestations: newCounterVec("skr_maa_attestations_total", "MAA attestations (/attest/maa and releases' fresh wrapping keys), by MAA host and outcome.", "maa_endpoint", "outcome"),
		credentials:  newCounterVec("skr_release_credentials_total", "Wrapping keys with their MAA token handed to releases: reused within -wrapping-key-ttl, or freshly attested.", "reused"),
		certFetches:  newCounterVec("skr_certificate_fetches_total", "Fetches of platform certificates from the certcache source, by source and outcome.", "source", "outcome"),
		retries:      newCounterVec("skr_upstream_retries_total", "Retries of upstream calls (408, 429, 5xx, network errors), by service.", "service"),
		stages:       newHistogramVec("skr_stage_duration_seconds", "Duration of one step of a request, by stage.", "stage", stageBuckets),
	}
}

// outcomeOf names how a call ended, in the terms of errors.go's kinds.
func outcomeOf(err error, success string) string {
	if err == nil {
		return success
	}
	switch errorKind(err) {
	case kindInvalid:
		return "invalid"
	case kindDenied:
		return "denied"
	case kindUpstream:
		return "upstream_error"
	case kindUnavailable:
		return "unavailable"
	case kindTimeout:
		return "timeout"
	}
	return "internal_error"
}

// hostLabel is host as a label value: the first maxMetricHosts host names
// are told apart, later ones are "other". m.mu is held.
func (m *metrics) hostLabel(host string) string {
	host = hostName(host)
	if m.hosts[host] {
		return host
	}
	if host == "" || len(m.hosts) >= maxMetricHosts {
		return otherLabelValue
	}
	m.hosts[host] = true
	return host
}

func (m *metrics) request(endpoint string, status int) {
	if m == nil {
		return
	}
	if endpoint == "" {
		endpoint = otherLabelValue
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests.inc(endpoint, strconv.Itoa(status))
}

// grpcCall counts a call; method is "" for a method the server does not
// have, whose name the caller chose.
func (m *metrics) grpcCall(method string, code grpcCode) {
	if m == nil {
		return
	}
	if method == "" {
		method = otherLabelValue
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.grpcCalls.inc(method, code.String())
}

func (m *metrics) release(vaultHost string, err error) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releases.inc(m.hostLabel(vaultHost), outcomeOf(err, "released"))
}

func (m *metrics) attestation(maaHost string, err error) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.attestations.inc(m.hostLabel(maaHost), outcomeOf(err, "issued"))
}

func (m *metrics) credential(reused bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.credentials.inc(strconv.FormatBool(reused))
}

func (m *metrics) certFetch(source string, err error) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.certFetches.inc(source, outcomeOf(err, "fetched"))
}

func (m *metrics) retry(service string) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retries.inc(service)
}

// stage records how long one step took.
func (m *metrics) stage(name string, d time.Duration) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stages.observe(name, d.Seconds())
}

// since records the time from start to now under stage: defer it.
func (m *metrics) since(name string, start time.Time) {
	m.stage(name, time.Since(start))
}

// write prints every family, in a fixed order, series sorted by labels.
func (m *metrics) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	writeFamilyHead(bw, "skr_build_info", "gauge", "The running build: always 1, with the version and the Go version as labels.")
	fmt.Fprintf(bw, "skr_build_info{version=%s,go_version=%s} 1\n", quoteLabel(m.build.Version), quoteLabel(m.build.GoVersion))
	writeFamilyHead(bw, "skr_start_time_seconds", "gauge", "When the sidecar started, in seconds since the Unix epoch.")
	fmt.Fprintf(bw, "skr_start_time_seconds %.3f\n", float64(m.started.UnixMilli())/1e3)
	if m.wrappingKeysReady != nil {
		writeFamilyHead(bw, "skr_wrapping_keys_ready", "gauge", "Wrapping keys generated ahead and waiting in the pool.")
		fmt.Fprintf(bw, "skr_wrapping_keys_ready %d\n", m.wrappingKeysReady())
	}
	m.mu.Lock()
	for _, c := range []*counterVec{m.requests, m.grpcCalls, m.releases, m.attestations, m.credentials, m.certFetches, m.retries} {
		c.write(bw)
	}
	m.stages.write(bw)
	m.mu.Unlock()
	return bw.Flush()
}

func (s *server) handleMetrics(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", metricsMediaType)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	s.metrics.write(w)
}

// ---- the exposition format ----

// counterVec is a counter family with fixed label names.
type counterVec struct {
	name, help string
	labels     []string
	values     map[string]uint64 // by label values joined with labelSep
}

// labelSep cannot occur in a label value: it is a control character, and
// no label value here holds one (host names are validated, the rest fixed).
const labelSep = "\x00"

func newCounterVec(name, help string, labels ...string) *counterVec {
	return &counterVec{name: name, help: help, labels: labels, values: map[string]uint64{}}
}

func (c *counterVec) inc(values ...string) {
	c.values[strings.Join(values, labelSep)]++
}

func (c *counterVec) write(w *bufio.Writer) {
	writeFamilyHead(w, c.name, "counter", c.help)
	for _, key := range sortedKeys(c.values) {
		fmt.Fprintf(w, "%s%s %d\n", c.name, formatLabels(c.labels, strings.Split(key, labelSep)), c.values[key])
	}
}

// histogramVec is a histogram family with one label.
type histogramVec struct {
	name, help string
	label      string
	buckets    []float64
	series     map[string]*histogram
}

type histogram struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

func newHistogramVec(name, help, label string, buckets []float64) *histogramVec {
	return &histogramVec{name: name, help: help, label: label, buckets: buckets, series: map[string]*histogram{}}
}

func (h *histogramVec) observe(value string, v float64) {
	s := h.series[value]
	if s == nil {
		s = &histogram{counts: make([]uint64, len(h.buckets)+1)}
		h.series[value] = s
	}
	i, _ := slices.BinarySearch(h.buckets, v) // the first bound >= v
	s.counts[i]++
	s.sum += v
	s.count++
}

func (h *histogramVec) write(w *bufio.Writer) {
	writeFamilyHead(w, h.name, "histogram", h.help)
	for _, value := range sortedKeys(h.series) {
		s := h.series[value]
		var cum uint64
		for i, c := range s.counts {
			cum += c
			le := "+Inf"
			if i < len(h.buckets) {
				le = formatSample(h.buckets[i])
			}
			fmt.Fprintf(w, "%s_bucket%s %d\n", h.name, formatLabels([]string{h.label, "le"}, []string{value, le}), cum)
		}
		labels := formatLabels([]string{h.label}, []string{value})
		fmt.Fprintf(w, "%s_sum%s %s\n", h.name, labels, formatSample(s.sum))
		fmt.Fprintf(w, "%s_count%s %d\n", h.name, labels, s.count)
	}
}

func writeFamilyHead(w io.Writer, name, typ, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

func formatLabels(names, values []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(n)
		b.WriteByte('=')
		b.WriteString(quoteLabel(values[i]))
	}
	b.WriteByte('}')
	return b.String()
}

// quoteLabel is a label value in double quotes, with the three escapes the
// format has: backslash, double quote and line feed.
func quoteLabel(v string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v) + `"`
}

func escapeHelp(s string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(s)
}

func formatSample(v float64) string {
	if math.IsInf(v, +1) {
		return "+Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
