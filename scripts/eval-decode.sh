#!/usr/bin/env bash
# Accuracy of the sparse decode methods against dense on the real models (issue-level results in
# docs/decode.md): teacher-forced decode fidelity, needle retrieval and the aggregation tasks of RULER.
# Usage: scripts/eval-decode.sh [BUILD_DIR] [OUT_DIR]; needs the Loki sidecars (longctx calibrate loki -m MODEL).
# Result files resume: a rerun skips the cells already in OUT_DIR. Groups run most important first.
set -euo pipefail
B=${1:-build}
OUT=${2:-eval/results/decode}
mkdir -p "$OUT"
L="$B/longctx"
S=smollm2-135m-instruct-q4_1
G=gemma3-270m-q4_k_m

run() { echo "+ $*" >&2; "$@"; }
tag() { echo "$1" | tr -d '%-' | tr ' ' '_'; }

# Fidelity on long text: 8k-token documents of the essays (not the KJV the Loki bases were fitted on), the last
# 256 tokens decoded one at a time. Defaults keep 4 sinks + 64 local tokens; "--decode-keep 0,0" is selection
# alone (Loki and Quest as published). 13% is the share of keys MagicPIG attends on this model (12.7% of its
# sparse layers' keys), for top-k and Quest at equal keys; the 39% rows were set to the share an earlier MagicPIG
# measured while it attended most keys densely (a prompt fed in several calls kept its first call's tables).
fidelity() {
    for m in "$@"; do
        run "$L" eval fidelity -m $S --corpus essays --lengths 8192 --docs 2 --decode-tail 256 --decode $m -o "$OUT/fidelity-smollm2-8k-$(tag "$m").json"
    done
}
fidelity "topk --decode-budget 100%" "topk" "quest" "loki" "magicpig" "quest --decode-keep 0,0" "loki --decode-keep 0,0" \
         "topk --decode-budget 39%" "quest --decode-budget 39%"

# Needle (numeric) at 8k (8000 prompt tokens and the answer within the 8192-token context), 5 depths: the
# answer's later tokens are decoded with the method.
for m in topk quest loki magicpig "topk --decode-budget 39%" "quest --decode-budget 39%" "topk --decode-budget 13%" \
         "quest --decode-budget 13%"; do
    run "$L" eval niah -m $S --needle numeric --lengths 8000 --depths 0:100:25 --decode $m -o "$OUT/niah-smollm2-8k-$(tag "$m").json"
done

# Aggregation (common- and frequent-word extraction) at 4k: sampling against top-k at the same keys.
for m in "dense" "magicpig" "topk --decode-budget 39%" "quest --decode-budget 39%" "topk --decode-budget 13%" \
         "quest --decode-budget 13%"; do
    run "$L" eval ruler -m $S --tasks cwe,fwe --lengths 4096 --samples 5 --decode $m -o "$OUT/ruler-agg-smollm2-4k-$(tag "$m").json"
done

# Gemma 3 at 32k: fidelity of the last 128 tokens of one document.
for m in "loki --decode-select kv" "magicpig" "quest --decode-select kv" "topk --decode-budget 100%" "topk --decode-select kv"; do
    run "$L" eval fidelity -m $G --corpus essays --lengths 32768 --docs 1 --decode-tail 128 --decode $m -o "$OUT/fidelity-gemma3-32k-$(tag "$m").json"
done

# More SmolLM2 rows: KV-head-level selection, a smaller budget, Loki's rank.
fidelity "topk --decode-select kv" "quest --decode-select kv" "loki --decode-select kv" \
         "topk --decode-budget 12%" "quest --decode-budget 12%" "loki --decode-budget 12%" "loki --loki-d 32"
