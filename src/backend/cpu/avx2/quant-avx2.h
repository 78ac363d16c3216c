// AVX2 activation quantization and integer GEMM tiles (see quant-avx2.cpp and kquant-avx2.cpp).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace lc::cpu::avx2 {

void quantize_row_q8_0(const float * x, block_q8_0 * y, int64_t n);
void quantize_row_q8_1(const float * x, block_q8_1 * y, int64_t n);
void quantize_row_q8_K(const float * x, block_q8_K * y, int64_t n); // kquant-avx2.cpp

// y[c * ldy + r] = dot(weight row r, activation row c) for r < n_rows, c < n_cols. Weight rows are n_in
// elements of type wt, w_stride bytes apart; activation rows are in vec_dot_type(wt), a_stride bytes apart.
// Returns false for weight types without an integer kernel.
bool gemm_tiles(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                size_t a_stride, int64_t n_cols, float * y, int64_t ldy);

// The K-quant part of gemm_tiles (Q4_K, Q5_K, Q6_K x Q8_K; n_in % 256 == 0), in kquant-avx2.cpp.
bool gemm_tiles_k(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                  size_t a_stride, int64_t n_cols, float * y, int64_t ldy);

} // namespace lc::cpu::avx2
