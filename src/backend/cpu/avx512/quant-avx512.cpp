// AVX-512 VNNI integer GEMM tiles for the llama-family weight types, chosen at run time (see matmul.cpp).
// Two 32-element blocks fill one 512-bit register; vpdpbusd multiplies unsigned weight bytes with signed
// activation bytes. Signed weight types are offset to unsigned (w + o) and the offset is removed exactly by
// starting each accumulator at -o·Σa (Σa per 4-byte group, itself a vpdpbusd), so every type runs the same
// four instructions per (row, column, block pair): vpdpbusd, convert, scale, FMA.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "backend/cpu/avx512/quant-avx512.h"
#include "backend/cpu/avx512/simd-avx512.h"
#include "backend/cpu/tile-walk.h"

namespace lc::cpu::avx512 {

namespace {

// Each weight type: u8 values (w + offset) of one block, and the offset.
struct w_q4_0 {
    using block                 = block_q4_0;
    static constexpr int offset = 8;
    static __m256i       u8(const block & b) { return nibbles(b.qs); }
};
struct w_q5_0 {
    using block                 = block_q5_0;
    static constexpr int offset = 16;
    static __m256i       u8(const block & b) {
              uint32_t qh;
              std::memcpy(&qh, b.qh, 4);
              return _mm256_or_si256(nibbles(b.qs), _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10)));
    }
};
struct w_q8_0 {
    using block                 = block_q8_0;
    static constexpr int offset = 128;
    static __m256i       u8(const block & b) {
              return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)b.qs), _mm256_set1_epi8(char(0x80)));
    }
};
struct w_q4_1 {
    using block                 = block_q4_1;
    static constexpr int offset = 0;
    static __m256i       u8(const block & b) { return nibbles(b.qs); }
};

template <typename W, typename A, int R, int C>
void tile(int64_t nb, const uint8_t * w, size_t w_stride, const uint8_t * a, size_t a_stride, float * y, int64_t ldy) {
    using wblock           = typename W::block;
    constexpr bool has_min = std::is_same_v<W, w_q4_1>;
    __m512         acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    const __m512i vofs = _mm512_set1_epi8(char(W::offset));

    for (int64_t b = 0; b < nb; b += 2) {
        const bool pair = b + 1 < nb;
        __m512i    av[C], ainit[C];
        __m512     ad[C], as[C];
        for (int c = 0; c < C; ++c) {
            const A * ab = (const A *)(a + c * a_stride) + b;
            __m256i   lo = _mm256_loadu_si256((const __m256i *)ab[0].qs);
            __m256i   hi = pair ? _mm256_loadu_si256((const __m256i *)ab[1].qs) : _mm256_setzero_si256();
            av[c]        = join(lo, hi);
            ad[c]        = join(h2f(ab[0].d), pair ? h2f(ab[1].d) : 0.0f);
            if constexpr (W::offset != 0)
                ainit[c] =
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), vofs, av[c]));
            else
                ainit[c] = _mm512_setzero_si512();
            if constexpr (has_min) {
                // Σ_b m_b s_b spread over the 8 lanes of each block: every lane adds m_b * s_b / 8
                as[c] = join(h2f(((const block_q8_1 *)ab)[0].s) * 0.125f,
                             pair ? h2f(((const block_q8_1 *)ab)[1].s) * 0.125f : 0.0f);
            }
        }
        for (int r = 0; r < R; ++r) {
            const wblock * wb = (const wblock *)(w + r * w_stride) + b;
            const __m512i  wv = join(W::u8(wb[0]), pair ? W::u8(wb[1]) : _mm256_setzero_si256());
            const __m512   wd = join(h2f(wb[0].d), pair ? h2f(wb[1].d) : 0.0f);
            __m512         wm;
            if constexpr (has_min) wm = join(h2f(wb[0].m), pair ? h2f(wb[1].m) : 0.0f);
            for (int c = 0; c < C; ++c) {
                const __m512i dot = _mm512_dpbusd_epi32(ainit[c], wv, av[c]);
                acc[r][c]         = _mm512_fmadd_ps(_mm512_mul_ps(wd, ad[c]), _mm512_cvtepi32_ps(dot), acc[r][c]);
                if constexpr (has_min) acc[r][c] = _mm512_fmadd_ps(wm, as[c], acc[r][c]);
            }
        }
    }
    for (int c = 0; c < C; ++c)
        for (int r = 0; r < R; ++r) y[c * ldy + r] = hsum(acc[r][c]);
}

using tile_fn = void (*)(int64_t, const uint8_t *, size_t, const uint8_t *, size_t, float *, int64_t);

template <typename W, typename A> struct table {
    template <int R, int C> static constexpr tile_fn fn = &tile<W, A, R, C>;
};

} // namespace

// 4 rows x 4 columns (16 accumulators of AVX-512's 32 registers) for matrix products, 4 x 1 for vectors.
bool gemm_tiles(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                size_t a_stride, int64_t n_cols, float * y, int64_t ldy) {
    const int64_t nb = n_in / 32;
    switch (wt) {
    case dtype::Q4_1:
        walk_tiles<table<w_q4_1, block_q8_1>, 4, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q4_0:
        walk_tiles<table<w_q4_0, block_q8_0>, 4, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q5_0:
        walk_tiles<table<w_q5_0, block_q8_0>, 4, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    case dtype::Q8_0:
        walk_tiles<table<w_q8_0, block_q8_0>, 4, 4, 4>(nb, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
        return true;
    default:
        return gemm_tiles_k(wt, n_in, w, w_stride, n_rows, a, a_stride, n_cols, y, ldy);
    }
}

} // namespace lc::cpu::avx512
