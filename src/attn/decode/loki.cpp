// Loki sparse decode (see loki.h): the low-rank key store kept in step with the cache, the AVX2 score pass and
// the per-head top-k.
#include "attn/decode/loki.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "core/log.h"
#include "model/model.h"

namespace lc {

namespace {

constexpr int     k_tile       = 8;  // tokens per tile of the low-rank store
constexpr int64_t k_chunk_tile = 32; // tiles per score work unit (32 x d_pad x 16 bytes: 8 KB at d = 16)

// Tokens per work item of the take-in and the score pass: enough to amortise the pool, a multiple of the tile.
constexpr int64_t k_item_tokens = 1024;

class loki_decode : public decode_method {
  public:
    loki_decode(const sidecar_loki & l, std::vector<int> ranks, const attn_config & c)
        : n_head_kv_(l.n_head_kv), dim_(l.head_dim), budget_(c.decode_keys),
          n_sink_(c.decode_opts.sink()), n_local_(c.decode_opts.local()) {
        kv_select_ = c.decode_opts.kv_select;
        layers_.resize(ranks.size());
        for (size_t il = 0; il < ranks.size(); ++il) {
            layer_state & st = layers_[il];
            st.d             = ranks[il];
            if (st.d == 0) continue;
            st.d_pad = (st.d + k_tile - 1) / k_tile * k_tile;
            st.proj.assign(size_t(n_head_kv_) * dim_ * st.d_pad, 0.0f);
            for (int g = 0; g < n_head_kv_; ++g) {
                const float * P = l.basis_at(int(il), g);
                for (int i = 0; i < dim_; ++i)
                    for (int j = 0; j < st.d; ++j)
                        st.proj[(size_t(g) * dim_ + i) * st.d_pad + j] = P[size_t(i) * dim_ + j];
            }
            st.keys.resize(size_t(n_head_kv_));
        }
    }

    const char * name() const override { return "loki"; }

    bool sparse_layer(int il) const override { return il >= 0 && il < int(layers_.size()) && layers_[il].d > 0; }

    void plan(int il, const float * q, int n_head, const kv_view & kv, float scale, decode_plan & plan,
              thread_pool & pool, int64_t * select_bytes) override;

    void prepare(int il, const kv_view & kv, thread_pool & pool) override {
        if (sparse_layer(il)) take_in(il, kv, pool);
    }

    void truncate(int64_t n) override {
        for (layer_state & st : layers_) st.n = std::min(st.n, std::max<int64_t>(n, 0));
    }

    void invalidate(int il) override {
        if (il >= 0 && il < int(layers_.size())) layers_[size_t(il)].n = 0;
    }

  private:
    struct layer_state {
        int                              d     = 0; // rank of the approximate scores (0: no basis)
        int                              d_pad = 0; // d rounded up to the tile width
        std::vector<float>               proj;      // [n_head_kv][head_dim][d_pad] f32: P[:, :d], zero-padded
        std::vector<std::vector<fp16_t>> keys;      // [n_head_kv] tiles [n_tile][d_pad][8] fp16
        int64_t                          n = 0;     // tokens taken in
    };

    void take_in(int il, const kv_view & kv, thread_pool & pool);

    int                      n_head_kv_;
    int                      dim_;
    decode_budget            budget_;
    int                      n_sink_, n_local_;
    std::vector<layer_state> layers_;
    std::vector<float>       qd_;     // [n_head][d_pad] rotated queries
    std::vector<float>       scores_; // [n_head][n_kv]
    std::vector<float>       group_;  // [n_head / G][n_kv] KV-head-level selection scores
    bool                     kv_select_ = false;
    std::vector<key_range>   dense_;
};

void loki_decode::take_in(int il, const kv_view & kv, thread_pool & pool) {
    layer_state & st = layers_[size_t(il)];
    if (kv.n_kv < st.n) st.n = kv.n_kv; // the cache was cut without truncate(): its first n_kv rows still hold
    const int64_t n0 = st.n, n1 = kv.n_kv;
    if (n1 == n0) return;
    const int     dp      = st.d_pad;
    const int64_t n_tiles = (n1 + k_tile - 1) / k_tile;
    for (auto & v : st.keys) v.resize(size_t(n_tiles) * dp * k_tile);
    // Items: (KV head, token range aligned to tiles).
    const int64_t t_first  = n0 / k_tile * k_tile;
    const int64_t n_chunks = (n1 - t_first + k_item_tokens - 1) / k_item_tokens;
    const int64_t n_items  = n_chunks * n_head_kv_;
    pool.run([&](int ith, int nth) {
        std::vector<float> x(static_cast<size_t>(dim_)), y(static_cast<size_t>(dp));
        for (int64_t it = ith; it < n_items; it += nth) {
            const int     g  = int(it % n_head_kv_);
            const int64_t c  = it / n_head_kv_;
            const int64_t ta = std::max(n0, t_first + c * k_item_tokens);
            const int64_t tb = std::min(n1, t_first + (c + 1) * k_item_tokens);
            const float * P  = st.proj.data() + size_t(g) * dim_ * dp;
            fp16_t *      K  = st.keys[size_t(g)].data();
            for (int64_t t = ta; t < tb; ++t) {
                const fp16_t * k = kv.k_row(t, g);
                for (int i = 0; i < dim_; ++i) x[size_t(i)] = fp16_to_fp32(k[i]);
                std::fill(y.begin(), y.end(), 0.0f);
                for (int i = 0; i < dim_; ++i) {
                    const float   xi = x[size_t(i)];
                    const float * pr = P + size_t(i) * dp;
                    for (int j = 0; j < dp; ++j) y[size_t(j)] += xi * pr[j];
                }
                fp16_t * tile = K + size_t(t / k_tile) * dp * k_tile + size_t(t % k_tile);
                for (int j = 0; j < dp; ++j) tile[size_t(j) * k_tile] = fp32_to_fp16(y[size_t(j)]);
            }
        }
    });
    st.n = n1;
}

void loki_decode::plan(int il, const float * q, int n_head, const kv_view & kv, float scale, decode_plan & plan,
                       thread_pool & pool, int64_t * select_bytes) {
    (void)scale; // a positive factor on every score does not change the top k
    LC_ASSERT(sparse_layer(il), "loki: layer %d has no basis", il);
    take_in(il, kv, pool);
    layer_state & st = layers_[size_t(il)];
    const int64_t T  = kv.n_kv;
    const int     dp = st.d_pad;
    const int     G  = n_head / n_head_kv_;

    const int GS = kv_select_ ? G : 1; // query heads per selection
    plan.n_head  = n_head;
    plan.group   = GS;
    plan.heads.resize(size_t(n_head / GS));
    decode_dense_part(T, n_sink_, n_local_, dense_);
    int64_t n_dense = 0;
    for (const key_range & r : dense_) n_dense += r.end - r.begin;
    const int64_t k = budget_.keys(T);
    for (decode_head_plan & h : plan.heads) {
        h.dense = dense_;
        h.idx.clear();
        h.logw.clear();
    }
    if (k <= 0 || n_dense >= T) return;
    if (k >= T - n_dense) { // everything outside the dense part is selected: no scores needed
        for (decode_head_plan & h : plan.heads) decode_topk(nullptr, T, k, dense_, h.idx);
        return;
    }

    // q' = q P_g[:, :d] per query head.
    qd_.assign(size_t(n_head) * dp, 0.0f);
    for (int h = 0; h < n_head; ++h) {
        const int     g = h / G;
        const float * P = st.proj.data() + size_t(g) * dim_ * dp;
        const float * x = q + size_t(h) * dim_;
        float *       y = qd_.data() + size_t(h) * dp;
        for (int i = 0; i < dim_; ++i)
            for (int j = 0; j < dp; ++j) y[j] += x[i] * P[size_t(i) * dp + j];
    }

    // Score pass: items (KV head, token range); each scores the G query heads of its KV head.
    scores_.resize(size_t(n_head) * T);
    const int64_t n_chunks = (T + k_item_tokens - 1) / k_item_tokens;
    const int64_t n_items  = n_chunks * n_head_kv_;
    pool.run([&](int ith, int nth) {
        for (int64_t it = ith; it < n_items; it += nth) {
            const int     g  = int(it % n_head_kv_);
            const int64_t c  = it / n_head_kv_;
            const int64_t t0 = c * k_item_tokens, t1 = std::min(T, t0 + k_item_tokens);
            loki_scores(st.keys[size_t(g)].data(), dp, t0, t1, qd_.data() + size_t(g) * G * dp, G,
                        scores_.data() + size_t(g) * G * T, T);
        }
    });
    if (GS > 1) decode_group_scores(scores_.data(), n_head, GS, T, dense_, group_, &pool);
    decode_topk_lists(GS > 1 ? group_.data() : scores_.data(), n_head / GS, T, k, dense_, plan, pool);
    if (select_bytes)
        *select_bytes +=
            int64_t(n_head_kv_) * (T * dp * int64_t(sizeof(fp16_t)) + int64_t(dim_) * dp * int64_t(sizeof(float)));
}

} // namespace

void loki_scores_ref(const fp16_t * tiles, int d_pad, int64_t t0, int64_t t1, const float * qd, int n_q, float * out,
                     int64_t out_stride) {
    for (int h = 0; h < n_q; ++h)
        for (int64_t t = t0; t < t1; ++t) {
            const fp16_t * tile = tiles + size_t(t / k_tile) * d_pad * k_tile + size_t(t % k_tile);
            double         s    = 0.0;
            for (int j = 0; j < d_pad; ++j)
                s += double(qd[size_t(h) * d_pad + j]) * double(fp16_to_fp32(tile[size_t(j) * k_tile]));
            out[size_t(h) * out_stride + t] = float(s);
        }
}

namespace {

// Scores of NH query heads (rows of qd) over the tokens of tiles [b0, b1), all 8 of each written (the caller cuts
// a partial last tile): out[h * out_stride + (b - b0) * 8 + i]. Two tiles per step so that each converted fp16
// vector feeds 2 x NH FMA chains (the heads of one KV head share every load and conversion).
template <int NH>
void loki_scores_full(const fp16_t * tiles, int d_pad, int64_t b0, int64_t b1, const float * qd, float * out,
                      int64_t out_stride) {
    const size_t tile_elems = size_t(d_pad) * k_tile;
    int64_t      b          = b0;
    for (; b + 2 <= b1; b += 2) {
        const fp16_t * p = tiles + size_t(b) * tile_elems;
        __m256         a0[NH], a1[NH];
        for (int h = 0; h < NH; ++h) a0[h] = a1[h] = _mm256_setzero_ps();
        for (int j = 0; j < d_pad; ++j) {
            const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + size_t(j) * k_tile)));
            const __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + tile_elems + size_t(j) * k_tile)));
            for (int h = 0; h < NH; ++h) {
                const __m256 qj = _mm256_broadcast_ss(qd + size_t(h) * d_pad + j);
                a0[h]           = _mm256_fmadd_ps(x0, qj, a0[h]);
                a1[h]           = _mm256_fmadd_ps(x1, qj, a1[h]);
            }
        }
        for (int h = 0; h < NH; ++h) {
            _mm256_storeu_ps(out + size_t(h) * out_stride + (b - b0) * k_tile, a0[h]);
            _mm256_storeu_ps(out + size_t(h) * out_stride + (b - b0) * k_tile + k_tile, a1[h]);
        }
    }
    for (; b < b1; ++b) {
        const fp16_t * p = tiles + size_t(b) * tile_elems;
        __m256         a0[NH];
        for (int h = 0; h < NH; ++h) a0[h] = _mm256_setzero_ps();
        for (int j = 0; j < d_pad; ++j) {
            const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + size_t(j) * k_tile)));
            for (int h = 0; h < NH; ++h)
                a0[h] = _mm256_fmadd_ps(x0, _mm256_broadcast_ss(qd + size_t(h) * d_pad + j), a0[h]);
        }
        for (int h = 0; h < NH; ++h) _mm256_storeu_ps(out + size_t(h) * out_stride + (b - b0) * k_tile, a0[h]);
    }
}

} // namespace

void loki_scores(const fp16_t * tiles, int d_pad, int64_t t0, int64_t t1, const float * qd, int n_q, float * out,
                 int64_t out_stride) {
    if (t1 <= t0) return;
    LC_ASSERT(t0 % k_tile == 0, "loki: score ranges start on a tile (t0 = %lld)", (long long)t0);
    const int64_t b0 = t0 / k_tile, b_full = t1 / k_tile; // full tiles [b0, b_full), then maybe a partial one
    auto          run = [&](int nh, int64_t c0, int64_t c1, const float * q, float * o, int64_t stride) {
        switch (nh) {
        case 1:
            loki_scores_full<1>(tiles, d_pad, c0, c1, q, o, stride);
            break;
        case 2:
            loki_scores_full<2>(tiles, d_pad, c0, c1, q, o, stride);
            break;
        case 3:
            loki_scores_full<3>(tiles, d_pad, c0, c1, q, o, stride);
            break;
        default:
            loki_scores_full<4>(tiles, d_pad, c0, c1, q, o, stride);
            break;
        }
    };
    for (int h0 = 0; h0 < n_q; h0 += 4) {
        const int     nh = std::min(4, n_q - h0);
        const float * q  = qd + size_t(h0) * d_pad;
        float *       o  = out + size_t(h0) * out_stride;
        for (int64_t c0 = b0; c0 < b_full; c0 += k_chunk_tile)
            run(nh, c0, std::min(b_full, c0 + k_chunk_tile), q, o + c0 * k_tile, out_stride);
        if (b_full * k_tile < t1) { // the partial last tile, through a buffer
            alignas(32) float tmp[4 * k_tile];
            run(nh, b_full, b_full + 1, q, tmp, k_tile);
            for (int h = 0; h < nh; ++h)
                for (int64_t t = b_full * k_tile; t < t1; ++t)
                    o[size_t(h) * out_stride + t] = tmp[h * k_tile + (t - b_full * k_tile)];
        }
    }
}

result<std::vector<int>> loki_ranks(const sidecar_loki & l, int n_layer, const decode_params & p) {
    const int D = l.head_dim;
    if (p.loki_var > 1.0 || p.loki_var < 0.0 || !std::isfinite(p.loki_var))
        return error(status_code::INVALID_ARGUMENT, "loki: the explained-variance target must be in (0, 1], not %g",
                     p.loki_var);
    int d_fixed = 0;
    if (p.loki_var == 0.0) {
        if (!(p.loki_d > 0.0) || !std::isfinite(p.loki_d))
            return error(status_code::INVALID_ARGUMENT, "loki: the rank must be positive, not %g", p.loki_d);
        d_fixed = p.loki_d < 1.0 ? std::max(1, int(std::lround(p.loki_d * D))) : int(std::lround(p.loki_d));
        if (d_fixed > D)
            return error(status_code::INVALID_ARGUMENT, "loki: rank %d exceeds the head dimension %d", d_fixed, D);
    }
    std::vector<int> r(size_t(n_layer), 0);
    for (int il = 0; il < n_layer; ++il) {
        if (!l.fitted[size_t(il)]) continue;
        if (d_fixed > 0) {
            r[size_t(il)] = d_fixed;
            continue;
        }
        std::vector<float> mean(size_t(D), 0.0f);
        for (int g = 0; g < l.n_head_kv; ++g)
            for (int j = 0; j < D; ++j) mean[size_t(j)] += l.curve_at(il, g)[j] / float(l.n_head_kv);
        int d = D;
        for (int j = 0; j < D; ++j)
            if (double(mean[size_t(j)]) >= p.loki_var - 1e-6) {
                d = j + 1;
                break;
            }
        r[size_t(il)] = d;
    }
    return r;
}

result<std::unique_ptr<decode_method>> loki_decode_create(const sidecar_loki & l, int n_layer, const attn_config & c) {
    if (l.fitted.size() != size_t(n_layer))
        return error(status_code::INVALID_ARGUMENT, "loki: the bases cover %zu layers, not %d", l.fitted.size(),
                     n_layer);
    if (l.pre_rope)
        return error(status_code::INVALID_ARGUMENT,
                     "loki: the bases were fitted on pre-RoPE keys (calibrate loki --pre-rope), which decode cannot "
                     "score; recalibrate without --pre-rope");
    LC_ASSIGN_OR_RETURN(std::vector<int> ranks, loki_ranks(l, n_layer, c.decode_opts));
    return std::unique_ptr<decode_method>(new loki_decode(l, std::move(ranks), c));
}

result<std::unique_ptr<decode_method>> loki_decode_create(const model & m, const attn_config & c) {
    const model_hparams & hp   = m.hparams();
    std::string           path = c.sidecar;
    if (path == "auto") path = sidecar_path_for(m.file().path());
    const char * how = "run `longctx calibrate loki -m MODEL` to fit the key bases";
    if (path == "none")
        return error(status_code::NOT_FOUND, "--decode loki needs a calibration sidecar (--sidecar none); %s", how);
    if (!std::ifstream(path).good())
        return error(status_code::NOT_FOUND, "--decode loki: no calibration sidecar %s; %s", path.c_str(), how);
    LC_ASSIGN_OR_RETURN(sidecar sc, sidecar_read(path, hp.n_layer, hp.n_head));
    if (!sc.loki)
        return error(status_code::NOT_FOUND, "--decode loki: sidecar %s has no Loki section; %s", path.c_str(), how);
    LC_RETURN_IF_ERROR(sidecar_loki_check(*sc.loki, path, hp.n_layer, hp.n_head_kv, hp.head_dim));
    for (int il = 0; il < hp.n_layer; ++il)
        if (!m.layers()[size_t(il)].swa && !sc.loki->fitted[size_t(il)])
            return error(status_code::NOT_FOUND,
                         "--decode loki: sidecar %s has no basis for layer %d; recalibrate (longctx calibrate loki)",
                         path.c_str(), il);
    LC_ASSIGN_OR_RETURN(auto method, loki_decode_create(*sc.loki, hp.n_layer, c));
    std::vector<int> ranks = *loki_ranks(*sc.loki, hp.n_layer, c.decode_opts);
    std::string      rs;
    for (int il = 0; il < hp.n_layer; ++il)
        if (ranks[size_t(il)] > 0) {
            if (!rs.empty()) rs += ' ';
            rs += std::to_string(ranks[size_t(il)]);
        }
    LC_LOG_I("loki: bases from %s (%lld keys per head, %s); ranks per layer: %s", path.c_str(),
             (long long)sc.loki->calib_n_keys, sc.loki->calib_source.c_str(), rs.c_str());
    return method;
}

} // namespace lc
