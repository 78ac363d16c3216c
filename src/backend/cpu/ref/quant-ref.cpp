// Scalar reference for activation quantization (Q8_0, Q8_1) and the integer dot products of weight blocks
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

} // namespace lc::cpu::ref
