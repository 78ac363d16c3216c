// The 6-bit scale/min packing of Q4_K and Q5_K blocks, unpacked with scalar bit operations; shared by the
// K-quant kernels of every ISA (internal linkage on purpose, see tile-walk.h).
#pragma once

#include <cstdint>
#include <cstring>

namespace lc::cpu {
namespace {

// Scales and mins of the 8 sub-blocks of a Q4_K/Q5_K block as bytes (byte j = sub-block j) from their 12-byte
// 6-bit packing: bytes 0-3 hold sc0-3 (low 6 bits), bytes 4-7 m0-3, bytes 8-11 the low 4 bits of sc4-7 (low
// nibble) and m4-7 (high nibble), whose top 2 bits are the top bits of bytes 0-3 (scales) and 4-7 (mins).
inline void unpack_scales_k4(const uint8_t * q, uint64_t & sc, uint64_t & m) {
    uint32_t u[3];
    std::memcpy(u, q, 12);
    const uint32_t sc_lo = u[0] & 0x3f3f3f3fu, m_lo = u[1] & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    const uint32_t m_hi  = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    sc                   = uint64_t(sc_lo) | uint64_t(sc_hi) << 32;
    m                    = uint64_t(m_lo) | uint64_t(m_hi) << 32;
}

} // namespace
} // namespace lc::cpu
