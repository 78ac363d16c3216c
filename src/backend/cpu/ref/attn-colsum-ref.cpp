// Scalar double-precision reference for the attention column sums; see attn-colsum-ref.h.
#include "backend/cpu/ref/attn-colsum-ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/log.h"

namespace lc {

double attn_colsum_ref(const float * q, int64_t n_q, int64_t pos0, int n_head, const kv_view & kv, float scale,
                       const float * lse, bool per_kv_head, float * colsum, int64_t colsum_stride, thread_pool & pool,
                       int64_t window) {
    LC_ASSERT(kv.n_head_kv > 0 && n_head % kv.n_head_kv == 0, "attn: n_head %d is not a multiple of n_head_kv %d",
              n_head, kv.n_head_kv);
    LC_ASSERT(pos0 >= 0 && kv.n_kv >= pos0 + n_q, "attn: queries up to position %lld but the cache holds %lld",
              (long long)(pos0 + n_q - 1), (long long)kv.n_kv);
    const int           head_dim = kv.head_dim;
    const int           n_group  = n_head / kv.n_head_kv;
    const int           n_out    = per_kv_head ? kv.n_head_kv : n_head;
    std::vector<double> lse_err(size_t(n_out), 0.0);
    // Each thread owns whole output rows: the query heads that feed them.
    pool.run([&](int ith, int nth) {
        int64_t r0, r1;
        thread_pool::split(n_out, ith, nth, r0, r1);
        std::vector<double> acc(size_t(kv.n_kv)), s;
        for (int64_t r = r0; r < r1; ++r) {
            std::fill(acc.begin(), acc.end(), 0.0);
            const int h_begin = per_kv_head ? int(r) * n_group : int(r);
            const int h_end   = per_kv_head ? h_begin + n_group : h_begin + 1;
            for (int h = h_begin; h < h_end; ++h) {
                const int hk = h / n_group;
                for (int64_t i = 0; i < n_q; ++i) {
                    const int64_t p     = pos0 + i;
                    const int64_t first = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
                    const float * qr    = q + (i * n_head + h) * head_dim;
                    s.assign(size_t(p + 1 - first), 0.0);
                    double m = -INFINITY;
                    for (int64_t t = first; t <= p; ++t) {
                        const fp16_t * kr  = kv.k_row(t, hk);
                        double         dot = 0.0;
                        for (int d = 0; d < head_dim; ++d) dot += double(qr[d]) * double(fp16_to_fp32(kr[d]));
                        s[size_t(t - first)] = dot * double(scale);
                        m                    = std::max(m, s[size_t(t - first)]);
                    }
                    double sum = 0.0;
                    for (double x : s) sum += std::exp(x - m);
                    const double l = m + std::log(sum);
                    for (int64_t t = first; t <= p; ++t) acc[size_t(t)] += std::exp(s[size_t(t - first)] - l);
                    if (lse) {
                        const double e     = std::fabs(double(lse[i * n_head + h]) - l);
                        lse_err[size_t(r)] = std::max(lse_err[size_t(r)], std::isnan(e) ? INFINITY : e);
                    }
                }
            }
            for (int64_t t = 0; t < kv.n_kv; ++t)
                if (acc[size_t(t)] != 0.0) colsum[r * colsum_stride + t] += float(acc[size_t(t)]);
        }
    });
    return *std::max_element(lse_err.begin(), lse_err.end());
}

} // namespace lc
