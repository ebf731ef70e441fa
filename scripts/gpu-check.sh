#!/usr/bin/env bash
# The libtorch backend's GPU check, in one run of a few minutes on a GPU
# machine that has PyTorch 2.x (and so libtorch with CUDA) but no Go
# toolchain. Prepare the bundle here with `make gpu-bundle`, copy
# bin/gpu-check/ to the GPU machine, and run this script from it:
#
#   bin/gpu-check/gpu-check.sh
#
# It builds the gmtorch shim against that PyTorch's libtorch, then runs the
# Go test binary built here (the shim's C ABI is all it links against)
# with GROUNDMESH_TORCH_DEVICE=cuda: the conformance matrix on cuda, the
# checkpoints across engines, and BenchmarkEngines (the demo model's
# stage-1 and stage-2 training steps on GoMLX and on libtorch/cuda).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python3}"
prefix="$($py -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
abi="$($py -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')"
echo "== torch $($py -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda, "devices", torch.cuda.device_count())') at $prefix"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
start=$(date +%s)
make -s -C "$here/shim" TORCH_PREFIX="$prefix" OUT="$here/shim/build-cuda" CXX11_ABI="$abi"
export LD_LIBRARY_PATH="$here/shim/build-cuda:$prefix/lib:${LD_LIBRARY_PATH:-}"
export GROUNDMESH_TORCH_DEVICE=cuda
echo "== shim built in $(( $(date +%s) - start )) s"
echo "== conformance matrix and cross-engine checkpoints on cuda"
"$here/gomlx-torch.test" -test.run 'TestTorchMatrix|TestTorchCheckpointsAcrossEngines' -test.v -test.count=1 2>&1 | grep -E '^(---|    ---|ok|FAIL|PASS)|torch_test' || true
echo "== training steps/s, demo model (stage 1: grounder objective, batch 64; stage 2: every loss, batch 16)"
"$here/gomlx-torch.test" -test.run '^$' -test.bench 'Engines' -test.benchtime 40x 2>&1 | grep -E 'Benchmark|peak|ok|FAIL'
echo "== done in $(( $(date +%s) - start )) s"
