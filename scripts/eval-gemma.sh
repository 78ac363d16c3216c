#!/usr/bin/env bash
# Gemma 3 270M against dense for every attention method (docs/RESULTS.md): RULER-style task scores at 8k and
# perplexity (one prefill pass at 32k for the prefill methods; teacher-forced decode after a 16k prefix for the
# decode methods and KV policies). Sizes are cut to about 80 minutes on a shared 2-core CPU.
# Then the same perplexities for SmolLM2 at 8k (eval/results/smollm2/), Gemma 3's block-sparse fidelity at 32k and
# a small 8k needle check of MagicPIG beside top-k on Gemma 3.
# Usage: scripts/eval-gemma.sh [BUILD_DIR] [OUT_DIR] [GROUP...]; groups: ruler-probe ppl-prefill ppl-decode ruler
# fidelity-block smollm2-ppl niah-decode smollm2-ruler niah-32k smollm2-niah ppl-decode-30k (default: all, in that
# order). Result files resume: a rerun
# skips the records already there.
set -euo pipefail
B=${1:-build}
OUT=${2:-eval/results/gemma3}
shift $(($# < 2 ? $# : 2))
GROUPS_RUN=${*:-ruler-probe ppl-prefill ppl-decode ruler fidelity-block smollm2-ppl niah-decode smollm2-ruler niah-32k smollm2-niah ppl-decode-30k}
mkdir -p "$OUT"
L="$B/longctx"
G=gemma3-270m-q4_k_m
S=smollm2-135m-instruct-q4_1
OUT_S=${OUT_S:-eval/results/smollm2}
T=${THREADS:-2}

run() { echo "+ $*" >&2; nice -n 10 "$@"; }
tag() { echo "$1" | tr -d '%-' | tr ' ' '_'; }
want() { [[ " $GROUPS_RUN " == *" $1 "* ]]; }

PREFILL=("--prefill minference" "--prefill a-shape" "--prefill vslash" "--prefill block")
DECODE=("--decode topk" "--decode quest" "--decode loki" "--decode magicpig")
KV=("--kv streaming" "--kv h2o" "--kv d2o")

# RULER at 8192 tokens, one sample per task (seeded: every file holds the same prompts). Dense Gemma 3 270M
# scores 0 at 16k even on niah_single_1 (noise haystack), so 8k. MInference runs all 11 tasks (with dense beside
# it: the dense baseline on every task); the other methods run the 6 tasks dense scores on there, in two rounds
# (every method gets the first three before any gets the rest; a file resumes and adds tasks).
RULER_ROUNDS=${RULER_ROUNDS:-"niah_single_1,niah_single_2,cwe niah_multivalue,niah_multiquery,fwe"}
if want ruler-probe; then
    run "$L" eval ruler -m $G -t "$T" --lengths 8192 --samples 1 --prefill minference \
        -o "$OUT/ruler-gemma3-8k-prefill_minference.json"
fi

# Perplexity A: the first 32768 tokens of the KJV in one prefill pass (chunks of 512), every position scored.
if want ppl-prefill; then
    for m in "${PREFILL[@]}"; do
        run "$L" eval ppl -m $G -t "$T" --protocol prefill --lengths 32768 $m -o "$OUT/ppl-gemma3-32k-$(tag "${m#--}").json"
    done
fi

# Perplexity C: 16128 tokens of the KJV prefilled (a KV policy then compresses them to 20%), the next 256
# fed one decode step at a time, each scored.
if want ppl-decode; then
    for m in "${DECODE[@]}" "${KV[@]}"; do
        run "$L" eval ppl -m $G -t "$T" --protocol decode --prefix 16128 --n-tokens 16384 --bucket 256 $m \
            -o "$OUT/ppl-decode-gemma3-16k-$(tag "${m#--}").json"
    done
fi

if want ruler; then
    for tasks in $RULER_ROUNDS; do
        for m in "${PREFILL[@]:1}" "${DECODE[@]}" "${KV[@]}"; do
            run "$L" eval ruler -m $G -t "$T" --lengths 8192 --samples 1 --tasks "$tasks" $m \
                -o "$OUT/ruler-gemma3-8k-$(tag "${m#--}").json"
        done
    done
fi

# Block-sparse prefill is the one prefill method without a fidelity file on Gemma 3 (the others: eval/results/minference/).
if want fidelity-block; then
    run "$L" eval fidelity -m $G -t "$T" --prefill block --lengths 32000 --docs 1 --corpus kjv \
        -o "$OUT/fidelity-gemma3-32k-prefill_block.json"
fi

# SmolLM2 at its 8k context: perplexity A over 8192 tokens (prefill methods), C over 256 decode steps after 7936.
if want smollm2-ppl; then
    mkdir -p "$OUT_S"
    for m in "${PREFILL[@]}"; do
        run "$L" eval ppl -m $S -t "$T" --protocol prefill --lengths 8192 $m -o "$OUT_S/ppl-smollm2-8k-$(tag "${m#--}").json"
    done
    for m in "${DECODE[@]}" "${KV[@]}"; do
        run "$L" eval ppl -m $S -t "$T" --protocol decode --prefix 7936 --n-tokens 8192 --bucket 256 $m \
            -o "$OUT_S/ppl-decode-smollm2-8k-$(tag "${m#--}").json"
    done
fi

# MagicPIG scored 0 on every RULER task at 8k on Gemma 3: the numeric needle (pg_essays) at 8k, 3 depths, beside top-k.
if want niah-decode; then
    for m in "--decode magicpig" "--decode topk"; do
        run "$L" eval niah -m $G -t "$T" --needle numeric --lengths 8192 --depths 0:100:50 $m \
            -o "$OUT/niah-gemma3-8k-$(tag "${m#--}").json"
    done
fi

# SmolLM2: the 11 RULER tasks at 4096 tokens, one sample each, every method beside dense. The prefill methods run
# from 1024 tokens on (--sparse-min-len 1024): at the default 4096 only the prompt's last chunk would be sparse.
if want smollm2-ruler; then
    mkdir -p "$OUT_S"
    for m in "${PREFILL[@]/%/ --sparse-min-len 1024}" "${DECODE[@]}" "${KV[@]}"; do
        run "$L" eval ruler -m $S -t "$T" --lengths 4096 --samples 1 $m \
            -o "$OUT_S/ruler-smollm2-4k-$(tag "${m#--}").json"
    done
fi

# Gemma 3: the numeric needle at 32000 tokens (its trained context), depths 0, 50 and 100%, every method beside
# dense (the full grid of dense alone: eval/results/niah-gemma3-dense.json). Prefill methods first, then decode
# methods and KV policies.
if want niah-32k; then
    for m in "${PREFILL[@]}" "${DECODE[@]}" "${KV[@]}"; do
        run "$L" eval niah -m $G -t "$T" --needle numeric --lengths 32000 --depths 0:100:50 $m \
            -o "$OUT/niah-gemma3-32k-$(tag "${m#--}").json"
    done
fi

# SmolLM2: the numeric needle at 8000 tokens, 5 depths, for the prefill patterns the decode and KV groups of
# scripts/eval-decode.sh and scripts/eval-kv.sh do not cover.
if want smollm2-niah; then
    mkdir -p "$OUT_S"
    for m in "--prefill a-shape" "--prefill vslash" "--prefill block"; do
        run "$L" eval niah -m $S -t "$T" --needle numeric --lengths 8000 --depths 0:100:25 $m \
            -o "$OUT_S/niah-smollm2-8k-$(tag "${m#--}").json"
    done
fi

# Perplexity C at Gemma 3's full context: 30464 tokens of the KJV prefilled, the next 256 decoded one at a time.
if want ppl-decode-30k; then
    for m in "${DECODE[@]}" "${KV[@]}"; do
        run "$L" eval ppl -m $G -t "$T" --protocol decode --prefix 30464 --n-tokens 30720 --bucket 256 $m \
            -o "$OUT/ppl-decode-gemma3-30k-$(tag "${m#--}").json"
    done
fi
