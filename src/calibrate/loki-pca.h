// Offline PCA of key vectors for Loki (METHODS.md sec. 3.1): per (layer, KV head) the centred covariance of the
// keys seen during calibration, accumulated in double, and its symmetric eigendecomposition (cyclic Jacobi),
// giving an orthonormal basis P [D][D] whose columns are sorted by explained variance, and the variance curve.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "calibrate/sidecar.h"
#include "core/fp16.h"
#include "longctx/status.h"

namespace lc {

class model;

// Streaming covariance of D-dimensional vectors. To keep the centred covariance accurate when the mean is large
// next to the spread (keys often have a large mean along a few dims), sums are taken of x - c where the shift c
// is the first vector added: cov = S / n - m m^T with m = (sum of x - c) / n.
// Thread-safety: none; use one accumulator per thread or per (layer, head).
class pca_accumulator {
  public:
    explicit pca_accumulator(int dim = 0);

    // Adds n rows of dim values; row i starts at x + i * stride.
    void add(const float * x, int64_t n, int64_t stride);
    void add(const fp16_t * x, int64_t n, int64_t stride);

    int     dim() const { return dim_; }
    int64_t count() const { return n_; }
    // mean [dim]; cov [dim][dim] row-major, symmetric (population covariance, divided by n).
    // REQUIRES: count() > 0.
    void mean(std::vector<double> & out) const;
    void covariance(std::vector<double> & out) const;

  private:
    void add_block(const double * xs, int64_t n); // xs: [n][dim], already shifted

    int                 dim_ = 0;
    int64_t             n_   = 0;
    std::vector<double> shift_; // [dim]
    std::vector<double> sum_;   // [dim] sum of x - shift
    std::vector<double> sxx_;   // [dim][dim] sum of (x - shift)(x - shift)^T; upper triangle kept, mirrored on read
    std::vector<double> buf_;   // shifted rows of the block being added
};

// Eigendecomposition of a symmetric n x n matrix a (row-major; only read) by the cyclic Jacobi method:
// eigenvalues in descending order into evals [n]; evecs [n][n] row-major with eigenvector j in column j
// (evecs[i * n + j]), orthonormal. Sweeps until the off-diagonal mass is below 1e-14 of the total (at most 100
// sweeps; n = 256 takes about ten).
void sym_eigen(const double * a, int n, std::vector<double> & evals, std::vector<double> & evecs);

struct pca_fit {
    int                 dim = 0;
    int64_t             n   = 0;  // vectors the fit saw
    std::vector<float>  basis;    // [dim][dim] row-major: component j is column j (basis[i * dim + j]), orthonormal
    std::vector<double> variance; // [dim] variance along each component, descending
    std::vector<float>  curve;    // [dim] curve[r] = fraction of the total variance in components 0..r (last = 1)
};

// PCA of what the accumulator saw. REQUIRES: acc.count() > 0.
pca_fit pca_compute(const pca_accumulator & acc);

// The smallest rank r (1..dim) whose curve[r - 1] reaches frac; dim when none does.
int pca_rank_for(const std::vector<float> & curve, double frac);

struct loki_calib_params {
    // Fit on keys with RoPE undone (each cached key rotated back by its position) instead of the cached keys.
    bool pre_rope  = false;
    int  n_threads = 0; // 0: hardware concurrency
};

// Called after each calibration sequence: keys per head so far, keys per head in all.
using loki_progress_fn = std::function<void(int64_t done, int64_t total)>;

// `longctx calibrate loki`: runs a dense prefill of every sequence (token ids, each starting at position 0 in an
// empty cache), reads each layer's keys out of the KV cache and fits one PCA per (layer, KV head) over all of them.
// Sliding-window layers (which never decode sparsely) are not fitted. Fills every field of the result except
// calib_source and calib_sha256. Errors: an empty or too long sequence, model errors.
result<sidecar_loki> loki_calibrate(const model & m, const std::vector<std::vector<int32_t>> & seqs,
                                    const loki_calib_params & p, const loki_progress_fn & progress = {});

} // namespace lc
