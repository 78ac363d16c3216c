// AVX-512 VNNI integer GEMM tiles (see quant-avx512.cpp); same contract as avx2::gemm_tiles.
// REQUIRES: the CPU has AVX-512 F/BW/VL/DQ and VNNI (checked by the caller).
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace lc::cpu::avx512 {

bool gemm_tiles(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                size_t a_stride, int64_t n_cols, float * y, int64_t ldy);

// The K-quant part of gemm_tiles (Q4_K, Q5_K, Q6_K x Q8_K; n_in % 256 == 0), in kquant-avx512.cpp.
bool gemm_tiles_k(dtype wt, int64_t n_in, const uint8_t * w, size_t w_stride, int64_t n_rows, const uint8_t * a,
                  size_t a_stride, int64_t n_cols, float * y, int64_t ldy);

} // namespace lc::cpu::avx512
