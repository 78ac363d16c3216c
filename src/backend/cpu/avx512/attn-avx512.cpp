// AVX-512 dense-attention tile kernel: 16 lanes, 8 x 3-vector micro-tiles (24 accumulators), polynomial
// exp2. The algorithm lives in backend/cpu/attn-tile-impl.inc, shared with the AVX2 kernel. This unit is
// compiled with AVX-512 flags and only called after a run-time CPUID check (core/cpu-features.h).
#include <immintrin.h>

#include "backend/cpu/attn-colsum.h"
#include "backend/cpu/attn-gather.h"
#include "backend/cpu/attn-tile.h"

// GCC 12's avx512fintrin.h initialises its "undefined" vectors from themselves, which -Wmaybe-uninitialized
// reports at every inlined use (e.g. _mm512_cvtps_epi32); the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lc {

namespace {

struct simd_avx512 {
    using vf                  = __m512;
    using vi                  = __m512i;
    static constexpr int W    = 16;
    static constexpr int NA   = 8;
    static constexpr int NR   = 3;
    static constexpr int NREG = 32;
    // Row layout up to 16 rows per KV head. Decode, head_dim 128, one core, ns per key and KV head, row vs
    // transposed layout: G=16 51 vs 52, G=24 98 vs 90.
    static constexpr int ROWS_MAX = 16;
    // reduce() leaves the sum of its input i in lane order[i] (order is its own inverse), so feeding key
    // order[i] into input i puts key i in lane i.
    static constexpr int order[16] = {0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15};

    static vf   zero() { return _mm512_setzero_ps(); }
    static vf   set1(float x) { return _mm512_set1_ps(x); }
    static vf   load(const float * p) { return _mm512_load_ps(p); }
    static void store(float * p, vf v) { _mm512_store_ps(p, v); }
    static vf   fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
    static vf   mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
    static vf   add(vf a, vf b) { return _mm512_add_ps(a, b); }
    static vf   sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
    static vf   max(vf a, vf b) { return _mm512_max_ps(a, b); }
    static vf   ph_load(const fp16_t * p) {
          return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
    }

    static vf mask_future(vf s, int32_t t, const int32_t * lim) {
        const __mmask16 fut = _mm512_cmpgt_epi32_mask(_mm512_set1_epi32(t), _mm512_load_si512(lim));
        return _mm512_mask_mov_ps(s, fut, _mm512_set1_ps(-__builtin_inff()));
    }
    static vf ninf_to_zero(vf m) {
        return _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(m, _mm512_set1_ps(-__builtin_inff()), _CMP_EQ_OQ),
                                  _mm512_setzero_ps());
    }

    static float hmax(vf v) { return _mm512_reduce_max_ps(v); }
    static float hsum(vf v) { return _mm512_reduce_add_ps(v); }
    // Lanes >= n become -inf.
    static vf mask_tail(vf s, int n) {
        const __mmask16 keep = n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
        return _mm512_mask_blend_ps(keep, _mm512_set1_ps(-__builtin_inff()), s);
    }
    // Four levels of pairwise adds: 128-bit blocks, then 128-bit halves of 256, then pairs of lanes, then
    // lanes. Input i ends in lane order[i] (see order).
    static vf reduce(const vf * a) {
        vf b[8], c[4], d[2];
        for (int i = 0; i < 8; ++i) // blocks [a_i 0+2, a_i 1+3, a_i+8 0+2, a_i+8 1+3]
            b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_f32x4(a[i], a[i + 8], _MM_SHUFFLE(3, 2, 3, 2)));
        for (int i = 0; i < 4; ++i) // blocks [a_i, a_i+8, a_i+4, a_i+12], 4 partial lanes each
            c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[i], b[i + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_f32x4(b[i], b[i + 4], _MM_SHUFFLE(3, 1, 3, 1)));
        for (int i = 0; i < 2; ++i) // per block: lanes 0-1 from c_i, lanes 2-3 from c_i+2
            d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[i], c[i + 2], _MM_SHUFFLE(1, 0, 1, 0)),
                                 _mm512_shuffle_ps(c[i], c[i + 2], _MM_SHUFFLE(3, 2, 3, 2)));
        // per block: [c_0, c_2, c_1, c_3]
        return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
    }

    // 2^x for x <= 0 as in the AVX2 kernel: 2^round(x) * p(x - round(x)); x <= -127 (and -inf) gives 0.
    static vf exp2(vf x) {
        x               = _mm512_max_ps(x, _mm512_set1_ps(-127.0f));
        const vf n      = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const vf f      = _mm512_sub_ps(x, n);
        vf       p      = _mm512_set1_ps(1.5353362e-4f);
        p               = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3398875e-3f));
        p               = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6184369e-3f));
        p               = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5503324e-2f));
        p               = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022648e-1f));
        p               = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
        p               = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
        const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
        return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
    }
};

#include "backend/cpu/attn-tile-impl.inc"
// uses the helpers of attn-tile-impl.inc
#include "backend/cpu/attn-gather-impl.inc"
// uses the helpers of attn-tile-impl.inc
#include "backend/cpu/attn-colsum-impl.inc"

} // namespace

void attn_tile_avx512(const attn_tile_args & a) {
    switch (a.head_dim) {
    case 64:
        attn_item<simd_avx512, 64>(a);
        break;
    case 128:
        attn_item<simd_avx512, 128>(a);
        break;
    default:
        attn_item<simd_avx512, 0>(a);
        break;
    }
}

int attn_rows_max_avx512(int head_dim) {
    return rows_max<simd_avx512>(head_dim);
}

} // namespace lc

namespace lc {

void attn_gather_avx512(const attn_gather_args & a) {
    attn_gather_entry<simd_avx512>(a);
}

} // namespace lc

namespace lc {

void attn_colsum_avx512(const attn_colsum_args & a) {
    attn_colsum_entry<simd_avx512>(a);
}

} // namespace lc
