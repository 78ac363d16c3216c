// Per-ISA CPU kernels for the attention column sums (attn/attn-stats.h): one work item is one or more consecutive KV
// heads times one page-aligned range of keys; it adds to each of its key columns the softmax probabilities that the
// queries of the block give that key, recomputed from q . k and the row log-sum-exp. The dispatcher
// (attn/attn-stats.cpp) cuts the problem into items so that each item owns its columns.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/fp16.h"

namespace lc {

// Row (query i, query head g of the item's KV head). The dispatcher packs, once per call, for every query head:
// the pre-scaled queries transposed, qt [head_dim][nqp], and row-major, qr [n_q][head_dim], and lse2 [nqp] = lse *
// log2(e), padding lanes (i >= n_q) +inf so that they contribute exactly 0.
struct attn_colsum_args {
    const float *   qt;      // qt[g * head_dim * nqp + d * nqp + i] = scale * log2(e) * q(i, g)[d]; 64-byte aligned
    const float *   qr;      // qr[g * n_q * head_dim + i * head_dim + d]: the same queries row-major; 64-byte aligned
    const float *   lse2;    // lse2[g * nqp + i]; 64-byte aligned
    const int32_t * lim;     // [nqp] last visible key of query i: pos0 + i; 64-byte aligned
    const int32_t * nlo;     // [nqp] window - 1 - (pos0 + i) with a window, INT32_MAX without; 64-byte aligned
    int64_t         nqp;     // n_q rounded up to a multiple of 16
    int             n_q;     // queries of the block, >= 1
    int             n_group; // query heads of the KV head, >= 1
    int             head_dim;
    int64_t         pos0;   // position of query 0; query i sees keys t <= pos0 + i
    int64_t         window; // > 0: query i sees only keys t > pos0 + i - window; 0: no window

    // One layer of one sequence of the KV cache (see kv/kv-cache.h for the page layout).
    const fp16_t *  k_pool;
    const int32_t * pages;
    size_t          page_elems;
    int             kv_head;    // first KV head of the item
    int             n_kv_heads; // consecutive KV heads in the item, >= 1; qt, lse2 and colsum advance by
                                // n_group heads (rows: n_group, or 1 per_kv_head) per KV head
    int64_t k_begin;            // key range [k_begin, k_end), within the keys some query sees
    int64_t k_end;

    bool    per_kv_head; // true: one output row for the group; false: one per query head g
    float * colsum;      // colsum[row * colsum_stride + t] += probability mass of key t
    int64_t colsum_stride;

    float * scratch; // attn_colsum_scratch_floats(n_group, head_dim) floats, 64-byte aligned
};

inline size_t attn_colsum_scratch_floats(int n_group, int head_dim) {
    const size_t d = size_t((head_dim + 15) / 16 * 16);
    // K tile [64][d], column accumulators [64][16], per-row accumulators [n_group][64], [16].
    return 64 * d + 64 * 16 + size_t(n_group) * 64 + 16;
}

// Adds the item's column sums to a.colsum. Thread-safe for items with disjoint (KV heads, key range). Pages are walked
// once, each page's KV heads in turn, so that reads are contiguous (decode is bound by them).
void attn_colsum_avx2(const attn_colsum_args & a);
void attn_colsum_avx512(const attn_colsum_args & a); // only in builds with LC_HAVE_AVX512_KERNELS

} // namespace lc
