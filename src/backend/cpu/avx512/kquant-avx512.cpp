// AVX-512 VNNI integer GEMM tiles for the K-quant weight types (Q4_K, Q5_K, Q6_K) against Q8_K activations.
// 64 weight bytes (two Q4_K/Q5_K sub-blocks of 32, or four Q6_K sub-blocks of 16) meet 64 activation bytes in
// one vpdpbusd; every 4-byte group sum fits in int16 (|a| <= 127, q <= 63), so vpdpwssd against the sub-block
// scale (int16 in the low half of each int32 lane, 0 in the high half) applies the scale exactly. The min
// (Q4_K/Q5_K) and -32 (Q6_K) terms come from the activation block's bsums.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "backend/cpu/avx512/quant-avx512.h"
#include "backend/cpu/avx512/simd-avx512.h"
#include "backend/cpu/kquant-scales.h"
#include "backend/cpu/tile-walk.h"

namespace lc::cpu::avx512 {

namespace {

// 16-bit lanes 0-15 = lo, 16-31 = hi.
inline __m512i halves_epi16(short lo, short hi) {
    return _mm512_inserti64x4(_mm512_set1_epi16(lo), _mm256_set1_epi16(hi), 1);
}
// 32-bit lanes 0-7 = lo, 8-15 = hi.
inline __m512i halves_epi32(int lo, int hi) {
    return _mm512_inserti64x4(_mm512_set1_epi32(lo), _mm256_set1_epi32(hi), 1);
}

// Q4_K / Q5_K: chunk k (64 elements) is sub-block 2k (low nibbles of qs[32k..32k+32)) then sub-block 2k+1
// (high nibbles); Q5_K's bit 4 of element l of sub-block j is bit j of qh[l].
// A Q4_K/Q5_K block's scales (int32 lanes 0-7, high halves 0), mins (each twice as int16: lane pair (2j, 2j+1)
// meets bsums[2j], bsums[2j+1]) and its two fp16 factors, unpacked.
struct k4_row {
    __m512i scv;
    __m256i mins;
    float   wd, wdm;
};

inline k4_row unpack_k4(const uint8_t * scales, uint16_t d, uint16_t dmin) {
    uint64_t sc8, m8;
    unpack_scales_k4(scales, sc8, m8);
    k4_row        out;
    const __m128i mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(m8)));
    out.scv          = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(sc8)));
    out.mins         = _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn));
    out.wd           = h2f(d);
    out.wdm          = h2f(dmin);
    return out;
}

// prepped: pre holds the rows' unpacked blocks (pre[r * nb + b]); otherwise they are unpacked here.
template <bool five, int R, int C, bool prepped>
void tile_k4_rows(int64_t nb, const uint8_t * w, size_t w_stride, const k4_row * pre, const uint8_t * a,
                  size_t a_stride, float * y, int64_t ldy) {
    using wblock = std::conditional_t<five, block_q5_K, block_q4_K>;
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; ++b) {
        __m512i scv[R];
        __m256i mins[R];
        float   wd[R], wdm[R];
        for (int r = 0; r < R; ++r) {
            const wblock & blk = ((const wblock *)(w + r * w_stride))[b];
            const k4_row   u   = prepped ? pre[r * nb + b] : unpack_k4(blk.scales, blk.d, blk.dmin);
            scv[r]             = u.scv;
            mins[r]            = u.mins;
            wd[r]              = u.wd;
            wdm[r]             = u.wdm;
        }
        __m512i isum[R][C];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) isum[r][c] = _mm512_setzero_si512();
        for (int k = 0; k < 4; ++k) {
            __m512i av[C];
            for (int c = 0; c < C; ++c)
                av[c] = _mm512_loadu_si512(((const block_q8_K *)(a + c * a_stride))[b].qs + 64 * k);
            const __m512i idx = halves_epi32(2 * k, 2 * k + 1);
            for (int r = 0; r < R; ++r) {
                const wblock & blk = ((const wblock *)(w + r * w_stride))[b];
                const __m512i  q   = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk.qs + 32 * k)));
                __m512i        wv  = _mm512_and_si512(_mm512_mask_blend_epi64(0xf0, q, _mm512_srli_epi16(q, 4)), m4);
                if constexpr (five) {
                    const __m512i qh  = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)blk.qh));
                    const __m512i bit = _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi8(char(1 << (2 * k))),
                                                                _mm512_set1_epi8(char(1 << (2 * k + 1))));
                    wv = _mm512_mask_add_epi8(wv, _mm512_test_epi8_mask(qh, bit), wv, _mm512_set1_epi8(0x10));
                }
                const __m512i s = _mm512_permutexvar_epi32(idx, scv[r]);
                for (int c = 0; c < C; ++c)
                    isum[r][c] =
                        _mm512_dpwssd_epi32(isum[r][c], _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av[c]), s);
            }
        }
        for (int c = 0; c < C; ++c) {
            const block_q8_K & ab = ((const block_q8_K *)(a + c * a_stride))[b];
            const __m256i      bs = _mm256_loadu_si256((const __m256i *)ab.bsums);
            for (int r = 0; r < R; ++r) {
                const __m512i ms = _mm512_zextsi256_si512(_mm256_madd_epi16(bs, mins[r]));
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(wd[r] * ab.d), _mm512_cvtepi32_ps(isum[r][c]), acc[r][c]);
                acc[r][c] = _mm512_fnmadd_ps(_mm512_set1_ps(wdm[r] * ab.d), _mm512_cvtepi32_ps(ms), acc[r][c]);
            }
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]);
}

// Q6_K: 64 elements 128h + 64p + [0, 64) are sub-blocks 8h+4p .. 8h+4p+3. Their low 4 bits are nibble p of
// ql[64h .. 64h+64); their high 2 bits are bits (2p, 2p+1) of qh[32h + l] for the first 32 elements and bits
// (2p+2, 2p+3) for the second 32.
// A Q6_K block's 16 int8 scales as int32 lanes (int16 value, high half 0) and as int16, and its fp16 factor.
struct q6_row {
    __m512i scv;
    __m256i sc16;
    float   wd;
};

inline q6_row unpack_q6(const block_q6_K & blk) {
    const __m128i s = _mm_loadu_si128((const __m128i *)blk.scales);
    return {_mm512_and_si512(_mm512_cvtepi8_epi32(s), _mm512_set1_epi32(0xffff)), _mm256_cvtepi8_epi16(s),
            h2f(blk.d)};
}

// prepped, pre: as for tile_k4_rows.
template <int R, int C, bool prepped>
void tile_q6_K_rows(int64_t nb, const uint8_t * w, size_t w_stride, const q6_row * pre, const uint8_t * a,
                    size_t a_stride, float * y, int64_t ldy) {
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0f), m2 = _mm512_set1_epi8(0x30);
    const __m512i shl0 = halves_epi16(4, 2), shr1 = halves_epi16(0, 2);
    for (int64_t b = 0; b < nb; ++b) {
        __m512i scv[R];
        __m256i sc16[R];
        float   wd[R];
        for (int r = 0; r < R; ++r) {
            const q6_row u = prepped ? pre[r * nb + b] : unpack_q6(((const block_q6_K *)(w + r * w_stride))[b]);
            scv[r]         = u.scv;
            sc16[r]        = u.sc16;
            wd[r]          = u.wd;
        }
        // the -32 offset: isum starts at -32 * sum_s sc_s * bsums[s]
        __m512i isum[R][C];
        for (int c = 0; c < C; ++c) {
            const __m256i bs = _mm256_loadu_si256((const __m256i *)((const block_q8_K *)(a + c * a_stride))[b].bsums);
            for (int r = 0; r < R; ++r)
                isum[r][c] = _mm512_zextsi256_si512(
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16[r]), 5)));
        }
        for (int g = 0; g < 4; ++g) {
            const int h = g / 2, p = g % 2;
            __m512i   av[C];
            for (int c = 0; c < C; ++c)
                av[c] = _mm512_loadu_si512(((const block_q8_K *)(a + c * a_stride))[b].qs + 64 * g);
            // int32 lane i (4 bytes) lies in sub-block 4g + i/4
            const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * g),
                                                 _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
            for (int r = 0; r < R; ++r) {
                const block_q6_K & blk = ((const block_q6_K *)(w + r * w_stride))[b];
                const __m512i      ql  = _mm512_loadu_si512(blk.ql + 64 * h);
                const __m512i      qh  = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(blk.qh + 32 * h)));
                const __m512i      lo  = p ? _mm512_and_si512(_mm512_srli_epi16(ql, 4), m4) : _mm512_and_si512(ql, m4);
                const __m512i      hi  = p ? _mm512_srlv_epi16(qh, shr1) : _mm512_sllv_epi16(qh, shl0);
                const __m512i      wv  = _mm512_or_si512(lo, _mm512_and_si512(hi, m2));
                const __m512i      s   = _mm512_permutexvar_epi32(idx, scv[r]);
                for (int c = 0; c < C; ++c)
                    isum[r][c] =
                        _mm512_dpwssd_epi32(isum[r][c], _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, av[c]), s);
            }
        }
        for (int c = 0; c < C; ++c) {
            const float ad = ((const block_q8_K *)(a + c * a_stride))[b].d;
            for (int r = 0; r < R; ++r)
                acc[r][c] = _mm512_fmadd_ps(_mm512_set1_ps(wd[r] * ad), _mm512_cvtepi32_ps(isum[r][c]), acc[r][c]);
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

} // namespace lc::cpu::avx512
