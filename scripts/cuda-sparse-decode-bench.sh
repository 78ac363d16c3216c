#!/usr/bin/env bash
# On a GPU machine, one command: build the sparse decode test and bench (unless SKIP_BUILD=1 and the binaries
# exist), run the test (tests/cuda/test-cuda-sparse-decode.cpp), time dense / Loki / Quest / exact top-k decode
# steps at Llama-3-8B shapes (bench/cuda/cuda-sparse-decode-bench.cu) and write the markdown results.
# Each (depth, batch) runs in its own process: in one process, a 128k batch-1 Loki step measured after the 32k
# batch-16 one ran 2.4x slower (same data; see the results file), so no shape inherits another's allocations.
# Usage: scripts/cuda-sparse-decode-bench.sh [RESULT_MD]   (default bench/results/cuda-sparse-decode-h100.md; logs
#        in $OUT or $BUILD/results). BUILD (build-cuda), DEPTHS ("32768 131072"), BATCHES ("1 16"), REPS (30),
#        STEP_TIMEOUT (600 s per process); NCU=1: afterwards, Nsight Compute times of the first 7 kernels of the
#        Loki step at NCU_DEPTH (131072) x NCU_BATCH (16), caches flushed before each kernel -> $logs/ncu-loki.csv.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
result=${1:-bench/results/cuda-sparse-decode-h100.md}
logs=${OUT:-$build/results}
mkdir -p "$logs" "$(dirname "$result")"
test_bin=$build/tests/test-cuda-sparse-decode
bench_bin=$build/bench/cuda/longctx-cuda-sparse-decode-bench
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$test_bin" ] || [ ! -x "$bench_bin" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=ON -DLONGCTX_SERVER=OFF > "$logs/cmake.log" || exit 1
    cmake --build "$build" -j"$(nproc)" --target test-cuda-sparse-decode longctx-cuda-sparse-decode-bench \
        > "$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
t=${STEP_TIMEOUT:-600}
timeout "$t" "$test_bin" 2>&1 | tee "$logs/test.log"
test_rc=${PIPESTATUS[0]}
bench_rc=0
: > "$logs/bench.log"
for d in ${DEPTHS:-32768 131072}; do
    for b in ${BATCHES:-1 16}; do
        timeout "$t" "$bench_bin" --depth "$d" --batch "$b" --reps "${REPS:-30}" 2>&1 | tee -a "$logs/bench.log"
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || bench_rc=$rc
    done
done
{
    echo "# Sparse decode on the GPU: $gpu"
    echo
    echo "- commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)} (the sources the binaries were built from), run $(date -u "+%H:%M UTC %Y-%m-%d")"
    echo "- command: \`${CMD:-scripts/cuda-sparse-decode-bench.sh}\`; test-cuda-sparse-decode exit code $test_rc, bench exit code $bench_rc"
    echo "- Llama-3-8B attention shapes: 32 query heads, 8 KV heads, head_dim 128, bf16 paged KV (64-token pages, shuffled"
    echo "  page table); one selection per KV head for its 4 query heads; sinks 4 + local window 64 always attended;"
    echo "  key budget 25% (Loki d = 32 of 128 rotated dims; Quest 16-token pages, ceil(k / 16) pages)."
    echo "- us: median over the runs of one whole step captured in one CUDA graph (selection: scores, top-k, plan;"
    echo "  then the gather kernel and the merge), L2 evicted by a 256 MiB memset before each run. GB/s: the bytes the"
    echo "  step must move at least (K and V of the attended rows, plus the low-rank keys / page bounds / all of K that the"
    echo "  selection reads) over the time. Byte-count limit: dense bytes / the step's bytes."
    echo
    grep -m1 '^device:' "$logs/bench.log"
    echo
    grep -m2 -E '^\|( depth|--)' "$logs/bench.log"
    grep -E '^\| [0-9]' "$logs/bench.log"
    echo
    echo "Test summary:"
    echo
    echo '```'
    grep -E '^(gather|topk stage|loki|quest|topk|full budget|\[  (PASSED|FAILED) )' "$logs/test.log"
    echo '```'
} > "$result"
cat "$result"
if [ "${NCU:-0}" = 1 ]; then
    ncu_bin=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
    timeout "$t" "$ncu_bin" --clock-control none --cache-control all \
        -k "regex:loki_query|loki_score_keys|loki_fused|fine_kernel|cand_select|cand_kernel|select_kernel|write_kernel|sparse_decode_split|sparse_decode_merge" \
        -c 7 --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed --csv \
        "$bench_bin" --depth "${NCU_DEPTH:-131072}" --batch "${NCU_BATCH:-16}" --reps 1 > "$logs/ncu-loki.csv" 2> "$logs/ncu-loki.err"
    echo "ncu exit code $?"
    python3 - "$logs/ncu-loki.csv" << 'PY'
import csv, sys
rows, hdr = list(csv.reader(open(sys.argv[1]))), None
for r in rows:
    if 'Kernel Name' in r:
        hdr = r
    elif hdr and len(r) == len(hdr):
        d = dict(zip(hdr, r))
        print(d['ID'], d['Kernel Name'].split('(')[0][-40:], d['Metric Name'], d['Metric Value'])
PY
fi
[ "$test_rc" = 0 ] && [ "$bench_rc" = 0 ]
