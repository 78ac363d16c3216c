// Selection pieces shared by the decode methods (declared in decode-method.h): top-k of a score vector outside
// the always-dense part, and the KV-head-level scores of a group of query heads. Both split one long vector
// across the pool's threads when a pool is given (one list per KV head leaves the other threads idle otherwise).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "attn/decode/decode-method.h"

namespace lc {

namespace {

// Vectors shorter than this are selected on the calling thread: below it the pool's hand-offs cost more than the
// passes they split.
constexpr int64_t k_parallel_min = 8192;

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

// Eligible positions: the gaps of [0, n) between the dense ranges.
void gaps_of(int64_t n, const std::vector<key_range> & dense, std::vector<key_range> & gaps) {
    gaps.clear();
    int64_t prev = 0;
    for (const key_range & r : dense) {
        if (r.begin > prev) gaps.push_back({int32_t(prev), int32_t(std::min<int64_t>(r.begin, n))});
        prev = std::max<int64_t>(prev, r.end);
        if (prev >= n) break;
    }
    if (prev < n) gaps.push_back({int32_t(prev), int32_t(n)});
}

// The gaps cut into nth parts of about equal length, in position order: part p is parts[first[p] .. first[p+1]).
void cut_parts(const std::vector<key_range> & gaps, int64_t n_el, int nth, std::vector<key_range> & parts,
               std::vector<int> & first) {
    parts.clear();
    first.assign(size_t(nth) + 1, 0);
    const int64_t per = (n_el + nth - 1) / nth;
    int           p   = 0;
    int64_t       fill = 0; // positions in part p so far
    for (const key_range & g : gaps) {
        int32_t b = g.begin;
        while (b < g.end) {
            const int32_t e = int32_t(std::min<int64_t>(g.end, b + (per - fill)));
            parts.push_back({b, e});
            fill += e - b;
            b = e;
            if (fill == per && p + 1 < nth) {
                first[size_t(++p)] = int(parts.size());
                fill               = 0;
            }
        }
    }
    for (int q = p + 1; q <= nth; ++q) first[size_t(q)] = int(parts.size());
}

constexpr int n_bins = 1024;

// Histogram bins of x[0..n) over [lo, lo + n_bins / inv): bin n_bins (the spill) for NaN, -inf and values below
// lo; +inf and values past the top go to the top bin.
void histogram(const float * x, int64_t n, float lo, float inv, int32_t * hist) {
    const __m256 vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv), top = _mm256_set1_ps(float(n_bins - 1));
    const __m256i spill = _mm256_set1_epi32(n_bins);
    alignas(32) int32_t b[8];
    int32_t             h2[n_bins + 1] = {}; // a second histogram: consecutive equal bins do not wait on each other
    int64_t             i              = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256  v  = _mm256_loadu_ps(x + i);
        const __m256  ok = _mm256_cmp_ps(v, vlo, _CMP_GE_OQ);
        const __m256  f  = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(v, vlo), vinv), top);
        const __m256i bi = _mm256_blendv_epi8(spill, _mm256_cvttps_epi32(f), _mm256_castps_si256(ok));
        _mm256_store_si256((__m256i *)b, bi);
        ++hist[b[0]];
        ++h2[b[1]];
        ++hist[b[2]];
        ++h2[b[3]];
        ++hist[b[4]];
        ++h2[b[5]];
        ++hist[b[6]];
        ++h2[b[7]];
    }
    for (; i < n; ++i) {
        const float v = x[i];
        ++hist[v >= lo ? std::min(n_bins - 1, int(std::min((v - lo) * inv, float(n_bins - 1)))) : n_bins];
    }
    for (int j = 0; j <= n_bins; ++j) hist[j] += h2[j];
}

// Appends the values of x[0..n) that fall in bin b (as histogram() bins them) to v.
void bin_values(const float * x, int64_t n, float lo, float inv, int b, std::vector<float> & v) {
    const __m256  vlo = _mm256_set1_ps(lo), vinv = _mm256_set1_ps(inv), top = _mm256_set1_ps(float(n_bins - 1));
    const __m256i vb = _mm256_set1_epi32(b);
    int64_t       i  = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256  v8 = _mm256_loadu_ps(x + i);
        const __m256  ok = _mm256_cmp_ps(v8, vlo, _CMP_GE_OQ);
        const __m256  f  = _mm256_min_ps(_mm256_mul_ps(_mm256_sub_ps(v8, vlo), vinv), top);
        const __m256i eq = _mm256_and_si256(_mm256_cmpeq_epi32(_mm256_cvttps_epi32(f), vb), _mm256_castps_si256(ok));
        for (unsigned m = unsigned(_mm256_movemask_ps(_mm256_castsi256_ps(eq))); m; m &= m - 1)
            v.push_back(x[i + __builtin_ctz(m)]);
    }
    for (; i < n; ++i) {
        const float y = x[i];
        if (y >= lo && std::min(n_bins - 1, int(std::min((y - lo) * inv, float(n_bins - 1)))) == b) v.push_back(y);
    }
}

// Lane permutations that move the set lanes of an 8-bit mask to the front.
struct compress_table {
    alignas(32) int32_t perm[256][8];
    compress_table() {
        for (int m = 0; m < 256; ++m) {
            int j = 0;
            for (int l = 0; l < 8; ++l)
                if (m >> l & 1) perm[m][j++] = l;
            for (; j < 8; ++j) perm[m][j] = 0;
        }
    }
};
const compress_table k_compress;

// Writes, in position order, the positions t in [b, e) with x[t] > thr, and those with x[t] == thr while *eq_left
// > 0 (decremented for each), to out; returns the count. Nothing is written at out[room] or beyond (the vector
// path stores 8 entries at a time, so it stops 8 short of room).
int64_t collect(const float * x, int32_t b, int32_t e, float thr, int64_t * eq_left, int32_t * out, int64_t room) {
    const __m256  vt = _mm256_set1_ps(thr);
    __m256i       pos = _mm256_add_epi32(_mm256_set1_epi32(b), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i step = _mm256_set1_epi32(8);
    int64_t       n    = 0;
    int32_t       t    = b;
    for (; t + 8 <= e && n + 8 <= room; t += 8, pos = _mm256_add_epi32(pos, step)) {
        const __m256 v  = _mm256_loadu_ps(x + t);
        unsigned     gt = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_GT_OQ)));
        unsigned     eq = unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_EQ_OQ)));
        for (; eq && *eq_left > 0; eq &= eq - 1, --*eq_left) gt |= eq & (0u - eq); // lowest equal lanes first
        const __m256i idx = _mm256_load_si256((const __m256i *)k_compress.perm[gt]);
        _mm256_storeu_si256((__m256i *)(out + n), _mm256_permutevar8x32_epi32(pos, idx));
        n += __builtin_popcount(gt);
    }
    for (; t < e; ++t) {
        const float y = x[t];
        if (y > thr) {
            out[n++] = t;
        } else if (y == thr && *eq_left > 0) {
            --*eq_left;
            out[n++] = t;
        }
    }
    return n;
}

// Runs fn(ith, nth) on the pool, or as fn(0, 1) here when there is none.
void run_on(thread_pool * pool, const std::function<void(int, int)> & fn) {
    if (pool)
        pool->run(fn);
    else
        fn(0, 1);
}

} // namespace

void decode_topk(const float * scores, int64_t n, int64_t k, const std::vector<key_range> & dense,
                 std::vector<int32_t> & out, thread_pool * pool) {
    out.clear();
    if (k <= 0 || n <= 0) return;
    thread_local std::vector<key_range> gaps;
    gaps_of(n, dense, gaps);
    int64_t n_el = 0;
    for (const key_range & g : gaps) n_el += g.end - g.begin;
    if (n_el <= k) {
        for (const key_range & g : gaps)
            for (int32_t t = g.begin; t < g.end; ++t) out.push_back(t);
        return;
    }
    // The k-th highest score (NaN counted as -inf) is found by a 1024-bin histogram between the lowest and highest
    // finite score and then selection among the scores of the bin that holds it; a last pass in position order
    // takes everything above it, and positions equal to it, lowest first, until k (finite before NaN). Each pass
    // runs over nth parts of the eligible positions, one per pool thread.
    const int nth = pool && n_el >= k_parallel_min ? pool->n_threads() : 1;
    thread_pool * const          use = nth > 1 ? pool : nullptr;
    thread_local std::vector<key_range> parts;
    thread_local std::vector<int>       first;
    cut_parts(gaps, n_el, nth, parts, first);
    const key_range * const pv = parts.data();
    const int * const       fv = first.data();

    std::vector<float_range> rng(static_cast<size_t>(nth));
    run_on(use, [&](int ith, int) {
        float_range r{INFINITY, -INFINITY};
        for (int i = fv[ith]; i < fv[ith + 1]; ++i) {
            const float_range x = finite_range(scores + pv[i].begin, pv[i].end - pv[i].begin);
            r.lo                = std::min(r.lo, x.lo);
            r.hi                = std::max(r.hi, x.hi);
        }
        rng[size_t(ith)] = r;
    });
    float lo = INFINITY, hi = -INFINITY;
    for (const float_range & r : rng) lo = std::min(lo, r.lo), hi = std::max(hi, r.hi);

    float   thr;
    int64_t n_eq; // positions equal to thr to take
    if (!(hi > lo)) {
        // All finite scores equal (or none finite: hi = -inf): they go first, then NaN / -inf.
        thr           = hi;
        int64_t above = 0;
        for (const key_range & g : gaps)
            for (int32_t t = g.begin; t < g.end; ++t) above += scores[t] > thr;
        n_eq = k - above;
    } else {
        const float          inv = float(n_bins) / (hi - lo);
        std::vector<int32_t> hist(size_t(nth) * (n_bins + 1), 0);
        run_on(use, [&](int ith, int) {
            for (int i = fv[ith]; i < fv[ith + 1]; ++i)
                histogram(scores + pv[i].begin, pv[i].end - pv[i].begin, lo, inv,
                          hist.data() + size_t(ith) * (n_bins + 1));
        });
        for (int p = 1; p < nth; ++p)
            for (int j = 0; j < n_bins; ++j) hist[size_t(j)] += hist[size_t(p) * (n_bins + 1) + j];
        int     b    = n_bins - 1;
        int64_t seen = 0;
        for (; b > 0 && seen + hist[size_t(b)] < k; --b) seen += hist[size_t(b)];
        if (seen + hist[size_t(b)] < k) { // fewer finite scores than k: the threshold is -inf (NaN and -inf fill)
            thr  = -INFINITY;
            n_eq = k - (seen + hist[size_t(b)]);
        } else {
            std::vector<std::vector<float>> in_bin(static_cast<size_t>(nth));
            run_on(use, [&](int ith, int) {
                for (int i = fv[ith]; i < fv[ith + 1]; ++i)
                    bin_values(scores + pv[i].begin, pv[i].end - pv[i].begin, lo, inv, b, in_bin[size_t(ith)]);
            });
            std::vector<float> & v = in_bin[0];
            for (int p = 1; p < nth; ++p) v.insert(v.end(), in_bin[size_t(p)].begin(), in_bin[size_t(p)].end());
            const int64_t r = k - seen; // the r-th highest within the bin
            std::nth_element(v.begin(), v.begin() + (r - 1), v.end(), std::greater<float>());
            thr           = v[size_t(r - 1)];
            int64_t above = seen;
            for (float x : v) above += x > thr;
            n_eq = k - above;
        }
    }

    if (thr == -INFINITY || !(hi > lo)) {
        // Rare shapes (ties across everything, fewer finite scores than k): one pass here, NaN filling last.
        out.resize(size_t(n_el) + 8);
        int64_t e = n_eq, m = 0;
        for (const key_range & g : gaps)
            m += collect(scores, g.begin, g.end, thr, &e, out.data() + m, int64_t(out.size()) - m);
        out.resize(size_t(m));
        if (e > 0) {
            const size_t m0 = out.size();
            for (const key_range & g : gaps)
                for (int32_t t = g.begin; t < g.end && e > 0; ++t)
                    if (std::isnan(scores[t])) {
                        out.push_back(t);
                        --e;
                    }
            std::inplace_merge(out.begin(), out.begin() + ptrdiff_t(m0), out.end());
        }
        return;
    }
    // Each part's count above thr and equal to it decide where its positions go and how many of its ties it takes.
    std::vector<int64_t> gt(size_t(nth), 0), eq(size_t(nth), 0);
    run_on(use, [&](int ith, int) {
        const __m256 vt = _mm256_set1_ps(thr);
        int64_t      g = 0, q = 0;
        for (int i = fv[ith]; i < fv[ith + 1]; ++i) {
            int32_t t = pv[i].begin;
            for (; t + 8 <= pv[i].end; t += 8) {
                const __m256 v = _mm256_loadu_ps(scores + t);
                g += __builtin_popcount(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_GT_OQ))));
                q += __builtin_popcount(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_EQ_OQ))));
            }
            for (; t < pv[i].end; ++t) g += scores[t] > thr, q += scores[t] == thr;
        }
        gt[size_t(ith)] = g;
        eq[size_t(ith)] = q;
    });
    std::vector<int64_t> off(size_t(nth) + 1, 0), quota(size_t(nth), 0);
    int64_t              eq_left = n_eq;
    for (int p = 0; p < nth; ++p) {
        quota[size_t(p)]   = std::min(eq_left, eq[size_t(p)]);
        eq_left           -= quota[size_t(p)];
        off[size_t(p) + 1] = off[size_t(p)] + gt[size_t(p)] + quota[size_t(p)];
    }
    out.resize(size_t(off[size_t(nth)]));
    int32_t * const ov = out.data();
    run_on(use, [&](int ith, int) { // each part writes only its own slots
        int64_t       e = quota[size_t(ith)], m = off[size_t(ith)];
        const int64_t end = off[size_t(ith) + 1];
        for (int i = fv[ith]; i < fv[ith + 1]; ++i)
            m += collect(scores, pv[i].begin, pv[i].end, thr, &e, ov + m, end - m);
    });
}

void decode_topk_lists(const float * scores, int n_lists, int64_t n, int64_t k, const std::vector<key_range> & dense,
                       decode_plan & plan, thread_pool & pool) {
    if (n_lists >= pool.n_threads()) {
        pool.run([&](int ith, int nth) {
            for (int e = ith; e < n_lists; e += nth)
                decode_topk(scores + size_t(e) * size_t(n), n, k, dense, plan.heads[size_t(e)].idx);
        });
        return;
    }
    for (int e = 0; e < n_lists; ++e) decode_topk(scores + size_t(e) * size_t(n), n, k, dense, plan.heads[size_t(e)].idx, &pool);
}

void decode_group_scores(const float * scores, int n_head, int G, int64_t n, const std::vector<key_range> & dense,
                         std::vector<float> & out, thread_pool * pool) {
    out.resize(size_t(n_head / G) * size_t(n));
    std::vector<key_range> gaps;
    gaps_of(n, dense, gaps);
    int64_t n_el = 0;
    for (const key_range & g : gaps) n_el += g.end - g.begin;
    const int     nth = pool && n_el >= k_parallel_min ? pool->n_threads() : 1;
    thread_pool * use = nth > 1 ? pool : nullptr;
    std::vector<key_range> parts;
    std::vector<int>       first;
    cut_parts(gaps, n_el, nth, parts, first);
    // Each head's best eligible score, then the group maxima of the scores relative to it, part by part.
    std::vector<float> best(size_t(nth) * n_head, -INFINITY);
    run_on(use, [&](int ith, int) {
        for (int h = 0; h < n_head; ++h)
            for (int i = first[size_t(ith)]; i < first[size_t(ith) + 1]; ++i)
                best[size_t(ith) * n_head + h] =
                    std::max(best[size_t(ith) * n_head + h],
                             max_finite(scores + size_t(h) * n + parts[size_t(i)].begin,
                                        parts[size_t(i)].end - parts[size_t(i)].begin));
    });
    for (int p = 1; p < nth; ++p)
        for (int h = 0; h < n_head; ++h) best[size_t(h)] = std::max(best[size_t(h)], best[size_t(p) * n_head + h]);
    run_on(use, [&](int ith, int) {
        for (int e = 0; e < n_head / G; ++e) {
            float * o = out.data() + size_t(e) * n;
            for (int i = first[size_t(ith)]; i < first[size_t(ith) + 1]; ++i) {
                const key_range & r = parts[size_t(i)];
                std::fill(o + r.begin, o + r.end, -INFINITY);
                for (int h = e * G; h < (e + 1) * G; ++h) {
                    const float m = best[size_t(h)];
                    if (!(m > -INFINITY)) continue;
                    const float * s = scores + size_t(h) * n;
                    for (int32_t t = r.begin; t < r.end; ++t) {
                        const float x = s[t] - m;
                        o[t]          = x > o[t] ? x : o[t]; // NaN compares false: ignored
                    }
                }
            }
        }
    });
}

} // namespace lc
