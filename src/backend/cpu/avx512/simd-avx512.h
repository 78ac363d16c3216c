// Small AVX-512 helpers shared by the AVX-512 kernels: horizontal sum, fp16 scalars, nibble and bit unpacking,
// two 256-bit halves joined into one register. Internal linkage on purpose (see tile-walk.h).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "core/fp16.h"

// GCC 12's AVX-512 insert intrinsics pass an undefined source vector to the builtin and warn about it
// (-Wmaybe-uninitialized) at every inlined use; the upper lanes are always written.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace lc::cpu::avx512 {
namespace {

inline float h2f(fp16_t h) {
    return _cvtsh_ss(h);
}

inline float hsum(__m512 v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128       s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s              = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s              = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 16 nibble bytes -> 32 values 0..15 in element order (low nibbles = elements 0..15).
inline __m256i nibbles(const uint8_t * qs) {
    const __m128i x = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(0x0f));
}

// Byte j = 0xff if bit j of the 32-bit mask is set.
inline __m256i bits_to_bytes(uint32_t bits) {
    return _mm256_movm_epi8(__mmask32(bits));
}

inline __m512i join(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1);
}
inline __m512 join(float lo, float hi) {
    return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

} // namespace
} // namespace lc::cpu::avx512
