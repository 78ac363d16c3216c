// KV policies: the keep set against a brute-force selection, D2O's layer ratios on a hand-worked example, the
// merge rules against a double-precision computation (and no change when nothing reaches the threshold), cache
// compaction (rows moved per KV head, pages freed), and on the default model: every policy at a 100% budget gives
// the dense logits bit for bit, eviction keeps the sink and recent rows untouched, merged K/V stay finite.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <numeric>
#include <random>
#include <vector>

#include "common/util.h"
#include "kv/kv-policy.h"
#include "model/model.h"
#include "runtime/context.h"
#include "tokenizer/tokenizer.h"

namespace {

std::vector<int32_t> brute_keep(const std::vector<float> & s, int64_t n, int64_t sink, int64_t recent, int64_t heavy) {
    sink   = std::min(sink, n);
    recent = std::min(recent, n - sink);
    heavy  = std::min(heavy, n - sink - recent);
    std::vector<int32_t> cand;
    for (int64_t t = sink; t < n - recent; ++t) cand.push_back(int32_t(t));
    std::stable_sort(cand.begin(), cand.end(), [&](int32_t a, int32_t b) { return s[size_t(a)] > s[size_t(b)]; });
    cand.resize(size_t(heavy));
    for (int64_t t = 0; t < sink; ++t) cand.push_back(int32_t(t));
    for (int64_t t = n - recent; t < n; ++t) cand.push_back(int32_t(t));
    std::sort(cand.begin(), cand.end());
    return cand;
}

} // namespace

TEST(kv_policy, keep_set_matches_brute_force) {
    std::mt19937 rng(7);
    for (int it = 0; it < 300; ++it) {
        const int64_t        n = 1 + int64_t(rng() % 3000);
        std::vector<float>   s(static_cast<size_t>(n));
        std::uniform_int_distribution<int> q(0, 40); // coarse values: many ties
        for (float & v : s) v = float(q(rng)) * 0.25f;
        const int64_t sink = int64_t(rng() % 8), recent = int64_t(rng() % 200), heavy = int64_t(rng() % 1200);
        std::vector<int32_t> got;
        lc::evict_keep_set(s.data(), n, sink, recent, heavy, got);
        EXPECT_EQ(got, brute_keep(s, n, sink, recent, heavy)) << "n " << n << " sink " << sink << " recent " << recent
                                                              << " heavy " << heavy;
    }
}

TEST(kv_policy, d2o_layer_ratios_hand_example) {
    // Layer 0: equal variances -> normalised 0, 0 -> sigma 0. Layer 1: variances 0 and 2 -> 0 and 2 / (2 + 1e-6).
    const std::vector<std::vector<double>> sigma = {{1.0, 1.0}, {0.0, 2.0}};
    const double s1 = 0.5 * (2.0 / (2.0 + 1e-6));
    const double z  = 1.0 + std::exp(-s1);
    const auto   r  = lc::d2o_layer_ratios(sigma, 0.2);
    ASSERT_EQ(r.size(), 2u);
    EXPECT_NEAR(r[0], 2 * 0.2 * 1.0 / z, 1e-12);
    EXPECT_NEAR(r[1], 2 * 0.2 * std::exp(-s1) / z, 1e-12);
    EXPECT_GT(r[0], r[1]); // the lower-variance layer keeps more
    const auto big = lc::d2o_layer_ratios(sigma, 0.9);
    EXPECT_EQ(big[0], 1.0); // clamped
    const auto tiny = lc::d2o_layer_ratios(sigma, 0.001);
    EXPECT_EQ(tiny[1], 0.01);
}

namespace {

// A cache of one layer, 2 KV heads, head_dim 4, whose rows hold known values: K[t][h][d] = t + 0.25 h + d / 2.
lc::kv_cache small_cache(int64_t n) {
    lc::kv_cache kv(1, 2, 4, 1024);
    EXPECT_TRUE(kv.reserve(0, n).is_ok());
    std::vector<float> k(size_t(n) * 8), v(size_t(n) * 8);
    for (int64_t t = 0; t < n; ++t)
        for (int h = 0; h < 2; ++h)
            for (int d = 0; d < 4; ++d) {
                k[size_t((t * 2 + h) * 4 + d)] = float(t) + 0.25f * float(h) + float(d) / 2.0f;
                v[size_t((t * 2 + h) * 4 + d)] = -float(t) - 0.25f * float(h);
            }
    kv.write(0, 0, 0, n, k.data(), v.data());
    return kv;
}

} // namespace

TEST(kv_policy, keep_rows_moves_rows_per_head_and_frees_pages) {
    lc::kv_cache kv = small_cache(200); // 4 pages
    EXPECT_EQ(kv.n_pages_free(), kv.n_pages_total() - 4);
    std::vector<int32_t> k0 = {0, 1, 5, 70, 130, 199}, k1 = {2, 3, 4, 64, 65, 198};
    kv.keep_rows(0, 0, 0, k0.data(), 6);
    kv.keep_rows(0, 0, 1, k1.data(), 6);
    kv.finish_keep(0, 0, 6);
    EXPECT_EQ(kv.n_slots(0, 0), 6);
    EXPECT_EQ(kv.n_pages_free(), kv.n_pages_total() - 1);
    const lc::kv_view v = kv.view(0, 0);
    for (int i = 0; i < 6; ++i) {
        EXPECT_EQ(lc::fp16_to_fp32(v.k_row(i, 0)[1]), float(k0[size_t(i)]) + 1.0f / 2.0f);
        EXPECT_EQ(lc::fp16_to_fp32(v.k_row(i, 1)[0]), float(k1[size_t(i)]) + 0.25f);
        EXPECT_EQ(lc::fp16_to_fp32(v.v_row(i, 1)[3]), -float(k1[size_t(i)]) - 0.25f);
    }
    // Appending continues after the kept rows.
    ASSERT_TRUE(kv.reserve_append(0, 1).is_ok());
    std::vector<float> row(8, 9.0f);
    kv.write(0, 0, kv.n_slots(0, 0), 1, row.data(), row.data());
    EXPECT_EQ(kv.n_slots(0, 0), 7);
    EXPECT_EQ(lc::fp16_to_fp32(kv.view(0, 0).k_row(6, 1)[2]), 9.0f);
    kv.truncate(0, 3);
    EXPECT_EQ(kv.n_slots(0, 0), 3);
    kv.clear(0);
    EXPECT_EQ(kv.n_pages_free(), kv.n_pages_total());
}

TEST(kv_policy, merge_rules_against_double_reference) {
    for (lc::d2o_merge rule : {lc::d2o_merge::REFERENCE, lc::d2o_merge::SOFTMAX}) {
        lc::kv_cache               kv      = small_cache(8);
        const std::vector<int32_t> keep    = {0, 3, 7};
        const std::vector<int32_t> evicted = {1, 2, 4, 5, 6};
        const std::vector<float>   u       = {0.9f, 0.2f, 0.8f, 0.7f, 0.95f};
        const std::vector<int32_t> arg     = {0, 0, 1, 1, 1}; // into slots 0, 0, 3, 3, 3
        const float                tau     = 0.5f;              // row 2 (u 0.2) is dropped
        std::vector<double>        want_k(3 * 4), want_v(3 * 4);
        for (size_t c = 0; c < 3; ++c)
            for (int d = 0; d < 4; ++d) {
                auto kx = [&](int32_t t) { return double(t) + 0.25 + d / 2.0; }; // KV head 1
                auto vx = [&](int32_t t) { return -double(t) - 0.25; };
                const double self = rule == lc::d2o_merge::SOFTMAX ? std::exp(1.0) : 1.0;
                double       nk = self * kx(keep[c]), nv = self * vx(keep[c]), den = self;
                int          m = 0;
                for (size_t i = 0; i < evicted.size(); ++i) {
                    if (u[i] < tau || size_t(arg[i]) != c) continue;
                    const double w = rule == lc::d2o_merge::SOFTMAX ? std::exp(double(u[i])) : double(u[i]);
                    nk += w * kx(evicted[i]);
                    nv += w * vx(evicted[i]);
                    den += rule == lc::d2o_merge::SOFTMAX ? w : 1.0;
                    ++m;
                }
                want_k[c * 4 + size_t(d)] = m ? nk / den : kx(keep[c]);
                want_v[c * 4 + size_t(d)] = m ? nv / den : vx(keep[c]);
            }
        const int64_t n = lc::d2o_merge_rows(kv, 0, 0, 1, keep, evicted, u.data(), arg.data(), tau, rule);
        EXPECT_EQ(n, 4);
        const lc::kv_view v = kv.view(0, 0);
        for (size_t c = 0; c < 3; ++c)
            for (int d = 0; d < 4; ++d) {
                const double tol = 2e-3 * std::max(1.0, std::fabs(want_k[c * 4 + size_t(d)]));
                EXPECT_NEAR(lc::fp16_to_fp32(v.k_row(keep[c], 1)[d]), want_k[c * 4 + size_t(d)], tol);
                EXPECT_NEAR(lc::fp16_to_fp32(v.v_row(keep[c], 1)[d]), want_v[c * 4 + size_t(d)], tol);
                // KV head 0 untouched
                EXPECT_EQ(lc::fp16_to_fp32(v.k_row(keep[c], 0)[d]), float(keep[c]) + float(d) / 2.0f);
            }
    }
}

TEST(kv_policy, merge_is_a_no_op_below_the_threshold) {
    lc::kv_cache               kv = small_cache(8), ref = small_cache(8);
    const std::vector<int32_t> keep = {0, 3, 7}, evicted = {1, 2, 4, 5, 6}, arg = {0, 0, 1, 1, 2};
    const std::vector<float>   u    = {0.9f, 0.2f, 0.8f, 0.7f, 0.95f};
    EXPECT_EQ(lc::d2o_merge_rows(kv, 0, 0, 0, keep, evicted, u.data(), arg.data(), 1.5f, lc::d2o_merge::REFERENCE), 0);
    EXPECT_EQ(lc::d2o_merge_rows(kv, 0, 0, 1, keep, evicted, u.data(), arg.data(), 0.1f, lc::d2o_merge::OFF), 0);
    const lc::kv_view a = kv.view(0, 0), b = ref.view(0, 0);
    for (int64_t t = 0; t < 8; ++t)
        for (int h = 0; h < 2; ++h)
            for (int d = 0; d < 4; ++d) {
                EXPECT_EQ(a.k_row(t, h)[d], b.k_row(t, h)[d]);
                EXPECT_EQ(a.v_row(t, h)[d], b.v_row(t, h)[d]);
            }
}

// ---- on the default model ----

namespace {

using model_fixture = lc::test::model_text;

model_fixture load_model(int64_t n_tokens, const char * file = "SmolLM2-135M-Instruct.Q4_1.gguf") {
    return lc::test::load_model_text(n_tokens, file);
}

std::unique_ptr<lc::context> make_ctx(const lc::model & m, lc::kv_method k, const char * budget,
                                      lc::d2o_merge merge = lc::d2o_merge::REFERENCE, int evict_every = 64,
                                      bool swa_full = false) {
    lc::context_params p;
    p.attn.kv_opts.swa_full   = swa_full;
    p.n_ctx                   = 2048;
    p.n_threads               = 2;
    p.attn.kv                 = k;
    p.attn.kv_opts.budget     = *lc::decode_budget_parse(budget);
    p.attn.kv_opts.merge      = merge;
    p.attn.kv_opts.evict_every = evict_every;
    auto c                    = lc::context::create(m, p);
    EXPECT_TRUE(c.is_ok());
    return std::move(*c);
}

} // namespace

TEST(kv_policy_model, full_budget_equals_dense_bit_for_bit) {
    model_fixture f = load_model(700);
    if (!f.m) GTEST_SKIP() << "default model or ../shared/data/pg_essays absent";
    const int                    n_vocab = int(f.m->hparams().n_vocab);
    auto                         dense   = make_ctx(*f.m, lc::kv_method::FULL, "20%");
    std::vector<std::vector<float>> want;
    ASSERT_TRUE(dense->decode(f.prompt).is_ok());
    want.emplace_back(dense->logits(), dense->logits() + n_vocab);
    for (int i = 0; i < 6; ++i) {
        ASSERT_TRUE(dense->decode({f.prompt[size_t(100 + i)]}).is_ok());
        want.emplace_back(dense->logits(), dense->logits() + n_vocab);
    }
    for (lc::kv_method k : {lc::kv_method::STREAMING, lc::kv_method::H2O, lc::kv_method::D2O}) {
        auto c = make_ctx(*f.m, k, "100%");
        ASSERT_TRUE(c->decode(f.prompt).is_ok());
        EXPECT_TRUE(std::equal(want[0].begin(), want[0].end(), c->logits())) << lc::kv_method_name(k);
        for (int i = 0; i < 6; ++i) {
            ASSERT_TRUE(c->decode({f.prompt[size_t(100 + i)]}).is_ok());
            EXPECT_TRUE(std::equal(want[size_t(i + 1)].begin(), want[size_t(i + 1)].end(), c->logits()))
                << lc::kv_method_name(k) << " step " << i;
        }
        EXPECT_FALSE(c->policy().compressed(0));
        EXPECT_EQ(c->kv_bytes_held(), c->kv_bytes_full());
    }
}

TEST(kv_policy_model, sliding_window_layers_trimmed_without_loss) {
    // Gemma 3: 15 of 18 layers see only the last 512 tokens. At a 100% budget a policy drops the whole pages
    // before their window and nothing else; the logits stay those of the full cache, bit for bit, through decode
    // steps that drop more pages.
    model_fixture f = load_model(900, "gemma-3-270m-q4_k_m.gguf");
    if (!f.m) GTEST_SKIP() << "Gemma 3 270M or ../shared/data/pg_essays absent";
    const int n_vocab = int(f.m->hparams().n_vocab);
    auto      full    = make_ctx(*f.m, lc::kv_method::FULL, "20%", lc::d2o_merge::REFERENCE, 64, true);
    auto      c       = make_ctx(*f.m, lc::kv_method::H2O, "100%");
    ASSERT_TRUE(full->decode(f.prompt).is_ok());
    ASSERT_TRUE(c->decode(f.prompt).is_ok());
    EXPECT_TRUE(std::equal(full->logits(), full->logits() + n_vocab, c->logits()));
    EXPECT_TRUE(c->policy().compressed(0));
    const int64_t W = f.m->hparams().n_swa;
    const int64_t n = int64_t(f.prompt.size()), kept = W + (n - W) % 64; // whole pages before the window go
    for (int il = 0; il < f.m->hparams().n_layer; ++il)
        EXPECT_EQ(c->kv().n_slots(il, 0), f.m->layers()[size_t(il)].swa ? kept : n) << il;
    for (int i = 0; i < 70; ++i) {
        ASSERT_TRUE(full->decode({f.prompt[size_t(i)]}).is_ok());
        ASSERT_TRUE(c->decode({f.prompt[size_t(i)]}).is_ok());
        ASSERT_TRUE(std::equal(full->logits(), full->logits() + n_vocab, c->logits())) << "step " << i;
    }
    EXPECT_LT(c->kv_bytes_held(), c->kv_bytes_full());
}

TEST(kv_policy_model, full_trims_sliding_windows_with_slack_and_still_cuts_back) {
    // Gemma 3 under --kv full: sliding-window layers keep their window and 256 tokens before it (whole pages),
    // bit-identical to keeping everything (--swa-full), and the sequence can be cut back within the slack.
    model_fixture f = load_model(1400, "gemma-3-270m-q4_k_m.gguf");
    if (!f.m) GTEST_SKIP() << "Gemma 3 270M or ../shared/data/pg_essays absent";
    const int n_vocab = int(f.m->hparams().n_vocab);
    auto      all     = make_ctx(*f.m, lc::kv_method::FULL, "20%", lc::d2o_merge::REFERENCE, 64, true);
    auto      c       = make_ctx(*f.m, lc::kv_method::FULL, "20%");
    const std::vector<int32_t> prompt(f.prompt.begin(), f.prompt.begin() + 1200);
    ASSERT_TRUE(all->decode(prompt).is_ok());
    ASSERT_TRUE(c->decode(prompt).is_ok());
    EXPECT_TRUE(std::equal(all->logits(), all->logits() + n_vocab, c->logits()));
    EXPECT_FALSE(c->policy().compressed(0));
    const int64_t W = f.m->hparams().n_swa, S = 256, n = 1200;
    const int64_t kept = W + S + (n - W - S) % 64;
    for (int il = 0; il < f.m->hparams().n_layer; ++il) {
        const bool swa = f.m->layers()[size_t(il)].swa;
        EXPECT_EQ(c->kv().n_slots(il, 0), swa ? kept : n) << il;
        EXPECT_EQ(all->kv().n_slots(il, 0), n) << il;
        EXPECT_EQ(c->policy().front(0, il), swa ? n - kept : 0) << il;
    }
    EXPECT_LT(c->kv_bytes_held(), all->kv_bytes_held());
    // Decode steps drop more pages; the logits stay equal.
    for (int i = 0; i < 100; ++i) {
        ASSERT_TRUE(all->decode({f.prompt[size_t(1200 + i)]}).is_ok());
        ASSERT_TRUE(c->decode({f.prompt[size_t(1200 + i)]}).is_ok());
        ASSERT_TRUE(std::equal(all->logits(), all->logits() + n_vocab, c->logits())) << "step " << i;
    }
    // Cutting back 150 tokens is within the slack; decoding other tokens from there matches.
    const int64_t back = n + 100 - 150;
    ASSERT_TRUE(c->can_truncate(back));
    ASSERT_TRUE(c->truncate(back).is_ok());
    ASSERT_TRUE(all->truncate(back).is_ok());
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(all->decode({f.prompt[size_t(i)]}).is_ok());
        ASSERT_TRUE(c->decode({f.prompt[size_t(i)]}).is_ok());
        ASSERT_TRUE(std::equal(all->logits(), all->logits() + n_vocab, c->logits())) << "after the cut, step " << i;
    }
    // Cutting back past the slack would need dropped keys: refused, and clearing works.
    EXPECT_FALSE(c->can_truncate(600));
    EXPECT_EQ(c->truncate(600).code(), lc::status_code::UNSUPPORTED);
    EXPECT_TRUE(all->can_truncate(600));
    EXPECT_TRUE(c->truncate(0).is_ok());
    EXPECT_EQ(c->kv_bytes_held(), 0u);
}

TEST(kv_policy_model, eviction_keeps_sinks_and_recent_rows) {
    model_fixture f = load_model(700);
    if (!f.m) GTEST_SKIP() << "default model or ../shared/data/pg_essays absent";
    auto full = make_ctx(*f.m, lc::kv_method::FULL, "20%");
    ASSERT_TRUE(full->decode(f.prompt).is_ok());
    const int64_t n = int64_t(f.prompt.size());
    for (lc::kv_method k : {lc::kv_method::STREAMING, lc::kv_method::H2O, lc::kv_method::D2O}) {
        auto c = make_ctx(*f.m, k, "20%", lc::d2o_merge::OFF);
        ASSERT_TRUE(c->decode(f.prompt).is_ok());
        EXPECT_TRUE(c->policy().compressed(0));
        EXPECT_LE(c->kv_bytes_held(), c->kv_bytes_full() / 4) << lc::kv_method_name(k);
        const auto rep  = c->policy().report(0);
        const int  sink = k == lc::kv_method::H2O ? 0 : 4;
        for (int il = 0; il < f.m->hparams().n_layer; ++il) {
            const lc::kv_view a = c->kv().view(il, 0), b = full->kv().view(il, 0);
            if (!rep[size_t(il)].managed) {
                EXPECT_EQ(a.n_kv, n);
                continue;
            }
            ASSERT_LT(a.n_kv, n) << lc::kv_method_name(k) << " layer " << il;
            EXPECT_EQ(rep[size_t(il)].evicted, n - a.n_kv);
            const int64_t past   = a.n_kv - sink;
            const int64_t recent = k == lc::kv_method::STREAMING ? past : std::llround(0.5 * double(past));
            for (int h = 0; h < a.n_head_kv; ++h) {
                for (int64_t t = 0; t < sink; ++t)
                    EXPECT_TRUE(std::equal(a.k_row(t, h), a.k_row(t, h) + a.head_dim, b.k_row(t, h)));
                for (int64_t i = 1; i <= recent; ++i) {
                    EXPECT_TRUE(std::equal(a.k_row(a.n_kv - i, h), a.k_row(a.n_kv - i, h) + a.head_dim,
                                           b.k_row(n - i, h)))
                        << lc::kv_method_name(k) << " layer " << il << " head " << h << " recent " << i;
                    EXPECT_TRUE(std::equal(a.v_row(a.n_kv - i, h), a.v_row(a.n_kv - i, h) + a.head_dim,
                                           b.v_row(n - i, h)));
                }
            }
        }
        EXPECT_FALSE(c->can_truncate(n - 1));
        EXPECT_FALSE(c->truncate(n - 1).is_ok());
    }
}

TEST(kv_policy_model, d2o_merging_keeps_kv_finite_and_decodes) {
    model_fixture f = load_model(700);
    if (!f.m) GTEST_SKIP() << "default model or ../shared/data/pg_essays absent";
    for (lc::d2o_merge rule : {lc::d2o_merge::REFERENCE, lc::d2o_merge::SOFTMAX}) {
        auto c = make_ctx(*f.m, lc::kv_method::D2O, "20%", rule, 1);
        ASSERT_TRUE(c->decode(f.prompt).is_ok());
        std::vector<int64_t> slots;
        for (int il = 0; il < f.m->hparams().n_layer; ++il) slots.push_back(c->kv().n_slots(il, 0));
        for (int i = 0; i < 5; ++i) ASSERT_TRUE(c->decode({f.prompt[size_t(i + 10)]}).is_ok());
        const auto rep    = c->policy().report(0);
        int64_t    merged = 0;
        for (int il = 0; il < f.m->hparams().n_layer; ++il) {
            merged += rep[size_t(il)].merged;
            // --kv-evict-every 1: a managed layer stays at its budget; a whole layer grows by the 5 steps.
            EXPECT_EQ(c->kv().n_slots(il, 0), slots[size_t(il)] + (rep[size_t(il)].managed ? 0 : 5)) << il;
            const lc::kv_view v = c->kv().view(il, 0);
            for (int64_t t = 0; t < v.n_kv; ++t)
                for (int h = 0; h < v.n_head_kv; ++h)
                    for (int d = 0; d < v.head_dim; ++d) {
                        ASSERT_TRUE(std::isfinite(lc::fp16_to_fp32(v.k_row(t, h)[d])));
                        ASSERT_TRUE(std::isfinite(lc::fp16_to_fp32(v.v_row(t, h)[d])));
                    }
        }
        EXPECT_GT(merged, 0);
        for (int i = 0; i < f.m->hparams().n_vocab; ++i) ASSERT_TRUE(std::isfinite(c->logits()[i]));
    }
}

TEST(kv_policy_model, composes_with_sparse_prefill_and_decode) {
    // A sparse prefill (vertical-slash), a sparse decode method (Quest, whose page bounds are rebuilt after each
    // compaction) and D2O, together: decoding runs, evicts by pages, and the logits stay finite.
    model_fixture f = load_model(700);
    if (!f.m) GTEST_SKIP() << "default model or ../shared/data/pg_essays absent";
    lc::context_params p;
    p.n_ctx               = 2048;
    p.n_threads           = 2;
    p.attn.prefill        = lc::prefill_method::VSLASH;
    p.attn.sparse_min_len = 0;
    p.attn.budget         = *lc::prefill_budget_parse("20%");
    p.attn.sidecar        = "none";
    p.attn.decode         = lc::decode_kind::QUEST;
    p.attn.kv             = lc::kv_method::D2O;
    auto c                = lc::context::create(*f.m, p);
    ASSERT_TRUE(c.is_ok());
    ASSERT_TRUE((*c)->decode(f.prompt).is_ok());
    EXPECT_LT((*c)->timings().density(), 1.0);
    for (int i = 0; i < 80; ++i) ASSERT_TRUE((*c)->decode({f.prompt[size_t(i)]}).is_ok());
    EXPECT_GT((*c)->timings().decode_sparse_calls, 0);
    EXPECT_LE((*c)->kv_bytes_held(), (*c)->kv_bytes_full() / 4);
    for (int i = 0; i < f.m->hparams().n_vocab; ++i) ASSERT_TRUE(std::isfinite((*c)->logits()[i]));
}
