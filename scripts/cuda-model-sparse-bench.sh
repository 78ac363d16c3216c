#!/usr/bin/env bash
# On a GPU machine: the whole synthetic model (random weights of a real shape, speed only) with the sparse methods on
# the GPU against dense, each configuration in its own process, written as a markdown table. Parts:
#   prefill: TTFT with dense, A-shape, vertical-slash and block-sparse prefill at METHODS.md's default budgets (the
#            indices built from random Q/K) at PP and PP_LONG, the usual chunk-major pass;
#   prefill-long: TTFT of the layer-major pass (--layer-major: one KV pool for all layers, no decode) at 512k
#            (dense, A-shape, block-sparse) and 1M (A-shape, block-sparse), where a bf16 cache of every layer no
#            longer fits the GPU;
#   decode: decode t/s with Loki, Quest and exact top-k (25% of the keys, one selection per KV head) against dense.
# Usage: scripts/cuda-model-sparse-bench.sh [RESULT_MD] [PART...]   (default bench/results/cuda-model-sparse-h100.md,
#        parts prefill decode). Environment: BUILD (build-cuda; SKIP_BUILD=1 uses the binaries there), SYNTH
#        (llama3-8b), PP (32768,131072), PP_LONG (262144; empty: none), TG (128), REPS (2), COMMIT (for the header).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
result=${1:-bench/results/cuda-model-sparse-h100.md}
shift $(($# > 0 ? 1 : 0))
parts=${*:-prefill decode}
logs=${OUT:-$build/results}
mkdir -p "$logs" "$(dirname "$result")"
run=$build/bench/cuda/longctx-cuda-run
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$run" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=ON -DLONGCTX_SERVER=OFF > "$logs/cmake.log" || exit 1
    cmake --build "$build" -j"$(nproc)" --target longctx-cuda-run > "$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
S=${SYNTH:-llama3-8b}
: > "$logs/sparse.log"; : > "$logs/cmds.log"
go() { echo "+ longctx-cuda-run $*" >> "$logs/cmds.log"; timeout 590 "$run" "$@" 2>&1 | tee -a "$logs/sparse.log"; }
want() { [[ " $parts " == *" $1 "* ]]; }
if want prefill; then
    for pf in dense a-shape vslash block; do
        go --synthetic "$S" --pp "${PP:-32768,131072}" --tg 0 -r "${REPS:-2}" --prefill $pf
    done
    if [ -n "${PP_LONG-262144}" ]; then
        for pf in dense a-shape vslash block; do go --synthetic "$S" --pp "${PP_LONG:-262144}" --tg 0 -r 1 --prefill $pf; done
    fi
fi
if want prefill-long; then
    for pf in dense a-shape block; do go --synthetic "$S" --pp 524288 --tg 0 -r 1 --prefill $pf --layer-major; done
    for pf in a-shape block; do go --synthetic "$S" --pp 1048576 --tg 0 -r 1 --prefill $pf --layer-major; done
fi
if want decode; then
    for d in dense loki quest topk; do
        go --synthetic "$S" --pp "${PP:-32768,131072}" --tg "${TG:-128}" -r "${REPS:-2}" --decode $d --decode-select kv
    done
fi
{
    echo "# Sparse attention in the whole model on the GPU: $gpu"
    echo
    echo "Made by \`scripts/cuda-model-sparse-bench.sh RESULT $parts\` at commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
    echo "(synthetic $S: random weights of the real shape; speed only, outputs meaningless). Commands, in order:"
    echo
    echo '```'
    cat "$logs/cmds.log"
    echo '```'
    echo
    echo "TTFT: wall clock of the prompt's forward pass (chunks of 4096 tokens), mean ± sd over the runs; decode: t/s over"
    echo "TG steps after the prompt, one graph per span. \"sparse layers run dense\": (chunk, layer) pairs whose plan was"
    echo "dense enough that the dense kernel ran instead (the 0.5 fallback of minference_attention_gpu)."
    echo
    grep -m1 -E "^\| model" "$logs/sparse.log"
    grep -m1 -E "^\|---" "$logs/sparse.log"
    grep -E "^\| .*synthetic" "$logs/sparse.log"
} > "$result"
cat "$result"
