package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Environment variables the clients read: the names Microsoft's
// attest_client.sh and skr_client.sh use, so their templates work as they are.
const (
	envAttestRuntimeData = "AttestClientRuntimeData"
	envAttestMAAEndpoint = "AttestClientMAAEndpoint"
	envReleaseKID        = "SkrClientKID"
	envReleaseAKV        = "SkrClientAKVEndpoint"
	envReleaseMHSM       = "SkrClientMHSMEndpoint" // the older name of SkrClientAKVEndpoint
	envReleaseMAA        = "SkrClientMAAEndpoint"
)

// Output files, in the -out folder.
const (
	outRaw        = "raw.out"
	outCombined   = "combined.out"
	outMAAToken   = "maatoken.out"
	outKeyRelease = "keyrelease.out"
)

// maxClientAnswer bounds what a client reads from the sidecar.
const maxClientAnswer = 4 << 20

// clientOptions are the flags both clients share.
type clientOptions struct {
	Addr     *url.URL
	Out      string
	Once     bool
	Interval time.Duration
	Timeout  time.Duration
}

// clientCall is one request of a round and where its answer goes.
type clientCall struct {
	Path    string
	Body    any
	OutFile string
	Mode    os.FileMode
	// Summary describes a 200 answer for the console without secrets.
	Summary func(body []byte) string
}

func runAttestClient(args []string, stdout, stderr io.Writer) int {
	return attestClientMain(args, stdout, stderr, os.Getenv)
}

func runReleaseClient(args []string, stdout, stderr io.Writer) int {
	return releaseClientMain(args, stdout, stderr, os.Getenv)
}

func attestClientMain(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	opts, pos, code := parseClientFlags("attest-client", []string{"RuntimeData", "MAAEndpoint"}, args, stderr)
	if opts == nil {
		return code
	}
	runtimeData := envOrArg(getenv, pos, 0, envAttestRuntimeData)
	maa := envOrArg(getenv, pos, 1, envAttestMAAEndpoint)
	fmt.Fprintf(stdout, "%s = %s\n%s = %s\n", envAttestRuntimeData, runtimeData, envAttestMAAEndpoint, maa)
	if runtimeData == "" {
		fmt.Fprintf(stderr, "skr attest-client: no runtime data: set %s or give it as the first argument (base64)\n", envAttestRuntimeData)
		return 2
	}
	if _, err := decodeBase64(runtimeData); err != nil {
		fmt.Fprintf(stderr, "skr attest-client: %s is not base64: %v\n", envAttestRuntimeData, err)
		return 2
	}
	var calls []clientCall
	if maa == "" {
		body := map[string]string{"runtime_data": runtimeData}
		calls = []clientCall{
			{Path: "/attest/raw", Body: body, OutFile: outRaw, Mode: 0o644, Summary: sizeSummary},
			{Path: "/attest/combined", Body: body, OutFile: outCombined, Mode: 0o644, Summary: sizeSummary},
		}
	} else {
		// The MAA token is a bearer credential for whoever holds it: the
		// file is private and the console only says it arrived.
		calls = []clientCall{{Path: "/attest/maa", Body: map[string]string{"maa_endpoint": maa, "runtime_data": runtimeData},
			OutFile: outMAAToken, Mode: 0o600, Summary: sizeSummary}}
	}
	return runClientLoop(opts, calls, stdout, stderr)
}

func releaseClientMain(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	opts, pos, code := parseClientFlags("release-client", []string{"MAAEndpoint", "AKVEndpoint", "KID"}, args, stderr)
	if opts == nil {
		return code
	}
	maa := envOrArg(getenv, pos, 0, envReleaseMAA)
	akv := getenv(envReleaseAKV)
	if akv == "" {
		akv = envOrArg(getenv, pos, 1, envReleaseMHSM)
	}
	kid := envOrArg(getenv, pos, 2, envReleaseKID)
	fmt.Fprintf(stdout, "%s = %s\n%s = %s\n%s = %s\n", envReleaseMAA, maa, envReleaseAKV, akv, envReleaseKID, kid)
	var missing []string
	for _, v := range []struct{ name, val string }{{envReleaseMAA, maa}, {envReleaseAKV, akv}, {envReleaseKID, kid}} {
		if v.val == "" {
			missing = append(missing, v.name)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(stderr, "skr release-client: missing %s: set the environment variables or give MAAEndpoint AKVEndpoint KID as arguments\n", strings.Join(missing, ", "))
		return 2
	}
	calls := []clientCall{{
		Path:    "/key/release",
		Body:    map[string]string{"maa_endpoint": maa, "akv_endpoint": akv, "kid": kid},
		OutFile: outKeyRelease,
		Mode:    0o600, // it holds the released private key
		Summary: releasedKeySummary,
	}}
	return runClientLoop(opts, calls, stdout, stderr)
}

// envOrArg is the upstream client scripts' rule: the environment variable,
// else the positional argument.
func envOrArg(getenv func(string) string, pos []string, i int, env string) string {
	if v := strings.TrimSpace(getenv(env)); v != "" {
		return v
	}
	if i < len(pos) {
		return strings.TrimSpace(pos[i])
	}
	return ""
}

// parseClientFlags reads a test client's flags and returns its positional
// arguments, at most one for each name in positional, or nil options and
// the exit code.
func parseClientFlags(name string, positional []string, args []string, stderr io.Writer) (*clientOptions, []string, int) {
	fs := newCommandFlags("skr "+name, stderr, fmt.Sprintf("Usage: skr %s [FLAGS] %s", name, optionalArgs(positional)))
	addr := fs.String("addr", "http://localhost:8080", "the sidecar's base URL")
	out := fs.String("out", "/", "folder for the .out files")
	once := fs.Bool("once", false, "make one round and exit: 0 when every call succeeded, 1 otherwise")
	interval := fs.Duration("interval", 5*time.Second, "pause between rounds")
	timeout := fs.Duration("timeout", 90*time.Second, "deadline of one request to the sidecar")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, 0
		}
		return nil, nil, 2
	}
	u, err := url.Parse(strings.TrimRight(*addr, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(stderr, "skr %s: -addr %q is not an http(s) base URL such as http://localhost:8080\n", name, *addr)
		return nil, nil, 2
	}
	if *interval <= 0 || *timeout <= 0 {
		fmt.Fprintf(stderr, "skr %s: -interval and -timeout must be positive\n", name)
		return nil, nil, 2
	}
	if fs.NArg() > len(positional) {
		last := len(positional) - 1
		fmt.Fprintf(stderr, "skr %s: too many arguments %q: want at most %s and %s\n", name, fs.Args(), strings.Join(positional[:last], ", "), positional[last])
		return nil, nil, 2
	}
	return &clientOptions{Addr: u, Out: *out, Once: *once, Interval: *interval, Timeout: *timeout}, fs.Args(), 0
}

// optionalArgs writes names as nested optional arguments: [A [B]].
func optionalArgs(names []string) string {
	s := ""
	for i := len(names) - 1; i >= 0; i-- {
		if s != "" {
			s = " " + s
		}
		s = "[" + names[i] + s + "]"
	}
	return s
}

// runClientLoop makes rounds until a signal (or after one with -once).
func runClientLoop(opts *clientOptions, calls []clientCall, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	client := &http.Client{Timeout: opts.Timeout}
	for {
		ok := true
		for _, c := range calls {
			if err := doClientCall(ctx, client, opts, c, stdout); err != nil {
				fmt.Fprintf(stderr, "%s: %s\n", c.Path, oneLine(err.Error()))
				ok = false
			}
		}
		if opts.Once {
			if ok {
				return 0
			}
			return 1
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(opts.Interval):
		}
	}
}

// doClientCall posts one request and saves the answer, whatever its status,
// as curl > FILE did; a call that got no answer leaves the file as it was.
func doClientCall(ctx context.Context, client *http.Client, opts *clientOptions, c clientCall, stdout io.Writer) error {
	body, err := json.Marshal(c.Body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, opts.Addr.String()+c.Path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("sidecar at %s did not answer: %w", opts.Addr, err)
	}
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxClientAnswer+1))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	if len(answer) > maxClientAnswer {
		return fmt.Errorf("the answer is larger than %d bytes", maxClientAnswer)
	}
	path := filepath.Join(opts.Out, c.OutFile)
	if err := writeFileAtomic(path, answer, c.Mode); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s (saved in %s)", resp.StatusCode, sidecarErrorMessage(answer), path)
	}
	fmt.Fprintf(stdout, "%s: HTTP 200, %s, saved in %s\n", c.Path, c.Summary(answer), path)
	return nil
}

// sidecarErrorMessage is the "error" of the sidecar's error answer.
func sidecarErrorMessage(answer []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(answer, &e) == nil && e.Error != "" {
		return truncate(e.Error, 500)
	}
	return truncate(string(answer), 200)
}

func sizeSummary(body []byte) string { return fmt.Sprintf("%d bytes", len(body)) }

// releasedKeySummary names the released key without any of its material.
func releasedKeySummary(body []byte) string {
	var ans struct {
		Key string `json:"key"`
	}
	if json.Unmarshal(body, &ans) != nil || ans.Key == "" {
		return "an answer without a key"
	}
	var k struct {
		Kty string `json:"kty"`
		Kid string `json:"kid"`
	}
	if json.Unmarshal([]byte(ans.Key), &k) != nil {
		return "a key that is not a JSON Web Key"
	}
	return fmt.Sprintf("released key kty=%s kid=%s", k.Kty, k.Kid)
}
