// The device KV cache as the CUDA attention kernels see it: 64-token pages of bf16, one page table per sequence
// (the CPU cache's layout, kv/kv-cache.h, with bf16 instead of fp16).
#pragma once

#include <cstdint>

#include "core/fp16.h"

namespace lc::cuda {

// Page size of the device KV cache, in tokens (same as the CPU cache, kv/kv-cache.h).
constexpr int kv_page_tokens = 64;

// One layer of one sequence of the device KV cache. A page holds, for every KV head, 64 token rows of head_dim
// bf16: pool layout [n_pages_total][n_head_kv][64][head_dim], row-major (the CPU cache's layout, in bf16).
// Logical page p of the sequence is physical page pages[p]. All pointers are device pointers.
// Rows past n_kv on the last page must hold finite values (the wgmma kernel multiplies them by a zero weight;
// a NaN there would poison the row): zero pages when they are handed out.
struct attn_kv_paged {
    const bf16_t *  k_pool        = nullptr; // [n_pages_total][n_head_kv][64][head_dim] bf16
    const bf16_t *  v_pool        = nullptr; // same layout as k_pool
    const int32_t * pages         = nullptr; // [ceil(n_kv / 64)] physical page ids
    int64_t         n_pages_total = 0;       // pages in each pool (bounds of the tensor maps)
    int64_t         n_kv          = 0;       // valid tokens, positions 0..n_kv-1
    int             n_head_kv     = 0;
    int             head_dim      = 0;
};

} // namespace lc::cuda
