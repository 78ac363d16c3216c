// Loki sparse decode: at full budget the plan equals dense decoding; at d = D the selection is the exact top-k
// (scores in double, near-ties aside); keys taken in across several plan() calls give the same plans as all at
// once; truncate() drops the low-rank rows past the cut; the AVX2 score pass equals its scalar reference; ranks
// from a fraction, a count or an explained-variance target; pre-RoPE bases are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/decode/decode-plan.h"
#include "attn/decode/loki.h"
#include "common/attn-util.h"

namespace {

using lc::test::randn;

// A random orthonormal D x D matrix (Gram-Schmidt on Gaussian columns), row-major, or the identity.
std::vector<float> orthonormal(int D, uint32_t seed, bool identity = false) {
    std::vector<double> m(size_t(D) * D);
    if (identity) {
        for (int i = 0; i < D; ++i) m[size_t(i) * D + i] = 1.0;
    } else {
        const auto r = randn(m.size(), 1.0f, seed);
        for (size_t i = 0; i < m.size(); ++i) m[i] = r[i];
        for (int j = 0; j < D; ++j) {
            for (int p = 0; p < j; ++p) {
                double dot = 0;
                for (int i = 0; i < D; ++i) dot += m[size_t(i) * D + j] * m[size_t(i) * D + p];
                for (int i = 0; i < D; ++i) m[size_t(i) * D + j] -= dot * m[size_t(i) * D + p];
            }
            double nn = 0;
            for (int i = 0; i < D; ++i) nn += m[size_t(i) * D + j] * m[size_t(i) * D + j];
            for (int i = 0; i < D; ++i) m[size_t(i) * D + j] /= std::sqrt(nn);
        }
    }
    return std::vector<float>(m.begin(), m.end());
}

lc::sidecar_loki make_bases(int n_layer, int n_head_kv, int D, uint32_t seed, bool identity = false) {
    lc::sidecar_loki l;
    l.n_head_kv = n_head_kv;
    l.head_dim  = D;
    l.fitted.assign(size_t(n_layer), 1);
    for (int il = 0; il < n_layer; ++il)
        for (int g = 0; g < n_head_kv; ++g) {
            const auto P = orthonormal(D, seed + uint32_t(il * 100 + g), identity);
            l.basis.insert(l.basis.end(), P.begin(), P.end());
            for (int j = 0; j < D; ++j) l.curve.push_back(float(j + 1) / float(D));
        }
    return l;
}

lc::attn_config loki_config(double d, lc::decode_budget b, int n_sink = 0, int n_local = 0) {
    lc::attn_config c;
    c.decode              = lc::decode_kind::LOKI;
    c.decode_keys         = b;
    c.decode_opts.loki_d  = d;
    c.decode_opts.n_sink  = n_sink;
    c.decode_opts.n_local = n_local;
    return c;
}

// A one-layer cache of rows [n][n_head_kv][D] f32 in sequence 0.
std::unique_ptr<lc::kv_cache> cache_of(int n_head_kv, int D, const std::vector<float> & k,
                                       const std::vector<float> & v) {
    const int64_t n = int64_t(k.size()) / (n_head_kv * D);
    auto          c = std::make_unique<lc::kv_cache>(1, n_head_kv, D, n + 64, 1);
    EXPECT_TRUE(c->reserve(0, n).is_ok());
    c->write(0, 0, 0, n, k.data(), v.data());
    return c;
}

lc::kv_view view_n(const lc::kv_cache & c, int64_t n) {
    lc::kv_view v = c.view(0, 0);
    v.n_kv        = n;
    return v;
}

void expect_same_plan(const lc::decode_plan & a, const lc::decode_plan & b, const char * what) {
    ASSERT_EQ(a.n_head, b.n_head) << what;
    for (int h = 0; h < a.n_head; ++h) {
        EXPECT_EQ(a.heads[size_t(h)].idx, b.heads[size_t(h)].idx) << what << " head " << h;
        ASSERT_EQ(a.heads[size_t(h)].dense.size(), b.heads[size_t(h)].dense.size()) << what;
        for (size_t r = 0; r < a.heads[size_t(h)].dense.size(); ++r) {
            EXPECT_EQ(a.heads[size_t(h)].dense[r].begin, b.heads[size_t(h)].dense[r].begin) << what;
            EXPECT_EQ(a.heads[size_t(h)].dense[r].end, b.heads[size_t(h)].dense[r].end) << what;
        }
    }
}

TEST(loki, full_budget_equals_dense) {
    lc::thread_pool pool(2);
    for (int D : {64, 128}) {
        for (int sink : {-1, 4}) {
            const int       n_head = 8, n_head_kv = 2;
            const int64_t   n_kv  = 777;
            auto            cache = lc::test::make_cache(n_head_kv, D, n_kv, 11);
            const auto      q     = randn(size_t(n_head * D), 1.0f, 12);
            const float     scale = 1.0f / std::sqrt(float(D));
            lc::decode_plan plan;
            auto            m = lc::loki_decode_create(make_bases(1, n_head_kv, D, 5), 1,
                                                       loki_config(0.25, {lc::decode_budget::kind::FRACTION, 1.0}, sink, 64));
            ASSERT_TRUE(m.is_ok()) << m.get_status().message();
            ASSERT_TRUE((*m)->sparse_layer(0));
            int64_t bytes = 0;
            (*m)->plan(0, q.data(), n_head, cache.view(), scale, plan, pool, &bytes);
            for (const auto & h : plan.heads) EXPECT_EQ(lc::decode_head_keys(h), n_kv);
            std::vector<float> o(static_cast<size_t>(n_head * D)), lse(static_cast<size_t>(n_head)), od(o.size()),
                lsed(lse.size());
            lc::attn_decode_plan_ref(plan, q.data(), cache.view(), scale, o.data(), lse.data());
            lc::attn_dense(q.data(), 1, n_kv - 1, n_head, cache.view(), scale, od.data(), lsed.data(), pool);
            const auto e = lc::test::compare(od, o, lsed, lse);
            EXPECT_LT(e.nmse, 1e-10) << "D=" << D;
            EXPECT_LT(e.max_abs, 5e-5) << "D=" << D;
            EXPECT_LT(e.lse_abs, 5e-5) << "D=" << D;
        }
    }
}

// Exact scores in double of every key for query head h.
std::vector<double> exact_scores(const float * q, int h, int G, const lc::kv_view & kv) {
    std::vector<double> s(size_t(kv.n_kv));
    for (int64_t t = 0; t < kv.n_kv; ++t) {
        const lc::fp16_t * k = kv.k_row(t, h / G);
        double             a = 0;
        for (int i = 0; i < kv.head_dim; ++i) a += double(q[size_t(h) * kv.head_dim + i]) * lc::fp16_to_fp32(k[i]);
        s[size_t(t)] = a;
    }
    return s;
}

TEST(loki, full_rank_selects_the_exact_top_k) {
    lc::thread_pool pool(2);
    const int       n_head = 6, n_head_kv = 2, D = 64, G = n_head / n_head_kv;
    const int64_t   n_kv = 2000, k = 150;
    auto            cache = lc::test::make_cache(n_head_kv, D, n_kv, 21);
    const auto      q     = randn(size_t(n_head * D), 1.0f, 22);
    for (bool identity : {true, false}) {
        auto m = lc::loki_decode_create(make_bases(1, n_head_kv, D, 7, identity), 1,
                                        loki_config(double(D), {lc::decode_budget::kind::TOKENS, double(k)}));
        ASSERT_TRUE(m.is_ok()) << m.get_status().message();
        lc::decode_plan plan;
        (*m)->plan(0, q.data(), n_head, cache.view(), 0.125f, plan, pool, nullptr);
        for (int h = 0; h < n_head; ++h) {
            const auto & idx = plan.heads[size_t(h)].idx;
            ASSERT_EQ(int64_t(idx.size()), k);
            EXPECT_TRUE(plan.heads[size_t(h)].dense.empty()); // Loki's default: no sink, no local window
            EXPECT_TRUE(std::is_sorted(idx.begin(), idx.end()));
            const auto          s = exact_scores(q.data(), h, G, cache.view());
            std::vector<double> sorted(s);
            std::sort(sorted.begin(), sorted.end(), std::greater<>());
            const double kth = sorted[size_t(k - 1)];
            // The rotated keys are stored in fp16: with a non-trivial basis a score may move by a few 1e-3 (|q|,
            // |k| ~ 8), so keys this close to the k-th score may swap; with the identity basis only float rounding.
            const double      eps = identity ? 1e-4 : 5e-2;
            std::set<int32_t> sel(idx.begin(), idx.end());
            int               swapped = 0;
            for (int64_t t = 0; t < n_kv; ++t) {
                const bool in = sel.count(int32_t(t)) > 0;
                if (in && s[size_t(t)] < kth) {
                    EXPECT_GE(s[size_t(t)], kth - eps) << "head " << h << " t " << t;
                    ++swapped;
                }
                if (!in && s[size_t(t)] > kth) EXPECT_LE(s[size_t(t)], kth + eps) << "head " << h << " t " << t;
            }
            EXPECT_LE(swapped, identity ? 1 : 5) << "head " << h;
        }
    }
}

TEST(loki, incremental_take_in_equals_all_at_once) {
    lc::thread_pool pool(2);
    const int       n_head = 4, n_head_kv = 2, D = 64;
    const int64_t   n = 3000;
    const auto      k = randn(size_t(n) * n_head_kv * D, 1.0f, 31), v = randn(k.size(), 1.0f, 32);
    auto            cache = cache_of(n_head_kv, D, k, v);
    const auto      q     = randn(size_t(n_head * D), 1.0f, 33);
    const auto      cfg   = loki_config(0.25, {lc::decode_budget::kind::FRACTION, 0.1}, 4, 16);
    auto            inc   = lc::loki_decode_create(make_bases(2, n_head_kv, D, 9), 2, cfg);
    ASSERT_TRUE(inc.is_ok());
    // Steps: a prefill chunk, single decoded tokens, another chunk crossing tile and page boundaries.
    for (int64_t step : {int64_t(512), int64_t(513), int64_t(514), int64_t(1029), int64_t(1030), n}) {
        lc::decode_plan a, b;
        for (int il : {0, 1}) (*inc)->plan(il, q.data(), n_head, view_n(*cache, step), 0.125f, a, pool, nullptr);
        auto fresh = lc::loki_decode_create(make_bases(2, n_head_kv, D, 9), 2, cfg);
        (*fresh)->plan(1, q.data(), n_head, view_n(*cache, step), 0.125f, b, pool, nullptr);
        expect_same_plan(a, b, "incremental");
    }
}

TEST(loki, truncate_drops_rows_past_the_cut) {
    lc::thread_pool pool(2);
    const int       n_head = 4, n_head_kv = 1, D = 64;
    const int64_t   n = 1000, cut = 501;
    const auto      ka = randn(size_t(n) * n_head_kv * D, 1.0f, 41), va = randn(ka.size(), 1.0f, 42);
    auto            kb    = ka;
    const auto      other = randn(size_t(n - cut) * n_head_kv * D, 1.0f, 43);
    std::copy(other.begin(), other.end(), kb.begin() + cut * n_head_kv * D);
    auto       A = cache_of(n_head_kv, D, ka, va), B = cache_of(n_head_kv, D, kb, va);
    const auto q   = randn(size_t(n_head * D), 1.0f, 44);
    const auto cfg = loki_config(16, {lc::decode_budget::kind::TOKENS, 100});
    for (int64_t to : {cut, int64_t(0)}) {
        auto            m = lc::loki_decode_create(make_bases(1, n_head_kv, D, 3), 1, cfg);
        auto            f = lc::loki_decode_create(make_bases(1, n_head_kv, D, 3), 1, cfg);
        lc::decode_plan pa, pb, pf;
        (*m)->plan(0, q.data(), n_head, view_n(*A, n), 0.125f, pa, pool, nullptr);
        (*m)->truncate(to);
        (*m)->plan(0, q.data(), n_head, view_n(*B, n), 0.125f, pb, pool, nullptr);
        (*f)->plan(0, q.data(), n_head, view_n(*B, n), 0.125f, pf, pool, nullptr);
        expect_same_plan(pb, pf, "after truncate");
    }
    // The keys past the cut differ, so without truncate the stale rows would pick other keys.
    auto            m = lc::loki_decode_create(make_bases(1, n_head_kv, D, 3), 1, cfg);
    auto            f = lc::loki_decode_create(make_bases(1, n_head_kv, D, 3), 1, cfg);
    lc::decode_plan pa, pb, pf;
    (*m)->plan(0, q.data(), n_head, view_n(*A, n), 0.125f, pa, pool, nullptr);
    (*m)->plan(0, q.data(), n_head, view_n(*B, n), 0.125f, pb, pool, nullptr);
    (*f)->plan(0, q.data(), n_head, view_n(*B, n), 0.125f, pf, pool, nullptr);
    EXPECT_NE(pb.heads[0].idx, pf.heads[0].idx);
}

TEST(loki, score_kernel_equals_scalar_reference) {
    for (int d_pad : {8, 16, 24, 64}) {
        const int64_t           n_tok = 1000;
        const int64_t           n_til = (n_tok + 7) / 8;
        const auto              kf    = randn(size_t(n_til) * d_pad * 8, 1.0f, uint32_t(50 + d_pad));
        std::vector<lc::fp16_t> tiles(kf.size());
        for (size_t i = 0; i < kf.size(); ++i) tiles[i] = lc::fp32_to_fp16(kf[i]);
        for (int n_q : {1, 3, 4, 6}) {
            const auto q = randn(size_t(n_q) * d_pad, 1.0f, uint32_t(60 + n_q));
            for (auto [t0, t1] : {std::pair<int64_t, int64_t>{0, n_tok},
                                  {8, 13},
                                  {16, 16 + 8 * 37 + 5},
                                  {992, 1000},
                                  {0, 31},
                                  {40, 72}}) {
                std::vector<float> a(size_t(n_q) * n_tok, -7.0f), r(a.size(), -7.0f);
                lc::loki_scores(tiles.data(), d_pad, t0, t1, q.data(), n_q, a.data(), n_tok);
                lc::loki_scores_ref(tiles.data(), d_pad, t0, t1, q.data(), n_q, r.data(), n_tok);
                for (size_t i = 0; i < a.size(); ++i)
                    ASSERT_NEAR(a[i], r[i], 1e-4 * std::sqrt(double(d_pad)))
                        << "d_pad " << d_pad << " [" << t0 << ", " << t1 << ") i " << i; // -7 outside [t0, t1)
            }
        }
    }
}

TEST(loki, ranks_from_fraction_count_and_variance) {
    lc::sidecar_loki l = make_bases(3, 2, 8, 1, true);
    l.fitted[1]        = 0;
    // Layer 0: heads explain 0.5 / 0.7 with one component, 0.8 / 0.9 with two, 0.95 / 0.95 with three.
    const float c0[8] = {0.5f, 0.8f, 0.95f, 0.97f, 0.98f, 0.99f, 0.995f, 1.0f};
    const float c1[8] = {0.7f, 0.9f, 0.95f, 0.97f, 0.98f, 0.99f, 0.995f, 1.0f};
    std::copy(c0, c0 + 8, l.curve.begin());
    std::copy(c1, c1 + 8, l.curve.begin() + 8);
    lc::decode_params p;
    p.loki_d = 0.25;
    EXPECT_EQ(*lc::loki_ranks(l, 3, p), (std::vector<int>{2, 0, 2}));
    p.loki_d = 3;
    EXPECT_EQ(*lc::loki_ranks(l, 3, p), (std::vector<int>{3, 0, 3}));
    p.loki_var = 0.85; // layer 0: mean curve 0.6, 0.85 -> 2; layer 2: linear curve (j + 1) / 8 -> 7
    EXPECT_EQ(*lc::loki_ranks(l, 3, p), (std::vector<int>{2, 0, 7}));
    p.loki_var = 0;
    p.loki_d   = 9;
    EXPECT_FALSE(lc::loki_ranks(l, 3, p).is_ok());
    p.loki_d = 0;
    EXPECT_FALSE(lc::loki_ranks(l, 3, p).is_ok());

    auto m = lc::loki_decode_create(l, 3, loki_config(0.25, {}));
    ASSERT_TRUE(m.is_ok());
    EXPECT_TRUE((*m)->sparse_layer(0));
    EXPECT_FALSE((*m)->sparse_layer(1));
    EXPECT_STREQ((*m)->name(), "loki");
    EXPECT_FALSE(lc::loki_decode_create(l, 4, loki_config(0.25, {})).is_ok());
    l.pre_rope = true;
    auto pre   = lc::loki_decode_create(l, 3, loki_config(0.25, {}));
    ASSERT_FALSE(pre.is_ok());
    EXPECT_NE(pre.get_status().message().find("pre-RoPE"), std::string::npos);
}

TEST(loki, selection_bytes_are_the_low_rank_keys_and_bases) {
    lc::thread_pool pool(2);
    const int       n_head = 4, n_head_kv = 2, D = 64;
    auto            cache = lc::test::make_cache(n_head_kv, D, 640, 71);
    const auto      q     = randn(size_t(n_head * D), 1.0f, 72);
    auto            m     = lc::loki_decode_create(make_bases(1, n_head_kv, D, 2), 1,
                                                   loki_config(16, {lc::decode_budget::kind::TOKENS, 64}));
    lc::decode_plan plan;
    int64_t         bytes = 0;
    (*m)->plan(0, q.data(), n_head, cache.view(), 0.125f, plan, pool, &bytes);
    EXPECT_EQ(bytes, n_head_kv * (640 * 16 * 2 + D * 16 * 4));
}

} // namespace
