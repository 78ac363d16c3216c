// The decode-method factory and the selection pieces shared by the methods (see decode-method.h).
#include "attn/decode/decode-method.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "attn/decode/loki.h"
#include "attn/decode/magicpig.h"
#include "attn/decode/quest.h"
#include "attn/decode/topk.h"
#include "model/model.h"

namespace lc {

result<std::unique_ptr<decode_method>> decode_method_create(const model & m, const attn_config & c) {
    switch (c.decode) {
    case decode_kind::DENSE:
        return std::unique_ptr<decode_method>();
    case decode_kind::TOPK:
        return topk_decode_create(m.hparams(), c);
    case decode_kind::QUEST:
        return quest_decode_create(m.hparams(), c);
    case decode_kind::LOKI:
        return loki_decode_create(m, c);
    case decode_kind::MAGICPIG:
        return magicpig_decode_create(m.hparams(), c);
    }
    return error(status_code::INVALID_ARGUMENT, "unknown decode method %d", int(c.decode));
}

void decode_dense_part(int64_t n_kv, int n_sink, int n_local, std::vector<key_range> & out) {
    out.clear();
    const int64_t s  = std::min<int64_t>(std::max(n_sink, 0), n_kv);
    const int64_t l0 = std::max<int64_t>(n_kv - std::max(n_local, 0), 0);
    if (l0 <= s) {
        if (n_kv > 0 && (s > 0 || l0 < n_kv)) out.push_back({0, int32_t(n_kv)});
        return;
    }
    if (s > 0) out.push_back({0, int32_t(s)});
    if (l0 < n_kv) out.push_back({int32_t(l0), int32_t(n_kv)});
}

namespace {

struct float_range {
    float lo, hi;
};

// The lowest and highest finite values of x[0..n) (lo = +inf, hi = -inf when there are none).
float_range finite_range(const float * x, int64_t n) {
    const __m256 pinf = _mm256_set1_ps(INFINITY), ninf = _mm256_set1_ps(-INFINITY);
    __m256       lo = pinf, hi = ninf;
    int64_t      i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v   = _mm256_loadu_ps(x + i);
        const __m256 fin = _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_EQ_OQ); // NaN for inf, NaN
        lo               = _mm256_min_ps(lo, _mm256_blendv_ps(pinf, v, fin));
        hi               = _mm256_max_ps(hi, _mm256_blendv_ps(ninf, v, fin));
    }
    alignas(32) float l[8], h[8];
    _mm256_store_ps(l, lo);
    _mm256_store_ps(h, hi);
    float_range r{l[0], h[0]};
    for (int j = 1; j < 8; ++j) {
        r.lo = std::min(r.lo, l[j]);
        r.hi = std::max(r.hi, h[j]);
    }
    for (; i < n; ++i)
        if (std::isfinite(x[i])) {
            r.lo = std::min(r.lo, x[i]);
            r.hi = std::max(r.hi, x[i]);
        }
    return r;
}

// The largest of x[0..n) ignoring NaN (-inf when none).
float max_finite(const float * x, int64_t n) {
    __m256  mv = _mm256_set1_ps(-INFINITY);
    int64_t i  = 0;
    for (; i + 8 <= n; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + i), mv); // NaN in x: mv kept
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mv);
    float m = lanes[0];
    for (int j = 1; j < 8; ++j) m = lanes[j] > m ? lanes[j] : m;
    for (; i < n; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

} // namespace

void decode_topk(const float * scores, int64_t n, int64_t k, const std::vector<key_range> & dense,
                 std::vector<int32_t> & out) {
    out.clear();
    if (k <= 0 || n <= 0) return;
    // Eligible positions are the gaps between the dense ranges.
    thread_local std::vector<key_range> gaps;
    gaps.clear();
    int64_t prev = 0, n_el = 0;
    for (const key_range & r : dense) {
        if (r.begin > prev) gaps.push_back({int32_t(prev), std::min(r.begin, int32_t(n))});
        prev = std::max<int64_t>(prev, r.end);
        if (prev >= n) break;
    }
    if (prev < n) gaps.push_back({int32_t(prev), int32_t(n)});
    for (const key_range & g : gaps) n_el += std::max(0, g.end - g.begin);
    if (n_el <= k) {
        for (const key_range & g : gaps)
            for (int32_t t = g.begin; t < g.end; ++t) out.push_back(t);
        return;
    }
    // The k-th highest score (NaN counted as -inf): a 1024-bin histogram between the lowest and highest finite
    // score finds the bin that holds it, then selection among that bin's scores alone; then one branch-free pass
    // in position order takes everything above it, and positions equal to it, lowest first, until k (finite
    // before NaN).
    float lo = INFINITY, hi = -INFINITY;
    for (const key_range & g : gaps) {
        const float_range r = finite_range(scores + g.begin, g.end - g.begin);
        lo                  = std::min(lo, r.lo);
        hi                  = std::max(hi, r.hi);
    }
    float   thr;
    int64_t above = 0; // scores > thr
    if (!(hi > lo)) {  // all finite scores equal (or none finite: hi = -inf)
        thr = hi;
        for (const key_range & g : gaps)
            for (int32_t t = g.begin; t < g.end; ++t) above += scores[t] > thr;
    } else {
        constexpr int        n_bins = 1024;
        const float          inv    = float(n_bins) / (hi - lo);
        thread_local int64_t hist[n_bins];
        std::fill(hist, hist + n_bins, int64_t(0));
        auto bin = [&](float x) { return std::min(n_bins - 1, int((x - lo) * inv)); };
        for (const key_range & g : gaps)
            for (int32_t t = g.begin; t < g.end; ++t)
                if (scores[t] >= lo) ++hist[bin(scores[t])];
        int     b    = n_bins - 1;
        int64_t seen = 0;
        for (; b > 0 && seen + hist[b] < k; --b) seen += hist[b];
        if (seen + hist[b] < k) { // fewer finite scores than k: the threshold is -inf (NaN and -inf fill)
            thr   = -INFINITY;
            above = seen + hist[b];
        } else {
            thread_local std::vector<float> v;
            v.resize(size_t(hist[b]));
            size_t nv = 0;
            for (const key_range & g : gaps)
                for (int32_t t = g.begin; t < g.end; ++t) {
                    const float x = scores[t];
                    if (nv < v.size()) v[nv] = x;
                    nv += x >= lo && bin(x) == b;
                }
            const int64_t r = k - seen; // the r-th highest within the bin
            std::nth_element(v.begin(), v.begin() + (r - 1), v.end(), std::greater<float>());
            thr   = v[size_t(r - 1)];
            above = seen;
            for (float x : v) above += x > thr;
        }
    }
    const int64_t n_eq = k - above; // positions equal to thr to take
    out.resize(size_t(n_el));
    size_t  n_out = 0;
    int64_t e     = 0;
    for (const key_range & g : gaps)
        for (int32_t t = g.begin; t < g.end; ++t) {
            const float x  = scores[t];
            const bool  eq = x == thr && e < n_eq;
            e += eq;
            out[n_out] = t;
            n_out += (x > thr) | eq;
        }
    out.resize(n_out);
    if (e < n_eq && thr == -INFINITY) { // NaN positions fill what is left, lowest first
        const size_t m = out.size();
        for (const key_range & g : gaps)
            for (int32_t t = g.begin; t < g.end && e < n_eq; ++t)
                if (std::isnan(scores[t])) {
                    out.push_back(t);
                    ++e;
                }
        std::inplace_merge(out.begin(), out.begin() + ptrdiff_t(m), out.end());
    }
}

void decode_group_scores(const float * scores, int n_head, int G, int64_t n, const std::vector<key_range> & dense,
                         std::vector<float> & out) {
    out.resize(size_t(n_head / G) * size_t(n));
    // Gaps between the dense ranges.
    std::vector<std::pair<int64_t, int64_t>> gaps;
    int64_t                                  prev = 0;
    for (const key_range & r : dense) {
        if (r.begin > prev) gaps.push_back({prev, std::min<int64_t>(r.begin, n)});
        prev = std::max<int64_t>(prev, r.end);
    }
    if (prev < n) gaps.push_back({prev, n});
    for (int e = 0; e < n_head / G; ++e) {
        float * o = out.data() + size_t(e) * n;
        for (const auto & g : gaps) std::fill(o + g.first, o + g.second, -INFINITY);
        for (int h = e * G; h < (e + 1) * G; ++h) {
            const float * s = scores + size_t(h) * n;
            float         m = -INFINITY;
            for (const auto & g : gaps) m = std::max(m, max_finite(s + g.first, g.second - g.first));
            if (!(m > -INFINITY)) continue;
            for (const auto & g : gaps)
                for (int64_t t = g.first; t < g.second; ++t) {
                    const float x = s[t] - m;
                    o[t]          = x > o[t] ? x : o[t];
                }
        }
    }
}

int64_t decode_head_keys(const decode_head_plan & h) {
    int64_t n = int64_t(h.idx.size());
    for (const key_range & r : h.dense) n += r.end - r.begin;
    return n;
}

} // namespace lc
