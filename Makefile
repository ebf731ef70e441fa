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

.PHONY: all build plugins libtorch libtorch-optional test-libtorch ggml test-ggml bench-engines gpu-bundle demo test vet workflowcheck services clean bench fuzz soak vulncheck

all: build

build: plugins libtorch-optional
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

# The libtorch backend (plugins/libtorch): the same runtime with the libtorch
# engine, through a C shim (libgmtorch.so, copied beside the plugin) and
# cgo; kept out of the pure-Go default build. TORCH_PREFIX points at another
# libtorch (for example the one inside a PyTorch install on a GPU machine).
TORCH_PREFIX ?= /usr
LIBTORCH_SHIM := $(CURDIR)/plugins/libtorch/shim/build
LIBTORCH_ENV := CGO_ENABLED=1 CGO_LDFLAGS="-L$(LIBTORCH_SHIM) -Wl,-rpath,'$$ORIGIN'"
libtorch:
	TORCH_PREFIX=$(TORCH_PREFIX) ./scripts/ensure-libtorch.sh
	$(MAKE) -s -C plugins/libtorch/shim TORCH_PREFIX=$(TORCH_PREFIX) OUT=$(LIBTORCH_SHIM)
	mkdir -p $(BIN) && cp $(LIBTORCH_SHIM)/libgmtorch.so $(BIN)/
	$(LIBTORCH_ENV) $(GO) build -tags libtorch -o $(BIN)/groundmesh-libtorch ./plugins/libtorch/cmd/groundmesh-libtorch
	cd $(BIN) && sha256sum groundmesh-libtorch > groundmesh-libtorch.sha256

# make build and make demo build the libtorch backend where libtorch is (or
# can be installed), and go on without it where not.
libtorch-optional:
	@TORCH_PREFIX=$(TORCH_PREFIX) ./scripts/ensure-libtorch.sh --optional
	@if TORCH_PREFIX=$(TORCH_PREFIX) ./scripts/ensure-libtorch.sh >/dev/null 2>&1; then $(MAKE) -s libtorch; fi

# The libtorch engine's tests: the conformance matrix (training and
# inference cells), checkpoints across engines, the plugin process.
test-libtorch: libtorch
	$(LIBTORCH_ENV) GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -tags libtorch -count=1 -run 'Torch|Libtorch' ./plugins/gomlx/ ./plugins/libtorch/...

# The ggml backend (plugins/ggml): the same runtime with the ggml engine,
# for inference in float32, float16, q8_0 and q4_0 (GGUF exports). ggml's
# C sources are vendored in the github.com/ollama/ollama Go module, so it
# needs only cgo and a C/C++ compiler; its headers are found there. Its
# cgo flags set no -march: -O3 -march=native measured ~5x faster on a small
# model (../shared/DEPENDENCIES.md). GGML_CFLAGS= builds portably.
GGML_INCLUDE = $(shell $(GO) list -m -f '{{.Dir}}' github.com/ollama/ollama)/ml/backend/ggml/ggml/include
GGML_CFLAGS ?= -O3 -march=native
GGML_ENV = CGO_ENABLED=1 CGO_CPPFLAGS="-I$(GGML_INCLUDE)" CGO_CFLAGS="$(GGML_CFLAGS)" CGO_CXXFLAGS="$(GGML_CFLAGS)"
ggml:
	$(GGML_ENV) $(GO) build -tags ggml -o $(BIN)/groundmesh-ggml ./plugins/ggml/cmd/groundmesh-ggml
	cd $(BIN) && sha256sum groundmesh-ggml > groundmesh-ggml.sha256

# The ggml engine's tests: its operations against model/eager, the
# conformance matrix's inference cells in every dtype, GGUF files read by
# ggml's own reader, the plugin process.
test-ggml: ggml
	$(GGML_ENV) GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -tags ggml -count=1 ./plugins/ggml/...
	$(GGML_ENV) GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -tags ggml -count=1 -run 'GGML' ./plugins/gomlx/

# Times both engines' training steps on the demo model in one run.
bench-engines: libtorch
	$(LIBTORCH_ENV) GOEXPERIMENT=$(PLUGIN_GOEXPERIMENT) $(GO) test -tags libtorch -run '^$$' -bench Engines -benchtime 20x ./plugins/gomlx/

# The GPU check's bundle (scripts/gpu-check.sh): the libtorch tests as one
# binary built here, the shim's sources, and the script, for a GPU machine
# without Go.
gpu-bundle: libtorch
	rm -rf $(BIN)/gpu-check && mkdir -p $(BIN)/gpu-check/shim
	$(LIBTORCH_ENV) $(GO) test -c -tags libtorch -o $(BIN)/gpu-check/gomlx-torch.test ./plugins/gomlx/
	cp plugins/libtorch/shim/gmtorch.h plugins/libtorch/shim/gmtorch.cpp plugins/libtorch/shim/Makefile $(BIN)/gpu-check/shim/
	cp scripts/gpu-check.sh $(BIN)/gpu-check/

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

# govulncheck against the Go vulnerability database as the module proxy
# serves it (golang.org/x/vulndb's OSV files, indexed once into a local
# database under VULNDB_DIR): vuln.go.dev itself cannot be reached from
# here. scripts/vulncheck fails unless every vulnerability the code calls is
# explained in scripts/vulncheck/allow.txt. Bump VULNDB_VERSION to the
# newest pseudo-version (`go list -m -versions golang.org/x/vulndb`) for a
# newer database.
GOVULNCHECK_VERSION := v1.9.0
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
VULNDB_DIR ?= $(HOME)/.cache/groundmesh/vulndb-$(VULNDB_VERSION)
$(VULNDB_DIR)/index/db.json:
	mkdir -p $(dir $(VULNDB_DIR))
	cd $(dir $(VULNDB_DIR)) && osv=$$($(GO) mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')/data/osv && \
		rm -rf $(VULNDB_DIR).tmp && $(GO) run golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION) -vulns "$$osv" -out $(VULNDB_DIR).tmp && \
		mv $(VULNDB_DIR).tmp $(VULNDB_DIR)

vulncheck: $(VULNDB_DIR)/index/db.json
	mkdir -p $(BIN)
	$(GO) run golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION) -db file://$(VULNDB_DIR) -format json ./... > $(BIN)/govulncheck.json
	$(GO) run ./scripts/vulncheck -allow scripts/vulncheck/allow.txt < $(BIN)/govulncheck.json

# Tests run against the real Postgres and NATS of this machine (started when
# missing) and build the real plugin binary. govulncheck's analysis of the
# whole module peaked at 14.4 GB resident here: `make test VULNCHECK=` leaves
# it out on a smaller machine.
VULNCHECK ?= vulncheck
test: services vet workflowcheck $(VULNCHECK) plugins test-libtorch test-ggml
	GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -p 2 -timeout 30m ./...

# Runs every fuzz target in the tree (func FuzzX in a *_test.go, found
# afresh each time so that a new target is picked up) for FUZZTIME each, one
# `go test -fuzz` per target since go test fuzzes one target per run.
# FUZZ narrows the targets by an extended regexp on their names:
# `make fuzz FUZZTIME=30s FUZZ='Box|HTTP'`. Minimizing a new input may take
# 60 s by default, during which nothing else is fuzzed: FuzzChoice ran
# 24,000 inputs in a minute that way, and 104,000 in 30 s with a 2 s limit.
FUZZTIME ?= 5m
FUZZMINIMIZETIME ?= 10s
FUZZ ?= .
# FUZZFLAGS go to each `go test -fuzz` (`FUZZFLAGS=-parallel=1`: one worker).
FUZZFLAGS ?=
fuzz:
	@targets=$$(find . -path './.*' -prune -o -path ./bin -prune -o -name '*_test.go' -print | sort | \
		xargs grep -H '^func Fuzz[A-Za-z0-9_]*(' | sed -E 's|^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*|\1 \2|' | \
		awk -v re='$(FUZZ)' '$$2 ~ re'); \
	test -n "$$targets" || { echo "no fuzz target matches FUZZ=$(FUZZ)"; exit 1; }; \
	echo "$$targets" | while read -r pkg name; do \
		echo "== $$name in $$pkg for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) $(FUZZFLAGS) "$$pkg" || exit 1; \
	done

# A bounded soak (bench/soak): pipelines every few minutes and a trickle of
# grounding requests for SOAK (default 30m) while the worker and its plugins
# are SIGKILLed at random; it prints what was lost, retried and the p99.
SOAK ?= 30m
soak: build
	$(GO) run ./bench/soak -bin $(BIN)/groundmesh -duration $(SOAK)

bench:
	$(GO) run ./bench/ingest
	$(GO) run ./bench/synth
	$(GO) test -run '^$$' -bench . -benchtime 3x ./plugins/gomlx/

clean:
	rm -rf $(BIN) $(DATA_DIR)
