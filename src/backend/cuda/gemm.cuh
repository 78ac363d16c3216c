// bf16 matrix products on the GPU through cuBLASLt: y = x · Wᵀ (+ y), bf16 operands, f32 accumulation and f32
// output, the layout of the CPU's cpu::matmul (weights row-major [n_out][n_in], activations [n_tok][n_in]).
// beta = 1 folds the residual add into the product (x_resid += attn · Woᵀ).
#pragma once

#include <cstdint>
#include <memory>

#include <cuda_runtime_api.h>

#include "core/fp16.h"

namespace lc::cuda {

// Thread-safety: one call at a time per runner (it owns a cuBLASLt handle, a workspace and a plan cache).
// Plans (layouts and the heuristic's algorithm) are cached per shape, so a CUDA graph can capture run().
class gemm_runner {
  public:
    gemm_runner();
    ~gemm_runner();
    gemm_runner(const gemm_runner &)             = delete;
    gemm_runner & operator=(const gemm_runner &) = delete;

    // y[t][o] = sum_i x[t][i] * w[o][i] + beta * y[t][o] for t < n_tok, o < n_out.
    //   w: [n_out][n_in] bf16 (row stride n_in); x: [n_tok][ldx] bf16 (first n_in used); y: [n_tok][ldy] f32
    void run(const bf16_t * w, int64_t n_out, int64_t n_in, const bf16_t * x, int64_t ldx, int64_t n_tok, float * y,
             int64_t ldy, float beta, cudaStream_t stream);

  private:
    struct impl;
    std::unique_ptr<impl> p_;
};

} // namespace lc::cuda
