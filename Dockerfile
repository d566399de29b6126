# syntax=docker/dockerfile:1

# ---- build -----------------------------------------------------------------
# Debian (glibc) toolchain image: go-nvml needs cgo even for its mock, and gcc
# ships in this image. Building on bookworm links against the same glibc
# (2.36) as the distroless runtime below.
FROM golang:1.26-bookworm AS build

ARG VERSION=dev
ARG COMMIT=unknown

WORKDIR /src
ENV CGO_ENABLED=1

# Dependencies first, so this layer is reused until go.mod/go.sum change.
# Modules stay in the layer (no cache mount) so a registry-cached layer is
# enough on a fresh CI builder.
COPY go.mod go.sum ./
RUN go mod download

COPY . .
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/atrium .

# ---- runtime ---------------------------------------------------------------
# distroless/base (not static): the binary is dynamically linked against glibc
# and dlopen()s libnvidia-ml.so.1, which the NVIDIA container toolkit mounts
# in at run time. Without a GPU, NVML init fails cleanly and the same binary
# runs API-only. The :nonroot variant has no shell and runs as uid 65532.
FROM gcr.io/distroless/base-debian12:nonroot

ARG VERSION=dev
ARG COMMIT=unknown

LABEL org.opencontainers.image.title="atrium" \
      org.opencontainers.image.description="Atrium: auth, payments, tenants, quotas and GPU scheduling in one binary" \
      org.opencontainers.image.source="https://github.com/atriumhq/atrium" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"

COPY --from=build /out/atrium /usr/local/bin/atrium

# Expose every GPU and the NVML/compute driver libraries when run with the
# NVIDIA runtime; harmless on hosts without one.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    ATRIUM_ENV=production \
    ATRIUM_HTTP_ADDR=:8080

# Never run as root: nothing in the process needs it, and NVML reads the
# device nodes the toolkit makes available to the container.
USER nonroot:nonroot

EXPOSE 8080

# No shell or curl in distroless: the binary probes itself.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/atrium", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/atrium"]
CMD ["serve"]
