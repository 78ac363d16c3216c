// MagicPIG hybrid decode, device side (see magicpig-hybrid.cuh): the SimHash product as a tiled f32 kernel that keeps
// the CPU's fused multiply-add order per dot product, the small dense part as one warp per query head, and the
// log-sum-exp merge of two partial states.
#include "backend/cuda/magicpig-hybrid.cuh"

#include <cmath>

#include "backend/cuda/cuda-common.cuh"

namespace lc::cuda {

namespace {

constexpr int hash_rows    = 64;  // rows per block
constexpr int hash_cols    = 64;  // columns per block at most (whole tables only)
constexpr int hash_threads = 256; // 32 column pairs x 8 row groups of 8 rows

// Block (blockIdx.x: tables tile, blockIdx.y: rows tile). Shared: x tile [64][D] f32 centred, w tile [D][64] f32,
// sign bits [64][64] u8.
__global__ void __launch_bounds__(hash_threads) hash_kernel(mpig_hash_args a, int tables_per_tile) {
    extern __shared__ float smem[];
    const int D = a.D, K = a.K, L = a.L;
    float *   xs  = smem;                                   // [64][D]
    float *   ws  = xs + size_t(hash_rows) * D;             // [D][64]
    uint8_t * sg  = reinterpret_cast<uint8_t *>(ws + size_t(D) * hash_cols); // [64][64]
    const int t0  = blockIdx.x * tables_per_tile;
    const int nt  = min(tables_per_tile, L - t0);
    const int nc  = nt * K, c0 = t0 * K, n_col = K * L;
    const int64_t r0 = int64_t(blockIdx.y) * hash_rows;
    const int     nr = int(a.n - r0 < hash_rows ? a.n - r0 : int64_t(hash_rows));
    const int     tid = threadIdx.x;

    for (int i = tid; i < hash_rows * D; i += hash_threads) {
        const int r = i / D, d = i % D;
        float     v = 0.f;
        if (r < nr) {
            v = __bfloat162float(reinterpret_cast<const __nv_bfloat16 *>(a.x)[(r0 + r) * a.x_stride + d]);
            if (a.mu) v = v - a.mu[d];
        }
        xs[i] = v;
    }
    for (int i = tid; i < D * hash_cols; i += hash_threads) {
        const int d = i / hash_cols, c = i % hash_cols;
        ws[i]       = c < nc ? a.w[size_t(d) * n_col + c0 + c] : 0.f;
    }
    __syncthreads();
    if (a.norm && blockIdx.x == 0 && tid < nr) {
        float s = 0.f;
        for (int d = 0; d < D; ++d) s = fmaf(xs[tid * D + d], xs[tid * D + d], s);
        a.norm[r0 + tid] = sqrtf(s);
    }
    const int tx = tid % 32, ty = tid / 32; // columns 2tx, 2tx+1; rows 8ty..8ty+7
    float     acc[8][2];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i][0] = acc[i][1] = 0.f;
    for (int d = 0; d < D; ++d) {
        const float2 wv = *reinterpret_cast<const float2 *>(ws + d * hash_cols + 2 * tx);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const float xv = xs[(ty * 8 + i) * D + d];
            acc[i][0]      = fmaf(xv, wv.x, acc[i][0]);
            acc[i][1]      = fmaf(xv, wv.y, acc[i][1]);
        }
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        sg[(ty * 8 + i) * hash_cols + 2 * tx]     = acc[i][0] > 0.f;
        sg[(ty * 8 + i) * hash_cols + 2 * tx + 1] = acc[i][1] > 0.f;
    }
    __syncthreads();
    for (int i = tid; i < nt * hash_rows; i += hash_threads) {
        const int tt = i / hash_rows, r = i % hash_rows;
        if (r >= nr) continue;
        uint32_t code = 0;
        for (int j = 0; j < K; ++j) code |= uint32_t(sg[r * hash_cols + tt * K + j]) << j;
        const int64_t row = r0 + r;
        if (a.code_t)
            a.codes[int64_t(t0 + tt) * a.n + row] = uint16_t(code);
        else
            a.codes[row * L + t0 + tt] = uint16_t(code);
    }
}

// One block: D x G threads, group g sums rows g, g + G, ... in double; the groups are added in shared memory.
__global__ void mean_kernel(const __nv_bfloat16 * x, int64_t n, int64_t stride, int D, float * mu) {
    __shared__ double part[1024];
    const int         d = threadIdx.x % D, g = threadIdx.x / D, G = blockDim.x / D;
    double            s = 0.0;
    for (int64_t r = g; r < n; r += G) s += double(__bfloat162float(x[r * stride + d]));
    part[threadIdx.x] = s;
    __syncthreads();
    if (g == 0) {
        for (int j = 1; j < G; ++j) s += part[j * D + d];
        mu[d] = n > 0 ? float(s / double(n)) : 0.f;
    }
}

// Grid (n_head_kv, n_seq), one warp per query head of the group; each lane holds 4 of the 128 dims.
__global__ void dense_kernel(mpig_dense_args a) {
    const int hk = blockIdx.x, s = blockIdx.y, G = a.n_head / a.n_head_kv;
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (w >= G) return;
    const int             h = hk * G + w, D = 128;
    const __nv_bfloat16 * q = reinterpret_cast<const __nv_bfloat16 *>(a.q) + (int64_t(s) * a.n_head + h) * D;
    float                 qv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) qv[i] = __bfloat162float(q[lane * 4 + i]);
    const size_t          base = (size_t(s) * a.n_head_kv + hk) * size_t(a.cap) * D;
    const __nv_bfloat16 * k    = reinterpret_cast<const __nv_bfloat16 *>(a.k) + base;
    const __nv_bfloat16 * v    = reinterpret_cast<const __nv_bfloat16 *>(a.v) + base;
    const int             n    = a.n_dense[s];
    float                 m = -INFINITY, l = 0.f, acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < n; ++j) {
        const uint2 kr  = *reinterpret_cast<const uint2 *>(k + size_t(j) * D + lane * 4);
        float       dot = qv[0] * bf16_lo(kr.x) + qv[1] * bf16_hi(kr.x) + qv[2] * bf16_lo(kr.y) + qv[3] * bf16_hi(kr.y);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        const float z  = dot * a.scale;
        const float mn = fmaxf(m, z);
        const float c  = expf(m - mn), p = expf(z - mn);
        const uint2 vr = *reinterpret_cast<const uint2 *>(v + size_t(j) * D + lane * 4);
        l              = l * c + p;
        acc[0]         = acc[0] * c + p * bf16_lo(vr.x);
        acc[1]         = acc[1] * c + p * bf16_hi(vr.x);
        acc[2]         = acc[2] * c + p * bf16_lo(vr.y);
        acc[3]         = acc[3] * c + p * bf16_hi(vr.y);
        m              = mn;
    }
    float * o = a.o + (int64_t(s) * a.n_head + h) * D;
#pragma unroll
    for (int i = 0; i < 4; ++i) o[lane * 4 + i] = n > 0 ? acc[i] / l : 0.f;
    if (lane == 0) a.lse[int64_t(s) * a.n_head + h] = n > 0 ? m + logf(l) : -INFINITY;
}

__global__ void merge_kernel(const float * o1, const float * lse1, const float * o2, const float * lse2, int64_t n,
                             int D, float * o, float * lse) {
    const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (i >= n * D) return;
    const int64_t r = i / D;
    const float   a = lse1[r], b = lse2[r], m = fmaxf(a, b);
    if (m == -INFINITY) {
        o[i] = 0.f;
        if (lse && i % D == 0) lse[r] = -INFINITY;
        return;
    }
    const float wa = expf(a - m), wb = expf(b - m), s = wa + wb;
    o[i] = (wa * o1[i] + wb * o2[i]) / s;
    if (lse && i % D == 0) lse[r] = m + logf(s);
}

} // namespace

status mpig_hash(const mpig_hash_args & a, cudaStream_t stream) {
    if (a.D < 1 || a.D > 256 || a.K < 1 || a.K > 16 || a.L < 1)
        return error(status_code::UNSUPPORTED, "mpig_hash: D=%d K=%d L=%d (D 1..256, K 1..16)", a.D, a.K, a.L);
    if (a.n == 0) return status::ok();
    const int    tpt  = hash_cols / a.K;
    const size_t smem = size_t(hash_rows) * a.D * 4 + size_t(a.D) * hash_cols * 4 + hash_rows * hash_cols;
    LC_CUDA_CHECK(cudaFuncSetAttribute(hash_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const dim3 grid(unsigned((a.L + tpt - 1) / tpt), unsigned((a.n + hash_rows - 1) / hash_rows));
    hash_kernel<<<grid, hash_threads, smem, stream>>>(a, tpt);
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

status mpig_mean(const bf16_t * x, int64_t n, int64_t x_stride, int D, float * mu, cudaStream_t stream) {
    if (D < 1 || D > 1024) return error(status_code::UNSUPPORTED, "mpig_mean: D=%d", D);
    mean_kernel<<<1, (1024 / D) * D, 0, stream>>>(reinterpret_cast<const __nv_bfloat16 *>(x), n, x_stride, D, mu);
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

status mpig_dense(const mpig_dense_args & a, cudaStream_t stream) {
    if (a.D != 128 || a.n_head_kv < 1 || a.n_head % a.n_head_kv != 0 || a.n_head / a.n_head_kv > 32)
        return error(status_code::UNSUPPORTED, "mpig_dense: D=%d, %d heads / %d KV heads", a.D, a.n_head,
                     a.n_head_kv);
    if (a.n_seq == 0) return status::ok();
    dense_kernel<<<dim3(unsigned(a.n_head_kv), unsigned(a.n_seq)), 32 * (a.n_head / a.n_head_kv), 0, stream>>>(a);
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

status mpig_merge(const float * o1, const float * lse1, const float * o2, const float * lse2, int64_t n, int D,
                  float * o, float * lse, cudaStream_t stream) {
    if (n == 0) return status::ok();
    const int64_t total = n * D;
    merge_kernel<<<unsigned((total + 255) / 256), 256, 0, stream>>>(o1, lse1, o2, lse2, n, D, o, lse);
    LC_CUDA_CHECK_LAUNCH();
    return status::ok();
}

} // namespace lc::cuda
