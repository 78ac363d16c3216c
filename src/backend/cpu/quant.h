// Activation quantization and quantized dot products on the CPU. Weights stay in their GGUF types; the
// activations of a matmul are quantized to the type the weight's integer kernel consumes (its "vec_dot type").
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace lc::cpu {

// The activation type a weight type multiplies against: Q8_1 for Q4_1 (its min term needs the activation sum),
// Q8_0 for Q4_0/Q5_0/Q8_0, Q8_K for Q4_K/Q5_K/Q6_K (their min and -32 offset terms use the block's bsums),
// F32 for every type without an integer kernel yet (dequantize-and-FMA path).
dtype vec_dot_type(dtype weight_type);

// x: n floats (n % 32 == 0) -> blocks of the given type. Round to nearest, ties to even; d = amax / 127.
void quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n);
void quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n);
// x: n floats (n % 256 == 0) -> Q8_K blocks. d = amax / 127 >= 0 (never negative), q = round_even(x * 127 / amax)
// in [-127, 127], bsums[j] = sum of q[16j .. 16j+16). An all-zero block has d = 0 and q = 0.
void quantize_row_q8_K(const float * x, block_q8_K * y, int64_t n);

namespace ref {
void  quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n);
void  quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n);
float vec_dot_q4_0_q8_0(int64_t n, const block_q4_0 * w, const block_q8_0 * a);
float vec_dot_q4_1_q8_1(int64_t n, const block_q4_1 * w, const block_q8_1 * a);
float vec_dot_q5_0_q8_0(int64_t n, const block_q5_0 * w, const block_q8_0 * a);
float vec_dot_q8_0_q8_0(int64_t n, const block_q8_0 * w, const block_q8_0 * a);
void  quantize_row_q8_K(const float * x, block_q8_K * y, int64_t n);
// n % 256 == 0. Exact integer sums per sub-block, combined with the block scales in double.
float vec_dot_q4_K_q8_K(int64_t n, const block_q4_K * w, const block_q8_K * a);
float vec_dot_q5_K_q8_K(int64_t n, const block_q5_K * w, const block_q8_K * a);
float vec_dot_q6_K_q8_K(int64_t n, const block_q6_K * w, const block_q8_K * a);
} // namespace ref

} // namespace lc::cpu
