// The sparse prefill kernel and its plans: the full plan equals dense attention; random plans (unaligned
// ranges, gathered columns, empty items, GQA, chunks at pos0 > 0, head_dim 64/128/256) match the double
// reference under the plan's mask on every ISA; keys in a query's future are never read; pair counting and
// plan validation against brute force.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-sparse-prefill.h"
#include "attn/prefill-plan.h"
#include "backend/cpu/ref/attn-ref.h"
#include "common/attn-util.h"

namespace {

using lc::prefill_plan;
using lc::test::compare;
using lc::test::errors;
using lc::test::isas;
using lc::test::make_cache;
using lc::test::randn;

// Same f32-versus-double budget as the dense kernel's tests (tests/attn/test-attn-dense.cpp): the sparse path
// runs the same tile code over fewer keys.
constexpr double k_max_nmse    = 1e-10;
constexpr double k_max_abs     = 5e-5;
constexpr double k_max_lse_abs = 5e-5;

// Brute-force membership: is key t in item (h, block of query i) of the plan (ignoring causality)?
bool plan_has(const prefill_plan & p, int h, int64_t i, int64_t t) {
    const lc::prefill_head_plan & hp = p.heads[size_t(h)];
    const int64_t                 b  = i / lc::prefill_qblock;
    for (int64_t x = hp.range_off[b]; x < hp.range_off[b + 1]; ++x)
        if (t >= hp.ranges[x].begin && t < hp.ranges[x].end) return true;
    for (int64_t x = hp.col_off[b]; x < hp.col_off[b + 1]; ++x)
        if (hp.cols[x] == t) return true;
    return false;
}

// A random valid plan: per item a few ranges of random (unaligned) bounds and random columns outside them,
// all at most the item's last query; some items empty.
prefill_plan random_plan(int64_t n_q, int64_t pos0, int n_head, uint32_t seed) {
    std::mt19937 rng(seed);
    prefill_plan p;
    p.reset(n_q, pos0, n_head);
    for (int h = 0; h < n_head; ++h) {
        lc::prefill_head_plan & hp = p.heads[size_t(h)];
        for (int64_t b = 0; b < p.n_qblk(); ++b) {
            const int64_t     last = p.q_last(b);
            std::set<int64_t> keys_in_ranges;
            if (rng() % 7 != 0) { // some items have no keys at all
                int64_t t = int64_t(rng() % 8);
                while (t <= last) {
                    const int64_t len = 1 + int64_t(rng() % 90);
                    const int64_t e   = std::min(last + 1, t + len);
                    hp.add_range(t, e);
                    for (int64_t k = t; k < e; ++k) keys_in_ranges.insert(k);
                    t = e + 1 + int64_t(rng() % 200);
                }
                std::set<int64_t> cols;
                const int         n_cols = int(rng() % 150);
                for (int c = 0; c < n_cols; ++c) {
                    const int64_t k = int64_t(rng() % uint64_t(last + 1));
                    if (!keys_in_ranges.count(k)) cols.insert(k);
                }
                for (int64_t k : cols) hp.add_col(k);
            }
            hp.end_item();
        }
    }
    return p;
}

struct out {
    std::vector<float> o, lse;
};

out run_sparse(lc::cpu_isa isa, const prefill_plan & plan, const std::vector<float> & q, const lc::kv_view & kv,
               float scale, lc::thread_pool & pool) {
    out r;
    r.o.assign(size_t(plan.n_q * plan.n_head * kv.head_dim), std::numeric_limits<float>::quiet_NaN());
    r.lse.assign(size_t(plan.n_q * plan.n_head), std::numeric_limits<float>::quiet_NaN());
    lc::attn_sparse_prefill_isa(isa, plan, q.data(), kv, scale, r.o.data(), r.lse.data(), pool);
    return r;
}

out run_masked_ref(const prefill_plan & plan, const std::vector<float> & q, const lc::kv_view & kv, float scale,
                   lc::thread_pool & pool) {
    out r;
    r.o.resize(size_t(plan.n_q * plan.n_head * kv.head_dim));
    r.lse.resize(size_t(plan.n_q * plan.n_head));
    lc::attn_masked_ref(
        q.data(), plan.n_q, plan.pos0, plan.n_head, kv, scale,
        [&](int h, int64_t i, int64_t t) { return plan_has(plan, h, i, t); }, r.o.data(), r.lse.data(), pool);
    return r;
}

// lse of empty rows is -inf in both; compare() would see inf - inf.
errors compare_rows(const out & a, const out & ref) {
    std::vector<float> la = a.lse, lr = ref.lse;
    for (size_t i = 0; i < la.size(); ++i)
        if (std::isinf(lr[i]) && la[i] == lr[i]) la[i] = lr[i] = 0.0f;
    return compare(a.o, ref.o, la, lr);
}

struct shape {
    int     n_head, n_head_kv, head_dim;
    int64_t n_q, pos0;
};

TEST(attn_sparse_prefill, full_plan_equals_dense) {
    lc::thread_pool pool(2);
    for (const shape & s : {shape{4, 4, 64, 200, 0}, shape{9, 3, 64, 130, 70}, shape{8, 2, 128, 64, 511},
                            shape{4, 1, 256, 100, 37}, shape{6, 3, 80, 77, 5}}) {
        const int64_t n_kv  = s.pos0 + s.n_q;
        auto          cache = make_cache(s.n_head_kv, s.head_dim, n_kv, 11);
        const auto    q     = randn(size_t(s.n_q * s.n_head * s.head_dim), 1.0f, 3);
        const float   scale = 1.0f / std::sqrt(float(s.head_dim));
        prefill_plan  plan;
        lc::prefill_plan_full(plan, s.n_q, s.pos0, s.n_head);
        ASSERT_TRUE(lc::prefill_plan_valid(plan));
        out dense;
        dense.o.resize(size_t(s.n_q * s.n_head * s.head_dim));
        dense.lse.resize(size_t(s.n_q * s.n_head));
        lc::attn_dense_ref(q.data(), s.n_q, s.pos0, s.n_head, cache.view(), scale, dense.o.data(), dense.lse.data(),
                           pool);
        for (lc::cpu_isa isa : isas()) {
            const out    r = run_sparse(isa, plan, q, cache.view(), scale, pool);
            const errors e = compare_rows(r, dense);
            EXPECT_LT(e.nmse, k_max_nmse) << lc::cpu_isa_name(isa) << " D=" << s.head_dim;
            EXPECT_LT(e.max_abs, k_max_abs) << lc::cpu_isa_name(isa) << " D=" << s.head_dim;
            EXPECT_LT(e.lse_abs, k_max_lse_abs) << lc::cpu_isa_name(isa) << " D=" << s.head_dim;
        }
    }
}

TEST(attn_sparse_prefill, random_plans_match_masked_reference) {
    lc::thread_pool pool(2);
    uint32_t        seed = 100;
    for (const shape & s : {shape{4, 4, 64, 300, 0}, shape{9, 3, 64, 190, 333}, shape{8, 2, 128, 129, 64},
                            shape{4, 1, 256, 150, 200}, shape{2, 1, 48, 65, 3}, shape{2, 2, 72, 70, 60}}) {
        const int64_t n_kv  = s.pos0 + s.n_q;
        auto          cache = make_cache(s.n_head_kv, s.head_dim, n_kv, seed);
        const auto    q     = randn(size_t(s.n_q * s.n_head * s.head_dim), 1.5f, seed + 1);
        const float   scale = 1.0f / std::sqrt(float(s.head_dim));
        for (int rep = 0; rep < 3; ++rep) {
            const prefill_plan plan = random_plan(s.n_q, s.pos0, s.n_head, seed + 10 + rep);
            ASSERT_TRUE(lc::prefill_plan_valid(plan));
            const out ref = run_masked_ref(plan, q, cache.view(), scale, pool);
            for (lc::cpu_isa isa : isas()) {
                const out    r = run_sparse(isa, plan, q, cache.view(), scale, pool);
                const errors e = compare_rows(r, ref);
                EXPECT_LT(e.nmse, k_max_nmse) << lc::cpu_isa_name(isa) << " D=" << s.head_dim << " rep " << rep;
                EXPECT_LT(e.max_abs, k_max_abs) << lc::cpu_isa_name(isa) << " D=" << s.head_dim << " rep " << rep;
                EXPECT_LT(e.lse_abs, k_max_lse_abs) << lc::cpu_isa_name(isa) << " D=" << s.head_dim;
            }
        }
        seed += 7;
    }
}

// A query's output does not depend on keys in its future: the KV rows after query 90 are replaced by other
// (large) values, and the outputs of queries 0..90 stay bit-identical, although their blocks' ranges and columns
// reach past them for later queries of the same block. (Tiles are loaded whole, so future rows inside a
// block's diagonal are read and multiplied by an exact zero weight; they hold finite values in a real cache.)
TEST(attn_sparse_prefill, causality_never_reads_future_keys) {
    lc::thread_pool pool(2);
    const int       n_head = 4, n_head_kv = 2, head_dim = 64;
    const int64_t   n_q = 256, pos0 = 100;
    auto            cache  = make_cache(n_head_kv, head_dim, pos0 + n_q, 5);
    const auto      q      = randn(size_t(n_q * n_head * head_dim), 1.0f, 6);
    const float     scale  = 0.125f;
    prefill_plan    plan   = random_plan(n_q, pos0, n_head, 77);
    const out       before = run_sparse(lc::cpu_isa_best(), plan, q, cache.view(), scale, pool);

    const int64_t cut   = pos0 + 90; // query 90's position; keys after it become NaN
    const size_t  row   = size_t(n_head_kv * head_dim);
    const int64_t n     = pos0 + n_q - (cut + 1);
    const auto    other = randn(size_t(n) * row, 300.0f, 9);
    cache.kv->write(0, 0, cut + 1, n, other.data(), other.data());
    const out after = run_sparse(lc::cpu_isa_best(), plan, q, cache.view(), scale, pool);
    for (int64_t i = 0; i <= 90; ++i)
        for (int h = 0; h < n_head; ++h)
            for (int d = 0; d < head_dim; ++d) {
                const size_t x = size_t((i * n_head + h) * head_dim + d);
                ASSERT_EQ(before.o[x], after.o[x]) << "query " << i << " head " << h;
            }
}

TEST(attn_sparse_prefill, empty_items_give_zero_and_neg_inf) {
    lc::thread_pool pool(2);
    auto            cache = make_cache(1, 64, 128, 1);
    const auto      q     = randn(size_t(128 * 2 * 64), 1.0f, 2);
    prefill_plan    plan;
    plan.reset(128, 0, 2);
    for (auto & hp : plan.heads) {
        hp.end_item();       // block 0: nothing
        hp.add_range(0, 10); // block 1: keys 0..9
        hp.end_item();
    }
    ASSERT_TRUE(lc::prefill_plan_valid(plan));
    for (lc::cpu_isa isa : isas()) {
        const out r = run_sparse(isa, plan, q, cache.view(), 0.125f, pool);
        for (int64_t i = 0; i < 64; ++i)
            for (int h = 0; h < 2; ++h) {
                EXPECT_EQ(r.lse[size_t(i * 2 + h)], -std::numeric_limits<float>::infinity());
                for (int d = 0; d < 64; ++d) EXPECT_EQ(r.o[size_t((i * 2 + h) * 64 + d)], 0.0f);
            }
        EXPECT_TRUE(std::isfinite(r.lse[size_t(64 * 2)]));
    }
}

TEST(prefill_plan, pair_counts_match_brute_force) {
    for (uint32_t seed = 1; seed < 6; ++seed) {
        const int64_t      n_q = 50 + seed * 37, pos0 = seed * 29;
        const prefill_plan plan   = random_plan(n_q, pos0, 3, seed);
        int64_t            causal = 0, computed = 0;
        for (int h = 0; h < 3; ++h)
            for (int64_t i = 0; i < n_q; ++i)
                for (int64_t t = 0; t <= pos0 + i; ++t) {
                    ++causal;
                    computed += plan_has(plan, h, i, t);
                }
        const auto c = lc::prefill_plan_count(plan);
        EXPECT_EQ(c.causal, causal);
        EXPECT_EQ(c.computed, computed);
    }
    prefill_plan full;
    lc::prefill_plan_full(full, 333, 17, 2);
    const auto c = lc::prefill_plan_count(full);
    EXPECT_EQ(c.computed, c.causal);
    EXPECT_EQ(c.causal, 2 * lc::prefill_causal_pairs(333, 17));
}

TEST(prefill_plan, add_range_merges_and_validation_rejects_bad_plans) {
    prefill_plan p;
    p.reset(64, 100, 1);
    auto & hp = p.heads[0];
    hp.add_range(0, 10);
    hp.add_range(10, 20); // adjacent: merged
    hp.add_range(15, 30); // overlapping: merged
    hp.add_range(40, 50);
    hp.add_col(35);
    hp.end_item();
    ASSERT_EQ(hp.ranges.size(), 2u);
    EXPECT_EQ(hp.ranges[0].begin, 0);
    EXPECT_EQ(hp.ranges[0].end, 30);
    EXPECT_TRUE(lc::prefill_plan_valid(p));

    prefill_plan bad     = p;
    bad.heads[0].cols[0] = 45; // inside a range
    EXPECT_FALSE(lc::prefill_plan_valid(bad));
    bad                  = p;
    bad.heads[0].cols[0] = 164; // past the last query (163)
    EXPECT_FALSE(lc::prefill_plan_valid(bad));
    bad                        = p;
    bad.heads[0].ranges[1].end = 200; // past the last query
    EXPECT_FALSE(lc::prefill_plan_valid(bad));
}

} // namespace
