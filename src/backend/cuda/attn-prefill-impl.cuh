// Internal to the CUDA attention kernels: the launchers of the prefill variants (one translation unit each,
// so they compile in parallel) and small PTX wrappers shared by them.
#pragma once

#include <cstdint>

#include "backend/cuda/attn-prefill.cuh"
#include "backend/cuda/cuda-common.cuh"

namespace lc::cuda {

// REQUIRES: the argument checks of attn_prefill() passed (head_dim 128, n_head % n_head_kv == 0, n_q > 0).
void attn_prefill_launch_mma_sync(const attn_prefill_args & a, cudaStream_t stream);
// mode: 0 basic, 1 intra-warpgroup overlap, 2 overlap and ping-pong (attn-prefill-wgmma.cu)
void attn_prefill_launch_wgmma(const attn_prefill_args & a, int mode, cudaStream_t stream);

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t smem_u32(const void * p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte asynchronous copy global -> shared; src_bytes 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void * src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif

} // namespace lc::cuda
