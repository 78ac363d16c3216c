// The shared decode-selection pieces and the exact top-k and Quest methods, against brute force: the dense
// part by hand; top-k selection against a full sort; exact scores against the scalar reference; Quest page
// bounds, page scores (and that they bound every q . k of the page) and page choice against brute force,
// metadata taken in step by step equal to taken at once, truncation; both methods at full budget equal dense.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-sparse-decode.h"
#include "attn/decode/quest.h"
#include "attn/decode/topk.h"
#include "common/attn-util.h"

namespace {

using lc::key_range;
using lc::test::make_cache;
using lc::test::randn;

std::vector<std::pair<int, int>> pairs(const std::vector<key_range> & r) {
    std::vector<std::pair<int, int>> v;
    for (const key_range & x : r) v.push_back({x.begin, x.end});
    return v;
}

TEST(decode_dense_part, worked_examples) {
    std::vector<key_range> r;
    lc::decode_dense_part(1000, 4, 64, r);
    EXPECT_EQ(pairs(r), (std::vector<std::pair<int, int>>{{0, 4}, {936, 1000}}));
    lc::decode_dense_part(60, 4, 64, r); // overlap: one range
    EXPECT_EQ(pairs(r), (std::vector<std::pair<int, int>>{{0, 60}}));
    lc::decode_dense_part(68, 4, 64, r); // touching: one range
    EXPECT_EQ(pairs(r), (std::vector<std::pair<int, int>>{{0, 68}}));
    lc::decode_dense_part(1000, 0, 0, r);
    EXPECT_TRUE(r.empty());
    lc::decode_dense_part(1000, 0, 10, r);
    EXPECT_EQ(pairs(r), (std::vector<std::pair<int, int>>{{990, 1000}}));
    lc::decode_dense_part(0, 4, 64, r);
    EXPECT_TRUE(r.empty());
}

TEST(decode_topk, equals_a_full_sort) {
    std::mt19937    rng(5);
    lc::thread_pool pool(3);
    for (int trial = 0; trial < 400; ++trial) {
        const int64_t      n = 1 + rng() % (trial < 300 ? 300 : 40000);
        std::vector<float> s(static_cast<size_t>(n));
        for (auto & x : s) x = float(int(rng() % 20)) - 10.0f; // many ties
        if (trial % 3 == 0) s[size_t(rng() % n)] = NAN;
        if (trial % 5 == 0) s[size_t(rng() % n)] = -INFINITY;
        if (trial % 7 == 0) s[size_t(rng() % n)] = 1e30f; // a far outlier squeezes the histogram
        if (trial % 11 == 0)
            for (auto & x : s) x = float(rng() % 100000) * 1e-3f; // few ties
        std::vector<key_range> dense;
        lc::decode_dense_part(n, int(rng() % 5), int(rng() % 20), dense);
        const int64_t        k = int64_t(rng() % (n + 2));
        std::vector<int32_t> got, got_pool;
        lc::decode_topk(s.data(), n, k, dense, got);
        lc::decode_topk(s.data(), n, k, dense, got_pool, &pool); // long vectors split across 3 threads
        // Brute force: eligible positions sorted by (finite score desc, NaN last, position asc), first k, sorted.
        std::vector<int32_t> el;
        for (int64_t t = 0; t < n; ++t) {
            bool in = false;
            for (const key_range & r : dense) in = in || (t >= r.begin && t < r.end);
            if (!in) el.push_back(int32_t(t));
        }
        std::stable_sort(el.begin(), el.end(), [&](int32_t a, int32_t b) {
            const bool na = std::isnan(s[size_t(a)]), nb = std::isnan(s[size_t(b)]);
            if (na != nb) return nb;
            return !na && s[size_t(a)] > s[size_t(b)];
        });
        el.resize(size_t(std::min<int64_t>(k, int64_t(el.size()))));
        std::sort(el.begin(), el.end());
        EXPECT_EQ(got, el) << "trial " << trial;
        EXPECT_EQ(got_pool, el) << "trial " << trial << " (pool) n " << n << " k " << k << " sizes " << got_pool.size() << " " << el.size();
    }
}

TEST(decode_scores_exact, equals_the_reference) {
    lc::thread_pool pool(2);
    for (int D : {64, 256}) {
        const int          n_head = 6;
        auto               cache  = make_cache(2, D, 777, 3);
        const auto         q      = randn(size_t(n_head * D), 1.0f, 4);
        std::vector<float> s(size_t(n_head) * 777), r(s.size());
        lc::decode_scores_exact(q.data(), n_head, cache.view(), 0.125f, s.data(), pool);
        lc::decode_scores_exact_ref(q.data(), n_head, cache.view(), 0.125f, r.data());
        for (size_t i = 0; i < s.size(); ++i) ASSERT_NEAR(s[i], r[i], 1e-4f * (1.0f + std::fabs(r[i]))) << i;
    }
}

// Pure selection: no always-dense sink or local window unless a test adds one.
lc::attn_config config(lc::decode_kind k, const std::string & budget) {
    lc::attn_config c;
    c.decode              = k;
    c.decode_keys         = *lc::decode_budget_parse(budget);
    c.decode_opts.n_sink  = 0;
    c.decode_opts.n_local = 0;
    return c;
}

lc::model_hparams hparams(int n_layer) {
    lc::model_hparams hp;
    hp.n_layer = n_layer;
    return hp;
}

// Plan of one method executed by the kernel vs dense decoding of the same query.
void expect_equals_dense(lc::decode_method & m, int il, int n_head, const lc::test::test_cache & cache, uint32_t seed) {
    lc::thread_pool pool(2);
    const int       D     = cache.view().head_dim;
    const auto      q     = randn(size_t(n_head * D), 1.0f, seed);
    const float     scale = 1.0f / std::sqrt(float(D));
    lc::decode_plan plan;
    m.plan(il, q.data(), n_head, cache.view(), scale, plan, pool, nullptr);
    std::vector<float> o(size_t(n_head * D)), lse(static_cast<size_t>(n_head)), od(o.size()), lsed(lse.size());
    lc::attn_sparse_decode(plan, q.data(), cache.view(), scale, o.data(), lse.data(), pool);
    lc::attn_dense(q.data(), 1, cache.n_kv - 1, n_head, cache.view(), scale, od.data(), lsed.data(), pool);
    const auto e = lc::test::compare(o, od, lse, lsed);
    EXPECT_LT(e.max_abs, 2e-5) << m.name();
    EXPECT_LT(e.lse_abs, 2e-5) << m.name();
}

TEST(topk_decode, full_budget_equals_dense) {
    auto cache = make_cache(2, 64, 1234, 7);
    for (const char * b : {"100%", "1234", "5000"}) {
        auto m = lc::topk_decode_create(hparams(1), config(lc::decode_kind::TOPK, b));
        ASSERT_TRUE(m.is_ok());
        expect_equals_dense(**m, 0, 6, cache, 8);
    }
}

TEST(topk_decode, selects_the_exact_top_k_per_head) {
    lc::thread_pool pool(2);
    const int       n_head = 4, D = 64;
    const int64_t   n_kv  = 900;
    auto            cache = make_cache(1, D, n_kv, 9);
    const auto      q     = randn(size_t(n_head * D), 1.0f, 10);
    auto            m     = lc::topk_decode_create(hparams(1), config(lc::decode_kind::TOPK, "10%"));
    ASSERT_TRUE(m.is_ok());
    lc::decode_plan plan;
    (*m)->plan(0, q.data(), n_head, cache.view(), 0.125f, plan, pool, nullptr);
    std::vector<float> ref(size_t(n_head) * n_kv);
    lc::decode_scores_exact_ref(q.data(), n_head, cache.view(), 0.125f, ref.data());
    for (int h = 0; h < n_head; ++h) {
        const auto & hp = plan.heads[size_t(h)];
        EXPECT_TRUE(hp.dense.empty());
        ASSERT_EQ(hp.idx.size(), 90u);
        // Every selected score >= every unselected one (up to f32 rounding of the fast scores).
        std::vector<char> sel(size_t(n_kv), 0);
        float             lo = INFINITY, hi = -INFINITY;
        for (int32_t t : hp.idx) sel[size_t(t)] = 1;
        for (int64_t t = 0; t < n_kv; ++t) {
            const float s = ref[size_t(h) * n_kv + t];
            if (sel[size_t(t)])
                lo = std::min(lo, s);
            else
                hi = std::max(hi, s);
        }
        EXPECT_GE(lo, hi - 1e-5f) << "head " << h;
    }
}

TEST(quest, page_bounds_and_scores_against_brute_force) {
    const int  D = 64, P = 16;
    auto       cache = make_cache(2, D, 640, 13);
    const auto q     = randn(size_t(D), 1.0f, 14);
    for (int hk = 0; hk < 2; ++hk)
        for (int64_t p = 0; p < 40; ++p) {
            std::vector<float> hi(D), lo(D);
            lc::quest_page_bounds(cache.view(), hk, p, P, hi.data(), lo.data());
            float u = 0;
            lc::quest_page_scores(q.data(), hi.data(), lo.data(), 1, D, &u);
            double bound = 0;
            for (int d = 0; d < D; ++d) {
                float mx = -INFINITY, mn = INFINITY;
                for (int64_t t = p * P; t < p * P + P; ++t) {
                    mx = std::max(mx, lc::fp16_to_fp32(cache.view().k_row(t, hk)[d]));
                    mn = std::min(mn, lc::fp16_to_fp32(cache.view().k_row(t, hk)[d]));
                }
                ASSERT_EQ(hi[size_t(d)], mx);
                ASSERT_EQ(lo[size_t(d)], mn);
                bound += std::max(double(q[size_t(d)]) * mx, double(q[size_t(d)]) * mn);
            }
            EXPECT_NEAR(u, bound, 1e-4 * (1 + std::fabs(bound)));
            for (int64_t t = p * P; t < p * P + P; ++t) { // an upper bound of every q . k in the page
                double dot = 0;
                for (int d = 0; d < D; ++d)
                    dot += double(q[size_t(d)]) * lc::fp16_to_fp32(cache.view().k_row(t, hk)[d]);
                EXPECT_LE(dot, u + 1e-4);
            }
        }
}

TEST(quest, selects_the_best_pages_plus_the_newest) {
    lc::thread_pool pool(2);
    const int       n_head = 4, D = 64, P = 16;
    const int64_t   n_kv  = 1000; // 62 full pages and 8 tokens on the newest
    auto            cache = make_cache(2, D, n_kv, 15);
    const auto      q     = randn(size_t(n_head * D), 1.0f, 16);
    auto            m     = lc::quest_decode_create(hparams(3), config(lc::decode_kind::QUEST, "160"));
    ASSERT_TRUE(m.is_ok());
    EXPECT_FALSE((*m)->sparse_layer(0));
    EXPECT_FALSE((*m)->sparse_layer(1));
    EXPECT_TRUE((*m)->sparse_layer(2));
    lc::decode_plan plan;
    (*m)->plan(2, q.data(), n_head, cache.view(), 0.125f, plan, pool, nullptr);
    for (int h = 0; h < n_head; ++h) {
        // Brute force: the 10 pages with the highest bound (ties to the lower page).
        std::vector<std::pair<double, int>> u;
        for (int p = 0; p < 62; ++p) {
            std::vector<float> hi(D), lo(D);
            lc::quest_page_bounds(cache.view(), h / 2, p, P, hi.data(), lo.data());
            float s = 0;
            lc::quest_page_scores(q.data() + size_t(h) * D, hi.data(), lo.data(), 1, D, &s);
            u.push_back({-double(s), p});
        }
        std::sort(u.begin(), u.end());
        std::vector<char> want(size_t(n_kv), 0), got(size_t(n_kv), 0);
        for (int i = 0; i < 10; ++i)
            for (int t = u[size_t(i)].second * P; t < (u[size_t(i)].second + 1) * P; ++t) want[size_t(t)] = 1;
        for (int64_t t = 992; t < n_kv; ++t) want[size_t(t)] = 1;
        const auto & hp = plan.heads[size_t(h)];
        EXPECT_TRUE(hp.idx.empty());
        for (size_t i = 0; i < hp.dense.size(); ++i) {
            if (i > 0) EXPECT_LT(hp.dense[i - 1].end, hp.dense[i].begin); // sorted, disjoint, merged
            for (int t = hp.dense[i].begin; t < hp.dense[i].end; ++t) got[size_t(t)] = 1;
        }
        EXPECT_EQ(got, want) << "head " << h;
    }
}

TEST(quest, full_budget_equals_dense_and_metadata_follows_the_cache) {
    const int D    = 128;
    auto      full = make_cache(1, D, 1500, 17);
    auto      part = make_cache(1, D, 1500, 17); // same tokens
    auto      m1   = lc::quest_decode_create(hparams(3), config(lc::decode_kind::QUEST, "100%"));
    auto      m2   = lc::quest_decode_create(hparams(3), config(lc::decode_kind::QUEST, "300"));
    auto      m3   = lc::quest_decode_create(hparams(3), config(lc::decode_kind::QUEST, "300"));
    ASSERT_TRUE(m1.is_ok() && m2.is_ok() && m3.is_ok());
    expect_equals_dense(**m1, 2, 4, full, 18);

    // m2 sees the cache grow 100 -> 700 -> 1500 tokens (and a truncation back to 650); m3 sees 1500 at once.
    lc::thread_pool pool(2);
    const auto      q = randn(size_t(4 * D), 1.0f, 19);
    lc::decode_plan a, b;
    for (int64_t n : {100, 700, 650, 1500}) {
        if (n == 650) (*m2)->truncate(650);
        part.n_kv = n;
        (*m2)->plan(2, q.data(), 4, part.view(), 0.1f, a, pool, nullptr);
    }
    (*m3)->prepare(2, full.view(), pool);
    (*m3)->plan(2, q.data(), 4, full.view(), 0.1f, b, pool, nullptr);
    for (int h = 0; h < 4; ++h) EXPECT_EQ(pairs(a.heads[size_t(h)].dense), pairs(b.heads[size_t(h)].dense));
}

TEST(decode_keep, default_is_four_sinks_and_sixty_four_local_for_top_k_and_quest) {
    lc::thread_pool pool(2);
    const int       D = 64;
    const int64_t   n_kv = 1000;
    auto            cache = make_cache(1, D, n_kv, 40);
    const auto      q     = randn(size_t(2 * D), 1.0f, 41);
    for (lc::decode_kind k : {lc::decode_kind::TOPK, lc::decode_kind::QUEST}) {
        lc::attn_config c;
        c.decode      = k;
        c.decode_keys = *lc::decode_budget_parse("64");
        auto m =
            k == lc::decode_kind::TOPK ? lc::topk_decode_create(hparams(3), c) : lc::quest_decode_create(hparams(3), c);
        ASSERT_TRUE(m.is_ok());
        lc::decode_plan plan;
        (*m)->plan(2, q.data(), 2, cache.view(), 0.125f, plan, pool, nullptr);
        for (const auto & hp : plan.heads) {
            // The sinks and the last 64 tokens are attended whatever the scores.
            std::vector<char> in(size_t(n_kv), 0);
            for (const key_range & r : hp.dense)
                for (int32_t t = r.begin; t < r.end; ++t) in[size_t(t)] = 1;
            for (int32_t t : hp.idx) {
                EXPECT_FALSE(in[size_t(t)]) << "selected twice: " << t;
                in[size_t(t)] = 1;
            }
            for (int64_t t = 0; t < 4; ++t) EXPECT_TRUE(in[size_t(t)]) << lc::decode_kind_name(k) << " sink " << t;
            for (int64_t t = n_kv - 64; t < n_kv; ++t)
                EXPECT_TRUE(in[size_t(t)]) << lc::decode_kind_name(k) << " local " << t;
            if (k == lc::decode_kind::TOPK) EXPECT_EQ(hp.idx.size(), 64u); // the budget comes on top
        }
    }
}

TEST(decode_group_scores, equals_brute_force) {
    const int     n_head = 6, G = 3;
    const int64_t n = 300;
    auto          s = randn(size_t(n_head) * n, 2.0f, 30);
    for (size_t i = 0; i < s.size(); i += 37) s[i] = NAN;
    std::vector<key_range> dense;
    lc::decode_dense_part(n, 4, 16, dense);
    std::vector<float> out, out_pool;
    lc::decode_group_scores(s.data(), n_head, G, n, dense, out);
    lc::thread_pool pool(3);
    std::vector<float> long_s = randn(size_t(n_head) * 20000, 2.0f, 31); // long enough to be split
    for (size_t i = 0; i < long_s.size(); i += 101) long_s[i] = NAN;
    std::vector<key_range> long_dense;
    lc::decode_dense_part(20000, 4, 64, long_dense);
    std::vector<float> long_out;
    lc::decode_group_scores(long_s.data(), n_head, G, 20000, long_dense, long_out);
    lc::decode_group_scores(long_s.data(), n_head, G, 20000, long_dense, out_pool, &pool);
    for (size_t i = 0; i < long_out.size(); ++i) {
        const bool in_dense = i % 20000 < 4 || i % 20000 >= 20000 - 64;
        if (!in_dense) ASSERT_EQ(out_pool[i], long_out[i]) << i;
    }
    for (int e = 0; e < n_head / G; ++e)
        for (int64_t t = 4; t < n - 16; ++t) {
            double best = -INFINITY;
            for (int h = e * G; h < (e + 1) * G; ++h) {
                double m = -INFINITY;
                for (int64_t u = 4; u < n - 16; ++u)
                    if (s[size_t(h) * n + u] > m) m = s[size_t(h) * n + u];
                const double x = double(s[size_t(h) * n + t]) - m;
                if (x > best) best = x; // NaN compares false: ignored
            }
            ASSERT_NEAR(out[size_t(e) * n + t], best, 1e-5) << e << " " << t;
        }
}

TEST(kv_select, full_budget_equals_dense_and_one_list_per_kv_head) {
    auto cache = make_cache(2, 64, 1500, 31);
    for (lc::decode_kind k : {lc::decode_kind::TOPK, lc::decode_kind::QUEST}) {
        lc::attn_config c       = config(k, "100%");
        c.decode_opts.kv_select = true;
        auto m =
            k == lc::decode_kind::TOPK ? lc::topk_decode_create(hparams(3), c) : lc::quest_decode_create(hparams(3), c);
        ASSERT_TRUE(m.is_ok());
        expect_equals_dense(**m, 2, 6, cache, 32);
        lc::thread_pool pool(2);
        const auto      q = randn(size_t(6 * 64), 1.0f, 33);
        lc::decode_plan plan;
        c.decode_keys = *lc::decode_budget_parse("10%");
        auto m2 =
            k == lc::decode_kind::TOPK ? lc::topk_decode_create(hparams(3), c) : lc::quest_decode_create(hparams(3), c);
        (*m2)->plan(2, q.data(), 6, cache.view(), 0.125f, plan, pool, nullptr);
        EXPECT_EQ(plan.group, 3);
        EXPECT_EQ(plan.heads.size(), 2u);
    }
}

TEST(decode_budget, parse_and_keys) {
    EXPECT_EQ(lc::decode_budget_parse("25%")->keys(1000), 250);
    EXPECT_EQ(lc::decode_budget_parse("0.25")->keys(1001), 251); // ceil
    EXPECT_EQ(lc::decode_budget_parse("1024")->keys(100), 100);  // at most n_kv
    EXPECT_EQ(lc::decode_budget_parse("1")->keys(100), 1);
    EXPECT_EQ(lc::decode_budget_parse("0.0001")->keys(100), 1); // at least 1
    for (const char * bad : {"", "0", "-5", "150%", "12.5", "abc", "nan"})
        EXPECT_FALSE(lc::decode_budget_parse(bad).is_ok()) << bad;
}

} // namespace
