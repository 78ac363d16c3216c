// Dense attention dispatcher: cuts the problem into (query block, KV-head group, key split) items, runs the
// ISA tile kernel on each from a shared atomic counter, and merges split-key partial states. See attn-dense.h.
#include "attn/attn-dense.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "attn/attn-state.h"
#include "backend/cpu/attn-tile.h"
#include "core/log.h"

namespace lc {

namespace {

using tile_fn = void (*)(const attn_tile_args &);

// Rows (queries x heads of a group) per item: enough to amortise the fp16 -> f32 conversion of each K/V tile
// (one conversion per 2 * rows FMAs per element) while Qt, Ot, St and the f32 tile stay near L1
// (48 rows, head_dim 64: 12 + 12 + 12 + 16 KiB).
constexpr int k_rows_avx2   = 48;
constexpr int k_rows_avx512 = 96;
// Split keys only while each split keeps at least this many keys; below it the merge and the per-item setup
// cost more than the parallelism gains.
constexpr int64_t k_split_min_keys = 512;
constexpr int64_t k_split_max      = 64;
// Aim for this many items per thread so the dynamic schedule evens out unequal items.
constexpr int64_t k_items_per_thread = 8;

} // namespace

void attn_dense(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale, float * o,
                float * lse, thread_pool & pool, int64_t window) {
    attn_dense_isa(cpu_isa_best(), q, n_q, pos0, n_head, kv, scale, o, lse, pool, window);
}

void attn_dense_isa(cpu_isa isa, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                    float scale, float * o, float * lse, thread_pool & pool, int64_t window) {
    LC_ASSERT(window >= 0, "attn: window %lld must be positive or attn_window_none", (long long)window);
    LC_ASSERT(kv.n_head_kv > 0 && n_head % kv.n_head_kv == 0, "attn: n_head %d is not a multiple of n_head_kv %d",
              n_head, kv.n_head_kv);
    LC_ASSERT(pos0 >= 0 && n_q >= 0 && kv.n_kv >= pos0 + n_q,
              "attn: queries up to position %lld but the cache holds %lld tokens", (long long)(pos0 + n_q - 1),
              (long long)kv.n_kv);
    LC_ASSERT(pos0 + n_q < INT32_MAX, "attn: position %lld beyond 2^31", (long long)(pos0 + n_q));
    LC_ASSERT(cpu_isa_available(isa), "attn: %s kernels are not available on this machine or build", cpu_isa_name(isa));
    if (n_q == 0) return;

    tile_fn fn          = attn_tile_avx2;
    int     target_rows = k_rows_avx2;
    int     rows_max    = attn_rows_max_avx2(kv.head_dim);
#ifdef LC_HAVE_AVX512_KERNELS
    if (isa == cpu_isa::AVX512) {
        fn          = attn_tile_avx512;
        target_rows = k_rows_avx512;
        rows_max    = attn_rows_max_avx512(kv.head_dim);
    }
#endif

    const int     n_head_kv  = kv.n_head_kv;
    const int     head_dim   = kv.head_dim;
    const int     n_group    = n_head / n_head_kv;
    const int     nth        = pool.n_threads();
    const bool    row_layout = n_q * n_group <= rows_max; // decode and other few-query calls
    const int64_t bq         = row_layout ? n_q : std::clamp<int64_t>(target_rows / n_group, 1, n_q);
    const int64_t n_qb       = (n_q + bq - 1) / bq;
    // Keys the last query sees: all before it, or its window.
    const int64_t n_keys_max = window > 0 ? std::min(pos0 + n_q, window) : pos0 + n_q;
    const int64_t max_split  = std::clamp<int64_t>(n_keys_max / k_split_min_keys, 1, k_split_max);
    const int64_t want_items = k_items_per_thread * nth;

    // Items are (query block, group of KV heads, key split).
    int64_t n_hg    = n_head_kv; // KV-head groups
    int64_t n_split = 1;
    if (row_layout) {
        // One item per key split reads each page front to back for all KV heads: measured here (a plain fp16
        // read loop, one core, cache beyond L3), one head's slice of each page in turn streams at 12-16 GB/s,
        // whole pages at 37-44 GB/s.
        // Heads are split across items only when the keys are too few to split for every thread.
        n_split = std::min(max_split, (want_items + n_qb - 1) / n_qb);
        n_hg    = n_qb * n_split >= nth
                      ? 1
                      : std::min<int64_t>(n_head_kv, (want_items + n_qb * n_split - 1) / (n_qb * n_split));
    } else if (n_qb * n_hg < want_items) {
        n_split = std::min(max_split, (want_items + n_qb * n_hg - 1) / (n_qb * n_hg));
    }
    const int64_t hpg = (n_head_kv + n_hg - 1) / n_hg; // KV heads per group
    n_hg              = (n_head_kv + hpg - 1) / hpg;

    // Split items write partial states to parts: o [n_q * n_head][n_split][head_dim], lse [n_q * n_head][n_split].
    const int64_t                   n_rows = n_q * n_head;
    thread_local std::vector<float> parts;
    float *                         parts_o   = nullptr;
    float *                         parts_lse = nullptr;
    if (n_split > 1) {
        parts.resize(size_t(n_rows * n_split * (head_dim + 1)));
        parts_o   = parts.data();
        parts_lse = parts_o + n_rows * n_split * head_dim;
    }

    const int64_t        n_work    = n_qb * n_hg * n_split;
    const size_t         scratch_n = attn_tile_scratch_floats(int(bq * n_group * hpg), head_dim);
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        thread_local std::vector<float> buf;
        float *                         scratch = attn_tile_scratch(buf, scratch_n);
        for (;;) {
            const int64_t w = next.fetch_add(1, std::memory_order_relaxed);
            if (w >= n_work) break;
            // Last query blocks (the most keys under causality) first, so that the short ones fill the tail.
            const int64_t qb    = n_qb - 1 - w / (n_hg * n_split);
            const int     hk    = int((w / n_split) % n_hg * hpg); // first KV head of the item
            const int64_t s     = w % n_split;
            const int64_t i0    = qb * bq;
            const int64_t nq    = std::min(bq, n_q - i0);
            const int64_t k_all = pos0 + i0 + nq;
            // first key any query of the block sees (query i0's window start)
            const int64_t k_lo = window > 0 ? std::max<int64_t>(0, pos0 + i0 - window + 1) : 0;
            const int64_t row0 = i0 * n_head + int64_t(hk) * n_group; // (query i0, head hk * n_group)

            attn_tile_args a{};
            a.q        = q + row0 * head_dim;
            a.q_stride = int64_t(n_head) * head_dim;
            a.k_begin  = k_lo;
            a.k_end    = k_all;
            if (n_split == 1) {
                a.o               = o + row0 * head_dim;
                a.o_stride        = int64_t(n_head) * head_dim;
                a.o_head_stride   = head_dim;
                a.lse             = lse ? lse + row0 : nullptr;
                a.lse_stride      = n_head;
                a.lse_head_stride = 1;
            } else {
                // Page-aligned chunks so that every tile but the last of a split is a whole page.
                const int64_t k_base = k_lo / kv_page_tokens * kv_page_tokens;
                const int64_t chunk =
                    ((k_all - k_base + n_split - 1) / n_split + kv_page_tokens - 1) / kv_page_tokens * kv_page_tokens;
                a.k_begin         = std::min(k_all, std::max(k_lo, k_base + s * chunk));
                a.k_end           = std::min(k_all, k_base + (s + 1) * chunk);
                a.o               = parts_o + (row0 * n_split + s) * head_dim;
                a.o_stride        = int64_t(n_head) * n_split * head_dim;
                a.o_head_stride   = n_split * head_dim;
                a.lse             = parts_lse + row0 * n_split + s;
                a.lse_stride      = int64_t(n_head) * n_split;
                a.lse_head_stride = n_split;
            }
            a.n_q        = int(nq);
            a.n_group    = n_group;
            a.head_dim   = head_dim;
            a.pos0       = pos0 + i0;
            a.window     = window;
            a.scale      = scale;
            a.k_pool     = kv.k_pool;
            a.v_pool     = kv.v_pool;
            a.pages      = kv.pages;
            a.page_elems = kv.page_elems;
            a.kv_head    = hk;
            a.n_kv_heads = int(std::min<int64_t>(hpg, n_head_kv - hk));
            a.scratch    = scratch;
            fn(a);
        }
    });

    if (n_split > 1) {
        pool.run([&](int ith, int nth_run) {
            int64_t r0, r1;
            thread_pool::split(n_rows, ith, nth_run, r0, r1);
            for (int64_t r = r0; r < r1; ++r) {
                attn_state_merge_parts(parts_o + r * n_split * head_dim, parts_lse + r * n_split, int(n_split), 1,
                                       head_dim, o + r * head_dim, lse ? lse + r : nullptr);
            }
        });
    }
}

} // namespace lc
