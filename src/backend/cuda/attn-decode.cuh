// Split-K paged decode attention on the GPU: one query token per sequence against its whole cached context.
// Each block reads a run of pages of one (sequence, KV head) for all query heads of its GQA group and writes a
// partial state (o, lse); a second kernel merges the partials by log-sum-exp (same math as attn/attn-state.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

// A batch of n_seq sequences, one query token each. All pointers are device pointers.
//   q:      [n_seq][n_head][head_dim] bf16
//   k_pool, v_pool: [n_pages_total][n_head_kv][64][head_dim] bf16 (layout of attn_kv_paged, attn-prefill.cuh)
//   pages:  [n_seq][pages_stride] int32; row s lists the physical pages of sequence s
//   n_kv:   [n_seq] int32; tokens of sequence s (0 allowed: o = 0, lse = -inf); every n_kv[s] <= n_kv_max
//   o:      [n_seq][n_head][head_dim], f32 when o_f32 else bf16;  lse: [n_seq][n_head] f32 (optional)
//   workspace: attn_decode_workspace_bytes() bytes of device memory for the partial states
// The query sees every cached key (the new token's K/V are written to the cache first).
// Supported: head_dim 64, 128, 256; n_head / n_head_kv in 1..8. Errors: UNSUPPORTED for other shapes,
// INVALID_ARGUMENT for a workspace that is too small. Asynchronous on `stream`.
struct attn_decode_args {
    const bf16_t *  q               = nullptr;
    int             n_seq           = 0;
    int             n_head          = 0;
    const bf16_t *  k_pool          = nullptr;
    const bf16_t *  v_pool          = nullptr;
    int             n_head_kv       = 0;
    int             head_dim        = 0;
    const int32_t * pages           = nullptr;
    int64_t         pages_stride    = 0;
    const int32_t * n_kv            = nullptr;
    int64_t         n_kv_max        = 0;
    float           scale           = 0;
    int64_t         window          = 0; // > 0: sliding window, the query sees only the last `window` keys
    void *          o               = nullptr;
    bool            o_f32           = true;
    float *         lse             = nullptr;
    void *          workspace       = nullptr;
    size_t          workspace_bytes = 0;
    int             n_split         = 0; // 0: chosen from the shape and the number of SMs
};

// Splits of the key range per (sequence, KV head) that attn_decode() uses for this shape (n_split = 0).
// n_kv_max: the longest key span (with a window w: min(n_kv_max, w + 63)).
int    attn_decode_n_split(int n_seq, int n_head, int n_head_kv, int head_dim, int64_t n_kv_max);
size_t attn_decode_workspace_bytes(int n_seq, int n_head, int head_dim, int n_split);

status attn_decode(const attn_decode_args & a, cudaStream_t stream);

} // namespace lc::cuda
