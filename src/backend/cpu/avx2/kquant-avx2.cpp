// AVX2 Q8_K activation quantization and register-blocked integer GEMM tiles for the K-quant weight types
// (Q4_K, Q5_K, Q6_K) against Q8_K activations. Per 256-element block, maddubs/madd give exact int32 sums
// scaled by the 6-bit (Q4_K/Q5_K) or int8 (Q6_K) sub-block scales; the min (Q4_K/Q5_K) and -32 (Q6_K) terms
// come from the activation block's bsums. Per block and (row, column), fp32 FMAs apply d_w * d_a (and dmin_w * d_a).
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "backend/cpu/avx2/quant-avx2.h"
#include "backend/cpu/avx2/simd-avx2.h"
#include "backend/cpu/kquant-scales.h"
#include "backend/cpu/tile-walk.h"

namespace lc::cpu::avx2 {

namespace {

// Q4_K / Q5_K: chunk k (64 elements) holds sub-block 2k in the low nibbles of qs[32k..32k+32) and sub-block
// 2k+1 in the high nibbles; Q5_K adds bit j of qh[l] as bit 4 of element l of sub-block j.
// A Q4_K/Q5_K block's scale bytes (broadcast), mins (each twice as int16: lane pair (2j, 2j+1) meets bsums[2j],
// bsums[2j+1]) and its two fp16 factors, unpacked.
struct k4_row {
    __m256i sc, mins;
    float   wd, wdm;
};

inline k4_row unpack_k4(const uint8_t * scales, uint16_t d, uint16_t dmin) {
    uint64_t sc8, m8;
    unpack_scales_k4(scales, sc8, m8);
    const __m128i mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(m8)));
    return {_mm256_set1_epi64x(int64_t(sc8)), _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn)),
            h2f(d), h2f(dmin)};
}

// prepped: pre holds the rows' unpacked blocks (pre[r * nb + b]); otherwise they are unpacked here.
template <bool five, int R, int C, bool prepped>
void tile_k4_rows(int64_t nb, const uint8_t * w, size_t w_stride, const k4_row * pre, const uint8_t * a,
                  size_t a_stride, float * y, int64_t ldy) {
    using wblock = std::conditional_t<five, block_q5_K, block_q4_K>;
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
        __m256i sc[R], mins[R];
        float   wd[R], wdm[R];
        for (int r = 0; r < R; ++r) {
            const wblock & blk = ((const wblock *)(w + r * w_stride))[b];
            const k4_row   u   = prepped ? pre[r * nb + b] : unpack_k4(blk.scales, blk.d, blk.dmin);
            sc[r]              = u.sc;
            mins[r]            = u.mins;
            wd[r]              = u.wd;
            wdm[r]             = u.wdm;
        }
        __m256i isum[R][C];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) isum[r][c] = _mm256_setzero_si256();
        for (int j = 0; j < 8; ++j) {
            const __m256i ctl = _mm256_set1_epi16(short(0x8000 | j)); // int16 lanes = scale byte j
            __m256i       wq[R], ws[R];
            for (int r = 0; r < R; ++r) {
                const wblock & blk = ((const wblock *)(w + r * w_stride))[b];
                const __m256i  q   = _mm256_loadu_si256((const __m256i *)(blk.qs + 32 * (j / 2)));
                wq[r]              = (j & 1) ? _mm256_and_si256(_mm256_srli_epi16(q, 4), m4) : _mm256_and_si256(q, m4);
                if constexpr (five) {
                    const __m256i bit = _mm256_set1_epi8(char(1 << j));
                    const __m256i qh  = _mm256_loadu_si256((const __m256i *)blk.qh);
                    const __m256i on  = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    wq[r]             = _mm256_or_si256(wq[r], _mm256_and_si256(on, _mm256_set1_epi8(0x10)));
                }
                ws[r] = _mm256_shuffle_epi8(sc[r], ctl);
            }
            for (int c = 0; c < C; ++c) {
                const block_q8_K & ab = ((const block_q8_K *)(a + c * a_stride))[b];
                const __m256i      aq = _mm256_loadu_si256((const __m256i *)(ab.qs + 32 * j));
                for (int r = 0; r < R; ++r)
                    isum[r][c] =
                        _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], aq), ws[r]));
            }
        }
        for (int c = 0; c < C; ++c) {
            const block_q8_K & ab = ((const block_q8_K *)(a + c * a_stride))[b];
            const __m256i      bs = _mm256_loadu_si256((const __m256i *)ab.bsums);
            for (int r = 0; r < R; ++r) {
                const __m256i ms = _mm256_madd_epi16(bs, mins[r]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ab.d), _mm256_cvtepi32_ps(isum[r][c]), acc[r][c]);
                acc[r][c] = _mm256_fnmadd_ps(_mm256_set1_ps(wdm[r] * ab.d), _mm256_cvtepi32_ps(ms), acc[r][c]);
            }
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]);
}

// Q6_K: 32 elements 128h + 32k + l (l < 32) are sub-blocks 8h+2k and 8h+2k+1; their low 4 bits are nibble
// k>>1 of ql[64h + 32(k&1) + l], their high 2 bits are bits 2k and 2k+1 of qh[32h + l].
// A Q6_K block's 16 int8 scales (broadcast to both lanes, and as int16) and its fp16 factor.
struct q6_row {
    __m256i sc8, sc16;
    float   wd;
};

inline q6_row unpack_q6(const block_q6_K & blk) {
    const __m128i s = _mm_loadu_si128((const __m128i *)blk.scales);
    return {_mm256_broadcastsi128_si256(s), _mm256_cvtepi8_epi16(s), h2f(blk.d)};
}

// prepped, pre: as for tile_k4_rows.
template <int R, int C, bool prepped>
void tile_q6_K_rows(int64_t nb, const uint8_t * w, size_t w_stride, const q6_row * pre, const uint8_t * a,
                    size_t a_stride, float * y, int64_t ldy) {
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x30);
    for (int64_t b = 0; b < nb; ++b) {
        __m256i sc8[R], sc16[R];
        float   wd[R];
        for (int r = 0; r < R; ++r) {
            const q6_row u = prepped ? pre[r * nb + b] : unpack_q6(((const block_q6_K *)(w + r * w_stride))[b]);
            sc8[r]         = u.sc8;
            sc16[r]        = u.sc16;
            wd[r]          = u.wd;
        }
        __m256i isum[R][C];
        // the -32 offset: isum starts at -32 * sum_s sc_s * bsums[s]
        for (int c = 0; c < C; ++c) {
            const block_q8_K & ab = ((const block_q8_K *)(a + c * a_stride))[b];
            const __m256i      bs = _mm256_loadu_si256((const __m256i *)ab.bsums);
            for (int r = 0; r < R; ++r)
                isum[r][c] =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16[r]), 5));
        }
        for (int g = 0; g < 8; ++g) {
            const int h = g / 4, k = g % 4;
            // int16 lanes 0-7: scale 2g, lanes 8-15: scale 2g+1 (byte into the high half, arithmetic shift)
            const __m256i ctl = _mm256_set_m128i(_mm_set1_epi16(short(((2 * g + 1) << 8) | 0x80)),
                                                 _mm_set1_epi16(short(((2 * g) << 8) | 0x80)));
            __m256i       wq[R], ws[R];
            for (int r = 0; r < R; ++r) {
                const block_q6_K & blk = ((const block_q6_K *)(w + r * w_stride))[b];
                const __m256i      ql  = _mm256_loadu_si256((const __m256i *)(blk.ql + 64 * h + 32 * (k & 1)));
                const __m256i      qh  = _mm256_loadu_si256((const __m256i *)(blk.qh + 32 * h));
                const __m256i lo = (k >> 1) ? _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) : _mm256_and_si256(ql, m4);
                __m256i       hi;
                switch (k) {
                case 0:
                    hi = _mm256_slli_epi16(qh, 4);
                    break;
                case 1:
                    hi = _mm256_slli_epi16(qh, 2);
                    break;
                case 2:
                    hi = qh;
                    break;
                default:
                    hi = _mm256_srli_epi16(qh, 2);
                    break;
                }
                wq[r] = _mm256_or_si256(lo, _mm256_and_si256(hi, m2));
                ws[r] = _mm256_srai_epi16(_mm256_shuffle_epi8(sc8[r], ctl), 8);
            }
            for (int c = 0; c < C; ++c) {
                const block_q8_K & ab = ((const block_q8_K *)(a + c * a_stride))[b];
                const __m256i      aq = _mm256_loadu_si256((const __m256i *)(ab.qs + 32 * g));
                for (int r = 0; r < R; ++r)
                    isum[r][c] =
                        _mm256_add_epi32(isum[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], aq), ws[r]));
            }
        }
        for (int c = 0; c < C; ++c) {
            const float ad = ((const block_q8_K *)(a + c * a_stride))[b].d;
            for (int r = 0; r < R; ++r)
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), _mm256_cvtepi32_ps(isum[r][c]), acc[r][c]);
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]);
}

template <bool five, int R, int C>
void tile_k4(int64_t nb, const uint8_t * w, size_t w_stride, const uint8_t * a, size_t a_stride, float * y,
             int64_t ldy) {
    tile_k4_rows<five, R, C, false>(nb, w, w_stride, nullptr, a, a_stride, y, ldy);
}
template <int R, int C>
void tile_q6_K(int64_t nb, const uint8_t * w, size_t w_stride, const uint8_t * a, size_t a_stride, float * y,
               int64_t ldy) {
    tile_q6_K_rows<R, C, false>(nb, w, w_stride, nullptr, a, a_stride, y, ldy);
}

template <bool five> struct k4_table {
    using prep_t = k4_row;
    template <int R, int C> static constexpr tile_fn fn = &tile_k4<five, R, C>;
    template <int R, int C>
    static void pfn(int64_t nb, const uint8_t * w, size_t w_stride, const prep_t * pre, const uint8_t * a,
                    size_t a_stride, float * y, int64_t ldy) {
        tile_k4_rows<five, R, C, true>(nb, w, w_stride, pre, a, a_stride, y, ldy);
    }
    static void prep(int64_t nb, const uint8_t * w, size_t w_stride, int n_rows, prep_t * out) {
        using wblock = std::conditional_t<five, block_q5_K, block_q4_K>;
        for (int r = 0; r < n_rows; ++r)
            for (int64_t b = 0; b < nb; ++b) {
                const wblock & blk = ((const wblock *)(w + r * w_stride))[b];
                out[r * nb + b]    = unpack_k4(blk.scales, blk.d, blk.dmin);
            }
    }
};
using q4_K_table = k4_table<false>;
using q5_K_table = k4_table<true>;
struct q6_K_table {
    using prep_t = q6_row;
    template <int R, int C> static constexpr tile_fn fn = &tile_q6_K<R, C>;
    template <int R, int C>
    static void pfn(int64_t nb, const uint8_t * w, size_t w_stride, const prep_t * pre, const uint8_t * a,
                    size_t a_stride, float * y, int64_t ldy) {
        tile_q6_K_rows<R, C, true>(nb, w, w_stride, pre, a, a_stride, y, ldy);
    }
    static void prep(int64_t nb, const uint8_t * w, size_t w_stride, int n_rows, prep_t * out) {
        for (int r = 0; r < n_rows; ++r)
            for (int64_t b = 0; b < nb; ++b) out[r * nb + b] = unpack_q6(((const block_q6_K *)(w + r * w_stride))[b]);
    }
};


} // namespace

void quantize_row_q8_K(const float * x, block_q8_K * y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
        __m128 m         = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m                = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m                = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amx  = _mm_cvtss_f32(m);
        const float id   = amx != 0.0f ? 127.0f / amx : 0.0f;
        y[i].d           = amx / 127.0f;
        const __m256 vid = _mm256_set1_ps(id);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int k = 0; k < 4; ++k)
                q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8 * k), vid),
                                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            y[i].bsums[j / 16]     = int16_t(hsum_i32(_mm256_add_epi32(q[0], q[1])));
            y[i].bsums[j / 16 + 1] = int16_t(hsum_i32(_mm256_add_epi32(q[2], q[3])));
            __m256i p              = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p                      = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), p);
        }
    }
}

// 2 x 4 tiles for matrices, 4 x 1 for vectors: the best of 4x1, 2x1, 4x2, 2x2, 3x3, 2x4, 4x4 and 2x8 measured
// on a 640 x 2048 matrix at 1 and 512 tokens.
bool gemm_tiles_k(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                  size_t a_stride, int64_t n_cols, float * y, int64_t ldy) {
    const int64_t nb = n_in / QK_K;
    switch (wt) {
    case dtype::Q4_K:
        walk_tiles_prep<q4_K_table, 2, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q5_K:
        walk_tiles_prep<q5_K_table, 2, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q6_K:
        walk_tiles_prep<q6_K_table, 2, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    default:
        return false;
    }
}

} // namespace lc::cpu::avx2
