#!/usr/bin/env bash
# Builds longctx and runs the test suite: the unit and model tests (the model tests use the default model,
# fetched into the cache on first use), then the GGUF reader, dequantizer and `longctx gguf`
# tests again under AddressSanitizer and UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"

# The default model for the model-labelled tests (a no-op when it is already in the cache).
build/longctx run -n 1 --temp 0 -p "Hello" > /dev/null

ctest --test-dir build --output-on-failure -L "unit|model" -j"$jobs"

bash tests/gguf/run-sanitized.sh build-asan
