// Reference dequantizers against hand-worked blocks: every block below is filled with chosen scales and
// quants, and the expected floats were worked out by hand from the GGUF block definitions (not by our code).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "backend/cpu/ref/dequant.h"
#include "gguf/gguf-test-util.h"

using namespace lc;

namespace {

// fp16 bit patterns used below.
constexpr fp16_t H_0_125 = 0x3000, H_0_25 = 0x3400, H_0_5 = 0x3800, H_1 = 0x3C00, H_2 = 0x4000, H_M1 = 0xBC00;

template <typename block> std::vector<float> deq(dtype t, const block & b, int n) {
    std::vector<float> y(size_t(n), NAN);
    ref::dequantize_row(t, &b, y.data(), n);
    return y;
}

void expect_eq(const std::vector<float> & got, const std::vector<float> & want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], want[i]) << "element " << i;
}

// qs[j] = j in the low nibble, 15-j in the high nibble: elements 0..15 get 0..15, elements 16..31 get 15..0.
template <typename block> void fill_ramp_nibbles(block & b) {
    for (int j = 0; j < 16; ++j) b.qs[j] = uint8_t(j | (15 - j) << 4);
}

} // namespace

TEST(dequant, f32_f16_bf16) {
    const float        f32[4] = {1.5f, -0.0f, 3.25e-5f, -65504.0f};
    std::vector<float> y(4);
    ref::dequantize_row(dtype::F32, f32, y.data(), 4);
    expect_eq(y, {1.5f, -0.0f, 3.25e-5f, -65504.0f});

    // 1, -2, 0.5, 65504 (max half), 2^-24 (smallest subnormal), -inf
    const fp16_t f16[6] = {0x3C00, 0xC000, 0x3800, 0x7BFF, 0x0001, 0xFC00};
    y.resize(6);
    ref::dequantize_row(dtype::F16, f16, y.data(), 6);
    expect_eq(y, {1.0f, -2.0f, 0.5f, 65504.0f, 5.9604644775390625e-8f, -INFINITY});

    // 1, -3, 2^-126 (smallest normal), 0x4049 = 3.140625
    const bf16_t bf16[4] = {0x3F80, 0xC040, 0x0080, 0x4049};
    y.resize(4);
    ref::dequantize_row(dtype::BF16, bf16, y.data(), 4);
    expect_eq(y, {1.0f, -3.0f, 1.1754943508222875e-38f, 3.140625f});

    // Unaligned source: F16 at an odd address.
    uint8_t raw[1 + 2 * 2] = {0xAA, 0x00, 0x3C, 0x00, 0xC0};
    y.resize(2);
    ref::dequantize_row(dtype::F16, raw + 1, y.data(), 2);
    expect_eq(y, {1.0f, -2.0f});
}

TEST(dequant, q4_0) {
    block_q4_0 b{};
    b.d = H_0_5; // x = 0.5 * (q - 8)
    fill_ramp_nibbles(b);
    expect_eq(deq(dtype::Q4_0, b, 32),
              {-4,  -3.5, -3,  -2.5, -2,  -1.5, -1,  -0.5, 0,    0.5, 1,    1.5, 2,    2.5, 3,    3.5,
               3.5, 3,    2.5, 2,    1.5, 1,    0.5, 0,    -0.5, -1,  -1.5, -2,  -2.5, -3,  -3.5, -4});
}

TEST(dequant, q4_1) {
    block_q4_1 b{};
    b.d = H_0_5; // x = 0.5 * q - 1
    b.m = H_M1;
    fill_ramp_nibbles(b);
    expect_eq(deq(dtype::Q4_1, b, 32), {-1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5,  6, 6.5, 6.5,
                                        6,  5.5,  5, 4.5, 4, 3.5, 3, 2.5, 2, 1.5, 1, 0.5, 0, -0.5, -1});
}

TEST(dequant, q5_0) {
    block_q5_0 b{};
    b.d = H_0_25; // x = 0.25 * (q - 16)
    fill_ramp_nibbles(b);
    // 5th bits: elements 1,3,5,7 (0xAA) and 16..27 (0xFF, 0x0F).
    b.qh[0] = 0xAA;
    b.qh[1] = 0x00;
    b.qh[2] = 0xFF;
    b.qh[3] = 0x0F;
    expect_eq(deq(dtype::Q5_0, b, 32),
              {-4,   0.25, -3.5, 0.75, -3,   1.25, -2.5, 1.75, -2,   -1.75, -1.5, -1.25, -1,    -0.75, -0.5,  -0.25,
               3.75, 3.5,  3.25, 3,    2.75, 2.5,  2.25, 2,    1.75, 1.5,   1.25, 1,     -3.25, -3.5,  -3.75, -4});
}

TEST(dequant, q5_1) {
    block_q5_1 b{};
    b.d = H_0_5; // x = 0.5 * q + 1
    b.m = H_1;
    fill_ramp_nibbles(b);
    b.qh[0] = 0xAA;
    b.qh[1] = 0x00;
    b.qh[2] = 0xFF;
    b.qh[3] = 0x0F;
    expect_eq(deq(dtype::Q5_1, b, 32), {1,  9.5,  2,  10.5, 3,  11.5, 4,  12.5, 5,  5.5,  6,  6.5, 7, 7.5, 8, 8.5, 16.5,
                                        16, 15.5, 15, 14.5, 14, 13.5, 13, 12.5, 12, 11.5, 11, 2.5, 2, 1.5, 1});
}

TEST(dequant, q8_0_and_q8_1) {
    block_q8_0 b{};
    b.d = H_0_125; // x = q / 8, q = 8j - 128
    for (int j = 0; j < 32; ++j) b.qs[j] = int8_t(8 * j - 128);
    expect_eq(deq(dtype::Q8_0, b, 32), {-16, -15, -14, -13, -12, -11, -10, -9, -8, -7, -6, -5, -4, -3, -2, -1,
                                        0,   1,   2,   3,   4,   5,   6,   7,  8,  9,  10, 11, 12, 13, 14, 15});
    block_q8_1 c{};
    c.d = H_2; // x = 2q; s is the block sum and plays no part in dequantization
    c.s = 0x7BFF;
    for (int j = 0; j < 32; ++j) c.qs[j] = int8_t(j - 16);
    expect_eq(deq(dtype::Q8_1, c, 32), {-32, -30, -28, -26, -24, -22, -20, -18, -16, -14, -12, -10, -8, -6, -4, -2,
                                        0,   2,   4,   6,   8,   10,  12,  14,  16,  18,  20,  22,  24, 26, 28, 30});
}

TEST(dequant, q4_0_two_blocks) {
    block_q4_0 b[2]{};
    b[0].d = H_1;
    b[1].d = H_M1;
    for (int j = 0; j < 16; ++j) b[0].qs[j] = b[1].qs[j] = 0x9F; // low 15, high 9
    std::vector<float> y(64);
    ref::dequantize_row(dtype::Q4_0, b, y.data(), 64);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], 7.0f);       // 1 * (15 - 8)
        EXPECT_EQ(y[16 + j], 1.0f);  // 1 * (9 - 8)
        EXPECT_EQ(y[32 + j], -7.0f); // -1 * (15 - 8)
        EXPECT_EQ(y[48 + j], -1.0f);
    }
}

// Q2_K: 16 sub-blocks of 16, scales[k] = min_k << 4 | scale_k with scale_k = k, min_k = 15 - k; d = 1,
// dmin = 0.5. qs bytes alternate 0xE4 (2-bit fields 0,1,2,3 from bit 0 up) and 0x1B (3,2,1,0), so an element
// of field s has q = s at even byte positions and 3 - s at odd ones: x = k*q - 0.5*(15-k).
TEST(dequant, q2_K) {
    block_q2_K b{};
    b.d    = H_1;
    b.dmin = H_0_5;
    for (int k = 0; k < 16; ++k) b.scales[k] = uint8_t((15 - k) << 4 | k);
    for (int i = 0; i < 64; ++i) b.qs[i] = i % 2 == 0 ? 0xE4 : 0x1B;
    const std::vector<float> y = deq(dtype::Q2_K, b, 256);
    EXPECT_EQ(y[0], -7.5f);   // k0, q0
    EXPECT_EQ(y[1], -7.5f);   // k0, q3: 0*3 - 7.5
    EXPECT_EQ(y[16], -7.0f);  // k1, q0
    EXPECT_EQ(y[17], -4.0f);  // k1, q3: 3 - 7
    EXPECT_EQ(y[32], -4.5f);  // field 1 of half 0 -> k2, q1: 2 - 6.5
    EXPECT_EQ(y[33], -2.5f);  // k2, q2: 4 - 6.5
    EXPECT_EQ(y[100], 13.5f); // field 3, part 0 -> k6, q3: 18 - 4.5
    EXPECT_EQ(y[254], 45.0f); // half 1, field 3, part 1 -> k15, byte 30: q3: 45 - 0
    EXPECT_EQ(y[255], 0.0f);  // k15, byte 31: q0
}

// Q3_K: 6-bit scales stored +32, hand-packed: stored s_k = 0,1,31,32,33,63,16,48,5,10,20,40,50,60,2,47 ->
// signed -32,-31,-1,0,1,31,-16,16,-27,-22,-12,8,18,28,-30,15. Every qs byte 0xE4 gives 2-bit field s the value
// s; hmask[l] = 0x0F for l < 16 and 0xF0 for l >= 16, so the high bit is set in groups 0-3 for the first 16
// bytes and in groups 4-7 for the last 16; a clear high bit subtracts 4. d = 0.5. Every sub-block of 16 has
// one value.
TEST(dequant, q3_K) {
    block_q3_K b{};
    b.d                      = H_0_5;
    const uint8_t scales[12] = {0x50, 0xA1, 0x4F, 0x80, 0x21, 0xCF, 0x20, 0xF0, 0xC8, 0xCC, 0x15, 0xAE};
    std::memcpy(b.scales, scales, 12);
    for (int i = 0; i < 64; ++i) b.qs[i] = 0xE4;
    for (int l = 0; l < 32; ++l) b.hmask[l] = l < 16 ? 0x0F : 0xF0;
    // sub-block k: 0.5 * scale_k * (field - (high bit ? 0 : 4))
    const float want[16] = {
        -0.0f, // k0:  -32 * (0)       (0.5 * -32 * 0)
        62,    // k1:  -31 * (0 - 4)
        -0.5,  // k2:  -1 * 1
        0,     // k3:   0 * (1 - 4)
        1,     // k4:   1 * 2
        -31,   // k5:  31 * (2 - 4)
        -24,   // k6: -16 * 3
        -8,    // k7:  16 * (3 - 4)
        54,    // k8: -27 * (0 - 4)
        -0.0f, // k9: -22 * 0
        18,    // k10: -12 * (1 - 4)
        4,     // k11:   8 * 1
        -18,   // k12:  18 * (2 - 4)
        28,    // k13:  28 * 2
        15,    // k14: -30 * (3 - 4)
        22.5,  // k15:  15 * 3
    };
    const std::vector<float> y = deq(dtype::Q3_K, b, 256);
    for (int k = 0; k < 16; ++k) {
        for (int i = 0; i < 16; ++i) EXPECT_EQ(y[16 * k + i], want[k]) << "sub-block " << k << " element " << i;
    }
}

namespace {

// Scales and mins of the 8 sub-blocks used by the Q4_K/Q5_K tests, and their hand-packed 12 bytes:
// bytes 0-3: scale j (6 bits) | bits 4-5 of scale j+4 in bits 6-7; bytes 4-7: min j | bits 4-5 of min j+4;
// bytes 8-11: low nibble scale j+4 | low nibble min j+4 << 4.
const int     k_sc[8]      = {1, 2, 3, 63, 17, 33, 48, 5};
const int     k_m[8]       = {0, 1, 62, 4, 20, 40, 63, 9};
const uint8_t k_packed[12] = {0x41, 0x82, 0xC3, 0x3F, 0x40, 0x81, 0xFE, 0x04, 0x41, 0x81, 0xF0, 0x95};

} // namespace

// Q4_K: d = 0.5, dmin = 0.25; every 32-byte chunk of qs holds (l & 15) low and 15 - (l & 15) high, so
// sub-block 2c has q = l & 15 and sub-block 2c+1 has q = 15 - (l & 15); x = 0.5*sc*q - 0.25*m.
TEST(dequant, q4_K) {
    block_q4_K b{};
    b.d    = H_0_5;
    b.dmin = H_0_25;
    std::memcpy(b.scales, k_packed, 12);
    for (int i = 0; i < 128; ++i) b.qs[i] = uint8_t((i & 15) | (15 - (i & 15)) << 4);
    const std::vector<float> y = deq(dtype::Q4_K, b, 256);
    EXPECT_EQ(y[0], 0.0f);      // s0, q0
    EXPECT_EQ(y[32], 14.75f);   // s1, q15: 0.5*2*15 - 0.25*1
    EXPECT_EQ(y[65], -14.0f);   // s2, q1: 1.5 - 15.5
    EXPECT_EQ(y[96], 471.5f);   // s3, q15: 472.5 - 1
    EXPECT_EQ(y[130], 12.0f);   // s4, q2: 17 - 5
    EXPECT_EQ(y[163], 188.0f);  // s5, q12: 198 - 10
    EXPECT_EQ(y[207], 344.25f); // s6, q15: 360 - 15.75
    EXPECT_EQ(y[255], -2.25f);  // s7, q0: 0 - 2.25
    for (int e = 0; e < 256; ++e) {
        const int s = e / 32, l = e % 32;
        const int q = s % 2 == 0 ? (l & 15) : 15 - (l & 15);
        EXPECT_EQ(y[e], 0.5f * float(k_sc[s] * q) - 0.25f * float(k_m[s])) << "element " << e;
    }
}

// Q5_K: as Q4_K plus qh[l] = 0x55 for even l (5th bit of the low-nibble elements of every chunk) and 0xAA
// for odd l (5th bit of the high-nibble elements).
TEST(dequant, q5_K) {
    block_q5_K b{};
    b.d    = H_0_5;
    b.dmin = H_0_25;
    std::memcpy(b.scales, k_packed, 12);
    for (int i = 0; i < 128; ++i) b.qs[i] = uint8_t((i & 15) | (15 - (i & 15)) << 4);
    for (int l = 0; l < 32; ++l) b.qh[l] = l % 2 == 0 ? 0x55 : 0xAA;
    const std::vector<float> y = deq(dtype::Q5_K, b, 256);
    EXPECT_EQ(y[0], 8.0f);      // s0, l0 even: q 16
    EXPECT_EQ(y[33], 29.75f);   // s1, l1 odd: q 14+16 = 30: 30 - 0.25
    EXPECT_EQ(y[65], -14.0f);   // s2, l1 odd: no 5th bit, q1
    EXPECT_EQ(y[96], 471.5f);   // s3, l0 even: no 5th bit, q15
    EXPECT_EQ(y[130], 148.0f);  // s4, l2 even: q 18: 153 - 5
    EXPECT_EQ(y[163], 452.0f);  // s5, l3 odd: q 28: 462 - 10
    EXPECT_EQ(y[207], 344.25f); // s6, l15 odd: no 5th bit, q15
    EXPECT_EQ(y[255], 37.75f);  // s7, l31 odd: q 16: 40 - 2.25
    for (int e = 0; e < 256; ++e) {
        const int  s = e / 32, l = e % 32;
        const bool lo = s % 2 == 0;
        const int  q  = (lo ? (l & 15) : 15 - (l & 15)) + ((l % 2 == 0) == lo ? 16 : 0);
        EXPECT_EQ(y[e], 0.5f * float(k_sc[s] * q) - 0.25f * float(k_m[s])) << "element " << e;
    }
}

// Q6_K: d = 0.25, scales 1,-1,2,-2,...,8,-8; ql[i] = (i & 15) | (15 - (i & 15)) << 4 and every qh byte 0xE4
// (2-bit fields 0,1,2,3). In each half of 128, the four groups of 32 get q = (l&15), (l&15) + 16,
// 47 - (l&15), 63 - (l&15), and group g uses scales[8*half + l/16 + 2g]; x = 0.25 * scale * (q - 32).
TEST(dequant, q6_K) {
    block_q6_K b{};
    b.d = H_0_25;
    for (int k = 0; k < 16; ++k) b.scales[k] = int8_t(k % 2 == 0 ? k / 2 + 1 : -(k / 2 + 1));
    for (int i = 0; i < 128; ++i) b.ql[i] = uint8_t((i & 15) | (15 - (i & 15)) << 4);
    for (int i = 0; i < 64; ++i) b.qh[i] = 0xE4;
    const std::vector<float> y = deq(dtype::Q6_K, b, 256);
    EXPECT_EQ(y[0], -8.0f);    // scale 1, q0
    EXPECT_EQ(y[17], 7.75f);   // scale -1, q1: -0.25 * -31
    EXPECT_EQ(y[37], -5.5f);   // group 1, l5: scale 2, q21
    EXPECT_EQ(y[84], -8.25f);  // group 2, l20: scale -3, q43
    EXPECT_EQ(y[127], -16.0f); // group 3, l31: scale -4, q48
    EXPECT_EQ(y[128], -40.0f); // half 1: scale 5, q0
    EXPECT_EQ(y[224], 62.0f);  // half 1, group 3, l0: scale 8, q63
    EXPECT_EQ(y[255], -32.0f); // half 1, group 3, l31: scale -8, q48
    for (int e = 0; e < 256; ++e) {
        const int h = e / 128, g = (e % 128) / 32, l = e % 32;
        const int base[4] = {l & 15, (l & 15) + 16, 47 - (l & 15), 63 - (l & 15)};
        const int sc      = b.scales[8 * h + l / 16 + 2 * g];
        EXPECT_EQ(y[e], 0.25f * float(sc * (base[g] - 32))) << "element " << e;
    }
}

TEST(dequant, q8_K) {
    block_q8_K b{};
    b.d = 0.5f;
    for (int j = 0; j < 256; ++j) b.qs[j] = int8_t(j - 128);
    const std::vector<float> y = deq(dtype::Q8_K, b, 256);
    EXPECT_EQ(y[0], -64.0f);
    EXPECT_EQ(y[128], 0.0f);
    EXPECT_EQ(y[255], 63.5f);
}

TEST(dequant, supported_types) {
    for (dtype t : {dtype::F32, dtype::F16, dtype::BF16, dtype::Q4_0, dtype::Q4_1, dtype::Q5_0, dtype::Q8_0,
                    dtype::Q4_K, dtype::Q5_K, dtype::Q6_K}) {
        EXPECT_TRUE(dtype_is_supported(t));
        EXPECT_TRUE(ref::dequantize_supported(t)) << dtype_name(t);
    }
}

TEST(dequant_death, bad_row_length) {
    block_q4_0 b{};
    float      y[32];
    EXPECT_DEATH(ref::dequantize_row(dtype::Q4_0, &b, y, 31), "block size");
}

// Rows of the real model: token_embd.weight is Q8_0 and the block weights Q4_1. Small-model weights are
// O(0.01-0.1) with outliers of a few units; anything non-finite or far outside that means a wrong layout.
TEST(dequant_model, smollm2_rows) {
    const std::string path = test::model_path();
    auto              r    = gguf_file::open(path);
    if (!r && r.get_status().code() == status_code::NOT_FOUND) GTEST_SKIP() << "model not found: " << path;
    ASSERT_TRUE(r) << r.get_status().message();
    const gguf_file & f = **r;
    for (const char * name : {"token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight",
                              "blk.29.ffn_gate.weight", "blk.0.attn_norm.weight"}) {
        const gguf_tensor_info * t = f.find_tensor(name);
        ASSERT_NE(t, nullptr) << name;
        const int64_t        n      = t->ne[0];
        const size_t         nb_row = dtype_row_size(t->type, n);
        std::vector<float>   y(static_cast<size_t>(n));
        double               sum_abs = 0.0, max_abs = 0.0;
        int64_t              count = 0;
        std::vector<int64_t> rows  = {0, t->ne[1] / 2, t->ne[1] - 1}; // first, middle, last (1-D: row 0 only)
        rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
        for (int64_t row : rows) {
            ref::dequantize_row(t->type, t->data + size_t(row) * nb_row, y.data(), n);
            for (float v : y) {
                ASSERT_TRUE(std::isfinite(v)) << name << " row " << row;
                sum_abs += std::fabs(v);
                max_abs = std::max(max_abs, double(std::fabs(v)));
                ++count;
            }
        }
        const double mean_abs = sum_abs / double(count);
        EXPECT_GT(mean_abs, 1e-3) << name;
        EXPECT_LT(max_abs, 64.0) << name;
        if (t->type != dtype::F32) EXPECT_LT(mean_abs, 1.0) << name; // norm weights are O(1), matrices are not
        std::printf("%-24s %-5s mean|x| %.4f max|x| %.3f\n", name, dtype_name(t->type), mean_abs, max_abs);
    }
    EXPECT_EQ(f.find_tensor("token_embd.weight")->type, dtype::Q8_0);
    EXPECT_EQ(f.find_tensor("blk.0.attn_q.weight")->type, dtype::Q4_1);
}
