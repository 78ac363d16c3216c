// Small AVX2 helpers shared by the AVX2 kernels: horizontal sums, fp16 scalars, nibble and bit unpacking.
// Internal linkage on purpose (see tile-walk.h): every including translation unit gets its own copy.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "core/fp16.h"

namespace lc::cpu::avx2 {
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s        = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s        = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s         = _mm_hadd_epi32(s, s);
    s         = _mm_hadd_epi32(s, s);
    return _mm_cvtsi128_si32(s);
}

inline float h2f(fp16_t h) {
    return _cvtsh_ss(h);
}

// 16 nibble bytes -> 32 values 0..15 in element order (low nibbles = elements 0..15, high = 16..31).
inline __m256i nibbles(const uint8_t * qs) {
    const __m128i x = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(0x0f));
}

// Byte j = 0xff if bit j of the 32-bit mask is set.
inline __m256i bits_to_bytes(uint32_t bits) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                                          3, 3, 3, 3, 3, 3);
    __m256i       v    = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), shuf);
    v                  = _mm256_or_si256(v, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(v, _mm256_set1_epi64x(-1));
}

} // namespace
} // namespace lc::cpu::avx2
