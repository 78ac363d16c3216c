// Decode plans: the full plan equals dense decoding (the optimised dense kernel) on every shape; a plan split
// into disjoint parts, each executed alone and merged by log-sum-exp, equals the plan executed at once, also
// with per-token log-weights; a log-weight of ln w scales a token's weight by w (checked by hand on two keys).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-state.h"
#include "attn/decode/decode-plan.h"
#include "common/attn-util.h"

namespace {

using lc::test::make_cache;
using lc::test::randn;

TEST(decode_plan, full_plan_equals_dense_decode) {
    lc::thread_pool pool(2);
    for (int D : {64, 128, 256}) {
        const int       n_head = 8, n_head_kv = 2;
        const int64_t   n_kv  = 777;
        auto            cache = make_cache(n_head_kv, D, n_kv, 3);
        const auto      q     = randn(size_t(n_head * D), 1.0f, 4);
        const float     scale = 1.0f / std::sqrt(float(D));
        lc::decode_plan plan;
        lc::decode_plan_full(plan, n_head, n_kv);
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

TEST(decode_plan, parts_merge_to_the_whole_with_log_weights) {
    const int       n_head = 4, n_head_kv = 1, D = 64;
    const int64_t   n_kv  = 500;
    auto            cache = make_cache(n_head_kv, D, n_kv, 5);
    const auto      q     = randn(size_t(n_head * D), 1.0f, 6);
    lc::decode_plan whole, a, b;
    whole.n_head = a.n_head = b.n_head = n_head;
    whole.heads.resize(n_head);
    a.heads.resize(n_head);
    b.heads.resize(n_head);
    for (int h = 0; h < n_head; ++h) {
        whole.heads[h].dense = {{0, 4}, {436, 500}};
        a.heads[h].dense     = {{0, 4}};
        b.heads[h].dense     = {{436, 500}};
        for (int32_t t = 10 + h; t < 400; t += 7) {
            const float w = -std::log(0.05f + 0.9f * float((t * 37) % 100) / 100.0f);
            whole.heads[h].idx.push_back(t);
            whole.heads[h].logw.push_back(w);
            a.heads[h].idx.push_back(t);
            a.heads[h].logw.push_back(w);
        }
    }
    std::vector<float> ow(size_t(n_head * D)), lw(n_head), oa(ow.size()), la(n_head), ob(ow.size()), lb(n_head);
    lc::attn_decode_plan_ref(whole, q.data(), cache.view(), 0.125f, ow.data(), lw.data());
    lc::attn_decode_plan_ref(a, q.data(), cache.view(), 0.125f, oa.data(), la.data());
    lc::attn_decode_plan_ref(b, q.data(), cache.view(), 0.125f, ob.data(), lb.data());
    for (int h = 0; h < n_head; ++h) {
        std::vector<float> o(static_cast<size_t>(D));
        float              l = 0;
        lc::attn_state_merge(oa.data() + h * D, la[h], ob.data() + h * D, lb[h], D, o.data(), &l);
        EXPECT_NEAR(l, lw[h], 1e-5);
        for (int d = 0; d < D; ++d) EXPECT_NEAR(o[d], ow[size_t(h * D + d)], 1e-5);
    }
}

// Two keys with scores s0, s1 and log-weights 0, ln 3: o = (e^s0 v0 + 3 e^s1 v1) / (e^s0 + 3 e^s1).
TEST(decode_plan, log_weight_scales_a_tokens_weight) {
    auto              cache = make_cache(1, 64, 2, 7);
    const auto        q     = randn(64, 1.0f, 8);
    const lc::kv_view kv    = cache.view();
    lc::decode_plan   plan;
    plan.n_head = 1;
    plan.heads.resize(1);
    plan.heads[0].idx  = {0, 1};
    plan.heads[0].logw = {0.0f, std::log(3.0f)};
    std::vector<float> o(64);
    float              lse = 0;
    lc::attn_decode_plan_ref(plan, q.data(), kv, 0.125f, o.data(), &lse);
    double s[2];
    for (int t = 0; t < 2; ++t) {
        s[t] = 0;
        for (int d = 0; d < 64; ++d) s[t] += double(q[size_t(d)]) * lc::fp16_to_fp32(kv.k_row(t, 0)[d]);
        s[t] *= 0.125;
    }
    const double w0 = std::exp(s[0]), w1 = 3.0 * std::exp(s[1]);
    EXPECT_NEAR(lse, std::log(w0 + w1), 1e-5);
    for (int d = 0; d < 64; ++d) {
        const double want =
            (w0 * lc::fp16_to_fp32(kv.v_row(0, 0)[d]) + w1 * lc::fp16_to_fp32(kv.v_row(1, 0)[d])) / (w0 + w1);
        EXPECT_NEAR(o[size_t(d)], want, 1e-5);
    }
}

} // namespace
