#!/usr/bin/env bash
# Run benchmarks/cuda_check.py's bundle on a GPU machine that has python3, numpy and torch but no TVM.
# Prepared here (see cuda_check.py's docstring):
#   build/cuda-check     the bundle (prepare)
#   build/tvm-runtime    the runtime-only TVM package (runtime-pkg)
#   .whl/                apache-tvm-ffi for that machine's Python (pip download --no-deps ...)
# Usage: bash benchmarks/cuda_check_remote.sh OUT_DIR
# Writes OUT_DIR/cuda_check.json (all kernels, networks), OUT_DIR/cuda_b1.json (the b1 tensor-core convs vs the
# popcount kernels, cuDNN fp16/fp32 and an int8 GEMM at batch 1/16/64; commit as benchmarks/results/cuda_b1.json)
# and OUT_DIR/cuda_check.log. One GPU call, prepared here:
#   .venv/bin/python benchmarks/cuda_check.py prepare build/cuda-check --target cuda-sm90   (~12 min on 2 busy
#     cores, 38 MB; build/tvm-runtime 17 MB: carry both and .whl to the GPU machine)
#   .venv/bin/python benchmarks/cuda_check.py runtime-pkg build/tvm-runtime
#   .venv/bin/pip download --no-deps -d .whl apache-tvm-ffi==0.1.14.post1   (for the GPU machine's Python)
set -euo pipefail
out=${1:?usage: cuda_check_remote.sh OUT_DIR}
mkdir -p "$out"
nvidia-smi -L || true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/build/tvm-runtime${PYTHONPATH:+:$PYTHONPATH}"
# libtvm_runtime_cuda.so needs libcudart.so.13: the system's or the CUDA toolkit's (under /usr/local/cuda* or /opt)
cudart=$( (ldconfig -p | grep -o '/.*libcudart.so.13$'; find /usr/local/cuda*/ /opt -name 'libcudart.so.13' 2>/dev/null) | head -1 || true)
[ -n "$cudart" ] && export LD_LIBRARY_PATH="$(dirname "$cudart")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "libcudart: ${cudart:-not found}"
PYTHONUNBUFFERED=1 python3 benchmarks/cuda_check.py run build/cuda-check -o "$out" 2>&1 | tee "$out/cuda_check.log"
