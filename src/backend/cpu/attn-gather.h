// Per-ISA CPU kernel of sparse decoding: one query row against a list of keys of the paged fp16 KV cache given
// as sorted ranges and single (gathered) positions with optional per-key log-weights. The dispatcher
// (attn/attn-sparse-decode.cpp) splits long lists across threads and merges the parts by log-sum-exp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/fp16.h"

namespace lc {

struct attn_gather_args {
    const float * q; // [head_dim] f32, already RoPE'd
    int           head_dim;
    float         scale; // applied to q . k; the log-weights are added after scaling

    // One layer of one sequence of the KV cache (see kv/kv-cache.h for the page layout) and the KV head.
    const fp16_t *  k_pool;
    const fp16_t *  v_pool;
    const int32_t * pages;
    size_t          page_elems;
    int             kv_head;

    const int32_t * ranges;   // [n_ranges][2] begin, end key positions (the layout of key_range)
    int64_t         n_ranges; // >= 0
    const int32_t * idx;      // [n_idx] key positions, in no range (any order)
    const float *   logw;     // (optional) [n_idx], added to scale * q . k of idx[i]
    int64_t         n_idx;

    float * o;       // [head_dim], normalised over the keys; 0 when there are none
    float * lse;     // natural-log sum-exp of the (weighted) scores; -inf when there are no keys
    float * scratch; // attn_gather_scratch_floats(head_dim) floats, 64-byte aligned
};

inline size_t attn_gather_scratch_floats(int head_dim) {
    const size_t d = size_t((head_dim + 15) / 16 * 16);
    // q, o [d]; scores [64]; a row of zeros [d] (fp16, padding keys); key/value row pointers and weights [64] each.
    return 3 * d + 64 + 64 * 5;
}

void attn_gather_avx2(const attn_gather_args & a);
void attn_gather_avx512(const attn_gather_args & a); // only in builds with LC_HAVE_AVX512_KERNELS

} // namespace lc
