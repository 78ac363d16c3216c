// IEEE half and bfloat16 conversions (scalar, exact round-to-nearest-even), used by the reference code
// and by tails of vector loops.
#pragma once

#include <cstdint>
#include <cstring>

namespace lc {

using fp16_t = uint16_t;
using bf16_t = uint16_t;

inline float fp32_from_bits(uint32_t w) {
    float f;
    std::memcpy(&f, &w, 4);
    return f;
}

inline uint32_t fp32_to_bits(float f) {
    uint32_t w;
    std::memcpy(&w, &f, 4);
    return w;
}

inline float fp16_to_fp32(fp16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t       exp  = (h >> 10) & 0x1fu;
    uint32_t       mant = h & 0x3ffu;
    if (exp == 0) {
        if (mant == 0) return fp32_from_bits(sign);
        // subnormal: normalise
        int e = -1;
        do {
            mant <<= 1;
            ++e;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3ffu;
        return fp32_from_bits(sign | uint32_t(127 - 15 - e) << 23 | mant << 13);
    }
    if (exp == 0x1f) return fp32_from_bits(sign | 0x7f800000u | mant << 13);
    return fp32_from_bits(sign | (exp + 127 - 15) << 23 | mant << 13);
}

inline fp16_t fp32_to_fp16(float f) {
    const uint32_t x    = fp32_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) return fp16_t(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u)); // inf/nan
    if (absx >= 0x477ff000u) return fp16_t(sign | 0x7c00u);                                      // overflow
    if (absx < 0x38800000u) {                                                                    // subnormal or 0
        if (absx < 0x33000000u) return fp16_t(sign);
        const uint32_t e     = absx >> 23;
        const uint32_t m     = (absx & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e; // 14..24
        uint32_t       r     = m >> shift;
        const uint32_t rem   = m & ((1u << shift) - 1);
        const uint32_t half  = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return fp16_t(sign | r);
    }
    uint32_t       r   = ((absx >> 13) - ((127 - 15) << 10));
    const uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return fp16_t(sign | r);
}

inline float bf16_to_fp32(bf16_t h) {
    return fp32_from_bits(uint32_t(h) << 16);
}

inline bf16_t fp32_to_bf16(float f) {
    uint32_t x = fp32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return bf16_t((x >> 16) | 0x40u); // quiet nan
    x += 0x7fffu + ((x >> 16) & 1u);
    return bf16_t(x >> 16);
}

} // namespace lc
