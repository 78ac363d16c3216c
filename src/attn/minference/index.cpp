// MInference index builders (see index.h). The score loops use GCC vector extensions (8 lanes) over f32 copies
// of 64-key tiles, transposed so that one broadcast query element meets 8 keys per FMA.
#include "attn/minference/index.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/fp16.h"
#include "core/log.h"

namespace lc {

namespace {

typedef float v8f __attribute__((vector_size(32)));
constexpr int k_tile = kv_page_tokens;

v8f v8_load(const float * p) {
    v8f v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
}
void v8_store(float * p, v8f v) {
    __builtin_memcpy(p, &v, sizeof(v));
}

// kt [D][64] = K rows t0 .. t0 + nj - 1 of KV head hk, transposed to f32; columns nj.. are zero.
void load_kt(const kv_view & kv, int hk, int64_t t0, int nj, float * kt) {
    const int D = kv.head_dim;
    for (int j = 0; j < k_tile; ++j) {
        if (j < nj) {
            const fp16_t * kr = kv.k_row(t0 + j, hk);
            for (int d = 0; d < D; ++d) kt[d * k_tile + j] = fp16_to_fp32(kr[d]);
        } else {
            for (int d = 0; d < D; ++d) kt[d * k_tile + j] = 0.0f;
        }
    }
}

// s[j] = sum_d q[d] * kt[d][j] for the 64 keys of the tile.
void dot_tile(const float * q, const float * kt, int D, float * s) {
    v8f acc[8] = {};
    for (int d = 0; d < D; ++d) {
        const float   x   = q[d];
        const float * row = kt + d * k_tile;
        for (int c = 0; c < 8; ++c) acc[c] += x * v8_load(row + 8 * c);
    }
    for (int c = 0; c < 8; ++c) v8_store(s + 8 * c, acc[c]);
}

// Indices of the k largest values (ties: lower index first), ascending by index afterwards if `sort_index`.
void top_k(const std::vector<float> & score, int64_t n, int64_t k, std::vector<int32_t> & out) {
    std::vector<int32_t> idx(static_cast<size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    k = std::min(k, n);
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
    const int64_t i0      = n_q - nl; // first estimating query
    const int64_t n_pad   = (N + k_tile - 1) / k_tile * k_tile;
    LC_ASSERT(kv.n_kv >= N, "vslash: %lld keys needed, cache has %lld", (long long)N, (long long)kv.n_kv);

    // scratch: scores [nl][n_pad], K tile [D][64], scaled queries [nl][D]
    scratch.resize(size_t(nl * n_pad + D * k_tile + nl * D));
    float * s  = scratch.data();
    float * kt = s + nl * n_pad;
    float * qs = kt + D * k_tile;
    for (int64_t r = 0; r < nl; ++r)
        for (int d = 0; d < D; ++d) qs[r * D + d] = q[((i0 + r) * n_head + h) * D + d] * scale;

    for (int64_t t0 = 0; t0 < N; t0 += k_tile) {
        const int nj = int(std::min<int64_t>(k_tile, N - t0));
        load_kt(kv, hk, t0, nj, kt);
        for (int64_t r = 0; r < nl; ++r) dot_tile(qs + r * D, kt, D, s + r * n_pad + t0);
    }

    vertical.assign(size_t(N), 0.0f);
    slash.assign(size_t(N), 0.0f);
    for (int64_t r = 0; r < nl; ++r) {
        const int64_t p   = pos0 + i0 + r; // the row's position: it sees keys 0..p
        float *       row = s + r * n_pad;
        float         m   = -INFINITY;
        for (int64_t j = 0; j <= p; ++j) m = std::max(m, row[j]);
        float sum = 0.0f;
        for (int64_t j = 0; j <= p; ++j) {
            row[j] = std::exp(row[j] - m);
            sum += row[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j <= p; ++j) {
            const float a = row[j] * inv;
            vertical[size_t(j)] += a;
            slash[size_t(p - j)] += a;
        }
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
        for (int32_t kb : blocks[size_t(b)]) hp.add_range(int64_t(kb) * k_tile, std::min<int64_t>((kb + 1) * int64_t(k_tile), p1 + 1));
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

} // namespace lc
