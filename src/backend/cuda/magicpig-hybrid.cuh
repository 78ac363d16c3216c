// MagicPIG hybrid decode, device side (METHODS.md sec. 4; issue 9): SimHash codes of rows on the GPU (the decoding
// queries each step, the middle keys once when a layer's tables are built), the dense part of a sparse layer (sinks,
// local window, generated tokens) as a partial state (o, lse), and the merge of that state with the sampled part's
// state computed by CPU threads over the middle of the cache in host memory (magicpig-host.h).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "core/fp16.h"
#include "longctx/status.h"

namespace lc::cuda {

// Codes of n rows against the hyperplanes w [D][K*L] f32 row-major (column t*K + j is bit j of table t; the
// logical order of simhash_matrix, attn/decode/simhash.h): bit j of the code of table t is
// ((x_r - mu) . w[:, t*K + j] > 0), each dot product an f32 fused multiply-add chain over d = 0..D-1 -- the order
// of the CPU's simhash_codes(), so both give the same codes, ties at 0 included (0 is bit 0).
//   x:     [n][x_stride] bf16 (the first D of each row are read)
//   mu:    [D] f32 subtracted from every row first, or nullptr (queries are hashed as they are)
//   codes: code_t ? [L][n] : [n][L] uint16 (keys are sorted per table, so the key pass writes tables contiguously)
//   norm:  [n] f32 |x_r - mu|, or nullptr
// REQUIRES: D in 1..256, 1 <= K <= 16. Asynchronous on `stream`.
struct mpig_hash_args {
    const bf16_t * x        = nullptr;
    int64_t        n        = 0;
    int64_t        x_stride = 0;
    const float *  mu       = nullptr;
    const float *  w        = nullptr;
    int            D = 0, K = 0, L = 0;
    uint16_t *     codes  = nullptr;
    bool           code_t = false;
    float *        norm   = nullptr;
};
status mpig_hash(const mpig_hash_args & a, cudaStream_t stream);

// Mean of n rows (stride x_stride bf16, the first D read), accumulated in double: mu [D] f32.
status mpig_mean(const bf16_t * x, int64_t n, int64_t x_stride, int D, float * mu, cudaStream_t stream);

// The dense part of one decode step: query head h of sequence s (q [n_seq][n_head][D] bf16) against the rows
// 0..n_dense[s]-1 of KV head h / (n_head / n_head_kv) in k, v [n_seq][n_head_kv][cap][D] bf16 (the sinks, then the
// local window and the generated tokens). o [n_seq][n_head][D] f32, lse [n_seq][n_head] f32 (ln sum exp(scale q.k));
// no rows: o = 0, lse = -inf. REQUIRES: D == 128.
struct mpig_dense_args {
    const bf16_t *  q      = nullptr;
    int             n_seq  = 0;
    int             n_head = 0, n_head_kv = 0, D = 0;
    const bf16_t *  k      = nullptr;
    const bf16_t *  v      = nullptr;
    int64_t         cap    = 0;
    const int32_t * n_dense = nullptr; // device [n_seq]
    float           scale   = 0;
    float *         o       = nullptr;
    float *         lse     = nullptr;
};
status mpig_dense(const mpig_dense_args & a, cudaStream_t stream);

// Merges n partial states of D values: (o1, lse1) and (o2, lse2) into o [n][D] f32 (= the attention over the union
// of the two key sets) and lse (optional). Either state may be empty (lse = -inf); both empty: o = 0, lse = -inf.
// o may be o1 or o2; lse must not be lse1 or lse2.
status mpig_merge(const float * o1, const float * lse1, const float * o2, const float * lse2, int64_t n, int D,
                  float * o, float * lse, cudaStream_t stream);

} // namespace lc::cuda
