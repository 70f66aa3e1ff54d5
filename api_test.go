package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// rawCall sends a request with the given headers (Host among them) and
// returns the status and the decoded answer.
func rawCall(t *testing.T, method, url, body string, header map[string]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("%s %s: answer is not a JSON object: %q", method, url, raw)
	}
	return resp.StatusCode, out
}

// A web page must not reach the API: not through a name rebound to
// 127.0.0.1 (its Host is that name), nor from any origin (browsers send
// Origin on such requests). Content-Type is not what tells them apart.
func TestAPIRefusesBrowserRequests(t *testing.T) {
	t.Parallel()
	base, logs := startTestServer(t, serverConfig{}, serverOptions{TEE: newTestEmulator(t, nil)})
	port := base[strings.LastIndex(base, ":")+1:]
	raw := `{"runtime_data":"aGVsbG8="}`
	for _, tc := range []struct {
		name   string
		header map[string]string
	}{
		{"rebound host name", map[string]string{"Host": "rebind.attacker.example:" + port, "Content-Type": "text/plain"}},
		{"rebound host name without port", map[string]string{"Host": "rebind.attacker.example"}},
		{"another machine's address", map[string]string{"Host": "10.0.0.1:" + port}},
		{"localhost as a subdomain", map[string]string{"Host": "localhost.attacker.example:" + port}},
		{"Origin of a page", map[string]string{"Origin": "http://attacker.example", "Content-Type": "text/plain"}},
		{"Origin of localhost", map[string]string{"Origin": "http://localhost:" + port}},
		{"Origin null", map[string]string{"Origin": "null"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, path := range []string{"/attest/raw", "/key/release"} {
				status, out := rawCall(t, "POST", base+path, raw, tc.header)
				if status != http.StatusForbidden || out["report"] != nil || out["key"] != nil {
					t.Fatalf("%s: status %d %v, want 403", path, status, out)
				}
			}
			if status, _ := rawCall(t, "GET", base+"/status", "", tc.header); status != http.StatusForbidden {
				t.Fatalf("/status: status %d, want 403", status)
			}
		})
	}
	t.Run("no Host at all", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET /status HTTP/1.0\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("HTTP/1.0 without Host: status %d, want 403", resp.StatusCode)
		}
	})
	if !strings.Contains(logs.String(), "status=403") {
		t.Error("the refusals are not in the request log")
	}
}

// Microsoft's curl clients send no Content-Type or a form type and call the
// sidecar as localhost:PORT; our own clients, and everything on 127.0.0.1
// or [::1], still get through.
func TestAPIAcceptsLocalClients(t *testing.T) {
	t.Parallel()
	base, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: newTestEmulator(t, nil)})
	port := base[strings.LastIndex(base, ":")+1:]
	raw := `{"runtime_data":"aGVsbG8="}`
	for _, header := range []map[string]string{
		{"Host": "localhost:" + port, "Content-Type": "application/x-www-form-urlencoded"}, // curl -d
		{"Host": "localhost:" + port},
		{"Host": "LOCALHOST"},
		{"Host": "127.0.0.1:" + port, "Content-Type": "application/json"},
		{"Host": "[::1]:" + port},
		{"Host": "[::1]"},
	} {
		if status, out := rawCall(t, "POST", base+"/attest/raw", raw, header); status != http.StatusOK || out["report"] == nil {
			t.Errorf("%v: status %d %v", header, status, out)
		}
	}
	// The test client, as Microsoft's template runs it.
	var stdout, stderr bytes.Buffer
	addr := "http://localhost:" + port
	if code := attestClientMain([]string{"-once", "-addr", addr, "-out", t.TempDir()}, &stdout, &stderr,
		envMap(map[string]string{envAttestRuntimeData: "aGVsbG8="})); code != 0 {
		t.Fatalf("attest-client against %s: exit %d: %s", addr, code, stderr.String())
	}
}

func TestIsLoopbackHost(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{
		"localhost": true, "localhost:8080": true, "LocalHost:1": true, "127.0.0.1": true, "127.0.0.1:8080": true,
		"[::1]": true, "[::1]:8080": true, "127.1.2.3:80": true,
		"": false, "localhost.": false, "example.com": false, "10.0.0.1:8080": false, "[::2]:8080": false,
		"127.0.0.1.nip.io": false, "localhost.example:8080": false, "0.0.0.0:8080": false,
	} {
		if got := isLoopbackHost(host); got != want {
			t.Errorf("isLoopbackHost(%q) = %v, want %v", host, got, want)
		}
	}
}

// Whatever a caller sends, its echo in an error answer and in the log
// (at trace level) stays small: endpoints within the DNS limits, anything
// else cut with an ellipsis.
func TestCallerInputIsBoundedInLogsAndErrors(t *testing.T) {
	t.Parallel()
	base, logs := startTestServer(t, serverConfig{}, serverOptions{TEE: newTestEmulator(t, nil)})
	huge := strings.Repeat("a", 500_000)
	hugeHost := strings.Repeat("abcdefghij.", 45_000) + "example"
	for _, tc := range []struct {
		name, method, path, body string
	}{
		{"release: huge maa_endpoint", "POST", "/key/release", `{"maa_endpoint":"` + hugeHost + `","akv_endpoint":"v.vault.azure.net","kid":"k","access_token":"t"}`},
		{"release: huge akv_endpoint", "POST", "/key/release", `{"maa_endpoint":"m.example","akv_endpoint":"https://` + huge + `","kid":"k"}`},
		{"release: huge kid", "POST", "/key/release", `{"maa_endpoint":"m.example","akv_endpoint":"v.vault.azure.net","kid":"` + huge + `"}`},
		{"release: huge port", "POST", "/key/release", `{"maa_endpoint":"m.example:` + strings.Repeat("9", 400_000) + `","akv_endpoint":"v.vault.azure.net","kid":"k"}`},
		{"maa: huge maa_endpoint", "POST", "/attest/maa", `{"maa_endpoint":"` + hugeHost + `","runtime_data":"aGVsbG8="}`},
		{"maa: huge scheme", "POST", "/attest/maa", `{"maa_endpoint":"` + huge + `://m.example","runtime_data":"aGVsbG8="}`},
		{"unknown path", "GET", "/" + strings.Repeat("p", 60_000), ""},
		{"wrong method", strings.Repeat("M", 30_000), "/status", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(logs.String())
			req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if len(answer) > 1024 {
				t.Errorf("the error answer is %d bytes: %.300s", len(answer), answer)
			}
			if grew := len(logs.String()) - before; grew > 2048 {
				t.Errorf("the log grew by %d bytes", grew)
			}
		})
	}
}

func TestDecodeRequestJSON(t *testing.T) {
	t.Parallel()
	var v attestRequest
	tests := []struct {
		body string
		ok   bool
	}{
		{`{"runtime_data":"YWJj"}`, true},
		{`{"runtime_data":"YWJj","unknown":1}`, true},
		{`{"runtime_data":"YWJj"} {}`, false},
		{`{"runtime_data":`, false},
		{`[]`, false},
		{`{"runtime_data":5}`, false},
		{``, false},
		{`   `, false},
		{`{"runtime_data":"` + strings.Repeat("A", maxRequestBody) + `"}`, false},
	}
	for _, tc := range tests {
		err := decodeRequestJSON([]byte(tc.body), &v)
		if (err == nil) != tc.ok {
			t.Errorf("decodeRequestJSON(%.40q) err = %v, want ok=%v", tc.body, err, tc.ok)
		}
		if err != nil && statusFor(err) != http.StatusBadRequest {
			t.Errorf("decodeRequestJSON(%.40q) status = %d, want 400", tc.body, statusFor(err))
		}
	}
}

func TestStatusFor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		want int
	}{
		{newError(kindUnavailable, nil, "x"), 503},
		{fmt.Errorf("wrapped: %w", newError(kindInvalid, nil, "x")), 400},
		{&upstreamError{Service: "Key Vault", StatusCode: 401}, 403},
		{&upstreamError{Service: "Key Vault", StatusCode: 403}, 403},
		{&upstreamError{Service: "MAA", StatusCode: 500}, 502},
		{&upstreamError{Service: "MAA", StatusCode: 404}, 502},
		{fmt.Errorf("MAA: %w", context.DeadlineExceeded), 504},
		{errors.New("boom"), 500},
	}
	for _, tc := range tests {
		if got := statusFor(tc.err); got != tc.want {
			t.Errorf("statusFor(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
