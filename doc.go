// Command skr is a Secure Key Release sidecar for confidential containers on
// AMD SEV-SNP (Azure Container Instances, AKS with Kata), and the tools
// around it, in one static binary.
//
// The sidecar listens on loopback only. A workload in the same container
// group asks it for hardware-signed attestation evidence (/attest/raw,
// /attest/combined), for a Microsoft Azure Attestation (MAA) token over that
// evidence (/attest/maa), and for keys that Azure Key Vault or Managed HSM
// release only to a container group whose attested identity satisfies the
// key's release policy (/key/release). It speaks the same REST API and reads
// the same SkrSideCarArgs as Microsoft's skr sidecar, so it can replace that
// image without changing templates or clients.
//
// The package is flat; each file is one role, named for it.
//
// # Serving
//
// main.go dispatches to a command, by subcommand or by the name the binary
// was started under (a scratch image links skr.sh, importkey, ... to it).
// `skr serve` reads its settings in config.go (flags, their environment
// variables, SkrSideCarArgs) and what the platform says about the container
// group in seccontext.go (security policy, host certificates, reference
// info); server.go builds the server from them, listens (socket.go for the
// optional Unix socket and its peer check) and drains on shutdown; api.go
// holds the routes, the refusal of browser requests, /status, the JSON
// request and error plumbing, and statusFor, the one place where a typed
// error from errors.go becomes an HTTP status. attest.go serves the
// /attest/* endpoints, release.go /key/release; allow.go holds the
// SkrSideCarArgs allow lists both check first.
//
// # A key release, step by step
//
//  1. release.go: the /key/release handler decodes and checks the request
//     (vault host, key name and version, MAA host) and runs the steps
//     below under the request's deadline, naming the step that failed.
//  2. attest.go, requireTEE: without a guest interface nothing else is
//     tried.
//  3. identity.go: the bearer token for the vault, unless the request
//     brings its own: workload identity, else the managed identity from
//     IMDS; tokens are cached and given only to Key Vault or Managed HSM
//     hosts.
//  4. releaser.go and keypool.go: the credential to release with, an
//     RSA wrapping key from a pool that generates them ahead of need
//     (keygen.go decides when: never in the way of an answer, on every
//     core when releases wait for keys),
//     together with an MAA token over its public JWK Set. A credential
//     serves further releases from Key Vault and Managed HSM hosts to the
//     same MAA for a while (-wrapping-key-ttl, never past the token's exp),
//     for a bounded number of MAA hosts; one attestation per MAA host is
//     in flight at a time, shared by every request waiting for it, and the
//     attestations in flight are bounded in total. Any other vault host
//     gets a credential of its own, used once.
//  5. attest.go, evidence: a report whose REPORT_DATA is the sha256 of that
//     JWK Set. tee.go picks the guest interface; each has its file:
//     tee_tsm.go (configfs-tsm), tee_sevguest.go (/dev/sev-guest),
//     tee_legacysev.go (Azure's legacy /dev/sev), or emulate.go (-emulate).
//     report.go parses the report and verifies it before anyone sees it:
//     its signature with the VCEK, the VCEK's chain to the ASK and ARK
//     (certs.go), and the TCB and chip the VCEK certifies (vcek.go, in
//     tcb.go's TCB layouts). The certificates come from certcache.go,
//     which picks the ones matching the report and caches them;
//     certsources.go fetches them from the host (THIM), the Azure cache
//     or AMD's KDS.
//  6. maa.go: the evidence goes to MAA, which answers with a signed token
//     that carries the JWK Set.
//  7. keyvault.go: the release call, with the bearer token and the MAA
//     token; Key Vault checks the token against the key's release policy
//     and answers with a JWS, whose signer certificate must chain to a
//     trusted root and name the vault.
//  8. releasedkey.go: the payload must be for the key and vault asked for
//     and wrapped to this credential's key; the key material is unwrapped
//     (RSA-OAEP, then keywrap.go's AES key wrap with padding), checked
//     against the public key Key Vault signed, and returned as a JWK.
//     jwt.go (JWS) and jwk.go (JWK) are the JOSE both ends need.
//
// Outbound HTTP goes through upstream.go (retries, bounded answers, typed
// upstream errors) and redact.go (no secret reaches a log); endpoint.go checks
// user-given hosts and normalises host names; flight.go lets every request
// that needs the same token, certificates or attestation share one call;
// keymaterial.go parses and wipes private keys; encoding.go and files.go
// hold the JSON, base64 and file helpers; log.go speaks the upstream
// sidecar's log levels.
//
// # Diagnostics
//
// A release that fails says why. explain.go reads the key's release policy
// after a Key Vault 403 and evaluates it against the MAA token just sent,
// with policyeval.go's evaluator (the one the emulated vault and `skr
// policy check` use). correlation.go gives every answer an X-Request-Id
// that its log lines share and carries MAA's and Key Vault's
// x-ms-request-id into the log and the errors; metrics.go counts requests,
// releases, attestations, certificate fetches and retries and times each
// stage for /metrics; probe.go answers /livez and /readyz (can evidence be
// produced now?) and is `skr probe`, the exec probe.
//
// # Other commands
//
//   - doctor.go: `skr doctor` checks, one line each with what to do,
//     everything a release needs, in-process or (doctor_sidecar.go)
//     against a running sidecar.
//   - policycmd.go: `skr policy check` evaluates a release policy against
//     an MAA token's claims offline, and lints it.
//   - version.go: `skr version`.
//   - digest.go: `skr digest` prints the sha256 of a base64 security
//     policy, the HOST_DATA a release policy must name.
//   - importkey.go: `skr importkey` imports a key into Key Vault or Managed
//     HSM with a release policy: importkey_plan.go reads the configuration
//     into a plan, policy.go builds the release policy, importkey_keys.go
//     reads or derives the key material (keymaterial.go parses private
//     keys), importkey_upload.go sends it or prints the dry run.
//   - clients.go: `skr attest-client` and `skr release-client`, the test
//     clients that call a running sidecar, as Microsoft's attest_client.sh
//     and skr_client.sh do.
//   - emulate.go: with -emulate the sidecar signs reports with a software
//     VCEK certified by a software ASK and ARK made for each run, so that
//     everything above can run on a machine without SEV-SNP. No real
//     verifier trusts that evidence.
package main
