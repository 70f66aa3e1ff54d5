package main

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
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
		Image           string   `json:"image"`
		Command         []string `json:"command"`
		Env             []armEnv `json:"environmentVariables"`
		SecurityContext struct {
			Privileged bool `json:"privileged"`
		} `json:"securityContext"`
	} `json:"properties"`
}

type armEnv struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	Regex bool   `json:"regex"`
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
		t.Errorf("want the example's four containers (sidecar, two attestation clients, release client), got %v", roles)
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

// policyInput is examples/aci/policy-input.json, confcom's input.
type policyInput struct {
	Version    string         `json:"version"`
	Containers []armContainer `json:"containers"`
}

// readACIExample reads the ACI example's template and policy input.
func readACIExample(t *testing.T) (*armTemplate, *policyInput) {
	t.Helper()
	var tpl armTemplate
	readJSON(t, "examples/aci/skr-template.json", &tpl)
	var in policyInput
	readJSON(t, "examples/aci/policy-input.json", &in)
	if len(tpl.Resources) != 1 {
		t.Fatalf("%d resources in the template", len(tpl.Resources))
	}
	return &tpl, &in
}

// imageParam is how every container of the template names its image, so
// that one deployment parameter sets them all.
const imageParam = "[parameters('image')]"

// policyInputDrift lists, container by container, where the policy input
// and the template disagree: names, commands, image, environment variable
// names and values, security context. A group deployed from a template its
// policy does not describe is refused, or runs without the SNP device.
func policyInputDrift(t *testing.T, tpl *armTemplate, in *policyInput) []string {
	t.Helper()
	var drift []string
	add := func(format string, args ...any) { drift = append(drift, fmt.Sprintf(format, args...)) }
	if in.Version != "1.0" {
		add("policy input version %q, want 1.0", in.Version)
	}
	policy := map[string]armContainer{}
	for _, c := range in.Containers {
		if _, dup := policy[c.Name]; dup {
			add("container %s appears twice in the policy input", c.Name)
		}
		policy[c.Name] = c
	}
	template := map[string]bool{}
	for _, c := range tpl.Resources[0].Properties.Containers {
		template[c.Name] = true
		p, ok := policy[c.Name]
		if !ok {
			add("container %s of the template is not in the policy input", c.Name)
			continue
		}
		drift = append(drift, containerDrift(t, tpl, c, p)...)
	}
	for _, c := range in.Containers {
		if !template[c.Name] {
			add("container %s of the policy input is not in the template", c.Name)
		}
	}
	return drift
}

// containerDrift compares one container of the template (c) with its
// policy input entry (p).
func containerDrift(t *testing.T, tpl *armTemplate, c, p armContainer) []string {
	var drift []string
	add := func(format string, args ...any) { drift = append(drift, c.Name+": "+fmt.Sprintf(format, args...)) }
	if !slices.Equal(p.Properties.Command, c.Properties.Command) {
		add("command %q in the policy input, %q in the template", p.Properties.Command, c.Properties.Command)
	}
	if c.Properties.Image != imageParam {
		add("the template's image is %q, not the image parameter %s", c.Properties.Image, imageParam)
	} else if img := tpl.resolve(t, imageParam); p.Properties.Image != img {
		add("image %q in the policy input, the template's image parameter defaults to %q", p.Properties.Image, img)
	}
	sidecar := len(c.Properties.Command) == 1 && c.Properties.Command[0] == "/skr.sh"
	pp, tp := p.Properties.SecurityContext.Privileged, c.Properties.SecurityContext.Privileged
	switch {
	case pp != tp:
		add("privileged is %v in the policy input, %v in the template", pp, tp)
	case pp != sidecar:
		add("privileged = %v; only the sidecar (for the SNP device) is privileged", pp)
	}
	rules := map[string]armEnv{}
	for _, e := range p.Properties.Env {
		rules[e.Name] = e
	}
	set := map[string]bool{}
	for _, e := range c.Properties.Env {
		set[e.Name] = true
		val := tpl.resolve(t, e.Value)
		rule, ok := rules[e.Name]
		switch {
		case !ok:
			add("the template sets %s, which the policy input does not allow", e.Name)
		case rule.Regex && !regexp.MustCompile(`^(?:`+rule.Value+`)$`).MatchString(val):
			add("%s=%q does not match the policy's %q", e.Name, val, rule.Value)
		case !rule.Regex && rule.Value != val:
			add("%s=%q, the policy says %q", e.Name, val, rule.Value)
		}
	}
	for _, e := range p.Properties.Env {
		if !set[e.Name] {
			add("the policy input allows %s, which the template does not set", e.Name)
		}
	}
	return drift
}

// The policy input describes the template's containers exactly.
func TestExamplePolicyInputMatchesTemplate(t *testing.T) {
	t.Parallel()
	tpl, in := readACIExample(t)
	for _, d := range policyInputDrift(t, tpl, in) {
		t.Error(d)
	}
	if len(in.Containers) != 4 {
		t.Errorf("%d containers in the policy input, want the sidecar and three clients", len(in.Containers))
	}
}

// Each way the two files can drift apart is caught.
func TestPolicyInputDriftIsCaught(t *testing.T) {
	t.Parallel()
	const sidecar, client = 0, 3 // skr-sidecar-container, test-skr-client-container
	for _, tc := range []struct {
		name   string
		break_ func(tpl []armContainer, in []armContainer)
		want   string
	}{
		{"container renamed in the template", func(tpl, in []armContainer) { tpl[client].Name = "renamed" }, "container renamed of the template is not in the policy input"},
		{"container renamed in the policy input", func(tpl, in []armContainer) { in[client].Name = "renamed" }, "container renamed of the policy input is not in the template"},
		{"command", func(tpl, in []armContainer) { tpl[sidecar].Properties.Command = []string{"/bin/sh"} }, "command"},
		{"variable only in the template", func(tpl, in []armContainer) {
			tpl[sidecar].Properties.Env = append(tpl[sidecar].Properties.Env, armEnv{Name: "LogFile", Value: "/log.txt"})
		}, "the template sets LogFile, which the policy input does not allow"},
		{"variable only in the policy input", func(tpl, in []armContainer) {
			in[client].Properties.Env = append(in[client].Properties.Env, armEnv{Name: "SkrClientMHSMEndpoint", Value: ".*", Regex: true})
		}, "the policy input allows SkrClientMHSMEndpoint, which the template does not set"},
		{"variable value", func(tpl, in []armContainer) { in[sidecar].Properties.Env[2].Value = "debug" }, `LogLevel="info", the policy says "debug"`},
		{"image not the parameter", func(tpl, in []armContainer) { tpl[client].Properties.Image = "myregistry.azurecr.io/skr:1.0" }, "not the image parameter"},
		{"image tag", func(tpl, in []armContainer) { in[client].Properties.Image = "myregistry.azurecr.io/skr:latest" }, `image "myregistry.azurecr.io/skr:latest" in the policy input`},
		{"sidecar not privileged in the template", func(tpl, in []armContainer) { tpl[sidecar].Properties.SecurityContext.Privileged = false }, "privileged is true in the policy input, false in the template"},
		{"sidecar not privileged in the policy input", func(tpl, in []armContainer) { in[sidecar].Properties.SecurityContext.Privileged = false }, "privileged is false in the policy input, true in the template"},
		{"client privileged in both", func(tpl, in []armContainer) {
			tpl[client].Properties.SecurityContext.Privileged = true
			in[client].Properties.SecurityContext.Privileged = true
		}, "only the sidecar"},
	} {
		tpl, in := readACIExample(t)
		tcs := tpl.Resources[0].Properties.Containers
		if tcs[sidecar].Name != "skr-sidecar-container" || tcs[client].Name != "test-skr-client-container" ||
			in.Containers[sidecar].Name != tcs[sidecar].Name || in.Containers[client].Name != tcs[client].Name {
			t.Fatal("the example's containers moved: update the indexes of this test")
		}
		tc.break_(tcs, in.Containers)
		drift := policyInputDrift(t, tpl, in)
		if !slices.ContainsFunc(drift, func(d string) bool { return strings.Contains(d, tc.want) }) {
			t.Errorf("%s: drift %q does not report %q", tc.name, drift, tc.want)
		}
	}
}

// The walkthrough builds, names in the policy input and deploys one image,
// and creates the resource group it uses.
func TestExampleWalkthroughMatchesExample(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	_, walk, ok := strings.Cut(readme, "## Walkthrough: Confidential ACI")
	if !ok {
		t.Fatal("README has no ACI walkthrough")
	}
	walk, _, _ = strings.Cut(walk, "\n## ")
	tpl, in := readACIExample(t)
	image := tpl.resolve(t, imageParam)
	for _, c := range in.Containers {
		if c.Properties.Image != image {
			t.Errorf("%s: policy input image %q, template default %q", c.Name, c.Properties.Image, image)
		}
	}
	for _, want := range []string{"-t " + image + " .", "docker push " + image, "image=" + image} {
		if !strings.Contains(walk, want) {
			t.Errorf("the walkthrough lacks %q (the example's image is %s)", want, image)
		}
	}
	group := regexp.MustCompile(`az group create -n (\S+)`).FindStringSubmatch(walk)
	if group == nil {
		t.Fatal("the walkthrough never creates its resource group (az group create)")
	}
	create := strings.Index(walk, group[0])
	for _, m := range regexp.MustCompile(`-g (\S+)`).FindAllStringSubmatchIndex(walk, -1) {
		if rg := walk[m[2]:m[3]]; rg != group[1] {
			t.Errorf("the walkthrough uses resource group %q but creates %q", rg, group[1])
		} else if m[0] < create {
			t.Errorf("the walkthrough uses -g %s before az group create", rg)
		}
	}
}
