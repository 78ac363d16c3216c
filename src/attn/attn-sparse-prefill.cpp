// Sparse prefill dispatcher: one work item per (query head, 64-query block) of the plan, run by the ISA tile
// kernel in its sparse mode. See attn-sparse-prefill.h.
#include "attn/attn-sparse-prefill.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "backend/cpu/attn-tile.h"
#include "core/log.h"

namespace lc {

static_assert(sizeof(key_range) == 2 * sizeof(int32_t), "the tile kernel reads key_range as int32 pairs");

void attn_sparse_prefill(const prefill_plan & plan, const float * q, const kv_view & kv, float scale, float * o,
                         float * lse, thread_pool & pool) {
    attn_sparse_prefill_isa(cpu_isa_best(), plan, q, kv, scale, o, lse, pool);
}

void attn_sparse_prefill_isa(cpu_isa isa, const prefill_plan & plan, const float * q, const kv_view & kv, float scale,
                             float * o, float * lse, thread_pool & pool) {
    const int n_head = plan.n_head;
    LC_ASSERT(kv.n_head_kv > 0 && n_head % kv.n_head_kv == 0, "attn: n_head %d is not a multiple of n_head_kv %d",
              n_head, kv.n_head_kv);
    LC_ASSERT(plan.pos0 >= 0 && kv.n_kv >= plan.pos0 + plan.n_q, "attn: queries up to %lld but the cache holds %lld",
              (long long)(plan.pos0 + plan.n_q - 1), (long long)kv.n_kv);
    LC_ASSERT(int(plan.heads.size()) == n_head, "attn: plan has %zu heads, expected %d", plan.heads.size(), n_head);
    LC_ASSERT(cpu_isa_available(isa), "attn: %s kernels are not available", cpu_isa_name(isa));
    if (plan.n_q == 0) return;

    void (*fn)(const attn_tile_args &) = attn_tile_avx2;
#ifdef LC_HAVE_AVX512_KERNELS
    if (isa == cpu_isa::AVX512) fn = attn_tile_avx512;
#endif
    const int     head_dim  = kv.head_dim;
    const int     n_group   = n_head / kv.n_head_kv;
    const int64_t n_qb      = plan.n_qblk();
    const int64_t n_work    = n_qb * n_head;
    const size_t  scratch_n = attn_tile_scratch_floats(prefill_qblock, head_dim);

    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        thread_local std::vector<float> buf;
        float *                         scratch = attn_tile_scratch(buf, scratch_n);
        for (;;) {
            const int64_t w = next.fetch_add(1, std::memory_order_relaxed);
            if (w >= n_work) break;
            // Last query blocks (most keys under causality) first so the short ones fill the tail.
            const int64_t             qb = n_qb - 1 - w / n_head;
            const int                 h  = int(w % n_head);
            const prefill_head_plan & hp = plan.heads[size_t(h)];
            const int64_t             i0 = qb * prefill_qblock;
            const int64_t             nq = std::min<int64_t>(prefill_qblock, plan.n_q - i0);

            attn_tile_args a{};
            a.q               = q + (i0 * n_head + h) * head_dim;
            a.q_stride        = int64_t(n_head) * head_dim;
            a.o               = o + (i0 * n_head + h) * head_dim;
            a.o_stride        = int64_t(n_head) * head_dim;
            a.o_head_stride   = head_dim;
            a.lse             = lse ? lse + i0 * n_head + h : nullptr;
            a.lse_stride      = n_head;
            a.lse_head_stride = 1;
            a.n_q             = int(nq);
            a.n_group         = 1;
            a.head_dim        = head_dim;
            a.pos0            = plan.pos0 + i0;
            a.window          = 0;
            a.scale           = scale;
            a.k_pool          = kv.k_pool;
            a.v_pool          = kv.v_pool;
            a.pages           = kv.pages;
            a.page_elems      = kv.page_elems;
            a.kv_head         = h / n_group;
            a.n_kv_heads      = 1;
            a.k_begin         = 0;
            a.k_end           = a.pos0 + nq;
            a.sparse          = true;
            a.ranges          = reinterpret_cast<const int32_t *>(hp.ranges.data() + hp.range_off[qb]);
            a.n_ranges        = hp.range_off[qb + 1] - hp.range_off[qb];
            a.cols            = hp.cols.data() + hp.col_off[qb];
            a.n_cols          = hp.col_off[qb + 1] - hp.col_off[qb];
            a.scratch         = scratch;
            fn(a);
        }
    });
}

} // namespace lc
