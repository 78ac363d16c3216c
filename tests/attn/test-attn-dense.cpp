// Dense causal attention over the paged fp16 KV cache: every available optimised kernel (AVX2, AVX-512)
// against the scalar double-precision reference (outputs and lse), causality, GQA, chunked prefill, split-K
// decode, head_dim 64/128/256 and odd sizes, no reads through wrong pages, no writes outside the outputs;
// merge of partial states; kernel choice.
// LONGCTX_ATTN_BENCH=1 adds timings (SmolLM2 shapes) printed to stdout; nothing timed is asserted.
#include <gtest/gtest.h>

#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "attn/attn-dense.h"
#include "attn/attn-state.h"
#include "backend/cpu/ref/attn-ref.h"
#include "common/attn-util.h"
#include "core/cpu-features.h"
#include "kv/kv-cache.h"

namespace {

using lc::test::compare;
using lc::test::errors;
using lc::test::isas;
using lc::test::make_cache;
using lc::test::randn;
using lc::test::test_cache;

constexpr float k_ninf = -std::numeric_limits<float>::infinity();

// f32 arithmetic over the same fp16 inputs as the double reference. Each score carries ~1e-7 relative error
// (f32 dot products, q pre-scaled in f32, exp2 polynomial 9e-8), so a weight is off by ~1e-7 * |score|:
// measured NMSE ~1e-13 and max error 1.5e-6 for scores ~N(0, 1), 7e-6 for the sharp case (scores up to ~20,
// outputs up to ~4). The thresholds sit well above those and far below any indexing or masking bug.
constexpr double k_max_nmse    = 1e-10;
constexpr double k_max_abs     = 5e-5;
constexpr double k_max_lse_abs = 5e-5;

#define EXPECT_CLOSE(e, what)                                                                                          \
    do {                                                                                                               \
        EXPECT_LT((e).nmse, k_max_nmse) << what;                                                                       \
        EXPECT_LT((e).max_abs, k_max_abs) << what;                                                                     \
        EXPECT_LT((e).lse_abs, k_max_lse_abs) << what;                                                                 \
    } while (0)

struct run_result {
    std::vector<float> o, lse;
};

run_result run_ref(const std::vector<float> & q, int64_t n_q, int64_t pos0, int n_head, const lc::kv_view & kv,
                   float scale, lc::thread_pool & pool, int64_t window = lc::attn_window_none) {
    run_result r;
    r.o.resize(size_t(n_q * n_head * kv.head_dim));
    r.lse.resize(size_t(n_q * n_head));
    lc::attn_dense_ref(q.data(), n_q, pos0, n_head, kv, scale, r.o.data(), r.lse.data(), pool, window);
    return r;
}

// Outputs are poisoned with NaN (every element must be written) and framed by guard regions that must stay
// untouched.
run_result run_opt(lc::cpu_isa isa, const std::vector<float> & q, int64_t n_q, int64_t pos0, int n_head,
                   const lc::kv_view & kv, float scale, lc::thread_pool & pool, int64_t window = lc::attn_window_none) {
    constexpr size_t   guard = 64;
    constexpr float    mark  = 12345.0f;
    const size_t       n_o = size_t(n_q * n_head * kv.head_dim), n_lse = size_t(n_q * n_head);
    std::vector<float> o(n_o + 2 * guard, mark), lse(n_lse + 2 * guard, mark);
    std::fill(o.begin() + guard, o.end() - guard, std::numeric_limits<float>::quiet_NaN());
    std::fill(lse.begin() + guard, lse.end() - guard, std::numeric_limits<float>::quiet_NaN());
    lc::attn_dense_isa(isa, q.data(), n_q, pos0, n_head, kv, scale, o.data() + guard, lse.data() + guard, pool, window);
    for (size_t i = 0; i < guard; ++i) {
        EXPECT_EQ(o[i], mark) << "write before o";
        EXPECT_EQ(o[guard + n_o + i], mark) << "write after o";
        EXPECT_EQ(lse[i], mark) << "write before lse";
        EXPECT_EQ(lse[guard + n_lse + i], mark) << "write after lse";
    }
    run_result r;
    r.o.assign(o.begin() + guard, o.end() - guard);
    r.lse.assign(lse.begin() + guard, lse.end() - guard);
    return r;
}

std::string describe(lc::cpu_isa isa, int n_head, int n_head_kv, int head_dim, int64_t n_q, int64_t pos0, int64_t n_kv,
                     int nth) {
    char buf[256];
    std::snprintf(buf, sizeof(buf), "%s n_head=%d n_head_kv=%d head_dim=%d n_q=%lld pos0=%lld n_kv=%lld threads=%d",
                  lc::cpu_isa_name(isa), n_head, n_head_kv, head_dim, (long long)n_q, (long long)pos0, (long long)n_kv,
                  nth);
    return buf;
}

struct shape {
    int n_head, n_head_kv, head_dim;
};

} // namespace

TEST(attn_dense, prefill_matches_reference) {
    // SmolLM2 (9/3, 64), Qwen2.5-1.5B (12/2, 128), Gemma 3 270M (4/1, 256), MHA, and head sizes that are not
    // multiples of the vector width or the micro-tile (80, 40, 20).
    const shape     shapes[] = {{9, 3, 64}, {12, 2, 128}, {4, 1, 256}, {8, 8, 64}, {6, 2, 80}, {2, 1, 40}, {3, 1, 20}};
    lc::thread_pool pool(2);
    for (const shape & s : shapes) {
        const int64_t n_q   = 150;
        auto          cache = make_cache(s.n_head_kv, s.head_dim, n_q, 11);
        const auto    q     = randn(size_t(n_q * s.n_head * s.head_dim), 1.0f, 12);
        const float   scale = 1.0f / std::sqrt(float(s.head_dim));
        const auto    ref   = run_ref(q, n_q, 0, s.n_head, cache.view(), scale, pool);
        for (lc::cpu_isa isa : isas()) {
            const auto r = run_opt(isa, q, n_q, 0, s.n_head, cache.view(), scale, pool);
            EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse),
                         describe(isa, s.n_head, s.n_head_kv, s.head_dim, n_q, 0, n_q, 2));
        }
    }
}

TEST(attn_dense, prefill_long_and_sharp) {
    // Many tiles per query block, and q scaled by 4 so that scores spread over +-16 (peaked softmax, large
    // rescales of the running state).
    lc::thread_pool pool(2);
    const int64_t   n_q   = 700;
    auto            cache = make_cache(3, 64, n_q, 21);
    for (float q_std : {1.0f, 4.0f}) {
        const auto  q     = randn(size_t(n_q * 9 * 64), q_std, 22);
        const float scale = 0.125f;
        const auto  ref   = run_ref(q, n_q, 0, 9, cache.view(), scale, pool);
        for (lc::cpu_isa isa : isas()) {
            const auto r = run_opt(isa, q, n_q, 0, 9, cache.view(), scale, pool);
            EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse), describe(isa, 9, 3, 64, n_q, 0, n_q, 2)
                                                                  << " q_std=" << q_std);
        }
    }
}

TEST(attn_dense, chunked_prefill_sees_earlier_keys) {
    // The cache holds 400 tokens; a chunk of queries at positions 137..299 sees keys 0..pos and nothing later.
    lc::thread_pool pool(2);
    const int       n_head = 9, n_head_kv = 3, head_dim = 64;
    const int64_t   n_kv = 400, n_all = 300;
    auto            cache    = make_cache(n_head_kv, head_dim, n_kv, 31);
    const auto      q        = randn(size_t(n_all * n_head * head_dim), 1.0f, 32);
    const float     scale    = 0.125f;
    const auto      full_ref = run_ref(q, n_all, 0, n_head, cache.view(), scale, pool);
    for (lc::cpu_isa isa : isas()) {
        const auto full = run_opt(isa, q, n_all, 0, n_head, cache.view(), scale, pool);
        EXPECT_CLOSE(compare(full.o, full_ref.o, full.lse, full_ref.lse), describe(isa, 9, 3, 64, n_all, 0, n_kv, 2));
        for (int64_t pos0 : {1, 62, 63, 64, 137, 299}) {
            const int64_t            n_q = n_all - pos0;
            const std::vector<float> qc(q.begin() + pos0 * n_head * head_dim, q.end());
            const auto               ref = run_ref(qc, n_q, pos0, n_head, cache.view(), scale, pool);
            const auto               r   = run_opt(isa, qc, n_q, pos0, n_head, cache.view(), scale, pool);
            EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse), describe(isa, 9, 3, 64, n_q, pos0, n_kv, 2));
            // The same rows of the one-chunk prefill.
            const std::vector<float> o_tail(full.o.begin() + pos0 * n_head * head_dim, full.o.end());
            const std::vector<float> lse_tail(full.lse.begin() + pos0 * n_head, full.lse.end());
            EXPECT_CLOSE(compare(r.o, o_tail, r.lse, lse_tail), "chunk vs one prefill, pos0=" << pos0);
        }
    }
}

TEST(attn_dense, causality) {
    // Rewriting the key and value at position t_mod must leave the outputs of queries before t_mod
    // bit-identical (masked scores contribute exactly 0) and change those from t_mod on. Chunks starting at
    // pos0 = 0 and at 62 (query blocks that end one key before a page boundary); blocks of 1-2 queries take
    // the row layout, larger ones the transposed layout.
    lc::thread_pool pool(2);
    const int       n_head = 9, n_head_kv = 3, head_dim = 64;
    const int64_t   n_kv = 300;
    for (lc::cpu_isa isa : isas()) {
        for (int64_t pos0 : {0, 62, 296}) {
            const int64_t n_q = n_kv - pos0;
            for (int64_t t_mod : {0, 1, 63, 64, 100, 128, 297, 299}) {
                auto       cache  = make_cache(n_head_kv, head_dim, n_kv, 41);
                const auto q      = randn(size_t(n_q * n_head * head_dim), 1.0f, 42);
                const auto before = run_opt(isa, q, n_q, pos0, n_head, cache.view(), 0.125f, pool);
                const auto kv_new = randn(size_t(n_head_kv * head_dim), 3.0f, 43);
                cache.kv->write(0, 0, t_mod, 1, kv_new.data(), kv_new.data());
                const auto   after = run_opt(isa, q, n_q, pos0, n_head, cache.view(), 0.125f, pool);
                const size_t row   = size_t(n_head * head_dim);
                for (int64_t i = 0; i < n_q; ++i) {
                    const bool same = std::equal(before.o.begin() + i * row, before.o.begin() + (i + 1) * row,
                                                 after.o.begin() + i * row);
                    if (pos0 + i < t_mod) {
                        ASSERT_TRUE(same)
                            << lc::cpu_isa_name(isa) << ": query at " << pos0 + i << " changed by key " << t_mod;
                        for (int h = 0; h < n_head; ++h)
                            ASSERT_EQ(before.lse[size_t(i * n_head + h)], after.lse[size_t(i * n_head + h)]);
                    } else {
                        ASSERT_FALSE(same)
                            << lc::cpu_isa_name(isa) << ": query at " << pos0 + i << " ignores key " << t_mod;
                    }
                }
            }
        }
    }
}

TEST(attn_dense, sliding_window_matches_reference) {
    // Sliding-window layers (Gemma 3: window 512): query p sees keys p - window < j <= p. Prefill from 0, a later
    // chunk, and decode, with windows smaller than, equal to and not aligned with the 64-key tiles, and larger
    // than the context (no effect). Both layouts (decode: row layout; prefill: transposed) and split keys.
    const shape     shapes[]  = {{9, 3, 64}, {4, 1, 256}, {3, 1, 20}};
    const int64_t   windows[] = {1, 2, 37, 64, 65, 130, 512, 5000};
    const int64_t   n_kv      = 800;
    lc::thread_pool pool(2);
    for (const shape & s : shapes) {
        auto        cache = make_cache(s.n_head_kv, s.head_dim, n_kv, 61);
        const float scale = 1.0f / std::sqrt(float(s.head_dim));
        for (int64_t w : windows) {
            for (int64_t pos0 : {int64_t(0), int64_t(377), n_kv - 3, n_kv - 1}) {
                const int64_t n_q = n_kv - pos0;
                const auto    q   = randn(size_t(n_q * s.n_head * s.head_dim), 1.0f, uint32_t(62 + pos0));
                const auto    ref = run_ref(q, n_q, pos0, s.n_head, cache.view(), scale, pool, w);
                for (lc::cpu_isa isa : isas()) {
                    const auto r = run_opt(isa, q, n_q, pos0, s.n_head, cache.view(), scale, pool, w);
                    EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse),
                                 describe(isa, s.n_head, s.n_head_kv, s.head_dim, n_q, pos0, n_kv, 2)
                                     << " window=" << w);
                }
            }
        }
    }
    // A window at least as long as the context equals no window, bit for bit.
    auto       cache = make_cache(1, 256, 300, 63);
    const auto q     = randn(size_t(300 * 4 * 256), 1.0f, 64);
    for (lc::cpu_isa isa : isas()) {
        const auto a = run_opt(isa, q, 300, 0, 4, cache.view(), 0.0625f, pool);
        const auto b = run_opt(isa, q, 300, 0, 4, cache.view(), 0.0625f, pool, 300);
        EXPECT_EQ(a.o, b.o) << lc::cpu_isa_name(isa);
        EXPECT_EQ(a.lse, b.lse) << lc::cpu_isa_name(isa);
    }
}

TEST(attn_dense, sliding_window_visibility) {
    // Rewriting key t_mod changes the output of query p exactly when p - window < t_mod <= p; other queries stay
    // bit-identical.
    lc::thread_pool pool(2);
    const int       n_head = 4, n_head_kv = 1, head_dim = 64;
    const int64_t   n_kv = 400, window = 70;
    for (lc::cpu_isa isa : isas()) {
        for (int64_t pos0 : {0, 250, 398}) {
            const int64_t n_q = n_kv - pos0;
            for (int64_t t_mod : {0, 63, 64, 130, 200, 300, 329, 330, 399}) {
                auto       cache  = make_cache(n_head_kv, head_dim, n_kv, 71);
                const auto q      = randn(size_t(n_q * n_head * head_dim), 1.0f, 72);
                const auto before = run_opt(isa, q, n_q, pos0, n_head, cache.view(), 0.125f, pool, window);
                const auto kv_new = randn(size_t(n_head_kv * head_dim), 3.0f, 73);
                cache.kv->write(0, 0, t_mod, 1, kv_new.data(), kv_new.data());
                const auto   after = run_opt(isa, q, n_q, pos0, n_head, cache.view(), 0.125f, pool, window);
                const size_t row   = size_t(n_head * head_dim);
                for (int64_t i = 0; i < n_q; ++i) {
                    const int64_t p    = pos0 + i;
                    const bool    same = std::equal(before.o.begin() + i * row, before.o.begin() + (i + 1) * row,
                                                    after.o.begin() + i * row);
                    const bool    sees = p - window < t_mod && t_mod <= p;
                    ASSERT_EQ(same, !sees)
                        << lc::cpu_isa_name(isa) << ": query at " << p << ", key " << t_mod << ", window " << window;
                }
            }
        }
    }
}

TEST(attn_dense, sliding_window_skips_old_tiles) {
    // Pages wholly before the window of the chunk's first query are filled with NaN: they must not be read.
    lc::thread_pool pool(3);
    const int       n_head = 4, n_head_kv = 1, head_dim = 256;
    const int64_t   n_kv = 2000, window = 512;
    for (int64_t pos0 : {1999, 1500, 1100}) {
        auto          cache = make_cache(n_head_kv, head_dim, n_kv, 81);
        const int64_t n_q   = n_kv - pos0;
        const auto    q     = randn(size_t(n_q * n_head * head_dim), 1.0f, 82);
        const auto    ref   = run_ref(q, n_q, pos0, n_head, cache.view(), 0.0625f, pool, window);
        const int64_t n_old = (pos0 - window + 1) / 64 * 64; // tokens on pages no query of the chunk sees
        ASSERT_GT(n_old, 0);
        const std::vector<float> nan(size_t(n_old * n_head_kv * head_dim), std::numeric_limits<float>::quiet_NaN());
        cache.kv->write(0, 0, 0, n_old, nan.data(), nan.data());
        for (lc::cpu_isa isa : isas()) {
            const auto r = run_opt(isa, q, n_q, pos0, n_head, cache.view(), 0.0625f, pool, window);
            EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse),
                         describe(isa, n_head, n_head_kv, head_dim, n_q, pos0, n_kv, 3) << " NaN before " << n_old);
        }
    }
}

TEST(attn_dense, decode_split_k) {
    // n_q = 1 at the end of the cache: keys split across threads at many lengths, including n_kv < 64 and
    // lengths that are not multiples of 64.
    // Generic head sizes too: 80 and 40 take the row layout through the run-time head_dim path, 20 (not a
    // multiple of the vector width) the transposed layout. Groups of 12 and 16 heads sit at the row-layout
    // limits (12 rows for AVX2, 16 for AVX-512).
    const shape   shapes[] = {{9, 3, 64}, {12, 2, 128}, {4, 1, 256}, {6, 2, 80},
                              {2, 1, 40}, {3, 1, 20},   {24, 2, 64}, {16, 1, 64}};
    const int64_t lens[]   = {1, 2, 37, 63, 64, 65, 100, 511, 512, 513, 1000, 1025, 2047, 4113};
    for (int nth : {1, 2, 3}) {
        lc::thread_pool pool(nth);
        for (const shape & s : shapes) {
            auto cache = make_cache(s.n_head_kv, s.head_dim, 4113, 51);
            for (int64_t n_kv : lens) {
                // A view of the first n_kv tokens: the cache's remaining tokens must not be read.
                lc::kv_view view  = cache.view();
                view.n_kv         = n_kv;
                const auto  q     = randn(size_t(s.n_head * s.head_dim), 1.5f, uint32_t(52 + n_kv));
                const float scale = 1.0f / std::sqrt(float(s.head_dim));
                const auto  ref   = run_ref(q, 1, n_kv - 1, s.n_head, view, scale, pool);
                for (lc::cpu_isa isa : isas()) {
                    const auto r = run_opt(isa, q, 1, n_kv - 1, s.n_head, view, scale, pool);
                    EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse),
                                 describe(isa, s.n_head, s.n_head_kv, s.head_dim, 1, n_kv - 1, n_kv, nth));
                }
            }
        }
    }
}

TEST(attn_dense, few_queries_split_k) {
    // 2-8 queries late in the sequence: few items, so keys are split; the last split may hold only keys
    // that the first queries must not see (an empty partial state with lse = -inf).
    lc::thread_pool pool(2);
    auto            cache = make_cache(2, 64, 1200, 61);
    for (int64_t n_q : {2, 5, 8})
        for (int64_t pos0 = 1020; pos0 < 1100; pos0 += 3) {
            const auto q   = randn(size_t(n_q * 4 * 64), 1.0f, uint32_t(62 + pos0));
            const auto ref = run_ref(q, n_q, pos0, 4, cache.view(), 0.125f, pool);
            for (lc::cpu_isa isa : isas()) {
                const auto r = run_opt(isa, q, n_q, pos0, 4, cache.view(), 0.125f, pool);
                EXPECT_CLOSE(compare(r.o, ref.o, r.lse, ref.lse), describe(isa, 4, 2, 64, n_q, pos0, 1200, 2));
            }
        }
}

TEST(attn_dense, gqa_equals_replicated_mha) {
    // GQA with 3 KV heads for 9 query heads equals MHA over a cache in which KV head h / 3 is copied to head h.
    lc::thread_pool pool(2);
    const int       head_dim = 64, n_head = 9, n_head_kv = 3, n_group = 3;
    for (int64_t n_q : {1, 200}) {
        const int64_t      n_kv = n_q == 1 ? 3000 : 200;
        const auto         k    = randn(size_t(n_kv * n_head_kv * head_dim), 1.0f, 71);
        const auto         v    = randn(k.size(), 1.0f, 72);
        std::vector<float> k_rep(size_t(n_kv * n_head * head_dim)), v_rep(k_rep.size());
        for (int64_t t = 0; t < n_kv; ++t)
            for (int h = 0; h < n_head; ++h)
                for (int d = 0; d < head_dim; ++d) {
                    const size_t src = size_t((t * n_head_kv + h / n_group) * head_dim + d);
                    const size_t dst = size_t((t * n_head + h) * head_dim + d);
                    k_rep[dst]       = k[src];
                    v_rep[dst]       = v[src];
                }
        lc::kv_cache gqa(1, n_head_kv, head_dim, n_kv), mha(1, n_head, head_dim, n_kv);
        ASSERT_TRUE(gqa.reserve(0, n_kv).is_ok());
        ASSERT_TRUE(mha.reserve(0, n_kv).is_ok());
        gqa.write(0, 0, 0, n_kv, k.data(), v.data());
        mha.write(0, 0, 0, n_kv, k_rep.data(), v_rep.data());
        const auto q = randn(size_t(n_q * n_head * head_dim), 1.0f, 73);
        for (lc::cpu_isa isa : isas()) {
            const auto a = run_opt(isa, q, n_q, n_kv - n_q, n_head, gqa.view(0, 0), 0.125f, pool);
            const auto b = run_opt(isa, q, n_q, n_kv - n_q, n_head, mha.view(0, 0), 0.125f, pool);
            EXPECT_CLOSE(compare(a.o, b.o, a.lse, b.lse), lc::cpu_isa_name(isa) << " n_q=" << n_q);
        }
    }
}

TEST(attn_dense, lse_is_optional) {
    lc::thread_pool pool(2);
    auto            cache = make_cache(3, 64, 333, 81);
    for (int64_t n_q : {1, 333}) {
        const auto q = randn(size_t(n_q * 9 * 64), 1.0f, 82);
        for (lc::cpu_isa isa : isas()) {
            const auto         with = run_opt(isa, q, n_q, 333 - n_q, 9, cache.view(), 0.125f, pool);
            std::vector<float> o(with.o.size(), std::numeric_limits<float>::quiet_NaN());
            lc::attn_dense_isa(isa, q.data(), n_q, 333 - n_q, 9, cache.view(), 0.125f, o.data(), nullptr, pool);
            EXPECT_EQ(o, with.o) << lc::cpu_isa_name(isa);
        }
    }
}

TEST(attn_dense, default_dispatch) {
    // attn_dense() runs the kernel that cpu_isa_best() names.
    lc::thread_pool    pool(2);
    auto               cache = make_cache(3, 64, 200, 91);
    const auto         q     = randn(size_t(200 * 9 * 64), 1.0f, 92);
    const auto         r     = run_opt(lc::cpu_isa_best(), q, 200, 0, 9, cache.view(), 0.125f, pool);
    std::vector<float> o(r.o.size()), lse(r.lse.size());
    lc::attn_dense(q.data(), 200, 0, 9, cache.view(), 0.125f, o.data(), lse.data(), pool);
    EXPECT_EQ(o, r.o);
    EXPECT_EQ(lse, r.lse);
}

TEST(cpu_features, isa_choice) {
    lc::cpu_features all;
    all.avx2 = all.fma = all.f16c = true;
    all.avx512f = all.avx512bw = all.avx512vl = all.avx512dq = true;
    EXPECT_EQ(lc::cpu_isa_select(all, true, nullptr), lc::cpu_isa::AVX512);
    EXPECT_EQ(lc::cpu_isa_select(all, true, ""), lc::cpu_isa::AVX512);
    EXPECT_EQ(lc::cpu_isa_select(all, true, "0"), lc::cpu_isa::AVX512);
    EXPECT_EQ(lc::cpu_isa_select(all, true, "1"), lc::cpu_isa::AVX2);
    EXPECT_EQ(lc::cpu_isa_select(all, false, nullptr), lc::cpu_isa::AVX2); // kernels not built
    lc::cpu_features no_bw = all;
    no_bw.avx512bw         = false;
    EXPECT_EQ(lc::cpu_isa_select(no_bw, true, nullptr), lc::cpu_isa::AVX2);
    lc::cpu_features avx2_only;
    avx2_only.avx2 = avx2_only.fma = avx2_only.f16c = true;
    EXPECT_EQ(lc::cpu_isa_select(avx2_only, true, nullptr), lc::cpu_isa::AVX2);

    // This process: the choice follows the CPU and LONGCTX_NO_AVX512.
    const char * env = std::getenv("LONGCTX_NO_AVX512");
    const bool   off = env && env[0] && std::string(env) != "0";
    EXPECT_TRUE(lc::cpu_isa_available(lc::cpu_isa::AVX2));
    EXPECT_EQ(lc::cpu_isa_best(),
              lc::cpu_isa_available(lc::cpu_isa::AVX512) && !off ? lc::cpu_isa::AVX512 : lc::cpu_isa::AVX2);
    std::printf("cpu: avx512f=%d bw=%d vl=%d vnni=%d bf16=%d; attention kernels: %s\n", lc::cpu_has_avx512f(),
                lc::cpu_has_avx512bw(), lc::cpu_has_avx512vl(), lc::cpu_has_avx512vnni(), lc::cpu_has_avx512bf16(),
                lc::cpu_isa_name(lc::cpu_isa_best()));
}

// ---- partial-state merge ----------------------------------------------------------------------------------

namespace {

// State of keys [b, e) for one query, in double: scores s, values v [n][d].
void state_of(const std::vector<double> & s, const std::vector<double> & v, int d, int b, int e, std::vector<float> & o,
              float & lse) {
    o.assign(size_t(d), 0.0f);
    if (b >= e) {
        lse = k_ninf;
        return;
    }
    double m = -INFINITY;
    for (int t = b; t < e; ++t) m = std::max(m, s[size_t(t)]);
    double              sum = 0;
    std::vector<double> acc(size_t(d), 0.0);
    for (int t = b; t < e; ++t) {
        const double p = std::exp(s[size_t(t)] - m);
        sum += p;
        for (int j = 0; j < d; ++j) acc[size_t(j)] += p * v[size_t(t * d + j)];
    }
    for (int j = 0; j < d; ++j) o[size_t(j)] = float(acc[size_t(j)] / sum);
    lse = float(m + std::log(sum));
}

} // namespace

TEST(attn_state, merge_is_associative_and_exact) {
    const int                        n = 300, d = 16;
    std::mt19937                     rng(5);
    std::normal_distribution<double> dist(0.0, 3.0);
    std::vector<double>              s(n), v(size_t(n * d));
    for (double & x : s) x = dist(rng);
    for (double & x : v) x = dist(rng);
    // Add a far larger score block to one part so that the weights differ by e^100 (no overflow allowed).
    for (int t = 250; t < 260; ++t) s[size_t(t)] += 100.0;

    std::vector<float> o_all, oa, ob, oc, o_ab, o_abc, o_bc, o_a_bc, o_parts;
    float              l_all, la, lb, lc_, l_ab, l_abc, l_bc, l_a_bc;
    state_of(s, v, d, 0, n, o_all, l_all);
    state_of(s, v, d, 0, 97, oa, la);
    state_of(s, v, d, 97, 200, ob, lb);
    state_of(s, v, d, 200, n, oc, lc_);
    o_ab.resize(d), o_abc.resize(d), o_bc.resize(d), o_a_bc.resize(d);
    lc::attn_state_merge(oa.data(), la, ob.data(), lb, d, o_ab.data(), &l_ab);
    lc::attn_state_merge(o_ab.data(), l_ab, oc.data(), lc_, d, o_abc.data(), &l_abc);
    lc::attn_state_merge(ob.data(), lb, oc.data(), lc_, d, o_bc.data(), &l_bc);
    lc::attn_state_merge(oa.data(), la, o_bc.data(), l_bc, d, o_a_bc.data(), &l_a_bc);
    for (int j = 0; j < d; ++j) {
        EXPECT_NEAR(o_abc[j], o_all[j], 1e-5);
        EXPECT_NEAR(o_a_bc[j], o_all[j], 1e-5);
    }
    EXPECT_NEAR(l_abc, l_all, 1e-4);
    EXPECT_NEAR(l_a_bc, l_all, 1e-4);

    // n-way merge, parts in [part][row][d] layout with one row.
    std::vector<float> parts_o, parts_lse = {la, lb, lc_};
    for (auto * p : {&oa, &ob, &oc}) parts_o.insert(parts_o.end(), p->begin(), p->end());
    std::vector<float> o_n(d);
    float              l_n;
    lc::attn_state_merge_parts(parts_o.data(), parts_lse.data(), 3, 1, d, o_n.data(), &l_n);
    for (int j = 0; j < d; ++j) EXPECT_NEAR(o_n[j], o_all[j], 1e-5);
    EXPECT_NEAR(l_n, l_all, 1e-4);

    // In place.
    std::vector<float> acc   = oa;
    float              l_acc = la;
    lc::attn_state_merge_into(acc.data(), &l_acc, ob.data(), lb, d);
    lc::attn_state_merge_into(acc.data(), &l_acc, oc.data(), lc_, d);
    for (int j = 0; j < d; ++j) EXPECT_NEAR(acc[j], o_all[j], 1e-5);
}

TEST(attn_state, merge_with_empty) {
    const int          d   = 8;
    std::vector<float> o1  = {1, -2, 3, -4, 5, -6, 7, -8}, zero(d, 0.0f), out(d, 123.0f);
    float              lse = 0;
    // Empty on either side gives the other state back exactly.
    lc::attn_state_merge(o1.data(), 2.5f, zero.data(), k_ninf, d, out.data(), &lse);
    EXPECT_EQ(out, o1);
    EXPECT_EQ(lse, 2.5f);
    lc::attn_state_merge(zero.data(), k_ninf, o1.data(), 2.5f, d, out.data(), &lse);
    EXPECT_EQ(out, o1);
    EXPECT_EQ(lse, 2.5f);
    // Empty with empty is empty: o = 0, lse = -inf, no NaN.
    std::fill(out.begin(), out.end(), 123.0f);
    lc::attn_state_merge(zero.data(), k_ninf, zero.data(), k_ninf, d, out.data(), &lse);
    EXPECT_EQ(out, zero);
    EXPECT_EQ(lse, k_ninf);
    // n-way with all parts empty, and with one non-empty part among empties.
    std::vector<float> parts(3 * d, 0.0f), parts_lse = {k_ninf, k_ninf, k_ninf};
    lc::attn_state_merge_parts(parts.data(), parts_lse.data(), 3, 1, d, out.data(), &lse);
    EXPECT_EQ(out, zero);
    EXPECT_EQ(lse, k_ninf);
    std::copy(o1.begin(), o1.end(), parts.begin() + d);
    parts_lse[1] = -7.0f;
    lc::attn_state_merge_parts(parts.data(), parts_lse.data(), 3, 1, d, out.data(), &lse);
    EXPECT_EQ(out, o1);
    EXPECT_EQ(lse, -7.0f);
    // Equal lse: the plain average, lse + ln 2.
    std::vector<float> o2 = {3, 2, 1, 0, -1, -2, -3, -4};
    lc::attn_state_merge(o1.data(), 1.0f, o2.data(), 1.0f, d, out.data(), &lse);
    for (int j = 0; j < d; ++j) EXPECT_FLOAT_EQ(out[j], 0.5f * (o1[j] + o2[j]));
    EXPECT_FLOAT_EQ(lse, 1.0f + std::log(2.0f));
}

// ---- benchmark (LONGCTX_ATTN_BENCH=1) ----------------------------------------------------------------------

namespace {

// FMA peak of this machine: 12 independent chains of vector FMAs per thread (enough to cover 2 pipes x 4
// cycles of latency), on every thread of the pool at once.
__attribute__((noinline)) float fma_loop_avx2(int64_t n) {
    __m256 a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(float(i));
    const __m256 b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
    for (int64_t k = 0; k < n; ++k) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], b, c);
    }
    __m256 s = a[0];
    for (int i = 1; i < 12; ++i) s = _mm256_add_ps(s, a[i]);
    return _mm256_cvtss_f32(s);
}

__attribute__((noinline, target("avx512f"))) float fma_loop_avx512(int64_t n) {
    __m512 a[12];
    for (int i = 0; i < 12; ++i) a[i] = _mm512_set1_ps(float(i));
    const __m512 b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
    for (int64_t k = 0; k < n; ++k) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; ++i) a[i] = _mm512_fmadd_ps(a[i], b, c);
    }
    __m512 s = a[0]; // every chain feeds the result, or the compiler drops it
    for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

double fma_peak_gflops(lc::cpu_isa isa, lc::thread_pool & pool) {
    const int64_t      n     = 20000000;
    const int          lanes = isa == lc::cpu_isa::AVX512 ? 16 : 8;
    std::atomic<float> sink{0};
    double             best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.run([&](int, int) { sink = isa == lc::cpu_isa::AVX512 ? fma_loop_avx512(n) : fma_loop_avx2(n); });
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best           = std::max(best, double(pool.n_threads()) * n * 12 * lanes * 2 / t * 1e-9);
    }
    return best;
}

} // namespace

TEST(attn_dense, bench) {
    // SmolLM2-135M shapes on 1 and 2 threads: prefill 4096 causal, decode at 4k, 8k and 32k tokens (the last
    // beyond a typical L3). Wall-clock best of several runs; on a loaded machine the 2-thread rows suffer most.
    const char * env = std::getenv("LONGCTX_ATTN_BENCH");
    if (!env || !env[0] || std::string(env) == "0") GTEST_SKIP() << "set LONGCTX_ATTN_BENCH=1 to run the timings";
    const int  n_head = 9, n_head_kv = 3, head_dim = 64;
    const auto cache = make_cache(n_head_kv, head_dim, 32768, 101);
    using clock      = std::chrono::steady_clock;
    auto best_of     = [](int reps, auto && fn) {
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            const auto t0 = clock::now();
            fn();
            best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count());
        }
        return best;
    };
    for (int nth : {1, 2}) {
        lc::thread_pool pool(nth);
        for (lc::cpu_isa isa : isas()) {
            const char * name = lc::cpu_isa_name(isa);
            const double peak = fma_peak_gflops(isa, pool);
            std::printf("attn %-6s FMA peak, measured        threads=%d             %7.1f GFLOP/s\n", name, nth, peak);
            // Prefill: 4 * head_dim FLOPs (q.k and p.v, 2 each) per visible (query, key, head).
            {
                const int64_t      n_q = 4096;
                const auto         q   = randn(size_t(n_q * n_head * head_dim), 1.0f, 102);
                std::vector<float> o(q.size()), lse(size_t(n_q * n_head));
                const double       flop = 4.0 * head_dim * (double(n_q) * double(n_q + 1) / 2.0) * n_head;
                const double       t    = best_of(3, [&] {
                    lc::attn_dense_isa(isa, q.data(), n_q, 0, n_head, cache.view(), 0.125f, o.data(), lse.data(), pool);
                });
                std::printf("attn %-6s prefill n_q=4096 causal  threads=%d  %8.3f ms  %7.1f GFLOP/s  %3.0f%% of peak\n",
                            name, nth, t * 1e3, flop / t * 1e-9, 100.0 * flop / t * 1e-9 / peak);
            }
            // Decode: the K and V bytes (fp16) of every KV head are read once.
            for (int64_t n_kv : {4096, 8192, 32768}) {
                lc::kv_view view     = cache.view();
                view.n_kv            = n_kv;
                const auto         q = randn(size_t(n_head * head_dim), 1.0f, 103);
                std::vector<float> o(q.size()), lse(static_cast<size_t>(n_head));
                const double       t     = best_of(n_kv > 8192 ? 10 : 50, [&] {
                    lc::attn_dense_isa(isa, q.data(), 1, n_kv - 1, n_head, view, 0.125f, o.data(), lse.data(), pool);
                });
                const double       bytes = double(n_kv) * n_head_kv * head_dim * 2.0 * 2.0;
                const double       flop  = 4.0 * head_dim * double(n_kv) * n_head;
                std::printf("attn %-6s decode  n_kv=%-6lld        threads=%d  %8.3f ms  %7.1f GFLOP/s  %5.1f GB/s\n",
                            name, (long long)n_kv, nth, t * 1e3, flop / t * 1e-9, bytes / t * 1e-9);
            }
        }
    }
}
