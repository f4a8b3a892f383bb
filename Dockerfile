# syntax=docker/dockerfile:1
#
# bearkong: one static binary on a distroless, non-root base. The same image serves the
# control plane (`bearkong cp`) and the sidecars' init container (`bearkong bootstrap`).
#
#   docker build -t bearkong:dev .          (make build/docker)
#   docker build --build-arg VERSION=$(git describe --always) -t bearkong:dev .

ARG GO_VERSION=1.26

# Build on the builder's own platform and cross-compile to the target's: no emulation.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/bearkong ./cmd/bearkong

# static: no libc, no shell, CA certificates and tzdata only; nonroot: uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/bearkong /bearkong
USER 65532:65532
EXPOSE 5000 9000
ENTRYPOINT ["/bearkong"]
CMD ["cp"]
