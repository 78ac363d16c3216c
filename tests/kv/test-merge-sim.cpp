// D2O merge similarity search (kv/merge-sim.h): every available ISA kernel against the scalar double reference over
// random shapes (tails of every tile and block, dims 48/64/128/256, pools of 1 and 3 threads), bit-identical results
// across ISAs and pools, n_c = 0 and 1, the tie rule (lowest c) with duplicate rows, runs of strictly increasing and
// decreasing dots, NaN rows, no writes outside u and arg; the fp16 gather-and-normalise helper.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/ref/merge-sim-ref.h"
#include "common/attn-util.h"
#include "core/cpu-features.h"
#include "core/fp16.h"
#include "core/thread-pool.h"
#include "kv/merge-sim.h"

namespace {

using lc::test::isas;
using lc::test::randn;

constexpr float   k_inf       = std::numeric_limits<float>::infinity();
constexpr int64_t k_guard     = 16; // elements checked on each side of u and arg
constexpr float   k_guard_u   = 12345.0f;
constexpr int32_t k_guard_arg = 0x5a5a5a5a;

// An f32 dot of unit vectors summed in order over d is within dim * 2^-24 * sum_d |e_d c_d| <= dim * 2^-24 of the
// exact value (each of the dim FMAs rounds once). The kernel's maximum and the reference's are then within that, and
// the reference dot of the kernel's argmax within twice that of the true maximum; 2x margin on top.
double tol_for(int dim) {
    return 4.0 * dim * 0x1p-24;
}

std::vector<float> unit_rows(int64_t n, int dim, uint32_t seed) {
    std::vector<float> x = randn(size_t(n * dim), 1.0f, seed);
    for (int64_t i = 0; i < n; ++i) {
        double ss = 0;
        for (int d = 0; d < dim; ++d) ss += double(x[i * dim + d]) * x[i * dim + d];
        const float inv = float(1.0 / std::sqrt(ss));
        for (int d = 0; d < dim; ++d) x[i * dim + d] *= inv;
    }
    return x;
}

struct result {
    std::vector<float>   u;
    std::vector<int32_t> arg;
};

// Runs the kernel into guarded buffers and checks the guards.
result run(lc::cpu_isa isa, const std::vector<float> & E, int64_t n_e, const std::vector<float> & C, int64_t n_c,
           int dim, lc::thread_pool & pool) {
    std::vector<float>   u(size_t(n_e + 2 * k_guard), k_guard_u);
    std::vector<int32_t> arg(u.size(), k_guard_arg);
    lc::max_dot_argmax_isa(isa, E.data(), n_e, C.data(), n_c, dim, u.data() + k_guard, arg.data() + k_guard, pool);
    for (int64_t i = 0; i < k_guard; ++i) {
        EXPECT_EQ(u[i], k_guard_u) << "write before u";
        EXPECT_EQ(u[k_guard + n_e + i], k_guard_u) << "write after u";
        EXPECT_EQ(arg[i], k_guard_arg) << "write before arg";
        EXPECT_EQ(arg[k_guard + n_e + i], k_guard_arg) << "write after arg";
    }
    result r;
    r.u.assign(u.begin() + k_guard, u.begin() + k_guard + n_e);
    r.arg.assign(arg.begin() + k_guard, arg.begin() + k_guard + n_e);
    return r;
}

result run_ref(const std::vector<float> & E, int64_t n_e, const std::vector<float> & C, int64_t n_c, int dim) {
    result r;
    r.u.resize(size_t(n_e));
    r.arg.resize(size_t(n_e));
    lc::max_dot_argmax_ref(E.data(), n_e, C.data(), n_c, dim, r.u.data(), r.arg.data());
    return r;
}

// u within tolerance of the reference maximum, arg in range with a reference dot within tolerance of the maximum and
// of u. Returns the number of rows whose arg differs from the reference's.
int64_t check_against_ref(const result & r, const result & ref, const std::vector<float> & E,
                          const std::vector<float> & C, int64_t n_c, int dim, const std::string & what) {
    const double tol    = tol_for(dim);
    int64_t      n_diff = 0;
    for (size_t e = 0; e < r.u.size(); ++e) {
        EXPECT_NEAR(r.u[e], ref.u[e], tol) << what << " e=" << e;
        const int32_t c = r.arg[e];
        if (c < 0 || c >= n_c) {
            ADD_FAILURE() << what << " e=" << e << ": arg " << c << " out of [0, " << n_c << ")";
            continue;
        }
        const double s = lc::max_dot_ref_dot(E.data() + e * dim, C.data() + int64_t(c) * dim, dim);
        EXPECT_GE(s, double(ref.u[e]) - tol) << what << " e=" << e << " arg=" << c << " ref arg=" << ref.arg[e];
        EXPECT_NEAR(s, r.u[e], tol) << what << " e=" << e;
        n_diff += c != ref.arg[e];
    }
    return n_diff;
}

TEST(MergeSim, RandomShapesEveryIsaAndPool) {
    lc::thread_pool pool1(1), pool3(3);
    // (n_e, n_c): tails of the 16/32-lane panels and 6/12-row tiles, several chunks and C blocks (dim 256: a block
    // is 120-126 rows; dim 64: 504), more chunks than threads.
    const int64_t shapes[][2] = {{1, 1},   {1, 7},   {5, 2},     {17, 13},   {31, 64},   {32, 33},
                                 {33, 97}, {64, 64}, {100, 257}, {257, 300}, {451, 1100}};
    uint32_t      seed        = 1;
    for (int dim : {48, 64, 128, 256}) {
        for (const auto & s : shapes) {
            const int64_t            n_e = s[0], n_c = s[1];
            const std::vector<float> E   = unit_rows(n_e, dim, seed++);
            const std::vector<float> C   = unit_rows(n_c, dim, seed++);
            const result             ref = run_ref(E, n_e, C, n_c, dim);
            result                   first;
            bool                     have_first = false;
            for (lc::cpu_isa isa : isas()) {
                for (lc::thread_pool * pool : {&pool1, &pool3}) {
                    const std::string what =
                        std::string(lc::cpu_isa_name(isa)) + " threads=" + std::to_string(pool->n_threads()) +
                        " dim=" + std::to_string(dim) + " n_e=" + std::to_string(n_e) + " n_c=" + std::to_string(n_c);
                    const result  r      = run(isa, E, n_e, C, n_c, dim, *pool);
                    const int64_t n_diff = check_against_ref(r, ref, E, C, n_c, dim, what);
                    // Random unit vectors: the top two dots of a row are rarely within 1e-5 of each other.
                    EXPECT_LE(n_diff, std::max<int64_t>(1, n_e / 100)) << what;
                    // The same f32 FMA chain in every lane, tile, chunk and ISA: identical bits.
                    if (!have_first) {
                        first      = r;
                        have_first = true;
                    } else {
                        for (int64_t e = 0; e < n_e; ++e) {
                            EXPECT_EQ(r.u[e], first.u[e]) << what << " e=" << e;
                            EXPECT_EQ(r.arg[e], first.arg[e]) << what << " e=" << e;
                        }
                    }
                }
            }
        }
    }
}

TEST(MergeSim, EmptyC) {
    lc::thread_pool pool(3);
    for (lc::cpu_isa isa : isas()) {
        const std::vector<float> E = unit_rows(37, 64, 3), C;
        const result             r = run(isa, E, 37, C, 0, 64, pool);
        for (int64_t e = 0; e < 37; ++e) {
            EXPECT_EQ(r.u[e], -k_inf);
            EXPECT_EQ(r.arg[e], -1);
        }
        const result ref = run_ref(E, 37, C, 0, 64);
        EXPECT_EQ(ref.u[0], -k_inf);
        EXPECT_EQ(ref.arg[0], -1);
        run(isa, E, 0, C, 0, 64, pool); // n_e = 0: only the guards are checked
        run(isa, E, 0, E, 37, 64, pool);
    }
}

TEST(MergeSim, OneC) {
    lc::thread_pool pool(3);
    for (lc::cpu_isa isa : isas()) {
        for (int dim : {48, 128}) {
            const std::vector<float> E = unit_rows(70, dim, 5), C = unit_rows(1, dim, 6);
            const result             r = run(isa, E, 70, C, 1, dim, pool);
            for (int64_t e = 0; e < 70; ++e) {
                EXPECT_EQ(r.arg[e], 0);
                EXPECT_NEAR(r.u[e], lc::max_dot_ref_dot(E.data() + e * dim, C.data(), dim), tol_for(dim));
            }
        }
    }
}

// C rows repeat a few distinct vectors in a random order (so each maximum is reached by many c spread over tiles and
// blocks, dim 256: 3 blocks): the lowest c of the winning vector must win, as in the reference. E repeats rows too:
// equal E rows must give equal results wherever they sit in the panels and chunks.
TEST(MergeSim, TiesGoToLowestC) {
    lc::thread_pool pool1(1), pool3(3);
    for (int dim : {48, 64, 256}) {
        const int64_t            n_c = 400, n_e = 200, n_distinct = 7;
        const std::vector<float> D = unit_rows(n_distinct, dim, 11);
        std::mt19937             rng(12);
        std::vector<int>         which(n_c);
        std::vector<float>       C(size_t(n_c * dim));
        for (int64_t c = 0; c < n_c; ++c) {
            which[c] = int(rng() % n_distinct);
            std::copy(D.begin() + which[c] * dim, D.begin() + (which[c] + 1) * dim, C.begin() + c * dim);
        }
        std::vector<int64_t> first(n_distinct, -1);
        for (int64_t c = n_c - 1; c >= 0; --c) first[which[c]] = c;
        const std::vector<float> E0 = unit_rows(n_e / 4, dim, 13);
        std::vector<float>       E(size_t(n_e * dim));
        for (int64_t e = 0; e < n_e; ++e) // row e repeats row e % (n_e / 4): copies 50 rows apart
            std::copy(E0.begin() + e % (n_e / 4) * dim, E0.begin() + (e % (n_e / 4) + 1) * dim, E.begin() + e * dim);
        // One E row equal to a C vector (dot ~1), one zero row (all dots 0: c = 0 wins).
        std::copy(D.begin() + 3 * dim, D.begin() + 4 * dim, E.begin() + 7 * dim);
        std::fill(E.begin() + 9 * dim, E.begin() + 10 * dim, 0.0f);

        const result ref = run_ref(E, n_e, C, n_c, dim);
        for (lc::cpu_isa isa : isas()) {
            for (lc::thread_pool * pool : {&pool1, &pool3}) {
                const std::string what = std::string(lc::cpu_isa_name(isa)) +
                                         " threads=" + std::to_string(pool->n_threads()) +
                                         " dim=" + std::to_string(dim);
                const result r = run(isa, E, n_e, C, n_c, dim, *pool);
                for (int64_t e = 0; e < n_e; ++e) {
                    ASSERT_GE(r.arg[e], 0) << what;
                    EXPECT_EQ(r.arg[e], first[which[r.arg[e]]]) << what << " e=" << e << ": not the first copy";
                    // 7 random vectors: the best and second best dots are far apart, so the winner is exact.
                    EXPECT_EQ(r.arg[e], ref.arg[e]) << what << " e=" << e;
                    EXPECT_NEAR(r.u[e], ref.u[e], tol_for(dim)) << what << " e=" << e;
                    if (e >= n_e / 4 && e % (n_e / 4) != 7 && e % (n_e / 4) != 9) { // copies of unchanged rows
                        EXPECT_EQ(r.u[e], r.u[e % (n_e / 4)]) << what << " e=" << e;
                        EXPECT_EQ(r.arg[e], r.arg[e % (n_e / 4)]) << what << " e=" << e;
                    }
                }
                EXPECT_EQ(r.arg[7], first[3]) << what;
                EXPECT_NEAR(r.u[7], 1.0f, tol_for(dim)) << what;
                EXPECT_EQ(r.arg[9], 0) << what;
                EXPECT_EQ(r.u[9], 0.0f) << what;
            }
        }
        // All C rows equal: c = 0 for every E row.
        std::vector<float> C1(size_t(n_c * dim));
        for (int64_t c = 0; c < n_c; ++c) std::copy(D.begin(), D.begin() + dim, C1.begin() + c * dim);
        for (lc::cpu_isa isa : isas()) {
            const result r = run(isa, E, n_e, C1, n_c, dim, pool3);
            for (int64_t e = 0; e < n_e; ++e) EXPECT_EQ(r.arg[e], 0) << lc::cpu_isa_name(isa) << " e=" << e;
        }
    }
}

// Dots strictly increasing with c (every tile improves every lane: the slow epilogue everywhere) and strictly
// decreasing (the first row wins and no later tile improves).
TEST(MergeSim, MonotoneDots) {
    lc::thread_pool    pool(3);
    const int          dim = 64;
    const int64_t      n_c = 1000, n_e = 45;
    std::vector<float> E(size_t(n_e * dim), 0.0f), up(size_t(n_c * dim), 0.0f), down(up.size(), 0.0f);
    for (int64_t e = 0; e < n_e; ++e) E[e * dim + e % dim] = 1.0f;
    for (int64_t c = 0; c < n_c; ++c)
        for (int d = 0; d < dim; ++d) {
            up[c * dim + d]   = float(c + 1) / float(n_c);
            down[c * dim + d] = float(n_c - c) / float(n_c);
        }
    for (lc::cpu_isa isa : isas()) {
        const result ru = run(isa, E, n_e, up, n_c, dim, pool);
        const result rd = run(isa, E, n_e, down, n_c, dim, pool);
        for (int64_t e = 0; e < n_e; ++e) {
            EXPECT_EQ(ru.arg[e], n_c - 1) << lc::cpu_isa_name(isa);
            EXPECT_EQ(ru.u[e], 1.0f) << lc::cpu_isa_name(isa);
            EXPECT_EQ(rd.arg[e], 0) << lc::cpu_isa_name(isa);
            EXPECT_EQ(rd.u[e], 1.0f) << lc::cpu_isa_name(isa);
        }
    }
}

// A NaN row of C never wins; a NaN row of E gets -inf and -1, as in the reference.
TEST(MergeSim, NanRowsNeverWin) {
    lc::thread_pool    pool(1);
    const int          dim = 128;
    const int64_t      n_e = 20, n_c = 50;
    std::vector<float> E = unit_rows(n_e, dim, 21), C = unit_rows(n_c, dim, 22);
    std::fill(C.begin(), C.begin() + dim, std::numeric_limits<float>::quiet_NaN());                 // c = 0
    std::fill(C.begin() + 30 * dim, C.begin() + 31 * dim, std::numeric_limits<float>::quiet_NaN()); // c = 30
    std::fill(E.begin() + 4 * dim, E.begin() + 5 * dim, std::numeric_limits<float>::quiet_NaN());   // e = 4
    const result ref = run_ref(E, n_e, C, n_c, dim);
    EXPECT_EQ(ref.arg[4], -1);
    for (lc::cpu_isa isa : isas()) {
        const result r = run(isa, E, n_e, C, n_c, dim, pool);
        for (int64_t e = 0; e < n_e; ++e) {
            EXPECT_EQ(r.arg[e], ref.arg[e]) << lc::cpu_isa_name(isa) << " e=" << e;
            if (e == 4) {
                EXPECT_EQ(r.u[e], -k_inf);
            } else {
                EXPECT_NEAR(r.u[e], ref.u[e], tol_for(dim));
            }
        }
    }
}

TEST(MergeSim, DefaultIsaMatchesReference) {
    lc::thread_pool          pool(2);
    const int                dim = 128;
    const std::vector<float> E = unit_rows(300, dim, 31), C = unit_rows(500, dim, 32);
    std::vector<float>       u(300);
    std::vector<int32_t>     arg(300);
    lc::max_dot_argmax(E.data(), 300, C.data(), 500, dim, u.data(), arg.data(), pool);
    const result r{u, arg};
    EXPECT_LE(check_against_ref(r, run_ref(E, 300, C, 500, dim), E, C, 500, dim, "default"), 3);
}

TEST(MergeSim, GatherNormalized) {
    for (int dim : {48, 64, 130}) {
        const int64_t                   n = 9;
        std::vector<lc::fp16_t>         pool(size_t(3 * n * dim));
        std::mt19937                    rng(41);
        std::normal_distribution<float> dist(0.0f, 3.0f);
        for (lc::fp16_t & h : pool) h = lc::fp32_to_fp16(dist(rng));
        std::vector<const lc::fp16_t *> rows(n);
        for (int64_t i = 0; i < n; ++i) rows[i] = pool.data() + ((i * 5) % (3 * n)) * dim; // scattered, out of order
        std::fill(pool.begin() + 10 * dim, pool.begin() + 11 * dim, lc::fp16_t(0));        // row i = 2 is zero
        std::vector<float> out(size_t(n * dim + 1), 7.0f);
        lc::gather_normalized(rows.data(), n, dim, out.data());
        EXPECT_EQ(out[n * dim], 7.0f) << "write past the end";
        for (int64_t i = 0; i < n; ++i) {
            double ss = 0;
            for (int d = 0; d < dim; ++d) ss += double(lc::fp16_to_fp32(rows[i][d])) * lc::fp16_to_fp32(rows[i][d]);
            for (int d = 0; d < dim; ++d) {
                const double want = ss == 0 ? 0.0 : lc::fp16_to_fp32(rows[i][d]) / std::sqrt(ss);
                EXPECT_NEAR(out[i * dim + d], want, 1e-6 * std::fabs(want) + 1e-9) << "dim=" << dim << " i=" << i;
            }
        }
        for (int d = 0; d < dim; ++d) EXPECT_EQ(out[2 * dim + d], 0.0f);
    }
}

} // namespace
