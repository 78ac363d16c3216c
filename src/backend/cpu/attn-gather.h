// Per-ISA CPU kernel of sparse decoding: one or more query rows (the query heads of one KV head when they share a
// selection) against one list of keys of the paged fp16 KV cache given as ranges and single (gathered) positions
// with optional per-key log-weights. The dispatcher
// (attn/attn-sparse-decode.cpp) splits long lists across threads and merges the parts by log-sum-exp.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/fp16.h"

namespace lc {

struct attn_gather_args {
    const float * q;      // [n_rows][head_dim] f32, already RoPE'd
    int           n_rows; // 1 .. attn_gather_rows_max
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

    float * o;       // [n_rows][head_dim], normalised over the keys; 0 when there are none
    float * lse;     // [n_rows] natural-log sum-exp of the (weighted) scores; -inf when there are no keys
    float * scratch; // attn_gather_scratch_floats(head_dim) floats, 64-byte aligned
};

// Rows one call takes (the row layout's limit of the AVX2 kernel; the AVX-512 one allows more).
constexpr int attn_gather_rows_max = 12;

inline size_t attn_gather_scratch_floats(int head_dim) {
    const size_t d = size_t((head_dim + 15) / 16 * 16);
    const size_t R = attn_gather_rows_max;
    // q, o [R][d]; scores [R][64]; K tile f32 [64][d]; V tile fp16 [64][d]; m, l, alpha [16]; log-weights [64];
    // key and value row pointers [64] each (two floats per pointer).
    return 2 * R * d + R * 64 + 64 * d + 32 * d + 48 + 64 + 4 * 64;
}

void attn_gather_avx2(const attn_gather_args & a);
void attn_gather_avx512(const attn_gather_args & a); // only in builds with LC_HAVE_AVX512_KERNELS

} // namespace lc
