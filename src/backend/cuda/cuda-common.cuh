// Shared pieces of the CUDA backend: the checked-call macro and the device-side helpers (bf16 packing,
// fast exp2) used by more than one kernel file.
#pragma once

#include <cuda_runtime_api.h>

#include "core/log.h"

// Aborts with file:line and the CUDA error name when a runtime call fails (STYLE.md §5).
#define LC_CUDA_CHECK(expr)                                                                                            \
    do {                                                                                                               \
        cudaError_t lc_cuda_err_ = (expr);                                                                             \
        LC_ASSERT(lc_cuda_err_ == cudaSuccess, "CUDA: %s failed: %s", #expr, cudaGetErrorString(lc_cuda_err_));        \
    } while (0)

// After a kernel launch: launch-configuration errors surface through cudaGetLastError().
#define LC_CUDA_CHECK_LAUNCH() LC_CUDA_CHECK(cudaGetLastError())

#ifdef __CUDACC__
#include <cuda_bf16.h>

namespace lc::cuda {

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Two floats -> one register of two bf16 (lo in the low half), round to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ float bf16_lo(uint32_t v) {
    return __uint_as_float(v << 16);
}
__device__ __forceinline__ float bf16_hi(uint32_t v) {
    return __uint_as_float(v & 0xffff0000u);
}

} // namespace lc::cuda
#endif
