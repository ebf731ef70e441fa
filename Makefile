# groundmesh: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
DATA_DIR ?= $(CURDIR)/.data
WORKFLOWCHECK_VERSION := v0.6.0
# The pure-Go GoMLX backend's executor: "parallelism=-1" measured 1.3x faster
# than "ops_sequential" on 2 cores (its default worker pool was reported to
# deadlock on 2 cores, so it is not used).
export GOMLX_BACKEND ?= go:parallelism=-1

.PHONY: all build plugins demo test vet workflowcheck services clean bench fuzz

all: build

build: plugins
	$(GO) build -o $(BIN)/groundmesh ./cmd/groundmesh

# GoMLX's SIMD kernels (GOEXPERIMENT=simd) are built in where the CPU has
# AVX2 or AVX-512. On an AVX2-only 2-core EPYC they trained every benchmarked
# model 1.3x to 1.6x faster (docs/experiments.md, 2026-12-06 fourth session);
# on AVX-512 about 2x. Override with `make PLUGIN_GOEXPERIMENT= plugins`.
PLUGIN_GOEXPERIMENT ?= $(shell grep -qwE 'avx2|avx512f' /proc/cpuinfo 2>/dev/null && echo simd)
# Each plugin's sha256 is written beside it: the host refuses to start a
# binary that no longer matches (a tampered or half-copied plugin).
plugins:
	CGO_ENABLED=0 GOEXPERIMENT=$(PLUGIN_GOEXPERIMENT) $(GO) build -o $(BIN)/groundmesh-gomlx ./plugins/gomlx/cmd/groundmesh-gomlx
	cd $(BIN) && sha256sum groundmesh-gomlx > groundmesh-gomlx.sha256

# Runs the whole pipeline once on the built-in scene world on the embedded
# stack (in-process Temporal + UI, private Postgres unless DATABASE_URL is set,
# the bus on Postgres, services, the GoMLX plugin), then prints where to look.
demo: build
	$(BIN)/groundmesh demo --data-dir $(DATA_DIR)

$(BIN)/workflowcheck:
	GOBIN=$(BIN) $(GO) install go.temporal.io/sdk/contrib/tools/workflowcheck@$(WORKFLOWCHECK_VERSION)

workflowcheck: $(BIN)/workflowcheck
	$(BIN)/workflowcheck -config workflows/workflowcheck.config.yaml ./workflows/...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

services:
	./scripts/ensure-services.sh

# Tests run against the real Postgres and NATS of this machine (started when
# missing) and build the real plugin binary.
test: services vet workflowcheck plugins
	GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -p 2 -timeout 30m ./...

bench:
	$(GO) run ./bench/ingest
	$(GO) run ./bench/synth
	$(GO) test -run '^$$' -bench . -benchtime 3x ./plugins/gomlx/

clean:
	rm -rf $(BIN) $(DATA_DIR)
