package main

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"
	"time"
)

// probe runs skr probe against base and returns its exit code and output.
func probe(t *testing.T, base string, args ...string) (int, string) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := probeMain(append([]string{"-addr", u.Host}, args...), &out, &errOut, envOf(nil))
	return code, out.String() + errOut.String()
}

// Without a guest interface the sidecar lives but is not ready, and says
// why; /status still says OK, as it always has.
func TestReadyzWithoutDevice(t *testing.T) {
	t.Parallel()
	base, _ := startTestServer(t, serverConfig{}, serverOptions{})
	status, out := call(t, "GET", base+"/readyz", "")
	msg, _ := out["error"].(string)
	if status != 503 || out["status"] != "not ready" || !strings.Contains(msg, "no SEV-SNP guest interface") || !strings.Contains(msg, "-emulate") {
		t.Errorf("/readyz: %d %v", status, out)
	}
	if status, out := call(t, "GET", base+"/livez", ""); status != 200 || out["status"] != "live" {
		t.Errorf("/livez: %d %v", status, out)
	}
	if status, out := call(t, "GET", base+"/status", ""); status != 200 || out["message"] != "Status OK" {
		t.Errorf("/status: %d %v", status, out)
	}
	if code, text := probe(t, base); code != 1 || !strings.Contains(text, "/readyz: HTTP 503") {
		t.Errorf("skr probe: exit %d: %s", code, text)
	}
	if code, text := probe(t, base, "/livez"); code != 0 || !strings.Contains(text, "/livez: HTTP 200") {
		t.Errorf("skr probe /livez: exit %d: %s", code, text)
	}
}

// gatedEmulator is an emulator whose keys are made only once gate closes:
// the state of a sidecar just started.
func gatedEmulator(t *testing.T, gate <-chan struct{}) teeDevice {
	t.Helper()
	newTestEmulator(t, nil) // makes the shared test identity
	base := testEmulatorID
	id := &emulatorIdentity{}
	id.backgroundWork = startBackground("the SNP emulator's keys", func() error {
		<-gate
		if err := base.wait(context.Background()); err != nil {
			return err
		}
		id.vcek, id.certs, id.chipID, id.measurement, id.reportID = base.vcek, base.certs, base.chipID, base.measurement, base.reportID
		return nil
	})
	return newEmulatorWith(id, nil)
}

// /readyz is 503 while the emulator's keys are being made, 200 once they
// are, and names the certificates it has.
func TestReadyzWaitsForTheEmulatorsKeys(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	tee := gatedEmulator(t, gate)
	base, _ := startTestServer(t, serverConfig{}, serverOptions{TEE: tee})
	status, out := call(t, "GET", base+"/readyz", "")
	if msg, _ := out["error"].(string); status != 503 || !strings.Contains(msg, "the SNP emulator's keys are still being made") {
		t.Errorf("/readyz before the keys: %d %v", status, out)
	}
	if code, _ := probe(t, base); code != 1 {
		t.Errorf("skr probe before the keys: exit %d", code)
	}
	close(gate)
	if err := tee.(*emulator).id.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	status, out = call(t, "GET", base+"/readyz", "")
	if certs, _ := out["certificates"].(string); status != 200 || out["status"] != "ready" || out["tee"] != "emulator" || !strings.Contains(certs, "the platform's, for TCB db18000000000004") {
		t.Errorf("/readyz after the keys: %d %v", status, out)
	}
	if code, text := probe(t, base); code != 0 {
		t.Errorf("skr probe after the keys: exit %d: %s", code, text)
	}
}

// With -emulate the emulated Azure services' keys count too.
func TestReadyzEmulatedAzure(t *testing.T) {
	t.Parallel()
	readyAzureKeys(t)
	tee := newTestEmulator(t, nil)
	if err := tee.(*emulator).id.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	base := startEmulatedAzureServer(t, serverConfig{}, nil)
	if status, out := call(t, "GET", base+"/readyz", ""); status != 200 {
		t.Errorf("/readyz: %d %v", status, out)
	}
	never := make(chan struct{})
	t.Cleanup(func() { close(never) })
	s := &server{tee: tee, azure: &emulatedAzure{keys: &emulatedAzureKeys{backgroundWork: startBackground("the emulated Azure services' keys", func() error { <-never; return nil })}}}
	if _, err := s.readiness(context.Background()); err == nil || !strings.Contains(err.Error(), "the emulated Azure services' keys are still being made") {
		t.Errorf("readiness with the Azure keys in the making: %v", err)
	}
}

func TestProbeUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"/status"}, {"/readyz", "/livez"}, {"-addr", "https://127.0.0.1:1"}, {"-addr", "127.0.0.1:1/x"}, {"-nope"}} {
		var out, errOut bytes.Buffer
		if code := probeMain(args, &out, &errOut, envOf(nil)); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	var out, errOut bytes.Buffer
	start := time.Now()
	if code := probeMain([]string{"-addr", "127.0.0.1:1", "-timeout", "2s"}, &out, &errOut, envOf(nil)); code != 1 || !strings.Contains(errOut.String(), "no answer") {
		t.Errorf("nothing listening: exit %d: %s", code, errOut.String())
	}
	if time.Since(start) > 2*time.Second {
		t.Error("the probe outlived its timeout")
	}
}

func TestSidecarBase(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		addr string
		env  map[string]string
		want string
	}{
		{"", nil, "http://127.0.0.1:8080"},
		{"", map[string]string{"Port": "50000"}, "http://127.0.0.1:50000"},
		{"127.0.0.1:9000", nil, "http://127.0.0.1:9000"},
		{"http://[::1]:9000/", nil, "http://[::1]:9000"},
	} {
		got, err := sidecarBase(c.addr, envOf(c.env))
		if err != nil || got != c.want {
			t.Errorf("%q %v: %q %v, want %q", c.addr, c.env, got, err, c.want)
		}
	}
}
