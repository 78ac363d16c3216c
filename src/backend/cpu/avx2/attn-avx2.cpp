// AVX2 + FMA + F16C dense-attention tile kernel: 8 lanes, 6 x 2-vector micro-tiles (12 accumulators),
// polynomial exp2. The algorithm lives in backend/cpu/attn-tile-impl.inc, shared with the AVX-512 kernel.
#include <immintrin.h>

#include "backend/cpu/attn-colsum.h"
#include "backend/cpu/attn-gather.h"
#include "backend/cpu/attn-tile.h"

namespace lc {

namespace {

struct simd_avx2 {
    using vf                  = __m256;
    using vi                  = __m256i;
    static constexpr int W    = 8;
    static constexpr int NA   = 6;
    static constexpr int NR   = 2;
    static constexpr int NREG = 16;
    // Row layout up to 12 rows per KV head. Decode, head_dim 128, one core, ns per key and KV head, row vs
    // transposed layout: G=6 37 vs 82, G=8 50 vs 84, G=12 71 vs 84 (the transposed cost is flat up to 16 rows).
    static constexpr int ROWS_MAX = 12;
    static constexpr int order[8] = {0, 1, 2, 3, 4, 5, 6, 7};

    static vf   zero() { return _mm256_setzero_ps(); }
    static vf   set1(float x) { return _mm256_set1_ps(x); }
    static vf   load(const float * p) { return _mm256_load_ps(p); }
    static void store(float * p, vf v) { _mm256_store_ps(p, v); }
    static vf   fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
    static vf   mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
    static vf   add(vf a, vf b) { return _mm256_add_ps(a, b); }
    static vf   sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
    static vf   max(vf a, vf b) { return _mm256_max_ps(a, b); }
    static vf   ph_load(const fp16_t * p) {
          return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    }

    static vf mask_future(vf s, int32_t t, const int32_t * lim) {
        const __m256i fut =
            _mm256_cmpgt_epi32(_mm256_set1_epi32(t), _mm256_load_si256(reinterpret_cast<const __m256i *>(lim)));
        return _mm256_blendv_ps(s, _mm256_set1_ps(-__builtin_inff()), _mm256_castsi256_ps(fut));
    }
    static vf ninf_to_zero(vf m) {
        return _mm256_andnot_ps(_mm256_cmp_ps(m, _mm256_set1_ps(-__builtin_inff()), _CMP_EQ_OQ), m);
    }

    static float hmax(vf v) {
        __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        x        = _mm_max_ps(x, _mm_movehl_ps(x, x));
        x        = _mm_max_ss(x, _mm_movehdup_ps(x));
        return _mm_cvtss_f32(x);
    }
    static float hsum(vf v) {
        __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        x        = _mm_add_ps(x, _mm_movehl_ps(x, x));
        x        = _mm_add_ss(x, _mm_movehdup_ps(x));
        return _mm_cvtss_f32(x);
    }
    // Lanes >= n become -inf.
    static vf mask_tail(vf s, int n) {
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        return _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), s, _mm256_castsi256_ps(keep));
    }
    // Lane i of the result = sum of the lanes of a[i].
    static vf reduce(const vf * a) {
        const vf t0 = _mm256_hadd_ps(a[0], a[1]);
        const vf t1 = _mm256_hadd_ps(a[2], a[3]);
        const vf t2 = _mm256_hadd_ps(a[4], a[5]);
        const vf t3 = _mm256_hadd_ps(a[6], a[7]);
        const vf u0 = _mm256_hadd_ps(t0, t1); // [a0..a3 low-half sums | a0..a3 high-half sums]
        const vf u1 = _mm256_hadd_ps(t2, t3);
        return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
    }

    // 2^x for x <= 0: 2^round(x) * p(x - round(x)), p a degree-6 fit of 2^f on [-0.5, 0.5] (max relative
    // error 2e-9 in exact arithmetic, 9e-8 in f32). x <= -127 (including -inf) gives exactly 0.
    static vf exp2(vf x) {
        x               = _mm256_max_ps(x, _mm256_set1_ps(-127.0f));
        const vf n      = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const vf f      = _mm256_sub_ps(x, n);
        vf       p      = _mm256_set1_ps(1.5353362e-4f);
        p               = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3398875e-3f));
        p               = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6184369e-3f));
        p               = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5503324e-2f));
        p               = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022648e-1f));
        p               = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
        p               = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
        const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    }
};

#include "backend/cpu/attn-tile-impl.inc"
// uses the helpers of attn-tile-impl.inc
#include "backend/cpu/attn-gather-impl.inc"
// uses the helpers of attn-tile-impl.inc
#include "backend/cpu/attn-colsum-impl.inc"

} // namespace

void attn_tile_avx2(const attn_tile_args & a) {
    switch (a.head_dim) {
    case 64:
        attn_item<simd_avx2, 64>(a);
        break;
    case 128:
        attn_item<simd_avx2, 128>(a);
        break;
    default:
        attn_item<simd_avx2, 0>(a);
        break;
    }
}

int attn_rows_max_avx2(int head_dim) {
    return rows_max<simd_avx2>(head_dim);
}

} // namespace lc

namespace lc {

void attn_gather_avx2(const attn_gather_args & a) {
    attn_gather_entry<simd_avx2>(a);
}

} // namespace lc

namespace lc {

void attn_colsum_avx2(const attn_colsum_args & a) {
    attn_colsum_entry<simd_avx2>(a);
}

} // namespace lc
