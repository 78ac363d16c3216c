// Per-ISA CPU kernels for one dense-attention work item: a block of consecutive queries times the query heads
// of one or more consecutive KV heads (GQA groups), against one range of keys of the paged fp16 KV cache. The
// dispatcher (attn/attn-dense.cpp) cuts the problem into such items, runs them on the thread pool and merges
// split keys.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/fp16.h"

namespace lc {

// For KV head kv_head + x of the item, row r is query i = r / n_group of the block and query head
// g = r % n_group of that group; its query head within the row of q is x * n_group + g.
// o is normalised over the item's key range; lse is its natural-log sum-exp, -inf when no key is visible.
struct attn_tile_args {
    const float * q;        // q[i * q_stride + (x * n_group + g) * head_dim + d], f32, already RoPE'd
    int64_t       q_stride; // floats between consecutive queries
    float *       o;        // o[i * o_stride + (x * n_group + g) * o_head_stride + d], f32
    int64_t       o_stride;
    int64_t       o_head_stride;
    float *       lse; // (optional) lse[i * lse_stride + (x * n_group + g) * lse_head_stride]
    int64_t       lse_stride;
    int64_t       lse_head_stride;
    int           n_q;     // queries in the block, >= 1
    int           n_group; // query heads per KV head, >= 1
    int           head_dim;
    int64_t       pos0;   // position of query 0 of the block; query i sees keys t <= pos0 + i
    int64_t       window; // > 0: query i sees only keys t > pos0 + i - window (sliding window); 0: no window
    float         scale;  // softmax scale applied to q . k

    // One layer of one sequence of the KV cache (see kv/kv-cache.h for the page layout).
    const fp16_t *  k_pool;
    const fp16_t *  v_pool;
    const int32_t * pages;
    size_t          page_elems;
    int             kv_head;    // first KV head of the item
    int             n_kv_heads; // consecutive KV heads in the item, >= 1
    int64_t         k_begin;    // key range [k_begin, k_end); may be empty
    int64_t         k_end;

    // (optional) Sparse items (sparse = true) attend the key ranges (sorted, disjoint) and then the single key
    // columns (sorted, in no range) instead of [k_begin, k_end), with causal masking and no window. Such items
    // always take the transposed layout.
    bool            sparse   = false;
    const int32_t * ranges   = nullptr; // [n_ranges][2] begin, end (the layout of key_range in prefill-plan.h)
    int64_t         n_ranges = 0;
    const int32_t * cols     = nullptr; // [n_cols] key positions
    int64_t         n_cols   = 0;

    float * scratch; // attn_tile_scratch_floats(n_q * n_group * n_kv_heads, head_dim) floats, 64-byte aligned
};

// Rows are padded to a multiple of 16 so that one size fits the 8- and 16-lane kernels.
inline size_t attn_tile_rows_padded(int n_rows) {
    return size_t((n_rows + 15) / 16 * 16);
}
inline size_t attn_tile_scratch_floats(int n_rows, int head_dim) {
    const size_t rp = attn_tile_rows_padded(n_rows);
    const size_t d  = size_t((head_dim + 15) / 16 * 16);
    // Qt [d][rp], Ot [d][rp], St [64][rp], KV tile [64][d], m, l, alpha, lim, nlo [rp] each.
    return 2 * d * rp + 64 * rp + 64 * d + 5 * rp;
}

// A 64-byte aligned scratch of at least n floats inside buf (grown as needed).
inline float * attn_tile_scratch(std::vector<float> & buf, size_t n) {
    if (buf.size() < n + 16) buf.resize(n + 16);
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<float *>((p + 63) & ~uintptr_t(63));
}

// Computes the normalised partial state (o, lse) of every row of the item over keys [k_begin, k_end) with
// causal (and, when window > 0, sliding-window) masking; tiles wholly before every row's window are skipped.
// Thread-safe for distinct outputs and scratch. Two layouts (see attn-tile-impl.inc): items of at most
// attn_rows_max_*(head_dim) rows per KV head (n_q * n_group) take the row layout and walk the pages once for all their
// KV heads, so that reads are contiguous (decode is bound by them); larger items take the transposed layout, one KV
// head after another.
void attn_tile_avx2(const attn_tile_args & a);
void attn_tile_avx512(const attn_tile_args & a); // only in builds with LC_HAVE_AVX512_KERNELS
int  attn_rows_max_avx2(int head_dim);           // 0 when head_dim does not suit the row layout
int  attn_rows_max_avx512(int head_dim);

} // namespace lc
