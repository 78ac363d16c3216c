#!/usr/bin/env bash
# On a GPU machine, one command: build the MagicPIG hybrid test and bench (unless TEST_BIN / BENCH_BIN name built
# binaries), run the test (tests/cuda/test-cuda-magicpig.cpp), then time 32 layers of decode attention at Llama-3-8B
# shapes (bench/cuda/cuda-magicpig-bench.cu): dense on the GPU at the largest batch that fits beside a 16 GB weight
# stand-in, and the hybrid (GPU hashing + dense part, CPU threads sampling the middle of the cache in host memory),
# each in its own process. Logs in $OUT (or $BUILD/results); the tables are copied into RESULT_MD.
# Usage: scripts/cuda-magicpig-bench.sh [RESULT_MD]   (default bench/results/cuda-magicpig-h100.md)
#        CTX (131072), BATCH (hybrid batch, 4), BATCHES (hybrid batches timed, "4,2,1"), STEPS (8), THREADS (16),
#        SMALL=1 first runs a 32k batch-2 hybrid as a smoke check.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
result=${1:-bench/results/cuda-magicpig-h100.md}
logs=${OUT:-$build/results}
mkdir -p "$logs" "$(dirname "$result")"
test_bin=${TEST_BIN:-$build/tests/test-cuda-magicpig}
bench_bin=${BENCH_BIN:-$build/bench/cuda/longctx-cuda-magicpig-bench}
if [ ! -x "$test_bin" ] || [ ! -x "$bench_bin" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=ON -DLONGCTX_SERVER=OFF > "$logs/cmake.log" || exit 1
    cmake --build "$build" -j"$(nproc)" --target test-cuda-magicpig longctx-cuda-magicpig-bench \
        > "$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
    test_bin=$build/tests/test-cuda-magicpig
    bench_bin=$build/bench/cuda/longctx-cuda-magicpig-bench
fi
ctx=${CTX:-131072}
batch=${BATCH:-4}
steps=${STEPS:-8}
threads=${THREADS:-16}
t=${STEP_TIMEOUT:-300}
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
cpu=$(lscpu 2>/dev/null | grep -m1 'Model name' | sed 's/.*: *//')
mem=$(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available"}')

timeout "$t" "$test_bin" 2>&1 | tee "$logs/test.log"
test_rc=${PIPESTATUS[0]}
: > "$logs/bench.log"
if [ "${SMALL:-0}" = 1 ]; then
    timeout "$t" "$bench_bin" --ctx 32768 --batch 2 --batches 2,1 --steps 3 --threads "$threads" --skip-dense 2>&1 |
        tee -a "$logs/bench-small.log"
fi
timeout "$t" "$bench_bin" --ctx "$ctx" --batch "$batch" --steps "$steps" --skip-hybrid 2>&1 | tee -a "$logs/bench.log"
dense_rc=${PIPESTATUS[0]}
timeout "$t" "$bench_bin" --ctx "$ctx" --batch "$batch" --batches "${BATCHES:-4,2,1}" --steps "$steps" \
    --threads "$threads" --skip-dense 2>&1 | tee -a "$logs/bench.log"
hybrid_rc=${PIPESTATUS[0]}
{
    echo "# MagicPIG hybrid decode (GPU + CPU threads) vs dense GPU decode: $gpu"
    echo
    echo "- commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}, run $(date -u "+%H:%M UTC %Y-%m-%d")"
    echo "- host: $cpu; $mem; $threads sampling threads"
    echo "- command: \`${CMD:-scripts/cuda-magicpig-bench.sh}\`; test exit code $test_rc, dense bench $dense_rc, hybrid bench $hybrid_rc"
    echo
    grep -E '^(device|dense|hybrid):' "$logs/bench.log"
    echo
    grep -m1 -E '^\| path' "$logs/bench.log"
    echo '|---|---|---|---|---|---|'
    grep -E '^\| (dense|hybrid) ' "$logs/bench.log"
    echo
    echo '```'
    grep -E '^(hybrid vs|sample every|\[  (PASSED|FAILED) )' "$logs/test.log"
    echo '```'
} > "$logs/result.md"
cp "$logs/result.md" "$result" 2>/dev/null || true
cat "$logs/result.md"
[ "$test_rc" = 0 ] && [ "$dense_rc" = 0 ] && [ "$hybrid_rc" = 0 ]
