#!/usr/bin/env bash
# Builds longctx and runs the test suite: the unit and model tests (the model tests use the default model,
# fetched into the cache on first use), then the GGUF reader, dequantizer and `longctx gguf`
# tests again under AddressSanitizer and UndefinedBehaviorSanitizer, and the CUDA build when nvcc is present.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"

# The default model for the model-labelled tests (a no-op when it is already in the cache).
build/longctx run -n 1 --temp 0 -p "Hello" > /dev/null

ctest --test-dir build --output-on-failure -L "unit|model" -j"$jobs"

bash tests/gguf/run-sanitized.sh build-asan

# The CUDA backend must keep compiling (nvcc 13, sm_90a; no GPU needed, its tests skip without one).
if command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
    JOBS="$jobs" bash scripts/build-cuda.sh build-cuda
else
    echo "test: nvcc not found; CUDA build check skipped"
fi
