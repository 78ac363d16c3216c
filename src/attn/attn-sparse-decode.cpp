// Sparse decode dispatcher: cuts each head's key list (ranges first, then gathered positions) into parts, runs
// the ISA gather kernel on them from the pool and merges the parts of a head by log-sum-exp. See
// attn-sparse-decode.h.
#include "attn/attn-sparse-decode.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "attn/attn-state.h"
#include "attn/decode/decode-method.h"
#include "backend/cpu/attn-gather.h"
#include "backend/cpu/attn-tile.h"
#include "core/log.h"

namespace lc {

namespace {

// A part of one plan entry's key list, which is its ranges concatenated and then its gathered positions: keys
// [s, e) of that list.
struct part {
    int     head; // the entry
    int64_t s, e;
};

// Parts of at least this many keys: below that the merge and scheduling cost more than they save.
constexpr int64_t k_min_part = 512;

} // namespace

void attn_sparse_decode(const decode_plan & plan, const float * q, const kv_view & kv, float scale, float * o,
                        float * lse, thread_pool & pool) {
    attn_sparse_decode_isa(cpu_isa_best(), plan, q, kv, scale, o, lse, pool);
}

void attn_sparse_decode_isa(cpu_isa isa, const decode_plan & plan, const float * q, const kv_view & kv, float scale,
                            float * o, float * lse, thread_pool & pool) {
    const int n_head = plan.n_head;
    const int D      = kv.head_dim;
    LC_ASSERT(kv.n_head_kv > 0 && n_head % kv.n_head_kv == 0, "attn: n_head %d is not a multiple of n_head_kv %d",
              n_head, kv.n_head_kv);
    const int n_group = n_head / kv.n_head_kv;
    const int group   = plan.group;
    const int n_entry = int(plan.heads.size());
    LC_ASSERT(group >= 1 && n_group % group == 0 && n_entry * group == n_head,
              "attn: decode plan has %d entries of group %d for %d query heads (%d per KV head)", n_entry, group,
              n_head, n_group);
    LC_ASSERT(D % 16 == 0, "attn: sparse decode needs head_dim %% 16 == 0 (got %d)", D);
    LC_ASSERT(cpu_isa_available(isa), "attn: %s kernels are not available", cpu_isa_name(isa));
    void (*fn)(const attn_gather_args &) = attn_gather_avx2;
#ifdef LC_HAVE_AVX512_KERNELS
    if (isa == cpu_isa::AVX512) fn = attn_gather_avx512;
#endif

    // Part length: enough parts for every thread (4 per thread for balance), none below k_min_part keys.
    int64_t total = 0;
    for (const decode_head_plan & h : plan.heads) {
        LC_ASSERT(h.logw.empty() || h.logw.size() == h.idx.size(), "decode plan: %zu log-weights for %zu indices",
                  h.logw.size(), h.idx.size());
        total += decode_head_keys(h);
    }
    const int64_t part_len = std::max(k_min_part, (total + 4 * pool.n_threads() - 1) / (4 * pool.n_threads()));

    thread_local std::vector<part> parts;
    thread_local std::vector<int>  first_part; // [n_entry + 1]
    parts.clear();
    first_part.assign(size_t(n_entry) + 1, 0);
    for (int e = 0; e < n_entry; ++e) {
        first_part[size_t(e)] = int(parts.size());
        const int64_t n       = decode_head_keys(plan.heads[size_t(e)]);
        int64_t       s       = 0;
        do {
            const int64_t end = std::min(n, s + part_len);
            parts.push_back({e, s, end});
            s = end;
        } while (s < n);
    }
    first_part[size_t(n_entry)] = int(parts.size());

    // Part w's states: o [group][D], lse [group].
    const int64_t                   n_parts = int64_t(parts.size());
    thread_local std::vector<float> o_parts, lse_parts;
    o_parts.resize(size_t(n_parts) * group * D);
    lse_parts.resize(size_t(n_parts) * group);
    // The workers see the calling thread's buffers through these (a thread_local named in the lambda would be
    // the worker's own).
    const part * const   part_v    = parts.data();
    float * const        o_v       = o_parts.data();
    float * const        lse_v     = lse_parts.data();
    const size_t         scratch_n = attn_gather_scratch_floats(D);
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        thread_local std::vector<float> buf;
        float *                         scratch = attn_tile_scratch(buf, scratch_n);
        std::vector<int32_t>            cut;
        for (;;) {
            const int64_t w = next.fetch_add(1, std::memory_order_relaxed);
            if (w >= n_parts) break;
            const part &             p  = part_v[w];
            const decode_head_plan & hp = plan.heads[size_t(p.head)];
            // The ranges' share of [s, e), then the positions'.
            cut.clear();
            int64_t off = 0;
            for (const key_range & r : hp.dense) {
                const int64_t len = r.end - r.begin;
                const int64_t b = std::max(p.s - off, int64_t(0)), e = std::min(p.e - off, len);
                if (b < e) {
                    cut.push_back(int32_t(r.begin + b));
                    cut.push_back(int32_t(r.begin + e));
                }
                off += len;
            }
            const int64_t i0 = std::max(p.s - off, int64_t(0)), i1 = std::max(p.e - off, int64_t(0));
            const int     h0 = p.head * group; // first query head of the entry
            for (int r0 = 0; r0 < group; r0 += attn_gather_rows_max) {
                attn_gather_args a{};
                a.q          = q + size_t(h0 + r0) * D;
                a.n_rows     = std::min(attn_gather_rows_max, group - r0);
                a.head_dim   = D;
                a.scale      = scale;
                a.k_pool     = kv.k_pool;
                a.v_pool     = kv.v_pool;
                a.pages      = kv.pages;
                a.page_elems = kv.page_elems;
                a.kv_head    = h0 / n_group;
                a.ranges     = cut.data();
                a.n_ranges   = int64_t(cut.size() / 2);
                a.idx        = hp.idx.data() + i0;
                a.logw       = hp.logw.empty() ? nullptr : hp.logw.data() + i0;
                a.n_idx      = i1 - i0;
                a.o          = o_v + (size_t(w) * group + r0) * D;
                a.lse        = lse_v + size_t(w) * group + r0;
                a.scratch    = scratch;
                fn(a);
            }
        }
    });

    for (int h = 0; h < n_head; ++h) {
        const int e = h / group, r = h % group;
        float *   oh = o + size_t(h) * D;
        float     l  = -INFINITY;
        std::fill(oh, oh + D, 0.0f);
        for (int pi = first_part[size_t(e)]; pi < first_part[size_t(e) + 1]; ++pi)
            attn_state_merge_into(oh, &l, o_parts.data() + (size_t(pi) * group + r) * D,
                                  lse_parts[size_t(pi) * group + r], D);
        if (lse) lse[h] = l;
    }
}

} // namespace lc
