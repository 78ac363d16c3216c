// Attention column-sum dispatcher: packs the pre-scaled queries (transposed) and the base-2 lse once, cuts the
// keys into (KV heads, page range) items that own their columns, and runs the ISA kernel on each from a shared
// atomic counter. See attn-stats.h.
#include "attn/attn-stats.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/cpu/attn-colsum.h"
#include "core/log.h"

namespace lc {

namespace {

using colsum_fn = void (*)(const attn_colsum_args &);

constexpr float k_log2e = 1.44269504088896340736f;
// Aim for this many items per thread so the dynamic schedule evens out unequal items (under causality the pages
// near the diagonal are seen by fewer queries).
constexpr int64_t k_items_per_thread = 8;
// Packing below this many floats runs on the calling thread (decode: a pool wake-up costs more).
constexpr int64_t k_pack_serial_max = 1 << 15;

float * aligned_floats(std::vector<float> & buf, size_t n) {
    if (buf.size() < n + 16) buf.resize(n + 16);
    const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<float *>((p + 63) & ~uintptr_t(63));
}

} // namespace

void attn_colsum(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                 const float * lse, bool per_kv_head, float * colsum, int64_t colsum_stride, thread_pool & pool,
                 int64_t window) {
    attn_colsum_isa(cpu_isa_best(), q, n_q, pos0, n_head, kv, scale, lse, per_kv_head, colsum, colsum_stride, pool,
                    window);
}

void attn_colsum_isa(cpu_isa isa, const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv,
                     float scale, const float * lse, bool per_kv_head, float * colsum, int64_t colsum_stride,
                     thread_pool & pool, int64_t window) {
    LC_ASSERT(window >= 0, "attn colsum: window %lld must be positive or attn_window_none", (long long)window);
    LC_ASSERT(kv.n_head_kv > 0 && n_head % kv.n_head_kv == 0,
              "attn colsum: n_head %d is not a multiple of n_head_kv %d", n_head, kv.n_head_kv);
    LC_ASSERT(pos0 >= 0 && n_q >= 0 && kv.n_kv >= pos0 + n_q,
              "attn colsum: queries up to position %lld but the cache holds %lld tokens", (long long)(pos0 + n_q - 1),
              (long long)kv.n_kv);
    LC_ASSERT(pos0 + n_q < INT32_MAX, "attn colsum: position %lld beyond 2^31", (long long)(pos0 + n_q));
    LC_ASSERT(colsum_stride >= kv.n_kv, "attn colsum: row stride %lld below n_kv %lld", (long long)colsum_stride,
              (long long)kv.n_kv);
    LC_ASSERT(cpu_isa_available(isa), "attn colsum: %s kernels are not available on this machine or build",
              cpu_isa_name(isa));
    if (n_q == 0) return;

    colsum_fn fn = attn_colsum_avx2;
#ifdef LC_HAVE_AVX512_KERNELS
    if (isa == cpu_isa::AVX512) fn = attn_colsum_avx512;
#endif

    const int     n_head_kv = kv.n_head_kv;
    const int     D         = kv.head_dim;
    const int     G         = n_head / n_head_kv;
    const int     nth       = pool.n_threads();
    const int64_t nqp       = (n_q + 15) / 16 * 16;

    // qt [n_head][D][nqp], lse2 [n_head][nqp], lim [nqp], nlo [nqp], qr [n_head][n_q][D]; every part starts
    // 64-byte aligned (nqp is a multiple of 16).
    thread_local std::vector<float> pack_buf;
    float *     qt   = aligned_floats(pack_buf, size_t(n_head) * size_t(D + 1) * size_t(nqp) + 2 * size_t(nqp) +
                                                    size_t(n_head) * size_t(n_q) * size_t(D));
    float *     lse2 = qt + int64_t(n_head) * D * nqp;
    int32_t *   lim  = reinterpret_cast<int32_t *>(lse2 + int64_t(n_head) * nqp);
    int32_t *   nlo  = lim + nqp;
    float *     qr   = reinterpret_cast<float *>(nlo + nqp);
    const float qs   = scale * k_log2e;
    // Row-major first, then transposed 16 queries at a time so that the writes of qt are whole cache lines.
    auto pack = [&](int64_t h0, int64_t h1) {
        for (int64_t h = h0; h < h1; ++h) {
            for (int64_t i = 0; i < n_q; ++i) {
                const float * src = q + (i * n_head + h) * D;
                float *       dst = qr + (h * n_q + i) * D;
                for (int d = 0; d < D; ++d) dst[d] = src[d] * qs;
            }
            float * qh = qt + h * D * nqp;
            for (int64_t i0 = 0; i0 < nqp; i0 += 16) {
                const int64_t ni = std::min<int64_t>(16, n_q - i0); // real queries of the block (may be <= 0)
                for (int d = 0; d < D; ++d) {
                    float * out = qh + d * nqp + i0;
                    for (int64_t ii = 0; ii < 16; ++ii) out[ii] = ii < ni ? qr[(h * n_q + i0 + ii) * D + d] : 0.0f;
                }
            }
            for (int64_t i = 0; i < nqp; ++i) // padding lanes: +inf, probability exactly 0
                lse2[h * nqp + i] = i < n_q ? lse[i * n_head + h] * k_log2e : INFINITY;
        }
    };
    for (int64_t i = 0; i < nqp; ++i) {
        lim[i] = i < n_q ? int32_t(pos0 + i) : INT32_MIN;
        nlo[i] = window > 0 && i < n_q ? int32_t(std::min<int64_t>(window - 1 - (pos0 + i), INT32_MAX)) : INT32_MAX;
    }
    if (int64_t(n_head) * D * nqp <= k_pack_serial_max || nth == 1) {
        pack(0, n_head);
    } else {
        pool.run([&](int ith, int nth_run) {
            int64_t h0, h1;
            thread_pool::split(n_head, ith, nth_run, h0, h1);
            pack(h0, h1);
        });
    }

    // Keys some query sees: from the first query's window start to the last query.
    const int64_t k_lo    = window > 0 ? std::max<int64_t>(0, pos0 - window + 1) : 0;
    const int64_t k_hi    = pos0 + n_q;
    const int64_t pg0     = k_lo / kv_page_tokens;
    const int64_t n_pages = (k_hi + kv_page_tokens - 1) / kv_page_tokens - pg0;
    const int64_t want    = k_items_per_thread * nth;
    // Items walk whole pages (all KV heads) so that reads are contiguous; heads are split across items only when
    // the pages are too few to give every thread its share (short prefill chunks at the start of a sequence).
    const int64_t n_hg     = n_pages >= want ? 1 : n_head_kv;
    const int64_t hpg      = n_head_kv / n_hg;
    const int64_t span     = std::max<int64_t>(1, (n_pages * n_hg + want - 1) / want); // pages per item
    const int64_t n_spans  = (n_pages + span - 1) / span;
    const int64_t n_work   = n_spans * n_hg;
    const size_t  scratchn = attn_colsum_scratch_floats(G, D);

    std::atomic<int64_t> next{0};
    auto                 work = [&](int, int) {
        thread_local std::vector<float> buf;
        float *                         scratch = aligned_floats(buf, scratchn);
        for (;;) {
            const int64_t w = next.fetch_add(1, std::memory_order_relaxed);
            if (w >= n_work) break;
            // Early pages first: every query sees them, so the cheap pages near the diagonal fill the tail.
            const int64_t s  = w / n_hg;
            const int     hk = int(w % n_hg * hpg);

            attn_colsum_args a{};
            a.qt            = qt + int64_t(hk) * G * D * nqp;
            a.qr            = qr + int64_t(hk) * G * n_q * D;
            a.lse2          = lse2 + int64_t(hk) * G * nqp;
            a.lim           = lim;
            a.nlo           = nlo;
            a.nqp           = nqp;
            a.n_q           = int(n_q);
            a.n_group       = G;
            a.head_dim      = D;
            a.pos0          = pos0;
            a.window        = window;
            a.k_pool        = kv.k_pool;
            a.pages         = kv.pages;
            a.page_elems    = kv.page_elems;
            a.kv_head       = hk;
            a.n_kv_heads    = int(hpg);
            a.k_begin       = std::max(k_lo, (pg0 + s * span) * kv_page_tokens);
            a.k_end         = std::min(k_hi, (pg0 + (s + 1) * span) * kv_page_tokens);
            a.per_kv_head   = per_kv_head;
            a.colsum        = colsum + (per_kv_head ? int64_t(hk) : int64_t(hk) * G) * colsum_stride;
            a.colsum_stride = colsum_stride;
            a.scratch       = scratch;
            fn(a);
        }
    };
    if (n_work == 1 || nth == 1) {
        work(0, 1);
    } else {
        pool.run(work);
    }
}

} // namespace lc
