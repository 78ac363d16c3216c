// Paged KV cache: per layer one K pool and one V pool of 64-token pages in fp16, and per sequence one page
// table shared by all layers (logical page p of a sequence is physical page table[p] in every layer's pool).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/fp16.h"
#include "longctx/status.h"

namespace lc {

constexpr int kv_page_tokens = 64;

// Read-only view of one layer of one sequence, as attention kernels see it. A page holds, for every KV head,
// 64 token rows of head_dim fp16: page layout [n_head_kv][64][head_dim], row-major.
// Rows past n_kv on the last page are garbage. The view is invalidated by reserve() and clear() of its sequence
// and by destroying the cache.
struct kv_view {
    const fp16_t *  k_pool     = nullptr; // [n_pages_total][n_head_kv][64][head_dim] fp16
    const fp16_t *  v_pool     = nullptr; // same layout as k_pool
    const int32_t * pages      = nullptr; // [ceil(n_kv / 64)] physical page ids
    int64_t         n_kv       = 0;       // valid tokens (positions 0..n_kv-1)
    int             n_head_kv  = 0;
    int             head_dim   = 0;
    size_t          page_elems = 0; // n_head_kv * 64 * head_dim

    // The 64 x head_dim block of KV head h on logical page p.
    const fp16_t * k_page(int64_t p, int h) const { return k_pool + page_offset(p, h); }
    const fp16_t * v_page(int64_t p, int h) const { return v_pool + page_offset(p, h); }
    // The head_dim values of token t (0 <= t < n_kv) for KV head h.
    const fp16_t * k_row(int64_t t, int h) const { return k_page(t / kv_page_tokens, h) + row_offset(t); }
    const fp16_t * v_row(int64_t t, int h) const { return v_page(t / kv_page_tokens, h) + row_offset(t); }

  private:
    size_t page_offset(int64_t p, int h) const {
        return size_t(pages[p]) * page_elems + size_t(h) * kv_page_tokens * size_t(head_dim);
    }
    size_t row_offset(int64_t t) const { return size_t(t % kv_page_tokens) * size_t(head_dim); }
};

// Memory: the pools of all layers are reserved up front as address space for the whole capacity
// (mmap with MAP_NORESERVE); the OS backs a page with memory the first time it is written, and the free list
// hands out the lowest page ids first, so a 128k-token cache costs only what its sequences have used.
// clear() returns pages to the free list but not their memory to the OS.
// Capacity: n_ctx_max tokens in total, shared by up to n_seq_max sequences; one sequence may take all of it.
// The pool has ceil(n_ctx_max / 64) + n_seq_max - 1 pages so that partly filled last pages never make a set
// of sequences that fits in n_ctx_max tokens fail.
// Thread-safety: const methods may run concurrently; reserve(), write() and clear() need external locking,
// except that write() calls for different sequences may run concurrently.
class kv_cache {
  public:
    kv_cache(int n_layer, int n_head_kv, int head_dim, int64_t n_ctx_max, int n_seq_max = 1);
    ~kv_cache();
    kv_cache(const kv_cache &)             = delete;
    kv_cache & operator=(const kv_cache &) = delete;
    kv_cache(kv_cache && other) noexcept;
    kv_cache & operator=(kv_cache && other) noexcept;

    // Grows the page table of `seq` to hold n_tokens tokens (never shrinks). Errors: INVALID_ARGUMENT for a bad
    // seq, OUT_OF_RANGE when n_tokens > n_ctx_max, RESOURCE_EXHAUSTED when too few pages are free (other
    // sequences hold them) or the address space could not be reserved. On error nothing changes.
    status reserve(int seq, int64_t n_tokens);

    // Stores tokens pos..pos+n-1 of layer il, converting f32 to fp16 (round to nearest even).
    // k, v: [n][n_head_kv][head_dim] f32. Sets n_tokens(seq) to max(n_tokens(seq), pos + n).
    // REQUIRES: reserve(seq, pos + n) succeeded; 0 <= il < n_layer.
    void write(int il, int seq, int64_t pos, int64_t n, const float * k, const float * v);

    // REQUIRES: 0 <= il < n_layer, 0 <= seq < n_seq_max.
    kv_view view(int il, int seq) const;
    int64_t n_tokens(int seq) const;
    // Returns the pages of `seq` to the free list and sets its length to 0.
    void clear(int seq);

    // Bytes of the pages currently owned by sequences (all layers, K and V).
    size_t bytes_allocated() const;
    // Bytes holding written tokens: sum over sequences of n_tokens * bytes per token (all layers, K and V).
    size_t bytes_used() const;
    // Bytes of address space reserved for the whole capacity.
    size_t bytes_reserved() const { return bytes_reserved_; }

    int     n_layer() const { return n_layer_; }
    int     n_head_kv() const { return n_head_kv_; }
    int     head_dim() const { return head_dim_; }
    int     n_seq_max() const { return n_seq_max_; }
    int64_t n_ctx_max() const { return n_ctx_max_; }
    int64_t n_pages_total() const { return n_pages_; }
    int64_t n_pages_free() const { return int64_t(free_.size()); }
    // Bytes of one page in one pool (one layer, K or V).
    size_t page_bytes() const { return page_elems_ * sizeof(fp16_t); }

  private:
    fp16_t * k_pool(int il) const { return base_ + size_t(2 * il) * pool_elems(); }
    fp16_t * v_pool(int il) const { return base_ + size_t(2 * il + 1) * pool_elems(); }
    size_t   pool_elems() const { return size_t(n_pages_) * page_elems_; }
    void     release();

    int      n_layer_        = 0;
    int      n_head_kv_      = 0;
    int      head_dim_       = 0;
    int64_t  n_ctx_max_      = 0;
    int      n_seq_max_      = 0;
    int64_t  n_pages_        = 0;
    size_t   page_elems_     = 0;
    size_t   bytes_reserved_ = 0;
    fp16_t * base_           = nullptr; // [n_layer][2 (K, V)][n_pages][page_elems]

    std::vector<int32_t>              free_;     // free physical page ids, lowest id at the back
    std::vector<std::vector<int32_t>> pages_;    // [n_seq_max] page tables
    std::vector<int64_t>              n_tokens_; // [n_seq_max]
};

} // namespace lc
