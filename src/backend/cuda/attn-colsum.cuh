// Attention statistics for KV eviction on the GPU (H2O, D2O; METHODS.md sec. 1.3, 5): column sums of the causal
// softmax probabilities over the paged bf16 cache, recomputed in a second pass from q . k and the row lse that the
// prefill (or decode) kernel returned, p = exp(scale q.k - lse), without an N x N matrix. The GPU counterpart of
// attn_colsum() (attn/attn-stats.h).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "backend/cuda/kv-paged.cuh"
#include "longctx/status.h"

namespace lc::cuda {

// Prefill chunk: adds to colsum[r * colsum_stride + j] the attention probability of key j summed over the n_q
// queries of the chunk, for j < pos0 + n_q: query i at position pos0 + i sees keys j <= pos0 + i, and with
// window > 0 only j > pos0 + i - window (attn_prefill()'s masking); columns no query sees get + 0 (keys at or past
// pos0 + n_q are not touched). Rows r: per query head (per_kv_head = false: r = h) or per KV head with the query
// heads of its GQA group summed (r = h / (n_head / n_head_kv)).
//   q:   [n_q][n_head][head_dim] bf16, as given to attn_prefill();  lse: [n_q][n_head] f32, the lse attn_prefill()
//        returned for the same q, kv, scale and window (natural log);  colsum: f32, accumulated (+=).
// One block per (64 or 128 keys, KV head) walks every query of the chunk that sees its keys, for each query head of
// the group (q . k on bf16 tensor cores, f32 accumulation): each column is written by one block, no atomics, so the
// result is deterministic. All pointers are device pointers.
// Supported: head_dim 64, 128 (the wgmma kernels: 128, on sm_90). Errors: UNSUPPORTED for other shapes,
// INVALID_ARGUMENT when kv.n_kv < pos0 + n_q, window < 0 or colsum_stride < pos0 + n_q. Asynchronous on `stream`.
enum class attn_colsum_kernel {
    AUTO,       // WGMMA_POLY when the device is sm_90 and head_dim is 128, else MMA_SYNC
    MMA_SYNC,   // 4 warps, one 64-key page per block, mma.sync m16n8k16, cp.async double buffer of 64 queries
    WGMMA,      // Hopper: a TMA producer warp streams 128-query tiles (4 stages) to 2 consumer warpgroups that hold
                // 64 keys each in registers (wgmma m64n128k16, keys as M); the next tile's product runs under the
                // current tile's exps; all exps on ex2.approx
    WGMMA_POLY, // the same with a quarter of the exps as a polynomial on the FMA pipe (relative error 2.6e-6)
};
struct attn_colsum_args {
    const bf16_t *     q      = nullptr;
    int64_t            n_q    = 0;
    int64_t            pos0   = 0;
    int                n_head = 0;
    attn_kv_paged      kv;
    float              scale         = 0;
    const float *      lse           = nullptr;
    bool               per_kv_head   = false;
    float *            colsum        = nullptr;
    int64_t            colsum_stride = 0;
    int64_t            window        = 0;
    attn_colsum_kernel kernel        = attn_colsum_kernel::AUTO;
};
status attn_colsum(const attn_colsum_args & a, cudaStream_t stream);

// Decode step: one query per sequence (the layout of attn_decode_args, attn-decode.cuh); adds its row of
// probabilities to the running score of sequence s, colsum + s * seq_stride ([rows][colsum_stride] as above):
// the query at position n_kv[s] - 1 sees keys j < n_kv[s] (with window > 0: j >= n_kv[s] - window).
//   q: [n_seq][n_head][head_dim] bf16;  lse: [n_seq][n_head] f32 (attn_decode()'s);  pages: [n_seq][pages_stride];
//   n_kv: [n_seq] int32 on the device, each <= n_kv_max.
// Supported: head_dim 64, 128; n_head / n_head_kv in 1..8. Memory-bound: reads each key row once per step.
struct attn_colsum_decode_args {
    const bf16_t *  q             = nullptr;
    int             n_seq         = 0;
    int             n_head        = 0;
    const bf16_t *  k_pool        = nullptr;
    int             n_head_kv     = 0;
    int             head_dim      = 0;
    const int32_t * pages         = nullptr;
    int64_t         pages_stride  = 0;
    const int32_t * n_kv          = nullptr;
    int64_t         n_kv_max      = 0;
    float           scale         = 0;
    const float *   lse           = nullptr;
    bool            per_kv_head   = false;
    float *         colsum        = nullptr;
    int64_t         colsum_stride = 0;
    int64_t         seq_stride    = 0; // floats between the buffers of consecutive sequences
    int64_t         window        = 0;
};
status attn_colsum_decode(const attn_colsum_decode_args & a, cudaStream_t stream);

} // namespace lc::cuda
