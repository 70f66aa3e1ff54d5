package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
)

// importJWK is the key as Key Vault's import wants it: a private JWK whose
// kty carries the -HSM suffix, plus key_size (bits) for oct keys.
type importJWK struct {
	jwk
	KeySize int `json:"key_size,omitempty"`
}

type importKeyRequest struct {
	Key        importJWK `json:"key"`
	HSM        bool      `json:"hsm"`
	Attributes struct {
		Exportable bool `json:"exportable"`
		Enabled    bool `json:"enabled"`
	} `json:"attributes"`
	ReleasePolicy wireReleasePolicy `json:"release_policy"`
}

// buildImportRequest is the PUT's body, and its JSON.
func buildImportRequest(p *importPlan, key any) (*importKeyRequest, []byte, error) {
	k, err := jwkFromPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode the key as a JWK: %w", err)
	}
	// The vault names the key from the URL; a kid, use or alg of the
	// local encoding must not travel.
	k.Kid, k.Use, k.Alg, k.X5C = "", "", "", nil
	k.Kty = p.KTY
	k.KeyOps = p.KeyOps
	req := importKeyRequest{Key: importJWK{jwk: k}, HSM: true}
	if oct, ok := key.([]byte); ok {
		req.Key.KeySize = len(oct) * 8
	}
	req.Attributes.Exportable = true
	req.Attributes.Enabled = true
	policy, err := marshalJSON(p.Policy)
	if err != nil {
		return nil, nil, err
	}
	req.ReleasePolicy = wireReleasePolicy{ContentType: "application/json; charset=utf-8", Data: b64url(policy)}
	body, err := marshalJSON(req)
	if err != nil {
		return nil, nil, err
	}
	return &req, body, nil
}

func importURL(p *importPlan) string {
	return "https://" + p.Vault + "/keys/" + url.PathEscape(p.KID) + "?api-version=" + url.QueryEscape(p.APIVersion)
}

func printDryRun(w io.Writer, p *importPlan, m *importMaterial, putURL, tokenSource string, req *importKeyRequest, policyJSON []byte) {
	fmt.Fprintln(w, "release policy:")
	fmt.Fprintln(w, string(policyJSON))
	fmt.Fprintln(w, "\nrequest (-dry-run: not sent; private key material redacted):")
	fmt.Fprintf(w, "PUT %s\n", putURL)
	fmt.Fprintf(w, "Authorization: Bearer <%s, not shown>\n", tokenSource)
	fmt.Fprintln(w, "Content-Type: application/json")
	fmt.Fprintln(w)
	fmt.Fprintln(w, string(redactedRequest(req)))
	if m.Generated {
		fmt.Fprintf(w, "\nthe %s key would be generated at import\n", p.KTY)
	}
	for _, f := range m.Files {
		fmt.Fprintf(w, "would write %s to %s (mode 0600)\n", f.What, f.Path)
	}
}

// redactedRequest is the body as sent, with the private JWK members
// replaced by their length.
func redactedRequest(req *importKeyRequest) []byte {
	r := *req
	for _, f := range []*string{&r.Key.D, &r.Key.P, &r.Key.Q, &r.Key.DP, &r.Key.DQ, &r.Key.QI, &r.Key.K} {
		if *f != "" {
			*f = fmt.Sprintf("<redacted: %d base64url characters>", len(*f))
		}
	}
	return prettyJSON(r)
}

// sendImport writes the key files the plan asks for, then sends the import
// and returns the new key's id. When Key Vault surely refused the key, the
// files this run wrote are removed again; otherwise they are kept, since
// the key may be in the vault.
func sendImport(ctx context.Context, env importKeyEnv, plan *importPlan, files []pendingFile, putURL, token string, body []byte, stderr io.Writer) (string, error) {
	written, err := writePendingFiles(files)
	if err != nil {
		return "", err
	}
	kid, err := putKey(ctx, env.Client, *env.Retry, putURL, token, body)
	if err != nil {
		err = explainVaultError(err, plan)
		switch {
		case len(written) == 0:
		case vaultSurelyRefused(err):
			removeFiles(written)
			err = fmt.Errorf("%w (removed the key files written by this run: the key was not imported)", err)
		case importNeverSent(err):
			removeFiles(written)
			err = fmt.Errorf("%w (removed the key files written by this run: the import never reached the vault)", err)
		default:
			err = fmt.Errorf("%w (kept the key files written by this run in case the import went through: %s)", err, retryHint(written))
		}
		return "", err
	}
	for _, f := range written {
		fmt.Fprintf(stderr, "wrote %s to %s (mode 0600)\n", f.What, f.Path)
	}
	return kid, nil
}

// putKey sends the import and returns the new key's id.
func putKey(ctx context.Context, client *http.Client, retry retryPolicy, putURL, token string, body []byte) (string, error) {
	ctx = withSecrets(ctx, privateJWKMembers(body)...)
	resp, _, err := doWithRetry(ctx, client, "Key Vault", retry, nil, func(ctx context.Context) (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, putURL, bytes.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		return req, nil
	})
	if err != nil {
		return "", err
	}
	var bundle struct {
		Key struct {
			Kid string `json:"kid"`
		} `json:"key"`
	}
	if err := json.Unmarshal(resp, &bundle); err != nil || bundle.Key.Kid == "" {
		// The answer may echo the key: redacted whole before it is cut.
		shown := redactSecrets(string(resp), append(privateJWKMembers(body), token))
		return "", fmt.Errorf("Key Vault accepted the import but its answer has no key.kid: %q", bounded(shown))
	}
	return bundle.Key.Kid, nil
}

// explainVaultError turns a failed import into one line with its likely
// cause.
func explainVaultError(err error, p *importPlan) error {
	var ue *upstreamError
	if errors.As(err, &ue) {
		switch ue.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Errorf("import key %q: %w: the bearer token is missing, expired or for another audience; get one for %s (az account get-access-token --resource %s) or use -a", p.KID, err, vaultResource(p.Vault), vaultResource(p.Vault))
		case http.StatusForbidden:
			return fmt.Errorf("import key %q: %w: the identity lacks a role that may import keys (Key Vault Crypto Officer on a Key Vault, Managed HSM Crypto User on a Managed HSM)", p.KID, err)
		case http.StatusBadRequest:
			return fmt.Errorf("import key %q: %w: check that key.kty %s matches the key material and key_ops, and that the vault supports it (oct-HSM needs a Managed HSM; Key Vault Premium for RSA-HSM and EC-HSM)", p.KID, err, p.KTY)
		case http.StatusNotFound:
			return fmt.Errorf("import key %q: %w: check key.akv.endpoint %s and api_version %s", p.KID, err, p.Vault, p.APIVersion)
		}
		return fmt.Errorf("import key %q: %w", p.KID, err)
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return fmt.Errorf("import key %q: cannot resolve the vault host %s (%w): check key.akv.endpoint and DNS", p.KID, p.Vault, dnsErr)
	}
	return fmt.Errorf("import key %q into %s: %w", p.KID, p.Vault, err)
}

// importNeverSent is true when err shows that the import never reached the
// vault: the name did not resolve, the connection was refused, or TLS
// failed before the request was sent. Anything else (a timeout, a
// connection cut after sending) may have imported the key.
func importNeverSent(err error) bool {
	var (
		dnsErr     *net.DNSError
		opErr      *net.OpError
		verifyErr  *tls.CertificateVerificationError
		unknownCA  x509.UnknownAuthorityError
		wrongHost  x509.HostnameError
		badCert    x509.CertificateInvalidError
		notTLS     tls.RecordHeaderError
		tlsAlerted tls.AlertError
	)
	return errors.As(err, &dnsErr) || errors.As(err, &opErr) && opErr.Op == "dial" ||
		errors.As(err, &verifyErr) || errors.As(err, &unknownCA) || errors.As(err, &wrongHost) ||
		errors.As(err, &badCert) || errors.As(err, &notTLS) || errors.As(err, &tlsAlerted)
}

func removeFiles(files []pendingFile) {
	for _, f := range files {
		os.Remove(f.Path)
	}
}

// retryHint says how to import again with the key a run wrote, once it is
// sure the first import did not go through: key files are never
// overwritten, so the next run reads the key instead of generating one.
func retryHint(written []pendingFile) string {
	var key string
	var others []string
	for _, f := range written {
		switch {
		case strings.HasSuffix(f.Path, ".pem"):
			key = "-kp " + f.Path
		case strings.HasSuffix(f.Path, ".hex") && !strings.HasSuffix(f.Path, ".derived.hex") && key == "":
			key = "-kh " + f.Path
		default:
			others = append(others, f.Path)
		}
	}
	hint := "check the vault for the key"
	if key != "" {
		hint += "; if it is not there, import the same key again with " + key
		if len(others) > 0 {
			hint += " after moving " + strings.Join(others, ", ") + " away"
		}
	}
	return hint
}

// vaultSurelyRefused is true when the vault answered with a final 4xx: the
// key was not imported, so key files written for it are useless.
func vaultSurelyRefused(err error) bool {
	var ue *upstreamError
	return errors.As(err, &ue) && ue.StatusCode >= 400 && ue.StatusCode < 500
}
