package main

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func b64Args(json string) string { return base64.StdEncoding.EncodeToString([]byte(json)) }

// A typo in SkrSideCarArgs must not pass unnoticed: an unknown field is
// warned about at start, an unknown endpoint_type or tee_type refused.
func TestSkrSideCarArgsMistakes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, json string
		warnings   []string
		err        string
	}{
		{name: "all known", json: `{"certcache":{"endpoint_type":"AMD","endpoint":"kdsintf.amd.com","tee_type":"Milan","api_version":"a","client_id":"c"},"identity":{"client_id":"x"},"maaconfig":{"user_agent":"u"}}`},
		{name: "names differ only in case, as encoding/json allows", json: `{"CertCache":{"Endpoint_Type":"AMD"}}`},
		{name: "misspelt nested field", json: `{"certcache":{"endpoint_typ":"AMD"}}`, warnings: []string{`"certcache.endpoint_typ"`}},
		{name: "misspelt top-level fields", json: `{"identiy":{"client_id":"x"},"maa_config":{}}`, warnings: []string{`"identiy"`, `"maa_config"`}},
		{name: "unknown endpoint_type", json: `{"certcache":{"endpoint_type":"Azure"}}`, err: "endpoint_type"},
		{name: "endpoint_type in another case", json: `{"certcache":{"endpoint_type":"amd"}}`, err: "endpoint_type"},
		{name: "unknown tee_type", json: `{"certcache":{"tee_type":"SevSnp"}}`, err: "tee_type"},
		{name: "tee_type of every product", json: `{"certcache":{"tee_type":"Turin"}}`},
		{name: "tee_type of the Azure cache", json: `{"certcache":{"endpoint_type":"AzCache","tee_type":"SevSnpVM"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, err := parseSkrSideCarArgs(b64Args(tc.json))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one about %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(args.warnings) != len(tc.warnings) {
				t.Fatalf("warnings %q, want %d", args.warnings, len(tc.warnings))
			}
			for i, w := range tc.warnings {
				if !strings.Contains(args.warnings[i], w) {
					t.Errorf("warning %q does not name %s", args.warnings[i], w)
				}
			}
		})
	}
}

// The warnings reach the start-up log, at the default level.
func TestConfigurationWarningsAreLoggedAtStart(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeFlags([]string{"-base64", b64Args(`{"certcache":{"endpoint_typ":"AMD"}}`)}, envOf(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LogLevel = levelWarnDefault(t)
	missing := filepath.Join(t.TempDir(), "no-such-folder")
	_, logs := startTestServer(t, *cfg, serverOptions{Getenv: envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": missing})})
	for _, want := range []string{`level=warning msg="configuration: SkrSideCarArgs has an unknown field \"certcache.endpoint_typ\"`, "UVM_SECURITY_CONTEXT_DIR=" + missing + " is not a folder"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the start-up log lacks %q:\n%s", want, logs)
		}
	}
}

// levelWarnDefault is the level the sidecar logs at unless told otherwise.
func levelWarnDefault(t *testing.T) slog.Level {
	t.Helper()
	cfg, err := parseServeFlags(nil, envOf(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.LogLevel
}

func TestSecurityContextDirMissing(t *testing.T) {
	t.Parallel()
	policy := base64.StdEncoding.EncodeToString([]byte("package policy\n"))
	for name, dir := range map[string]string{
		"absent":    filepath.Join(t.TempDir(), "typo"),
		"not a dir": writeTempFile(t, "file", []byte("x")),
	} {
		in, err := loadUVMInputs(envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir, "UVM_SECURITY_POLICY": policy}), t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(in.Warnings) != 1 || !strings.Contains(in.Warnings[0], dir) {
			t.Errorf("%s: warnings %q", name, in.Warnings)
		}
		if _, ok := in.PolicyDigest(); !ok {
			t.Errorf("%s: the environment's policy was lost", name)
		}
	}
	// A folder that is there: no warning.
	in, err := loadUVMInputs(envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": t.TempDir()}), t.TempDir())
	if err != nil || len(in.Warnings) != 0 {
		t.Fatalf("an existing empty folder: %v, warnings %q", err, in.Warnings)
	}
}

// The platform certificates in the security context come from the
// platform, and fresh ones can be fetched: a corrupt file (broken base64 or
// broken THIM JSON) is warned about and ignored, the sidecar starts, keeps
// the policy and reference info, and hands out certificates from the
// certcache source.
func TestCorruptPlatformCertificateFileIsIgnored(t *testing.T) {
	t.Parallel()
	for name, content := range map[string]string{
		"broken base64": "this is not base64 %%%\n",
		"broken JSON":   base64.StdEncoding.EncodeToString([]byte(`{"vcekCert": "-----BEGIN`)) + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			nw := newTestVCEK(t, specNew)
			kds := newKDSStandIn(t)
			kds.addVCEK(nw, specNew)
			policy := []byte("package policy\n\napi_version := \"0.10.0\"\n")
			dir := writeSecurityContext(t, policy, nil)
			if err := os.WriteFile(filepath.Join(dir, fileHostAMDCert), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := serverConfig{Args: &SkrSideCarArgs{CertCache: certCacheConfig{EndpointType: "AMD", Endpoint: kds.host()}}}
			url, logs := startTestServer(t, cfg, serverOptions{
				TEE:    &signingDevice{v: nw, tcb: tcbNew, hostData: sha256.Sum256(policy)},
				Roots:  trustPool(kds.srv),
				Getenv: envOf(map[string]string{"UVM_SECURITY_CONTEXT_DIR": dir}),
			})
			if !strings.Contains(logs.String(), "platform certificates in "+dir) || !strings.Contains(logs.String(), "ignored") {
				t.Errorf("no warning about the corrupt file:\n%s", logs)
			}
			sum := sha256.Sum256(policy)
			if status, st := call(t, http.MethodGet, url+"/status", ""); status != 200 || st["host_data"] != hex.EncodeToString(sum[:]) {
				t.Fatalf("/status %d: host_data %v, want the policy's", status, st["host_data"])
			}
			status, body := call(t, http.MethodPost, url+"/attest/combined", `{"runtime_data":"aGVsbG8"}`)
			if status != http.StatusOK {
				t.Fatalf("/attest/combined: %d %v", status, body)
			}
			if ref := decodeB64(t, body["uvm_endorsements"]); !strings.Contains(string(ref), "passed through unchanged") {
				t.Errorf("the reference info was lost: %q", ref)
			}
			if kds.callsOf("vcek") != 1 {
				t.Errorf("KDS VCEK calls = %d, want the certificates fetched once", kds.callsOf("vcek"))
			}
		})
	}
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseServeFlags(t *testing.T) {
	t.Parallel()
	args := base64.StdEncoding.EncodeToString([]byte(`{"certcache":{"endpoint_type":"AMD","endpoint":"kdsintf.amd.com"},"identity":{"client_id":"abc"}}`))
	tests := []struct {
		name  string
		argv  []string
		env   map[string]string
		check func(t *testing.T, c *serverConfig)
		err   string
	}{
		{name: "defaults", check: func(t *testing.T, c *serverConfig) {
			if c.Port != 8080 || c.LogLevel != slog.LevelWarn || c.Emulate || c.WrappingKeyTTL != 5*time.Minute || c.LogFile != "" || c.ShutdownGrace != 10*time.Second {
				t.Errorf("defaults: %+v", c)
			}
		}},
		{name: "flags", argv: []string{"-port", "9000", "-loglevel", "trace", "-emulate", "-wrapping-key-ttl", "0", "-base64", args}, check: func(t *testing.T, c *serverConfig) {
			if c.Port != 9000 || c.LogLevel != levelTrace || !c.Emulate || c.WrappingKeyTTL != 0 || c.Args.Identity.ClientID != "abc" {
				t.Errorf("flags: %+v", c)
			}
		}},
		{name: "environment", env: map[string]string{"Port": "9001", "LogLevel": "debug", "SKR_EMULATE": "1", "SkrSideCarArgs": args, "SKR_WRAPPING_KEY_TTL": "90s", "LogFile": "/tmp/x.log"}, check: func(t *testing.T, c *serverConfig) {
			if c.Port != 9001 || c.LogLevel != slog.LevelDebug || !c.Emulate || c.WrappingKeyTTL != 90*time.Second || c.Args.CertCache.EndpointType != "AMD" || c.LogFile != "/tmp/x.log" {
				t.Errorf("env: %+v", c)
			}
		}},
		{name: "flag beats environment", argv: []string{"-port", "9002"}, env: map[string]string{"Port": "9001"}, check: func(t *testing.T, c *serverConfig) {
			if c.Port != 9002 {
				t.Errorf("port %d", c.Port)
			}
		}},
		{name: "skr.sh positional arguments", argv: []string{args, "9003"}, check: func(t *testing.T, c *serverConfig) {
			if c.Port != 9003 || c.Args.Identity.ClientID != "abc" {
				t.Errorf("positional: %+v", c)
			}
		}},
		{name: "environment beats positional", argv: []string{"", "9003"}, env: map[string]string{"Port": "9004"}, check: func(t *testing.T, c *serverConfig) {
			if c.Port != 9004 {
				t.Errorf("port %d", c.Port)
			}
		}},
		{name: "bad level", argv: []string{"-loglevel", "loud"}, err: "unknown log level"},
		{name: "bad port", env: map[string]string{"Port": "http"}, err: "not a number"},
		{name: "port range", argv: []string{"-port", "70000"}, err: "out of range"},
		{name: "bad base64", argv: []string{"-base64", "%%%"}, err: "not standard base64"},
		{name: "bad json", argv: []string{"-base64", base64.StdEncoding.EncodeToString([]byte("{"))}, err: "not the expected JSON"},
		{name: "bad endpoint type", argv: []string{"-base64", base64.StdEncoding.EncodeToString([]byte(`{"certcache":{"endpoint_type":"Other"}}`))}, err: "endpoint_type"},
		{name: "bad ttl", env: map[string]string{"SKR_WRAPPING_KEY_TTL": "5"}, err: "duration"},
		{name: "negative ttl", argv: []string{"-wrapping-key-ttl", "-1s"}, err: "negative"},
		{name: "bad emulate", env: map[string]string{"SKR_EMULATE": "maybe"}, err: "boolean"},
		{name: "shutdown grace flag", argv: []string{"-shutdown-grace", "3s"}, check: func(t *testing.T, c *serverConfig) {
			if c.ShutdownGrace != 3*time.Second {
				t.Errorf("grace %v", c.ShutdownGrace)
			}
		}},
		{name: "shutdown grace environment", env: map[string]string{"SKR_SHUTDOWN_GRACE": "1m"}, check: func(t *testing.T, c *serverConfig) {
			if c.ShutdownGrace != time.Minute {
				t.Errorf("grace %v", c.ShutdownGrace)
			}
		}},
		{name: "bad shutdown grace", env: map[string]string{"SKR_SHUTDOWN_GRACE": "soon"}, err: "SKR_SHUTDOWN_GRACE"},
		{name: "negative shutdown grace", argv: []string{"-shutdown-grace", "-1s"}, err: "negative"},
		{name: "socket beside TCP", argv: []string{"-socket", "/run/skr/skr.sock", "-socket-uids", "1000, 1001"}, check: func(t *testing.T, c *serverConfig) {
			if c.NoTCP || c.Socket != "/run/skr/skr.sock" || len(c.SocketUIDs) != 2 || c.SocketUIDs[1] != 1001 {
				t.Errorf("socket: %+v", c)
			}
		}},
		{name: "socket only", argv: []string{"-port", "0"}, env: map[string]string{"SKR_SOCKET": "/s", "SKR_SOCKET_UIDS": "0"}, check: func(t *testing.T, c *serverConfig) {
			if !c.NoTCP || c.Socket != "/s" || len(c.SocketUIDs) != 1 || c.SocketUIDs[0] != 0 {
				t.Errorf("socket only: %+v", c)
			}
		}},
		{name: "port 0 without socket", argv: []string{"-port", "0"}, err: "no -socket"},
		{name: "uids without socket", argv: []string{"-socket-uids", "1000"}, err: "without -socket"},
		{name: "bad uid", argv: []string{"-socket", "/s", "-socket-uids", "root"}, err: "numeric user id"},
		{name: "unknown flag", argv: []string{"-bogus"}, err: "not defined"},
		{name: "too many arguments", argv: []string{"a", "1", "x"}, err: "too many"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseServeFlags(tc.argv, envOf(tc.env), io.Discard)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}
