// Scalar reference for activation quantization (Q8_0, Q8_1, Q8_K) and the integer dot products of weight blocks
// with them. Every vector kernel in avx2/ and avx512/ is tested against these.
#include <cmath>

#include "backend/cpu/quant.h"

namespace lc::cpu::ref {

namespace {
// Round half to even, as the vector kernels do (_MM_FROUND_TO_NEAREST_INT).
inline int round_even(float v) {
    return int(std::nearbyint(v));
}

template <typename block> float quantize_block(const float * x, block & y) {
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d  = amax / 127.0f;
    const float id = d != 0.0f ? 127.0f / amax : 0.0f;
    y.d            = fp32_to_fp16(d);
    int sum        = 0;
    for (int j = 0; j < 32; ++j) {
        y.qs[j] = int8_t(round_even(x[j] * id));
        sum += y.qs[j];
    }
    return d * float(sum);
}
} // namespace

void quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n) {
    for (int64_t i = 0; i < n / QK8_0; ++i) quantize_block(x + i * QK8_0, y[i]);
}

void quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n) {
    for (int64_t i = 0; i < n / QK8_1; ++i) y[i].s = fp32_to_fp16(quantize_block(x + i * QK8_1, y[i]));
}

float vec_dot_q4_0_q8_0(int64_t n, const block_q4_0 * w, const block_q8_0 * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / 32; ++i) {
        int s = 0;
        for (int j = 0; j < 16; ++j) {
            s += (int(w[i].qs[j] & 0xf) - 8) * a[i].qs[j];
            s += (int(w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
        }
        acc += double(fp16_to_fp32(w[i].d)) * fp16_to_fp32(a[i].d) * s;
    }
    return float(acc);
}

float vec_dot_q4_1_q8_1(int64_t n, const block_q4_1 * w, const block_q8_1 * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / 32; ++i) {
        int s = 0;
        for (int j = 0; j < 16; ++j) {
            s += int(w[i].qs[j] & 0xf) * a[i].qs[j];
            s += int(w[i].qs[j] >> 4) * a[i].qs[j + 16];
        }
        acc += double(fp16_to_fp32(w[i].d)) * fp16_to_fp32(a[i].d) * s;
        acc += double(fp16_to_fp32(w[i].m)) * fp16_to_fp32(a[i].s);
    }
    return float(acc);
}

float vec_dot_q5_0_q8_0(int64_t n, const block_q5_0 * w, const block_q8_0 * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / 32; ++i) {
        uint32_t qh =
            uint32_t(w[i].qh[0]) | uint32_t(w[i].qh[1]) << 8 | uint32_t(w[i].qh[2]) << 16 | uint32_t(w[i].qh[3]) << 24;
        int s = 0;
        for (int j = 0; j < 16; ++j) {
            const int lo = int((w[i].qs[j] & 0xf) | ((qh >> j) & 1u) << 4) - 16;
            const int hi = int((w[i].qs[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4) - 16;
            s += lo * a[i].qs[j] + hi * a[i].qs[j + 16];
        }
        acc += double(fp16_to_fp32(w[i].d)) * fp16_to_fp32(a[i].d) * s;
    }
    return float(acc);
}

float vec_dot_q8_0_q8_0(int64_t n, const block_q8_0 * w, const block_q8_0 * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / 32; ++i) {
        int s = 0;
        for (int j = 0; j < 32; ++j) s += int(w[i].qs[j]) * a[i].qs[j];
        acc += double(fp16_to_fp32(w[i].d)) * fp16_to_fp32(a[i].d) * s;
    }
    return float(acc);
}

void quantize_row_q8_K(const float * x, block_q8_K * y, int64_t n) {
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float amax = 0.0f;
        for (int j = 0; j < QK_K; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d         = amax / 127.0f;
        for (int j = 0; j < QK_K; ++j) y[i].qs[j] = int8_t(round_even(x[j] * id));
        for (int g = 0; g < QK_K / 16; ++g) {
            int s = 0;
            for (int j = 0; j < 16; ++j) s += y[i].qs[16 * g + j];
            y[i].bsums[g] = int16_t(s);
        }
    }
}

namespace {
// 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block (same packing as ref/dequant.cpp).
inline void scale_min_k4(int j, const uint8_t * q, int & sc, int & m) {
    if (j < 4) {
        sc = q[j] & 63;
        m  = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        m  = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K and Q5_K: x = d*sc_j*q - dmin*m_j over sub-blocks j of 32, so a block contributes
// d*da*sum_j sc_j*(q·a)_j - dmin*da*sum_j m_j*(bsums[2j] + bsums[2j+1]). qh = nullptr for Q4_K.
template <typename block> double dot_k4(const block & w, const block_q8_K & a, const uint8_t * qh) {
    int64_t sum_q = 0, sum_m = 0;
    for (int j = 0; j < 8; ++j) {
        int sc, m;
        scale_min_k4(j, w.scales, sc, m);
        const uint8_t * q     = w.qs + 32 * (j / 2);
        const int       shift = 4 * (j % 2);
        int             s     = 0;
        for (int l = 0; l < 32; ++l) {
            int v = (q[l] >> shift) & 0xf;
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            s += v * a.qs[32 * j + l];
        }
        sum_q += int64_t(sc) * s;
        sum_m += int64_t(m) * (a.bsums[2 * j] + a.bsums[2 * j + 1]);
    }
    return double(fp16_to_fp32(w.d)) * a.d * double(sum_q) - double(fp16_to_fp32(w.dmin)) * a.d * double(sum_m);
}
} // namespace

float vec_dot_q4_K_q8_K(int64_t n, const block_q4_K * w, const block_q8_K * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / QK_K; ++i) acc += dot_k4(w[i], a[i], nullptr);
    return float(acc);
}

float vec_dot_q5_K_q8_K(int64_t n, const block_q5_K * w, const block_q8_K * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / QK_K; ++i) acc += dot_k4(w[i], a[i], w[i].qh);
    return float(acc);
}

// Q6_K: x = d*sc_s*(q - 32) over sub-blocks s of 16; element e = 128h + 32k + l (h < 2, k < 4, l < 32) has
// its low 4 bits in ql[64h + l + 32(k&1)] (nibble k>>1) and its high 2 bits at bit 2k of qh[32h + l].
float vec_dot_q6_K_q8_K(int64_t n, const block_q6_K * w, const block_q8_K * a) {
    double acc = 0.0;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        int64_t sum = 0;
        for (int s = 0; s < QK_K / 16; ++s) {
            int ss = 0;
            for (int e = 16 * s; e < 16 * s + 16; ++e) {
                const int h = e / 128, k = (e % 128) / 32, l = e % 32;
                const int lo = (w[i].ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0xf;
                const int hi = (w[i].qh[32 * h + l] >> (2 * k)) & 3;
                ss += (lo | hi << 4) * a[i].qs[e];
            }
            sum += int64_t(w[i].scales[s]) * (ss - 32 * a[i].bsums[s]);
        }
        acc += double(fp16_to_fp32(w[i].d)) * a[i].d * double(sum);
    }
    return float(acc);
}

} // namespace lc::cpu::ref
