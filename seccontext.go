package main

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// The security context: what the platform tells a container group about
// itself (security policy, host certificates, UVM reference info).

// uvmInputs is what the platform tells the container group about itself.
// Every field may be empty: a container outside Confidential ACI has none.
type uvmInputs struct {
	SecurityPolicy []byte // decoded policy text (Rego)
	HostAMDCert    []byte // decoded THIM JSON (vcekCert, certificateChain, tcbm)
	ReferenceInfo  []byte // decoded UVM reference info (COSE_Sign1)
	Source         string // where they were found, for /status and logs

	// Warnings are problems that do not stop the sidecar, said at start.
	Warnings []string
}

// PolicyDigest is HOST_DATA as the platform sets it: sha256 of the decoded
// policy. ok is false when there is no policy.
func (u *uvmInputs) PolicyDigest() (digest [32]byte, ok bool) {
	if len(u.SecurityPolicy) == 0 {
		return digest, false
	}
	return sha256.Sum256(u.SecurityPolicy), true
}

const (
	fileSecurityPolicy = "security-policy-base64"
	fileHostAMDCert    = "host-amd-cert-base64"
	fileReferenceInfo  = "reference-info-base64"
)

// loadUVMInputs finds the security context: the directory named by
// UVM_SECURITY_CONTEXT_DIR, else the first security-context-* directory
// under root, else the legacy environment variables. The environment is
// also used when the directory holds no reference info, as upstream does.
func loadUVMInputs(getenv func(string) string, root string) (*uvmInputs, error) {
	dir := getenv("UVM_SECURITY_CONTEXT_DIR")
	var warnings []string
	if dir != "" {
		if info, err := os.Stat(dir); err != nil || !info.IsDir() {
			warnings = append(warnings, fmt.Sprintf("UVM_SECURITY_CONTEXT_DIR=%s is not a folder: no security policy, platform certificates or reference info come from it", dir))
			dir = ""
		}
	} else {
		dir = findSecurityContextDir(root)
	}
	in := &uvmInputs{}
	if dir != "" {
		var err error
		if in, err = loadSecurityContextDir(dir); err != nil {
			return nil, err
		}
	}
	in.Warnings = append(warnings, in.Warnings...)
	if len(in.ReferenceInfo) == 0 {
		env, err := loadSecurityContextEnv(getenv)
		if err != nil {
			return nil, err
		}
		in.Warnings = append(in.Warnings, env.Warnings...)
		if env.Source != "" {
			if len(in.SecurityPolicy) == 0 {
				in.SecurityPolicy = env.SecurityPolicy
			}
			if len(in.HostAMDCert) == 0 {
				in.HostAMDCert = env.HostAMDCert
			}
			in.ReferenceInfo = env.ReferenceInfo
			in.Source = strings.TrimPrefix(in.Source+" + "+env.Source, " + ")
		}
	}
	return in, nil
}

// findSecurityContextDir returns the first (by name) directory under root
// whose name starts with "security-context-", or "".
func findSecurityContextDir(root string) string {
	entries, err := os.ReadDir(root)
	if err != nil {
		return ""
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "security-context-") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	return filepath.Join(root, names[0])
}

func loadSecurityContextDir(dir string) (*uvmInputs, error) {
	in := &uvmInputs{Source: dir}
	for _, f := range []struct {
		name string
		dst  *[]byte
	}{
		{fileSecurityPolicy, &in.SecurityPolicy},
		{fileHostAMDCert, &in.HostAMDCert},
		{fileReferenceInfo, &in.ReferenceInfo},
	} {
		path := filepath.Join(dir, f.name)
		raw, err := readBounded(path, 1<<20)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("security context: %w", err)
		}
		decoded, err := decodeStdBase64File(raw)
		switch {
		case err != nil && f.name == fileHostAMDCert:
			in.Warnings = append(in.Warnings, corruptPlatformCerts(path, err))
		case err != nil:
			return nil, fmt.Errorf("security context %s: %w", path, err)
		default:
			*f.dst = decoded
		}
	}
	return in, nil
}

// corruptPlatformCerts is the warning for platform certificates that do
// not decode. The platform wrote them, not the user, and fresh ones can be
// fetched for every report: they are not worth refusing to start over.
func corruptPlatformCerts(where string, err error) string {
	return fmt.Sprintf("the platform certificates in %s are unusable (%v): ignored; certificates are fetched from the certcache source instead", where, err)
}

func loadSecurityContextEnv(getenv func(string) string) (*uvmInputs, error) {
	in := &uvmInputs{}
	var names []string
	for _, v := range []struct {
		name string
		dst  *[]byte
	}{
		{"UVM_SECURITY_POLICY", &in.SecurityPolicy},
		{"UVM_HOST_AMD_CERTIFICATE", &in.HostAMDCert},
		{"UVM_REFERENCE_INFO", &in.ReferenceInfo},
	} {
		s := getenv(v.name)
		if s == "" {
			continue
		}
		decoded, err := decodeStdBase64File([]byte(s))
		switch {
		case err != nil && v.name == "UVM_HOST_AMD_CERTIFICATE":
			in.Warnings = append(in.Warnings, corruptPlatformCerts("environment variable "+v.name, err))
			continue
		case err != nil:
			return nil, fmt.Errorf("environment variable %s: %w", v.name, err)
		}
		*v.dst = decoded
		names = append(names, v.name)
	}
	if len(names) > 0 {
		in.Source = "env " + strings.Join(names, ",")
	}
	return in, nil
}

// decodeStdBase64File decodes standard padded base64, ignoring white space
// around it (files usually end in a newline).
func decodeStdBase64File(raw []byte) ([]byte, error) {
	s := strings.TrimSpace(string(raw))
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not standard base64: %w", err)
	}
	return b, nil
}
