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

// mma.sync building blocks (attn-prefill.cu, attn-sparse-prefill.cu, vslash-index.cu).
// Byte offset of 16-byte chunk c (0..D/8-1) of row r in a [64][D] bf16 tile; the XOR swizzle makes the 8 rows
// that one ldmatrix phase reads fall in 8 different bank groups.
template <int D> __device__ __forceinline__ uint32_t tile_off(int r, int c) {
    return r * (D * 2) + ((c ^ (r & 7)) << 4);
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t addr, uint32_t & r0, uint32_t & r1, uint32_t & r2, uint32_t & r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t addr, uint32_t & r0, uint32_t & r1, uint32_t & r2,
                                                  uint32_t & r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

} // namespace lc::cuda
