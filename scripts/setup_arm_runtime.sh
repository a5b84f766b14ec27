#!/usr/bin/env bash
# Idempotent: fetch the aarch64 TVM runtime (PyPI wheels apache-tvm 0.27.0.post1 + apache-tvm-ffi
# 0.1.14.post1) and keep only libtvm_runtime.so, libtvm_ffi.so and the tvm_ffi headers. Needs unzip and pip.
# Result in ${DCPNAS_ARM_RT:-~/.cache/dcpnas/arm}/rt. dcpnas.compiler.kernels.arm_emu builds the aarch64
# programs (targets/arm/*.cc) against it on first use and runs them under qemu-aarch64-static.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${DCPNAS_ARM_RT:-$HOME/.cache/dcpnas/arm}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
for tool in unzip; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup_arm_runtime: $tool not found (scripts/install_system_deps.sh); arm tests will skip" >&2
    exit 0
  fi
done
mkdir -p "$DEST/wheels" "$DEST/rt"
if [ ! -f "$DEST/rt/tvm/lib/libtvm_runtime.so" ] || [ ! -f "$DEST/rt/tvm_ffi/lib/libtvm_ffi.so" ]; then
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 -d "$DEST/wheels"
  (cd "$DEST/rt" && unzip -q -o "$DEST"/wheels/apache_tvm-0.27.0.post1-*aarch64*.whl 'tvm/lib/libtvm_runtime.so' \
    && unzip -q -o "$DEST"/wheels/apache_tvm_ffi-0.1.14.post1-*aarch64*.whl 'tvm_ffi/include/*' 'tvm_ffi/lib/libtvm_ffi.so')
  rm -f "$DEST"/wheels/*.whl  # 100 MB of wheels; the two libraries are all that is needed
fi
echo "aarch64 TVM runtime ready in $DEST/rt"
