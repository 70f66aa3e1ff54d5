# skr: the Secure Key Release sidecar, its tools and the seed's test clients,
# one static binary in an image with nothing else in it.
#
#   docker build --build-arg VERSION=$(git describe --always --dirty) --build-arg COMMIT=$(git rev-parse HEAD) -t skr .
#
# Entry points (links to /bin/skr; the binary picks its role from the name
# it is started under, so no shell is needed):
#   /skr.sh                                          the sidecar (ENTRYPOINT)
#   /tests/attest_client.sh, /tests/skr/attest_client.sh   attestation test client
#   /tests/skr_client.sh, /tests/skr/skr_client.sh         key-release test client
#   /bin/securitypolicydigest, /bin/importkey              the tools

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY *.go ./
ARG VERSION=dev
ARG COMMIT=
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /rootfs/bin/skr .
# scratch has no shell to make links with: make them here and copy the
# whole tree, since COPY keeps the symbolic links inside a copied folder.
RUN mkdir -p /rootfs/tests/skr /rootfs/etc/ssl/certs \
 && ln -s /bin/skr /rootfs/skr.sh \
 && ln -s /bin/skr /rootfs/tests/attest_client.sh \
 && ln -s /bin/skr /rootfs/tests/skr_client.sh \
 && ln -s /bin/skr /rootfs/tests/skr/attest_client.sh \
 && ln -s /bin/skr /rootfs/tests/skr/skr_client.sh \
 && ln -s /bin/skr /rootfs/bin/securitypolicydigest \
 && ln -s /bin/skr /rootfs/bin/importkey \
 && cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ca-certificates.crt
# (The CA bundle is the trust store for MAA, Key Vault and the AMD
# certificate services: Go reads that path by default; SSL_CERT_FILE may
# point elsewhere.)

FROM scratch
COPY --from=build /rootfs/ /
# The image runs as root only because the SEV-SNP guest device
# (/dev/sev-guest, /dev/sev, configfs-tsm) is root-only in the utility VM;
# the server listens on loopback only.
USER 0:0
ENTRYPOINT ["/skr.sh"]
