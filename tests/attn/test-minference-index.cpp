// MInference index builders against brute-force versions on small random inputs: vertical/slash scores (double,
// explicit softmax matrix), top-v/top-s selection with forced sinks and local band, conversion to plans (key
// sets per query block), block-sparse pooling and selection, A-shape, the oracle's column choice; and at full
// budget every pattern's plan covers every causal pair, so the sparse kernel equals dense attention.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "attn/attn-sparse-prefill.h"
#include "attn/minference/index.h"
#include "backend/cpu/ref/attn-ref.h"
#include "common/attn-util.h"

namespace {

using lc::prefill_plan;
using lc::test::make_cache;
using lc::test::randn;

std::set<int64_t> item_keys(const prefill_plan & p, int h, int64_t b) {
    const lc::prefill_head_plan & hp = p.heads[size_t(h)];
    std::set<int64_t>             keys;
    for (int64_t x = hp.range_off[b]; x < hp.range_off[b + 1]; ++x)
        for (int64_t t = hp.ranges[x].begin; t < hp.ranges[x].end; ++t) keys.insert(t);
    for (int64_t x = hp.col_off[b]; x < hp.col_off[b + 1]; ++x) keys.insert(hp.cols[x]);
    return keys;
}

struct shape {
    int     n_head, n_head_kv, head_dim;
    int64_t n_q, pos0;
};

TEST(vslash, estimate_matches_double_reference) {
    for (const shape & s : {shape{2, 1, 64, 300, 0}, shape{4, 2, 64, 40, 250}, shape{3, 3, 128, 130, 70}}) {
        const int64_t N     = s.pos0 + s.n_q;
        auto          cache = make_cache(s.n_head_kv, s.head_dim, N, 3);
        const auto    q     = randn(size_t(s.n_q * s.n_head * s.head_dim), 1.0f, 4);
        const float   scale = 1.0f / std::sqrt(float(s.head_dim));
        const auto    kv    = cache.view();
        for (int h = 0; h < s.n_head; ++h) {
            std::vector<float> vert, slash, scratch;
            lc::vslash_estimate(q.data(), s.n_q, s.pos0, s.n_head, h, kv, scale, vert, slash, scratch);
            ASSERT_EQ(int64_t(vert.size()), N);
            ASSERT_EQ(int64_t(slash.size()), N);
            std::vector<double> rv(static_cast<size_t>(N), 0.0), rs(static_cast<size_t>(N), 0.0);
            const int64_t       nl = std::min<int64_t>(64, s.n_q);
            const int           hk = h / (s.n_head / s.n_head_kv);
            for (int64_t i = s.n_q - nl; i < s.n_q; ++i) {
                const int64_t       p = s.pos0 + i;
                std::vector<double> a(size_t(p + 1));
                double              m = -INFINITY, sum = 0;
                for (int64_t t = 0; t <= p; ++t) {
                    double dot = 0;
                    for (int d = 0; d < s.head_dim; ++d)
                        dot += double(q[size_t((i * s.n_head + h) * s.head_dim + d)]) *
                               double(lc::fp16_to_fp32(kv.k_row(t, hk)[d]));
                    a[size_t(t)] = dot * scale;
                    m            = std::max(m, a[size_t(t)]);
                }
                for (double & x : a) sum += (x = std::exp(x - m));
                for (int64_t t = 0; t <= p; ++t) {
                    rv[size_t(t)] += a[size_t(t)] / sum;
                    rs[size_t(p - t)] += a[size_t(t)] / sum;
                }
            }
            for (int64_t j = 0; j < N; ++j) {
                EXPECT_NEAR(vert[size_t(j)], rv[size_t(j)], 1e-5 + 1e-4 * rv[size_t(j)]) << "column " << j;
                EXPECT_NEAR(slash[size_t(j)], rs[size_t(j)], 1e-5 + 1e-4 * rs[size_t(j)]) << "offset " << j;
            }
        }
    }
}

TEST(vslash, select_matches_brute_force) {
    std::mt19937 rng(9);
    for (int rep = 0; rep < 20; ++rep) {
        const int64_t      N = 40 + int64_t(rng() % 400);
        std::vector<float> vert(static_cast<size_t>(N)), slash(static_cast<size_t>(N));
        // Few distinct values so that ties are common and the tie rule is exercised.
        for (auto & x : vert) x = float(rng() % 17);
        for (auto & x : slash) x = float(rng() % 13);
        const int64_t        v = int64_t(rng() % 200), s = int64_t(rng() % 300);
        std::vector<int32_t> cols, offs;
        lc::vslash_select(vert, slash, N, v, s, cols, offs);

        auto brute = [&](const std::vector<float> & sc, int64_t forced, int64_t k, int64_t k_min) {
            k = std::clamp<int64_t>(k, k_min, std::max(N, k_min));
            k = std::min(k, N);
            std::vector<int64_t> idx(static_cast<size_t>(N));
            std::iota(idx.begin(), idx.end(), 0);
            std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
                const bool fa = a < forced, fb = b < forced;
                if (fa != fb) return fa;
                if (fa) return a < b;
                return sc[size_t(a)] > sc[size_t(b)];
            });
            idx.resize(size_t(k));
            return std::set<int64_t>(idx.begin(), idx.end());
        };
        const std::set<int64_t> want_cols = brute(vert, 30, v, 30);
        const std::set<int64_t> want_offs = brute(slash, 100, s, 50);
        EXPECT_EQ(std::set<int64_t>(cols.begin(), cols.end()), want_cols) << "rep " << rep;
        EXPECT_EQ(std::set<int64_t>(offs.begin(), offs.end()), want_offs) << "rep " << rep;
        EXPECT_TRUE(std::is_sorted(cols.begin(), cols.end()));
        EXPECT_TRUE(std::is_sorted(offs.begin(), offs.end(), std::greater<int32_t>()));
    }
}

TEST(vslash, plan_matches_brute_force_key_sets) {
    std::mt19937 rng(21);
    for (int rep = 0; rep < 10; ++rep) {
        const int64_t     n_q = 1 + int64_t(rng() % 300), pos0 = int64_t(rng() % 300), N = pos0 + n_q;
        std::set<int32_t> cs, os;
        for (int i = 0; i < 40; ++i) cs.insert(int32_t(rng() % uint64_t(N)));
        for (int i = 0; i < 15; ++i) os.insert(int32_t(rng() % uint64_t(N)));
        os.insert(0);
        std::vector<int32_t> cols(cs.begin(), cs.end()), offs(os.rbegin(), os.rend());
        prefill_plan         plan;
        plan.reset(n_q, pos0, 1);
        lc::vslash_plan_head(cols, offs, plan, 0);
        ASSERT_TRUE(lc::prefill_plan_valid(plan)) << "rep " << rep;
        for (int64_t b = 0; b < plan.n_qblk(); ++b) {
            const int64_t     p0 = plan.q_first(b), p1 = plan.q_last(b);
            std::set<int64_t> want;
            for (int64_t t = 0; t <= p1; ++t) {
                bool in = cs.count(int32_t(t)) > 0;
                for (int32_t o : offs) in = in || (p0 - o <= t && t <= p1 - o);
                if (in) want.insert(t);
            }
            EXPECT_EQ(item_keys(plan, 0, b), want) << "rep " << rep << " block " << b;
        }
    }
}

TEST(block_sparse, estimate_matches_brute_force) {
    for (const shape & s : {shape{2, 1, 64, 300, 0}, shape{4, 2, 64, 200, 130}, shape{3, 1, 128, 64, 512}}) {
        const int64_t N     = s.pos0 + s.n_q;
        auto          cache = make_cache(s.n_head_kv, s.head_dim, N, 5);
        const auto    q     = randn(size_t(s.n_q * s.n_head * s.head_dim), 1.0f, 6);
        const auto    kv    = cache.view();
        for (int64_t k_b : {1, 3, 100}) {
            for (int h = 0; h < s.n_head; ++h) {
                std::vector<std::vector<int32_t>> blocks;
                std::vector<float>                scratch;
                lc::block_estimate(q.data(), s.n_q, s.pos0, s.n_head, h, kv, k_b, blocks, scratch);
                const int hk = h / (s.n_head / s.n_head_kv);
                for (int64_t b = 0; b * 64 < s.n_q; ++b) {
                    const int64_t       i1 = std::min<int64_t>(s.n_q, (b + 1) * 64);
                    std::vector<double> qp(size_t(s.head_dim), 0.0);
                    for (int64_t i = b * 64; i < i1; ++i)
                        for (int d = 0; d < s.head_dim; ++d)
                            qp[size_t(d)] += q[size_t((i * s.n_head + h) * s.head_dim + d)] / double(i1 - b * 64);
                    const int64_t       last = s.pos0 + i1 - 1;
                    std::vector<double> score;
                    for (int64_t kb = 0; kb * 64 <= last; ++kb) {
                        const int64_t t1  = std::min<int64_t>(N, (kb + 1) * 64);
                        double        acc = 0;
                        for (int d = 0; d < s.head_dim; ++d) {
                            double kd = 0;
                            for (int64_t t = kb * 64; t < t1; ++t) kd += lc::fp16_to_fp32(kv.k_row(t, hk)[d]);
                            acc += qp[size_t(d)] * kd / double(t1 - kb * 64);
                        }
                        score.push_back(acc);
                    }
                    std::vector<int32_t> idx(score.size());
                    std::iota(idx.begin(), idx.end(), 0);
                    std::stable_sort(idx.begin(), idx.end(),
                                     [&](int32_t a, int32_t c) { return score[size_t(a)] > score[size_t(c)]; });
                    idx.resize(std::min<size_t>(idx.size(), size_t(k_b)));
                    std::sort(idx.begin(), idx.end());
                    EXPECT_EQ(blocks[size_t(b)], idx) << "k_b " << k_b << " head " << h << " block " << b;
                }
            }
        }
    }
}

TEST(a_shape, plan_matches_definition_at_block_granularity) {
    prefill_plan plan;
    plan.reset(300, 200, 1);
    lc::a_shape_plan_head(10, 100, plan, 0);
    ASSERT_TRUE(lc::prefill_plan_valid(plan));
    for (int64_t b = 0; b < plan.n_qblk(); ++b) {
        const int64_t     p0 = plan.q_first(b), p1 = plan.q_last(b);
        std::set<int64_t> want;
        for (int64_t t = 0; t <= p1; ++t)
            if (t < 10 || t > p0 - 100) want.insert(t);
        EXPECT_EQ(item_keys(plan, 0, b), want) << "block " << b;
    }
}

// The oracle keeps, per 64-query block, ceil(f * n) columns whose summed attention probability (double, explicit
// softmax rows) is at least that of every column it leaves out, up to float rounding.
TEST(oracle, keeps_the_heaviest_columns_of_each_block) {
    for (const shape & s : {shape{2, 1, 64, 200, 0}, shape{4, 2, 64, 150, 90}}) {
        const int64_t N     = s.pos0 + s.n_q;
        auto          cache = make_cache(s.n_head_kv, s.head_dim, N, 11);
        const auto    q     = randn(size_t(s.n_q * s.n_head * s.head_dim), 1.5f, 12);
        const float   scale = 1.0f / std::sqrt(float(s.head_dim));
        const auto    kv    = cache.view();
        for (double f : {0.1, 0.35}) {
            prefill_plan plan;
            plan.reset(s.n_q, s.pos0, s.n_head);
            for (int h = 0; h < s.n_head; ++h) {
                std::vector<float>   a, b, scratch;
                std::vector<int32_t> cols;
                lc::oracle_plan_head(q.data(), s.n_q, s.pos0, s.n_head, h, kv, scale, f, plan, a, b, scratch, cols);
            }
            ASSERT_TRUE(lc::prefill_plan_valid(plan));
            for (int h = 0; h < s.n_head; ++h) {
                const int hk = h / (s.n_head / s.n_head_kv);
                for (int64_t blk = 0; blk < plan.n_qblk(); ++blk) {
                    const int64_t       p0 = plan.q_first(blk), p1 = plan.q_last(blk), n = p1 + 1;
                    std::vector<double> mass(size_t(n), 0.0);
                    for (int64_t p = p0; p <= p1; ++p) {
                        const int64_t       i = p - s.pos0;
                        std::vector<double> a(size_t(p + 1));
                        double              m = -INFINITY, sum = 0;
                        for (int64_t t = 0; t <= p; ++t) {
                            double dot = 0;
                            for (int d = 0; d < s.head_dim; ++d)
                                dot += double(q[size_t((i * s.n_head + h) * s.head_dim + d)]) *
                                       double(lc::fp16_to_fp32(kv.k_row(t, hk)[d]));
                            m = std::max(m, a[size_t(t)] = dot * scale);
                        }
                        for (double & x : a) sum += (x = std::exp(x - m));
                        for (int64_t t = 0; t <= p; ++t) mass[size_t(t)] += a[size_t(t)] / sum;
                    }
                    const std::set<int64_t> kept = item_keys(plan, h, blk);
                    ASSERT_EQ(int64_t(kept.size()), int64_t(std::ceil(f * double(n)))) << "block " << blk;
                    double lightest_kept = INFINITY, heaviest_left = 0;
                    for (int64_t t = 0; t < n; ++t)
                        if (kept.count(t))
                            lightest_kept = std::min(lightest_kept, mass[size_t(t)]);
                        else
                            heaviest_left = std::max(heaviest_left, mass[size_t(t)]);
                    EXPECT_GE(lightest_kept, heaviest_left - 1e-5) << "head " << h << " block " << blk;
                }
            }
        }
    }
}

// At full budget each pattern covers every causal pair: the sparse kernel then equals dense attention.
TEST(minference_patterns, full_budget_equals_dense) {
    lc::thread_pool    pool(2);
    const int          n_head = 4, n_head_kv = 2, D = 64;
    const int64_t      n_q = 333, pos0 = 100, N = pos0 + n_q;
    auto               cache = make_cache(n_head_kv, D, N, 8);
    const auto         q     = randn(size_t(n_q * n_head * D), 1.0f, 9);
    const float        scale = 0.125f;
    std::vector<float> o_ref(size_t(n_q * n_head * D)), lse_ref(size_t(n_q * n_head));
    lc::attn_dense_ref(q.data(), n_q, pos0, n_head, cache.view(), scale, o_ref.data(), lse_ref.data(), pool);

    for (int pattern = 0; pattern < 4; ++pattern) {
        prefill_plan plan;
        plan.reset(n_q, pos0, n_head);
        for (int h = 0; h < n_head; ++h) {
            std::vector<float> a, b, scratch;
            if (pattern == 0) {
                std::vector<int32_t> cols, offs;
                lc::vslash_estimate(q.data(), n_q, pos0, n_head, h, cache.view(), scale, a, b, scratch);
                lc::vslash_select(a, b, N, N, N, cols, offs);
                lc::vslash_plan_head(cols, offs, plan, h);
            } else if (pattern == 1) {
                std::vector<std::vector<int32_t>> blocks;
                lc::block_estimate(q.data(), n_q, pos0, n_head, h, cache.view(), (N + 63) / 64, blocks, scratch);
                lc::block_plan_head(blocks, plan, h);
            } else if (pattern == 2) {
                lc::a_shape_plan_head(N, N, plan, h);
            } else {
                std::vector<int32_t> cols;
                lc::oracle_plan_head(q.data(), n_q, pos0, n_head, h, cache.view(), scale, 1.0, plan, a, b, scratch,
                                     cols);
            }
        }
        ASSERT_TRUE(lc::prefill_plan_valid(plan));
        const auto c = lc::prefill_plan_count(plan);
        EXPECT_EQ(c.computed, c.causal) << "pattern " << pattern;
        std::vector<float> o(o_ref.size()), lse(lse_ref.size());
        lc::attn_sparse_prefill(plan, q.data(), cache.view(), scale, o.data(), lse.data(), pool);
        const auto e = lc::test::compare(o, o_ref, lse, lse_ref);
        EXPECT_LT(e.nmse, 1e-10) << "pattern " << pattern;
        EXPECT_LT(e.max_abs, 5e-5) << "pattern " << pattern;
        EXPECT_LT(e.lse_abs, 5e-5) << "pattern " << pattern;
    }
}

} // namespace
