// Scalar reference dequantization of GGUF tensor rows to fp32: the definition every vector and GPU
// dequantizer is tested against. Block layouts are in core/dtype.h.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace lc::ref {

// Types dequantize_row() accepts: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K,
// Q5_K, Q6_K, Q8_K.
bool dequantize_supported(dtype t);

// src: n elements of type t in GGUF layout (dtype_row_size(t, n) bytes, any alignment); dst: n floats.
// REQUIRES: dequantize_supported(t), n % block_size(t) == 0 (aborts otherwise).
void dequantize_row(dtype t, const void * src, float * dst, int64_t n);

void dequantize_row_f16(const fp16_t * src, float * dst, int64_t n);
void dequantize_row_bf16(const bf16_t * src, float * dst, int64_t n);

} // namespace lc::ref
