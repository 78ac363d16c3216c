// AVX-512 merge similarity kernel (merge-sim.h): 16 lanes, micro-tile of 12 C rows x 2 vectors of E rows (24
// accumulators; the broadcasts fold into the FMAs as {1to16} memory operands). The algorithm lives in
// backend/cpu/merge-sim-impl.inc.
#include <immintrin.h>

#include <algorithm>

#include "backend/cpu/merge-sim.h"

// GCC 12's avx512fintrin.h passes a self-initialised "undefined" vector to the builtin of _mm512_max_ps, which
// -Wuninitialized reports at every inlined use; the warning is about the header, not this code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace lc {

namespace {

struct msim_avx512 {
    using vf                = __m512;
    using vi                = __m512i;
    static constexpr int W  = 16;
    static constexpr int NA = 12;
    static constexpr int NR = 2;

    static vf   zero() { return _mm512_setzero_ps(); }
    static vf   set1(float x) { return _mm512_set1_ps(x); }
    static vf   load(const float * p) { return _mm512_load_ps(p); }
    static vi   load_i(const int32_t * p) { return _mm512_load_si512(p); }
    static void store(float * p, vf v) { _mm512_store_ps(p, v); }
    static void store_i(int32_t * p, vi v) { _mm512_store_si512(p, v); }
    static vf   fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
    static vf   max(vf a, vf b) { return _mm512_max_ps(a, b); }
    static bool any_gt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) != 0; }
    static void update(vf s, vf & mv, vi & mi, int32_t c) {
        const __mmask16 k = _mm512_cmp_ps_mask(s, mv, _CMP_GT_OQ);
        mv                = _mm512_mask_mov_ps(mv, k, s);
        mi                = _mm512_mask_mov_epi32(mi, k, _mm512_set1_epi32(c));
    }
};

#include "backend/cpu/merge-sim-impl.inc"

} // namespace

void max_dot_argmax_avx512(const max_dot_args & a) {
    max_dot_entry<msim_avx512>(a);
}

} // namespace lc
