// Loki's key PCA: the Jacobi eigensolver on matrices with eigenpairs known by hand and on a random 256 x 256
// (A v = lambda v, orthonormal vectors); the covariance of keys drawn with a known covariance (known principal axes
// and variances, a large mean that the shifted sums must cancel); the fp16 input path; the explained-variance curve.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "calibrate/loki-pca.h"

namespace {

TEST(loki_pca, eigen_of_hand_checked_matrices) {
    // [[2, 1], [1, 2]]: eigenvalues 3 and 1, eigenvectors (1, 1) / sqrt 2 and (1, -1) / sqrt 2.
    std::vector<double> ev, V;
    const double        a[4] = {2, 1, 1, 2};
    lc::sym_eigen(a, 2, ev, V);
    EXPECT_NEAR(ev[0], 3.0, 1e-12);
    EXPECT_NEAR(ev[1], 1.0, 1e-12);
    EXPECT_NEAR(std::fabs(V[0]), std::sqrt(0.5), 1e-12);
    EXPECT_NEAR(V[0] * V[2], 0.5, 1e-12);  // column 0 = +-(1, 1) / sqrt 2
    EXPECT_NEAR(V[1] * V[3], -0.5, 1e-12); // column 1 = +-(1, -1) / sqrt 2
    // diag(1, 5, 3) is already diagonal: sorted 5, 3, 1 with unit vectors e1, e2, e0.
    const double d[9] = {1, 0, 0, 0, 5, 0, 0, 0, 3};
    lc::sym_eigen(d, 3, ev, V);
    EXPECT_EQ(ev, (std::vector<double>{5, 3, 1}));
    EXPECT_EQ(std::fabs(V[1 * 3 + 0]), 1.0);
    EXPECT_EQ(std::fabs(V[2 * 3 + 1]), 1.0);
    EXPECT_EQ(std::fabs(V[0 * 3 + 2]), 1.0);
}

TEST(loki_pca, eigen_of_random_256_is_orthonormal_and_exact) {
    const int                        n = 256;
    std::mt19937                     rng(5);
    std::normal_distribution<double> nd;
    std::vector<double>              a(size_t(n) * n);
    for (int i = 0; i < n; ++i)
        for (int j = i; j < n; ++j) a[size_t(i) * n + j] = a[size_t(j) * n + i] = nd(rng);
    std::vector<double> ev, V;
    lc::sym_eigen(a.data(), n, ev, V);
    double max_res = 0, max_orth = 0;
    for (int j = 0; j < n; ++j) {
        if (j > 0) EXPECT_GE(ev[size_t(j - 1)], ev[size_t(j)]);
        for (int i = 0; i < n; ++i) {
            double av = 0;
            for (int k = 0; k < n; ++k) av += a[size_t(i) * n + k] * V[size_t(k) * n + j];
            max_res = std::max(max_res, std::fabs(av - ev[size_t(j)] * V[size_t(i) * n + j]));
        }
        for (int p = 0; p <= j; ++p) {
            double dot = 0;
            for (int k = 0; k < n; ++k) dot += V[size_t(k) * n + j] * V[size_t(k) * n + p];
            max_orth = std::max(max_orth, std::fabs(dot - (p == j ? 1.0 : 0.0)));
        }
    }
    EXPECT_LT(max_res, 1e-9);
    EXPECT_LT(max_orth, 1e-12);
}

// Keys x = mu + R diag(sigma) z with z ~ N(0, I): covariance R diag(sigma^2) R^T, principal axes the columns of R.
// R rotates (e0, e1) by 30 degrees and (e2, e3) by 45 degrees; sigma = (3, 0.5, 2, 1): variances 9, 4, 1, 0.25
// along R e0, R e2, R e3, R e1.
TEST(loki_pca, recovers_known_axes_and_variances) {
    const int    D   = 4;
    const double c30 = std::cos(M_PI / 6), s30 = std::sin(M_PI / 6), c45 = std::sqrt(0.5);
    const double R[4][4]  = {{c30, -s30, 0, 0}, {s30, c30, 0, 0}, {0, 0, c45, -c45}, {0, 0, c45, c45}};
    const double sigma[4] = {3, 0.5, 2, 1};
    const double mu[4]    = {1000, -500, 250, 3};
    std::mt19937 rng(7);
    std::normal_distribution<double> nd;
    const int64_t                    n = 200000;
    std::vector<float>               x(size_t(n) * D);
    for (int64_t t = 0; t < n; ++t) {
        double z[4];
        for (double & v : z) v = nd(rng);
        for (int i = 0; i < D; ++i) {
            double s = mu[i];
            for (int j = 0; j < D; ++j) s += R[i][j] * sigma[j] * z[j];
            x[size_t(t * D + i)] = float(s);
        }
    }
    lc::pca_accumulator acc(D);
    acc.add(x.data(), n / 2, D); // two calls: the shift comes from the first
    acc.add(x.data() + n / 2 * D, n - n / 2, D);
    ASSERT_EQ(acc.count(), n);
    std::vector<double> mean;
    acc.mean(mean);
    for (int i = 0; i < D; ++i) EXPECT_NEAR(mean[size_t(i)], mu[i], 0.02);

    const lc::pca_fit f = lc::pca_compute(acc);
    // float keys near 1000 carry ~6e-5 rounding: negligible next to the sampling error (~0.3% at n = 2e5).
    const double var[4]  = {9, 4, 1, 0.25};
    const int    axis[4] = {0, 2, 3, 1};
    for (int j = 0; j < D; ++j) {
        EXPECT_NEAR(f.variance[size_t(j)], var[j], 0.02 * var[j]) << j;
        double dot = 0;
        for (int i = 0; i < D; ++i) dot += double(f.basis[size_t(i) * D + j]) * R[i][axis[j]];
        EXPECT_GT(std::fabs(dot), 0.999) << j;
    }
    // Orthonormal columns.
    for (int j = 0; j < D; ++j)
        for (int p = 0; p < D; ++p) {
            double dot = 0;
            for (int i = 0; i < D; ++i) dot += double(f.basis[size_t(i) * D + j]) * f.basis[size_t(i) * D + p];
            EXPECT_NEAR(dot, p == j ? 1.0 : 0.0, 1e-6);
        }
    // Curve: 9 / 14.25, 13 / 14.25, 14 / 14.25, 1.
    EXPECT_NEAR(f.curve[0], 9.0 / 14.25, 0.01);
    EXPECT_NEAR(f.curve[1], 13.0 / 14.25, 0.01);
    EXPECT_NEAR(f.curve[2], 14.0 / 14.25, 0.005);
    EXPECT_EQ(f.curve[3], 1.0f);
    EXPECT_EQ(lc::pca_rank_for(f.curve, 0.9), 2);
    EXPECT_EQ(lc::pca_rank_for(f.curve, 0.5), 1);
    EXPECT_EQ(lc::pca_rank_for(f.curve, 1.0), 4);
}

TEST(loki_pca, fp16_rows_match_float_rows) {
    const int                       D = 8;
    std::mt19937                    rng(3);
    std::normal_distribution<float> nd;
    std::vector<float>              xf(1000 * D);
    std::vector<lc::fp16_t>         xh(xf.size());
    for (size_t i = 0; i < xf.size(); ++i) {
        xh[i] = lc::fp32_to_fp16(nd(rng) + 4.0f);
        xf[i] = lc::fp16_to_fp32(xh[i]);
    }
    lc::pca_accumulator a(D), b(D);
    a.add(xf.data(), 1000, D);
    b.add(xh.data(), 500, D);
    b.add(xh.data() + 500 * D, 500, D);
    std::vector<double> ca, cb;
    a.covariance(ca);
    b.covariance(cb);
    for (size_t i = 0; i < ca.size(); ++i) EXPECT_NEAR(ca[i], cb[i], 1e-12);
    // Strided rows: every other row of a [2000][D] array.
    std::vector<float> wide(2000 * D, 1e6f);
    for (int t = 0; t < 1000; ++t) std::copy(xf.begin() + t * D, xf.begin() + (t + 1) * D, wide.begin() + 2 * t * D);
    lc::pca_accumulator c(D);
    c.add(wide.data(), 1000, 2 * D);
    std::vector<double> cc;
    c.covariance(cc);
    for (size_t i = 0; i < ca.size(); ++i) EXPECT_NEAR(ca[i], cc[i], 1e-12);
}

} // namespace
