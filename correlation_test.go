package main

import (
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// doRequest sends one request and returns its status and X-Request-Id.
func doRequest(t *testing.T, method, url, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get(requestIDHeader)
}

// logLine is the one log line with msg and request_id=id.
func logLine(t *testing.T, logs, msg, id string) string {
	t.Helper()
	var found []string
	for _, l := range strings.Split(logs, "\n") {
		if (strings.Contains(l, "msg=\""+msg+"\" ") || strings.Contains(l, "msg="+msg+" ")) && strings.Contains(l, "request_id="+id) {
			found = append(found, l)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d log lines %q with request_id=%s:\n%s", len(found), msg, id, logs)
	}
	return found[0]
}

// Every answer has its own X-Request-Id; a release's and an attestation's
// log lines carry it with MAA's and Key Vault's x-ms-request-id, Key Vault
// is sent it as x-ms-client-request-id, and a refusal's error names the
// vault's request id.
func TestRequestCorrelation(t *testing.T) {
	t.Parallel()
	e := newReleaseEnv(t, releaseEnvOpts{ttl: time.Minute})

	status, id := doRequest(t, "POST", e.url+"/key/release", e.releaseBody(keyOct, releaseBearer))
	if status != 200 || !uuidPattern.MatchString(id) {
		t.Fatalf("release: %d, X-Request-Id %q", status, id)
	}
	maaAnswered, _ := e.maa.seenIDs()
	kvAnswered, kvSent := e.kv.seenIDs()
	if len(maaAnswered) != 1 || len(kvAnswered) != 1 {
		t.Fatalf("MAA answered %q, Key Vault %q", maaAnswered, kvAnswered)
	}
	if kvSent[0] != id {
		t.Errorf("Key Vault was sent x-ms-client-request-id %q, want %q", kvSent[0], id)
	}
	for _, line := range []string{logLine(t, e.logs.String(), "key released", id), logLine(t, e.logs.String(), "request", id)} {
		for _, want := range []string{"maa_request_id=" + maaAnswered[0], "akv_request_id=" + kvAnswered[0]} {
			if !strings.Contains(line, want) {
				t.Errorf("log line lacks %s: %s", want, line)
			}
		}
	}

	status, id2 := doRequest(t, "POST", e.url+"/attest/maa", `{"maa_endpoint":"`+e.maa.host+`","runtime_data":"eyJhIjoxfQ"}`)
	if status != 200 || !uuidPattern.MatchString(id2) || id2 == id {
		t.Fatalf("attest/maa: %d, X-Request-Id %q (the release's was %q)", status, id2, id)
	}
	maaAnswered, maaSent := e.maa.seenIDs()
	if len(maaAnswered) != 2 || maaSent[1] != id2 {
		t.Fatalf("MAA answered %q, was sent client ids %q", maaAnswered, maaSent)
	}
	if line := logLine(t, e.logs.String(), "MAA token issued", id2); !strings.Contains(line, "maa_request_id="+maaAnswered[1]) {
		t.Errorf("log line lacks MAA's request id: %s", line)
	}

	status, out := e.release(t, keyOct+"/"+strings.Repeat("f", 32))
	kvAnswered, _ = e.kv.seenIDs()
	wantNoKey(t, status, out, http.StatusBadGateway, "[x-ms-request-id "+kvAnswered[len(kvAnswered)-1]+"]")

	for _, path := range []string{"/status", "/nowhere", "/livez"} {
		if _, rid := doRequest(t, "GET", e.url+path, ""); !uuidPattern.MatchString(rid) {
			t.Errorf("GET %s: X-Request-Id %q", path, rid)
		}
	}
}

func TestUpstreamRequestIDIsSanitised(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]string{
		"0553a186-831f-49e9-9530-da5da8823c1b": "0553a186-831f-49e9-9530-da5da8823c1b",
		"eastus:abc_1.2":                       "eastus:abc_1.2",
		"":                                     "",
		"has space":                            "",
		"line\nbreak":                          "",
		"quote\"":                              "",
		strings.Repeat("a", maxUpstreamRequestID+1): "",
	} {
		if got := upstreamRequestID(http.Header{"X-Ms-Request-Id": {v}}); got != want {
			t.Errorf("%q: %q, want %q", v, got, want)
		}
	}
}

func TestCorrelationKeepsTheFirstIDPerService(t *testing.T) {
	t.Parallel()
	c := &correlation{id: "rid"}
	c.note("Key Vault", "release-call")
	c.note("Key Vault", "policy-read")
	c.note("MAA", "maa-call")
	c.note("IMDS", "not-named")
	c.note("MAA", "")
	got := c.logAttrs()
	want := []any{"request_id", "rid", "maa_request_id", "maa-call", "akv_request_id", "release-call"}
	if !slices.Equal(got, want) {
		t.Errorf("attrs %q, want %q", got, want)
	}
	var none *correlation
	none.note("MAA", "x") // outside a request: nothing to record, and no panic
	if none.logAttrs() != nil {
		t.Error("a nil correlation has attributes")
	}
}
