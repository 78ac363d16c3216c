// Internal to the CUDA kernels that score 64 fixed rows against a stream of 64-row tiles on mma.sync (the
// column-sum pass of attn-colsum.cu, D2O's similarity search of kv-evict.cu): the double-buffered loop of
// 16 x 64 bf16 dot products per warp.
#pragma once

#include <cstdint>

#include "backend/cuda/attn-prefill-impl.cuh"

namespace lc::cuda {

#ifdef __CUDACC__
// A block of 4 warps (128 threads). The fixed tile, 64 rows of D bf16 in tile_off<D> layout, is at s_a; the streamed
// tiles (same layout) alternate between s_b (even steps) and s_b + 64 * D * 2 (odd steps). Before the call, the
// fixed tile and streamed tile 0 must be issued on cp.async and committed. load(it, buf) issues streamed tile it
// into buffer buf (cp.async, the helper commits it); epi(it, buf, s) then takes the warp's dot products
// s = A[16 warp .. 16 warp + 15] . B^T, as mma.sync accumulators: s[j][0..1] are row lane / 4, columns
// 8 j + 2 (lane % 4) + {0, 1}, s[j][2..3] the same columns of row lane / 4 + 8. The block synchronises before and
// after each epi, so buffer buf may be overwritten once epi returns.
template <int D, typename Load, typename Epi>
__device__ __forceinline__ void mma_rows16x64_stream(uint32_t s_a, uint32_t s_b, int n_it, Load && load, Epi && epi) {
    constexpr int KD         = D / 16;
    constexpr int tile_bytes = 64 * D * 2;
    const int     warp       = int(threadIdx.x >> 5);
    const int     lane       = int(threadIdx.x & 31);
    uint32_t      af[KD][4];
    for (int it = 0; it < n_it; ++it) {
        const int buf = it & 1;
        if (it + 1 < n_it) {
            load(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; ++kk)
                ldmatrix_x4(s_a + tile_off<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), af[kk][0], af[kk][1],
                            af[kk][2], af[kk][3]);
        }
        const uint32_t s_bb = s_b + buf * tile_bytes;
        float          s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int nn = 0; nn < 4; ++nn) {
                uint32_t  b0, b1, b2, b3;
                const int br = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(s_bb + tile_off<D>(br, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_bf16(s[2 * nn], af[kk], b0, b1);
                mma_bf16(s[2 * nn + 1], af[kk], b2, b3);
            }
        }
        epi(it, buf, s);
        __syncthreads();
    }
}
#endif

} // namespace lc::cuda
