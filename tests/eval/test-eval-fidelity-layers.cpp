// Per-layer fidelity (eval/attn-fidelity.h): a full plan and a dense call give recall 1 and error ~0; on a random
// sparse plan the observer's recall and relative error match a brute-force N x N computation in double; block
// sampling; sliding-window calls are skipped; decode steps; the per-layer aggregation and the report's tables.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-sparse-decode.h"
#include "attn/attn-sparse-prefill.h"
#include "attn/prefill-plan.h"
#include "common/attn-util.h"
#include "core/fp16.h"
#include "eval/attn-fidelity.h"
#include "eval/report.h"

using namespace lc;
using namespace lc::eval;
using lc::test::make_cache;
using lc::test::randn;

namespace {

constexpr int     k_n_head    = 4;
constexpr int     k_n_head_kv = 2;
constexpr int     k_head_dim  = 64;
constexpr int64_t k_pos0      = 70; // a chunk after 70 cached tokens: blocks are not aligned to the positions
constexpr int64_t k_n_q       = 200;
constexpr int64_t k_n_kv      = k_pos0 + k_n_q;

struct setup {
    lc::test::test_cache cache = make_cache(k_n_head_kv, k_head_dim, k_n_kv, 11);
    // Larger queries than unit variance make the softmax peaked, so that recall differs from key coverage.
    std::vector<float> q     = randn(size_t(k_n_q * k_n_head * k_head_dim), 2.0f, 12);
    float              scale = 1.0f / std::sqrt(float(k_head_dim));
    thread_pool        pool{2};
    kv_view            kv() const { return cache.view(); }
};

bool in_item(const prefill_plan & p, int h, int64_t b, int64_t t) {
    const prefill_head_plan & hp = p.heads[size_t(h)];
    for (int64_t x = hp.range_off[size_t(b)]; x < hp.range_off[size_t(b) + 1]; ++x)
        if (t >= hp.ranges[size_t(x)].begin && t < hp.ranges[size_t(x)].end) return true;
    for (int64_t x = hp.col_off[size_t(b)]; x < hp.col_off[size_t(b) + 1]; ++x)
        if (hp.cols[size_t(x)] == t) return true;
    return false;
}

// Per item: a sink range, a random middle range, the local window and a few random columns outside them.
prefill_plan sparse_plan(uint32_t seed) {
    std::mt19937 rng(seed);
    prefill_plan p;
    p.reset(k_n_q, k_pos0, k_n_head);
    for (int h = 0; h < k_n_head; ++h) {
        prefill_head_plan & hp = p.heads[size_t(h)];
        for (int64_t b = 0; b < p.n_qblk(); ++b) {
            const int64_t first = p.q_first(b), last = p.q_last(b);
            const int64_t mid = 8 + int64_t(rng() % uint32_t(std::max<int64_t>(1, first - 40)));
            hp.add_range(0, 4);
            hp.add_range(mid, std::min(mid + 12, last + 1));
            hp.add_range(std::max<int64_t>(0, first - 16), last + 1);
            const size_t      n_r = hp.ranges.size() - size_t(hp.range_off.back());
            std::set<int64_t> cols;
            while (cols.size() < 5) {
                const int64_t t  = int64_t(rng() % uint32_t(last + 1));
                bool          in = false;
                for (size_t x = hp.ranges.size() - n_r; x < hp.ranges.size(); ++x)
                    in = in || (t >= hp.ranges[x].begin && t < hp.ranges[x].end);
                if (!in) cols.insert(t);
            }
            for (int64_t t : cols) hp.add_col(t);
            hp.end_item();
        }
    }
    return p;
}

struct brute {
    double recall_mean = 0, recall_min = 1, rel_err = 0;
};

// Dense probabilities row by row in double over fp16 keys; recall and output error of o against dense.
brute brute_force(const setup & s, const prefill_plan & plan, const std::vector<float> & o) {
    const kv_view       kv = s.kv();
    const int           D  = k_head_dim;
    brute               r;
    double              rc_sum = 0, err = 0, ref = 0;
    std::vector<double> item(size_t(k_n_head) * size_t(plan.n_qblk()), 0.0);
    for (int64_t i = 0; i < k_n_q; ++i) {
        const int64_t p = k_pos0 + i;
        for (int h = 0; h < k_n_head; ++h) {
            const int           hk = h / (k_n_head / k_n_head_kv);
            const float *       qi = s.q.data() + (size_t(i) * k_n_head + size_t(h)) * D;
            std::vector<double> sc(size_t(p + 1));
            double              mx = -INFINITY;
            for (int64_t t = 0; t <= p; ++t) {
                double d = 0;
                for (int c = 0; c < D; ++c) d += double(qi[c]) * double(fp16_to_fp32(kv.k_row(t, hk)[c]));
                sc[size_t(t)] = d * s.scale;
                mx            = std::max(mx, sc[size_t(t)]);
            }
            double sum = 0;
            for (double & v : sc) sum += (v = std::exp(v - mx));
            std::vector<double> od(size_t(D), 0.0);
            double              rc = 0;
            for (int64_t t = 0; t <= p; ++t) {
                const double pr = sc[size_t(t)] / sum;
                if (in_item(plan, h, i / prefill_qblock, t)) rc += pr;
                for (int c = 0; c < D; ++c) od[size_t(c)] += pr * double(fp16_to_fp32(kv.v_row(t, hk)[c]));
            }
            rc_sum += rc;
            item[size_t(h) * size_t(plan.n_qblk()) + size_t(i / prefill_qblock)] += rc;
            const float * oi = o.data() + (size_t(i) * k_n_head + size_t(h)) * D;
            for (int c = 0; c < D; ++c) {
                err += (double(oi[c]) - od[size_t(c)]) * (double(oi[c]) - od[size_t(c)]);
                ref += od[size_t(c)] * od[size_t(c)];
            }
        }
    }
    for (int h = 0; h < k_n_head; ++h)
        for (int64_t b = 0; b < plan.n_qblk(); ++b) {
            const double rows = double(plan.q_last(b) - plan.q_first(b) + 1);
            r.recall_min      = std::min(r.recall_min, item[size_t(h) * size_t(plan.n_qblk()) + size_t(b)] / rows);
        }
    r.recall_mean = rc_sum / double(k_n_q * k_n_head);
    r.rel_err     = std::sqrt(err / ref);
    return r;
}

std::vector<float> run_plan(setup & s, const prefill_plan & plan) {
    std::vector<float> o(s.q.size());
    attn_sparse_prefill(plan, s.q.data(), s.kv(), s.scale, o.data(), nullptr, s.pool);
    return o;
}

} // namespace

TEST(eval_fidelity_layers, full_plan_and_dense_call_are_exact) {
    setup        s;
    prefill_plan full;
    prefill_plan_full(full, k_n_q, k_pos0, k_n_head);
    const std::vector<float> o_full = run_plan(s, full);
    std::vector<float>       o_dense(s.q.size());
    attn_dense(s.q.data(), k_n_q, k_pos0, k_n_head, s.kv(), s.scale, o_dense.data(), nullptr, s.pool);

    fidelity_observer obs(3, 1);
    obs.on_attention(1, s.q.data(), k_n_q, k_pos0, k_n_head, s.kv(), s.scale, attn_window_none, &full, o_full.data(),
                     s.pool);
    obs.on_attention(2, s.q.data(), k_n_q, k_pos0, k_n_head, s.kv(), s.scale, attn_window_none, nullptr, o_dense.data(),
                     s.pool);
    const auto L = obs.layers();
    ASSERT_EQ(L.size(), 2u); // layer 0 never called
    EXPECT_EQ(L[0].il, 1);
    EXPECT_EQ(L[0].n_rows, k_n_q);
    EXPECT_EQ(L[0].n_row_heads, k_n_q * k_n_head);
    // The full plan's recall comes from column sums in f32 over up to 270 keys: 1 within rounding.
    EXPECT_NEAR(L[0].recall_mean(), 1.0, 1e-5);
    EXPECT_NEAR(L[0].recall_min, 1.0, 1e-5);
    EXPECT_LT(L[0].rel_err(), 1e-5);    // the same f32 tiles, a different split: rounding only
    EXPECT_EQ(L[1].recall_mean(), 1.0); // a dense call is 1 by definition
    EXPECT_LT(L[1].rel_err(), 1e-5);
    EXPECT_TRUE(std::isnan(L[0].decode_rel_err()));
    EXPECT_GT(obs.seconds(), 0.0);
    obs.clear();
    EXPECT_TRUE(obs.layers().empty());
}

TEST(eval_fidelity_layers, sparse_plan_matches_brute_force) {
    setup              s;
    const prefill_plan plan = sparse_plan(5);
    ASSERT_TRUE(prefill_plan_valid(plan));
    const std::vector<float> o = run_plan(s, plan);
    const brute              b = brute_force(s, plan, o);
    // The plan must be sparse enough to matter, or the test would not tell recall from 1.
    ASSERT_LT(b.recall_mean, 0.95);
    ASSERT_GT(b.rel_err, 1e-3);

    fidelity_observer obs(1, 1);
    obs.on_attention(0, s.q.data(), k_n_q, k_pos0, k_n_head, s.kv(), s.scale, attn_window_none, &plan, o.data(),
                     s.pool);
    const auto L = obs.layers();
    ASSERT_EQ(L.size(), 1u);
    EXPECT_NEAR(L[0].recall_mean(), b.recall_mean, 1e-5);
    EXPECT_NEAR(L[0].recall_min, b.recall_min, 1e-5);
    EXPECT_NEAR(L[0].rel_err(), b.rel_err, 1e-4 * b.rel_err + 1e-6);
}

TEST(eval_fidelity_layers, block_sampling_window_and_decode) {
    setup                    s;
    const prefill_plan       plan = sparse_plan(6);
    const std::vector<float> o    = run_plan(s, plan);
    // pos0 = 70: the call's blocks are document blocks 1, 2, 3, 4 (70 / 64 = 1); stride 2 measures those with
    // (1 + b) % 2 == 1, i.e. call blocks 0 and 2 (64 rows each).
    fidelity_observer obs(2, 2);
    obs.on_attention(0, s.q.data(), k_n_q, k_pos0, k_n_head, s.kv(), s.scale, attn_window_none, &plan, o.data(),
                     s.pool);
    // A sliding-window layer is not measured.
    obs.on_attention(1, s.q.data(), k_n_q, k_pos0, k_n_head, s.kv(), s.scale, 128, nullptr, o.data(), s.pool);
    auto L = obs.layers();
    ASSERT_EQ(L.size(), 1u);
    EXPECT_EQ(L[0].n_rows, 128);
    EXPECT_GT(L[0].recall_mean(), 0.0);
    EXPECT_LT(L[0].recall_mean(), 1.0);

    // Decode steps: the exact output gives 0, a scaled one its relative error (0.1).
    const int64_t      pos = k_n_kv - 1;
    const float *      qd  = s.q.data() + size_t(k_n_q - 1) * k_n_head * k_head_dim;
    std::vector<float> od(size_t(k_n_head) * k_head_dim);
    attn_dense(qd, 1, pos, k_n_head, s.kv(), s.scale, od.data(), nullptr, s.pool);
    obs.on_attention(1, qd, 1, pos, k_n_head, s.kv(), s.scale, attn_window_none, nullptr, od.data(), s.pool);
    for (float & v : od) v *= 1.1f;
    obs.on_attention(1, qd, 1, pos, k_n_head, s.kv(), s.scale, attn_window_none, nullptr, od.data(), s.pool);
    L = obs.layers();
    ASSERT_EQ(L.size(), 2u);
    EXPECT_EQ(L[1].n_decode, 2);
    EXPECT_EQ(L[1].n_rows, 0);
    EXPECT_NEAR(L[1].decode_rel_err(), std::sqrt(0.01 / 2.0), 1e-5); // errors pooled over both steps
}

TEST(eval_fidelity_layers, aggregation) {
    std::vector<layer_fidelity> L(3);
    // Layer 0: recall 0.9, error 0.1; layer 2: recall 0.5 (worst), error 0.3 (worst), 2 decode steps;
    // layer 5: decode only.
    L[0].il = 0, L[0].n_rows = 10, L[0].n_row_heads = 40, L[0].recall_sum = 36, L[0].recall_min = 0.7;
    L[0].err_sq = 1, L[0].ref_sq = 100;
    L[1].il = 2, L[1].n_rows = 10, L[1].n_row_heads = 40, L[1].recall_sum = 20, L[1].recall_min = 0.2;
    L[1].err_sq = 9, L[1].ref_sq = 100, L[1].n_decode = 2, L[1].dec_err_sq = 4, L[1].dec_ref_sq = 100;
    L[2].il = 5, L[2].n_decode = 3, L[2].dec_err_sq = 16, L[2].dec_ref_sq = 100;
    const json j = layer_fidelity_json(L);
    ASSERT_EQ(j.at("layers").size(), 3u);
    EXPECT_NEAR(j["layers"][0]["recall_mean"].get<double>(), 0.9, 1e-12);
    EXPECT_NEAR(j["layers"][1]["rel_err"].get<double>(), 0.3, 1e-12);
    EXPECT_FALSE(j["layers"][2].contains("recall_mean"));
    EXPECT_NEAR(j["layers"][2]["decode_rel_err"].get<double>(), 0.4, 1e-12);
    EXPECT_NEAR(j.at("attn_recall_mean").get<double>(), 0.7, 1e-12); // (0.9 + 0.5) / 2: layer 5 has no rows
    EXPECT_NEAR(j.at("attn_rel_err_mean").get<double>(), 0.2, 1e-12);
    EXPECT_EQ(j["attn_recall_worst"]["layer"].get<int>(), 2);
    EXPECT_NEAR(j["attn_recall_worst"]["value"].get<double>(), 0.5, 1e-12);
    EXPECT_EQ(j["attn_rel_err_worst"]["layer"].get<int>(), 2);
    EXPECT_NEAR(j.at("attn_decode_rel_err_mean").get<double>(), 0.3, 1e-12); // (0.2 + 0.4) / 2
    EXPECT_TRUE(layer_fidelity_json({}).empty());
}

TEST(eval_fidelity_layers, report_tables) {
    // Two records of one file with per-layer numbers, one old record without them (still loads).
    json d = {{"eval", "fidelity"}, {"meta", {{"task", "fidelity"}}}, {"records", json::array()}};
    for (int r = 0; r < 3; ++r) {
        json rec = {{"key", std::to_string(r)},
                    {"length", 4096},
                    {"doc", r},
                    {"kl_mean", 0.01},
                    {"kl_max", 0.5},
                    {"top1_agree", 0.99},
                    {"runs", {{{"label", "dense"}, {"prefill_s", 1.0}}, {{"label", "m"}, {"prefill_s", 1.0}}}}};
        if (r < 2) {
            std::vector<layer_fidelity> L(2);
            L[0].il = 1, L[0].n_rows = 1, L[0].n_row_heads = 1, L[0].recall_sum = r == 0 ? 0.8 : 0.6;
            L[0].recall_min = 0.5, L[0].err_sq = 1, L[0].ref_sq = 100;
            L[1].il = 4, L[1].n_rows = 1, L[1].n_row_heads = 1, L[1].recall_sum = 1, L[1].recall_min = 1;
            L[1].err_sq = 0, L[1].ref_sq = 1;
            const json lf = layer_fidelity_json(L);
            for (auto it = lf.begin(); it != lf.end(); ++it) rec[it.key()] = it.value();
            rec["layer_sample"] = 4;
        }
        d["records"].push_back(rec);
    }
    auto md = report_markdown({{"f.json", d}});
    ASSERT_TRUE(md);
    EXPECT_NE(md->find("| 4096 | 0 | 0.01 | 0.5 | 0.9900 | 0.9000 | 0.8000 (L1) | 0.05 | 0.1 (L1) |"),
              std::string::npos)
        << *md;
    EXPECT_NE(md->find("| 4096 | 2 | 0.01 | 0.5 | 0.9900 | - | - | - | - |"), std::string::npos) << *md;
    EXPECT_NE(md->find("| 1 | 0.7000 | 0.5000 | 0.1 |"), std::string::npos) << *md; // mean of 0.8 and 0.6
    EXPECT_NE(md->find("| 4 | 1.0000 | 1.0000 | 0 |"), std::string::npos) << *md;
}

// Decode recall: the dense mass on a decode plan's keys against a brute-force softmax in double, 1 for the full plan,
// and the observer records it per step (1 for a step without a plan).
TEST(attn_fidelity, decode_plan_mass_matches_brute_force) {
    setup         s;
    const kv_view kv = s.kv();
    const float * q  = s.q.data(); // the first row as one decoding query per head
    std::vector<float> o(size_t(k_n_head * k_head_dim)), lse(k_n_head);
    attn_dense(q, 1, k_n_kv - 1, k_n_head, kv, s.scale, o.data(), lse.data(), s.pool);

    decode_plan full;
    decode_plan_full(full, k_n_head, k_n_kv);
    EXPECT_NEAR(decode_plan_mass(full, q, kv, s.scale, lse.data()), 1.0, 1e-5);

    // Per KV-head entries (group 2): a sink range, the last 16 keys and a few indexed tokens.
    decode_plan p;
    p.n_head = k_n_head;
    p.group  = 2;
    p.heads.resize(2);
    p.heads[0].dense = {{0, 4}, {k_n_kv - 16, k_n_kv}};
    p.heads[0].idx   = {10, 77, 150};
    p.heads[1].dense = {{k_n_kv - 8, k_n_kv}};
    p.heads[1].idx   = {0, 5, 99, 200, 201};
    double want = 0;
    for (int h = 0; h < k_n_head; ++h) {
        std::vector<double> z(k_n_kv);
        double              mx = -1e300, sum = 0;
        for (int64_t j = 0; j < k_n_kv; ++j) {
            double d = 0;
            for (int x = 0; x < k_head_dim; ++x)
                d += double(q[h * k_head_dim + x]) * double(fp16_to_fp32(kv.k_row(j, h / 2)[x]));
            z[size_t(j)] = double(s.scale) * d;
            mx           = std::max(mx, z[size_t(j)]);
        }
        for (double v : z) sum += std::exp(v - mx);
        const decode_head_plan & e = p.heads[size_t(h / 2)];
        std::set<int64_t>        keys(e.idx.begin(), e.idx.end());
        for (const key_range & r : e.dense)
            for (int64_t j = r.begin; j < r.end; ++j) keys.insert(j);
        double m = 0;
        for (int64_t j : keys) m += std::exp(z[size_t(j)] - mx) / sum;
        want += m / k_n_head;
    }
    const double got = decode_plan_mass(p, q, kv, s.scale, lse.data());
    EXPECT_NEAR(got, want, 1e-5);
    EXPECT_LT(got, 0.9); // a sparse plan misses mass here

    fidelity_observer obs(1, 1);
    obs.on_decode_plan(0, p);
    attn_sparse_decode(p, q, kv, s.scale, o.data(), nullptr, s.pool);
    obs.on_attention(0, q, 1, k_n_kv - 1, k_n_head, kv, s.scale, attn_window_none, nullptr, o.data(), s.pool);
    attn_dense(q, 1, k_n_kv - 1, k_n_head, kv, s.scale, o.data(), nullptr, s.pool);
    obs.on_attention(0, q, 1, k_n_kv - 1, k_n_head, kv, s.scale, attn_window_none, nullptr, o.data(), s.pool);
    const std::vector<layer_fidelity> L = obs.layers();
    ASSERT_EQ(L.size(), 1u);
    EXPECT_EQ(L[0].n_decode, 2);
    EXPECT_NEAR(L[0].decode_recall(), (want + 1.0) / 2, 1e-5);
}
