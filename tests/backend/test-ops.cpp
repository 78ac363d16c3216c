// Forward-pass elementwise ops (backend/cpu/ops.h) against their scalar double-precision references, on random
// inputs from a fixed seed, compared by normalised mean squared error; GELU-tanh also against hand values.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backend/cpu/ops.h"

using namespace lc;

namespace {

double nmse(const std::vector<float> & ref, const std::vector<float> & got) {
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        num += (double(ref[i]) - got[i]) * (double(ref[i]) - got[i]);
        den += double(ref[i]) * ref[i];
    }
    return den > 0 ? num / den : num;
}

std::vector<float> random_vec(int64_t n, float lo, float hi, uint32_t seed) {
    std::mt19937                          rng(seed);
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float>                    v(static_cast<size_t>(n));
    for (auto & x : v) x = d(rng);
    return v;
}

} // namespace

// Values of 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) computed by hand (float64, outside this code base).
TEST(ops, gelu_tanh_hand_values) {
    const float x[]    = {-3.0f, -1.0f, 0.0f, 0.5f, 1.0f, 2.0f};
    const float want[] = {-0.0036373920817729943f, -0.15880800939172324f, 0.0f,
                          0.34571400982514394f,    0.8411919906082768f,   1.954597694087775f};
    for (int i = 0; i < 6; ++i) {
        // 9 + 6 lanes: the AVX2 body and the scalar tail both see each value
        std::vector<float> g(15, x[i]), u(15, 1.0f), r(15, x[i]);
        cpu::gelu_tanh_mul(g.data(), u.data(), 15);
        cpu::ref::gelu_tanh_mul(r.data(), u.data(), 15);
        for (int j = 0; j < 15; ++j) {
            EXPECT_NEAR(g[size_t(j)], want[i], 2e-6f + 2e-6f * std::fabs(want[i])) << "x=" << x[i] << " lane " << j;
            EXPECT_NEAR(r[size_t(j)], want[i], 1e-7f + 1e-7f * std::fabs(want[i])) << "x=" << x[i];
        }
    }
}

TEST(ops, gelu_tanh_mul_matches_reference) {
    for (int64_t n : {1, 7, 8, 33, 2048, 4099}) {
        auto               g = random_vec(n, -12.0f, 12.0f, 1u + uint32_t(n));
        const auto         u = random_vec(n, -2.0f, 2.0f, 100u + uint32_t(n));
        std::vector<float> r = g;
        cpu::gelu_tanh_mul(g.data(), u.data(), n);
        cpu::ref::gelu_tanh_mul(r.data(), u.data(), n);
        // exp_ps has ~2e-7 relative error; one division and two products add a few ulps
        EXPECT_LT(nmse(r, g), 1e-12) << "n=" << n;
        for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(std::isfinite(g[size_t(i)])) << i;
    }
    // large negative inputs underflow to (signed) zero, large positive ones pass through
    std::vector<float> g = {-200.0f, -90.0f, -20.0f, 20.0f, 90.0f, 200.0f, 1e30f, 0.0f}, u(8, 1.0f);
    cpu::gelu_tanh_mul(g.data(), u.data(), 8);
    for (int i = 0; i < 3; ++i) EXPECT_LE(std::fabs(g[size_t(i)]), 1e-30f) << i;
    EXPECT_FLOAT_EQ(g[3], 20.0f);
    EXPECT_FLOAT_EQ(g[4], 90.0f);
    EXPECT_FLOAT_EQ(g[5], 200.0f);
    EXPECT_FLOAT_EQ(g[6], 1e30f);
    EXPECT_EQ(g[7], 0.0f);
}

TEST(ops, silu_mul_matches_reference) {
    for (int64_t n : {5, 1536, 1539}) {
        auto               g = random_vec(n, -10.0f, 10.0f, 7u + uint32_t(n));
        const auto         u = random_vec(n, -2.0f, 2.0f, 70u + uint32_t(n));
        std::vector<float> r = g;
        cpu::silu_mul(g.data(), u.data(), n);
        cpu::ref::silu_mul(r.data(), u.data(), n);
        EXPECT_LT(nmse(r, g), 1e-12) << "n=" << n;
    }
}

TEST(ops, rmsnorm_matches_reference) {
    for (int64_t n : {256, 576, 640, 643}) {
        const auto         x = random_vec(n, -3.0f, 3.0f, 11u + uint32_t(n));
        const auto         w = random_vec(n, 0.5f, 1.5f, 12u + uint32_t(n));
        std::vector<float> y(static_cast<size_t>(n)), r(static_cast<size_t>(n));
        cpu::rmsnorm(x.data(), w.data(), y.data(), n, 1e-6f);
        cpu::ref::rmsnorm(x.data(), w.data(), r.data(), n, 1e-6f);
        EXPECT_LT(nmse(r, y), 1e-13) << "n=" << n;
        std::vector<float> z = x; // in place
        cpu::rmsnorm(z.data(), w.data(), z.data(), n, 1e-6f);
        EXPECT_EQ(z, y);
    }
}
