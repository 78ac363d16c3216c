// The sparse decode kernel against the scalar decode-plan reference on random plans: ranges and gathered
// positions (unsorted), with and without log-weights, per query head and shared by a KV head's group (a group of
// 16 rows is split across kernel calls), entries without keys, plans long enough to split across
// threads, every kernel ISA of this machine and head dims 64, 128, 256. The full plan equals dense decoding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-sparse-decode.h"
#include "attn/decode/decode-plan.h"
#include "common/attn-util.h"

namespace {

using lc::test::make_cache;
using lc::test::randn;

// A random plan: per head 0-3 disjoint ranges and a random subset of the other positions (shuffled), with
// log-weights when weighted.
lc::decode_plan random_plan(int n_head, int group, int64_t n_kv, bool weighted, uint32_t seed) {
    std::mt19937    rng(seed);
    lc::decode_plan p;
    p.n_head = n_head;
    p.group  = group;
    p.heads.resize(size_t(n_head / group));
    for (int h = 0; h < n_head / group; ++h) {
        auto &            hp = p.heads[size_t(h)];
        std::vector<char> used(size_t(n_kv), 0);
        if (h == 1) continue; // a head with no keys
        const int            n_r = int(rng() % 4);
        std::vector<int64_t> cuts;
        for (int i = 0; i < 2 * n_r; ++i) cuts.push_back(int64_t(rng() % uint32_t(n_kv + 1)));
        std::sort(cuts.begin(), cuts.end());
        for (int i = 0; i < n_r; ++i)
            if (cuts[2 * i] < cuts[2 * i + 1]) {
                if (!hp.dense.empty() && hp.dense.back().end >= cuts[2 * i]) continue;
                hp.dense.push_back({int32_t(cuts[2 * i]), int32_t(cuts[2 * i + 1])});
                for (int64_t t = cuts[2 * i]; t < cuts[2 * i + 1]; ++t) used[size_t(t)] = 1;
            }
        const double keep = 0.05 + 0.5 * double(rng() % 100) / 100.0;
        for (int64_t t = 0; t < n_kv; ++t)
            if (!used[size_t(t)] && double(rng() % 1000) / 1000.0 < keep) hp.idx.push_back(int32_t(t));
        std::shuffle(hp.idx.begin(), hp.idx.end(), rng);
        if (weighted)
            for (size_t i = 0; i < hp.idx.size(); ++i) hp.logw.push_back(float(rng() % 1000) / 1000.0f * 6.0f - 3.0f);
    }
    return p;
}

TEST(sparse_decode, equals_the_reference_on_random_plans) {
    lc::thread_pool pool(3);
    for (lc::cpu_isa isa : lc::test::isas())
        for (int D : {64, 128, 256})
            for (int64_t n_kv : {1, 70, 3000})
                for (bool weighted : {false, true})
                    for (int group : {1, 3}) {
                        const int          n_head = 6, n_head_kv = 2;
                        auto               cache = make_cache(n_head_kv, D, n_kv, 11);
                        const auto         q     = randn(size_t(n_head * D), 1.0f, 12);
                        const float        scale = 1.0f / std::sqrt(float(D));
                        const auto         plan  = random_plan(n_head, group, n_kv, weighted, uint32_t(D + n_kv));
                        std::vector<float> o(size_t(n_head * D)), lse(static_cast<size_t>(n_head)), o_ref(o.size()),
                            lse_ref(lse.size());
                        lc::attn_decode_plan_ref(plan, q.data(), cache.view(), scale, o_ref.data(), lse_ref.data());
                        lc::attn_sparse_decode_isa(isa, plan, q.data(), cache.view(), scale, o.data(), lse.data(),
                                                   pool);
                        const auto e    = lc::test::compare(o, o_ref, lse, lse_ref);
                        const auto what = ::testing::Message()
                                          << lc::cpu_isa_name(isa) << " D=" << D << " n_kv=" << n_kv
                                          << " weighted=" << weighted << " group=" << group;
                        EXPECT_LT(e.max_abs, 2e-5) << what;
                        EXPECT_LT(e.lse_abs, 2e-5) << what;
                        // The empty entry 1: o = 0, lse = -inf for each of its heads.
                        for (int h = group; h < 2 * group; ++h) {
                            EXPECT_TRUE(std::isinf(lse[size_t(h)]) && lse[size_t(h)] < 0) << what;
                            for (int d = 0; d < D; ++d) EXPECT_EQ(o[size_t(h * D + d)], 0.0f) << what;
                        }
                    }
}

TEST(sparse_decode, a_group_of_sixteen_heads_shares_one_list) {
    lc::thread_pool pool(2);
    for (lc::cpu_isa isa : lc::test::isas()) {
        const int          n_head = 16, D = 64;
        auto               cache = make_cache(1, D, 2000, 41);
        const auto         q     = randn(size_t(n_head * D), 1.0f, 42);
        const auto         plan  = random_plan(n_head, 16, 2000, true, 43);
        std::vector<float> o(size_t(n_head * D)), lse(static_cast<size_t>(n_head)), o_ref(o.size()),
            lse_ref(lse.size());
        lc::attn_decode_plan_ref(plan, q.data(), cache.view(), 0.125f, o_ref.data(), lse_ref.data());
        lc::attn_sparse_decode_isa(isa, plan, q.data(), cache.view(), 0.125f, o.data(), lse.data(), pool);
        const auto e = lc::test::compare(o, o_ref, lse, lse_ref);
        EXPECT_LT(e.max_abs, 2e-5) << lc::cpu_isa_name(isa);
        EXPECT_LT(e.lse_abs, 2e-5) << lc::cpu_isa_name(isa);
    }
}

TEST(sparse_decode, full_plan_equals_dense_decoding) {
    for (int threads : {1, 2, 5}) {
        lc::thread_pool pool(threads);
        for (lc::cpu_isa isa : lc::test::isas()) {
            const int       n_head = 8, n_head_kv = 1, D = 128;
            const int64_t   n_kv  = 5000; // several parts per head
            auto            cache = make_cache(n_head_kv, D, n_kv, 21);
            const auto      q     = randn(size_t(n_head * D), 1.0f, 22);
            const float     scale = 1.0f / std::sqrt(float(D));
            lc::decode_plan plan;
            lc::decode_plan_full(plan, n_head, n_kv);
            std::vector<float> o(size_t(n_head * D)), lse(static_cast<size_t>(n_head)), od(o.size()), lsed(lse.size());
            lc::attn_sparse_decode_isa(isa, plan, q.data(), cache.view(), scale, o.data(), lse.data(), pool);
            lc::attn_dense(q.data(), 1, n_kv - 1, n_head, cache.view(), scale, od.data(), lsed.data(), pool);
            const auto e = lc::test::compare(o, od, lse, lsed);
            EXPECT_LT(e.max_abs, 2e-5) << lc::cpu_isa_name(isa) << " threads=" << threads;
            EXPECT_LT(e.lse_abs, 2e-5) << lc::cpu_isa_name(isa) << " threads=" << threads;
        }
    }
}

// A log-weight of ln 3 on one of two keys with equal scores gives that key weight 3/4 (worked by hand:
// exp(s + ln 3) / (exp(s) + exp(s + ln 3)) = 3 / 4).
TEST(sparse_decode, log_weight_scales_a_key_by_hand) {
    lc::thread_pool pool(1);
    const int       D     = 64;
    auto            cache = make_cache(1, D, 2, 31);
    // q = 0: both scores are 0.
    const std::vector<float> q(D, 0.0f);
    lc::decode_plan          plan;
    plan.n_head = 1;
    plan.heads.resize(1);
    plan.heads[0].idx    = {0, 1};
    plan.heads[0].logw   = {0.0f, std::log(3.0f)};
    const lc::kv_view  v = cache.view();
    std::vector<float> o(D), lse(1);
    for (lc::cpu_isa isa : lc::test::isas()) {
        lc::attn_sparse_decode_isa(isa, plan, q.data(), v, 1.0f, o.data(), lse.data(), pool);
        for (int d = 0; d < D; ++d) {
            const float want = 0.25f * lc::fp16_to_fp32(v.v_row(0, 0)[d]) + 0.75f * lc::fp16_to_fp32(v.v_row(1, 0)[d]);
            EXPECT_NEAR(o[size_t(d)], want, 1e-5f) << lc::cpu_isa_name(isa);
        }
        EXPECT_NEAR(lse[0], std::log(4.0f), 1e-5f); // ln(e^0 + e^ln3)
    }
}

} // namespace
