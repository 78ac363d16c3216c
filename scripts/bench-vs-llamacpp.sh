#!/usr/bin/env bash
# Side-by-side CPU speed of longctx and llama.cpp's llama-bench on one machine, one model file, one thread
# count, in one run: pp512, pp4096, tg128 and tg128 @ dDEPTH, llama.cpp with flash attention off and on.
# Usage: scripts/bench-vs-llamacpp.sh LLAMA_BENCH MODEL [THREADS=2] [REPS=5] [DEPTH=4096] > table.md
# (llama-bench comes from a llama.cpp build of your own; nothing of llama.cpp is part of this repository.)
set -euo pipefail
cd "$(dirname "$0")/.."
lb=${1:?path to llama-bench}
model=${2:?model file}
t=${3:-2}
r=${4:-5}
depth=${5:-4096}

run() {
    echo '```'
    echo "\$ $*"
    "$@" 2>/dev/null
    echo '```'
    echo
}

echo "# longctx vs llama.cpp, CPU, $(date -u +%Y-%m-%d)"
echo
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
     "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx512_bf16)$' | tr '\n' ' ')"
echo "model: $model ($(sha256sum "$model" | cut -c1-16)...)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
for fa in 0 1; do
    run "$lb" -m "$model" -t "$t" -r "$r" -fa "$fa" -p 512,4096 -n 128
    run "$lb" -m "$model" -t "$t" -r "$r" -fa "$fa" -p 0 -n 128 -d "$depth"
done
run build/longctx bench -m "$model" -t "$t" -r "$r" -p 512,4096 -n 128
run build/longctx bench -m "$model" -t "$t" -r "$r" -p 0 -n 128 -d "$depth"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
