// MInference index builders (see index.h). The vertical-slash scores run on AVX2 (the baseline ISA): the 64
// estimating queries are held transposed so that one broadcast key element meets all 64 rows in 8 FMAs, and the
// softmax runs down the keys with the rows along the lanes.
#include "attn/minference/index.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/avx2/vec-math.h"
#include "core/fp16.h"
#include "core/log.h"

namespace lc {

namespace {

constexpr int k_tile = kv_page_tokens;

// Indices of the k largest of score[0..n) (ties: the lower index), in no particular order.
void top_k(const std::vector<float> & score, int64_t n, int64_t k, std::vector<int32_t> & out) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    k           = std::min(k, n);
    auto better = [&](int32_t a, int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
    std::nth_element(idx.begin(), idx.begin() + k, idx.end(), better);
    idx.resize(size_t(k));
    out = std::move(idx);
}

} // namespace

void vslash_estimate(const float * q, int64_t n_q, int64_t pos0, int n_head, int h, const kv_view & kv, float scale,
                     std::vector<float> & vertical, std::vector<float> & slash, std::vector<float> & scratch) {
    const int     D       = kv.head_dim;
    const int     n_group = n_head / kv.n_head_kv;
    const int     hk      = h / n_group;
    const int64_t nl      = std::min<int64_t>(vslash_last_q, n_q);
    const int64_t N       = pos0 + n_q;
    const int64_t i0      = n_q - nl;      // first estimating query
    const int64_t p_first = pos0 + i0;     // its position; row r has position p_first + r
    constexpr int R       = vslash_last_q; // rows, padded: 8 vectors of 8
    LC_ASSERT(kv.n_kv >= N, "vslash: %lld keys needed, cache has %lld", (long long)N, (long long)kv.n_kv);

    // scratch: scores transposed st [N][64] (key-major, the 64 rows along the lanes), queries qt [D][64], one K
    // tile kf [64][D] in f32, then the softmax state m, l [64].
    scratch.resize(size_t(N * R + D * R + k_tile * D + 2 * R) + 16);
    float * st = reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t(63));
    float * qt = st + N * R;
    float * kf = qt + D * R;
    float * m  = kf + k_tile * D;
    float * l  = m + R;
    for (int d = 0; d < D; ++d)
        for (int r = 0; r < R; ++r) qt[d * R + r] = r < nl ? q[((i0 + r) * n_head + h) * D + d] * scale : 0.0f;

    // Scores: st[t][r] = q_r . k_t, 8 row vectors per key (one broadcast K element meets 64 rows).
    for (int64_t t0 = 0; t0 < N; t0 += k_tile) {
        const int      nj  = int(std::min<int64_t>(k_tile, N - t0));
        const fp16_t * src = kv.k_row(t0, hk); // rows t0 .. t0 + nj - 1 are contiguous within the page
        int64_t        e   = 0;
        for (; e + 8 <= int64_t(nj) * D; e += 8)
            _mm256_storeu_ps(kf + e, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(src + e))));
        for (; e < int64_t(nj) * D; ++e) kf[e] = fp16_to_fp32(src[e]);
        for (int j = 0; j < nj; ++j) {
            __m256 acc[8];
            for (int c = 0; c < 8; ++c) acc[c] = _mm256_setzero_ps();
            const float * kr = kf + j * D;
            for (int d = 0; d < D; ++d) {
                const __m256  x   = _mm256_set1_ps(kr[d]);
                const float * row = qt + d * R;
                for (int c = 0; c < 8; ++c) acc[c] = _mm256_fmadd_ps(x, _mm256_loadu_ps(row + 8 * c), acc[c]);
            }
            float * out = st + (t0 + j) * R;
            for (int c = 0; c < 8; ++c) _mm256_store_ps(out + 8 * c, acc[c]);
        }
    }
    // Causal corner: row r sees keys <= p_first + r.
    for (int64_t t = std::max<int64_t>(p_first + 1, 0); t < N; ++t)
        for (int r = 0; r < R; ++r)
            if (t > p_first + r) st[t * R + r] = -INFINITY;

    // Row-wise softmax along the keys, 8 rows per vector.
    for (int c = 0; c < 8; ++c) {
        __m256 mv = _mm256_set1_ps(-INFINITY);
        for (int64_t t = 0; t < N; ++t) mv = _mm256_max_ps(mv, _mm256_load_ps(st + t * R + 8 * c));
        __m256 sum = _mm256_setzero_ps();
        for (int64_t t = 0; t < N; ++t) {
            const __m256 e = cpu::avx2::exp_ps(_mm256_sub_ps(_mm256_load_ps(st + t * R + 8 * c), mv));
            _mm256_store_ps(st + t * R + 8 * c, e);
            sum = _mm256_add_ps(sum, e);
        }
        _mm256_storeu_ps(m + 8 * c, mv);
        _mm256_storeu_ps(l + 8 * c, _mm256_div_ps(_mm256_set1_ps(1.0f), sum));
    }
    for (int r = int(nl); r < R; ++r) l[r] = 0.0f; // padding rows contribute nothing

    vertical.assign(size_t(N), 0.0f);
    slash.assign(size_t(N), 0.0f);
    for (int64_t t = 0; t < N; ++t) {
        float * a   = st + t * R;
        __m256  acc = _mm256_setzero_ps();
        for (int c = 0; c < 8; ++c) {
            const __m256 p = _mm256_mul_ps(_mm256_load_ps(a + 8 * c), _mm256_loadu_ps(l + 8 * c));
            _mm256_store_ps(a + 8 * c, p);
            acc = _mm256_add_ps(acc, p);
        }
        __m128 x            = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        x                   = _mm_add_ps(x, _mm_movehl_ps(x, x));
        x                   = _mm_add_ss(x, _mm_movehdup_ps(x));
        vertical[size_t(t)] = _mm_cvtss_f32(x);
        // Row r reaches key t at offset p_first + r - t (>= 0 only): for a fixed key the rows' offsets are
        // consecutive, so whole vectors of rows add onto consecutive slash entries.
        const int r_lo = int(std::max<int64_t>(0, t - p_first));
        float *   sl   = slash.data() + (p_first + r_lo - t); // sl[r - r_lo] is the slash entry of row r
        int       r    = r_lo;
        if (r_lo == 0)
            for (; r + 8 <= int(nl); r += 8)
                _mm256_storeu_ps(sl + r, _mm256_add_ps(_mm256_loadu_ps(sl + r), _mm256_load_ps(a + r)));
        for (; r < int(nl); ++r) sl[r - r_lo] += a[r];
    }
}

void vslash_select(const std::vector<float> & vertical, const std::vector<float> & slash, int64_t n_keys, int64_t v,
                   int64_t s, std::vector<int32_t> & cols, std::vector<int32_t> & offsets) {
    v = std::clamp<int64_t>(v, vslash_v_min, std::max<int64_t>(n_keys, vslash_v_min));
    s = std::clamp<int64_t>(s, vslash_s_min, std::max<int64_t>(n_keys, vslash_s_min));
    std::vector<float> vs(vertical.begin(), vertical.begin() + n_keys);
    std::vector<float> ss(slash.begin(), slash.begin() + n_keys);
    for (int64_t j = 0; j < std::min(vslash_n_sink, n_keys); ++j) vs[size_t(j)] = INFINITY;
    for (int64_t o = 0; o < std::min(vslash_n_local, n_keys); ++o) ss[size_t(o)] = INFINITY;
    top_k(vs, n_keys, v, cols);
    std::sort(cols.begin(), cols.end());
    top_k(ss, n_keys, s, offsets);
    std::sort(offsets.begin(), offsets.end(), std::greater<int32_t>());
}

void vslash_plan_head(const std::vector<int32_t> & cols, const std::vector<int32_t> & offsets, prefill_plan & plan,
                      int h) {
    prefill_head_plan & hp = plan.heads[size_t(h)];
    hp.clear();
    for (int64_t b = 0; b < plan.n_qblk(); ++b) {
        const int64_t p0 = plan.q_first(b), p1 = plan.q_last(b);
        const int64_t r0 = int64_t(hp.ranges.size());
        for (int32_t o : offsets) { // descending offsets: ascending range starts
            if (p1 - o < 0) continue;
            hp.add_range(std::max<int64_t>(0, p0 - o), p1 - o + 1);
        }
        // Columns outside the block's ranges (both sorted: one merge pass).
        size_t ri = size_t(r0);
        for (int32_t c : cols) {
            if (c > p1) break;
            while (ri < hp.ranges.size() && hp.ranges[ri].end <= c) ++ri;
            if (ri < hp.ranges.size() && hp.ranges[ri].begin <= c) continue;
            hp.add_col(c);
        }
        hp.end_item();
    }
}

void block_estimate(const float * q, int64_t n_q, int64_t pos0, int n_head, int h, const kv_view & kv, int64_t k_b,
                    std::vector<std::vector<int32_t>> & blocks, std::vector<float> & scratch) {
    const int     D       = kv.head_dim;
    const int     n_group = n_head / kv.n_head_kv;
    const int     hk      = h / n_group;
    const int64_t N       = pos0 + n_q;
    const int64_t n_kb    = (N + k_tile - 1) / k_tile;
    const int64_t n_qb    = (n_q + prefill_qblock - 1) / prefill_qblock;

    // scratch: pooled K [n_kb][D], pooled Q [n_qb][D]
    scratch.assign(size_t((n_kb + n_qb) * D), 0.0f);
    float * kp = scratch.data();
    float * qp = kp + n_kb * D;
    for (int64_t kb = 0; kb < n_kb; ++kb) {
        const int64_t t1 = std::min(N, (kb + 1) * k_tile);
        for (int64_t t = kb * k_tile; t < t1; ++t) {
            const fp16_t * kr = kv.k_row(t, hk);
            for (int d = 0; d < D; ++d) kp[kb * D + d] += fp16_to_fp32(kr[d]);
        }
        const float inv = 1.0f / float(t1 - kb * k_tile);
        for (int d = 0; d < D; ++d) kp[kb * D + d] *= inv;
    }
    for (int64_t b = 0; b < n_qb; ++b) {
        const int64_t i1 = std::min(n_q, (b + 1) * prefill_qblock);
        for (int64_t i = b * prefill_qblock; i < i1; ++i)
            for (int d = 0; d < D; ++d) qp[b * D + d] += q[(i * n_head + h) * D + d];
        const float inv = 1.0f / float(i1 - b * prefill_qblock);
        for (int d = 0; d < D; ++d) qp[b * D + d] *= inv;
    }

    blocks.assign(size_t(n_qb), {});
    std::vector<float>   score;
    std::vector<int32_t> idx;
    for (int64_t b = 0; b < n_qb; ++b) {
        const int64_t last     = pos0 + std::min(n_q, (b + 1) * prefill_qblock) - 1;
        const int64_t n_causal = last / k_tile + 1; // key blocks starting at or before the last query
        score.assign(size_t(n_causal), 0.0f);
        for (int64_t kb = 0; kb < n_causal; ++kb) {
            float acc = 0.0f;
            for (int d = 0; d < D; ++d) acc += qp[b * D + d] * kp[kb * D + d];
            score[size_t(kb)] = acc;
        }
        top_k(score, n_causal, std::max<int64_t>(1, k_b), idx);
        std::sort(idx.begin(), idx.end());
        blocks[size_t(b)] = idx;
    }
}

void block_plan_head(const std::vector<std::vector<int32_t>> & blocks, prefill_plan & plan, int h) {
    prefill_head_plan & hp = plan.heads[size_t(h)];
    hp.clear();
    for (int64_t b = 0; b < plan.n_qblk(); ++b) {
        const int64_t p1 = plan.q_last(b);
        for (int32_t kb : blocks[size_t(b)])
            hp.add_range(int64_t(kb) * k_tile, std::min<int64_t>((kb + 1) * int64_t(k_tile), p1 + 1));
        hp.end_item();
    }
}

void a_shape_plan_head(int64_t n_init, int64_t n_local, prefill_plan & plan, int h) {
    prefill_head_plan & hp = plan.heads[size_t(h)];
    hp.clear();
    for (int64_t b = 0; b < plan.n_qblk(); ++b) {
        const int64_t p0 = plan.q_first(b), p1 = plan.q_last(b);
        const int64_t lo = std::max<int64_t>(0, p0 - n_local + 1);
        hp.add_range(0, std::min(n_init, lo)); // sinks before the band (the band covers the rest)
        hp.add_range(lo, p1 + 1);
        hp.end_item();
    }
}

void oracle_plan_head(const float * q, int64_t n_q, int64_t pos0, int n_head, int h, const kv_view & kv, float scale,
                      double fraction, prefill_plan & plan, std::vector<float> & mass, std::vector<float> & slash,
                      std::vector<float> & scratch, std::vector<int32_t> & cols) {
    prefill_head_plan & hp = plan.heads[size_t(h)];
    hp.clear();
    const int64_t D = kv.head_dim;
    for (int64_t b = 0; b < plan.n_qblk(); ++b) {
        const int64_t i0 = b * prefill_qblock, nb = std::min<int64_t>(prefill_qblock, n_q - i0);
        // The block's queries as a call of their own: its last (and only) queries are the block.
        vslash_estimate(q + i0 * n_head * D, nb, pos0 + i0, n_head, h, kv, scale, mass, slash, scratch);
        const int64_t n = pos0 + i0 + nb; // keys up to the block's last query
        const int64_t k = std::min<int64_t>(n, std::max<int64_t>(1, int64_t(std::ceil(fraction * double(n)))));
        top_k(mass, n, k, cols);
        std::sort(cols.begin(), cols.end());
        for (size_t i = 0; i < cols.size();) { // runs of consecutive columns as ranges
            size_t j = i + 1;
            while (j < cols.size() && cols[j] == cols[j - 1] + 1) ++j;
            hp.add_range(cols[i], int64_t(cols[j - 1]) + 1);
            i = j;
        }
        hp.end_item();
    }
}

} // namespace lc
