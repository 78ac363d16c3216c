// kv_cache: f32 -> fp16 rounding on write (hand-checked values), read-back through kv_view, page allocation
// across sequences and layers, capacity errors, byte accounting.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <set>
#include <vector>

#include "kv/kv-cache.h"

namespace {

std::vector<float> random_rows(int64_t n, int n_head_kv, int head_dim, uint32_t seed) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float>              x(size_t(n * n_head_kv * head_dim));
    for (float & v : x) v = dist(rng);
    return x;
}

// Exact bits of the fp16 value nearest to x for the cases used below, worked out by hand from the IEEE
// binary16 format (1 sign, 5 exponent bits with bias 15, 10 mantissa bits; ties go to the even mantissa).
struct fp16_case {
    float    x;
    uint16_t bits;
};
const fp16_case k_cases[] = {
    {1.0f, 0x3c00},                       // 2^0: exponent 15
    {-2.0f, 0xc000},                      // sign, exponent 16
    {0.5f, 0x3800},                       // exponent 14
    {65504.0f, 0x7bff},                   // largest finite: (2 - 2^-10) * 2^15
    {65520.0f, 0x7c00},                   // halfway between 65504 and 65536: ties to even -> overflows to inf
    {1.0f + 0x1p-11f, 0x3c00},            // halfway between 1 and 1 + 2^-10: ties to even mantissa 0
    {1.0f + 3 * 0x1p-11f, 0x3c02},        // halfway between mantissas 1 and 2: ties to even 2
    {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, // just above halfway: rounds up
    {0x1p-24f, 0x0001},                   // smallest subnormal
    {0x1p-25f, 0x0000},                   // half the smallest subnormal: ties to even 0
    {3 * 0x1p-25f, 0x0002},               // 1.5 subnormal steps: ties to even 2
    {0x1p-14f, 0x0400},                   // smallest normal
    {0.1f, 0x2e66},                       // 0.1 = 1.6 * 2^-4: mantissa 0.6 * 1024 = 614.4 -> 614 = 0x266
    {std::numeric_limits<float>::infinity(), 0x7c00},
    {-std::numeric_limits<float>::infinity(), 0xfc00},
    {-0.0f, 0x8000},
};

} // namespace

TEST(kv_cache, write_rounds_to_nearest_even) {
    // head_dim 12: elements 0..7 go through the 8-wide vector path, 8..11 through the scalar tail.
    const int    n_head_kv = 2, head_dim = 12;
    lc::kv_cache cache(1, n_head_kv, head_dim, 64);
    const int    n_cases = int(std::size(k_cases));
    ASSERT_TRUE(cache.reserve(0, n_cases).is_ok());
    // Token t, head h, element d holds case (t + h + d) % n_cases so that each case lands on every lane.
    std::vector<float> k(size_t(n_cases * n_head_kv * head_dim)), v(k.size());
    for (int t = 0; t < n_cases; ++t)
        for (int h = 0; h < n_head_kv; ++h)
            for (int d = 0; d < head_dim; ++d) {
                const size_t i = size_t((t * n_head_kv + h) * head_dim + d);
                k[i]           = k_cases[(t + h + d) % n_cases].x;
                v[i]           = k_cases[(t + 2 * h + d + 1) % n_cases].x;
            }
    cache.write(0, 0, 0, n_cases, k.data(), v.data());
    const lc::kv_view view = cache.view(0, 0);
    ASSERT_EQ(view.n_kv, n_cases);
    for (int t = 0; t < n_cases; ++t)
        for (int h = 0; h < n_head_kv; ++h)
            for (int d = 0; d < head_dim; ++d) {
                EXPECT_EQ(view.k_row(t, h)[d], k_cases[(t + h + d) % n_cases].bits)
                    << "t=" << t << " h=" << h << " d=" << d;
                EXPECT_EQ(view.v_row(t, h)[d], k_cases[(t + 2 * h + d + 1) % n_cases].bits);
            }
    // NaN stays NaN (exponent all ones, mantissa non-zero).
    std::vector<float> nan_row(size_t(n_head_kv * head_dim), std::numeric_limits<float>::quiet_NaN());
    cache.write(0, 0, 0, 1, nan_row.data(), nan_row.data());
    for (int d = 0; d < head_dim; ++d) {
        const uint16_t b = cache.view(0, 0).k_row(0, 1)[d];
        EXPECT_EQ(b & 0x7c00, 0x7c00);
        EXPECT_NE(b & 0x03ff, 0);
    }
}

TEST(kv_cache, round_trip_within_half_ulp) {
    const int     n_layer = 2, n_head_kv = 3, head_dim = 64;
    const int64_t n = 300; // 4 full pages and a partial one
    lc::kv_cache  cache(n_layer, n_head_kv, head_dim, 1024);
    ASSERT_TRUE(cache.reserve(0, n).is_ok());
    std::vector<float> k[2], v[2];
    for (int il = 0; il < n_layer; ++il) {
        k[il] = random_rows(n, n_head_kv, head_dim, 100 + il);
        v[il] = random_rows(n, n_head_kv, head_dim, 200 + il);
        // Written in uneven pieces that cross page boundaries.
        for (int64_t pos = 0; pos < n;) {
            const int64_t m   = std::min<int64_t>(n - pos, 1 + (pos * 7) % 90);
            const size_t  off = size_t(pos * n_head_kv * head_dim);
            cache.write(il, 0, pos, m, k[il].data() + off, v[il].data() + off);
            pos += m;
        }
    }
    EXPECT_EQ(cache.n_tokens(0), n);
    for (int il = 0; il < n_layer; ++il) {
        const lc::kv_view view = cache.view(il, 0);
        for (int64_t t = 0; t < n; ++t)
            for (int h = 0; h < n_head_kv; ++h)
                for (int d = 0; d < head_dim; ++d) {
                    const size_t i  = size_t((t * n_head_kv + h) * head_dim + d);
                    const float  xk = k[il][i], xv = v[il][i];
                    const float  rk = lc::fp16_to_fp32(view.k_row(t, h)[d]);
                    const float  rv = lc::fp16_to_fp32(view.v_row(t, h)[d]);
                    // Normal fp16 values have 11 significant bits: error <= 2^-11 relative (half an ulp).
                    ASSERT_LE(std::fabs(rk - xk), std::fabs(xk) * 0x1p-11f + 0x1p-25f) << xk;
                    ASSERT_LE(std::fabs(rv - xv), std::fabs(xv) * 0x1p-11f + 0x1p-25f) << xv;
                }
    }
}

TEST(kv_cache, view_layout_matches_pages) {
    const int    n_head_kv = 2, head_dim = 8;
    lc::kv_cache cache(1, n_head_kv, head_dim, 256);
    ASSERT_TRUE(cache.reserve(0, 130).is_ok());
    const lc::kv_view view = cache.view(0, 0);
    EXPECT_EQ(view.page_elems, size_t(n_head_kv * 64 * head_dim));
    // k_row(t, h) is row t % 64 of head h's block of page pages[t / 64].
    for (int64_t t : {0, 1, 63, 64, 65, 129})
        for (int h = 0; h < n_head_kv; ++h) {
            const lc::fp16_t * expect = view.k_pool + size_t(view.pages[t / 64]) * view.page_elems +
                                        size_t(h) * 64 * head_dim + (t % 64) * head_dim;
            EXPECT_EQ(view.k_row(t, h), expect);
            EXPECT_EQ(view.k_page(t / 64, h), expect - (t % 64) * head_dim);
        }
}

TEST(kv_cache, pages_across_sequences) {
    const int     n_layer = 2, n_head_kv = 1, head_dim = 16, n_seq = 3;
    const int64_t n_ctx = 64 * 10;
    lc::kv_cache  cache(n_layer, n_head_kv, head_dim, n_ctx, n_seq);
    // Per layer 10 pages for the tokens plus one per extra sequence for partly filled last pages.
    EXPECT_EQ(cache.n_pages_total(), 2 * 12);
    EXPECT_EQ(cache.n_pages_free(), 2 * 12);

    // Interleaved growth: 3 sequences take pages in turn.
    const int64_t lens[n_seq] = {200, 70, 130};
    for (int64_t step = 1; step <= 4; ++step)
        for (int s = 0; s < n_seq; ++s) ASSERT_TRUE(cache.reserve(s, lens[s] * step / 4).is_ok());
    EXPECT_EQ(cache.n_pages_free(), 2 * (12 - (4 + 2 + 3)));

    std::set<int32_t>  seen;
    std::vector<float> data[n_seq][2];
    for (int s = 0; s < n_seq; ++s) {
        const lc::kv_view view = cache.view(0, s);
        for (int64_t p = 0; p < (lens[s] + 63) / 64; ++p) {
            EXPECT_TRUE(seen.insert(view.pages[p]).second) << "page " << view.pages[p] << " shared";
            EXPECT_LT(view.pages[p], cache.n_pages_total());
        }
        for (int il = 0; il < n_layer; ++il) {
            data[s][il] = random_rows(lens[s], n_head_kv, head_dim, 1000 + 10 * s + il);
            cache.write(il, s, 0, lens[s], data[s][il].data(), data[s][il].data());
        }
    }
    // Every sequence and layer reads back its own data.
    for (int s = 0; s < n_seq; ++s)
        for (int il = 0; il < n_layer; ++il) {
            const lc::kv_view view = cache.view(il, s);
            EXPECT_EQ(view.n_kv, lens[s]);
            for (int64_t t = 0; t < lens[s]; ++t)
                for (int d = 0; d < head_dim; ++d)
                    ASSERT_EQ(view.v_row(t, 0)[d], lc::fp32_to_fp16(data[s][il][size_t(t * head_dim + d)]));
        }

    // Clearing returns the pages; another sequence can then take them.
    cache.clear(0);
    EXPECT_EQ(cache.n_tokens(0), 0);
    EXPECT_EQ(cache.n_pages_free(), 2 * (12 - 5));
    ASSERT_TRUE(cache.reserve(1, 64 * 7).is_ok()); // 2 -> 7 pages
    EXPECT_EQ(cache.n_pages_free(), 2 * (12 - 10));
    for (int64_t t = 0; t < lens[2]; ++t)
        ASSERT_EQ(cache.view(1, 2).k_row(t, 0)[3], lc::fp32_to_fp16(data[2][1][size_t(t * head_dim + 3)]));
}

TEST(kv_cache, reserve_errors) {
    lc::kv_cache cache(1, 2, 64, 1000, 2);
    // Beyond the capacity of one sequence.
    lc::status st = cache.reserve(0, 1001);
    EXPECT_EQ(st.code(), lc::status_code::OUT_OF_RANGE);
    EXPECT_NE(st.message().find("1001"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("1000"), std::string::npos) << st.message();
    EXPECT_EQ(cache.n_pages_free(), cache.n_pages_total());
    // Bad sequence ids.
    EXPECT_EQ(cache.reserve(2, 10).code(), lc::status_code::INVALID_ARGUMENT);
    EXPECT_EQ(cache.reserve(-1, 10).code(), lc::status_code::INVALID_ARGUMENT);
    // 1000 tokens -> 16 pages + 1 for the second sequence = 17 pages. Sequence 0 takes 1000 tokens (16 pages),
    // sequence 1 then fits 1 page but not 2.
    EXPECT_EQ(cache.n_pages_total(), 17);
    ASSERT_TRUE(cache.reserve(0, 1000).is_ok());
    ASSERT_TRUE(cache.reserve(1, 64).is_ok());
    st = cache.reserve(1, 65);
    EXPECT_EQ(st.code(), lc::status_code::RESOURCE_EXHAUSTED);
    EXPECT_NE(st.message().find("0 of 17"), std::string::npos) << st.message();
    EXPECT_EQ(cache.n_pages_free(), 0);
    // Reserving what is already held, or less, succeeds without pages.
    EXPECT_TRUE(cache.reserve(0, 500).is_ok());
    EXPECT_TRUE(cache.reserve(1, 64).is_ok());
}

TEST(kv_cache, one_pool_for_all_layers) {
    // A pool of 10 pages for 3 layers and 2 sequences of up to 256 tokens: a memory budget, not a token count.
    const int    n_layer = 3;
    lc::kv_cache cache(n_layer, 1, 8, 256, 2, 10);
    EXPECT_EQ(cache.n_pages_total(), 10);
    EXPECT_EQ(cache.bytes_reserved(), 10u * cache.page_bytes() * 2);
    // Sequence 0 takes 2 pages per layer (6), sequence 1 then fits one page per layer (3) but not two (6).
    ASSERT_TRUE(cache.reserve(0, 128).is_ok());
    ASSERT_TRUE(cache.reserve(1, 64).is_ok());
    EXPECT_EQ(cache.n_pages_free(), 1);
    lc::status st = cache.reserve(1, 65);
    EXPECT_EQ(st.code(), lc::status_code::RESOURCE_EXHAUSTED);
    EXPECT_NE(st.message().find("needs 3 more pages"), std::string::npos) << st.message();
    EXPECT_EQ(cache.n_pages_free(), 1); // nothing taken on error
    EXPECT_EQ(cache.view(0, 1).n_kv, 0);

    // Compacting layer 2 of sequence 0 to one page frees a page that any layer of any sequence can take.
    std::vector<float> x = random_rows(128, 1, 8, 5);
    for (int il = 0; il < n_layer; ++il) cache.write(il, 0, 0, 128, x.data(), x.data());
    std::vector<int32_t> keep(64);
    for (int i = 0; i < 64; ++i) keep[size_t(i)] = 64 + i;
    cache.keep_rows(2, 0, 0, keep.data(), 64);
    cache.finish_keep(2, 0, 64);
    EXPECT_EQ(cache.n_pages_free(), 2);
    EXPECT_EQ(cache.view(2, 0).k_row(0, 0)[0], lc::fp32_to_fp16(x[64 * 8]));
    // Sequence 1 still needs 3 pages to grow every layer to 65 slots; with 2 free it fails, with 3 it fits.
    EXPECT_EQ(cache.reserve(1, 65).code(), lc::status_code::RESOURCE_EXHAUSTED);
    cache.drop_front_pages(1, 0, 1);
    EXPECT_EQ(cache.n_pages_free(), 3);
    ASSERT_TRUE(cache.reserve(1, 65).is_ok());
    EXPECT_EQ(cache.n_pages_free(), 0);
    // Every page is owned once.
    std::set<int32_t> seen;
    for (int il = 0; il < n_layer; ++il)
        for (int s = 0; s < 2; ++s) {
            const lc::kv_view v = cache.view(il, s);
            const int64_t     n = s == 0 ? (il == 0 ? 2 : 1) : 2;
            for (int64_t p = 0; p < n; ++p) EXPECT_TRUE(seen.insert(v.pages[p]).second);
        }
    EXPECT_EQ(seen.size(), 10u);
}

TEST(kv_cache, bytes_accounting) {
    // 2 layers, 3 KV heads, head_dim 64: one page of one pool is 3 * 64 * 64 * 2 = 24576 bytes; a slot of one
    // layer, K and V is 3 * 64 * 2 bytes * 2 (K, V) = 768 bytes.
    lc::kv_cache cache(2, 3, 64, 4096, 2);
    EXPECT_EQ(cache.page_bytes(), 24576u);
    EXPECT_EQ(cache.bytes_allocated(), 0u);
    EXPECT_EQ(cache.bytes_used(), 0u);
    EXPECT_EQ(cache.bytes_reserved(), size_t(64 + 1) * 24576 * 2 * 2);

    ASSERT_TRUE(cache.reserve(0, 100).is_ok()); // 2 pages
    EXPECT_EQ(cache.bytes_allocated(), 2u * 24576 * 2 * 2);
    EXPECT_EQ(cache.bytes_used(), 0u);
    std::vector<float> x = random_rows(100, 3, 64, 7);
    EXPECT_EQ(cache.slot_bytes(), 768u);
    cache.write(0, 0, 0, 100, x.data(), x.data());
    EXPECT_EQ(cache.bytes_used(), 100u * 768);
    cache.write(1, 0, 0, 60, x.data(), x.data()); // layers count their own slots; n_tokens is the largest
    EXPECT_EQ(cache.bytes_used(), 160u * 768);
    EXPECT_EQ(cache.n_slots(1, 0), 60);
    EXPECT_EQ(cache.n_tokens(0), 100);

    ASSERT_TRUE(cache.reserve(1, 1).is_ok()); // 1 page
    cache.write(0, 1, 0, 1, x.data(), x.data());
    EXPECT_EQ(cache.bytes_allocated(), 3u * 24576 * 2 * 2);
    EXPECT_EQ(cache.bytes_used(), 161u * 768);

    cache.clear(0);
    EXPECT_EQ(cache.bytes_allocated(), 1u * 24576 * 2 * 2);
    EXPECT_EQ(cache.bytes_used(), 1u * 768);
}

TEST(kv_cache, large_capacity_costs_only_what_is_used) {
    // 256k tokens x 32 layers x 8 KV heads x 128 x fp16 x (K, V) = 32 GiB of address space, almost none of it
    // touched (more than a small machine has, so it only works if the pool is not committed up front).
    lc::kv_cache cache(32, 8, 128, int64_t(1) << 18);
    EXPECT_EQ(cache.bytes_reserved(), (size_t(1) << 18) * 32 * 8 * 128 * 2 * 2);
    ASSERT_TRUE(cache.reserve(0, 64).is_ok());
    std::vector<float> x = random_rows(64, 8, 128, 3);
    cache.write(31, 0, 0, 64, x.data(), x.data());
    EXPECT_EQ(cache.view(31, 0).k_row(63, 7)[127], lc::fp32_to_fp16(x.back()));
}

TEST(kv_cache, move) {
    lc::kv_cache a(1, 1, 8, 128);
    ASSERT_TRUE(a.reserve(0, 10).is_ok());
    std::vector<float> x = random_rows(10, 1, 8, 9);
    a.write(0, 0, 0, 10, x.data(), x.data());
    lc::kv_cache b(std::move(a));
    EXPECT_EQ(b.n_tokens(0), 10);
    EXPECT_EQ(b.view(0, 0).k_row(9, 0)[7], lc::fp32_to_fp16(x[79]));
    EXPECT_EQ(a.bytes_reserved(), 0u);
}
