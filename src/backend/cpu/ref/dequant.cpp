// Scalar reference dequantizers, one loop per GGUF block format, written from the format's definition:
// legacy 32-element blocks (x = d*q [+ m]) and 256-element K-quant super-blocks with packed sub-block scales.
#include "backend/cpu/ref/dequant.h"

#include <cstring>

#include "core/log.h"

namespace lc::ref {

namespace {

inline float h2f(fp16_t h) {
    return fp16_to_fp32(h);
}

void deq_q4_0(const block_q4_0 * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK4_0) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j]      = d * float(int(x[i].qs[j] & 0xf) - 8);
            y[j + 16] = d * float(int(x[i].qs[j] >> 4) - 8);
        }
    }
}

void deq_q4_1(const block_q4_1 * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK4_1) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < 16; ++j) {
            y[j]      = d * float(x[i].qs[j] & 0xf) + m;
            y[j + 16] = d * float(x[i].qs[j] >> 4) + m;
        }
    }
}

uint32_t load_qh(const uint8_t * qh) {
    return uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
}

void deq_q5_0(const block_q5_0 * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK5_0) {
        const float    d  = h2f(x[i].d);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < 16; ++j) {
            const int lo = int(x[i].qs[j] & 0xf) | int((qh >> j) & 1) << 4;
            const int hi = int(x[i].qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
            y[j]         = d * float(lo - 16);
            y[j + 16]    = d * float(hi - 16);
        }
    }
}

void deq_q5_1(const block_q5_1 * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK5_1) {
        const float    d = h2f(x[i].d), m = h2f(x[i].m);
        const uint32_t qh = load_qh(x[i].qh);
        for (int j = 0; j < 16; ++j) {
            const int lo = int(x[i].qs[j] & 0xf) | int((qh >> j) & 1) << 4;
            const int hi = int(x[i].qs[j] >> 4) | int((qh >> (j + 16)) & 1) << 4;
            y[j]         = d * float(lo) + m;
            y[j + 16]    = d * float(hi) + m;
        }
    }
}

void deq_q8_0(const block_q8_0 * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK8_0) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK8_0; ++j) y[j] = d * float(x[i].qs[j]);
    }
}

void deq_q8_1(const block_q8_1 * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK8_1) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < QK8_1; ++j) y[j] = d * float(x[i].qs[j]);
    }
}

// Q2_K: 16 sub-blocks of 16; scales[k] holds the 4-bit scale (low) and 4-bit min (high) of sub-block k.
// Quants are 2 bits: each 128-element half uses 32 bytes of qs, element 32*s + l of the half sits at bits
// 2s..2s+1 of qs[l].
void deq_q2_K(const block_q2_K * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        int         is = 0;
        for (int half = 0; half < 2; ++half) {
            const uint8_t * q = x[i].qs + 32 * half;
            for (int s = 0; s < 4; ++s) {
                for (int part = 0; part < 2; ++part) {
                    const uint8_t sc = x[i].scales[is++];
                    const float   dl = d * float(sc & 0xf), ml = dmin * float(sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * float((q[l + 16 * part] >> (2 * s)) & 3) - ml;
                }
            }
        }
    }
}

// Q3_K: 16 sub-blocks of 16 with 6-bit signed scales (stored +32): low 4 bits in scales[0..7] (nibble
// k/8 of byte k%8), high 2 bits in scales[8..11] (bits 2*(k/4) of byte 8 + k%4). Quants: 2 low bits as in
// Q2_K plus a high bit in hmask (bit g of hmask[l] for group g of 32); a clear high bit subtracts 4.
void deq_q3_K(const block_q3_K * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(x[i].d);
        int         sc[16];
        for (int k = 0; k < 16; ++k) {
            const int lo = k < 8 ? (x[i].scales[k] & 0xf) : (x[i].scales[k - 8] >> 4);
            const int hi = (x[i].scales[8 + k % 4] >> (2 * (k / 4))) & 3;
            sc[k]        = (lo | hi << 4) - 32;
        }
        int is = 0, g = 0;
        for (int half = 0; half < 2; ++half) {
            const uint8_t * q = x[i].qs + 32 * half;
            for (int s = 0; s < 4; ++s, ++g) {
                for (int part = 0; part < 2; ++part) {
                    const float dl = d * float(sc[is++]);
                    for (int l = 0; l < 16; ++l) {
                        const int idx = l + 16 * part;
                        const int q2  = (q[idx] >> (2 * s)) & 3;
                        const int h   = (x[i].hmask[idx] >> g) & 1;
                        *y++          = dl * float(q2 - (h ? 0 : 4));
                    }
                }
            }
        }
    }
}

// 6-bit scale and min of sub-block j (0..7) from the 12-byte packing shared by Q4_K and Q5_K.
inline void scale_min_k4(int j, const uint8_t * q, int & sc, int & m) {
    if (j < 4) {
        sc = q[j] & 63;
        m  = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        m  = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: 8 sub-blocks of 32, x = d*sc*q - dmin*m. qs holds 4 chunks of 64 elements: chunk c uses
// qs[32c..32c+32), low nibbles for sub-block 2c and high nibbles for sub-block 2c+1.
void deq_q4_K(const block_q4_K * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        for (int c = 0; c < 4; ++c) {
            const uint8_t * q = x[i].qs + 32 * c;
            int             sc0, m0, sc1, m1;
            scale_min_k4(2 * c, x[i].scales, sc0, m0);
            scale_min_k4(2 * c + 1, x[i].scales, sc1, m1);
            const float d0 = d * float(sc0), mm0 = dmin * float(m0);
            const float d1 = d * float(sc1), mm1 = dmin * float(m1);
            for (int l = 0; l < 32; ++l) y[l] = d0 * float(q[l] & 0xf) - mm0;
            for (int l = 0; l < 32; ++l) y[l + 32] = d1 * float(q[l] >> 4) - mm1;
            y += 64;
        }
    }
}

// Q5_K: Q4_K plus a 5th bit: bit 2c of qh[l] for the low-nibble element l of chunk c, bit 2c+1 for the
// high-nibble one.
void deq_q5_K(const block_q5_K * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        for (int c = 0; c < 4; ++c) {
            const uint8_t * q = x[i].qs + 32 * c;
            int             sc0, m0, sc1, m1;
            scale_min_k4(2 * c, x[i].scales, sc0, m0);
            scale_min_k4(2 * c + 1, x[i].scales, sc1, m1);
            const float d0 = d * float(sc0), mm0 = dmin * float(m0);
            const float d1 = d * float(sc1), mm1 = dmin * float(m1);
            for (int l = 0; l < 32; ++l) {
                const int lo = int(q[l] & 0xf) + (((x[i].qh[l] >> (2 * c)) & 1) << 4);
                const int hi = int(q[l] >> 4) + (((x[i].qh[l] >> (2 * c + 1)) & 1) << 4);
                y[l]         = d0 * float(lo) - mm0;
                y[l + 32]    = d1 * float(hi) - mm1;
            }
            y += 64;
        }
    }
}

// Q6_K: 16 sub-blocks of 16 with int8 scales, x = d*scale*(q-32); q = 4 low bits from ql, 2 high bits
// from qh. Each 128-element half uses 64 bytes of ql, 32 of qh and 8 scales.
void deq_q6_K(const block_q6_K * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float     d  = h2f(x[i].d);
        const uint8_t * ql = x[i].ql;
        const uint8_t * qh = x[i].qh;
        const int8_t *  sc = x[i].scales;
        for (int half = 0; half < 2; ++half) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = int(ql[l] & 0xf) | int((qh[l] >> 0) & 3) << 4;
                const int q2 = int(ql[l + 32] & 0xf) | int((qh[l] >> 2) & 3) << 4;
                const int q3 = int(ql[l] >> 4) | int((qh[l] >> 4) & 3) << 4;
                const int q4 = int(ql[l + 32] >> 4) | int((qh[l] >> 6) & 3) << 4;
                y[l]         = d * float(sc[is + 0]) * float(q1 - 32);
                y[l + 32]    = d * float(sc[is + 2]) * float(q2 - 32);
                y[l + 64]    = d * float(sc[is + 4]) * float(q3 - 32);
                y[l + 96]    = d * float(sc[is + 6]) * float(q4 - 32);
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

void deq_q8_K(const block_q8_K * x, float * y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += QK_K) {
        float d;
        std::memcpy(&d, &x[i].d, sizeof(d));
        for (int j = 0; j < QK_K; ++j) y[j] = d * float(x[i].qs[j]);
    }
}

} // namespace

bool dequantize_supported(dtype t) {
    switch (t) {
    case dtype::F32:
    case dtype::F16:
    case dtype::BF16:
    case dtype::Q4_0:
    case dtype::Q4_1:
    case dtype::Q5_0:
    case dtype::Q5_1:
    case dtype::Q8_0:
    case dtype::Q8_1:
    case dtype::Q2_K:
    case dtype::Q3_K:
    case dtype::Q4_K:
    case dtype::Q5_K:
    case dtype::Q6_K:
    case dtype::Q8_K:
        return true;
    }
    return false;
}

void dequantize_row_f16(const fp16_t * src, float * dst, int64_t n) {
    const uint8_t * p = reinterpret_cast<const uint8_t *>(src);
    for (int64_t i = 0; i < n; ++i) {
        fp16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = fp16_to_fp32(h);
    }
}

void dequantize_row_bf16(const bf16_t * src, float * dst, int64_t n) {
    const uint8_t * p = reinterpret_cast<const uint8_t *>(src);
    for (int64_t i = 0; i < n; ++i) {
        bf16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_fp32(h);
    }
}

void dequantize_row(dtype t, const void * src, float * dst, int64_t n) {
    const dtype_traits tr = dtype_info(t);
    LC_ASSERT(dequantize_supported(t), "dequantize_row: type %s is not supported", tr.name);
    LC_ASSERT(n >= 0 && n % tr.block_size == 0, "dequantize_row: n %lld is not a multiple of %s's block size %lld",
              (long long)n, tr.name, (long long)tr.block_size);
    const int64_t nb = n / tr.block_size;
    switch (t) {
    case dtype::F32:
        std::memcpy(dst, src, size_t(n) * sizeof(float));
        break;
    case dtype::F16:
        dequantize_row_f16(static_cast<const fp16_t *>(src), dst, n);
        break;
    case dtype::BF16:
        dequantize_row_bf16(static_cast<const bf16_t *>(src), dst, n);
        break;
    case dtype::Q4_0:
        deq_q4_0(static_cast<const block_q4_0 *>(src), dst, nb);
        break;
    case dtype::Q4_1:
        deq_q4_1(static_cast<const block_q4_1 *>(src), dst, nb);
        break;
    case dtype::Q5_0:
        deq_q5_0(static_cast<const block_q5_0 *>(src), dst, nb);
        break;
    case dtype::Q5_1:
        deq_q5_1(static_cast<const block_q5_1 *>(src), dst, nb);
        break;
    case dtype::Q8_0:
        deq_q8_0(static_cast<const block_q8_0 *>(src), dst, nb);
        break;
    case dtype::Q8_1:
        deq_q8_1(static_cast<const block_q8_1 *>(src), dst, nb);
        break;
    case dtype::Q2_K:
        deq_q2_K(static_cast<const block_q2_K *>(src), dst, nb);
        break;
    case dtype::Q3_K:
        deq_q3_K(static_cast<const block_q3_K *>(src), dst, nb);
        break;
    case dtype::Q4_K:
        deq_q4_K(static_cast<const block_q4_K *>(src), dst, nb);
        break;
    case dtype::Q5_K:
        deq_q5_K(static_cast<const block_q5_K *>(src), dst, nb);
        break;
    case dtype::Q6_K:
        deq_q6_K(static_cast<const block_q6_K *>(src), dst, nb);
        break;
    case dtype::Q8_K:
        deq_q8_K(static_cast<const block_q8_K *>(src), dst, nb);
        break;
    }
}

} // namespace lc::ref
