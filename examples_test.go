package main

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestExamplesAreValidJSON(t *testing.T) {
	t.Parallel()
	n := 0
	err := filepath.WalkDir("examples", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		n++
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		if err := dec.Decode(&v); err != nil || dec.More() {
			t.Errorf("%s is not one JSON value: %v", path, err)
		}
		return nil
	})
	if err != nil || n < 4 {
		t.Fatalf("walked %d JSON files: %v", n, err)
	}
}

// The example importkeyconfig.json is accepted as it stands (dry run).
func TestExampleImportKeyConfig(t *testing.T) {
	t.Parallel()
	rsaKey, _ := testKeys(t)
	der, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	pemFile := writeTempFile(t, "key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	code, out, errOut := runImport(t, nil, nil, "-dry-run", "-out", "-c", "examples/importkeyconfig.json", "-kp", pemFile)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"PUT https://myvault.vault.azure.net/keys/skr-example-key?api-version=7.4",
		`"authority": "https://sharedeus.eus.attest.azure.net"`,
		`"claim": "x-ms-sevsnpvm-hostdata"`,
		`"equals": "azure-compliant-uvm"`,
		`"claim": "x-ms-sevsnpvm-is-debuggable"`,
		`"claim": "x-ms-sevsnpvm-vmpl"`,
		`"kty": "RSA-HSM"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run of the example lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(errOut, "all zeros, the example's placeholder") {
		t.Errorf("no warning about the placeholder host data: %q", errOut)
	}
}

func TestExampleSkrSideCarArgs(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("examples/skrsidecarargs.json")
	if err != nil {
		t.Fatal(err)
	}
	// As the README says: base64 -w0 examples/skrsidecarargs.json.
	args, err := parseSkrSideCarArgs(base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	if args.CertCache.EndpointType != "LocalTHIM" || args.Identity.ClientID == "" {
		t.Errorf("parsed %+v", args)
	}
}

// armTemplate is the part of the ARM template the test reads.
type armTemplate struct {
	Parameters map[string]struct {
		DefaultValue *string `json:"defaultValue"`
	} `json:"parameters"`
	Resources []struct {
		Type     string `json:"type"`
		Identity struct {
			Type string `json:"type"`
		} `json:"identity"`
		Properties struct {
			SKU                           string `json:"sku"`
			ConfidentialComputeProperties struct {
				CCEPolicy string `json:"ccePolicy"`
			} `json:"confidentialComputeProperties"`
			Containers []armContainer `json:"containers"`
		} `json:"properties"`
	} `json:"resources"`
}

type armContainer struct {
	Name       string `json:"name"`
	Properties struct {
		Image   string   `json:"image"`
		Command []string `json:"command"`
		Env     []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
			Regex bool   `json:"regex"`
		} `json:"environmentVariables"`
		SecurityContext struct {
			Privileged bool `json:"privileged"`
		} `json:"securityContext"`
	} `json:"properties"`
}

var armParamRE = regexp.MustCompile(`^\[parameters\('([^']+)'\)\]$`)

// resolve gives a template value with parameters at their defaults.
func (a *armTemplate) resolve(t *testing.T, v string) string {
	m := armParamRE.FindStringSubmatch(v)
	if m == nil {
		return v
	}
	p, ok := a.Parameters[m[1]]
	if !ok {
		t.Fatalf("template uses an undeclared parameter %q", m[1])
	}
	if p.DefaultValue == nil {
		return "value-of-" + m[1]
	}
	return *p.DefaultValue
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// The template's containers start entry points of the image, and the code
// reads exactly the environment variables the template sets.
func TestExampleTemplateMatchesEntryPoints(t *testing.T) {
	t.Parallel()
	var tpl armTemplate
	readJSON(t, "examples/aci/skr-template.json", &tpl)
	if len(tpl.Resources) != 1 {
		t.Fatalf("%d resources", len(tpl.Resources))
	}
	group := tpl.Resources[0]
	if group.Type != "Microsoft.ContainerInstance/containerGroups" || !strings.EqualFold(group.Properties.SKU, "confidential") ||
		group.Properties.ConfidentialComputeProperties.CCEPolicy != "[parameters('ccePolicy')]" || group.Identity.Type != "UserAssigned" {
		t.Errorf("not a confidential group with a ccePolicy parameter and a user-assigned identity: %+v", group)
	}
	roles := map[string]int{}
	for _, c := range group.Properties.Containers {
		if len(c.Properties.Command) != 1 || !slices.Contains(imageLinks, c.Properties.Command[0]) {
			t.Errorf("%s: command %q is not an entry point of the image", c.Name, c.Properties.Command)
			continue
		}
		env := map[string]string{}
		for _, e := range c.Properties.Env {
			env[e.Name] = tpl.resolve(t, e.Value)
		}
		role := filepath.Base(c.Properties.Command[0])
		roles[role]++
		switch role {
		case "skr.sh":
			checkSidecarEnv(t, c.Name, env)
		case "attest_client.sh":
			checkClientEnv(t, c.Name, env, attestClientMain, []string{envAttestRuntimeData, envAttestMAAEndpoint})
		case "skr_client.sh":
			checkClientEnv(t, c.Name, env, releaseClientMain, []string{envReleaseKID, envReleaseAKV, envReleaseMHSM, envReleaseMAA})
		default:
			t.Errorf("%s: unexpected entry point %s", c.Name, role)
		}
	}
	if roles["skr.sh"] != 1 || roles["attest_client.sh"] != 2 || roles["skr_client.sh"] != 1 {
		t.Errorf("want the seed's four containers (sidecar, two attestation clients, release client), got %v", roles)
	}
}

func checkSidecarEnv(t *testing.T, name string, env map[string]string) {
	t.Helper()
	known := []string{"SkrSideCarArgs", "Port", "LogLevel", "LogFile", "SKR_EMULATE", "SKR_WRAPPING_KEY_TTL"}
	for k := range env {
		if !slices.Contains(known, k) {
			t.Errorf("%s sets %s, which the sidecar does not read", name, k)
		}
	}
	cfg, err := parseServeFlags(nil, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("%s: the sidecar refuses the template's environment: %v", name, err)
	}
	if cfg.Port != 8080 || cfg.Args.CertCache.EndpointType == "" {
		t.Errorf("%s: the sidecar read port %d and args %+v from the template", name, cfg.Port, cfg.Args)
	}
}

// checkClientEnv runs the client with the template's environment against a
// stand-in and checks that every variable set reached the request.
func checkClientEnv(t *testing.T, name string, env map[string]string, client func([]string, io.Writer, io.Writer, func(string) string) int, known []string) {
	t.Helper()
	for k := range env {
		if !slices.Contains(known, k) {
			t.Errorf("%s sets %s, which its client does not read", name, k)
		}
	}
	sc, addr := newSidecarStandIn(t, http.StatusOK)
	var stderr bytes.Buffer
	if code := client([]string{"-once", "-addr", addr, "-out", t.TempDir()}, io.Discard, &stderr, func(k string) string { return env[k] }); code != 0 {
		t.Fatalf("%s: the client failed with the template's environment: %s", name, stderr.String())
	}
	var sent []string
	for _, p := range []string{"/attest/raw", "/attest/maa", "/key/release"} {
		for _, v := range sc.got(p) {
			sent = append(sent, v)
		}
	}
	for k, v := range env {
		if !slices.Contains(sent, v) {
			t.Errorf("%s: %s=%q did not reach the sidecar (sent %q)", name, k, v, sent)
		}
	}
}

// The policy input describes the template's containers: same commands,
// same variables, literal values equal and patterns matching the values.
func TestExamplePolicyInputMatchesTemplate(t *testing.T) {
	t.Parallel()
	var tpl armTemplate
	readJSON(t, "examples/aci/skr-template.json", &tpl)
	var in struct {
		Version    string         `json:"version"`
		Containers []armContainer `json:"containers"`
	}
	readJSON(t, "examples/aci/policy-input.json", &in)
	if in.Version != "1.0" {
		t.Errorf("version %q", in.Version)
	}
	byName := map[string]armContainer{}
	for _, c := range in.Containers {
		byName[c.Name] = c
	}
	tc := tpl.Resources[0].Properties.Containers
	if len(in.Containers) != len(tc) {
		t.Fatalf("%d containers in the policy input, %d in the template", len(in.Containers), len(tc))
	}
	for _, c := range tc {
		p, ok := byName[c.Name]
		if !ok {
			t.Errorf("container %s is not in the policy input", c.Name)
			continue
		}
		if p.Properties.Image != tpl.resolve(t, c.Properties.Image) {
			t.Errorf("%s: image %q in the policy input, %q in the template", c.Name, p.Properties.Image, tpl.resolve(t, c.Properties.Image))
		}
		if !slices.Equal(p.Properties.Command, c.Properties.Command) {
			t.Errorf("%s: command %q vs %q", c.Name, p.Properties.Command, c.Properties.Command)
		}
		if want := c.Properties.Command[0] == "/skr.sh"; p.Properties.SecurityContext.Privileged != want {
			t.Errorf("%s: privileged = %v; only the sidecar (SNP device) may be", c.Name, p.Properties.SecurityContext.Privileged)
		}
		rules := map[string]string{}
		regex := map[string]bool{}
		for _, e := range p.Properties.Env {
			rules[e.Name], regex[e.Name] = e.Value, e.Regex
		}
		if len(rules) != len(c.Properties.Env) {
			t.Errorf("%s: %d variables in the policy input, %d in the template", c.Name, len(rules), len(c.Properties.Env))
		}
		for _, e := range c.Properties.Env {
			val := tpl.resolve(t, e.Value)
			rule, ok := rules[e.Name]
			switch {
			case !ok:
				t.Errorf("%s: %s is not allowed by the policy input", c.Name, e.Name)
			case regex[e.Name] && !regexp.MustCompile(`^(?:`+rule+`)$`).MatchString(val):
				t.Errorf("%s: %s=%q does not match the policy's %q", c.Name, e.Name, val, rule)
			case !regex[e.Name] && rule != val:
				t.Errorf("%s: %s=%q, the policy says %q", c.Name, e.Name, val, rule)
			}
		}
	}
}
