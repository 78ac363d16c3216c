// Forward-pass ops on the GPU (see ops.cuh). Simple one-pass kernels: these are memory-bound and small next to
// the GEMMs and the attention; their job is to match the CPU reference op for op.
#include "backend/cuda/ops.cuh"

#include <cuda_bf16.h>

#include "backend/cuda/cuda-common.cuh"
#include "backend/cuda/kv-paged.cuh"

namespace lc::cuda {

namespace {

__device__ __forceinline__ float bf16_to_f32(bf16_t v) {
    return __uint_as_float(uint32_t(v) << 16);
}
__device__ __forceinline__ bf16_t f32_to_bf16_rn(float f) {
    __nv_bfloat16 b = __float2bfloat16_rn(f);
    return *reinterpret_cast<bf16_t *>(&b);
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads(); // part[] may still be read by a previous call
    if (lane == 0) part[warp] = v;
    __syncthreads();
    const int n_warp = int(blockDim.x) >> 5;
    float     s      = lane < n_warp ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

__global__ void embed_kernel(const bf16_t * table, const int32_t * tokens, int n_embd, float scale, float * x) {
    const int64_t  t   = blockIdx.x;
    const bf16_t * row = table + int64_t(tokens[t]) * n_embd;
    for (int i = threadIdx.x; i < n_embd; i += blockDim.x) x[t * n_embd + i] = bf16_to_f32(row[i]) * scale;
}

template <bool Y_BF16>
__global__ void rmsnorm_kernel(const float * x, int64_t ldx, const float * w, int dim, float eps, void * y,
                               int64_t ldy) {
    const float * xr = x + int64_t(blockIdx.x) * ldx;
    float         ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss                = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / float(dim) + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = xr[i] * scale * w[i];
        if constexpr (Y_BF16)
            static_cast<bf16_t *>(y)[int64_t(blockIdx.x) * ldy + i] = f32_to_bf16_rn(v);
        else
            static_cast<float *>(y)[int64_t(blockIdx.x) * ldy + i] = v;
    }
}

__global__ void rmsnorm_add_kernel(float * x, const float * t, const float * w, int dim, float eps) {
    const float * tr = t + int64_t(blockIdx.x) * dim;
    float *       xr = x + int64_t(blockIdx.x) * dim;
    float         ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += tr[i] * tr[i];
    ss                = block_sum(ss);
    const float scale = 1.0f / sqrtf(ss / float(dim) + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) xr[i] += tr[i] * scale * w[i];
}

// Block (token t, head h) of Q, K or V heads; thread d = one element of head_dim (blockDim.x = head_dim rounded
// up to a warp).
__global__ void qkv_finish_kernel(qkv_finish_args a) {
    extern __shared__ float sh[];
    const int64_t           t    = blockIdx.x;
    const int               h    = blockIdx.y;
    const int               d    = threadIdx.x;
    const int               D    = a.head_dim;
    const int               n_q  = a.n_head * D;
    const int               n_kv = a.n_head_kv * D;
    const bool              is_q = h < a.n_head;
    const bool              is_k = !is_q && h < a.n_head + a.n_head_kv;
    const int               hh   = is_q ? h : is_k ? h - a.n_head : h - a.n_head - a.n_head_kv;
    const int               off  = is_q ? hh * D : is_k ? n_q + hh * D : n_q + n_kv + hh * D;
    const float *           bias = is_q ? a.bq : is_k ? a.bk : a.bv;
    const float *           nw   = is_q ? a.q_norm : is_k ? a.k_norm : nullptr;

    float v = 0.0f;
    if (d < D) {
        v = a.qkv[t * a.ld + off + d];
        if (bias) v += bias[(off - (is_q ? 0 : is_k ? n_q : n_q + n_kv)) + d];
    }
    if (nw) { // uniform over the block
        const float ss    = block_sum(v * v);
        const float scale = 1.0f / sqrtf(ss / float(D) + a.eps);
        if (d < D) v = v * scale * nw[d];
    }
    const int32_t pos = a.pos[t];
    if (!(is_q || is_k) || a.n_rot == 0) {
        // V (or no rotation): as is
    } else {
        if (d < D) sh[d] = v;
        __syncthreads();
        if (d < a.n_rot) {
            const int half = a.n_rot / 2;
            int       i, i0, i1;
            if (a.neox) {
                i  = d < half ? d : d - half;
                i0 = i;
                i1 = i + half;
            } else {
                i  = d >> 1;
                i0 = 2 * i;
                i1 = 2 * i + 1;
            }
            float theta = float(pos);
            for (int j = 0; j < i; ++j) theta *= a.theta_scale;
            const float c = cosf(theta), s = sinf(theta);
            const float x0 = sh[i0], x1 = sh[i1];
            v = d == i0 ? x0 * c - x1 * s : x0 * s + x1 * c;
        }
    }
    if (d >= D) return;
    const bf16_t b = f32_to_bf16_rn(v);
    if (is_q) {
        a.q_out[(t * a.n_head + hh) * D + d] = b;
    } else {
        const int64_t page                                               = a.pages[pos / kv_page_tokens];
        const int     row                                                = pos % kv_page_tokens;
        bf16_t *      pool                                               = is_k ? a.k_pool : a.v_pool;
        pool[((page * a.n_head_kv + hh) * kv_page_tokens + row) * D + d] = b;
    }
}

template <glu_act ACT> __global__ void glu_kernel(const float * gu, int64_t n, int n_ff, bf16_t * h) {
    const int64_t total = n * n_ff;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = e / n_ff;
        const int     i = int(e - t * n_ff);
        const float   g = gu[t * 2 * n_ff + i];
        const float   u = gu[t * 2 * n_ff + n_ff + i];
        float         r;
        if constexpr (ACT == glu_act::SILU) {
            r = g / (1.0f + expf(-g)) * u;
        } else {
            const float z = 1.5957691216057308f * (g + 0.044715f * g * g * g); // 2 sqrt(2/pi) (x + 0.044715 x^3)
            r             = g / (1.0f + expf(-z)) * u;
        }
        h[e] = f32_to_bf16_rn(r);
    }
}

__global__ void argmax_kernel(const float * x, int n, int32_t * out) {
    const float * xr   = x + int64_t(blockIdx.x) * n;
    float         best = -INFINITY;
    int           bi   = n; // past the end: loses every tie
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i];
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi   = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int   oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi   = oi;
        }
    }
    __shared__ float sv[32];
    __shared__ int   si[32];
    const int        lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        const int n_warp = int(blockDim.x) >> 5;
        best             = lane < n_warp ? sv[lane] : -INFINITY;
        bi               = lane < n_warp ? si[lane] : n;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int   oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > best || (ov == best && oi < bi)) {
                best = ov;
                bi   = oi;
            }
        }
        if (lane == 0) out[blockIdx.x] = bi < n ? bi : 0; // all NaN: token 0
    }
}

__global__ void f32_to_bf16_kernel(const float * x, bf16_t * y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = f32_to_bf16_rn(x[i]);
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) { // splitmix64's finaliser
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__global__ void fill_uniform_kernel(bf16_t * y, int64_t n, uint64_t seed, float amp) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const uint64_t r = mix64(seed * 0x9e3779b97f4a7c15ull + uint64_t(i));
        const float    u = float(r >> 40) * (1.0f / 16777216.0f); // [0, 1)
        y[i]             = f32_to_bf16_rn((2.0f * u - 1.0f) * amp);
    }
}

__global__ void fill_f32_kernel(float * y, int64_t n, float value) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
        y[i] = value;
}

unsigned grid_for(int64_t n, int block) {
    const int64_t g = (n + block - 1) / block;
    return unsigned(g < 1 ? 1 : g > 65535 * 16 ? 65535 * 16 : g);
}

int norm_block(int dim) {
    return dim >= 2048 ? 1024 : dim >= 512 ? 256 : 128;
}

} // namespace

void embed_rows(const bf16_t * table, const int32_t * tokens, int64_t n, int n_embd, float scale, float * x,
                cudaStream_t stream) {
    if (n <= 0) return;
    embed_kernel<<<unsigned(n), 256, 0, stream>>>(table, tokens, n_embd, scale, x);
    LC_CUDA_CHECK_LAUNCH();
}

void rmsnorm_rows(const float * x, int64_t ldx, const float * w, int64_t n_rows, int dim, float eps, void * y,
                  int64_t ldy, bool y_bf16, cudaStream_t stream) {
    if (n_rows <= 0) return;
    if (y_bf16)
        rmsnorm_kernel<true><<<unsigned(n_rows), norm_block(dim), 0, stream>>>(x, ldx, w, dim, eps, y, ldy);
    else
        rmsnorm_kernel<false><<<unsigned(n_rows), norm_block(dim), 0, stream>>>(x, ldx, w, dim, eps, y, ldy);
    LC_CUDA_CHECK_LAUNCH();
}

void rmsnorm_add_rows(float * x, const float * t, const float * w, int64_t n_rows, int dim, float eps,
                      cudaStream_t stream) {
    if (n_rows <= 0) return;
    rmsnorm_add_kernel<<<unsigned(n_rows), norm_block(dim), 0, stream>>>(x, t, w, dim, eps);
    LC_CUDA_CHECK_LAUNCH();
}

void qkv_finish(const qkv_finish_args & a, cudaStream_t stream) {
    if (a.n <= 0) return;
    LC_ASSERT(a.head_dim > 0 && a.head_dim <= 1024 && a.n_rot <= a.head_dim && a.n_rot % 2 == 0,
              "qkv_finish: head_dim %d, n_rot %d", a.head_dim, a.n_rot);
    const int  block = (a.head_dim + 31) / 32 * 32;
    const dim3 grid(unsigned(a.n), unsigned(a.n_head + 2 * a.n_head_kv));
    qkv_finish_kernel<<<grid, block, size_t(a.head_dim) * sizeof(float), stream>>>(a);
    LC_CUDA_CHECK_LAUNCH();
}

void glu_rows(const float * gu, int64_t n, int n_ff, glu_act act, bf16_t * h, cudaStream_t stream) {
    if (n <= 0) return;
    const unsigned grid = grid_for(n * n_ff, 256);
    if (act == glu_act::SILU)
        glu_kernel<glu_act::SILU><<<grid, 256, 0, stream>>>(gu, n, n_ff, h);
    else
        glu_kernel<glu_act::GELU_TANH><<<grid, 256, 0, stream>>>(gu, n, n_ff, h);
    LC_CUDA_CHECK_LAUNCH();
}

void argmax_rows(const float * x, int64_t n_rows, int n, int32_t * out, cudaStream_t stream) {
    if (n_rows <= 0) return;
    argmax_kernel<<<unsigned(n_rows), 1024, 0, stream>>>(x, n, out);
    LC_CUDA_CHECK_LAUNCH();
}

void f32_to_bf16(const float * x, bf16_t * y, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, y, n);
    LC_CUDA_CHECK_LAUNCH();
}

void fill_uniform_bf16(bf16_t * y, int64_t n, uint64_t seed, float amp, cudaStream_t stream) {
    if (n <= 0) return;
    fill_uniform_kernel<<<grid_for(n, 256), 256, 0, stream>>>(y, n, seed, amp);
    LC_CUDA_CHECK_LAUNCH();
}

void fill_f32(float * y, int64_t n, float value, cudaStream_t stream) {
    if (n <= 0) return;
    fill_f32_kernel<<<grid_for(n, 256), 256, 0, stream>>>(y, n, value);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace lc::cuda
