#!/usr/bin/env bash
# Vertical-slash sparse prefill on the GPU machine, side by side in one run: the CUDA sparse-prefill tests, then
# longctx-cuda-sparse-bench (ours: index, sparse kernel, dense fallback, our dense kernel) dumping its column and
# offset lists, then bench/cuda/minference-vslash-bench.py (MInference's converter and Triton kernel on the same
# Q/K/V and lists, cuDNN dense through torch SDPA). Logs and tables go to $OUT (or ./sparse-prefill-out).
# Usage: scripts/cuda-sparse-prefill-bench.sh BIN_DIR MINFERENCE_SRC [N,N,...] [SCATTERED_MAX] [DENSE_MAX]
#   BIN_DIR holds test-cuda-sparse-prefill and longctx-cuda-sparse-bench; MINFERENCE_SRC a checkout of
#   github.com/microsoft/MInference. Environment: ITERS (default 3), SKIP_TESTS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1
minf=$2
ns=${3:-32768,131072,262144}
scattered_max=${4:-262144}
dense_max=${5:-262144}
iters=${ITERS:-3}
out=${OUT:-sparse-prefill-out}
mkdir -p "$out"
dump=$(mktemp -d /tmp/vslash-dump.XXXXXX)
head=$(git rev-parse --short HEAD 2> /dev/null || echo unknown)
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2> /dev/null || true)
echo "git HEAD here (may lag the working tree): $head; $gpu" | tee "$out/env.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
    "$bin/test-cuda-sparse-prefill" 2>&1 | tee "$out/test.log"
fi
"$bin/longctx-cuda-sparse-bench" --n "$ns" --iters "$iters" --scattered-max "$scattered_max" --dense-max "$dense_max" \
    --dump "$dump" 2>&1 | tee "$out/ours.md" || echo "longctx-cuda-sparse-bench failed (rows so far kept)"
PYTHONUNBUFFERED=1 python3 bench/cuda/minference-vslash-bench.py --dump "$dump" --minference "$minf" --n "$ns" \
    --iters "$iters" 2>&1 | tee "$out/minference.md"
cp "$dump"/*.jsonl "$out/"
rm -rf "$dump"
