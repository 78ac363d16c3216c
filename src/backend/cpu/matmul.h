// Quantized matrix multiplication on the CPU: y = x · Wᵀ with W in its GGUF type and x in fp32.
// Activations are quantized once to the weight's vec_dot type (quant.h) and the integer kernels run on
// register-blocked tiles, threaded over output rows; types without an integer kernel dequantize weight rows
// to fp32 and use FMA dot products.
#pragma once

#include <cstdint>
#include <vector>

#include "core/cpu-features.h"
#include "core/dtype.h"
#include "core/thread-pool.h"

namespace lc::cpu {

struct matmul_weight {
    dtype        type  = dtype::F32;
    const void * data  = nullptr; // [n_out][row_bytes]
    int64_t      n_in  = 0;       // elements per row (ggml ne[0])
    int64_t      n_out = 0;       // rows (ggml ne[1])
    size_t       row_bytes() const { return dtype_row_size(type, n_in); }
};

// isa: AVX2, or AVX-512 (used for the integer tiles when the CPU also has VNNI; AVX2 otherwise).
// x: [n_tok][ldx] fp32 (first n_in used); y: [n_tok][ldy] fp32 (first n_out written).
// scratch grows as needed and is reused between calls. Thread-safety: one call at a time per scratch.
void matmul(const matmul_weight & w, const float * x, int64_t n_tok, int64_t ldx, float * y, int64_t ldy,
            thread_pool & pool, std::vector<uint8_t> & scratch, cpu_isa isa = cpu_isa_best());

// Several products sharing one input (q/k/v, gate/up): the activations are quantized once.
// REQUIRES: every weight has the same type and n_in.
void matmul_multi(const matmul_weight * const * ws, int n_w, const float * x, int64_t n_tok, int64_t ldx,
                  float * const * ys, const int64_t * ldys, thread_pool & pool, std::vector<uint8_t> & scratch,
                  cpu_isa isa = cpu_isa_best());

// Scalar reference of the same product (quantizes x with the reference quantizer, integer dot products in
// exact arithmetic), for tests.
void matmul_ref(const matmul_weight & w, const float * x, int64_t n_tok, int64_t ldx, float * y, int64_t ldy);

} // namespace lc::cpu
