#!/usr/bin/env bash
# Sparse prefill speed on this machine, one run: `longctx bench` rows of dense and --prefill minference side by
# side (prefill tokens/s, attention time with index building, index time, density) for the default model at
# 2k-8k and Gemma 3 at 4k-32k (the crossover that sets --sparse-min-len), chunked (-ub 512), and Gemma 3 at 32k
# whole-prompt (-ub 32768), prompts cut from the essays. Prints markdown with the exact commands; run it on an
# idle machine.
# Usage: scripts/bench-minference.sh [THREADS] [REPS]   (needs calibrated sidecars for real per-head patterns)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
reps=${2:-2}
bin=build/longctx
essays=../shared/data/pg_essays
[ -x "$bin" ] || { echo "bench-minference: build first ($bin missing)" >&2; exit 1; }
[ -d "$essays" ] || { echo "bench-minference: $essays missing (the essays live in ../shared/data)" >&2; exit 1; }
# All essays in sorted order (about 120k tokens), so that a 32k prompt is not a short text repeated.
text=$(mktemp --suffix=.txt)
trap 'rm -f "$text"' EXIT
cat "$essays"/*.txt > "$text"

run() {
    echo
    echo '```'
    echo "$bin bench $*"
    echo '```'
    echo
    "$bin" bench "$@"
}

echo "# MInference sparse prefill on the CPU: dense and minference side by side"
echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load before start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "prompts: the essays of $essays concatenated in sorted order (TEXT below)"
common=(-t "$threads" -r "$reps" -n 0 -f "$text" --prefill minference --sparse-min-len 0)
run -m smollm2-135m-instruct-q4_1 -p 2048,4096,8000 "${common[@]}"
run -m gemma3-270m-q4_k_m -p 4096,8192,16384,32000 "${common[@]}"
run -m gemma3-270m-q4_k_m -p 32000 -ub 32768 "${common[@]}"
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
