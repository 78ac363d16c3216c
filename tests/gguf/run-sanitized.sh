#!/usr/bin/env bash
# Builds and runs the GGUF and dequantization tests under AddressSanitizer + UndefinedBehaviorSanitizer in their
# own build directory. Usage: tests/gguf/run-sanitized.sh [BUILD_DIR] (default: build-gguf-asan next to the source).
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:-$src/build-gguf-asan}"
jobs="${LONGCTX_JOBS:-2}"
targets=(test-gguf test-gguf-fuzz test-cmd-gguf test-dequant longctx)

cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DLONGCTX_SANITIZE_ADDRESS=ON -DLONGCTX_SANITIZE_UNDEFINED=ON >/dev/null
cmake --build "$build" -j"$jobs" --target "${targets[@]}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir "$build" --output-on-failure -R '^(test-gguf|test-gguf-fuzz|test-cmd-gguf|test-dequant)$'
