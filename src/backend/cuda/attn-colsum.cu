// Column sums of causal softmax probabilities (attn-colsum.cuh): the prefill pass on mma.sync bf16 tensor cores,
// keys as the M dimension (each warp owns 16 keys of a page and sums their probabilities over the query tiles), and
// the memory-bound decode-step pass.
#include "backend/cuda/attn-colsum.cuh"

#include <cmath>

#include "backend/cuda/attn-prefill-impl.cuh"

namespace lc::cuda {

namespace {

constexpr int   n_threads = 128; // 4 warps x 16 keys = one 64-key page
constexpr float log2e     = 1.4426950408889634f;

template <int D> __host__ __device__ constexpr int cs_tile_bytes() {
    return 64 * D * 2;
}
template <int D> __host__ __device__ constexpr int cs_smem_bytes() {
    return 3 * cs_tile_bytes<D>() + 2 * 64 * int(sizeof(float)); // K, Q[2], lse[2][64]
}

template <int D>
__device__ __forceinline__ void cs_load_rows(uint32_t dst, const __nv_bfloat16 * src, int n_valid, int tid) {
    constexpr int CPR = D / 8, RPI = n_threads / CPR;
    const int     c   = tid % CPR;
#pragma unroll
    for (int i = 0; i < 64 / RPI; ++i) {
        const int r = tid / CPR + RPI * i;
        cp_async_16(dst + tile_off<D>(r, c), src + r * D + c * 8, r < n_valid ? 16 : 0);
    }
}

template <int D>
__global__ void __launch_bounds__(n_threads)
    colsum_prefill_kernel(const __nv_bfloat16 * __restrict__ q, int64_t n_q, int64_t pos0, int n_head,
                          const __nv_bfloat16 * __restrict__ k_pool, const int32_t * __restrict__ pages, int64_t n_kv,
                          int n_head_kv, float scale_log2, const float * __restrict__ lse, bool per_kv_head,
                          float * __restrict__ colsum, int64_t stride, int64_t window, int64_t kt_first) {
    constexpr int tile_bytes = cs_tile_bytes<D>();
    constexpr int KD         = D / 16;
    extern __shared__ __align__(128) uint8_t smem[];
    const int                                tid  = threadIdx.x;
    const int                                warp = tid >> 5;
    const int                                lane = tid & 31;
    const int                                gr   = lane >> 2;
    const int                                t    = lane & 3;
    const uint32_t                           s_k  = smem_u32(smem);
    float *                                  s_lse = reinterpret_cast<float *>(smem + 3 * tile_bytes);

    const int     G   = n_head / n_head_kv;
    const int64_t kt  = kt_first + int64_t(blockIdx.x) / n_head_kv; // lowest pages (most queries) first
    const int     g   = int(blockIdx.x % n_head_kv);
    const int64_t k0  = kt * 64;
    const int64_t end = pos0 + n_q; // keys at or past end are not touched
    // queries that see some key of the page: i >= k0 - pos0, and with a window i < k0 + 63 - pos0 + window
    const int64_t i_lo = max(int64_t(0), k0 - pos0);
    const int64_t i_hi = window > 0 ? min(n_q, k0 + 63 - pos0 + window) : n_q;
    if (i_lo >= i_hi) return;
    const int n_tiles = int((i_hi - i_lo + 63) / 64);
    const int n_it    = G * n_tiles;

    const size_t page_elems = size_t(n_head_kv) * 64 * D;
    cs_load_rows<D>(s_k, k_pool + size_t(pages[kt]) * page_elems + size_t(g) * 64 * D,
                    int(min(int64_t(64), n_kv - k0)), tid);
    cp_async_commit();

    auto load_q = [&](int it, int buf) {
        const int     hh = it / n_tiles;
        const int64_t i0 = i_lo + int64_t(it % n_tiles) * 64;
        const int     h  = g * G + hh;
        constexpr int CPR = D / 8, RPI = n_threads / CPR;
        const int     c   = tid % CPR;
        const uint32_t dst = s_k + (1 + buf) * tile_bytes;
#pragma unroll
        for (int i = 0; i < 64 / RPI; ++i) {
            const int     r   = tid / CPR + RPI * i;
            const bool    ok  = i0 + r < i_hi;
            const int64_t row = ok ? i0 + r : i_lo;
            cp_async_16(dst + tile_off<D>(r, c), q + (size_t(row) * n_head + h) * D + c * 8, ok ? 16 : 0);
        }
        if (tid < 64) { // rows past the chunk read 0 and are masked below
            const int64_t i   = i0 + tid;
            const uint32_t d  = smem_u32(s_lse + buf * 64 + tid);
            const float *  sp = lse + size_t(i < n_q ? i : i_lo) * n_head + h;
            asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(sp), "r"(i < n_q ? 4 : 0));
        }
    };
    load_q(0, 0);
    cp_async_commit();

    uint32_t      kf[KD][4];
    float         cs0 = 0.f, cs1 = 0.f; // this thread's part of keys k0 + warp*16 + gr and + 8
    const int64_t key0 = k0 + warp * 16 + gr, key1 = key0 + 8;

    auto flush = [&](int row) {
        float a = cs0, b = cs1;
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        a += __shfl_xor_sync(0xffffffffu, a, 2);
        b += __shfl_xor_sync(0xffffffffu, b, 1);
        b += __shfl_xor_sync(0xffffffffu, b, 2);
        if (t == 0) {
            if (key0 < end) colsum[size_t(row) * stride + key0] += a;
            if (key1 < end) colsum[size_t(row) * stride + key1] += b;
        }
        cs0 = cs1 = 0.f;
    };

    for (int it = 0; it < n_it; ++it) {
        const int buf = it & 1;
        if (it + 1 < n_it) {
            load_q(it + 1, buf ^ 1);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < KD; ++kk)
                ldmatrix_x4(s_k + tile_off<D>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4)), kf[kk][0], kf[kk][1],
                            kf[kk][2], kf[kk][3]);
        }
        const uint32_t s_qb = s_k + (1 + buf) * tile_bytes;
        // S^T = K Q^T: 16 keys x 64 queries per warp
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
            for (int nn = 0; nn < 4; ++nn) {
                uint32_t  b0, b1, b2, b3;
                const int qr = nn * 16 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(s_qb + tile_off<D>(qr, kk * 2 + ((lane >> 3) & 1)), b0, b1, b2, b3);
                mma_bf16(s[2 * nn], kf[kk], b0, b1);
                mma_bf16(s[2 * nn + 1], kf[kk], b2, b3);
            }
        }
        const int     hh   = it / n_tiles;
        const int64_t i0   = i_lo + int64_t(it % n_tiles) * 64;
        const int64_t qp0  = pos0 + i0; // position of the tile's first query
        const int64_t qend = pos0 + n_q;
        const bool    mask = k0 + 63 > qp0 || (window > 0 && k0 <= qp0 + 63 - window) || qp0 + 64 > qend;
        const float * ls   = s_lse + buf * 64;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float2 l  = *reinterpret_cast<const float2 *>(ls + j * 8 + 2 * t);
            const float  la = l.x * log2e, lb = l.y * log2e;
            float        p0 = fast_exp2(s[j][0] * scale_log2 - la);
            float        p1 = fast_exp2(s[j][1] * scale_log2 - lb);
            float        p2 = fast_exp2(s[j][2] * scale_log2 - la);
            float        p3 = fast_exp2(s[j][3] * scale_log2 - lb);
            if (mask) {
                const int64_t qa = qp0 + j * 8 + 2 * t, qb = qa + 1;
                const int64_t w  = window > 0 ? window : INT64_MAX / 4;
                if (key0 > qa || key0 <= qa - w || qa >= qend) p0 = 0.f;
                if (key0 > qb || key0 <= qb - w || qb >= qend) p1 = 0.f;
                if (key1 > qa || key1 <= qa - w || qa >= qend) p2 = 0.f;
                if (key1 > qb || key1 <= qb - w || qb >= qend) p3 = 0.f;
            }
            cs0 += p0 + p1;
            cs1 += p2 + p3;
        }
        if (!per_kv_head && it % n_tiles == n_tiles - 1) flush(g * G + hh);
        __syncthreads();
    }
    if (per_kv_head) flush(g);
}

template <int D>
__global__ void __launch_bounds__(n_threads)
    colsum_decode_kernel(const __nv_bfloat16 * __restrict__ q, int n_head, const __nv_bfloat16 * __restrict__ k_pool,
                         int n_head_kv, const int32_t * __restrict__ pages, int64_t pages_stride,
                         const int32_t * __restrict__ n_kv, float scale_log2, const float * __restrict__ lse,
                         bool per_kv_head, float * __restrict__ colsum, int64_t stride, int64_t seq_stride,
                         int64_t window) {
    constexpr int LPK  = D / 8;    // lanes per key (16 bytes each)
    constexpr int KPW  = 32 / LPK; // keys per warp step
    const int     s    = blockIdx.z;
    const int     g    = blockIdx.y;
    const int64_t k0   = int64_t(blockIdx.x) * 64;
    const int64_t nkv  = n_kv[s];
    const int64_t lo   = window > 0 ? max(int64_t(0), nkv - window) : 0;
    if (k0 >= nkv || k0 + 63 < lo) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = lane / LPK, c = lane % LPK;
    const int G   = n_head / n_head_kv;

    float qv[8][8], lv[8];
#pragma unroll
    for (int hh = 0; hh < 8; ++hh) {
        if (hh < G) {
            const int   h = g * G + hh;
            const uint4 x = *reinterpret_cast<const uint4 *>(q + (size_t(s) * n_head + h) * D + c * 8);
            const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                qv[hh][2 * i]     = bf16_lo(w[i]);
                qv[hh][2 * i + 1] = bf16_hi(w[i]);
            }
            lv[hh] = lse[size_t(s) * n_head + h] * log2e;
        }
    }
    const size_t page_elems = size_t(n_head_kv) * 64 * D;
    const __nv_bfloat16 * kp =
        k_pool + size_t(pages[size_t(s) * pages_stride + blockIdx.x]) * page_elems + size_t(g) * 64 * D;
    float *       out = colsum + size_t(s) * seq_stride;
    constexpr int NI  = 16 / KPW; // key rows per lane group
    uint4         x[NI];
#pragma unroll
    for (int it = 0; it < NI; ++it) { // every row load in flight before the first use
        const int     r   = warp * 16 + sub + it * KPW;
        const int64_t key = k0 + r;
        x[it]             = key < nkv && key >= lo ? *reinterpret_cast<const uint4 *>(kp + size_t(r) * D + c * 8)
                                                   : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int it = 0; it < NI; ++it) {
        const int      r     = warp * 16 + sub + it * KPW;
        const int64_t  key   = k0 + r;
        const bool     valid = key < nkv && key >= lo;
        const uint32_t w[4]  = {x[it].x, x[it].y, x[it].z, x[it].w};
        float          kv8[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            kv8[2 * i]     = bf16_lo(w[i]);
            kv8[2 * i + 1] = bf16_hi(w[i]);
        }
        float acc = 0.f;
#pragma unroll
        for (int hh = 0; hh < 8; ++hh) {
            if (hh < G) {
                float d = 0.f;
#pragma unroll
                for (int i = 0; i < 8; ++i) d = fmaf(qv[hh][i], kv8[i], d);
#pragma unroll
                for (int off = LPK / 2; off >= 1; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
                const float p = fast_exp2(d * scale_log2 - lv[hh]);
                if (per_kv_head)
                    acc += p;
                else if (c == 0 && valid)
                    out[size_t(g * G + hh) * stride + key] += p;
            }
        }
        if (per_kv_head && c == 0 && valid) out[size_t(g) * stride + key] += acc;
    }
}

template <int D> void launch_prefill(const attn_colsum_args & a, cudaStream_t stream) {
    const int64_t kt_first = a.window > 0 ? std::max<int64_t>(0, a.pos0 - a.window + 1) / 64 : 0;
    const int64_t kt_last  = (a.pos0 + a.n_q - 1) / 64;
    const int64_t n_blocks = (kt_last - kt_first + 1) * a.kv.n_head_kv;
    constexpr int smem     = cs_smem_bytes<D>();
    auto          kern     = colsum_prefill_kernel<D>;
    LC_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    kern<<<dim3(unsigned(n_blocks)), n_threads, smem, stream>>>(
        reinterpret_cast<const __nv_bfloat16 *>(a.q), a.n_q, a.pos0, a.n_head,
        reinterpret_cast<const __nv_bfloat16 *>(a.kv.k_pool), a.kv.pages, a.kv.n_kv, a.kv.n_head_kv,
        a.scale * log2e, a.lse, a.per_kv_head, a.colsum, a.colsum_stride, a.window, kt_first);
    LC_CUDA_CHECK_LAUNCH();
}

template <int D> void launch_decode(const attn_colsum_decode_args & a, cudaStream_t stream) {
    const dim3 grid(unsigned((a.n_kv_max + 63) / 64), unsigned(a.n_head_kv), unsigned(a.n_seq));
    colsum_decode_kernel<D><<<grid, n_threads, 0, stream>>>(
        reinterpret_cast<const __nv_bfloat16 *>(a.q), a.n_head, reinterpret_cast<const __nv_bfloat16 *>(a.k_pool),
        a.n_head_kv, a.pages, a.pages_stride, a.n_kv, a.scale * log2e, a.lse, a.per_kv_head, a.colsum,
        a.colsum_stride, a.seq_stride, a.window);
    LC_CUDA_CHECK_LAUNCH();
}

} // namespace

status attn_colsum(const attn_colsum_args & a, cudaStream_t stream) {
    const int D = a.kv.head_dim;
    if (D != 64 && D != 128) return error(status_code::UNSUPPORTED, "cuda attn_colsum: head_dim %d (64, 128)", D);
    if (a.kv.n_head_kv <= 0 || a.n_head % a.kv.n_head_kv != 0)
        return error(status_code::UNSUPPORTED, "cuda attn_colsum: n_head %d is not a multiple of n_head_kv %d",
                     a.n_head, a.kv.n_head_kv);
    if (a.n_q < 0 || a.pos0 < 0 || a.window < 0 || a.kv.n_kv < a.pos0 + a.n_q || a.colsum_stride < a.pos0 + a.n_q)
        return error(status_code::INVALID_ARGUMENT, "cuda attn_colsum: n_kv %lld, stride %lld < pos0 %lld + n_q %lld",
                     (long long)a.kv.n_kv, (long long)a.colsum_stride, (long long)a.pos0, (long long)a.n_q);
    if (a.n_q == 0) return status::ok();
    if (D == 64)
        launch_prefill<64>(a, stream);
    else
        launch_prefill<128>(a, stream);
    return status::ok();
}

status attn_colsum_decode(const attn_colsum_decode_args & a, cudaStream_t stream) {
    const int D = a.head_dim;
    if (D != 64 && D != 128)
        return error(status_code::UNSUPPORTED, "cuda attn_colsum_decode: head_dim %d (64, 128)", D);
    if (a.n_head_kv <= 0 || a.n_head % a.n_head_kv != 0 || a.n_head / a.n_head_kv > 8)
        return error(status_code::UNSUPPORTED, "cuda attn_colsum_decode: n_head %d / n_head_kv %d", a.n_head,
                     a.n_head_kv);
    if (a.window < 0 || a.n_kv_max < 0)
        return error(status_code::INVALID_ARGUMENT, "cuda attn_colsum_decode: window or n_kv_max < 0");
    if (a.n_seq == 0 || a.n_kv_max == 0) return status::ok();
    if (D == 64)
        launch_decode<64>(a, stream);
    else
        launch_decode<128>(a, stream);
    return status::ok();
}

} // namespace lc::cuda
