// Activation quantization and quantized dot products on the CPU. Weights stay in their GGUF types; the
// activations of a matmul are quantized to the type the weight's integer kernel consumes (its "vec_dot type").
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace lc::cpu {

// The activation type a weight type multiplies against: Q8_1 for Q4_1 (its min term needs the activation sum),
// Q8_0 for Q4_0/Q5_0/Q8_0, F32 for every type without an integer kernel yet (dequantize-and-FMA path).
dtype vec_dot_type(dtype weight_type);

// x: n floats (n % 32 == 0) -> blocks of the given type. Round to nearest, ties to even; d = amax / 127.
void quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n);
void quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n);

namespace ref {
void  quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n);
void  quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n);
float vec_dot_q4_0_q8_0(int64_t n, const block_q4_0 * w, const block_q8_0 * a);
float vec_dot_q4_1_q8_1(int64_t n, const block_q4_1 * w, const block_q8_1 * a);
float vec_dot_q5_0_q8_0(int64_t n, const block_q5_0 * w, const block_q8_0 * a);
float vec_dot_q8_0_q8_0(int64_t n, const block_q8_0 * w, const block_q8_0 * a);
} // namespace ref

} // namespace lc::cpu
