// MInference index building on the GPU (METHODS.md sec. 2.2; the CPU reference is attn/minference/index.h).
// Vertical-slash: scores of the last 64 queries against all keys (mma.sync, two passes: softmax statistics, then
// the column and diagonal sums), top-v columns and top-s diagonals by a radix select, and the device prefill plan
// (attn-sparse-prefill.cuh) with the diagonals merged into key ranges as the CPU builder does. Block-sparse
// (mean-pooled Q and K blocks, top k_b key blocks) and A-shape for per-head mixed plans: minference_index_gpu.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "backend/cuda/attn-sparse-prefill.cuh"
#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

// One query head's pattern in a mixed plan (the values of head_pattern, attn/minference/head-config.h), budgets
// effective for the call's keys (head_spec_effective): A_SHAPE a = n_init, b = n_local; VSLASH a = v, b = s;
// BLOCK a = k_b (64-key blocks per query block); DENSE none.
struct head_spec_dev {
    enum : int32_t { DENSE = 0, A_SHAPE = 1, VSLASH = 2, BLOCK = 3 };
    int32_t pattern = VSLASH;
    int32_t a = 0, b = 0;
};

// Scratch of the builders, grown on demand (device allocations; synchronous when they grow).
struct vslash_workspace {
    float *   part = nullptr; // estimate: per (head, key tile, row) max and sum, then per (head, row) m and 1/l
    float *   vertical = nullptr, *slash = nullptr; // [n_head][N]
    int32_t * cols = nullptr, *offsets = nullptr;   // [n_head][v], [n_head][s]
    int32_t * groups = nullptr;                     // [2][n_head][s][2] merged diagonal groups {lo, hi}
    int32_t * n_groups = nullptr;                   // [2][n_head]
    uint32_t *bitmap = nullptr;                     // [n_head][N / 32 + 1] selected offsets
    int64_t * counts = nullptr;                     // [2][n_items + 1]
    void *    scan_tmp = nullptr;
    size_t    scan_tmp_bytes = 0;
    head_spec_dev * spec     = nullptr; // [n_head] of a mixed plan
    float *         pooled   = nullptr; // block-sparse: pooled K [n_head_kv][n_kb][D], then pooled Q [n_head][n_qb][D]
    int32_t *       blocks   = nullptr; // [n_head * n_qb][k_b max] selected key blocks, ascending
    int32_t *       n_blocks  = nullptr; // [n_head * n_qb]
    head_spec_dev * spec_host = nullptr; // pinned staging of spec
    float *         scores    = nullptr; // block-sparse scores [n_head * n_qb][n_kb] beyond shared memory
    size_t          cap[15]   = {};
    // A query block's block-sparse scores stay in shared memory up to this many bytes (and what a launch may use
    // without opting in: about 43 KiB, 700k keys), else they go through global scratch (the kernel is the same
    // otherwise; tests set 0 to run that path).
    size_t block_smem_max = 48 * 1024;
    vslash_workspace()       = default;
    vslash_workspace(const vslash_workspace &) = delete;
    vslash_workspace & operator=(const vslash_workspace &) = delete;
    ~vslash_workspace();
};

// Budgets as the CPU applies them (vslash_select): v in [30, N], s in [50, N], at most N.
int64_t vslash_v_eff(int64_t v, int64_t n_keys);
int64_t vslash_s_eff(int64_t s, int64_t n_keys);

// Vertical and slash scores of every query head (the CPU vslash_estimate's definition): the last
// nl = min(64, n_q) queries, A = softmax(scale q k^T) per row (causal), vertical[h][j] = sum_r A[r, j],
// slash[h][o] = sum_r A[r, pos_r - o], for N = pos0 + n_q keys.
// q: [n_q][n_head][head_dim] bf16 (device); vertical, slash: [n_head][N] f32 (device). head_dim 64 or 128.
status vslash_estimate_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                           float scale, float * vertical, float * slash, vslash_workspace & ws, cudaStream_t stream);

// Top v_eff columns (ascending) and top s_eff offsets (ascending) per head, the first 30 columns and offsets
// 0..99 forced in, ties to the lower index: cols [n_head][v_eff], offsets [n_head][s_eff] (device).
void vslash_select_gpu(const float * vertical, const float * slash, int64_t n_keys, int n_head, int64_t v_eff,
                       int64_t s_eff, int32_t * cols, int32_t * offsets, cudaStream_t stream);

// The plan of n_q queries at pos0 from those lists (the CPU vslash_plan_head for every head). Synchronizes the
// stream once to size the plan's arrays.
void vslash_plan_gpu(const int32_t * cols, int64_t v_eff, const int32_t * offsets, int64_t s_eff, int64_t n_q,
                     int64_t pos0, int n_head, vslash_workspace & ws, prefill_plan_buf & plan, cudaStream_t stream);

// All three in turn, into ws.vertical/slash/cols/offsets and plan: minference_index_gpu with every head VS(v, s).
status vslash_index_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                        float scale, int64_t v, int64_t s, vslash_workspace & ws, prefill_plan_buf & plan,
                        cudaStream_t stream);

// Vertical-slash attention of one layer end to end: vslash_index_gpu, then the sparse kernel over its plan, or
// the dense kernel (attn_prefill, AUTO: wgmma on sm_90 with head_dim 128) for the whole layer when the plan's
// 64-key steps exceed dense_ratio times the dense kernel's tiles (prefill_plan_steps_gpu; on the H100 a step of the
// paired wgmma sparse kernel costs about 1.9 tiles of the dense wgmma kernel, so 0.5 switches near where dense
// becomes the faster of the two: bench/results/cuda-sparse-prefill-h100.md puts the break-even at about 0.52).
// dense_ratio <= 0: always dense; >= 1: never. The dense path computes every causal pair (a superset of the plan).
// o, o_f32, lse as attn_sparse_prefill_args. Synchronizes the stream twice (plan size, step count).
struct vslash_attention_args {
    const bf16_t * q      = nullptr;
    int64_t        n_q    = 0;
    int64_t        pos0   = 0;
    int            n_head = 0;
    attn_kv_paged  kv;
    float          scale       = 0;
    int64_t        v           = 1000;
    int64_t        s           = 6096;
    float          dense_ratio = 0.5f;
    void *         o           = nullptr;
    bool           o_f32       = true;
    float *        lse         = nullptr;
};
struct vslash_attention_info {
    bool               dense = false; // the dense kernel ran
    prefill_plan_steps steps;
};
status vslash_attention_gpu(const vslash_attention_args & a, vslash_workspace & ws, prefill_plan_buf & plan,
                            cudaStream_t stream, vslash_attention_info * info = nullptr);

// A head's budgets as the CPU applies them for n_keys keys (vertical-slash: vslash_v_eff / vslash_s_eff; the
// others unchanged; block-sparse's k_b is clipped to the causal blocks per query block on the device).
head_spec_dev head_spec_effective(int32_t pattern, int64_t a, int64_t b, int64_t n_keys);

// The plan of every query head by its own pattern (heads: host array [n_head], effective budgets): the
// vertical-slash estimate when some head is VSLASH (computed for all heads), the block-sparse pooling and
// selection when some head is BLOCK, and one plan, as the CPU's prefill_plan_build (attn/attention.h) builds it
// from the same inputs (block scores are summed in another order, so near-tied blocks may differ).
// Errors: UNSUPPORTED (head_dim, head ratio), INVALID_ARGUMENT (shape, a pattern out of range, vertical-slash
// budgets not effective). Synchronizes the stream once (plan size).
status minference_index_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                            float scale, const head_spec_dev * heads, vslash_workspace & ws, prefill_plan_buf & plan,
                            cudaStream_t stream);

// vslash_attention_gpu with minference_index_gpu's mixed plan (a.v and a.s unused); vslash_attention_gpu is this with
// every head VS(a.v, a.s).
status minference_attention_gpu(const vslash_attention_args & a, const head_spec_dev * heads, vslash_workspace & ws,
                                prefill_plan_buf & plan, cudaStream_t stream, vslash_attention_info * info = nullptr);

} // namespace lc::cuda
