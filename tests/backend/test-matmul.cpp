// Quantized matmul: activation quantizers and integer tiles (AVX2, AVX-512) against the scalar reference, on
// random weights of every type with an integer kernel (K-quants included) and on the dequantize-and-FMA fallback.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cpu/quant.h"
#include "backend/cpu/ref/dequant.h"

using namespace lc;

namespace {

// Random weight rows of a type, built directly as blocks with random scales and quants.
std::vector<uint8_t> random_weights(dtype t, int64_t n_in, int64_t n_out, std::mt19937 & rng) {
    const size_t                          rb = dtype_row_size(t, n_in);
    std::vector<uint8_t>                  w(rb * size_t(n_out));
    std::uniform_int_distribution<int>    byte(0, 255);
    std::uniform_real_distribution<float> sc(0.001f, 0.05f);
    for (auto & b : w) b = uint8_t(byte(rng));
    // overwrite the scales with sane values (random bytes would make inf/nan halves)
    const int64_t nb = n_in / 32;
    for (int64_t r = 0; r < n_out; ++r) {
        uint8_t * row = w.data() + size_t(r) * rb;
        for (int64_t b = 0; b < nb; ++b) {
            switch (t) {
            case dtype::Q4_0:
                ((block_q4_0 *)row)[b].d = fp32_to_fp16(sc(rng));
                break;
            case dtype::Q5_0:
                ((block_q5_0 *)row)[b].d = fp32_to_fp16(sc(rng));
                break;
            case dtype::Q8_0:
                ((block_q8_0 *)row)[b].d = fp32_to_fp16(sc(rng));
                break;
            case dtype::Q4_1:
                ((block_q4_1 *)row)[b].d = fp32_to_fp16(sc(rng));
                ((block_q4_1 *)row)[b].m = fp32_to_fp16(-8.0f * sc(rng));
                break;
            default:
                break;
            }
        }
        for (int64_t b = 0; b < n_in / QK_K; ++b) {
            // 6-bit / int8 sub-block scales stay random bytes (every value is valid); the fp16 super-block
            // scales get sane magnitudes
            switch (t) {
            case dtype::Q4_K:
                ((block_q4_K *)row)[b].d    = fp32_to_fp16(0.1f * sc(rng));
                ((block_q4_K *)row)[b].dmin = fp32_to_fp16(0.1f * sc(rng));
                break;
            case dtype::Q5_K:
                ((block_q5_K *)row)[b].d    = fp32_to_fp16(0.05f * sc(rng));
                ((block_q5_K *)row)[b].dmin = fp32_to_fp16(0.1f * sc(rng));
                break;
            case dtype::Q6_K:
                ((block_q6_K *)row)[b].d = fp32_to_fp16(0.01f * sc(rng));
                break;
            default:
                break;
            }
        }
        if (t == dtype::F32)
            for (int64_t i = 0; i < n_in; ++i) ((float *)row)[i] = sc(rng) - 0.025f;
        if (t == dtype::F16)
            for (int64_t i = 0; i < n_in; ++i) ((fp16_t *)row)[i] = fp32_to_fp16(sc(rng) - 0.025f);
    }
    return w;
}

} // namespace

TEST(quantize, q8_1_matches_reference) {
    std::mt19937                    rng(1);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    const int64_t                   n = 32 * 37;
    std::vector<float>              x(static_cast<size_t>(n));
    for (auto & v : x) v = nd(rng);
    x[5] = 0.0f;
    for (int j = 0; j < 32; ++j) x[size_t(64 + j)] = 0.0f; // an all-zero block: d = 0, no division by zero
    std::vector<block_q8_1> a(size_t(n / 32)), b(size_t(n / 32));
    cpu::quantize_row_q8_1(x.data(), a.data(), n);
    cpu::ref::quantize_row_q8_1(x.data(), b.data(), n);
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].d, b[i].d) << "block " << i;
        EXPECT_EQ(a[i].s, b[i].s) << "block " << i;
        for (int j = 0; j < 32; ++j) ASSERT_EQ(a[i].qs[j], b[i].qs[j]) << "block " << i << " elem " << j;
    }
    // worked example: a block of 0..31 has amax 31, d = 31/127, q_j = round(j * 127/31)
    float blk[32];
    for (int j = 0; j < 32; ++j) blk[j] = float(j);
    block_q8_1 q;
    cpu::quantize_row_q8_1(blk, &q, 32);
    EXPECT_FLOAT_EQ(fp16_to_fp32(q.d), fp16_to_fp32(fp32_to_fp16(31.0f / 127.0f)));
    EXPECT_EQ(q.qs[31], 127);
    EXPECT_EQ(q.qs[1], 4);  // 127/31 = 4.097 -> 4
    EXPECT_EQ(q.qs[8], 33); // 32.77 -> 33
}

TEST(quantize, q8_0_matches_reference) {
    std::mt19937                    rng(2);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int64_t                   n = 32 * 50;
    std::vector<float>              x(static_cast<size_t>(n));
    for (auto & v : x) v = nd(rng);
    std::vector<block_q8_0> a(size_t(n / 32)), b(size_t(n / 32));
    cpu::quantize_row_q8_0(x.data(), a.data(), n);
    cpu::ref::quantize_row_q8_0(x.data(), b.data(), n);
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].d, b[i].d);
        for (int j = 0; j < 32; ++j) ASSERT_EQ(a[i].qs[j], b[i].qs[j]);
    }
}

bool is_k_quant(dtype t) {
    return t == dtype::Q4_K || t == dtype::Q5_K || t == dtype::Q6_K;
}

std::vector<float> dequantize_q8_K(const std::vector<block_q8_K> & a) {
    std::vector<float> x(a.size() * QK_K);
    ref::dequantize_row(dtype::Q8_K, a.data(), x.data(), int64_t(x.size()));
    return x;
}

TEST(quantize, q8_K_matches_reference) {
    std::mt19937                    rng(3);
    std::normal_distribution<float> nd(0.0f, 1.5f);
    const int64_t                   n = QK_K * 9;
    std::vector<float>              x(static_cast<size_t>(n));
    for (auto & v : x) v = nd(rng);
    for (int j = 0; j < QK_K; ++j) x[size_t(2 * QK_K + j)] = 0.0f; // all-zero block: d = 0, no division by zero
    for (int j = 0; j < QK_K; ++j) x[size_t(4 * QK_K + j)] *= 1e-6f;
    std::vector<block_q8_K> a(size_t(n / QK_K)), b(size_t(n / QK_K));
    cpu::quantize_row_q8_K(x.data(), a.data(), n);
    cpu::ref::quantize_row_q8_K(x.data(), b.data(), n);
    for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].d, b[i].d) << "block " << i;
        for (int j = 0; j < QK_K; ++j) ASSERT_EQ(a[i].qs[j], b[i].qs[j]) << "block " << i << " elem " << j;
        for (int j = 0; j < QK_K / 16; ++j) ASSERT_EQ(a[i].bsums[j], b[i].bsums[j]) << "block " << i << " sum " << j;
    }
    EXPECT_EQ(a[2].d, 0.0f);
    EXPECT_EQ(a[2].qs[7], 0);
}

TEST(quantize, q8_K_worked_example) {
    // amax 127: d = 1, id = 1, so q = round_half_even(x): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2, -3.5 -> -4
    float x[QK_K] = {};
    x[0] = 127.0f, x[1] = 0.5f, x[2] = 1.5f, x[3] = 2.5f, x[4] = -2.5f, x[5] = -3.5f, x[20] = -127.0f, x[255] = 3.0f;
    for (int impl = 0; impl < 2; ++impl) {
        block_q8_K q;
        if (impl == 0)
            cpu::quantize_row_q8_K(x, &q, QK_K);
        else
            cpu::ref::quantize_row_q8_K(x, &q, QK_K);
        EXPECT_EQ(q.d, 1.0f);
        EXPECT_EQ(q.qs[0], 127);
        EXPECT_EQ(q.qs[1], 0);
        EXPECT_EQ(q.qs[2], 2);
        EXPECT_EQ(q.qs[3], 2);
        EXPECT_EQ(q.qs[4], -2);
        EXPECT_EQ(q.qs[5], -4);
        EXPECT_EQ(q.qs[20], -127);
        EXPECT_EQ(q.bsums[0], 127 + 2 + 2 - 2 - 4);
        EXPECT_EQ(q.bsums[1], -127);
        EXPECT_EQ(q.bsums[15], 3);
        for (int j = 2; j < 15; ++j) EXPECT_EQ(q.bsums[j], 0);
    }
}

TEST(matmul, k_quant_reference_equals_dequantized_product) {
    // The integer reference computes each block as exact integer sums times d_w*d_a (and dmin_w*d_a for the
    // mins): compare with a double product of dequantized weights and dequantized Q8_K activations.
    std::mt19937                    rng(12);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (dtype t : {dtype::Q4_K, dtype::Q5_K, dtype::Q6_K}) {
        const int64_t      n_in = 3 * QK_K, n_out = 6;
        auto               w = random_weights(t, n_in, n_out, rng);
        std::vector<float> x(static_cast<size_t>(n_in)), wd(static_cast<size_t>(n_in));
        for (auto & v : x) v = nd(rng);
        std::vector<block_q8_K> xq(size_t(n_in / QK_K));
        cpu::ref::quantize_row_q8_K(x.data(), xq.data(), n_in);
        const auto   xd = dequantize_q8_K(xq);
        const size_t rb = dtype_row_size(t, n_in);
        for (int64_t r = 0; r < n_out; ++r) {
            const uint8_t * wr = w.data() + size_t(r) * rb;
            ref::dequantize_row(t, wr, wd.data(), n_in);
            double acc = 0, mag = 0;
            for (int64_t i = 0; i < n_in; ++i) {
                acc += double(wd[size_t(i)]) * xd[size_t(i)];
                mag += std::fabs(double(wd[size_t(i)]) * xd[size_t(i)]);
            }
            float v = 0;
            if (t == dtype::Q4_K) v = cpu::ref::vec_dot_q4_K_q8_K(n_in, (const block_q4_K *)wr, xq.data());
            if (t == dtype::Q5_K) v = cpu::ref::vec_dot_q5_K_q8_K(n_in, (const block_q5_K *)wr, xq.data());
            if (t == dtype::Q6_K) v = cpu::ref::vec_dot_q6_K_q8_K(n_in, (const block_q6_K *)wr, xq.data());
            EXPECT_NEAR(v, acc, 1e-5 * (mag + 1e-3)) << dtype_name(t) << " row " << r;
        }
    }
}

TEST(matmul, q4_K_worked_example) {
    // One Q4_K block: d = 1, dmin = 0.5, sub-block scales sc_j = j + 1, mins m_j = 2 (all below 16, so the
    // 12-byte packing is bytes 0-3 = sc0..3, 4-7 = m0..3, 8-11 = sc4..7 | m4..7 << 4). Every qs byte is 0x21:
    // sub-blocks 0, 2, 4, 6 (low nibbles) have q = 1, sub-blocks 1, 3, 5, 7 (high nibbles) q = 2.
    // Weights (j+1)*q_j - 1 per sub-block: 0, 3, 2, 7, 4, 11, 6, 15.
    block_q4_K w;
    w.d    = fp32_to_fp16(1.0f);
    w.dmin = fp32_to_fp16(0.5f);
    for (int j = 0; j < 4; ++j) {
        w.scales[j]     = uint8_t(j + 1);
        w.scales[j + 4] = 2;
        w.scales[j + 8] = uint8_t((j + 5) | (2 << 4));
    }
    for (auto & q : w.qs) q = 0x21;
    const float expect_w[8] = {0, 3, 2, 7, 4, 11, 6, 15};
    float       wd[QK_K];
    ref::dequantize_row(dtype::Q4_K, &w, wd, QK_K);
    for (int i = 0; i < QK_K; ++i) ASSERT_EQ(wd[i], expect_w[i / 32]) << i;
    // Activations: +1 on the first 128 elements, -1 on the rest -> Q8_K d = 1/127, q = +-127.
    // Dot: 32 * (0 + 3 + 2 + 7) - 32 * (4 + 11 + 6 + 15) = 384 - 1152 = -768.
    float x[QK_K];
    for (int i = 0; i < QK_K; ++i) x[i] = i < 128 ? 1.0f : -1.0f;
    block_q8_K xq;
    cpu::ref::quantize_row_q8_K(x, &xq, QK_K);
    EXPECT_NEAR(cpu::ref::vec_dot_q4_K_q8_K(QK_K, &w, &xq), -768.0f, 1e-3f);
    cpu::matmul_weight mw{dtype::Q4_K, &w, QK_K, 1};
    for (cpu_isa isa : {cpu_isa::AVX2, cpu_isa::AVX512}) {
        if (isa == cpu_isa::AVX512 && !(cpu_isa_available(isa) && cpu_has_avx512vnni())) continue;
        thread_pool          pool(1);
        std::vector<uint8_t> scratch;
        float                y = 0;
        cpu::matmul(mw, x, 1, QK_K, &y, 1, pool, scratch, isa);
        EXPECT_NEAR(y, -768.0f, 1e-3f) << cpu_isa_name(isa);
    }
}

TEST(matmul, multi_shares_q8_K_activations) {
    // gate/up-style products: two K-quant weights of the same type and width, quantized input shared
    std::mt19937                    rng(13);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (dtype t : {dtype::Q4_K, dtype::Q6_K}) {
        const int64_t      n_in = 512, n_tok = 9, n_out[2] = {12, 37};
        auto               w0 = random_weights(t, n_in, n_out[0], rng), w1 = random_weights(t, n_in, n_out[1], rng);
        cpu::matmul_weight mw0{t, w0.data(), n_in, n_out[0]}, mw1{t, w1.data(), n_in, n_out[1]};
        std::vector<float> x(size_t(n_tok * n_in));
        for (auto & v : x) v = nd(rng);
        std::vector<float>         y0(size_t(n_tok * n_out[0])), y1(size_t(n_tok * n_out[1]));
        std::vector<float>         r0(y0.size()), r1(y1.size());
        const cpu::matmul_weight * ws[2] = {&mw0, &mw1};
        float * const              ys[2] = {y0.data(), y1.data()};
        const int64_t              ld[2] = {n_out[0], n_out[1]};
        thread_pool                pool(2);
        std::vector<uint8_t>       scratch;
        cpu::matmul_multi(ws, 2, x.data(), n_tok, n_in, ys, ld, pool, scratch);
        cpu::matmul_ref(mw0, x.data(), n_tok, n_in, r0.data(), n_out[0]);
        cpu::matmul_ref(mw1, x.data(), n_tok, n_in, r1.data(), n_out[1]);
        for (size_t i = 0; i < y0.size(); ++i) ASSERT_NEAR(y0[i], r0[i], 1e-4f * (1.0f + std::fabs(r0[i]))) << i;
        for (size_t i = 0; i < y1.size(); ++i) ASSERT_NEAR(y1[i], r1[i], 1e-4f * (1.0f + std::fabs(r1[i]))) << i;
    }
}

class matmul_types : public ::testing::TestWithParam<dtype> {};

TEST_P(matmul_types, matches_reference) {
    const dtype                     t = GetParam();
    std::mt19937                    rng(uint32_t(t) + 7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const std::vector<int64_t>      n_ins =
        is_k_quant(t) ? std::vector<int64_t>{256, 768, 2048} : std::vector<int64_t>{32, 96, 576, 1536};
    for (int64_t n_in : n_ins) {
        for (int64_t n_out : {1, 3, 4, 7, 64, 193}) {
            for (int64_t n_tok : {1, 2, 3, 5, 65, 130}) {
                auto               w = random_weights(t, n_in, n_out, rng);
                cpu::matmul_weight mw{t, w.data(), n_in, n_out};
                const int64_t      ldx = n_in + 3, ldy = n_out + 5;
                std::vector<float> x(size_t(n_tok * ldx)), y(size_t(n_tok * ldy), -777.0f),
                    yr(size_t(n_tok * ldy), -777.0f);
                for (auto & v : x) v = nd(rng);
                for (auto [nth, isa] :
                     {std::pair{1, cpu_isa::AVX2}, std::pair{3, cpu_isa::AVX2}, std::pair{2, cpu_isa::AVX2},
                      std::pair{1, cpu_isa::AVX512}, std::pair{3, cpu_isa::AVX512}, std::pair{2, cpu_isa::AVX512}}) {
                    if (isa == cpu_isa::AVX512 && !(cpu_isa_available(isa) && cpu_has_avx512vnni())) continue;
                    thread_pool          pool(nth);
                    std::vector<uint8_t> scratch;
                    std::fill(y.begin(), y.end(), -777.0f);
                    cpu::matmul(mw, x.data(), n_tok, ldx, y.data(), ldy, pool, scratch, isa);
                    cpu::matmul_ref(mw, x.data(), n_tok, ldx, yr.data(), ldy);
                    for (int64_t tk = 0; tk < n_tok; ++tk) {
                        for (int64_t r = 0; r < ldy; ++r) {
                            const float a = y[size_t(tk * ldy + r)], b = yr[size_t(tk * ldy + r)];
                            if (r >= n_out) {
                                ASSERT_EQ(a, -777.0f) << "wrote past n_out";
                                continue;
                            }
                            // fp32 accumulation of exact integer block sums vs double: relative 1e-5 of the
                            // magnitude of the row's terms
                            ASSERT_NEAR(a, b, 1e-4f * (1.0f + std::fabs(b)))
                                << dtype_name(t) << " n_in=" << n_in << " n_out=" << n_out << " n_tok=" << n_tok
                                << " tok=" << tk << " row=" << r << " threads=" << nth << " isa=" << cpu_isa_name(isa);
                        }
                    }
                }
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(cpu, matmul_types,
                         ::testing::Values(dtype::Q4_0, dtype::Q4_1, dtype::Q5_0, dtype::Q8_0, dtype::Q4_K, dtype::Q5_K,
                                           dtype::Q6_K, dtype::F32, dtype::F16),
                         [](const auto & info) { return std::string(dtype_name(info.param)); });

TEST(matmul, reference_equals_dequantized_product_for_q4_1) {
    // The integer path computes sum_j (d_w q_j + m) * (d_a a_j): check the reference against a float product
    // of dequantized weights with dequantized Q8_1 activations.
    std::mt19937                    rng(11);
    const int64_t                   n_in = 256, n_out = 5;
    auto                            w = random_weights(dtype::Q4_1, n_in, n_out, rng);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float>              x(static_cast<size_t>(n_in));
    for (auto & v : x) v = nd(rng);
    std::vector<block_q8_1> xq(size_t(n_in / 32));
    cpu::ref::quantize_row_q8_1(x.data(), xq.data(), n_in);
    std::vector<float> xd(static_cast<size_t>(n_in)), wd(static_cast<size_t>(n_in));
    for (int64_t b = 0; b < n_in / 32; ++b)
        for (int j = 0; j < 32; ++j) xd[size_t(b * 32 + j)] = fp16_to_fp32(xq[size_t(b)].d) * xq[size_t(b)].qs[j];
    cpu::matmul_weight mw{dtype::Q4_1, w.data(), n_in, n_out};
    std::vector<float> y(static_cast<size_t>(n_out));
    cpu::matmul_ref(mw, x.data(), 1, n_in, y.data(), n_out);
    for (int64_t r = 0; r < n_out; ++r) {
        ref::dequantize_row(dtype::Q4_1, w.data() + size_t(r) * mw.row_bytes(), wd.data(), n_in);
        double acc = 0;
        for (int64_t i = 0; i < n_in; ++i) acc += double(wd[size_t(i)]) * xd[size_t(i)];
        // s is stored as fp16 of d*sum(q): allow its rounding (relative 2^-11 of |m| * |s| per block)
        EXPECT_NEAR(y[size_t(r)], acc, 2e-3 * (1.0 + std::fabs(acc)));
    }
}
