#!/usr/bin/env bash
# On a GPU machine, one command: build the CUDA backend (unless SKIP_BUILD=1 and the binaries exist), run the CUDA
# attention tests, time our kernels (bench/cuda/cuda-attn-bench.cu), the peers (torch SDPA with its cuDNN and
# FlashAttention-2 back ends, bench/cuda/sdpa-baseline.py) and the copy bandwidth, and write a markdown table.
# Usage: scripts/cuda-attn-bench.sh [RESULT_MD]   (default bench/results/cuda-attn-h100.md; logs in $OUT or
#        build-cuda/results)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
result=${1:-bench/results/cuda-attn-h100.md}
logs=${OUT:-$build/results}
mkdir -p "$logs" "$(dirname "$result")"
test_bin=$build/tests/test-cuda-attn
bench_bin=$build/bench/cuda/longctx-cuda-attn-bench
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$test_bin" ] || [ ! -x "$bench_bin" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=ON
    cmake --build "$build" -j"$(nproc)" --target test-cuda-attn longctx-cuda-attn-bench
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$logs/gpu.txt"
set +e
timeout "${STEP_TIMEOUT:-900}" "$test_bin" 2>&1 | tee "$logs/test.log"
test_rc=${PIPESTATUS[0]}
set -e
timeout "${STEP_TIMEOUT:-900}" "$bench_bin" ${BENCH_ARGS:-} --json "$logs/bench.json" 2>&1 | tee "$logs/bench.log"
if [ "${SKIP_PEERS:-0}" != 1 ]; then
    OUT="$logs" PYTHONUNBUFFERED=1 timeout "${STEP_TIMEOUT:-900}" python3 bench/cuda/sdpa-baseline.py 2>&1 | tee "$logs/sdpa.log"
fi
python3 bench/cuda/attn-results.py --ours "$logs/bench.json" --peers "$logs/sdpa_baseline.json" \
    --gpu "$logs/gpu.txt" --bench-log "$logs/bench.log" --test-rc "$test_rc" > "$result"
cat "$result"
exit "$test_rc"
