// Shared pieces of the attention tests (see attn-util.h).
#include "common/attn-util.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace lc::test {

std::vector<float> randn(size_t n, float std, uint32_t seed) {
    std::mt19937                    rng(seed);
    std::normal_distribution<float> dist(0.0f, std);
    std::vector<float>              x(n);
    for (float & v : x) v = dist(rng);
    return x;
}

test_cache make_cache(int n_head_kv, int head_dim, int64_t n_kv, uint32_t seed) {
    const int64_t n_pages = (n_kv + 63) / 64;
    test_cache    c;
    c.n_kv = n_kv;
    c.kv   = std::make_unique<lc::kv_cache>(1, n_head_kv, head_dim, 2 * n_pages * 64, 2);
    EXPECT_TRUE(c.kv->reserve(1, 64).is_ok()); // sequence 0 starts on page 1
    for (int64_t p = 1; p <= n_pages; ++p) {
        EXPECT_TRUE(c.kv->reserve(0, p * 64).is_ok());
        EXPECT_TRUE(c.kv->reserve(1, (p + 1) * 64).is_ok());
    }
    const size_t             row = size_t(n_head_kv * head_dim);
    const std::vector<float> k   = randn(size_t(n_kv) * row, 1.0f, seed);
    const std::vector<float> v   = randn(k.size(), 1.0f, seed + 1);
    const std::vector<float> nan((size_t(n_pages + 1) * 64) * row, std::numeric_limits<float>::quiet_NaN());
    c.kv->write(0, 0, 0, n_kv, k.data(), v.data());
    c.kv->write(0, 0, n_kv, n_pages * 64 - n_kv, nan.data(), nan.data());
    c.kv->write(0, 1, 0, (n_pages + 1) * 64, nan.data(), nan.data());
    return c;
}

std::vector<lc::cpu_isa> isas() {
    std::vector<lc::cpu_isa> r;
    for (lc::cpu_isa isa : {lc::cpu_isa::AVX2, lc::cpu_isa::AVX512})
        if (lc::cpu_isa_available(isa)) r.push_back(isa);
    return r;
}

errors compare(const std::vector<float> & o, const std::vector<float> & o_ref, const std::vector<float> & lse,
               const std::vector<float> & lse_ref) {
    errors e;
    double num = 0, den = 0;
    for (size_t i = 0; i < o.size(); ++i) {
        const double d = double(o[i]) - double(o_ref[i]);
        num += d * d;
        den += double(o_ref[i]) * double(o_ref[i]);
        e.max_abs = std::max(e.max_abs, std::fabs(d));
        if (std::isnan(o[i])) e.max_abs = INFINITY;
    }
    e.nmse = den > 0 ? num / den : num;
    for (size_t i = 0; i < lse.size(); ++i) {
        const double d = lse[i] == lse_ref[i] ? 0.0 : std::fabs(double(lse[i]) - double(lse_ref[i])); // -inf == -inf
        e.lse_abs      = std::max(e.lse_abs, std::isnan(d) ? INFINITY : d);
    }
    return e;
}

} // namespace lc::test
