// Quest page selection (see quest.h).
#include "attn/decode/quest.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "model/model.h"

namespace lc {

void quest_page_bounds(const kv_view & kv, int hk, int64_t p, int P, float * kmax, float * kmin) {
    const int D = kv.head_dim;
    for (int d = 0; d < D; ++d) {
        kmax[d] = -INFINITY;
        kmin[d] = INFINITY;
    }
    for (int64_t t = p * P; t < (p + 1) * P; ++t) {
        const fp16_t * kr = kv.k_row(t, hk);
        for (int d = 0; d < D; ++d) {
            const float x = fp16_to_fp32(kr[d]);
            kmax[d]       = std::max(kmax[d], x);
            kmin[d]       = std::min(kmin[d], x);
        }
    }
}

void quest_page_scores(const float * q, const float * kmax, const float * kmin, int64_t n_pages, int D, float * u) {
    for (int64_t p = 0; p < n_pages; ++p) {
        const float * hi  = kmax + p * D;
        const float * lo  = kmin + p * D;
        __m256        acc = _mm256_setzero_ps();
        int           d   = 0;
        for (; d + 8 <= D; d += 8) {
            const __m256 qv = _mm256_loadu_ps(q + d);
            acc             = _mm256_add_ps(acc, _mm256_max_ps(_mm256_mul_ps(qv, _mm256_loadu_ps(hi + d)),
                                                               _mm256_mul_ps(qv, _mm256_loadu_ps(lo + d))));
        }
        __m128 x = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        x        = _mm_add_ps(x, _mm_movehl_ps(x, x));
        x        = _mm_add_ss(x, _mm_movehdup_ps(x));
        float s  = _mm_cvtss_f32(x);
        for (; d < D; ++d) s += std::max(q[d] * hi[d], q[d] * lo[d]);
        u[p] = s;
    }
}

namespace {

// Appends [b, e) to sorted, disjoint ranges whose last end is <= e, merging when they touch or overlap.
void push_range(std::vector<key_range> & r, int32_t b, int32_t e) {
    if (b >= e) return;
    if (!r.empty() && r.back().end >= b) {
        r.back().end = std::max(r.back().end, e);
        return;
    }
    r.push_back({b, e});
}

class quest_decode final : public decode_method {
  public:
    quest_decode(int n_layer, const attn_config & c)
        : budget_(c.decode_keys), P_(c.decode_opts.quest_page), n_sink_(c.decode_opts.sink()),
          n_local_(c.decode_opts.local()), layers_(size_t(n_layer)), kv_select_(c.decode_opts.kv_select) {}

    const char * name() const override { return "quest"; }
    bool         sparse_layer(int il) const override { return il >= 2; }
    void         truncate(int64_t n) override {
        for (layer & l : layers_) l.n_pages = std::min<int64_t>(l.n_pages, n / P_);
    }
    void invalidate(int il) override {
        if (il >= 0 && il < int(layers_.size())) layers_[size_t(il)].n_pages = 0;
    }

    void plan(int il, const float * q, int n_head, const kv_view & kv, float, decode_plan & plan, thread_pool & pool,
              int64_t * select_bytes) override {
        const int     D = kv.head_dim, H = kv.n_head_kv, G = n_head / H;
        const int64_t T = kv.n_kv, n_full = T / P_;
        sync(il, kv, pool);
        const layer & L = layers_[size_t(il)];

        decode_dense_part(T, n_sink_, n_local_, dense_);
        // Pages wholly inside the dense part are not candidates.
        page_excl_.clear();
        for (const key_range & r : dense_) {
            const int32_t b = int32_t((r.begin + P_ - 1) / P_), e = int32_t(std::min<int64_t>(r.end / P_, n_full));
            if (b < e) page_excl_.push_back({b, e});
        }
        const int64_t k_pages = (budget_.keys(T) + P_ - 1) / P_;
        const int     GS      = kv_select_ ? G : 1; // query heads per selection
        plan.n_head           = n_head;
        plan.group            = GS;
        plan.heads.resize(size_t(n_head / GS));
        u_.resize(size_t(n_head) * size_t(n_full));
        if (select_bytes) *select_bytes += int64_t(H) * n_full * 2 * D * int64_t(sizeof(float));
        pool.run([&](int ith, int nth) {
            for (int h = ith; h < n_head; h += nth) {
                const int hk = h / G;
                quest_page_scores(q + size_t(h) * D, L.kmax.data() + size_t(hk) * L.cap * D,
                                  L.kmin.data() + size_t(hk) * L.cap * D, n_full, D, u_.data() + size_t(h) * n_full);
            }
        });
        if (GS > 1) decode_group_scores(u_.data(), n_head, GS, n_full, page_excl_, ug_, &pool);
        const float * us = GS > 1 ? ug_.data() : u_.data();
        pool.run([&](int ith, int nth) {
            std::vector<int32_t> sel;
            for (int e = ith; e < n_head / GS; e += nth) {
                decode_topk(us + size_t(e) * n_full, n_full, k_pages, page_excl_, sel);
                // Dense part, selected pages and the incomplete newest page, merged in position order.
                decode_head_plan & hp = plan.heads[size_t(e)];
                hp.dense.clear();
                hp.idx.clear();
                hp.logw.clear();
                size_t di = 0, si = 0;
                while (di < dense_.size() || si < sel.size()) {
                    if (si == sel.size() || (di < dense_.size() && dense_[di].begin <= sel[si] * P_)) {
                        push_range(hp.dense, dense_[di].begin, dense_[di].end);
                        ++di;
                    } else {
                        push_range(hp.dense, sel[si] * P_, (sel[si] + 1) * P_);
                        ++si;
                    }
                }
                push_range(hp.dense, int32_t(n_full * P_), int32_t(T)); // the newest, incomplete page
            }
        });
    }

    void prepare(int il, const kv_view & kv, thread_pool & pool) override { sync(il, kv, pool); }

  private:
    // Bounds of the pages of layer il filled since the last call.
    void sync(int il, const kv_view & kv, thread_pool & pool) {
        const int     D = kv.head_dim, H = kv.n_head_kv;
        const int64_t n_full = kv.n_kv / P_;
        layer &       L      = layers_[size_t(il)];
        if (L.n_pages < n_full) {
            if (L.cap < n_full) { // per-head blocks of cap pages: move them to the new stride
                const int64_t      cap = std::max(n_full, 2 * L.cap);
                std::vector<float> hi(size_t(H) * size_t(cap) * D), lo(hi.size());
                for (int hk = 0; hk < H; ++hk)
                    for (int64_t p = 0; p < L.n_pages; ++p)
                        for (int d = 0; d < D; ++d) {
                            hi[(size_t(hk) * cap + p) * D + d] = L.kmax[(size_t(hk) * L.cap + p) * D + d];
                            lo[(size_t(hk) * cap + p) * D + d] = L.kmin[(size_t(hk) * L.cap + p) * D + d];
                        }
                L.kmax.swap(hi);
                L.kmin.swap(lo);
                L.cap = cap;
            }
            const int64_t p0 = L.n_pages, np = n_full - p0;
            pool.run([&](int ith, int nth) {
                for (int64_t w = ith; w < np * H; w += nth) {
                    const int     hk = int(w % H);
                    const int64_t p  = p0 + w / H;
                    quest_page_bounds(kv, hk, p, P_, L.kmax.data() + (size_t(hk) * L.cap + p) * D,
                                      L.kmin.data() + (size_t(hk) * L.cap + p) * D);
                }
            });
            L.n_pages = n_full;
        }
    }

    struct layer {
        std::vector<float> kmax, kmin; // [n_head_kv][cap][D]
        int64_t            cap     = 0;
        int64_t            n_pages = 0; // pages with bounds
    };
    decode_budget          budget_;
    int                    P_, n_sink_, n_local_;
    std::vector<layer>     layers_;
    std::vector<key_range> dense_, page_excl_;
    bool                   kv_select_;
    std::vector<float>     u_, ug_;
};

} // namespace

result<std::unique_ptr<decode_method>> quest_decode_create(const model_hparams & hp, const attn_config & c) {
    const int P = c.decode_opts.quest_page;
    if (P < 1 || P > 4096)
        return error(status_code::INVALID_ARGUMENT, "--quest-page %d: use 1 to 4096 tokens per page", P);
    return std::unique_ptr<decode_method>(new quest_decode(hp.n_layer, c));
}

} // namespace lc
