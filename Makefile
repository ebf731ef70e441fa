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

.PHONY: all build plugins libtorch libtorch-optional test-libtorch ggml ggml-optional test-ggml bench-engines gpu-bundle demo demo-long test vet workflowcheck services clean bench fuzz soak vulncheck

all: build

build: plugins libtorch-optional ggml-optional onnx-optional
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
# model (../shared/DEPENDENCIES.md); -w keeps the vendored sources' warnings quiet.
# GGML_CFLAGS="-O3 -w" builds a binary that runs on other x86-64 CPUs.
# -mno-amx-*: on a CPU with AMX, -march=native would make ggml-cpu.cpp
# call the AMX buffer type, whose source (ggml-cpu/amx) the Go module
# does not compile, and the link fails; the flags change nothing elsewhere.
# `go list -m` names no directory for a module not yet in the module
# cache (a fresh machine): download it first.
GGML_INCLUDE = $(shell $(GO) mod download github.com/ollama/ollama && $(GO) list -m -f '{{.Dir}}' github.com/ollama/ollama)/ml/backend/ggml/ggml/include
GGML_CFLAGS ?= -O3 -march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -w
GGML_ENV = CGO_ENABLED=1 CGO_CPPFLAGS="-I$(GGML_INCLUDE)" CGO_CFLAGS="$(GGML_CFLAGS)" CGO_CXXFLAGS="$(GGML_CFLAGS)"
ggml:
	$(GGML_ENV) $(GO) build -tags ggml -o $(BIN)/groundmesh-ggml ./plugins/ggml/cmd/groundmesh-ggml
	cd $(BIN) && sha256sum groundmesh-ggml > groundmesh-ggml.sha256

# make build and make demo build the ggml backend where a C and C++
# compiler are installed (the demo then scores a q8_0 GGUF export of its
# model on it), and go on without it where not.
ggml-optional:
	@if command -v $${CC:-cc} >/dev/null 2>&1 && command -v $${CXX:-c++} >/dev/null 2>&1; then $(MAKE) -s ggml; \
	else echo "ggml backend not built: no C/C++ compiler (install gcc and g++ for it)"; fi

# The ggml engine's tests: its operations against model/eager, the
# conformance matrix's inference cells in every dtype, GGUF files read by
# ggml's own reader, the plugin process.
test-ggml: ggml plugins
	$(GGML_ENV) GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -tags ggml -count=1 ./plugins/ggml/...
	$(GGML_ENV) GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -tags ggml -count=1 -run 'GGML' ./plugins/gomlx/ ./services/ground/

# The onnx backend's runtime (plugins/onnx/ort): ONNX Runtime's prebuilt
# shared library, taken from the npm tarball of onnxruntime-node (npm is the
# one registry this build reaches; the tarball has no headers, and
# github.com/yalue/onnxruntime_go carries its own). The tarball is cached
# under ONNXRUNTIME_CACHE and only libonnxruntime.so.1 is taken out of it:
# it needs nothing but libc and libstdc++ (ldd). The CUDA provider is not in
# the tarball (onnxruntime-node's install script downloads it), so this
# library runs on the CPU only. Each architecture's library sha256 is pinned.
.PHONY: onnxruntime onnx-tools onnx onnx-optional test-onnx
ONNXRUNTIME_VERSION := 1.30.0
ONNXRUNTIME_ARCH := $(if $(filter aarch64 arm64,$(shell uname -m)),arm64,x64)
ONNXRUNTIME_SHA256_x64 := ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
ONNXRUNTIME_SHA256_arm64 := 1f549d46250b005580b597f4164984aaf75b3bcb9f3aeb07c7f8a8fe60b23c76
ONNXRUNTIME_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/groundmesh/npm
ONNXRUNTIME_LIB := $(CURDIR)/build/onnxruntime/lib/libonnxruntime.so.1
onnxruntime:
	@set -eo pipefail; lib='$(ONNXRUNTIME_LIB)'; sum='$(ONNXRUNTIME_SHA256_$(ONNXRUNTIME_ARCH))'; \
	if [ -f "$$lib" ] && echo "$$sum  $$lib" | sha256sum --status -c -; then \
		echo "onnxruntime $(ONNXRUNTIME_VERSION) in place: $$lib ($$(stat -c %s "$$lib") bytes, sha256 $$sum)"; exit 0; fi; \
	tgz='$(ONNXRUNTIME_CACHE)/onnxruntime-node-$(ONNXRUNTIME_VERSION).tgz'; \
	if [ ! -f "$$tgz" ]; then \
		command -v npm >/dev/null || { echo "onnxruntime: npm fetches onnxruntime-node $(ONNXRUNTIME_VERSION): install it (apt-get install npm)"; exit 1; }; \
		mkdir -p '$(ONNXRUNTIME_CACHE)'; tmp=$$(mktemp -d '$(ONNXRUNTIME_CACHE)/pack.XXXXXX'); trap 'rm -rf "$$tmp"' EXIT; \
		echo "onnxruntime: npm pack onnxruntime-node@$(ONNXRUNTIME_VERSION) into $(ONNXRUNTIME_CACHE)"; \
		(cd "$$tmp" && npm pack --silent onnxruntime-node@$(ONNXRUNTIME_VERSION) >/dev/null); \
		mv "$$tmp/onnxruntime-node-$(ONNXRUNTIME_VERSION).tgz" "$$tgz"; fi; \
	mkdir -p "$$(dirname "$$lib")"; \
	tar -xzOf "$$tgz" package/bin/napi-v6/linux/$(ONNXRUNTIME_ARCH)/libonnxruntime.so.1 > "$$lib.tmp" || { rm -f "$$lib.tmp" "$$tgz"; \
		echo "onnxruntime: cannot read libonnxruntime.so.1 from $$tgz; removed the cached tarball, run make onnxruntime again"; exit 1; }; \
	got=$$(sha256sum < "$$lib.tmp" | cut -d' ' -f1); \
	if [ "$$got" != "$$sum" ]; then rm -f "$$lib.tmp" "$$tgz"; \
		echo "onnxruntime: libonnxruntime.so.1 in $$tgz has sha256 $$got, want $$sum; removed the cached tarball, run make onnxruntime again"; exit 1; fi; \
	mv "$$lib.tmp" "$$lib"; \
	echo "onnxruntime $(ONNXRUNTIME_VERSION) placed: $$lib ($$(stat -c %s "$$lib") bytes, sha256 $$sum)"

# Debian's python3-onnx (onnx 1.12, opset 17) for plugins/onnx/onnxcheck,
# which tests check exported models with (onnx.checker, full check).
# ONNX_PYTHON is the interpreter apt's python3-* packages are for: a
# python3 found first on PATH (pyenv, a venv) does not see them.
ONNX_PYTHON ?= /usr/bin/python3
onnx-tools:
	@if $(ONNX_PYTHON) -c 'import onnx' 2>/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "onnx-tools: apt-get install python3-onnx"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-onnx >/dev/null || \
		{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-onnx >/dev/null; }; \
	else echo "onnx-tools: $(ONNX_PYTHON) cannot import onnx: install python3-onnx (apt-get install python3-onnx, as root) or set ONNX_PYTHON"; exit 1; fi
	@$(ONNX_PYTHON) -c 'import onnx; print("onnx", onnx.__version__, "for $(ONNX_PYTHON)")'

# The onnx backend (plugins/onnx): the same runtime with the onnx engine,
# which runs the model's ONNX graphs (model/onnx) in ONNX Runtime, for
# inference in float32 or float16 (ONNX exports). The plugin loads the
# library when it starts; `make onnxruntime` places it where the plugin
# looks (ort.LibraryCandidates: ../build/onnxruntime/lib from bin/).
onnx:
	CGO_ENABLED=1 $(GO) build -tags onnx -o $(BIN)/groundmesh-onnx ./plugins/onnx/cmd/groundmesh-onnx
	cd $(BIN) && sha256sum groundmesh-onnx > groundmesh-onnx.sha256

# make build and make demo build the onnx backend where a C compiler is and
# ONNX Runtime's library is placed or npm can fetch it; the demo then scores
# the final checkpoint's ONNX export on it too. Without them the default
# stack runs as before.
onnx-optional:
	@if command -v $${CC:-cc} >/dev/null 2>&1 && { test -f $(ONNXRUNTIME_LIB) || command -v npm >/dev/null 2>&1; }; then \
		$(MAKE) -s onnxruntime onnx || echo "onnx backend not built (see above)"; \
	else echo "onnx backend not built: it needs a C compiler and ONNX Runtime's library (npm fetches it: apt-get install npm, then make onnxruntime)"; fi

# The onnx backend's tests: the ONNX Runtime layer (a torch-exported model
# at two shapes, bad models and inputs, the missing library's message),
# every matrix cell's graphs through onnx.checker, and the onnx engine on
# the conformance matrix (float32 and float16) and on ONNX exports.
test-onnx: onnxruntime onnx-tools onnx
	CGO_ENABLED=1 GROUNDMESH_ONNXRUNTIME_LIB=$(ONNXRUNTIME_LIB) GROUNDMESH_ONNX_PYTHON=$(ONNX_PYTHON) $(GO) test -tags onnx -count=1 ./plugins/onnx/... ./model/onnx/
	CGO_ENABLED=1 GROUNDMESH_ONNXRUNTIME_LIB=$(ONNXRUNTIME_LIB) $(GO) test -tags onnx -count=1 -run 'ONNX' ./plugins/gomlx/

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

# The higher-budget recipe: stage 1 of 12,000 steps on 18,000 scene images
# and 900,000 synthesized samples (recipe long; about 50 minutes on 2 cores
# with libtorch), in a data directory of its own.
demo-long: build
	$(BIN)/groundmesh demo --data-dir $(DATA_DIR)-long --recipe long

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
test: services vet workflowcheck $(VULNCHECK) plugins seaweedfs test-libtorch test-ggml test-onnx
	GROUNDMESH_PLUGIN_DIR=$(BIN) $(GO) test -p 2 -timeout 30m ./...

# SeaweedFS, an S3-compatible server (a Go module), for the S3 blob store's
# tests (internal/blob, internal/stack): its weed binary is built once into
# ~/.cache/groundmesh/bin (skipped when there); it is not a dependency of
# go.mod. `go install weed@version` refuses the module (its go.mod has a
# replace directive), so it is built inside its downloaded module directory.
SEAWEEDFS_VERSION := v0.0.0-20261109003541-7506e5f91cd6
WEED := $(HOME)/.cache/groundmesh/bin/weed
.PHONY: seaweedfs
seaweedfs:
	@test -x $(WEED) || { mkdir -p $(dir $(WEED)) && dir=$$(cd $$(mktemp -d) && $(GO) mod download -json github.com/seaweedfs/seaweedfs@$(SEAWEEDFS_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && \
	  test -n "$$dir" && echo "building SeaweedFS weed into $(WEED) (several minutes, once)" && \
	  cd "$$dir" && GOFLAGS=-mod=readonly $(GO) build -o $(WEED).tmp ./weed && mv $(WEED).tmp $(WEED); }

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
