package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// defaultSidecarPort is where importkey looks for the emulating sidecar
// when neither -port nor Port says otherwise: the sidecar's own default.
const defaultSidecarPort = 8080

// emulatedImportBearer is the bearer token importkey sends to an emulated
// vault when the config has none: the emulated vault takes any token that
// is not its own identity's as the caller's own.
const emulatedImportBearer = "skr-importkey-emulated"

// prepareEmulatedImport points an import into vault.skr.localhost or
// hsm.skr.localhost at the running skr -emulate sidecar on 127.0.0.1,
// which serves the emulated vaults on its own port, and checks that one
// answers there.
func prepareEmulatedImport(fl *importFlags, plan *importPlan, env *importKeyEnv) error {
	if !isEmulatedName(plan.Vault) {
		return nil
	}
	if !isEmulatedVaultName(plan.Vault) {
		return fmt.Errorf("key.akv.endpoint %s is not an emulated vault: use %s or %s", plan.Vault, emulatedVaultHost, emulatedHSMHost)
	}
	if _, port, err := net.SplitHostPort(plan.Vault); err == nil && port != "" {
		return fmt.Errorf("key.akv.endpoint %s: the emulated vaults have no port: write %s (the sidecar's port is -port)", plan.Vault, hostName(plan.Vault))
	}
	if fl.Azure {
		return fmt.Errorf("-a gets a managed identity token, which the emulated vault %s does not need: drop -a", plan.Vault)
	}
	port, err := sidecarPort(fl.Port, env.Getenv)
	if err != nil {
		return err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if plan.BearerToken == "" {
		plan.BearerToken = emulatedImportBearer
	}
	// The emulator without a security policy really reports zero HOST_DATA,
	// so the all-zero placeholder warning does not apply to it.
	plan.Warnings = slices.DeleteFunc(plan.Warnings, func(w string) bool { return strings.Contains(w, "is all zeros") })
	if fl.DryRun {
		return nil
	}
	env.Client = &http.Client{Timeout: 30 * time.Second, Transport: &sidecarTransport{addr: addr}}
	return checkEmulatingSidecar(context.Background(), addr, plan.Vault)
}

// sidecarPort is -port, else the Port variable the sidecar also reads,
// else 8080.
func sidecarPort(flagPort int, getenv func(string) string) (int, error) {
	if flagPort != 0 {
		if flagPort < 1 || flagPort > 65535 {
			return 0, fmt.Errorf("-port %d is out of range", flagPort)
		}
		return flagPort, nil
	}
	v := strings.TrimSpace(getenv("Port"))
	if v == "" {
		return defaultSidecarPort, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		return 0, fmt.Errorf("Port=%q is not a port number", v)
	}
	return n, nil
}

// checkEmulatingSidecar asks the sidecar's /status whether it serves the
// emulated vaults, so that a missing or non-emulating sidecar is named as
// such rather than as a vault error.
func checkEmulatingSidecar(ctx context.Context, addr, vault string) error {
	hint := fmt.Sprintf("start one with skr -emulate (or point -port / Port at it): %s is served by a running skr -emulate sidecar", hostName(vault))
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return fmt.Errorf("no skr sidecar answers at %s (%v): %s", addr, err, hint)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var st struct {
		Message       string         `json:"message"`
		EmulatedAzure map[string]any `json:"emulated_azure"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &st) != nil || st.Message != "Status OK" {
		return fmt.Errorf("what answers at %s is not an skr sidecar (GET /status: HTTP %d): %s", addr, resp.StatusCode, hint)
	}
	if st.EmulatedAzure == nil {
		return errors.New("the skr sidecar at " + addr + " was not started with -emulate, so it does not serve " + hostName(vault) + ": restart it with -emulate (or SKR_EMULATE=1)")
	}
	return nil
}

// sidecarTransport sends requests for the emulated names to the sidecar
// over loopback, naming the service in the Host header as the sidecar's
// listener expects; nothing else goes anywhere.
type sidecarTransport struct {
	addr string
}

func (t *sidecarTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !isEmulatedName(req.URL.Hostname()) {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, fmt.Errorf("%s is not an emulated service", req.URL.Hostname())
	}
	out := req.Clone(req.Context())
	out.URL.Scheme = "http"
	out.URL.Host = t.addr
	out.Host = req.URL.Hostname()
	return http.DefaultTransport.RoundTrip(out)
}
