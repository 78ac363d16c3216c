#!/usr/bin/env bash
# On a GPU machine, one command: build the CUDA targets (unless SKIP_BUILD=1 and the binaries exist), run the CUDA
# op tests and the SmolLM2 device-vs-CPU model test, run longctx-cuda-run --check on SmolLM2, time a synthetic
# model (random weights of a real shape: TTFT and decode t/s at depth), and write a markdown results table.
# Usage: scripts/cuda-model-bench.sh [RESULT_MD]   (default bench/results/cuda-model-h100.md; logs in $OUT or
#        build-cuda/results). MODEL: the SmolLM2 GGUF (default: the model cache); SYNTH (llama3-8b), PP
#        (8192,32768), TG (64), REPS (1); SKIP_MODEL=1 / SKIP_SYNTH=1 skip those parts.
set -uo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
result=${1:-bench/results/cuda-model-h100.md}
logs=${OUT:-$build/results}
mkdir -p "$logs" "$(dirname "$result")"
ops=$build/tests/test-cuda-ops
mtest=$build/tests/test-cuda-model
run=$build/bench/cuda/longctx-cuda-run
if [ "${SKIP_BUILD:-0}" != 1 ] || [ ! -x "$ops" ] || [ ! -x "$mtest" ] || [ ! -x "$run" ]; then
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DLONGCTX_CUDA=ON > "$logs/cmake.log" || exit 1
    cmake --build "$build" -j"$(nproc)" --target test-cuda-ops test-cuda-model longctx-cuda-run > "$logs/build.log" 2>&1 \
        || { tail -40 "$logs/build.log"; exit 1; }
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
t=${STEP_TIMEOUT:-600}
timeout "$t" "$ops" 2>&1 | tee "$logs/ops.log"
ops_rc=${PIPESTATUS[0]}
model_rc=skipped check_rc=skipped
if [ "${SKIP_MODEL:-0}" != 1 ]; then
    export LONGCTX_CUDA_TEST_MODEL=${MODEL:-$LONGCTX_CUDA_TEST_MODEL}
    timeout "$t" "$mtest" 2>&1 | tee "$logs/model.log"
    model_rc=${PIPESTATUS[0]}
    timeout "$t" "$run" -m "${MODEL:-smollm2-135m-instruct-q4_1}" -n 64 --check 2>&1 | tee "$logs/check.log"
    check_rc=${PIPESTATUS[0]}
fi
if [ "${SKIP_SYNTH:-0}" != 1 ]; then
    timeout "$t" "$run" --synthetic "${SYNTH:-llama3-8b}" --pp "${PP:-8192,32768}" --tg "${TG:-64}" -r "${REPS:-1}" \
        2>&1 | tee "$logs/synth.log"
fi
{
    echo "# Whole model on the GPU: $gpu"
    echo
    echo "Made by \`scripts/cuda-model-bench.sh\` at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
    echo
    echo "## Op tests (\`test-cuda-ops\`, exit $ops_rc)"
    echo
    echo '```'
    grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|qkv_finish" "$logs/ops.log"
    echo '```'
    echo
    echo "## SmolLM2-135M Q4_1: device vs CPU (\`test-cuda-model\` exit $model_rc, \`longctx-cuda-run --check\` exit $check_rc)"
    echo
    echo '```'
    [ -f "$logs/model.log" ] && grep -E "nmse|greedy|gpu |^\[ *(OK|FAILED|PASSED|SKIPPED) *\]" "$logs/model.log"
    [ -f "$logs/check.log" ] && grep -E "^check:|gpu:|uploaded" "$logs/check.log"
    echo '```'
    echo
    echo "## Synthetic model (random weights of the real shape: speed only, outputs meaningless)"
    echo
    [ -f "$logs/synth.log" ] && grep -E "^\||synthetic" "$logs/synth.log"
} > "$result"
cat "$result"
[ "$ops_rc" = 0 ] && { [ "$model_rc" = skipped ] || [ "$model_rc" = 0 ]; }
