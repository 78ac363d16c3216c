// SimHash codes and MagicPIG's per-head LSH tables (see simhash.h). The product of rows with W is a register-
// blocked AVX2/FMA kernel: 6 rows x 16 columns of accumulators (12 ymm) per W panel, the panel (D x 16 f32, 16 KiB
// at D = 256) staying in L1 while the rows of a 48-row tile stream past it; only the signs are kept.
#include "attn/decode/simhash.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "core/log.h"

namespace lc {

namespace {

uint64_t splitmix64(uint64_t & s) {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z          = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Uniform in (0, 1] from the top 53 bits.
double uniform01(uint64_t & s) {
    return double((splitmix64(s) >> 11) + 1) * 0x1.0p-53;
}

constexpr int tile_rows = 48; // rows per tile of simhash_codes: 48 x 256 f32 = 48 KiB

// Sign bits of rows x[0..R) (stride D) against one W panel: bits[r * bits_stride] = 16 bits.
template <int R> inline void panel_signs(const float * x, int D, const float * wp, uint16_t * bits, size_t stride) {
    __m256 acc0[R], acc1[R];
    for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int d = 0; d < D; ++d) {
        const __m256 b0 = _mm256_loadu_ps(wp + size_t(d) * 16);
        const __m256 b1 = _mm256_loadu_ps(wp + size_t(d) * 16 + 8);
        for (int r = 0; r < R; ++r) {
            const __m256 a = _mm256_broadcast_ss(x + size_t(r) * size_t(D) + size_t(d));
            acc0[r]        = _mm256_fmadd_ps(a, b0, acc0[r]);
            acc1[r]        = _mm256_fmadd_ps(a, b1, acc1[r]);
        }
    }
    const __m256 zero = _mm256_setzero_ps();
    for (int r = 0; r < R; ++r) {
        const int lo             = _mm256_movemask_ps(_mm256_cmp_ps(acc0[r], zero, _CMP_GT_OQ));
        const int hi             = _mm256_movemask_ps(_mm256_cmp_ps(acc1[r], zero, _CMP_GT_OQ));
        bits[size_t(r) * stride] = uint16_t(lo | (hi << 8));
    }
}

void rows_signs(const float * x, int R, int D, const float * wp, uint16_t * bits, size_t stride) {
    switch (R) {
    case 1:
        panel_signs<1>(x, D, wp, bits, stride);
        break;
    case 2:
        panel_signs<2>(x, D, wp, bits, stride);
        break;
    case 3:
        panel_signs<3>(x, D, wp, bits, stride);
        break;
    case 4:
        panel_signs<4>(x, D, wp, bits, stride);
        break;
    case 5:
        panel_signs<5>(x, D, wp, bits, stride);
        break;
    default:
        panel_signs<6>(x, D, wp, bits, stride);
        break;
    }
}

// Code of table t from a row's bit string (little-endian bytes, padded by 8 bytes).
inline uint16_t code_at(const uint8_t * bytes, int t, int K) {
    const int c0 = t * K;
    uint64_t  w;
    std::memcpy(&w, bytes + (c0 >> 3), 8);
    return uint16_t((w >> (c0 & 7)) & ((uint64_t(1) << K) - 1));
}

// fp16 row minus mu into f32; returns |row - mu|^2.
float center_row(const fp16_t * k, const float * mu, int D, float * out) {
    __m256 ss = _mm256_setzero_ps();
    int    d  = 0;
    for (; d + 8 <= D; d += 8) {
        const __m256 v =
            _mm256_sub_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), _mm256_loadu_ps(mu + d));
        _mm256_storeu_ps(out + d, v);
        ss = _mm256_fmadd_ps(v, v, ss);
    }
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, ss);
    float s = tmp[0] + tmp[1] + tmp[2] + tmp[3] + tmp[4] + tmp[5] + tmp[6] + tmp[7];
    for (; d < D; ++d) {
        out[d] = fp16_to_fp32(k[d]) - mu[d];
        s += out[d] * out[d];
    }
    return s;
}

} // namespace

simhash_matrix simhash_matrix_make(int D, int K, int L, uint64_t seed) {
    LC_ASSERT(D >= 1 && K >= 1 && K <= simhash_k_max && L >= 1, "simhash: bad shape D=%d K=%d L=%d", D, K, L);
    simhash_matrix W;
    W.D             = D;
    W.K             = K;
    W.L             = L;
    const int n_col = K * L;
    W.n_panel       = (n_col + 15) / 16;
    W.w.assign(size_t(W.n_panel) * size_t(D) * 16, 0.0f);
    uint64_t s = seed;
    // Logical order [D][K*L] so that the values do not depend on the panel layout; pairs from Box-Muller.
    for (int d = 0; d < D; ++d)
        for (int c = 0; c < n_col; c += 2) {
            const double r  = std::sqrt(-2.0 * std::log(uniform01(s)));
            const double th = 2.0 * M_PI * uniform01(s);
            for (int j = 0; j < 2 && c + j < n_col; ++j) {
                const int cc = c + j;
                W.w[(size_t(cc / 16) * size_t(D) + size_t(d)) * 16 + size_t(cc % 16)] =
                    float(j == 0 ? r * std::cos(th) : r * std::sin(th));
            }
        }
    return W;
}

void simhash_codes(const float * x, int64_t n, const simhash_matrix & W, uint16_t * codes) {
    const int                          D      = W.D;
    const size_t                       stride = size_t(W.n_panel) + 4; // uint16 per row, 8 bytes of padding for code_at
    thread_local std::vector<uint16_t> bits;
    bits.assign(size_t(tile_rows) * stride, 0);
    for (int64_t r0 = 0; r0 < n; r0 += tile_rows) {
        const int     nr = int(std::min<int64_t>(tile_rows, n - r0));
        const float * xt = x + size_t(r0) * size_t(D);
        for (int p = 0; p < W.n_panel; ++p) {
            const float * wp = W.w.data() + size_t(p) * size_t(D) * 16;
            for (int r = 0; r < nr; r += 6)
                rows_signs(xt + size_t(r) * size_t(D), std::min(6, nr - r), D, wp, bits.data() + size_t(r) * stride + p,
                           stride);
        }
        for (int r = 0; r < nr; ++r) {
            const uint8_t * b = reinterpret_cast<const uint8_t *>(bits.data() + size_t(r) * stride);
            uint16_t *      c = codes + size_t(r0 + r) * size_t(W.L);
            for (int t = 0; t < W.L; ++t) c[t] = code_at(b, t, W.K);
        }
    }
}

void simhash_codes_ref(const float * x, int64_t n, const simhash_matrix & W, uint16_t * codes) {
    for (int64_t r = 0; r < n; ++r)
        for (int t = 0; t < W.L; ++t) {
            uint16_t code = 0;
            for (int j = 0; j < W.K; ++j) {
                double dot = 0.0;
                for (int d = 0; d < W.D; ++d)
                    dot += double(x[size_t(r) * size_t(W.D) + size_t(d)]) * W.at(d, t * W.K + j);
                if (dot > 0.0) code |= uint16_t(1u << j);
            }
            codes[size_t(r) * size_t(W.L) + size_t(t)] = code;
        }
}

size_t lsh_tables::bytes() const {
    return (mu.size() + norm.size()) * sizeof(float) + (offset.size() + key.size()) * sizeof(uint32_t);
}

void lsh_tables_build(const kv_view & kv, int64_t begin, int64_t end, const simhash_matrix & W,
                      std::vector<lsh_tables> & out, thread_pool & pool) {
    LC_ASSERT(0 <= begin && begin <= end && end <= kv.n_kv, "lsh tables: bad key range [%lld, %lld) of %lld",
              (long long)begin, (long long)end, (long long)kv.n_kv);
    LC_ASSERT(end - begin < (int64_t(1) << 32), "lsh tables: %lld keys", (long long)(end - begin));
    LC_ASSERT(W.D == kv.head_dim, "lsh tables: W has D=%d, cache head_dim %d", W.D, kv.head_dim);
    const int     H = kv.n_head_kv, D = kv.head_dim, K = W.K, L = W.L;
    const int64_t n        = end - begin;
    const int64_t n_tile   = (n + tile_rows - 1) / tile_rows;
    const size_t  n_bucket = size_t(1) << K;
    out.assign(size_t(H), {});
    for (lsh_tables & tb : out) {
        tb.K     = K;
        tb.L     = L;
        tb.begin = begin;
        tb.n     = n;
        tb.mu.assign(size_t(D), 0.0f);
        tb.norm.assign(size_t(n), 0.0f);
        tb.offset.assign(size_t(L) * (n_bucket + 1), 0);
        tb.key.assign(size_t(L) * size_t(n), 0);
    }
    if (n == 0) return;
    const int nth = pool.n_threads();

    // 1. Means: per-thread partial sums (double) over (head, tile) items, reduced afterwards.
    std::vector<double> part(size_t(nth) * size_t(H) * size_t(D), 0.0);
    pool.run([&](int ith, int nth_) {
        int64_t i0, i1;
        thread_pool::split(int64_t(H) * n_tile, ith, nth_, i0, i1);
        for (int64_t it = i0; it < i1; ++it) {
            const int     h  = int(it / n_tile);
            const int64_t t0 = begin + (it % n_tile) * tile_rows, t1 = std::min(end, t0 + tile_rows);
            double *      s = part.data() + (size_t(ith) * size_t(H) + size_t(h)) * size_t(D);
            __m256        acc[32];
            const int     nv = D / 8;
            for (int64_t t = t0; t < t1; t += 16) {
                // Partial sums of at most 16 rows in f32, then into double (bounded f32 rounding).
                const int64_t te = std::min(t1, t + 16);
                int           d  = 0;
                for (; d + 8 <= D && d / 8 < 32; d += 8) {
                    __m256 a = _mm256_setzero_ps();
                    for (int64_t u = t; u < te; ++u)
                        a = _mm256_add_ps(a, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kv.k_row(u, h) + d))));
                    acc[d / 8] = a;
                }
                for (int v = 0; v < std::min(nv, 32); ++v) {
                    alignas(32) float tmp[8];
                    _mm256_store_ps(tmp, acc[v]);
                    for (int j = 0; j < 8; ++j) s[v * 8 + j] += tmp[j];
                }
                for (; d < D; ++d)
                    for (int64_t u = t; u < te; ++u) s[d] += fp16_to_fp32(kv.k_row(u, h)[d]);
            }
        }
    });
    for (int h = 0; h < H; ++h)
        for (int d = 0; d < D; ++d) {
            double s = 0.0;
            for (int i = 0; i < nth; ++i) s += part[(size_t(i) * size_t(H) + size_t(h)) * size_t(D) + size_t(d)];
            out[size_t(h)].mu[size_t(d)] = float(s / double(n));
        }

    // 2. Centred rows, norms and codes per (head, tile); codes stored per table: codes[h][t][i].
    std::vector<uint16_t> codes(size_t(H) * size_t(L) * size_t(n));
    pool.run([&](int ith, int nth_) {
        int64_t i0, i1;
        thread_pool::split(int64_t(H) * n_tile, ith, nth_, i0, i1);
        std::vector<float>    x(size_t(tile_rows) * size_t(D));
        std::vector<uint16_t> c(size_t(tile_rows) * size_t(L));
        for (int64_t it = i0; it < i1; ++it) {
            const int     h  = int(it / n_tile);
            const int64_t r0 = (it % n_tile) * tile_rows, nr = std::min<int64_t>(tile_rows, n - r0);
            lsh_tables &  tb = out[size_t(h)];
            for (int64_t r = 0; r < nr; ++r)
                tb.norm[size_t(r0 + r)] = std::sqrt(
                    center_row(kv.k_row(begin + r0 + r, h), tb.mu.data(), D, x.data() + size_t(r) * size_t(D)));
            simhash_codes(x.data(), nr, W, c.data());
            uint16_t * ch = codes.data() + size_t(h) * size_t(L) * size_t(n);
            for (int t = 0; t < L; ++t)
                for (int64_t r = 0; r < nr; ++r)
                    ch[size_t(t) * size_t(n) + size_t(r0 + r)] = c[size_t(r) * size_t(L) + size_t(t)];
        }
    });

    // 3. Counting sort of each (head, table) by code.
    pool.run([&](int ith, int nth_) {
        int64_t i0, i1;
        thread_pool::split(int64_t(H) * L, ith, nth_, i0, i1);
        for (int64_t it = i0; it < i1; ++it) {
            const int        h = int(it / L), t = int(it % L);
            lsh_tables &     tb = out[size_t(h)];
            const uint16_t * ct = codes.data() + (size_t(h) * size_t(L) + size_t(t)) * size_t(n);
            uint32_t *       of = tb.offset.data() + size_t(t) * (n_bucket + 1);
            uint32_t *       ky = tb.key.data() + size_t(t) * size_t(n);
            for (int64_t i = 0; i < n; ++i) ++of[ct[i] + 1];
            for (size_t b = 0; b < n_bucket; ++b) of[b + 1] += of[b];
            // Scatter with a moving cursor per bucket (kept in of[b] and restored below).
            for (int64_t i = 0; i < n; ++i) ky[of[ct[i]]++] = uint32_t(i);
            for (size_t b = n_bucket; b > 0; --b) of[b] = of[b - 1];
            of[0] = 0;
        }
    });
}

} // namespace lc
