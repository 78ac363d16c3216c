#!/usr/bin/env bash
# CI check that the CUDA backend compiles (nvcc 13, sm_90a); needs no GPU. Configures with -DLONGCTX_CUDA=ON and
# builds the CUDA library, its tests and its bench tool (ALL=1: everything), then runs the tests labelled cuda
# (RUN_TESTS=0: not).
# Usage: scripts/build-cuda.sh [BUILD_DIR]   (default build-cuda; JOBS=N for parallel jobs, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-cuda}
jobs=${JOBS:-2}
if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
fi
# A GPU machine without cpp-httplib (libcpp-httplib-dev) builds everything but `longctx serve`.
server=ON
if ! pkg-config --exists cpp-httplib 2> /dev/null; then
    echo "build-cuda: cpp-httplib not found; building without longctx serve" >&2
    server=OFF
fi
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=ON -DLONGCTX_SERVER=$server
if [ "${ALL:-0}" = 1 ]; then
    cmake --build "$build" -j"$jobs"
else
    # Every test under tests/cuda/ (ctest runs them all below) and the CUDA bench tools.
    tests=$(for f in tests/cuda/test-*.cpp; do basename "$f" .cpp; done)
    # shellcheck disable=SC2086
    cmake --build "$build" -j"$jobs" --target longctx_cuda $tests longctx-cuda-attn-bench longctx-cuda-run \
        longctx-cuda-sparse-bench longctx-cuda-sparse-decode-bench longctx-cuda-magicpig-bench \
        longctx-cuda-kv-evict-bench longctx
fi
# The CUDA tests skip themselves without a GPU; CI runs them to check they link and start.
if [ "${RUN_TESTS:-1}" = 1 ]; then
    ctest --test-dir "$build" -L cuda --output-on-failure
fi
