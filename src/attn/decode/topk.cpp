// Exact top-k decoding (see topk.h).
#include "attn/decode/topk.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "model/model.h"

namespace lc {

namespace {

// Dot product of n (multiple of 8) f32 with fp16.
inline float dot_f32_f16(const float * a, const fp16_t * b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int    i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i),
                               _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b + i))), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8),
                               _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b + i + 8))), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i),
                               _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(b + i))), acc0);
    acc0     = _mm256_add_ps(acc0, acc1);
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
    x        = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x        = _mm_add_ss(x, _mm_movehdup_ps(x));
    float s  = _mm_cvtss_f32(x);
    for (; i < n; ++i) s += a[i] * fp16_to_fp32(b[i]);
    return s;
}

class topk_decode final : public decode_method {
  public:
    topk_decode(const attn_config & c)
        : budget_(c.decode_keys), n_sink_(c.decode_opts.sink()), n_local_(c.decode_opts.local()),
          kv_select_(c.decode_opts.kv_select) {}
    const char * name() const override { return "topk"; }
    bool         sparse_layer(int) const override { return true; }
    void         truncate(int64_t) override {}
    void         invalidate(int) override {}

    void plan(int, const float * q, int n_head, const kv_view & kv, float scale, decode_plan & plan, thread_pool & pool,
              int64_t * select_bytes) override {
        const int64_t T = kv.n_kv;
        scores_.resize(size_t(n_head) * size_t(T));
        decode_scores_exact(q, n_head, kv, scale, scores_.data(), pool);
        if (select_bytes) *select_bytes += T * kv.n_head_kv * kv.head_dim * int64_t(sizeof(fp16_t));
        decode_dense_part(T, n_sink_, n_local_, dense_);
        const int64_t k = budget_.keys(T);
        const int     G = kv_select_ ? n_head / kv.n_head_kv : 1;
        if (G > 1) decode_group_scores(scores_.data(), n_head, G, T, dense_, group_, &pool);
        plan.n_head = n_head;
        plan.group  = G;
        plan.heads.resize(size_t(n_head / G));
        for (decode_head_plan & hp : plan.heads) {
            hp.dense = dense_;
            hp.logw.clear();
        }
        decode_topk_lists(G > 1 ? group_.data() : scores_.data(), n_head / G, T, k, dense_, plan, pool);
    }

  private:
    decode_budget          budget_;
    int                    n_sink_, n_local_;
    bool                   kv_select_;
    std::vector<float>     scores_, group_;
    std::vector<key_range> dense_;
};

} // namespace

result<std::unique_ptr<decode_method>> topk_decode_create(const model_hparams &, const attn_config & c) {
    return std::unique_ptr<decode_method>(new topk_decode(c));
}

void decode_scores_exact(const float * q, int n_head, const kv_view & kv, float scale, float * s, thread_pool & pool) {
    const int     D = kv.head_dim, G = n_head / kv.n_head_kv;
    const int64_t T = kv.n_kv, n_pages = (T + kv_page_tokens - 1) / kv_page_tokens;
    const int64_t n_work = n_pages * kv.n_head_kv;
    pool.run([&](int ith, int nth) {
        std::vector<float> qs(size_t(G) * D);
        int                cur = -1;
        for (int64_t w = ith; w < n_work; w += nth) {
            const int     hk = int(w % kv.n_head_kv);
            const int64_t p  = w / kv.n_head_kv;
            if (hk != cur) {
                for (int g = 0; g < G; ++g)
                    for (int d = 0; d < D; ++d) qs[size_t(g) * D + d] = q[size_t(hk * G + g) * D + d] * scale;
                cur = hk;
            }
            const int64_t t1 = std::min(T, (p + 1) * kv_page_tokens);
            for (int64_t t = p * kv_page_tokens; t < t1; ++t) {
                const fp16_t * kr = kv.k_row(t, hk);
                for (int g = 0; g < G; ++g)
                    s[size_t(hk * G + g) * T + t] = dot_f32_f16(qs.data() + size_t(g) * D, kr, D);
            }
        }
    });
}

void decode_scores_exact_ref(const float * q, int n_head, const kv_view & kv, float scale, float * s) {
    const int D = kv.head_dim, G = n_head / kv.n_head_kv;
    for (int h = 0; h < n_head; ++h)
        for (int64_t t = 0; t < kv.n_kv; ++t) {
            const fp16_t * kr  = kv.k_row(t, h / G);
            double         dot = 0.0;
            for (int d = 0; d < D; ++d) dot += double(q[size_t(h) * D + d]) * double(fp16_to_fp32(kr[d]));
            s[size_t(h) * kv.n_kv + t] = float(dot * scale);
        }
}

} // namespace lc
