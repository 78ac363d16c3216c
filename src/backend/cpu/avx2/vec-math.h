// AVX2 elementwise math shared by CPU kernels: exp (Cephes-style range reduction + degree-6 polynomial,
// max relative error ~2e-7 on [-87, 88], exp(x) = 0 below -87) and SiLU.
#pragma once

#include <immintrin.h>

namespace lc::cpu::avx2 {

inline __m256 exp_ps(__m256 x) {
    const __m256 hi        = _mm256_set1_ps(88.3762626647949f);
    const __m256 lo        = _mm256_set1_ps(-87.3365447504f);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x                      = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    // n = round(x / ln2), r = x - n ln2 (ln2 split in two for accuracy)
    const __m256 n  = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256       r  = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r               = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p        = _mm256_set1_ps(1.9875691500e-4f);
    p               = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p               = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p               = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p               = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p               = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p               = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const __m256  y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(underflow, y);
}

// x / (1 + exp(-x))
inline __m256 silu_ps(__m256 x) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

} // namespace lc::cpu::avx2
