// MInference vertical-slash index building on the GPU (METHODS.md sec. 2.2; the CPU reference is
// attn/minference/index.h): scores of the last 64 queries against all keys (mma.sync, two passes: softmax
// statistics, then the column and diagonal sums), top-v columns and top-s diagonals by a radix select, and the
// device prefill plan (attn-sparse-prefill.cuh) with the diagonals merged into key ranges as the CPU builder does.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "backend/cuda/attn-sparse-prefill.cuh"
#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

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
    size_t    cap[10]        = {};
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

// All three in turn, into ws.vertical/slash/cols/offsets and plan.
status vslash_index_gpu(const bf16_t * q, int64_t n_q, int64_t pos0, int n_head, const attn_kv_paged & kv,
                        float scale, int64_t v, int64_t s, vslash_workspace & ws, prefill_plan_buf & plan,
                        cudaStream_t stream);

// Vertical-slash attention of one layer end to end: vslash_index_gpu, then the sparse kernel over its plan, or
// the dense kernel (attn_prefill, AUTO: wgmma on sm_90 with head_dim 128) for the whole layer when the plan's
// 64-key steps exceed dense_ratio times the dense kernel's tiles (prefill_plan_steps_gpu; on the H100 a step of the
// wgmma sparse kernel costs about 2.2 tiles of the dense wgmma kernel, so 0.45 switches near where dense becomes
// the faster of the two).
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
    float          dense_ratio = 0.45f;
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

} // namespace lc::cuda
