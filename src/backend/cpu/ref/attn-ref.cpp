// Scalar double-precision references for attention: under an arbitrary mask, and dense causal attention as the
// causal (optionally windowed) mask; see attn-ref.h.
#include "backend/cpu/ref/attn-ref.h"

#include <cmath>
#include <vector>

#include "core/log.h"

namespace lc {

void attn_dense_ref(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale, float * o,
                    float * lse, thread_pool & pool, int64_t window) {
    attn_masked_ref(
        q, n_q, pos0, n_head, kv, scale,
        [&](int, int64_t i, int64_t t) { return window <= 0 || t > pos0 + i - window; }, o, lse, pool);
}

void attn_masked_ref(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                     const attn_visible_fn & visible, float * o, float * lse, thread_pool & pool) {
    LC_ASSERT(kv.n_head_kv > 0 && n_head % kv.n_head_kv == 0, "attn: n_head %d is not a multiple of n_head_kv %d",
              n_head, kv.n_head_kv);
    LC_ASSERT(pos0 >= 0 && kv.n_kv >= pos0 + n_q, "attn: queries up to position %lld but the cache holds %lld",
              (long long)(pos0 + n_q - 1), (long long)kv.n_kv);
    const int     head_dim = kv.head_dim;
    const int     n_group  = n_head / kv.n_head_kv;
    const int64_t n_rows   = n_q * n_head;
    pool.run([&](int ith, int nth) {
        int64_t r0, r1;
        thread_pool::split(n_rows, ith, nth, r0, r1);
        std::vector<double>  s, acc(static_cast<size_t>(head_dim));
        std::vector<int64_t> keys;
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t i  = r / n_head;
            const int     h  = int(r % n_head);
            const int     hk = h / n_group;
            keys.clear();
            for (int64_t t = 0; t <= pos0 + i; ++t)
                if (visible(h, i, t)) keys.push_back(t);
            const float * qr   = q + size_t(r) * size_t(head_dim);
            float *       orow = o + size_t(r) * size_t(head_dim);
            if (keys.empty()) {
                for (int d = 0; d < head_dim; ++d) orow[d] = 0.0f;
                if (lse) lse[r] = -INFINITY;
                continue;
            }
            s.resize(keys.size());
            double m = -INFINITY;
            for (size_t x = 0; x < keys.size(); ++x) {
                const fp16_t * kr  = kv.k_row(keys[x], hk);
                double         dot = 0.0;
                for (int d = 0; d < head_dim; ++d) dot += double(qr[d]) * double(fp16_to_fp32(kr[d]));
                s[x] = dot * double(scale);
                m    = std::fmax(m, s[x]);
            }
            double sum = 0.0;
            for (double & a : acc) a = 0.0;
            for (size_t x = 0; x < keys.size(); ++x) {
                const double   p  = std::exp(s[x] - m);
                const fp16_t * vr = kv.v_row(keys[x], hk);
                sum += p;
                for (int d = 0; d < head_dim; ++d) acc[size_t(d)] += p * double(fp16_to_fp32(vr[d]));
            }
            for (int d = 0; d < head_dim; ++d) orow[d] = float(acc[size_t(d)] / sum);
            if (lse) lse[r] = float(m + std::log(sum));
        }
    });
}

} // namespace lc
