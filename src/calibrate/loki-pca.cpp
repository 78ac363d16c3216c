// Key PCA for Loki (see loki-pca.h): shifted covariance sums in double and a cyclic Jacobi eigensolver.
#include "calibrate/loki-pca.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace lc {

namespace {
constexpr int64_t k_block_rows = 64; // rows per covariance update: the shifted block (64 x 256 doubles) stays in L2
} // namespace

pca_accumulator::pca_accumulator(int dim)
    : dim_(dim), shift_(size_t(dim), 0.0), sum_(size_t(dim), 0.0), sxx_(size_t(dim) * size_t(dim), 0.0) {}

void pca_accumulator::add_block(const double * xs, int64_t n) {
    const int D = dim_;
    for (int i = 0; i < D; ++i) {
        double * srow = sxx_.data() + size_t(i) * D;
        for (int64_t k = 0; k < n; ++k) {
            const double * xr = xs + k * D;
            const double   a  = xr[i];
            for (int j = i; j < D; ++j) srow[j] += a * xr[j];
        }
    }
    for (int64_t k = 0; k < n; ++k)
        for (int i = 0; i < D; ++i) sum_[size_t(i)] += xs[k * D + i];
    n_ += n;
}

void pca_accumulator::add(const float * x, int64_t n, int64_t stride) {
    const int D = dim_;
    buf_.resize(size_t(k_block_rows) * D);
    for (int64_t r0 = 0; r0 < n; r0 += k_block_rows) {
        const int64_t nb = std::min(k_block_rows, n - r0);
        if (n_ == 0 && r0 == 0)
            for (int i = 0; i < D; ++i) shift_[size_t(i)] = x[i];
        for (int64_t k = 0; k < nb; ++k)
            for (int i = 0; i < D; ++i)
                buf_[size_t(k * D + i)] = double(x[(r0 + k) * stride + i]) - shift_[size_t(i)];
        add_block(buf_.data(), nb);
    }
}

void pca_accumulator::add(const fp16_t * x, int64_t n, int64_t stride) {
    const int D = dim_;
    buf_.resize(size_t(k_block_rows) * D);
    for (int64_t r0 = 0; r0 < n; r0 += k_block_rows) {
        const int64_t nb = std::min(k_block_rows, n - r0);
        if (n_ == 0 && r0 == 0)
            for (int i = 0; i < D; ++i) shift_[size_t(i)] = fp16_to_fp32(x[i]);
        for (int64_t k = 0; k < nb; ++k)
            for (int i = 0; i < D; ++i)
                buf_[size_t(k * D + i)] = double(fp16_to_fp32(x[(r0 + k) * stride + i])) - shift_[size_t(i)];
        add_block(buf_.data(), nb);
    }
}

void pca_accumulator::mean(std::vector<double> & out) const {
    out.resize(size_t(dim_));
    for (int i = 0; i < dim_; ++i) out[size_t(i)] = shift_[size_t(i)] + sum_[size_t(i)] / double(n_);
}

void pca_accumulator::covariance(std::vector<double> & out) const {
    const int D = dim_;
    out.assign(size_t(D) * D, 0.0);
    const double inv = 1.0 / double(n_);
    for (int i = 0; i < D; ++i) {
        const double mi = sum_[size_t(i)] * inv;
        for (int j = i; j < D; ++j) {
            const double c           = sxx_[size_t(i) * D + j] * inv - mi * (sum_[size_t(j)] * inv);
            out[size_t(i) * D + j] = c;
            out[size_t(j) * D + i] = c;
        }
    }
}

void sym_eigen(const double * a_in, int n, std::vector<double> & evals, std::vector<double> & evecs) {
    std::vector<double> a(a_in, a_in + size_t(n) * n);
    std::vector<double> v(size_t(n) * n, 0.0);
    for (int i = 0; i < n; ++i) v[size_t(i) * n + i] = 1.0;
    auto at = [&](int i, int j) -> double & { return a[size_t(i) * n + j]; };

    double total = 0.0;
    for (double x : a) total += x * x;
    for (int sweep = 0; sweep < 100; ++sweep) {
        double off = 0.0;
        for (int p = 0; p < n; ++p)
            for (int q = p + 1; q < n; ++q) off += 2.0 * at(p, q) * at(p, q);
        if (off <= 1e-28 * total || off == 0.0) break;
        for (int p = 0; p < n - 1; ++p) {
            for (int q = p + 1; q < n; ++q) {
                const double apq = at(p, q);
                if (apq == 0.0) continue;
                // Rotation J (c at pp and qq, s at pq, -s at qp) with J^T A J zero at (p, q): tan(phi) = t is the
                // smaller root of t^2 + 2 theta t - 1 = 0, theta = (a_qq - a_pp) / (2 a_pq).
                const double theta = (at(q, q) - at(p, p)) / (2.0 * apq);
                const double t =
                    (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; ++k) { // A J: columns p and q
                    const double akp = at(k, p), akq = at(k, q);
                    at(k, p)         = c * akp - s * akq;
                    at(k, q)         = s * akp + c * akq;
                }
                double * rp = &at(p, 0);
                double * rq = &at(q, 0);
                for (int k = 0; k < n; ++k) { // J^T (A J): rows p and q
                    const double apk = rp[k], aqk = rq[k];
                    rp[k]            = c * apk - s * aqk;
                    rq[k]            = s * apk + c * aqk;
                }
                at(p, q) = 0.0;
                at(q, p) = 0.0;
                for (int k = 0; k < n; ++k) { // V J
                    double &     vkp = v[size_t(k) * n + p];
                    double &     vkq = v[size_t(k) * n + q];
                    const double x = vkp, y = vkq;
                    vkp = c * x - s * y;
                    vkq = s * x + c * y;
                }
            }
        }
    }
    std::vector<int> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return at(x, x) > at(y, y); });
    evals.resize(size_t(n));
    evecs.resize(size_t(n) * n);
    for (int j = 0; j < n; ++j) {
        const int src    = order[size_t(j)];
        evals[size_t(j)] = at(src, src);
        for (int i = 0; i < n; ++i) evecs[size_t(i) * n + j] = v[size_t(i) * n + src];
    }
}

pca_fit pca_compute(const pca_accumulator & acc) {
    pca_fit f;
    f.dim = acc.dim();
    f.n   = acc.count();
    std::vector<double> cov, evecs;
    acc.covariance(cov);
    sym_eigen(cov.data(), f.dim, f.variance, evecs);
    const int D = f.dim;
    f.basis.resize(size_t(D) * D);
    for (int j = 0; j < D; ++j) {
        // A covariance is positive semi-definite: rounding can leave tiny negative eigenvalues.
        f.variance[size_t(j)] = std::max(f.variance[size_t(j)], 0.0);
        // Sign convention (the eigenvector's sign is arbitrary): its largest-magnitude entry is positive.
        int im = 0;
        for (int i = 1; i < D; ++i)
            if (std::fabs(evecs[size_t(i) * D + j]) > std::fabs(evecs[size_t(im) * D + j])) im = i;
        const double sg = evecs[size_t(im) * D + j] < 0 ? -1.0 : 1.0;
        for (int i = 0; i < D; ++i) f.basis[size_t(i) * D + j] = float(sg * evecs[size_t(i) * D + j]);
    }
    double total = 0.0;
    for (double x : f.variance) total += x;
    f.curve.resize(size_t(D));
    double run = 0.0;
    for (int j = 0; j < D; ++j) {
        run += f.variance[size_t(j)];
        f.curve[size_t(j)] = total > 0 ? float(run / total) : float(j + 1) / float(D);
    }
    f.curve[size_t(D - 1)] = 1.0f;
    return f;
}

int pca_rank_for(const std::vector<float> & curve, double frac) {
    for (size_t r = 0; r < curve.size(); ++r)
        if (double(curve[r]) >= frac) return int(r) + 1;
    return int(curve.size());
}

} // namespace lc
