// AVX2 activation quantization and register-blocked integer GEMM micro-kernels for the llama-family weight
// types: Q4_1 x Q8_1 (unsigned nibbles, maddubs) and Q4_0/Q5_0/Q8_0 x Q8_0 (signed, sign trick).
// A tile computes R weight rows x C activation rows over the whole reduction, keeping R*C fp32 accumulators
// in registers so each decoded weight block is reused C times and each activation block R times.
#include <immintrin.h>

#include <cstring>

#include "backend/cpu/avx2/quant-avx2.h"
#include "backend/cpu/avx2/simd-avx2.h"
#include "backend/cpu/tile-walk.h"

namespace lc::cpu::avx2 {

namespace {

struct row_q4_0 {
    using block = block_q4_0;
    static __m256i decode(const block & b) { return _mm256_sub_epi8(nibbles(b.qs), _mm256_set1_epi8(8)); }
};
struct row_q5_0 {
    using block = block_q5_0;
    static __m256i decode(const block & b) {
        uint32_t qh;
        std::memcpy(&qh, b.qh, 4);
        // q = nibble | (bit << 4) - 16  ==  nibble - (bit ? 0 : 16)
        const __m256i hi = _mm256_andnot_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
        return _mm256_sub_epi8(nibbles(b.qs), hi);
    }
};
struct row_q8_0 {
    using block = block_q8_0;
    static __m256i decode(const block & b) { return _mm256_loadu_si256((const __m256i *)b.qs); }
};

// Signed weights (int8) x Q8_0 activations.
template <typename row, int R, int C>
void tile_signed(int64_t nb, const uint8_t * w, size_t w_stride, const uint8_t * a, size_t a_stride, float * y,
                 int64_t ldy) {
    using wblock = typename row::block;
    __m256 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; ++b) {
        __m256i wabs[R], wq[R];
        __m256  wd[R];
        for (int r = 0; r < R; ++r) {
            const wblock & blk = ((const wblock *)(w + r * w_stride))[b];
            wq[r]              = row::decode(blk);
            wabs[r]            = _mm256_sign_epi8(wq[r], wq[r]);
            wd[r]              = _mm256_set1_ps(h2f(blk.d));
        }
        for (int c = 0; c < C; ++c) {
            const block_q8_0 & ab = ((const block_q8_0 *)(a + c * a_stride))[b];
            const __m256i      aq = _mm256_loadu_si256((const __m256i *)ab.qs);
            const __m256       ad = _mm256_set1_ps(h2f(ab.d));
            for (int r = 0; r < R; ++r) {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[r], _mm256_sign_epi8(aq, wq[r])), ones);
                acc[r][c]       = _mm256_fmadd_ps(_mm256_mul_ps(wd[r], ad), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]);
}

template <int R, int C>
void tile_q4_1(int64_t nb, const uint8_t * w, size_t w_stride, const uint8_t * a, size_t a_stride, float * y,
               int64_t ldy) {
    __m256 acc[R][C];
    float  accm[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            acc[r][c]  = _mm256_setzero_ps();
            accm[r][c] = 0.0f;
        }
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; ++b) {
        __m256i wq[R];
        __m256  wd[R];
        float   wm[R];
        for (int r = 0; r < R; ++r) {
            const block_q4_1 & blk = ((const block_q4_1 *)(w + r * w_stride))[b];
            wq[r]                  = nibbles(blk.qs);
            wd[r]                  = _mm256_set1_ps(h2f(blk.d));
            wm[r]                  = h2f(blk.m);
        }
        for (int c = 0; c < C; ++c) {
            const block_q8_1 & ab = ((const block_q8_1 *)(a + c * a_stride))[b];
            const __m256i      aq = _mm256_loadu_si256((const __m256i *)ab.qs);
            const __m256       ad = _mm256_set1_ps(h2f(ab.d));
            const float        as = h2f(ab.s);
            for (int r = 0; r < R; ++r) {
                const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[r], aq), ones);
                acc[r][c]       = _mm256_fmadd_ps(_mm256_mul_ps(wd[r], ad), _mm256_cvtepi32_ps(p), acc[r][c]);
                accm[r][c] += wm[r] * as;
            }
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]) + accm[r][c];
}

template <typename row> struct signed_table {
    template <int R, int C> static constexpr tile_fn fn = &tile_signed<row, R, C>;
};

struct q4_1_table {
    template <int R, int C> static constexpr tile_fn fn = &tile_q4_1<R, C>;
};

template <typename block> inline float quantize_block(const float * x, block & y, int32_t & isum) {
    __m256       v[4];
    __m256       amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(x + 8 * j);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 m         = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m                = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m                = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float amx  = _mm_cvtss_f32(m);
    const float d    = amx / 127.0f;
    const float id   = d != 0.0f ? 127.0f / amx : 0.0f;
    y.d              = fp32_to_fp16(d);
    const __m256 vid = _mm256_set1_ps(id);
    __m256i      i[4];
    for (int j = 0; j < 4; ++j)
        i[j] = _mm256_cvtps_epi32(
            _mm256_round_ps(_mm256_mul_ps(v[j], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i s  = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4         = _mm_hadd_epi32(s4, s4);
    s4         = _mm_hadd_epi32(s4, s4);
    isum       = _mm_cvtsi128_si32(s4);
    // pack 32 x i32 -> 32 x i8 in element order
    __m256i p01 = _mm256_packs_epi32(i[0], i[1]);
    __m256i p23 = _mm256_packs_epi32(i[2], i[3]);
    __m256i p   = _mm256_packs_epi16(p01, p23);
    p           = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)y.qs, p);
    return d;
}

} // namespace

void quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n) {
    int32_t s;
    for (int64_t i = 0; i < n / QK8_0; ++i) quantize_block(x + i * QK8_0, y[i], s);
}

void quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n) {
    int32_t s;
    for (int64_t i = 0; i < n / QK8_1; ++i) {
        const float d = quantize_block(x + i * QK8_1, y[i], s);
        y[i].s        = fp32_to_fp16(d * float(s));
    }
}

// Tiles of 4 rows x 2 columns (8 accumulators, the most AVX2's 16 registers hold next to the decoded weights
// and temporaries) for matrices, 4 x 1 for vectors.
bool gemm_tiles(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                size_t a_stride, int64_t n_cols, float * y, int64_t ldy) {
    const int64_t nb = n_in / 32;
    switch (wt) {
    case dtype::Q4_1:
        walk_tiles<q4_1_table, 4, 2, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q4_0:
        walk_tiles<signed_table<row_q4_0>, 4, 2, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q5_0:
        walk_tiles<signed_table<row_q5_0>, 4, 2, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q8_0:
        walk_tiles<signed_table<row_q8_0>, 4, 2, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    default:
        return gemm_tiles_k(wt, n_in, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
    }
}

} // namespace lc::cpu::avx2
