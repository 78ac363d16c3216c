// Attention column sums (attn/attn-stats.h): every available kernel (AVX2, AVX-512) against the scalar double
// reference (which recomputes each row's softmax from scratch) over chunked prefill, decode, GQA, windows and
// head_dim 64/128/256; properties that hold whatever the reference says: each query's probabilities sum to 1,
// unseen columns stay exactly untouched, two chunks accumulate to one call, results do not depend on threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-stats.h"
#include "backend/cpu/ref/attn-colsum-ref.h"
#include "common/attn-util.h"
#include "core/cpu-features.h"

namespace {

using lc::test::isas;
using lc::test::make_cache;
using lc::test::randn;

// lse of attn_dense against the reference's own lse: the dense test measures < 1e-5 with N(0, 1) scores.
constexpr double k_max_lse_abs = 5e-5;
// A probability carries the error of its score (f32 dot product, ~1e-7 |score|) and of the given lse (< 5e-5
// absolute, measured ~1e-6), i.e. a relative error of a few 1e-6; a column sums up to n_q of them.
// Threshold: |opt - ref| <= 1e-4 * (|ref| + 1e-3) per column, far below any masking or indexing error (which
// moves a column by a whole probability, ~1 / (keys seen) >= 1e-3 here).
constexpr double k_rel = 1e-4;
constexpr double k_abs = 1e-7;

struct problem {
    int                  n_head, n_head_kv, head_dim;
    int64_t              n_q, pos0, n_kv, window;
    lc::test::test_cache cache;
    std::vector<float>   q, lse;
    float                scale;
};

problem make_problem(int n_head, int n_head_kv, int head_dim, int64_t n_q, int64_t pos0, int64_t n_kv, int64_t window,
                     uint32_t seed, lc::thread_pool & pool) {
    problem p{n_head,
              n_head_kv,
              head_dim,
              n_q,
              pos0,
              n_kv,
              window,
              make_cache(n_head_kv, head_dim, n_kv, seed),
              {},
              {},
              1.0f / std::sqrt(float(head_dim))};
    p.q = randn(size_t(n_q * n_head * head_dim), 1.0f, seed + 7);
    std::vector<float> o(p.q.size());
    p.lse.resize(size_t(n_q * n_head));
    lc::attn_dense(p.q.data(), n_q, pos0, n_head, p.cache.view(), p.scale, o.data(), p.lse.data(), pool, window);
    return p;
}

std::string describe(const problem & p, lc::cpu_isa isa, bool per_kv_head) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s n_head=%d n_head_kv=%d head_dim=%d n_q=%lld pos0=%lld n_kv=%lld window=%lld %s",
                  lc::cpu_isa_name(isa), p.n_head, p.n_head_kv, p.head_dim, (long long)p.n_q, (long long)p.pos0,
                  (long long)p.n_kv, (long long)p.window, per_kv_head ? "per-kv-head" : "per-head");
    return buf;
}

int n_rows(const problem & p, bool per_kv_head) {
    return per_kv_head ? p.n_head_kv : p.n_head;
}

// colsum starts from `init` (to check +=) with a stride past n_kv whose tail must stay untouched.
std::vector<float> run_opt(lc::cpu_isa isa, const problem & p, bool per_kv_head, int64_t stride,
                           const std::vector<float> & init, lc::thread_pool & pool) {
    std::vector<float> c = init;
    lc::attn_colsum_isa(isa, p.q.data(), p.n_q, p.pos0, p.n_head, p.cache.view(), p.scale, p.lse.data(), per_kv_head,
                        c.data(), stride, pool, p.window);
    return c;
}

// Whether every column's increment a - init is within k_abs + k_rel |b - init| of b - init, plus the f32 rounding
// of adding it to init (2^-23 (|init| + |b - init|)); worst: the largest deviation as a fraction of its tolerance.
bool close(const std::vector<float> & a, const std::vector<float> & b, const std::vector<float> & init,
           double & worst) {
    worst = 0;
    for (size_t x = 0; x < a.size(); ++x) {
        const double xb  = double(b[x]) - double(init[x]);
        const double d   = std::fabs(double(a[x]) - double(b[x]));
        const double tol = k_abs + k_rel * std::fabs(xb) + 0x1p-23 * (std::fabs(double(init[x])) + std::fabs(xb));
        worst            = std::max(worst, std::isnan(d) ? INFINITY : d / tol);
    }
    return worst <= 1.0;
}

} // namespace

TEST(attn_stats, matches_reference) {
    lc::thread_pool pool(2);
    std::mt19937    rng(1234);
    const int64_t   n_qs[]      = {1, 7, 64, 200};
    const int       head_dims[] = {64, 128, 256};
    const int       groups[]    = {1, 3, 4};
    const int64_t   windows[]   = {0, 100};
    int             combo       = 0;
    double          worst_all   = 0;
    double          worst_lse   = 0;
    for (int64_t n_q : n_qs)
        for (int head_dim : head_dims)
            for (int G : groups)
                for (int64_t window : windows) {
                    ++combo;
                    const int     n_head_kv = G == 4 ? 1 : 2;
                    const int64_t pos0      = std::uniform_int_distribution<int64_t>(1, 300)(rng);
                    int64_t       n_kv      = pos0 + n_q + std::uniform_int_distribution<int64_t>(0, 70)(rng);
                    if (n_kv % 64 == 0) ++n_kv;
                    problem p = make_problem(G * n_head_kv, n_head_kv, head_dim, n_q, pos0, n_kv, window,
                                             uint32_t(100 + combo), pool);
                    // Alternate which layout the reference checks so the suite stays fast; the other is tied to it
                    // by the group-sum check below.
                    const bool               ref_kv = combo % 2 == 0;
                    const int64_t            stride = n_kv + 3;
                    const std::vector<float> init   = randn(size_t(n_rows(p, ref_kv) * stride), 1.0f, uint32_t(combo));
                    std::vector<float>       ref    = init;
                    const double lse_err = lc::attn_colsum_ref(p.q.data(), n_q, pos0, p.n_head, p.cache.view(), p.scale,
                                                               p.lse.data(), ref_kv, ref.data(), stride, pool, window);
                    worst_lse            = std::max(worst_lse, lse_err);
                    EXPECT_LT(lse_err, k_max_lse_abs)
                        << "attn_dense lse vs reference " << describe(p, lc::cpu_isa::AVX2, ref_kv);
                    for (lc::cpu_isa isa : isas()) {
                        const std::vector<float> c = run_opt(isa, p, ref_kv, stride, init, pool);
                        double                   worst;
                        EXPECT_TRUE(close(c, ref, init, worst))
                            << describe(p, isa, ref_kv) << " worst / tolerance " << worst;
                        worst_all = std::max(worst_all, worst);

                        // The other layout: each KV head's row is the sum of its group's rows.
                        const std::vector<float> zero_h(size_t(p.n_head * stride), 0.0f);
                        const std::vector<float> zero_k(size_t(p.n_head_kv * stride), 0.0f);
                        const std::vector<float> ch = run_opt(isa, p, false, stride, zero_h, pool);
                        const std::vector<float> ck = run_opt(isa, p, true, stride, zero_k, pool);
                        std::vector<float>       sum(zero_k.size(), 0.0f);
                        for (int h = 0; h < p.n_head; ++h)
                            for (int64_t t = 0; t < stride; ++t)
                                sum[size_t((h / G) * stride + t)] += ch[size_t(h * stride + t)];
                        EXPECT_TRUE(close(ck, sum, zero_k, worst)) << "group sum " << describe(p, isa, true);
                    }
                }
    std::printf("worst deviation from the reference as a fraction of the tolerance %.3f, worst lse deviation %.2e\n",
                worst_all, worst_lse);
}

TEST(attn_stats, long_context_matches_reference) {
    // Enough pages that items take all KV heads of a page range (the dispatcher splits heads only when pages are
    // few): decode (the row layout, keys split across threads) and a late prefill chunk (the transposed layout).
    lc::thread_pool pool(3);
    for (int64_t n_q : {int64_t(1), int64_t(100)})
        for (int64_t window : {int64_t(0), int64_t(1000)}) {
            problem p = make_problem(9, 3, 64, n_q, 3000 - n_q, 3000, window, uint32_t(77 + n_q), pool);
            for (bool per_kv : {false, true}) {
                const int64_t            stride = p.n_kv;
                const std::vector<float> zero(size_t(n_rows(p, per_kv) * stride), 0.0f);
                std::vector<float>       ref = zero;
                EXPECT_LT(lc::attn_colsum_ref(p.q.data(), n_q, p.pos0, p.n_head, p.cache.view(), p.scale, p.lse.data(),
                                              per_kv, ref.data(), stride, pool, window),
                          k_max_lse_abs);
                for (lc::cpu_isa isa : isas()) {
                    double worst;
                    EXPECT_TRUE(close(run_opt(isa, p, per_kv, stride, zero, pool), ref, zero, worst))
                        << describe(p, isa, per_kv) << " worst / tolerance " << worst;
                }
            }
        }
}

TEST(attn_stats, rows_sum_to_n_q_and_unseen_columns_stay_zero) {
    lc::thread_pool pool(2);
    struct shape {
        int     n_head, n_head_kv, head_dim;
        int64_t n_q, pos0, n_kv, window;
    };
    const shape shapes[] = {
        {9, 3, 64, 200, 333, 600, 0}, {9, 3, 64, 200, 333, 600, 100}, {4, 1, 256, 64, 1000, 1100, 512},
        {12, 3, 128, 7, 70, 100, 0},  {8, 2, 64, 1, 900, 950, 128},   {6, 2, 64, 150, 0, 150, 40},
        {3, 3, 128, 513, 10, 600, 0},
    };
    uint32_t seed = 500;
    for (const shape & s : shapes) {
        problem p = make_problem(s.n_head, s.n_head_kv, s.head_dim, s.n_q, s.pos0, s.n_kv, s.window, ++seed, pool);
        const int64_t stride = s.n_kv + 16;
        const int64_t first  = s.window > 0 ? std::max<int64_t>(0, s.pos0 - s.window + 1) : 0; // first seen key
        const int64_t last   = s.pos0 + s.n_q - 1;                                             // last seen key
        for (lc::cpu_isa isa : isas())
            for (bool per_kv : {false, true}) {
                const std::vector<float> c =
                    run_opt(isa, p, per_kv, stride, std::vector<float>(size_t(n_rows(p, per_kv) * stride), 0.0f), pool);
                const int per_row = per_kv ? s.n_head / s.n_head_kv : 1; // query heads summed in a row
                for (int r = 0; r < n_rows(p, per_kv); ++r) {
                    double total = 0;
                    for (int64_t t = 0; t < stride; ++t) {
                        const float v = c[size_t(r * stride + t)];
                        if (t < first || t > last) {
                            EXPECT_EQ(v, 0.0f)
                                << "unseen column " << t << " row " << r << " " << describe(p, isa, per_kv);
                        } else {
                            EXPECT_GT(v, 0.0f)
                                << "seen column " << t << " row " << r << " " << describe(p, isa, per_kv);
                        }
                        total += v;
                    }
                    const double want = double(s.n_q) * per_row;
                    EXPECT_NEAR(total, want, 1e-4 * want) << "row " << r << " " << describe(p, isa, per_kv);
                }
            }
    }
}

TEST(attn_stats, two_chunks_accumulate_to_one_call) {
    lc::thread_pool pool(2);
    for (int64_t window : {int64_t(0), int64_t(100)}) {
        problem       p      = make_problem(9, 3, 64, 200, 130, 400, window, 31, pool);
        const int64_t stride = p.n_kv;
        const int64_t n1     = 90;
        const int     D      = p.head_dim;
        for (lc::cpu_isa isa : isas())
            for (bool per_kv : {false, true}) {
                // From zero: a random start would add its own f32 rounding (~6e-8 |init|) to the comparison.
                const std::vector<float> init(size_t(n_rows(p, per_kv) * stride), 0.0f);
                const std::vector<float> one = run_opt(isa, p, per_kv, stride, init, pool);
                std::vector<float>       two = init;
                lc::attn_colsum_isa(isa, p.q.data(), n1, p.pos0, p.n_head, p.cache.view(), p.scale, p.lse.data(),
                                    per_kv, two.data(), stride, pool, window);
                lc::attn_colsum_isa(isa, p.q.data() + n1 * p.n_head * D, p.n_q - n1, p.pos0 + n1, p.n_head,
                                    p.cache.view(), p.scale, p.lse.data() + n1 * p.n_head, per_kv, two.data(), stride,
                                    pool, window);
                double worst = 0;
                for (size_t x = 0; x < one.size(); ++x)
                    worst = std::max(worst,
                                     std::fabs(double(one[x]) - double(two[x])) / (std::fabs(double(one[x])) + 1e-3));
                EXPECT_LT(worst, 1e-5) << describe(p, isa, per_kv);
            }
    }
}

TEST(attn_stats, same_bits_for_any_thread_count) {
    for (lc::cpu_isa isa : isas())
        for (int64_t n_q : {int64_t(1), int64_t(300)}) {
            lc::thread_pool          pool1(1);
            problem                  p      = make_problem(4, 1, 256, n_q, 700, 1000, 0, 41, pool1);
            const int64_t            stride = p.n_kv;
            const std::vector<float> zero(size_t(p.n_head * stride), 0.0f);
            const std::vector<float> c1 = run_opt(isa, p, false, stride, zero, pool1);
            for (int nth : {2, 3}) {
                lc::thread_pool pool(nth);
                EXPECT_EQ(run_opt(isa, p, false, stride, zero, pool), c1)
                    << describe(p, isa, false) << " threads " << nth;
            }
        }
}
