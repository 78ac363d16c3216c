// Key PCA for Loki (see loki-pca.h): shifted covariance sums in double and a cyclic Jacobi eigensolver.
#include "calibrate/loki-pca.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <thread>

#include "backend/cpu/ops.h"
#include "core/thread-pool.h"
#include "model/model.h"
#include "runtime/context.h"

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
            for (int i = 0; i < D; ++i) buf_[size_t(k * D + i)] = double(x[(r0 + k) * stride + i]) - shift_[size_t(i)];
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
            const double c         = sxx_[size_t(i) * D + j] * inv - mi * (sum_[size_t(j)] * inv);
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
                const double t     = (theta >= 0 ? 1.0 : -1.0) / (std::fabs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
                for (int k = 0; k < n; ++k) { // A J: columns p and q
                    const double akp = at(k, p), akq = at(k, q);
                    at(k, p) = c * akp - s * akq;
                    at(k, q) = s * akp + c * akq;
                }
                double * rp = &at(p, 0);
                double * rq = &at(q, 0);
                for (int k = 0; k < n; ++k) { // J^T (A J): rows p and q
                    const double apk = rp[k], aqk = rq[k];
                    rp[k] = c * apk - s * aqk;
                    rq[k] = s * apk + c * aqk;
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

result<sidecar_loki> loki_calibrate(const model & m, const std::vector<std::vector<int32_t>> & seqs,
                                    const loki_calib_params & p, const loki_progress_fn & progress) {
    const model_hparams & hp = m.hparams();
    const int             D = hp.head_dim, n_kv_head = hp.n_head_kv;
    int64_t               n_max = 0, n_total = 0;
    for (const auto & s : seqs) {
        if (s.empty()) return error(status_code::INVALID_ARGUMENT, "calibrate loki: empty calibration sequence");
        n_max = std::max<int64_t>(n_max, int64_t(s.size()));
        n_total += int64_t(s.size());
    }
    if (seqs.empty()) return error(status_code::INVALID_ARGUMENT, "calibrate loki: no calibration sequences");
    const int      n_threads = p.n_threads > 0 ? p.n_threads : int(std::max(1u, std::thread::hardware_concurrency()));
    context_params cp;
    cp.n_ctx     = n_max;
    cp.n_threads = n_threads;
    LC_ASSIGN_OR_RETURN(auto ctx, context::create(m, cp));

    // One accumulator per (fitted layer, KV head); the work items of the pool.
    std::vector<int> layers;
    for (int il = 0; il < hp.n_layer; ++il)
        if (!m.layers()[size_t(il)].swa) layers.push_back(il);
    std::vector<pca_accumulator> acc(layers.size() * size_t(n_kv_head), pca_accumulator(D));
    thread_pool                  pool(n_threads);
    int64_t                      done = 0;
    for (const auto & s : seqs) {
        ctx->clear();
        LC_RETURN_IF_ERROR(ctx->decode(s));
        const int64_t n_items = int64_t(acc.size());
        pool.run([&](int ith, int nth) {
            std::vector<float> rows;
            for (int64_t it = ith; it < n_items; it += nth) {
                const int     il = layers[size_t(it / n_kv_head)];
                const int     g  = int(it % n_kv_head);
                const kv_view kv = ctx->kv().view(il, 0);
                for (int64_t t0 = 0; t0 < kv.n_kv; t0 += kv_page_tokens) {
                    const int64_t  n = std::min<int64_t>(kv_page_tokens, kv.n_kv - t0);
                    const fp16_t * k = kv.k_page(t0 / kv_page_tokens, g);
                    if (!p.pre_rope) {
                        acc[size_t(it)].add(k, n, D);
                        continue;
                    }
                    // Undo RoPE: rotating by -t inverts the rotation by t the forward pass applied.
                    rows.resize(size_t(n) * D);
                    for (size_t i = 0; i < rows.size(); ++i) rows[i] = fp16_to_fp32(k[i]);
                    std::vector<int64_t> pos(static_cast<size_t>(n));
                    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = -(t0 + i);
                    const float base = m.layers()[size_t(il)].swa ? hp.rope_freq_base_swa : hp.rope_freq_base;
                    cpu::rope(rows.data(), n, 1, D, hp.n_rot, pos.data(), base, hp.rope_mode);
                    acc[size_t(it)].add(rows.data(), n, D);
                }
            }
        });
        done += int64_t(s.size());
        if (progress) progress(done, n_total);
    }
    ctx->clear();

    sidecar_loki l;
    l.n_head_kv = n_kv_head;
    l.head_dim  = D;
    l.fitted.assign(size_t(hp.n_layer), 0);
    l.basis.assign(size_t(hp.n_layer) * n_kv_head * D * D, 0.0f);
    l.curve.assign(size_t(hp.n_layer) * n_kv_head * D, 0.0f);
    l.pre_rope     = p.pre_rope;
    l.calib_n_keys = n_total;
    std::vector<pca_fit> fits(acc.size());
    pool.run([&](int ith, int nth) {
        for (size_t it = size_t(ith); it < acc.size(); it += size_t(nth)) fits[it] = pca_compute(acc[it]);
    });
    for (size_t it = 0; it < acc.size(); ++it) {
        const int il         = layers[it / size_t(n_kv_head)];
        const int g          = int(it % size_t(n_kv_head));
        l.fitted[size_t(il)] = 1;
        std::copy(fits[it].basis.begin(), fits[it].basis.end(),
                  l.basis.begin() + ptrdiff_t((size_t(il) * n_kv_head + g) * D * D));
        std::copy(fits[it].curve.begin(), fits[it].curve.end(),
                  l.curve.begin() + ptrdiff_t((size_t(il) * n_kv_head + g) * D));
    }
    return l;
}

} // namespace lc
