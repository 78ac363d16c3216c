// AVX2 + FMA merge similarity kernel (merge-sim.h): 8 lanes, micro-tile of 6 C rows x 2 vectors of E rows (12
// accumulators, 2 loads and 6 broadcasts per d). The algorithm lives in backend/cpu/merge-sim-impl.inc.
#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/merge-sim.h"

namespace lc {

namespace {

struct msim_avx2 {
    using vf                = __m256;
    using vi                = __m256i;
    static constexpr int W  = 8;
    static constexpr int NA = 6;
    static constexpr int NR = 2;

    static vf   zero() { return _mm256_setzero_ps(); }
    static vf   set1(float x) { return _mm256_set1_ps(x); }
    static vf   load(const float * p) { return _mm256_load_ps(p); }
    static vi   load_i(const int32_t * p) { return _mm256_load_si256(reinterpret_cast<const __m256i *>(p)); }
    static void store(float * p, vf v) { _mm256_store_ps(p, v); }
    static void store_i(int32_t * p, vi v) { _mm256_store_si256(reinterpret_cast<__m256i *>(p), v); }
    static vf   fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
    static vf   max(vf a, vf b) { return _mm256_max_ps(a, b); }
    static bool any_gt(vf a, vf b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) != 0; }
    static void update(vf s, vf & mv, vi & mi, int32_t c) {
        const vf k = _mm256_cmp_ps(s, mv, _CMP_GT_OQ);
        mv         = _mm256_blendv_ps(mv, s, k);
        mi         = _mm256_castps_si256(
                    _mm256_blendv_ps(_mm256_castsi256_ps(mi), _mm256_castsi256_ps(_mm256_set1_epi32(c)), k));
    }
};

#include "backend/cpu/merge-sim-impl.inc"

} // namespace

void max_dot_argmax_avx2(const max_dot_args & a) {
    max_dot_entry<msim_avx2>(a);
}

} // namespace lc
