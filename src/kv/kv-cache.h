// Paged KV cache: one K pool and one V pool of 64-token pages in fp16 shared by every layer and sequence, and per
// (layer, sequence) a page table and a slot count. Slots are a layer's cache rows in order; without eviction slot t holds position t in every
// layer. A KV policy (kv-policy.h) may compact a layer (keep_rows()), after which its slots hold the kept tokens in
// position order and fewer pages; the RoPE position of a token is baked into its key, so attention needs only
// slots. Layers may then hold different numbers of slots.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "core/fp16.h"
#include "longctx/status.h"

namespace lc {

constexpr int kv_page_tokens = 64;

// Read-only view of one layer of one sequence, as attention kernels see it. A page holds, for every KV head,
// 64 token rows of head_dim fp16: page layout [n_head_kv][64][head_dim], row-major.
// Rows past n_kv on the last page are garbage. The view is invalidated by reserve(), reserve_append(), clear(),
// truncate() and keep_rows() of its sequence and by destroying the cache.
struct kv_view {
    const fp16_t *  k_pool     = nullptr; // [n_pages_total][n_head_kv][64][head_dim] fp16
    const fp16_t *  v_pool     = nullptr; // same layout as k_pool
    const int32_t * pages      = nullptr; // [ceil(n_kv / 64)] physical page ids
    int64_t         n_kv       = 0;       // valid slots 0..n_kv-1
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

// Memory: the pools are reserved up front as address space for the whole capacity (mmap with MAP_NORESERVE);
// the OS backs a page with memory the first time it is written, and the free list hands out the lowest page ids
// first, so a 128k-token cache costs only what its sequences have used. clear() returns pages to the free list but
// not their memory to the OS.
// Capacity: a sequence holds at most n_ctx_max slots per layer; all layers and sequences draw their pages from one
// pool of n_pages pages (one page: 64 slots of one layer, K and V). The default, n_layer x (ceil(n_ctx_max / 64) +
// n_seq_max - 1) pages, holds n_ctx_max tokens in every layer over all sequences however their last pages are
// filled; a smaller pool is a memory budget (a KV policy that evicts in some layers then leaves room for more
// sequences). Pages a compaction frees go back to the pool at once (their memory stays with the process).
// Thread-safety: const methods may run concurrently; the others need external locking, except that write() and
// mutable row access for different (layer, sequence) pairs may run concurrently.
class kv_cache {
  public:
    // n_pages <= 0: the default pool (see above).
    kv_cache(int n_layer, int n_head_kv, int head_dim, int64_t n_ctx_max, int n_seq_max = 1, int64_t n_pages = 0);
    ~kv_cache();
    kv_cache(const kv_cache &)             = delete;
    kv_cache & operator=(const kv_cache &) = delete;
    kv_cache(kv_cache && other) noexcept;
    kv_cache & operator=(kv_cache && other) noexcept;

    // Grows the page tables of `seq` so that every layer holds at least n_tokens slots (never shrinks). Errors:
    // INVALID_ARGUMENT for a bad seq, OUT_OF_RANGE when n_tokens > n_ctx_max, RESOURCE_EXHAUSTED when too few pages
    // are free (other sequences hold them) or the address space could not be reserved. On error nothing changes.
    status reserve(int seq, int64_t n_tokens);
    // As reserve(), for n_more slots after each layer's current n_slots(il, seq).
    status reserve_append(int seq, int64_t n_more);

    // Stores tokens in slots slot..slot+n-1 of layer il, converting f32 to fp16 (round to nearest even).
    // k, v: [n][n_head_kv][head_dim] f32. Sets n_slots(il, seq) to max(n_slots(il, seq), slot + n).
    // REQUIRES: the layer's table holds slot + n slots (reserve); 0 <= il < n_layer.
    void write(int il, int seq, int64_t slot, int64_t n, const float * k, const float * v);

    // REQUIRES: 0 <= il < n_layer, 0 <= seq < n_seq_max.
    kv_view view(int il, int seq) const;
    // Slots of layer il holding tokens.
    int64_t n_slots(int il, int seq) const;
    // The largest n_slots over the layers (every layer's, without compaction).
    int64_t n_tokens(int seq) const;
    // Returns the pages of `seq` to the free lists and sets its slot counts to 0.
    void clear(int seq);
    // Cuts every layer of `seq` to at most n slots and frees the pages past them.
    void truncate(int seq, int64_t n);

    // Compaction of layer il of `seq` (eviction). For KV head h, rows keep[i] move to slot i, i < n_keep.
    // REQUIRES: keep strictly ascending, keep[n_keep - 1] < n_slots(il, seq). Every KV head of the layer must be
    // given the same n_keep before finish_keep() sets the slot count and frees the pages past it.
    void keep_rows(int il, int seq, int h, const int32_t * keep, int64_t n_keep);
    void finish_keep(int il, int seq, int64_t n_keep);

    // Drops the first n_pages pages of layer il of `seq` (their 64 * n_pages slots) without moving any row: slot t
    // becomes slot t - 64 * n_pages and keeps its place within a page. REQUIRES: 64 * n_pages <= n_slots(il, seq).
    void drop_front_pages(int il, int seq, int64_t n_pages);

    // Mutable fp16 rows (merging rewrites kept tokens in place). REQUIRES: slot < n_slots(il, seq).
    fp16_t * k_row(int il, int seq, int64_t slot, int h);
    fp16_t * v_row(int il, int seq, int64_t slot, int h);

    // Bytes of the pages currently owned by sequences (all layers, K and V).
    size_t bytes_allocated() const;
    // Bytes holding tokens: the slots of every (layer, sequence) times the bytes of one slot (K and V).
    size_t bytes_used() const;
    // Bytes of one slot of one layer (K and V, all KV heads).
    size_t slot_bytes() const { return size_t(n_head_kv_) * size_t(head_dim_) * sizeof(fp16_t) * 2; }
    // Bytes of address space reserved for the whole capacity.
    size_t bytes_reserved() const { return bytes_reserved_; }

    int     n_layer() const { return n_layer_; }
    int     n_head_kv() const { return n_head_kv_; }
    int     head_dim() const { return head_dim_; }
    int     n_seq_max() const { return n_seq_max_; }
    int64_t n_ctx_max() const { return n_ctx_max_; }
    int64_t n_pages_total() const { return n_pages_; }
    // Pages free in the pool.
    int64_t n_pages_free() const { return int64_t(free_.size()); }
    // Pages n slots take in one layer.
    static int64_t pages_for(int64_t n) { return (n + kv_page_tokens - 1) / kv_page_tokens; }
    // Bytes of one page in one pool (one layer, K or V).
    size_t page_bytes() const { return page_elems_ * sizeof(fp16_t); }

  private:
    fp16_t * k_pool() const { return base_; }
    fp16_t * v_pool() const { return base_ + pool_elems(); }
    size_t   pool_elems() const { return size_t(n_pages_) * page_elems_; }
    void     release();
    size_t   idx(int il, int seq) const { return size_t(il) * size_t(n_seq_max_) + size_t(seq); }
    size_t   row_offset(int il, int seq, int64_t slot, int h) const;
    void     shrink_table(int il, int seq, int64_t n_slots);
    void     release_pages(std::vector<int32_t>::const_iterator first, std::vector<int32_t>::const_iterator last);
    // Grows each layer's table of `seq` to hold slots_of_layer(il) slots, or changes nothing and says why.
    status   grow_tables(int seq, const std::function<int64_t(int)> & slots_of_layer);

    int      n_layer_        = 0;
    int      n_head_kv_      = 0;
    int      head_dim_       = 0;
    int64_t  n_ctx_max_      = 0;
    int      n_seq_max_      = 0;
    int64_t  n_pages_        = 0;
    size_t   page_elems_     = 0;
    size_t   bytes_reserved_ = 0;
    fp16_t * base_           = nullptr; // [2 (K, V)][n_pages][page_elems]

    std::vector<int32_t>              free_;    // free physical page ids, highest first (lowest at the back)
    std::vector<std::vector<int32_t>> pages_;   // [n_layer * n_seq_max] page tables
    std::vector<int64_t>              n_slots_; // [n_layer * n_seq_max]
};

} // namespace lc
